"""The identification-vs-distance experiment (thesis 7.5 protocol) as a dialog: settings,
run on a worker thread with progress and cancel, then the table and the curve per method.

The work is training.explore.experiments.run_identify (the same as `ct-vae experiment
identify`); the report folder (CSV, SVG, report.json) is under the workspace's runs folder.
"""

from __future__ import annotations

from pathlib import Path

from explorer import workers
from explorer.qt import Qt, QtWidgets, pg
from explorer.settings import new_run_folder, runs_dir

COLOURS = {"kl_directed": (214, 39, 40), "kl_symmetric": (255, 127, 14), "euclidean_mu": (148, 103, 189),
           "pixel_l2": (31, 119, 180), "recon_l2": (44, 160, 44)}


def _run(ctx, ws_path: str, out_dir: str, settings) -> dict:
    from training.explore.experiments import run_identify

    return run_identify(ws_path, out_dir, settings,
                        progress=lambda phase, done, total: ctx.progress(phase, done, total),
                        cancel=ctx.cancel)


def _eligible_entries(workspace_path: Path) -> list[str]:
    """Labels of the cohort entries with 2 or more images (the experiment's candidates);
    [] when the workspace cannot be read (the run then says why)."""
    from training.store.workspace import Workspace

    try:
        with Workspace.open(workspace_path) as ws:
            return [p.pseudonym for p in ws.patients if not p.is_query and p.n_images >= 2]
    except Exception:  # noqa: BLE001 (shown when the run fails, not here)
        return []


class IdentifyExperimentDialog(QtWidgets.QDialog):
    """`extra_model` / `extra_train`: ModelConfig / TrainConfig overrides (tests use tiny models)."""

    def __init__(self, workspace_path: Path, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Identification vs distance (thesis 7.5)")
        self.workspace_path = Path(workspace_path)
        self.job: workers.Job | None = None
        self.report: dict | None = None
        self.error = ""
        self.out_dir: Path | None = None
        self.extra_model: dict = {}
        self.extra_train: dict = {}

        intro = QtWidgets.QLabel(
            "Trains a <b>fresh</b> model on slice a of every patient only, then identifies each patient "
            "from slices at the distances below (never trained on) by KL, by the Euclidean distance "
            "between posterior means and by pixel L2 — the baselines the latent has to beat.")
        intro.setWordWrap(True)
        self.preset = QtWidgets.QComboBox()
        self.preset.addItem("project defaults", None)
        from training.config import PRESET_TITLES, PRESETS

        for name in PRESETS:
            self.preset.addItem(PRESET_TITLES.get(name, name), name)
        self.epochs = QtWidgets.QSpinBox()
        self.epochs.setRange(1, 100000)
        self.epochs.setValue(200)
        self.distances = QtWidgets.QLineEdit("3, 6.5, 16, 33")
        self.distances.setToolTip("Query distances from slice a in mm (comma-separated)")
        self.slice_a = QtWidgets.QSpinBox()
        self.slice_a.setRange(-1, 9999)
        self.slice_a.setSpecialValueText("middle")
        self.slice_a.setValue(-1)
        self.slice_a.setToolTip("Reference slice index (middle: the middle slice of each patient)")
        self.level = QtWidgets.QComboBox()
        self.level.addItems(["patient", "series"])
        self.entries = QtWidgets.QListWidget()
        self.entries.setToolTip("The series the experiment trains on and identifies (the CLI's --entries); "
                                "all by default")
        self.entries.setMaximumHeight(110)
        for label in _eligible_entries(self.workspace_path):
            item = QtWidgets.QListWidgetItem(label)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.entries.addItem(item)
        form = QtWidgets.QFormLayout()
        form.addRow("Model", self.preset)
        form.addRow("Epochs", self.epochs)
        form.addRow("Distances (mm)", self.distances)
        form.addRow("Slice a", self.slice_a)
        form.addRow("Level", self.level)
        form.addRow("Series", self.entries)
        self.run_btn = QtWidgets.QPushButton("Run")
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn = QtWidgets.QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel)
        self.cancel_btn.setEnabled(False)
        self.progress = QtWidgets.QProgressBar()
        self.status = QtWidgets.QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QtWidgets.QTableWidget(0, 0)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.plot = pg.PlotWidget()
        self.plot.plotItem.setLabel("bottom", "distance from the trained slice (mm)")
        self.plot.plotItem.setLabel("left", "fraction nearest to self")
        self.plot.plotItem.setYRange(0, 1.05)
        self.plot.plotItem.getAxis("left").enableAutoSIPrefix(False)
        self.plot.plotItem.addLegend(offset=(-10, 10))
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        buttons.addWidget(self.progress, 1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.plot, 1)
        self.resize(760, 720)

    def settings(self):
        from training.explore.experiments import IdentifySettings

        try:
            distances = tuple(float(v) for v in self.distances.text().replace(";", ",").split(",") if v.strip())
        except ValueError:
            raise ValueError(f"distances must be numbers in mm, got {self.distances.text()!r}") from None
        if not distances or any(d <= 0 for d in distances):
            raise ValueError("give one or more positive distances in mm")
        items = [self.entries.item(i) for i in range(self.entries.count())]
        chosen = tuple(it.text() for it in items if it.checkState() == Qt.CheckState.Checked)
        if items and len(chosen) < 2:
            raise ValueError("tick at least 2 series")
        entries = () if len(chosen) == len(items) else chosen  # (): every entry
        return IdentifySettings(preset=self.preset.currentData(), epochs=self.epochs.value(),
                                model=dict(self.extra_model), train=dict(self.extra_train),
                                slice_a=None if self.slice_a.value() < 0 else self.slice_a.value(),
                                distances_mm=distances, level=self.level.currentText(), entries=entries)

    def start(self) -> bool:
        if self.job is not None:
            return False
        try:
            settings = self.settings()
        except ValueError as exc:
            self._fail(str(exc))
            return False
        self.report, self.error = None, ""
        self.out_dir = new_run_folder(runs_dir(self.workspace_path) / "experiments", "identify")
        self.job = workers.Job(_run, str(self.workspace_path), str(self.out_dir), settings, parent=self)
        self.job.progress.connect(self._progress)
        self.job.done.connect(self._done)
        self.job.failed.connect(self._fail)
        self.job.ended.connect(self._ended)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText("Training on slice a of every patient…")
        self.job.start()
        return True

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling…")

    def is_running(self) -> bool:
        return self.job is not None

    def _progress(self, done: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{text} {done}/{total}")

    def _done(self, report: dict) -> None:
        self.report = report
        self._show(report)
        self.status.setText(f"Report: {self.out_dir} (identify.csv, identify.svg, report.json); "
                            f"data hash {report['data_hash']}")

    def _fail(self, message: str) -> None:
        self.error = message
        text = "Cancelled" if message.endswith("cancelled") else message
        self.status.setText(f"<span style='color:#b00020'>{text}</span>")

    def _ended(self) -> None:
        self.job = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _show(self, report: dict) -> None:
        results = [r for r in report["results"] if r["methods"]]
        methods = list(report["methods"])
        self.table.clear()
        self.table.setRowCount(len(methods))
        self.table.setColumnCount(len(results))
        self.table.setHorizontalHeaderLabels([f"{r['distance_mm']:g} mm (n = {r['n']} series)" for r in results])
        self.table.setVerticalHeaderLabels(methods)
        for i, m in enumerate(methods):
            for j, r in enumerate(results):
                s = r["methods"][m]
                item = QtWidgets.QTableWidgetItem(f"{s['n_identified']} of {r['n']} {s.get('unit', 'series')}  "
                                                  f"(top-3 {s['n_top3']}, "
                                                  f"rank {s['mean_rank']:.2f})")
                item.setToolTip(report["methods"][m])
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        self.plot.plotItem.clear()
        for m in methods:
            xs = [r["distance_mm"] for r in results]
            ys = [r["methods"][m]["n_identified"] / r["n"] for r in results]
            self.plot.plotItem.plot(xs, ys, pen=pg.mkPen(COLOURS.get(m, (90, 90, 90)), width=2), symbol="o",
                                    symbolSize=6, symbolBrush=COLOURS.get(m, (90, 90, 90)), name=m)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.cancel()
        super().closeEvent(event)
