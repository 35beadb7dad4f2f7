"""A stack of preprocessed slices with ROI overlays and a slider through them.

Images (n, H, W) in [0, 1], labels (n, H, W) uint8 (0 = complement, k = rois[k-1]) or
None; shown as stored: anterior at the top, the patient's left on the image's right,
marked A/P/R/L at the image's edges, axes in pixels.
"""

from __future__ import annotations

import numpy as np

from explorer.qt import Qt, QtWidgets, pg

from training.images import ROI_COLOURS

# The ROI colours every view and export uses (class k ↔ ROI_COLOURS[k]).
ROI_COLORS = [tuple(int(v) for v in c) for c in ROI_COLOURS[1:]]


def label_lut(n_classes: int, alpha: int = 110) -> np.ndarray:
    """RGBA lookup table: class 0 transparent, class k the k-th ROI colour."""
    lut = np.zeros((max(n_classes, 1) + 1, 4), np.uint8)
    for k in range(1, len(lut)):
        lut[k, :3] = ROI_COLORS[(k - 1) % len(ROI_COLORS)]
        lut[k, 3] = alpha
    return lut


class SlicePreview(QtWidgets.QWidget):
    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.images: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.roi_names: list[str] = []
        self.view_widget = pg.GraphicsLayoutWidget()
        # a plot (axes in pixels) like the latent views' CTImageView: row 0 = anterior at the
        # top, column 0 = the patient's right on the image's left
        self.plot = self.view_widget.addPlot()
        self.plot.setLabel("bottom", "x (pixels, patient right → left)")
        self.plot.setLabel("left", "y (pixels, anterior → posterior)")
        # pixel indices: never "(×0.001)". (No setRange here: setting a range on this plot
        # before its view box is configured made the process crash at exit when a script
        # ended without closing the window, about one run in two.)
        for side in ("bottom", "left"):
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.view = self.plot.getViewBox()
        self.view.setAspectLocked(True)
        self.view.invertY(True)
        self.view.setMenuEnabled(False)
        self._letters: list = []
        self._letters_shape: tuple[int, int] | None = None
        self.image_item = pg.ImageItem()
        self.label_item = pg.ImageItem()
        self.label_item.setZValue(1)
        self.view.addItem(self.image_item)
        self.view.addItem(self.label_item)
        self.slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Slice (inferior → superior)")
        self.slider.valueChanged.connect(self._show)
        self.z_mm: np.ndarray | None = None
        self.slice_label = QtWidgets.QLabel("")
        self.slice_label.setToolTip("z: the slice's position in patient coordinates (DICOM, mm)")
        self.slice_label.setMinimumWidth(self.slice_label.fontMetrics().horizontalAdvance(
            "slice 000 / 000 · z = −0000.0 mm") + 6)
        self.caption = QtWidgets.QLabel("Select a patient to preview its preprocessed slices")
        self.caption.setWordWrap(True)  # a long caption must not widen the whole window
        self.overlay = QtWidgets.QCheckBox("ROI overlay")
        self.overlay.setChecked(True)
        self.overlay.setToolTip("Show the exclusive ROI labels over the CT")
        self.overlay.toggled.connect(lambda on: self.label_item.setVisible(on))
        self.legend = QtWidgets.QLabel()
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.slider, 1)
        row.addWidget(self.slice_label)
        row.addWidget(self.overlay)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.caption)
        lay.addWidget(self.view_widget, 1)
        lay.addLayout(row)
        lay.addWidget(self.legend)

    def set_stack(self, images: np.ndarray | None, labels: np.ndarray | None = None,
                  roi_names: list[str] | tuple[str, ...] = (), caption: str = "",
                  z_mm: np.ndarray | None = None) -> None:
        """z_mm: each slice's z in mm, shown beside the slider where given."""
        self.images = None if images is None else np.asarray(images, np.float32)
        self.z_mm = None if z_mm is None else np.asarray(z_mm, np.float64)
        self.labels = None if labels is None else np.asarray(labels)
        self.roi_names = list(roi_names)
        if self.images is not None and self.images.ndim == 2:
            self.images = self.images[None]
            self.labels = None if self.labels is None else self.labels[None]
        n = 0 if self.images is None else len(self.images)
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(n - 1, 0))
        self.slider.setValue(n // 2)
        self.slider.blockSignals(False)
        self.slider.setEnabled(n > 1)
        self.caption.setText(caption)
        self.legend.setText("  ".join(
            f'<span style="color: rgb{ROI_COLORS[i % len(ROI_COLORS)]}">■</span> {name}'
            for i, name in enumerate(self.roi_names)))
        if n == 0:
            self.slice_label.setText("")
            self.image_item.clear()
            self.label_item.clear()
            for it in self._letters:
                self.view.removeItem(it)
            self._letters, self._letters_shape = [], None
            return
        self._show(self.slider.value())
        self.view.autoRange(padding=0.01)

    def current_image(self) -> np.ndarray | None:
        return None if self.images is None else self.images[self.slider.value()]

    def _show(self, index: int) -> None:
        if self.images is None or not len(self.images):
            return
        index = int(np.clip(index, 0, len(self.images) - 1))
        text = f"slice {index + 1} / {len(self.images)}"
        if self.z_mm is not None and len(self.z_mm) == len(self.images):
            text += f" · z = {self.z_mm[index]:.1f} mm"
        self.slice_label.setText(text)
        self.image_item.setImage(self.images[index], levels=(0.0, 1.0), autoLevels=False)
        shape = tuple(self.images.shape[-2:])
        if shape != self._letters_shape:
            from explorer.widgets.latent_canvas import orientation_letters

            self._letters = orientation_letters(self.view, shape, self._letters)
            self._letters_shape = shape
        if self.labels is not None and self.roi_names:
            lut = label_lut(len(self.roi_names))
            lab = np.clip(self.labels[index].astype(np.intp), 0, len(lut) - 1)
            self.label_item.setImage(lut[lab], autoLevels=False, levels=(0, 255))
        else:
            self.label_item.clear()
