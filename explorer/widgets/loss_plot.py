"""Live loss curves: total, reconstruction, KL and cross-entropy, train (solid) and test (dashed)."""

from __future__ import annotations

from contextlib import contextmanager

from explorer.qt import Qt, QtWidgets, pg

TERMS = {"total": "total", "recon": "reconstruction", "kl": "KL", "ce": "cross-entropy"}
COLORS = {"total": (30, 30, 30), "recon": (31, 119, 180), "kl": (214, 39, 40), "ce": (44, 160, 44)}
SPLITS = ("train", "test")


class LossPlot(pg.PlotWidget):
    """Per-epoch losses; `add(split, term, epoch, value)`; `set_log(bool)`."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip("Losses per epoch (per image); solid: train, dashed: test")
        self.plotItem.setLabel("bottom", "epoch")
        # every term is a negative log-likelihood or KL summed over one image's pixels
        self.plotItem.setLabel("left", "loss (nats per image)")
        # no grid: in log mode its many minor lines cost most of each redraw
        self.data: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self.curves: dict[tuple[str, str], pg.PlotDataItem] = {}

    @staticmethod
    def legend_html() -> str:
        """The key, shown beside the plot (a legend inside would cover the curves)."""
        items = "&nbsp;&nbsp;".join(
            f'<span style="color: rgb{COLORS[k]}; font-weight: bold">━</span>&nbsp;{name}'
            for k, name in TERMS.items())
        return f"{items}&nbsp;&nbsp;&nbsp;&nbsp;solid: train, dashed: test"

    def _curve(self, split: str, term: str) -> pg.PlotDataItem:
        key = (split, term)
        if key not in self.curves:
            style = Qt.PenStyle.SolidLine if split == "train" else Qt.PenStyle.DashLine
            pen = pg.mkPen(COLORS.get(term, (120, 120, 120)), width=2, style=style)
            name = f"{TERMS.get(term, term)} ({split})"
            self.curves[key] = self.plotItem.plot([], [], pen=pen, name=name, symbol=None)
            self.data[key] = ([], [])
        return self.curves[key]

    def add(self, split: str, term: str, epoch: float, value: float) -> None:
        curve = self._curve(split, term)
        xs, ys = self.data[(split, term)]
        xs.append(float(epoch))
        ys.append(float(value))
        curve.setData(xs, ys)

    def add_epoch(self, epoch: int, losses: dict[str, dict[str, float]]) -> None:
        """losses: {"train": {"total": …, "recon": …, "kl": …, "ce": …}, "test": {…}}."""
        for split, terms in losses.items():
            for term, value in (terms or {}).items():
                if value is None:
                    continue
                self.add(split, term, epoch, value)

    def set_epoch_range(self, epochs: int) -> None:
        """Fix the epoch axis to the whole run: the curves grow across it and the axis is
        not re-laid out every epoch (only the loss axis follows the data)."""
        self.plotItem.enableAutoRange(x=False)
        self.plotItem.setXRange(0.5, max(epochs, 1) + 0.5, padding=0)

    @contextmanager
    def legend_shown(self):
        """A legend inside the plot while the block runs (exports: a figure saved alone
        must carry its key; on screen the key sits beside the plot, clear of the curves)."""
        # one column: pyqtgraph's two-column layout misplaced the last entry of an even
        # count (seen in the exported curves: 'cross-entropy (train)' over the frame)
        legend = pg.LegendItem(offset=(-10, 10), colCount=1, brush=pg.mkBrush(255, 255, 255, 220),
                               pen=pg.mkPen(180, 180, 180), labelTextColor=(20, 20, 20))
        legend.setParentItem(self.plotItem.vb)
        for (split, term), curve in sorted(self.curves.items(), key=lambda kv: (list(TERMS).index(kv[0][1])
                                                                                 if kv[0][1] in TERMS else 9, kv[0][0])):
            legend.addItem(curve, f"{TERMS.get(term, term)} ({split})")
        try:
            yield legend
        finally:
            if legend.scene() is not None:  # also detaches it from the view box
                legend.scene().removeItem(legend)

    def points(self, split: str, term: str) -> int:
        return len(self.data.get((split, term), ([], []))[0])

    def set_log(self, on: bool) -> None:
        self.plotItem.setLogMode(x=False, y=bool(on))

    def clear_curves(self) -> None:
        self.plotItem.enableAutoRange(x=True)
        for curve in self.curves.values():
            self.plotItem.removeItem(curve)
        self.curves, self.data = {}, {}
