"""The main window: patient list and skipped files beside the tabs; menus; drops; jobs.

Jobs that write the workspace (ingest, re-derive, demo preparation) run one at a time in
a worker thread (explorer.workers.Job); their progress shows in the status bar with a
cancel button, and patients appear in the list as they are committed.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from pathlib import Path


from explorer import panels as panel_registry
from explorer.qt import Qt, QtCore, QtGui, QtWidgets
from explorer.settings import AppSettings, default_workspace_path
from explorer.state import AppState
from explorer.widgets.drop_zone import DropOverlay, local_paths
from explorer.widgets.latest_worker import LatestWorker
from explorer.widgets.patient_list import PatientList, PatientRow
from explorer.widgets.progress import JobProgress
from explorer.widgets.skipped_panel import SkippedFiles
from explorer import workers

log = logging.getLogger(__name__)
APP_TITLE = "CT VAE Explorer"
RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def app_icon() -> QtGui.QIcon:
    path = RESOURCES / "ct-vae-explorer.svg"
    return QtGui.QIcon(str(path)) if path.exists() else QtGui.QIcon()


# Panels' export(path) picks the format from the suffix (explorer.figures.export_figure).
EXPORT_FILTERS = ("PNG image (*.png)", "SVG vector image (*.svg)", "PDF document (*.pdf)",
                  "CSV numbers (*.csv)")


def with_export_suffix(path: str, chosen_filter: str) -> str:
    """`path` with the chosen filter's suffix added when it has none of the offered ones
    (some platform dialogs return the typed name without the filter's extension)."""
    suffixes = [f[f.index("*") + 1:-1] for f in EXPORT_FILTERS]
    if any(path.lower().endswith(s) for s in suffixes):
        return path
    for f in EXPORT_FILTERS:
        if f == chosen_filter:
            return path + f[f.index("*") + 1:-1]
    return path + ".png"


_OPEN_WINDOWS: "weakref.WeakSet[MainWindow]" = weakref.WeakSet()
_EXIT_HOOKED = False


def _delete_windows_at_exit() -> None:
    """A script that ends without closing its window (no app.exec(), so no aboutToQuit)
    would leave the window to be torn down during interpreter shutdown, when pyqtgraph's
    Python overrides of QGraphicsWidget methods can no longer run (a segfault in
    shiboken). Delete the windows while Python still runs; this handler is registered
    after the workers' own, so it runs before they wait for orphaned threads."""
    import shiboken6

    for window in list(_OPEN_WINDOWS):
        if shiboken6.isValid(window):
            shiboken6.delete(window)


class MainWindow(QtWidgets.QMainWindow):
    def __init__(self, state: AppState | None = None, *, restore: bool = True) -> None:
        super().__init__()
        global _EXIT_HOOKED
        if not _EXIT_HOOKED:
            _EXIT_HOOKED = atexit.register(_delete_windows_at_exit) is not None
        _OPEN_WINDOWS.add(self)
        self.state = state or AppState(AppSettings())
        self.settings = self.state.settings
        self.job: workers.Job | None = None
        self._save_jobs: list[workers.Job] = []  # model copies and exports under way
        self._queued_drops: list[list[Path]] = []
        self._listed: tuple = (None, 0)  # (workspace, derived version) the thumbnails show
        self._derived_version = 0  # bumped by a re-derive: thumbnails must be re-read
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.setMinimumSize(720, 480)

        # left: patients over skipped files
        self.patient_list = PatientList()
        self.thumbnails = LatestWorker(self, name="thumbnails")
        self.thumbnails.resultReady.connect(self._show_thumbnails)
        self.skipped = SkippedFiles()
        left = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.patient_list)
        left.addWidget(self.skipped)
        left.setStretchFactor(0, 3)
        left.setStretchFactor(1, 1)
        left.setChildrenCollapsible(False)
        self.left_splitter = left

        # right: one tab per registered panel
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.setDocumentMode(True)
        self.panels: list[panel_registry.Panel] = []
        for i, cls in enumerate(panel_registry.panel_classes()):
            try:
                panel = cls(self.state)
            except Exception:  # a broken tab must not take the window down
                log.exception("panel %s failed to build", cls)
                continue
            self.panels.append(panel)
            self.tabs.addTab(panel, panel.title)
            self.tabs.setTabToolTip(self.tabs.count() - 1, panel.tooltip or panel.title)
            if hasattr(panel, "attentionRequested"):  # e.g. Train: an interrupted run to continue
                panel.attentionRequested.connect(lambda p=panel: self._bring_to_front(p))

        self.splitter = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([420, 900])
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)
        # a child of the window over the splitter (a splitter's child would become a column)
        self.drop_overlay = DropOverlay(self, cover=self.splitter)

        # status bar
        self.job_progress = JobProgress()
        self.job_progress.cancelRequested.connect(self.cancel_job)
        self.workspace_label = QtWidgets.QLabel()
        self.workspace_label.setToolTip("The open workspace file")
        # kept apart from the status message (a long message ran into the path) and short:
        # the file's name, the whole path on hover
        self.workspace_label.setStyleSheet("QLabel { padding-left: 8px; border-left: 1px solid #bbb; }")
        self.workspace_label.setMaximumWidth(360)
        self.statusBar().addPermanentWidget(self.job_progress)
        self.statusBar().addPermanentWidget(self.workspace_label)

        self._build_menus()
        self.patient_list.patientClicked.connect(self.state.select_patient)
        self.state.patientSelected.connect(self.patient_list.select)
        self.state.workspaceChanged.connect(self._on_workspace_changed)
        self.state.rederiveRequested.connect(self.rederive)
        self.state.statusMessage.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        QtWidgets.QApplication.instance().installEventFilter(self)

        self.resize(1320, 820)
        if restore:
            if (geo := self.settings.window_geometry()) is not None:
                self.restoreGeometry(geo)
            if (st := self.settings.window_state()) is not None:
                self.restoreState(st)
        self._update_title()

    def _bring_to_front(self, panel) -> None:
        self.tabs.setCurrentWidget(panel)

    def panel(self, key) -> "panel_registry.Panel | None":
        """The tab with this title (e.g. "Train") or of this class, if present."""
        for p in self.panels:
            if (isinstance(key, str) and p.title == key) or (isinstance(key, type) and isinstance(p, key)):
                return p
        return None

    # -- menus ---------------------------------------------------------------------------
    def _action(self, text: str, slot, shortcut=None, tip: str = "", icon=None) -> QtGui.QAction:
        act = QtGui.QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QtGui.QKeySequence(shortcut))
        if tip:
            act.setStatusTip(tip)
            act.setToolTip(tip)
        if icon is not None:
            act.setIcon(self.style().standardIcon(icon))
        act.triggered.connect(slot)
        return act

    def _build_menus(self) -> None:
        sp = QtWidgets.QStyle.StandardPixmap
        m = self.menuBar().addMenu("&File")
        self.act_new = self._action("&New workspace…", self.new_workspace, "Ctrl+N",
                                    "Start an empty workspace file", sp.SP_FileIcon)
        self.act_open = self._action("&Open workspace…", self.open_workspace_dialog, "Ctrl+O",
                                     "Open a workspace file (.h5)", sp.SP_DialogOpenButton)
        self.recent_menu = QtWidgets.QMenu("Open &recent", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.act_add = self._action("&Add DICOM folder…", self.add_folder_dialog, "Ctrl+I",
                                    "Ingest a folder of DICOM files (or drop folders on the window)",
                                    sp.SP_DirOpenIcon)
        self.act_save_model = self._action("&Save model as…", self.save_model_dialog, "Ctrl+S",
                                           "Copy the current model checkpoint to a file", sp.SP_DialogSaveButton)
        self.act_load_model = self._action("&Load model…", self.load_model_dialog, "Ctrl+L",
                                           "Load a model checkpoint (weights only; no code runs)")
        self.act_export = self._action("&Export current view…", self.export_dialog, "Ctrl+E",
                                       "Save the current tab as an image (PNG, SVG, PDF) or its numbers (CSV)")
        self.act_quit = self._action("&Quit", self.close, "Ctrl+Q", "Close the window (training stops at a checkpoint)")
        for a in (self.act_new, self.act_open):
            m.addAction(a)
        m.addMenu(self.recent_menu)
        m.addAction(self.act_add)
        self.act_find_similar = self._action(
            "&Find similar patients…", self.find_similar_patients, "Ctrl+F",
            "Add a new patient's DICOM folder as a query (never trained on) and rank the earlier patients",
            sp.SP_FileDialogContentsView)
        m.addAction(self.act_find_similar)
        m.addSeparator()
        m.addAction(self.act_save_model)
        m.addAction(self.act_load_model)
        m.addAction(self.act_export)
        m.addSeparator()
        m.addAction(self.act_quit)

        v = self.menuBar().addMenu("&View")
        for i in range(self.tabs.count()):
            act = self._action(self.tabs.tabText(i), lambda _=False, i=i: self.tabs.setCurrentIndex(i),
                               f"Alt+{i + 1}" if i < 9 else None, f"Show the {self.tabs.tabText(i)} tab")
            v.addAction(act)
        h = self.menuBar().addMenu("&Help")
        self.act_shortcuts = self._action("&Keyboard shortcuts", self.show_shortcuts, "F1",
                                          "Every shortcut of the window and its tabs")
        self.act_guide = self._action("&Guide to the tabs", self.show_guide, None, "What each tab shows and does")
        h.addAction(self.act_shortcuts)
        h.addAction(self.act_guide)
        h.addSeparator()
        h.addAction(self._action("&About", self.about, None, "About this application and its library versions"))

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = [p for p in self.settings.recent_workspaces() if p.exists()]
        if not recent:
            a = self.recent_menu.addAction("(none)")
            a.setEnabled(False)
        for p in recent:
            a = self.recent_menu.addAction(p.name)
            a.setToolTip(str(p))
            a.setStatusTip(str(p))
            a.triggered.connect(lambda _=False, p=p: self.open_workspace(p))

    # -- workspace -----------------------------------------------------------------------
    def open_workspace(self, path: Path | str | None) -> None:
        if self.job is not None:
            self.state.show_message("Wait for the running job to finish (or cancel it) first")
            return
        if self.state.training:
            # the run writes into this workspace's runs folder and its checkpoints would
            # become the other workspace's model
            self.state.show_message("Stop training (Train tab) before opening another workspace", 0)
            return
        self.skipped.clear()
        self.state.set_checkpoint(None)
        self.state.set_workspace(Path(path) if path else default_workspace_path())
        latest = workers.latest_checkpoint(self.state.workspace_path)
        if latest is not None:
            self.state.set_checkpoint(latest)
            self.state.show_message(f"Opened {self.state.workspace_path.name} with its latest model "
                                    f"({latest.parent.name})")

    def new_workspace(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, "New workspace", str(default_workspace_path().parent / "workspace.h5"),
            "Workspace (*.h5)")
        if path:
            if not path.endswith(".h5"):
                path += ".h5"
            if Path(path).exists():
                self.state.show_message(f"{path} exists; opened it instead of replacing it")
            self.open_workspace(path)

    def open_workspace_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Open workspace", str(default_workspace_path().parent), "Workspace (*.h5);;All files (*)")
        if path:
            self.open_workspace(path)

    def _on_workspace_changed(self) -> None:
        self._update_title()
        if not self.state.busy:
            self.reload_patients()

    def _update_title(self) -> None:
        ws = self.state.workspace_path
        self.setWindowTitle(f"{ws.name} — {APP_TITLE}" if ws else APP_TITLE)
        self.workspace_label.setText(f"Workspace: {ws.name}" if ws else "No workspace")
        self.workspace_label.setToolTip(f"The open workspace file: {ws}" if ws else "No workspace open")

    def reload_patients(self) -> None:
        """Refill the patient list from the workspace (pseudonyms, counts, thumbnails).

        Rows that already have a thumbnail (added live by an ingest) keep it, so the end
        of an ingest reads no images on the GUI thread.
        """
        selected = self.state.selected_patient
        if not self.state.has_workspace_data():
            # an empty workspace: rows an ingest adds (with thumbnails) belong to it
            self._listed = (self.state.workspace_path, self._derived_version)
            self.patient_list.clear_patients()
            return
        same = self._listed == (self.state.workspace_path, self._derived_version)
        icons = self.patient_list.icons() if same else {}
        self._listed = (self.state.workspace_path, self._derived_version)
        self.patient_list.clear_patients()
        missing: list[str] = []
        try:
            with self.state.open_workspace() as ws:
                for p in ws.patients:
                    if p.pseudonym not in icons and p.n_images:
                        missing.append(p.pseudonym)
                    self.patient_list.upsert(workers.patient_row(p), icons.get(p.pseudonym))
                # the files earlier drops skipped, as the workspace recorded them
                self.skipped.add_entries(ws.skipped)
        except Exception as exc:  # a damaged file must not take the window down
            log.exception("cannot read workspace")
            self.patient_list.clear_patients()
            self.state.show_message(f"Cannot read {self.state.workspace_path}: {workers.readable_error(exc)}", 0)
        if selected:
            self.patient_list.select(selected)
        if missing:  # images are read off the GUI thread; rows get their icons as they come
            self.thumbnails.submit(workers.read_thumbnails, self.state.workspace_path, missing)

    def _show_thumbnails(self, _rid: int, result) -> None:
        workspace, thumbs = result
        if workspace != self.state.workspace_path:
            return
        for pseudonym, image in thumbs.items():
            self.patient_list.set_thumbnail(pseudonym, image)

    # -- drops ---------------------------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:
        t = event.type()
        if t in (QtCore.QEvent.Type.DragEnter, QtCore.QEvent.Type.DragMove, QtCore.QEvent.Type.Drop,
                 QtCore.QEvent.Type.DragLeave) and isinstance(obj, QtWidgets.QWidget) \
                and obj is not self and obj.window() is self:
            return self._handle_drag(event)
        return super().eventFilter(obj, event)

    def dragEnterEvent(self, event) -> None:
        self._handle_drag(event)

    def dragMoveEvent(self, event) -> None:
        self._handle_drag(event)

    def dragLeaveEvent(self, event) -> None:
        self._handle_drag(event)

    def dropEvent(self, event) -> None:
        self._handle_drag(event)

    def _handle_drag(self, event) -> bool:
        t = event.type()
        if t == QtCore.QEvent.Type.DragLeave:
            self.drop_overlay.hide()
            return False
        paths = local_paths(event.mimeData())
        if not paths:
            return False
        event.setDropAction(Qt.DropAction.CopyAction)
        event.accept()
        if t == QtCore.QEvent.Type.DragEnter:
            self.drop_overlay.show_for(len(paths))
            drop_text = getattr(self.tabs.currentWidget(), "drop_text", None)  # the Query tab's words
            if drop_text is not None:
                self.drop_overlay.text = drop_text(len(paths))
                self.drop_overlay.update()
        elif t == QtCore.QEvent.Type.Drop:
            self.drop_overlay.hide()
            # a tab may take drops itself (the Query tab: a dropped patient becomes a query)
            handler = getattr(self.tabs.currentWidget(), "handle_drop", None)
            if handler is None or not handler(paths):
                self.ingest_paths(paths)
        return True

    def find_similar_patients(self) -> None:
        """File ▸ Find similar patients…: show the Query tab and ask for the folder."""
        from explorer.panels.query import QueryPanel

        panel = self.panel(QueryPanel)
        if panel is not None:
            self.tabs.setCurrentWidget(panel)
            panel.find_dialog()

    def add_folder_dialog(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Add a DICOM folder")
        if folder:
            self.ingest_paths([Path(folder)])

    # -- jobs ----------------------------------------------------------------------------
    def ingest_paths(self, paths: list[Path]) -> None:
        """Ingest dropped folders/files into the open workspace in the background."""
        if self.state.workspace_path is None:
            self.state.set_workspace(default_workspace_path())
        if self.job is not None:
            self._queued_drops.append(list(paths))
            self.state.show_message(f"Queued {len(paths)} item(s); they are ingested after the current job")
            return
        names = ", ".join(p.name for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        job = workers.Job(workers.run_ingest, list(paths), self.state.workspace_path,
                          self.state.preprocess_for_ingest(), parent=self)
        job.done.connect(lambda report: self._bump_derived() if getattr(report, "rederived", None) else None)
        self._start_job(job, f"Ingesting {names}")

    def rederive(self, cfg) -> None:
        """Re-derive the workspace's arrays with new preprocessing settings, in the background."""
        if self.job is not None:
            self.state.show_message("Wait for the running job to finish (or cancel it) first")
            return
        job = workers.Job(workers.run_rederive, self.state.workspace_path, cfg, parent=self)
        job.done.connect(self._bump_derived)
        self._start_job(job, "Re-deriving with the new settings")

    def _bump_derived(self, *_) -> None:
        self._derived_version += 1

    def run_job(self, job: "workers.Job", text: str) -> None:
        """Run another workspace-writing job (e.g. the demo's preparation) with the same UI."""
        self._start_job(job, text)

    def _start_job(self, job: "workers.Job", text: str) -> None:
        self.job = job
        self.state.begin_busy()
        self.job_progress.start(text)
        self.state.show_message(text + "…", 0)
        job.progress.connect(self.job_progress.set_progress)
        job.patientCommitted.connect(self._on_patient_committed)
        job.skipped.connect(self.skipped.add)
        job.done.connect(self._on_job_done)
        job.failed.connect(self._on_job_failed)
        job.ended.connect(self._on_job_ended)
        job.start()

    def cancel_job(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _on_patient_committed(self, row: PatientRow) -> None:
        self.patient_list.upsert(row)

    def _on_job_done(self, result) -> None:
        text = workers.describe_result(result)
        n_drop = len(getattr(result, "skipped", None) or ())
        n_listed = self.skipped.count()
        if getattr(result, "skipped", None) is not None and n_listed > n_drop:
            # the list also holds files earlier drops skipped: say so, so the counts agree
            text += f" ({n_listed} listed under Skipped files, with earlier drops)"
        self.state.show_message(text, 0)

    def _on_job_failed(self, message: str) -> None:
        self.state.show_message(message, 0)
        if not self.property("quiet"):  # tests and benchmarks set "quiet": no modal boxes
            QtWidgets.QMessageBox.warning(self, APP_TITLE, message)

    def _on_job_ended(self) -> None:
        job, self.job = self.job, None
        self.job_progress.finish()
        self.state.end_busy()
        if job is not None and job.workspace_switch is not None:
            self.state.set_workspace(job.workspace_switch)
        else:
            self.state.notify_workspace_changed()
        if job is not None:
            job.deleteLater()
        if self._queued_drops:
            self.ingest_paths(self._queued_drops.pop(0))

    # -- models and export ---------------------------------------------------------------
    def save_model_dialog(self) -> None:
        src = self.state.checkpoint_path
        if src is None or not src.exists():
            self.state.show_message("No model yet: train one on the Train tab, or load one")
            return
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save model", src.name, "Checkpoint (*.pt)")
        if not path:
            return
        # a large checkpoint's copy and fsync take long: off the GUI thread
        job = workers.Job(lambda _ctx: workers.copy_checkpoint(src, Path(path)), parent=self)
        job.done.connect(lambda _: self.state.show_message(f"Saved the model to {path}"))
        job.failed.connect(lambda msg: self.state.show_message(f"Could not save the model: {msg}", 0))
        job.ended.connect(lambda: self._save_jobs.remove(job) if job in self._save_jobs else None)
        job.ended.connect(job.deleteLater)
        self._save_jobs.append(job)
        self.state.show_message(f"Saving the model to {path}…", 0)
        job.start()

    def load_model_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Load model", "", "Checkpoint (*.pt);;All files (*)")
        if path:
            self.load_model(Path(path))

    def load_model(self, path: Path) -> bool:
        try:
            ck = workers.check_model(path)
        except Exception as exc:
            msg = workers.readable_error(exc)
            self.state.show_message(msg, 0)
            if not self.property("quiet"):
                QtWidgets.QMessageBox.warning(self, APP_TITLE, msg)
            return False
        self.state.set_checkpoint(path)
        note = self._model_fit_note(ck)
        self.state.show_message(f"Loaded model {path.name}{note}", 0 if note else 6000)
        return True

    def _model_fit_note(self, ck) -> str:
        """'' when the model was trained on the open workspace as it is; else why not (the
        tabs still use what they can, e.g. samples from the prior)."""
        if not self.state.has_workspace_data():
            return ""
        try:
            with self.state.open_workspace() as ws:
                shape, n_classes, data_hash = tuple(ws.image_shape), ws.preprocess.n_classes, ws.data_hash
        except Exception:  # the workspace's own problem is reported where it is read
            return ""
        cfg = ck.model_config
        want = (cfg.input_size,) * cfg.spatial_dims
        if shape != want or n_classes != cfg.n_classes:
            return (f": it cannot encode this workspace (images {shape} with {n_classes} RT classes; "
                    f"the model expects {want} with {cfg.n_classes})")
        if ck.data_hash != data_hash:
            return ": it was trained on other data than this workspace holds now"
        return ""

    def export_dialog(self) -> None:
        panel = self.tabs.currentWidget()
        exporter = getattr(panel, "export", None)  # export(path), or a child widget named so
        filters = EXPORT_FILTERS  # CSV where the tab has numbers; otherwise its message says so
        path, chosen = QtWidgets.QFileDialog.getSaveFileName(
            self, "Export", f"{getattr(panel, 'title', 'view').lower()}.png", ";;".join(filters))
        if not path:
            return
        path = with_export_suffix(path, chosen)
        try:
            if isinstance(exporter, QtCore.QObject):
                # some tabs name a child widget `export` (an ExportButton, a spin box)
                if callable(getattr(exporter, "start_export", None)):  # PNG encoded off the GUI thread
                    job = exporter.start_export(Path(path).suffix.lstrip(".").lower(), Path(path))
                    job.done.connect(lambda out: self.state.show_message(f"Exported {out}"))
                    job.failed.connect(lambda msg: self.state.show_message(f"Export failed: {msg}", 0))
                    self._save_jobs.append(job)
                    job.ended.connect(lambda: self._save_jobs.remove(job) if job in self._save_jobs else None)
                    return
                exporter = None
            elif callable(exporter):
                exporter(Path(path))
            if exporter is None:
                from explorer import figures

                figures.export_widget(panel, Path(path), title=getattr(panel, "title", ""))
            self.state.show_message(f"Exported {path}")
        except Exception as exc:
            self.state.show_message(f"Export failed: {workers.readable_error(exc)}", 0)

    def about(self) -> None:
        from explorer import help as help_text

        QtWidgets.QMessageBox.about(self, APP_TITLE, help_text.about_html())

    def show_shortcuts(self):
        from explorer import help as help_text

        return help_text.show_text(self, f"Keyboard shortcuts — {APP_TITLE}", help_text.shortcuts_html(self))

    def show_guide(self):
        from explorer import help as help_text

        return help_text.show_text(self, f"Guide to the tabs — {APP_TITLE}", help_text.guide_html(self))

    # -- closing -------------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        self.settings.save_window(self.saveGeometry(), self.saveState())
        if self.job is not None:
            self.job.cancel()
            self.job.wait(30_000)
        self.thumbnails.shutdown()
        for job in list(self._save_jobs):  # a saved model or export must be complete
            job.wait(60_000)
        for panel in self.panels:
            try:
                panel.shutdown()
            except Exception:
                log.exception("panel %s failed to shut down", panel)
        QtWidgets.QApplication.instance().removeEventFilter(self)
        super().closeEvent(event)
