"""Query tab (issue 16): a new patient in, the most similar earlier patients out.

Drop a patient's DICOM folder on this tab (or File ▸ Find similar patients…): it is
ingested as a QUERY with the workspace's preprocessing (never trained on: see
training/store/workspace.py ROLE_QUERY), encoded with the current model and every cohort
patient is ranked. Everything shown comes from training.explore.query.answer_query (the
ranking divergence KL(q_query ‖ q_j) and why, the baselines, the position pairing, the
ROI volumes); this tab only shows it. Queries are listed apart, on the left; "Move into
cohort" makes one ordinary training data (training.store.roles).

The encoded cohort is kept beside the checkpoint (RUN/encoded/, see
training.explore.query.encode_cohort), so the first query after a model loads reads it
instead of encoding the cohort again. A dropped folder that is already in the cohort is
answered as `ct-vae query` does: ranked against the other patients, with a note saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explorer import workers
from explorer.panels import Panel
from explorer.qt import Qt, QtGui, QtWidgets, Signal
from explorer.widgets.latest_worker import LatestWorker

DIRECTION_ITEMS = (
    ("KL(q_query ‖ q_j)", "query"),
    ("KL(q_j ‖ q_query)", "reverse"),
    ("symmetric ½(both)", "symmetric"),
)
COLUMNS = ("rank", "entry", "patient", "KL(q_query‖q_j)", "KL(q_j‖q_query)", "symmetric",
           "Euclidean µ", "rank (Eucl.)", "pixel L2", "rank (pixel)", "split")
CELL = 150


def _compute(ckpt: str, ws_path: str, label: str, top: int, direction: str, progress, cancel):
    from training.explore.latent import load_latent_model
    from training.explore.query import answer_query
    from training.store.workspace import Workspace

    lm = load_latent_model(ckpt)  # cached while the file is unchanged
    with Workspace.open(ws_path) as ws:
        return answer_query(lm.model, ws, label, top=top, direction=direction, model_key=lm.key,
                            progress=progress, cancel=cancel, store=Path(ckpt).resolve().parent / "encoded")


def run_query_ingest(ctx, paths: list[Path], workspace: Path, workers_n: int = 2):
    """Job function: ingest `paths` as query entries (workspace preprocessing). In a worker
    process, not inline on the job's thread: a query is usually one series, but reading
    and parsing it inline held the window's interpreter lock and stalled the GUI thread
    up to 180 ms (10 ms or less with the process pool; the app starts the pool's
    forkserver at launch, so the pool costs no start-up here, unlike in `ct-vae query`,
    which ingests inline; benchmarks/query_window.py)."""
    from training.store.ingest import ingest
    from training.store.workspace import ROLE_QUERY

    def on_patient(info) -> None:
        ctx.patient(info, workers.committed_thumbnail(Path(workspace), info.pseudonym))

    return ingest([Path(p) for p in paths], Path(workspace), None, progress=ctx.progress,
                  on_patient=on_patient, on_skipped=ctx.skipped, cancel=ctx.cancel,
                  workers=workers_n, role=ROLE_QUERY)


def _move_to_cohort(ctx, workspace: Path, labels: list[str]):
    from training.store.roles import move_to_cohort

    moved = move_to_cohort(workspace, labels)
    return f"Moved {', '.join(moved) or 'nothing'} into the cohort (trained on from the next run)"


def _write_report(ctx, answer, folder: Path):
    from training.explore.query_report import write_report

    paths = write_report(answer, folder)
    return f"Wrote {paths['csv'].name}, {paths['volumes'].name}, {paths['png'].name}, {paths['pdf'].name} in {folder}"


def _pixmap(rgb: np.ndarray, side: int = CELL) -> QtGui.QPixmap:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    img = QtGui.QImage(rgb.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
    return QtGui.QPixmap.fromImage(img).scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.FastTransformation)


class QueryPanel(Panel):
    title = "Query"
    tooltip = "Find the earlier patients most similar to a new one (drop its folder here)"
    _progress = Signal(int, int)

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.answer = None  # training.explore.query.QueryAnswer
        self.current: str | None = None
        # a dropped folder that was already in the cohort: answered like a query (ranked
        # against the other patients), though it is not in the list of queries
        self.cohort_entry: str | None = None
        self.error = ""
        self.worker = LatestWorker(self, "query-answer")
        self.worker.resultReady.connect(self._answer_ready)
        self.worker.failed.connect(self._answer_failed)
        self.worker.busyChanged.connect(self._busy_changed)
        self._progress.connect(self._show_progress)
        self._jobs: list[workers.Job] = []

        # left: the queries, apart from the cohort
        self.find_btn = QtWidgets.QPushButton("Find similar patients…")
        self.find_btn.setToolTip("Choose a new patient's DICOM folder: it is added as a query (never trained "
                                 "on) and compared with every earlier patient")
        self.find_btn.clicked.connect(self.find_dialog)
        self.queries = QtWidgets.QListWidget()
        self.queries.setMaximumWidth(220)
        self.queries.setToolTip("Query patients of this workspace: never trained on, not in the split")
        self.queries.currentTextChanged.connect(self._query_chosen)
        self.move_btn = QtWidgets.QPushButton("Move into cohort")
        self.move_btn.setToolTip("Make the selected query ordinary training data (it joins its patient's "
                                 "split; models trained before no longer match the data)")
        self.move_btn.clicked.connect(self.move_current_to_cohort)
        left = QtWidgets.QWidget()
        ll = QtWidgets.QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.find_btn)
        ll.addWidget(QtWidgets.QLabel("Queries (not training data)"))
        ll.addWidget(self.queries, 1)
        ll.addWidget(self.move_btn)

        # controls
        self.direction = QtWidgets.QComboBox()
        for text, key in DIRECTION_ITEMS:
            self.direction.addItem(text, key)
        self.direction.setToolTip("Ranking divergence. Default KL(q_query ‖ q_j): the expectation under the "
                                  "query's posterior, as in the thesis' identification (7.5)")
        self.top = QtWidgets.QSpinBox()
        self.top.setRange(1, 20)
        self.top.setValue(5)
        self.top.setToolTip("Matches shown with images and ROI volumes")
        self.save_btn = QtWidgets.QPushButton("Save report…")
        self.save_btn.setToolTip("Write ranking.csv, roi_volumes.csv, report.png and report.pdf (pseudonyms only)")
        self.save_btn.clicked.connect(self.save_report_dialog)
        self.busy = QtWidgets.QProgressBar()
        self.busy.setMaximumWidth(180)
        self.busy.setVisible(False)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Rank by"))
        top.addWidget(self.direction)
        top.addWidget(QtWidgets.QLabel("Show"))
        top.addWidget(self.top)
        top.addStretch(1)
        top.addWidget(self.busy)
        top.addWidget(self.save_btn)
        self.message = QtWidgets.QLabel("Drop a new patient's DICOM folder here to find the most similar "
                                        "earlier patients.")
        self.message.setWordWrap(True)
        self.definition = QtWidgets.QLabel()
        self.definition.setWordWrap(True)
        self.definition.setStyleSheet("color: #555")
        self.definition.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # ranked table
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.itemSelectionChanged.connect(self._row_selected)
        self._sorted_once = False

        # images side by side, and ROI volumes
        self.grid_host = QtWidgets.QWidget()
        self.grid = QtWidgets.QGridLayout(self.grid_host)
        self.grid.setSpacing(4)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.grid_host)
        self.images_scroll = scroll
        self.legend = QtWidgets.QLabel()
        self.legend.setToolTip("ROI overlay colours (the workspace's chosen ROIs, preprocessed labels)")
        images_box = QtWidgets.QWidget()
        ib = QtWidgets.QVBoxLayout(images_box)
        ib.setContentsMargins(0, 0, 0, 0)
        ib.addWidget(self.legend)
        ib.addWidget(scroll, 1)
        self.volumes = QtWidgets.QTableWidget(0, 5)
        self.volumes.setHorizontalHeaderLabels(["match", "ROI", "query cm³", "match cm³", "match − query"])
        self.volumes.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.volumes.verticalHeader().setVisible(False)
        self.volumes.setToolTip("ROI volumes from the stored native-resolution masks (voxel centres inside "
                                "the contours × voxel volume)")
        lower = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(images_box)
        lower.addWidget(self.volumes)
        lower.setStretchFactor(0, 1)
        lower.setStretchFactor(1, 0)
        lower.setSizes([800, 330])
        lower.setChildrenCollapsible(False)
        right = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.table)
        right.addWidget(lower)
        right.setStretchFactor(0, 0)
        right.setStretchFactor(1, 1)
        right.setSizes([190, 600])
        right.setChildrenCollapsible(False)
        body = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(left)
        body.addWidget(right)
        body.setStretchFactor(0, 0)
        body.setStretchFactor(1, 1)
        body.setSizes([160, 1000])
        body.setChildrenCollapsible(False)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.message)
        lay.addWidget(self.definition)
        lay.addWidget(body, 1)

        self.direction.currentIndexChanged.connect(lambda _: self.refresh())
        self.top.valueChanged.connect(lambda _: self.refresh())
        self.setAcceptDrops(True)
        self._fill_queries()
        self._update_buttons()

    # -- panel hooks
    def on_workspace_changed(self) -> None:
        self._fill_queries()
        self.refresh()

    def on_checkpoint_changed(self, path: str) -> None:
        self.refresh()

    def shutdown(self) -> None:
        self.worker.shutdown()
        for job in self._jobs:
            job.cancel()

    # -- queries
    def query_labels(self) -> list[str]:
        if not self.state.has_workspace_data():
            return []
        try:
            with self.state.open_workspace() as ws:
                return [p.pseudonym for p in ws.patients if p.is_query]
        except Exception:  # unreadable or being written: the Data tab reports it
            return []

    def _fill_queries(self) -> None:
        labels = self.query_labels()
        if self.cohort_entry is not None and self.cohort_entry == self.current and self.cohort_entry not in labels:
            keep = self.current  # a cohort entry asked for by a drop: not in the list
        else:
            self.cohort_entry = None
            keep = self.current if self.current in labels else (labels[-1] if labels else None)
        self.queries.blockSignals(True)
        self.queries.clear()
        self.queries.addItems(labels)
        if keep is not None and keep in labels:
            self.queries.setCurrentRow(labels.index(keep))
        self.queries.blockSignals(False)
        self.current = keep
        self._update_buttons()

    def _query_chosen(self, label: str) -> None:
        self.cohort_entry = None
        self.current = label or None
        self._update_buttons()
        self.refresh()

    def _update_buttons(self) -> None:
        self.move_btn.setEnabled(self.current is not None and self.cohort_entry is None and not self.state.busy)
        self.save_btn.setEnabled(self.answer is not None)

    def drop_text(self, n_paths: int) -> str:
        return "Drop to find the earlier patients most similar to this one (added as a query, not training data)"

    def handle_drop(self, paths) -> bool:
        """The window hands drops made while this tab is shown here: they become queries."""
        self.start_query([Path(p) for p in paths])
        return True

    def find_dialog(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Find similar patients: a new patient's DICOM folder")
        if folder:
            self.start_query([Path(folder)])

    def start_query(self, paths: list[Path]) -> bool:
        """Ingest `paths` as queries (in the window's job slot), then answer the first."""
        if not self.state.has_workspace_data():
            self._set_message("Open a workspace with earlier patients first: a query is compared with them.")
            return False
        win = self.window()
        if getattr(win, "job", None) is not None or self.state.busy:
            self._set_message("Wait for the running job to finish (or cancel it), then drop the query again.")
            return False
        job = workers.Job(run_query_ingest, list(paths), self.state.workspace_path, parent=self)
        job.done.connect(self._query_ingested)
        names = ", ".join(p.name for p in paths[:3])
        self._set_message(f"Adding {names} as a query (not training data)…")
        if hasattr(win, "run_job"):
            win.run_job(job, f"Adding {names} as a query")
        else:  # the panel on its own (tests, embedding)
            self._start_own(job)
        return True

    def _start_own(self, job) -> None:
        self._jobs.append(job)
        job.failed.connect(self._set_message)
        job.ended.connect(lambda: (self._jobs.remove(job) if job in self._jobs else None,
                                   self.state.notify_workspace_changed()))
        job.start()

    def _query_ingested(self, report) -> None:
        labels = list(getattr(report, "added", [])) + [k for k in getattr(report, "unchanged", [])
                                                       if k not in getattr(report, "added", [])]
        skipped = getattr(report, "skipped", [])
        if not labels:
            self._set_message("No usable CT series in the dropped folder"
                              + (f" ({len(skipped)} file(s) skipped; see the list)" if skipped else ""))
            return
        self.current = labels[0]  # answered when the window reports the changed workspace
        self.cohort_entry = None
        if labels[0] not in self.query_labels():
            # already stored as cohort data (ingest keeps an entry's role): answer it anyway,
            # left out of its own ranking, and say so (as ct-vae query does)
            self.cohort_entry = labels[0]
            self._set_message(f"{labels[0]} is already in the cohort (training data, not a query): ranking it "
                              "against the other patients…")

    def move_current_to_cohort(self) -> None:
        if self.current is None or self.state.busy:
            return
        job = workers.Job(_move_to_cohort, self.state.workspace_path, [self.current], parent=self)
        job.done.connect(lambda msg: self._set_message(str(msg)))
        self.current = None
        self.answer = None
        win = self.window()
        if hasattr(win, "run_job") and getattr(win, "job", None) is None:
            win.run_job(job, "Moving the query into the cohort")
        else:
            self._start_own(job)

    # -- answer
    def refresh(self) -> int | None:
        if not self.visible_or_stale():
            return None
        if self.current is None:
            self.worker.cancel()
            return None
        if self.state.checkpoint_path is None:
            what = "is already in the cohort" if self.cohort_entry == self.current else "is stored as a query"
            self._set_message(f"{self.current} {what}. Load or train a model to rank the earlier "
                              "patients (the divergences are between its posteriors).")
            return None
        if self.cohort_entry == self.current:
            self._set_message(f"{self.current} is already in the cohort (training data, not a query): ranking it "
                              "against the other patients…")
        else:
            self._set_message(f"Encoding and ranking for {self.current}…")
        box: list[int] = []
        stale = lambda: bool(box) and not self.worker.is_current(box[0])  # noqa: E731
        progress = lambda d, t: self._progress.emit(d, t)  # noqa: E731 (queued to the GUI thread)
        rid = self.worker.submit(_compute, str(self.state.checkpoint_path), str(self.state.workspace_path),
                                 self.current, self.top.value(), self.direction.currentData(), progress, stale)
        box.append(rid)
        return rid

    def wait_idle(self, timeout_ms: int = 30000) -> bool:
        return self.worker.wait_idle(timeout_ms)

    def _busy_changed(self, busy: bool) -> None:
        self.busy.setVisible(busy)
        if busy:
            self.busy.setRange(0, 0)

    def _show_progress(self, done: int, total: int) -> None:
        self.busy.setRange(0, max(total, 1))
        self.busy.setValue(done)
        self.busy.setFormat(f"encoding cohort {done}/{total}")

    def _set_message(self, text: str) -> None:
        self.message.setText(text)

    def _answer_failed(self, _rid: int, message: str) -> None:
        self.error = message
        self._set_message(message)

    def _answer_ready(self, _rid: int, answer) -> None:
        self.answer = answer
        self.error = ""
        best = answer.matches[0] if answer.matches else None
        head = f"{answer.query}: {answer.n_cohort} earlier patients ranked"
        if answer.query_in_cohort:
            head = (f"{answer.query} is already in the cohort (training data, not a query): ranked against the "
                    f"other {answer.n_cohort} patients")
        if best is not None:
            head += f"; nearest {best.name}" + (" (the same patient, another series)" if best.same_patient else "")
        head += f"  ({answer.seconds.get('total', 0) * 1000:.0f} ms)"
        self._set_message(head)
        from training.explore import query as xq

        self.definition.setText(
            f"Ranked by {answer.definition} (patient posterior: {answer.aggregate}). "
            f"Images paired — {answer.position_method}. Baselines beside: {xq.EUCLID_TEXT}; "
            f"{xq.PIXEL_L2_TEXT}.")
        self._fill_table(answer)
        self._fill_images(answer)
        self._fill_volumes(answer)
        self._update_buttons()

    def _fill_table(self, a) -> None:
        rows = a.rows()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            vals = [row["rank"], row["entry"], row["patient"] + (" (same patient)" if row["same_patient"] else ""),
                    row["kl_query_to_j"], row["kl_j_to_query"], row["kl_symmetric"], row["euclidean_mu"],
                    row["euclidean_rank"], row["pixel_l2"], row["pixel_rank"], row["split"]]
            for c, v in enumerate(vals):
                item = QtWidgets.QTableWidgetItem()
                if isinstance(v, float):
                    item.setData(Qt.ItemDataRole.DisplayRole, float(f"{v:.5g}"))
                    item.setToolTip(repr(v))
                elif isinstance(v, (int, np.integer)):
                    item.setData(Qt.ItemDataRole.DisplayRole, int(v))
                else:
                    item.setText(str(v))
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        if not self._sorted_once:  # best first until the user sorts by another column
            self._sorted_once = True
            self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.resizeColumnsToContents()

    def _fill_images(self, a) -> None:
        from training.explore.latent import display_rgb

        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        what = "depth" if a.spatial_dims == 3 else "slice"

        def label(text, bold=False):
            lab = QtWidgets.QLabel(text)
            lab.setWordWrap(True)
            if bold:
                f = lab.font()
                f.setBold(True)
                lab.setFont(f)
            return lab

        def image(ct, lab, caption, r, c):
            box = QtWidgets.QWidget()
            bl = QtWidgets.QVBoxLayout(box)
            bl.setContentsMargins(0, 0, 0, 0)
            pic = QtWidgets.QLabel()
            pic.setPixmap(_pixmap(display_rgb(ct, lab, a.n_classes)))
            pic.setObjectName("query-image")
            bl.addWidget(pic)
            bl.addWidget(label(caption))
            self.grid.addWidget(box, r, c)

        from training.images import roi_colour_table

        colours = roi_colour_table(max(a.n_classes + 1, 2))
        self.legend.setText("ROIs: " + "  ".join(
            f'<span style="color: rgb({c[0]},{c[1]},{c[2]})">■</span> {name}'
            for name, c in zip(a.roi_names, colours[1:])) if a.roi_names else "CT only (no ROIs)")
        self.grid.addWidget(label(f"query\n{a.query}", True), 0, 0)
        for c, k in enumerate(a.query_images_shown):
            lab = None if a.query_labels is None else a.query_labels[c]
            image(a.query_images[c], lab, f"{what} {k + 1}", 0, c + 1)
        for r, m in enumerate(a.matches, start=1):
            text = f"#{m.rank} {m.name}\nKL {m.divergence:.4g}"
            if m.same_patient:
                text += "\nsame patient, other series"
            self.grid.addWidget(label(text, True), r, 0)
            for c, k in enumerate(m.match_images):
                lab = None if m.labels is None else m.labels[c]
                cap = f"{what} {k + 1}" + ("" if a.spatial_dims == 3 else f"  slice KL {m.slice_kl[c]:.3g}")
                image(m.images[c], lab, cap, r, c + 1)
        self.grid.setColumnStretch(len(a.query_images_shown) + 1, 1)
        self.grid.setRowStretch(len(a.matches) + 1, 1)

    def _fill_volumes(self, a) -> None:
        rows = [(m, v) for m in a.matches for v in m.volumes]
        self.volumes.setRowCount(len(rows))
        fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
        for r, (m, v) in enumerate(rows):
            diff = v.difference_cm3
            vals = [f"#{m.rank} {m.name}", v.name, fmt(v.query_cm3), fmt(v.match_cm3),
                    ("+" if diff is not None and diff > 0 else "") + fmt(diff)]
            for c, t in enumerate(vals):
                self.volumes.setItem(r, c, QtWidgets.QTableWidgetItem(t))
        self.volumes.resizeColumnsToContents()

    def _row_selected(self) -> None:
        items = self.table.selectedItems()
        if items:
            entry = self.table.item(items[0].row(), 1)
            if entry is not None:
                self.state.select_patient(entry.text())

    # -- export
    def save_report_dialog(self) -> None:
        if self.answer is None:
            return
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Save the query report into a folder")
        if folder:
            self.save_report(Path(folder))

    def save_report(self, folder: Path) -> "workers.Job":
        """Write the report off the GUI thread (a Job); the message says where it went."""
        job = workers.Job(_write_report, self.answer, Path(folder), parent=self)
        job.done.connect(lambda msg: self.state.show_message(str(msg)))
        job.failed.connect(lambda msg: self.state.show_message(msg, 0))
        self._jobs.append(job)
        job.ended.connect(lambda: self._jobs.remove(job) if job in self._jobs else None)
        job.start()
        return job

    # -- drops straight onto the tab (the window forwards drops made elsewhere)
    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 (Qt API)
        from explorer.widgets.drop_zone import local_paths

        paths = local_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.handle_drop(paths)


PANEL = QueryPanel
