"""Grids of images: inputs over reconstructions, with a history to scrub (thesis fig. 7.2).

Images are 2-D float arrays in [0, 1], rows top→bottom and columns left→right as stored
(anterior at the top, the patient's left on the image's right); 3-D volumes are shown by
their middle slice along z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.qt import Qt, QtGui, QtWidgets, Signal, pg

GAP = 2  # pixels between tiles
GAP_VALUE = 1.0  # white gaps separate the tiles on the white background


def as_slice(image: np.ndarray) -> np.ndarray:
    """One 2-D image (y, x) from (y, x), (c, y, x) [CT channel] or (c, z, y, x) / (z, y, x)."""
    a = np.asarray(image, dtype=np.float32)
    while a.ndim > 3:
        a = a[0]  # the CT channel comes first
    if a.ndim == 3:
        a = a[a.shape[0] // 2] if a.shape[0] > 4 else a[0]
    return a


def mosaic(rows: list[np.ndarray], gap: int = GAP, fill: float = GAP_VALUE) -> np.ndarray:
    """Tile rows of images (each (n, H, W)) into one array; short rows are padded with `fill`."""
    rows = [np.stack([as_slice(im) for im in r]) if len(r) else np.zeros((0, 1, 1), np.float32) for r in rows]
    h = max((r.shape[1] for r in rows if len(r)), default=1)
    w = max((r.shape[2] for r in rows if len(r)), default=1)
    n = max((len(r) for r in rows), default=1) or 1
    out = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap), fill, np.float32)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = i * (h + gap), j * (w + gap)
            out[y:y + im.shape[0], x:x + im.shape[1]] = im
    return out


class ImageGrid(pg.GraphicsLayoutWidget):
    """Rows of images in one ImageItem (one texture, cheap to redraw), labelled on the left."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip("Inputs (upper row of each pair) over their reconstructions")
        # Row labels are ticks of an axis left of the images: they never cover a tile,
        # keep their screen size at any zoom and come out in exports.
        self.axis = pg.AxisItem("left")
        self.axis.setPen(pg.mkPen(None))
        self.axis.setTextPen(pg.mkPen(30, 30, 30))
        self.axis.setStyle(tickLength=0)
        self.addItem(self.axis, row=0, col=0)
        self.axis.setVisible(False)  # until rows come: an empty grid shows no stray ticks
        self.view = self.addViewBox(row=0, col=1, lockAspect=True, invertY=True, enableMouse=False)
        self.view.setMenuEnabled(False)
        self.axis.linkToView(self.view)
        self.item = pg.ImageItem()
        self.view.addItem(self.item)
        self._labels: list[str] = []
        self.current: np.ndarray | None = None

    def set_rows(self, rows: list[tuple[str, np.ndarray]]) -> None:
        """rows: (label, images (n, H, W) in [0, 1]) from top to bottom."""
        image = mosaic([imgs for _, imgs in rows])
        reshaped = self.current is None or self.current.shape != image.shape
        self.current = image
        self.item.setImage(image, levels=(0.0, 1.0), autoLevels=False)
        labels = [label for label, _ in rows]
        if reshaped or labels != self._labels:
            self._labels = labels
            n_rows = max(len(rows), 1)
            row_h = (image.shape[0] + GAP) / n_rows
            self.axis.setTicks([[((i + 0.5) * row_h - GAP / 2, label) for i, label in enumerate(labels)], []])
            self.axis.setVisible(bool(labels))
            # a width fixed by the labels themselves: no wait for the axis to size itself
            # on a later paint (an export right after new rows would miss them)
            font = QtGui.QFontMetrics(self.axis.style.get("tickFont") or QtGui.QFont())
            self.axis.setWidth(max((font.horizontalAdvance(t) for t in labels), default=0) + 10)
        if reshaped:
            self.view.autoRange(padding=0.02)
        self.ci.layout.activate()  # axis and view placed now, not at the next paint: an
        # export drawn before the next turn of the event loop has the labels

    def clear_images(self) -> None:
        self.current = None
        self.item.clear()
        self._labels = []
        self.axis.setTicks([[], []])
        self.axis.setVisible(False)


@dataclass
class Snapshot:
    epoch: int
    rows: list[tuple[str, np.ndarray]]


class ReconstructionHistory(QtWidgets.QWidget):
    """An ImageGrid with a slider through every snapshot received (newest by default)."""

    snapshotShown = Signal(int)  # epoch

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.snapshots: list[Snapshot] = []
        self.grid = ImageGrid()
        self.slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.slider.setToolTip("Scrub back through the reconstructions of earlier epochs")
        self.label = QtWidgets.QLabel("No reconstructions yet")
        self.label.setMinimumWidth(110)
        row = self.controls = QtWidgets.QHBoxLayout()  # owners may add e.g. an export button
        row.addWidget(QtWidgets.QLabel("History:"))
        row.addWidget(self.slider, 1)
        row.addWidget(self.label)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.grid, 1)
        lay.addLayout(row)
        self.slider.valueChanged.connect(self._show)

    def add_snapshot(self, epoch: int, rows: list[tuple[str, np.ndarray]]) -> None:
        """Add (or replace) the snapshot of `epoch`, kept in epoch order: a continued run's
        earlier snapshots may arrive from disk after its first new ones."""
        follow = not self.snapshots or self.slider.value() == len(self.snapshots) - 1
        shown = self.snapshots[self.slider.value()].epoch if self.snapshots else None
        self.snapshots = [s for s in self.snapshots if s.epoch != epoch]
        self.snapshots.append(Snapshot(epoch, rows))
        self.snapshots.sort(key=lambda s: s.epoch)
        self.slider.setEnabled(True)
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(self.snapshots) - 1)
        if follow:
            index = len(self.snapshots) - 1
        else:
            index = next(i for i, s in enumerate(self.snapshots) if s.epoch == shown)
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        self._show(index)

    def clear(self) -> None:
        self.snapshots = []
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.grid.clear_images()
        self.label.setText("No reconstructions yet")

    def _show(self, index: int) -> None:
        if not 0 <= index < len(self.snapshots):
            return
        snap = self.snapshots[index]
        self.grid.set_rows(snap.rows)
        self.label.setText(f"epoch {snap.epoch}  ({index + 1}/{len(self.snapshots)})")
        self.snapshotShown.emit(snap.epoch)
