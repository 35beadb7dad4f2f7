"""Reconstruction metrics per epoch (training.vae.metrics): MAE in HU inside the body, PSNR,
SSIM and Dice per ROI on the fixed test and train subsets; train solid, test dashed."""

from __future__ import annotations

from explorer.qt import Qt, QtWidgets, pg

FIGURES = {"mae_hu": ("MAE in body (HU)", "lower is better"), "psnr_db": ("PSNR (dB)", "higher is better"),
           "ssim": ("SSIM", "higher is better")}
COLORS = {"train": (31, 119, 180), "test": (214, 39, 40)}


class MetricsPlot(QtWidgets.QWidget):
    """`add_epoch(epoch, metrics)` with metrics = {"test": {...}, "train": {...}} as the
    trainer stores them in a history row; a combo box picks the figure shown."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.choice = QtWidgets.QComboBox()
        self.choice.setToolTip("Figure of the reconstructions of fixed train and test images "
                               "(see training/vae/metrics.py for the definitions)")
        for key, (name, _) in FIGURES.items():
            self.choice.addItem(name, key)
        self.plot = pg.PlotWidget()
        self.plot.plotItem.setLabel("bottom", "epoch")
        self.plot.plotItem.getAxis("left").enableAutoSIPrefix(False)  # SSIM 0.42, not 420 × 0.001
        self.plot.setToolTip("Reconstruction metric per epoch; solid: train subset, dashed: test subset")
        self.note = QtWidgets.QLabel("no metrics yet (TrainConfig.metrics_images = 0, or no epoch done)")
        self.note.setWordWrap(True)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.choice)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.note)
        self.rows: list[tuple[int, dict]] = []
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.choice.currentIndexChanged.connect(self._redraw)

    @property
    def figure(self) -> str:
        return self.choice.currentData()

    def add_epoch(self, epoch: int, metrics: dict | None) -> None:
        if not metrics:
            return
        self.rows.append((int(epoch), metrics))
        for split in metrics.values():
            for roi in (split or {}).get("dice") or {}:
                key = f"dice:{roi}"
                if self.choice.findData(key) < 0:
                    self.choice.addItem(f"Dice {roi}", key)
        self._redraw()

    def values(self, split: str, figure: str | None = None) -> tuple[list[int], list[float]]:
        figure = figure or self.figure
        xs, ys = [], []
        for epoch, m in self.rows:
            s = m.get(split) or {}
            v = (s.get("dice") or {}).get(figure[5:]) if figure.startswith("dice:") else s.get(figure)
            if v is not None:
                xs.append(epoch)
                ys.append(float(v))
        return xs, ys

    def _redraw(self) -> None:
        figure = self.figure
        if figure is None:
            return
        name, sense = FIGURES.get(figure, (self.choice.currentText(), "higher is better"))
        self.plot.plotItem.setLabel("left", name)
        last = []
        for split in ("train", "test"):
            xs, ys = self.values(split, figure)
            if split not in self.curves:
                style = Qt.PenStyle.SolidLine if split == "train" else Qt.PenStyle.DashLine
                self.curves[split] = self.plot.plotItem.plot([], [], pen=pg.mkPen(COLORS[split], width=2, style=style))
            self.curves[split].setData(xs, ys)
            if ys:
                n = (self.rows[-1][1].get(split) or {}).get("n_images", "?")
                last.append(f"{split} ({n} images) {ys[-1]:.4g}")
        if last:
            self.note.setText(f"{name}, {sense}; last epoch: " + ", ".join(last) + "; solid train, dashed test")

    def set_epoch_range(self, epochs: int) -> None:
        self.plot.plotItem.enableAutoRange(x=False)
        self.plot.plotItem.setXRange(0.5, max(epochs, 1) + 0.5, padding=0)

    def clear_curves(self) -> None:
        self.plot.plotItem.enableAutoRange(x=True)
        self.rows = []
        for split in list(self.curves):
            self.curves[split].setData([], [])
        while self.choice.count() > len(FIGURES):
            self.choice.removeItem(self.choice.count() - 1)
        self.note.setText("no metrics yet")
