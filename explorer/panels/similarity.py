"""Similarity tab (SPEC F23; thesis 4.6, 7.5): KL between patients, nearest patients and
the identification experiment.

Every number comes from training.explore.similarity (encode the workspace, one posterior
per patient by latent.aggregate_patients, KL(q_i ‖ q_j) by training.latent.similarity); the
work runs on background threads (explorer.widgets.latest_worker.LatestWorker: a new
checkpoint or setting replaces a pending request, a superseded result is dropped).

Directions: the table's cell (i, j) is KL(q_i ‖ q_j), row i the posterior the
expectation is under, column j the reference, in nats; "symmetric" shows
½ (KL(q_i ‖ q_j) + KL(q_j ‖ q_i)). The nearest list ranks references j by the row of the
selected patient. Identification (thesis 7.5): query i = patient i's slice b,
reference j = patient j's slice a, ranked by KL(q_b,i ‖ q_a,j).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explorer import figures
from explorer.panels import Panel
from explorer.qt import Qt, QtWidgets, Signal
from explorer.widgets.kl_table import HeatMapView, KLTableView
from explorer.widgets.latest_worker import LatestWorker
from explorer.widgets.method_table import MethodTable
from training.latent import similarity
from training.latent.encode import AGGREGATES
from training.explore.latent import load_latent_model

AGGREGATE_TEXT = {
    "mixture": "mixture (moment-matched)",
    "product": "product of experts",
    "middle": "middle slice",
}


def _compute_matrix(ckpt: str, ws_path: str, aggregate: str, split, progress, cancel):
    from training.explore.similarity import patient_similarity
    from training.store.workspace import Workspace

    model = load_latent_model(ckpt).model  # cached while the file is unchanged
    with Workspace.open(ws_path) as ws:
        return patient_similarity(model, ws, aggregate, split, progress=progress, cancel=cancel)


def _compute_identification(ckpt: str, ws_path: str, a: int, b: int, symmetric: bool,
                            split, level, progress, cancel):
    """(KL Identification, every method's Comparison) of the same queries."""
    from training.explore.similarity import compare_slices, identify_slices
    from training.store.workspace import Workspace

    model = load_latent_model(ckpt).model  # cached while the file is unchanged
    with Workspace.open(ws_path) as ws:
        res = identify_slices(model, ws, a, b, symmetric, split, progress=progress, cancel=cancel, level=level)
        comp = compare_slices(model, ws, a, b, split, level=level, cancel=cancel)
        return res, comp


class SimilarityPanel(Panel):
    title = "Similarity"
    tooltip = "KL divergence between patients' posteriors, nearest patients and the identification experiment"
    _progress = Signal(int, int, str)  # worker thread → GUI thread

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.result = None  # training.explore.similarity.PatientSimilarity
        self.identification: similarity.Identification | None = None
        self.comparison: similarity.Comparison | None = None
        self.error = ""
        self.worker = LatestWorker(self, "similarity-matrix")
        self.id_worker = LatestWorker(self, "similarity-identify")
        self.worker.resultReady.connect(self._matrix_ready)
        self.worker.failed.connect(self._matrix_failed)
        self.worker.busyChanged.connect(self._busy_changed)
        self.id_worker.resultReady.connect(self._identification_ready)
        self.id_worker.failed.connect(self._identification_failed)
        self.id_worker.busyChanged.connect(lambda b: self.run_id_btn.setText("Running…" if b else "Run"))
        self._progress.connect(self._show_progress)

        # -- controls
        self.aggregate = QtWidgets.QComboBox()
        for key in AGGREGATES:
            self.aggregate.addItem(AGGREGATE_TEXT.get(key, key), key)
        self.aggregate.setToolTip("How a patient's slices make one posterior (training/latent/encode.py): the "
                                  "moment-matched mixture of its slices' posteriors, their product, "
                                  "or the middle slice")
        self.split = QtWidgets.QComboBox()
        self.split.addItems(["all", "train", "test"])
        self.split.setToolTip("Which patients to encode")
        self.symmetric = QtWidgets.QCheckBox("Symmetric")
        self.symmetric.setToolTip("Show ½ (KL(q_i ‖ q_j) + KL(q_j ‖ q_i)) instead of the directed KL(q_i ‖ q_j)")
        self.busy = QtWidgets.QProgressBar()
        self.busy.setMaximumWidth(180)
        self.busy.setVisible(False)
        self.export_btn = figures.ExportButton(lambda: self.heatmap, "kl-heatmap", settings=state.settings)
        self.export_btn.add_action("Save KL matrix as CSV (with its direction)…", self._export_csv_dialog)
        self.export_btn.add_action("Save table view as PNG…", self._export_table_dialog)
        self.export_btn.exported.connect(lambda p: state.show_message(f"Exported {p}"))
        self.export_btn.failed.connect(lambda m: state.show_message(m, 0))
        top = QtWidgets.QHBoxLayout()
        for label, w in (("Patient posterior", self.aggregate), ("Patients", self.split)):
            top.addWidget(QtWidgets.QLabel(label))
            top.addWidget(w)
        top.addWidget(self.symmetric)
        top.addStretch(1)
        top.addWidget(self.busy)
        top.addWidget(self.export_btn)
        self.definition = QtWidgets.QLabel()
        self.definition.setWordWrap(True)
        self.message = QtWidgets.QLabel()
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #555")

        # -- table and heat map
        self.table = KLTableView()
        self.heatmap = HeatMapView()
        # the selected patient's outline is an on-screen cue, not part of the figure
        self.export_btn.hide_while_exporting(self.heatmap.row_box, self.heatmap.col_box)
        self.views = QtWidgets.QTabWidget()
        self.views.addTab(self.table, "Table")
        self.views.addTab(self.heatmap, "Heat map")
        self.views.setTabToolTip(0, "Click a column header to sort the rows by that reference")

        # -- nearest
        near_box = QtWidgets.QGroupBox("Nearest patients")
        self.near_k = QtWidgets.QSpinBox()
        self.near_k.setRange(1, 50)
        self.near_k.setValue(5)
        self.near_k.setToolTip("How many nearest patients to list")
        self.near_title = QtWidgets.QLabel("Select a patient")
        self.near_title.setWordWrap(True)
        self.near_list = QtWidgets.QListWidget()
        nl = QtWidgets.QVBoxLayout(near_box)
        kr = QtWidgets.QHBoxLayout()
        kr.addWidget(QtWidgets.QLabel("Show"))
        kr.addWidget(self.near_k)
        kr.addStretch(1)
        nl.addLayout(kr)
        nl.addWidget(self.near_title)
        nl.addWidget(self.near_list, 1)

        # -- identification
        id_box = QtWidgets.QGroupBox("Identification (thesis 7.5)")
        id_box.setToolTip("Is each patient's slice b nearest (by KL) to its own slice a among all patients' slice a?")
        self.slice_a = QtWidgets.QSpinBox()
        self.slice_b = QtWidgets.QSpinBox()
        for box, tip in ((self.slice_a, "Reference slice a: index into each patient's stack (negative: from the end)"),
                         (self.slice_b, "Query slice b: index into each patient's stack (negative: from the end)")):
            box.setRange(-999, 999)
            box.setToolTip(tip)
        self.slice_b.setValue(2)
        self.id_level = QtWidgets.QComboBox()
        self.id_level.addItems(["patient", "series"])
        self.id_level.setToolTip("patient: a match to another CT series of the same patient is not a "
                                 "confusion, counts per patient; series: only the query's own series "
                                 "counts, counts per series")
        self.run_id_btn = QtWidgets.QPushButton("Run")
        self.run_id_btn.setToolTip("Encode slices a and b of every patient and rank by KL(q_b,i ‖ q_a,j)")
        self.run_id_btn.clicked.connect(self.run_identification)
        self.id_score = QtWidgets.QLabel("—")
        f = self.id_score.font()
        f.setPointSizeF(f.pointSizeF() * 1.3)
        f.setBold(True)
        self.id_score.setFont(f)
        self.id_detail = QtWidgets.QLabel()
        self.id_detail.setWordWrap(True)
        self.id_confused = QtWidgets.QListWidget()
        self.id_confused.setToolTip("Series (queries) whose nearest slice a was not their own (level series) "
                                    "or not one of their patient's series (level patient)")
        il = QtWidgets.QVBoxLayout(id_box)
        ir = QtWidgets.QHBoxLayout()
        ir.addWidget(QtWidgets.QLabel("slice a"))
        ir.addWidget(self.slice_a)
        ir.addWidget(QtWidgets.QLabel("slice b"))
        ir.addWidget(self.slice_b)
        ir.addWidget(self.id_level)
        ir.addWidget(self.run_id_btn)
        il.addLayout(ir)
        il.addWidget(self.id_score)
        il.addWidget(self.id_detail)
        self.id_methods = MethodTable()  # baselines beside the KL (issue 15)
        il.addWidget(self.id_methods)
        self.experiment_btn = QtWidgets.QPushButton("Distance experiment…")
        self.experiment_btn.setToolTip("Thesis 7.5 protocol: train a fresh model on slice a of every patient, "
                                       "identify each from slices at several distances (mm), every method")
        self.experiment_btn.clicked.connect(self.open_experiment)
        self.experiment_dialog = None
        il.addWidget(self.experiment_btn, 0, Qt.AlignmentFlag.AlignLeft)
        il.addWidget(QtWidgets.QLabel("Confused series"))
        il.addWidget(self.id_confused, 1)

        side = QtWidgets.QWidget()
        sl = QtWidgets.QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        self.near_list.setMinimumHeight(90)
        self.id_confused.setMinimumHeight(60)
        sl.addWidget(near_box, 2)
        sl.addWidget(id_box, 3)
        # in a short window the side column scrolls instead of pressing its widgets onto
        # each other (the Distance experiment button lay over the method table)
        side_scroll = QtWidgets.QScrollArea()
        side_scroll.setWidgetResizable(True)
        side_scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        side_scroll.setWidget(side)
        # as wide as its widgets need (no horizontal scrolling): the Run button stays in view
        side_scroll.setMinimumWidth(side.minimumSizeHint().width()
                                    + side_scroll.verticalScrollBar().sizeHint().width() + 4)
        split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.views)
        split.addWidget(side_scroll)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([700, 300])
        split.setChildrenCollapsible(False)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.definition)
        lay.addWidget(self.message)
        lay.addWidget(split, 1)

        self.aggregate.currentIndexChanged.connect(lambda _: self.refresh())
        self.split.currentIndexChanged.connect(lambda _: self.refresh())
        self.symmetric.toggled.connect(lambda _: self._show_matrix())
        self.near_k.valueChanged.connect(lambda _: self._show_nearest())
        self.table.patientActivated.connect(self._row_activated)
        self.id_box = id_box
        self._update_definition()
        self._update_identification_box()
        self.refresh()

    def _update_identification_box(self) -> None:
        mode = ""
        if self.state.has_workspace_data():
            try:
                with self.state.open_workspace() as ws:
                    mode = ws.preprocess.mode
            except Exception:  # unreadable: the matrix request reports it
                pass
        on = mode != "3d"
        self.run_id_btn.setEnabled(on)
        self.slice_a.setEnabled(on)
        self.slice_b.setEnabled(on)
        if not on:
            self.id_score.setText("—")
            self.id_detail.setText("Identification compares two slices of each patient: it needs a 2D "
                                   "workspace (this one holds one 3D volume per patient).")

    # -- panel hooks
    def on_workspace_changed(self) -> None:
        self._update_identification_box()
        self.refresh()

    def on_checkpoint_changed(self, path: str) -> None:
        self.refresh()

    def on_patient_selected(self, pseudonym: str) -> None:
        if pseudonym:
            self.table.select_patient(pseudonym)
        self._show_nearest()

    def shutdown(self) -> None:
        self.worker.shutdown()
        self.id_worker.shutdown()
        if self.experiment_dialog is not None:
            self.experiment_dialog.cancel()

    # -- requests
    def _split_value(self):
        s = self.split.currentText()
        return None if s == "all" else s

    def _inputs(self) -> tuple[str, str] | None:
        if not self.state.has_workspace_data():
            self._set_message("Open a workspace with patients to compare them.")
            return None
        if self.state.checkpoint_path is None:
            self._set_message("Load or train a model: the divergences are between its posteriors.")
            return None
        return str(self.state.checkpoint_path), str(self.state.workspace_path)

    def refresh(self) -> int | None:
        """Recompute the matrix in the background (the newest request wins); its id.

        A hidden tab only remembers that it is out of date and computes when shown (an ingest
        changes the workspace once per patient; a hidden tab must not re-encode each time).
        """
        if not self.visible_or_stale():
            return None
        inputs = self._inputs()
        if inputs is None:
            self.worker.cancel()
            self.result = None
            self._show_matrix()
            return None
        ckpt, ws = inputs
        self._set_message("Encoding the patients…")
        box: list[int] = []
        return self._submit(self.worker, box, _compute_matrix, ckpt, ws,
                            self.aggregate.currentData(), self._split_value(), "encoding")

    def run_identification(self) -> int | None:
        inputs = self._inputs()
        if inputs is None:
            return None
        ckpt, ws = inputs
        self.id_score.setText("…")
        box: list[int] = []
        return self._submit(self.id_worker, box, _compute_identification, ckpt, ws,
                            self.slice_a.value(), self.slice_b.value(), self.symmetric.isChecked(),
                            self._split_value(), self.id_level.currentText(), "identification")

    def open_experiment(self):
        """The identification-vs-distance dialog (explorer.widgets.identify_experiment)."""
        from explorer.widgets.identify_experiment import IdentifyExperimentDialog

        if not self.state.has_workspace_data():
            self._set_message("Open a workspace with patients first.")
            return None
        d = self.experiment_dialog
        if d is None or d.workspace_path != self.state.workspace_path:
            if d is not None and d.is_running():
                d.show()
                return d
            d = self.experiment_dialog = IdentifyExperimentDialog(self.state.workspace_path, self)
        d.show()
        d.raise_()
        return d

    def _submit(self, worker: LatestWorker, box: list, fn, *args) -> int:
        *head, what = args
        stale = lambda: bool(box) and not worker.is_current(box[0])  # noqa: E731 (superseded: stop early)
        progress = lambda d, t: self._progress.emit(d, t, what)  # noqa: E731 (queued to the GUI thread)
        rid = worker.submit(fn, *head, progress, stale)
        box.append(rid)
        return rid

    def wait_idle(self, timeout_ms: int = 30000) -> bool:
        """Tests and benchmarks: block until both workers are idle (process events after)."""
        return self.worker.wait_idle(timeout_ms) and self.id_worker.wait_idle(timeout_ms)

    # -- results
    def _matrix_ready(self, _rid: int, result) -> None:
        self.result = result
        self.error = ""
        from training.store.units import series_of_patients

        n = len(result.names)
        n_patients = len(set(result.patients)) if result.patients else n
        how = AGGREGATE_TEXT.get(result.aggregate, result.aggregate)
        self._set_message(f"{series_of_patients(n, n_patients)}; one posterior per series ({how}), "
                          "one row and column per series")
        self._show_matrix()

    def _matrix_failed(self, _rid: int, message: str) -> None:
        if message.endswith("cancelled"):
            return
        self.error = message
        self.result = None
        self._show_matrix()
        self._set_message(f"Could not compute the divergences: {message}", error=True)

    def _identification_ready(self, _rid: int, result) -> None:
        res, self.comparison = result
        self.id_methods.set_comparison(self.comparison)
        self.identification = res
        self.id_score.setText(res.score_text())
        self.id_score.setToolTip(res.rule_text())
        self.id_detail.setText(
            f"{res.means_text('.4g', ' nats')}<br><small>{res.rule_text()}<br>{res.direction}</small>")
        self.id_confused.clear()
        for i, j, v, own in res.confusions:
            self.id_confused.addItem(f"{res.names[i]} → {res.names[j]} ({v:.4g} < own {own:.4g})")
        if not res.confusions:
            self.id_confused.addItem("none")

    def _identification_failed(self, _rid: int, message: str) -> None:
        if message.endswith("cancelled"):
            return
        self.identification = None
        self.comparison = None
        self.id_methods.set_comparison(None)
        self.id_score.setText("—")
        self.id_detail.setText(f"<span style='color:#b00020'>{message}</span>")
        self.id_confused.clear()

    # -- display
    def matrix(self) -> np.ndarray | None:
        """The matrix shown now (directed or symmetric), patient order."""
        return None if self.result is None else self.result.matrix(self.symmetric.isChecked())

    def _update_definition(self) -> None:
        sym = self.symmetric.isChecked()
        text = ("Cell (i, j): ½ (KL(q_i ‖ q_j) + KL(q_j ‖ q_i)), symmetric, in nats"
                if sym else "Cell (i, j): KL(q_i ‖ q_j) in nats — row i = the posterior the expectation is "
                "taken under, column j = the reference")
        self.definition.setText(f"<b>{text}</b>. Colours: log scale, dark = small divergence (similar).")

    def _show_matrix(self) -> None:
        self._update_definition()
        m = self.matrix()
        sym = self.symmetric.isChecked()
        definition = similarity.SYMMETRIC_DEFINITION if sym else similarity.KL_DIRECTION
        if m is None:
            self.table.kl_model.clear()
            self.heatmap.set_matrix(np.zeros((0, 0)), [], "")
        else:
            names = self.result.names
            self.table.set_matrix(m, names, definition)
            self.table.kl_model.set_patients(getattr(self.result, "patients", None))
            off = m[~np.eye(len(m), dtype=bool)] if len(m) > 1 else m.ravel()
            # two short lines: the caption's width is the layout's minimum width, and one long
            # line made the plot wider than a narrow tab (its right columns were cut off)
            note = (f"dark blue = smallest, pale yellow = largest (log scale)<br>off-diagonal "
                    f"{off.min():.3g} … {off.max():.3g} nats" if off.size else "")
            title = "½ (KL(q_i ‖ q_j) + KL(q_j ‖ q_i))" if sym else "KL(q_i ‖ q_j), row i, column j"
            self.heatmap.set_matrix(m, names, title, note)
            if self.state.selected_patient:
                self.table.select_patient(self.state.selected_patient)
        self._show_nearest()

    def nearest(self) -> list[tuple[str, float]]:
        """(pseudonym, value) of the selected patient's nearest references, ascending."""
        m = self.matrix()
        name = self.state.selected_patient
        if m is None or not name or name not in self.result.names:
            return []
        i = self.result.names.index(name)
        return [(self.result.names[j], v) for j, v in similarity.nearest(m, i, self.near_k.value())]

    def _show_nearest(self) -> None:
        self.near_list.clear()
        name = self.state.selected_patient
        names = self.result.names if self.result is not None else []
        self.heatmap.set_highlight(names.index(name) if name in names else -1)
        if self.result is None:
            self.near_title.setText("No divergences yet")
            return
        if not name or name not in self.result.names:
            self.near_title.setText("Select a patient (in the list or the table)")
            return
        sym = self.symmetric.isChecked()
        self.near_title.setText(
            f"Nearest to <b>{name}</b>, by " + ("½ (KL(q_i ‖ q_j) + KL(q_j ‖ q_i))" if sym else
                                               f"KL(q_{name} ‖ q_j) over references j") + " (nats)")
        for other, v in self.nearest():
            self.near_list.addItem(f"{other}    {v:.4g}")

    def _row_activated(self, name: str) -> None:
        self.state.select_patient(name)

    def _set_message(self, text: str, error: bool = False) -> None:
        self.message.setStyleSheet("color: #b00020" if error else "color: #555")
        self.message.setText(text)

    def _busy_changed(self, busy: bool) -> None:
        self.busy.setVisible(busy)
        if busy:
            self.busy.setRange(0, 0)

    def _show_progress(self, done: int, total: int, what: str) -> None:
        if what == "encoding" and self.worker.is_busy() and total:
            self.busy.setRange(0, total)
            self.busy.setValue(done)
            self.busy.setFormat("encoding %v / %m")

    # -- export
    def export_matrix_csv(self, path) -> Path:
        """The matrix shown (directed or symmetric) as CSV, its definition in the header row:
        one row per series (entry), column "patient" naming each row's patient pseudonym."""
        m = self.matrix()
        if m is None:
            raise ValueError("no divergences to export yet")
        similarity.write_matrix_csv(path, m, self.result.names, self.symmetric.isChecked(),
                                    patients=self.result.patients or list(self.result.names), unit="series")
        return Path(path)

    def export(self, path) -> Path:
        """File ▸ Export: .csv → the matrix; .png/.svg/.pdf → the heat map."""
        path = Path(path)
        if path.suffix.lower() == ".csv":
            return self.export_matrix_csv(path)
        return self.export_btn.export(path.suffix.lstrip(".").lower() or "png", path)

    def export_table_png(self, path) -> Path:
        """The table as shown on screen (colours, sort order, visible cells) as PNG."""
        from training.atomic import atomic_write_bytes

        from explorer.qt import QtCore

        buf = QtCore.QBuffer()
        buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
        if not self.table.grab().toImage().save(buf, "PNG"):
            raise OSError("could not encode the table as PNG")
        return atomic_write_bytes(Path(path), bytes(buf.data()))

    def _export_table_dialog(self) -> None:
        path = figures.ask_save_path(self, "Save the table view as PNG", "kl-table", "png", self.state.settings)
        if path is None:
            return
        try:
            self.export_table_png(path)
            self.state.show_message(f"Exported {path}")
        except Exception as exc:
            from explorer.workers import readable_error

            self.state.show_message(f"Could not write {path.name}: {readable_error(exc)}", 0)

    def _export_csv_dialog(self) -> None:
        path = figures.ask_save_path(self, "Save the KL matrix as CSV",
                                     "kl-symmetric" if self.symmetric.isChecked() else "kl-directed", "csv",
                                     self.state.settings)
        if path is None:
            return
        try:
            self.export_matrix_csv(path)
            self.state.show_message(f"Exported {path}")
        except Exception as exc:
            from explorer.workers import readable_error

            self.state.show_message(f"Could not write {path.name}: {readable_error(exc)}", 0)


PANEL = SimilarityPanel
