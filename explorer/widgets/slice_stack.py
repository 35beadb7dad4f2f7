"""Two slice stacks side by side with one slider, ROI overlays and a window/level control.

Mouse wheel over either image: one slice per notch (Ctrl/Cmd + wheel zooms, as dragging
pans); the slice is labelled with its z in mm where the workspace knows it.

Stacks are training.explore.volume.SliceStack: images (n, H, W) in [0, 1] with the
workspace's HU window, shown in HU (HU = hu_min + x·(hu_max − hu_min)), rows top→bottom
(anterior at the top) and columns left→right (the patient's left on the image's right,
so the image's left edge is marked R). The view's y axis is inverted so row 0 is at the
top. Window/level: level L and width W in HU show [L − W/2, L + W/2] black → white.
ROI overlays: class k ≥ 1 in training.images.roi_colour_table's colour k, half
transparent, on their own ImageItem so toggling them or changing the window redraws
nothing else.
"""

from __future__ import annotations

import numpy as np

from explorer.qt import QtCore, Qt, QtWidgets, Signal, pg
from training.config import WINDOW_PRESETS
from training.images import roi_colour_table
from training.explore.volume import SliceStack, level_width_of, window_level_range

OVERLAY_ALPHA = 110  # of 255


def overlay_lut(n_classes: int, alpha: int = OVERLAY_ALPHA) -> np.ndarray:
    """RGBA uint8 (n_classes, 4): class 0 transparent, class k the ROI colour k."""
    rgb = roi_colour_table(max(n_classes, 2))
    lut = np.zeros((len(rgb), 4), np.uint8)
    lut[:, :3] = rgb
    lut[1:, 3] = alpha
    return lut


class StackView(pg.GraphicsLayoutWidget):
    """One side: a titled view with the CT (HU, levels = the window) and an ROI overlay."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = self.addLabel("", row=0, col=0, size="10pt")
        self.view = self.addViewBox(row=1, col=0, lockAspect=True, invertY=True)
        self.view.setMenuEnabled(False)
        self.image_item = pg.ImageItem()
        self.overlay_item = pg.ImageItem()
        self.overlay_item.setZValue(1)
        self.view.addItem(self.image_item)
        self.view.addItem(self.overlay_item)
        self._marks = []
        for text, anchor in (("A", (0.5, 0)), ("P", (0.5, 1)), ("R", (0, 0.5)), ("L", (1, 0.5))):
            t = pg.TextItem(text, color=(255, 210, 0), anchor=anchor)
            t.setZValue(2)
            self.view.addItem(t)
            self._marks.append((text, t))
        self.stack_hu: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self._lut = overlay_lut(2)

    def set_stack(self, stack: SliceStack | None, title: str = "") -> None:
        self.title.setText(title or (stack.title if stack is not None else ""))
        if stack is None:
            self.stack_hu, self.labels = None, None
            self.image_item.clear()
            self.overlay_item.clear()
            return
        self.stack_hu = stack.hu()
        self.labels = None if stack.labels is None else np.ascontiguousarray(stack.labels, np.uint8)
        n_classes = len(stack.roi_names) + 1 if stack.roi_names else 2
        top = int(self.labels.max()) + 1 if self.labels is not None and self.labels.size else 2
        self._lut = overlay_lut(max(n_classes, top))
        h, w = self.stack_hu.shape[1:]
        for text, item in self._marks:
            item.setPos(*{"A": (w / 2, 0), "P": (w / 2, h), "R": (0, h / 2), "L": (w, h / 2)}[text])

    def show_slice(self, k: int, levels: tuple[float, float], overlay: bool) -> None:
        if self.stack_hu is None:
            return
        k = int(np.clip(k, 0, len(self.stack_hu) - 1))
        self.image_item.setImage(self.stack_hu[k], levels=levels, autoLevels=False)
        if overlay and self.labels is not None:
            # RGBA straight from the colour table: no levels, no LUT pass in pyqtgraph
            self.overlay_item.setImage(self._lut[self.labels[k]], autoLevels=False, levels=None)
            self.overlay_item.setVisible(True)
        else:
            self.overlay_item.setVisible(False)


class SliceStackPair(QtWidgets.QWidget):
    """Left and right stacks, one slider through the slices, overlay and window/level."""

    sliceChanged = Signal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.left = StackView()
        self.right = StackView()
        self.right.view.setXLink(self.left.view)  # zoom and pan together
        self.right.view.setYLink(self.left.view)
        self.slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Slice through both stacks together (index along z, inferior → superior); "
                               "the mouse wheel over an image steps slices, Ctrl + wheel zooms")
        self.slider.setEnabled(False)
        self.slice_label = QtWidgets.QLabel("—")
        self.slice_label.setMinimumWidth(self.slice_label.fontMetrics().horizontalAdvance(
            "slice 000 / 000 · z = −0000.0 mm") + 6)
        self.z_mm: np.ndarray | None = None  # z of the left stack's slices, where known
        self.overlay = QtWidgets.QCheckBox("ROI overlay")
        self.overlay.setChecked(True)
        self.overlay.setToolTip("Show the RT structures (input labels, decoded labels) in colour over the CT")
        self.preset = QtWidgets.QComboBox()
        self.preset.addItem("workspace window")
        for name, (lo, hi) in WINDOW_PRESETS.items():  # the range in the text: no guessing
            self.preset.addItem(f"{name} [{lo:g}, {hi:g}] HU".replace("-", "−"), name)
        self.preset.addItem("custom")
        self.preset.setToolTip("CT window presets (HU); the workspace window is what the model saw")
        self.level = QtWidgets.QDoubleSpinBox()
        self.width = QtWidgets.QDoubleSpinBox()
        for box, tip in ((self.level, "Window level (centre), HU"), (self.width, "Window width, HU")):
            box.setRange(-3000.0, 5000.0)
            box.setDecimals(0)
            box.setSingleStep(10.0)
            box.setSuffix(" HU")
            box.setToolTip(tip)
            box.setKeyboardTracking(False)
        self.width.setRange(1.0, 8000.0)
        self.legend = QtWidgets.QLabel()
        self.hu_window = (-800.0, 700.0)
        self.roi_names: tuple[str, ...] = ()

        views = QtWidgets.QHBoxLayout()
        views.addWidget(self.left, 1)
        views.addWidget(self.right, 1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Slice"))
        row.addWidget(self.slider, 1)
        row.addWidget(self.slice_label)
        row.addWidget(self.overlay)
        wl = QtWidgets.QHBoxLayout()
        wl.addWidget(QtWidgets.QLabel("Window"))
        wl.addWidget(self.preset)
        wl.addWidget(QtWidgets.QLabel("Level"))
        wl.addWidget(self.level)
        wl.addWidget(QtWidgets.QLabel("Width"))
        wl.addWidget(self.width)
        wl.addWidget(self.legend, 1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(views, 1)
        lay.addLayout(row)
        lay.addLayout(wl)

        self.slider.valueChanged.connect(self._show)
        for side in (self.left, self.right):
            side.viewport().installEventFilter(self)
        self.overlay.toggled.connect(lambda _: self._show(self.slider.value()))
        self.level.valueChanged.connect(self._levels_edited)
        self.width.valueChanged.connect(self._levels_edited)
        self.preset.currentIndexChanged.connect(self._preset_chosen)
        self._set_level_width(*level_width_of(*self.hu_window))

    # -- content
    def set_pair(self, left: SliceStack | None, right: SliceStack | None,
                 left_title: str = "", right_title: str = "") -> None:
        """Show two stacks of equal slice count; the slider keeps its relative position."""
        old_n = self.n_slices
        frac = self.slider.value() / max(old_n - 1, 1) if old_n else 0.5
        self.left.set_stack(left, left_title)
        self.right.set_stack(right, right_title)
        ref = left if left is not None else right
        self.z_mm = None
        for side in (left, right):
            z = getattr(side, "z_mm", None)
            if z is not None and self.z_mm is None:
                self.z_mm = np.asarray(z, dtype=np.float64)
        if ref is not None:
            if ref.hu_window != self.hu_window:
                self.hu_window = tuple(float(v) for v in ref.hu_window)
                if self.preset.currentIndex() == 0:
                    self._set_level_width(*level_width_of(*self.hu_window))
            self.roi_names = tuple(ref.roi_names)
            lo, hi = self.hu_window
            self.preset.setToolTip(
                f"CT window presets (HU). The workspace window [{lo:g}, {hi:g}] HU is what the model saw: "
                "HU outside it was clipped during preprocessing and shows as the window's limits")
        self._update_legend()
        n = self.n_slices
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(n - 1, 0))
        self.slider.setValue(int(round(frac * (n - 1))) if n else 0)
        self.slider.blockSignals(False)
        self.slider.setEnabled(n > 1)
        self._show(self.slider.value())
        for side in (self.left, self.right):
            if side.stack_hu is not None:
                side.view.autoRange(padding=0.02)
                break

    @property
    def n_slices(self) -> int:
        sizes = [len(s.stack_hu) for s in (self.left, self.right) if s.stack_hu is not None]
        return min(sizes) if sizes else 0

    def levels(self) -> tuple[float, float]:
        """Displayed HU range [L − W/2, L + W/2]."""
        return window_level_range(self.level.value(), self.width.value())

    def set_window(self, level: float, width: float) -> None:
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(self.preset.count() - 1)
        self.preset.blockSignals(False)
        self._set_level_width(level, width)

    # -- the mouse wheel steps slices
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if event.type() == QtCore.QEvent.Type.Wheel:
            mods = event.modifiers()
            if mods & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.MetaModifier):
                return False  # zoom: the view box gets the event
            self._wheel_steps(event)
            event.accept()
            return True
        return super().eventFilter(obj, event)

    def _wheel_steps(self, event) -> None:
        # notches of 120; touchpads send smaller deltas, summed until a whole notch
        delta = event.angleDelta().y() or event.angleDelta().x()
        self._wheel_rest = getattr(self, "_wheel_rest", 0) + delta
        steps = int(self._wheel_rest / 120)
        if steps and self.slider.isEnabled():
            self._wheel_rest -= steps * 120
            self.slider.setValue(self.slider.value() + steps)  # wheel away from you: superior

    def slice_text(self, k: int) -> str:
        n = self.n_slices
        text = f"slice {k + 1} / {n}"
        if self.z_mm is not None and 0 <= k < len(self.z_mm):
            text += f" · z = {self.z_mm[k]:.1f} mm"
        return text

    # -- internals
    def _set_level_width(self, level: float, width: float) -> None:
        for box, v in ((self.level, level), (self.width, width)):
            box.blockSignals(True)
            box.setValue(v)
            box.blockSignals(False)
        self._show(self.slider.value())

    def _levels_edited(self) -> None:
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(self.preset.count() - 1)
        self.preset.blockSignals(False)
        self._show(self.slider.value())

    def _preset_chosen(self, i: int) -> None:
        name = self.preset.itemData(i)
        if i == 0:
            self._set_level_width(*level_width_of(*self.hu_window))
        elif name in WINDOW_PRESETS:
            self._set_level_width(*level_width_of(*WINDOW_PRESETS[name]))

    def _update_legend(self) -> None:
        colours = roi_colour_table(len(self.roi_names) + 1)
        self.legend.setText("  ".join(
            f'<span style="color: rgb({r},{g},{b})">■</span> {name}'
            for name, (r, g, b) in zip(self.roi_names, colours[1:])))

    def _show(self, k: int) -> None:
        n = self.n_slices
        if not n:
            self.slice_label.setText("—")
            return
        levels = self.levels()
        on = self.overlay.isChecked()
        self.left.show_slice(k, levels, on)
        self.right.show_slice(k, levels, on)
        self.slice_label.setText(self.slice_text(k))
        self.slice_label.setToolTip("Slice 1 is the most inferior (feet), the last the most superior (head); "
                                    "z is the slice's position in patient coordinates (DICOM, mm)")
        self.sliceChanged.emit(k)
