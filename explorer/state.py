"""AppState: the shared, evented state every panel sees (napari's model/view split).

Panels never talk to each other; they read AppState and listen to its signals:

- workspaceChanged(): another workspace was opened, or the open one changed content
  (patients committed by an ingest, settings re-derived). Re-read what you show.
- checkpointChanged(str): the current model checkpoint's path ("" when there is none).
- patientSelected(str): the pseudonym picked in the patient list ("" for none).
- statusMessage(str, int): text for the status bar and a timeout in ms (0 = keep).
- rederiveRequested(PreprocessConfig): a panel asks the window to re-derive the
  workspace with new settings (`request_rederive(cfg)`); the window runs the job.
- busyChanged(bool): a background job is writing the workspace (reads may fail or see
  partial content until it ends; the job emits workspaceChanged as it commits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from explorer.qt import QObject, Signal
from explorer.settings import AppSettings


class AppState(QObject):
    workspaceChanged = Signal()
    checkpointChanged = Signal(str)
    patientSelected = Signal(str)
    statusMessage = Signal(str, int)
    busyChanged = Signal(bool)
    rederiveRequested = Signal(object)

    def __init__(self, settings: AppSettings | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or AppSettings()
        self.workspace_path: Path | None = None
        self.checkpoint_path: Path | None = None
        self.selected_patient: str | None = None
        self._busy = 0
        self.training = False  # set by the Train tab while a run is in progress
        from training.config import PreprocessConfig

        # The Data tab's settings: used for ingests into a workspace that has none yet.
        self.preprocess: PreprocessConfig = PreprocessConfig.new_workspace()
        self._model_cache: tuple[Path, Any] | None = None

    # -- workspace -----------------------------------------------------------------------
    def set_workspace(self, path: Path | str | None) -> None:
        """Make `path` the open workspace (it may not exist yet: an empty workspace)."""
        self.workspace_path = Path(path) if path else None
        self.selected_patient = None
        if self.workspace_path is not None:
            self.settings.last_workspace = self.workspace_path
            if self.workspace_path.exists():
                self.settings.add_recent_workspace(self.workspace_path)
        self.workspaceChanged.emit()

    def notify_workspace_changed(self) -> None:
        """The open workspace's content changed (call from the GUI thread)."""
        if self.workspace_path is not None and self.workspace_path.exists():
            self.settings.add_recent_workspace(self.workspace_path)
        self.workspaceChanged.emit()

    def has_workspace_data(self) -> bool:
        return self.workspace_path is not None and self.workspace_path.exists()

    def open_workspace(self):
        """training.store.workspace.Workspace opened for reading; use as `with state.open_workspace() as ws`.

        Raises FileNotFoundError when the workspace is still empty (nothing ingested).
        """
        if not self.has_workspace_data():
            raise FileNotFoundError(f"no workspace data yet at {self.workspace_path}")
        from training.store.workspace import Workspace

        return Workspace.open(self.workspace_path)

    def preprocess_for_ingest(self):
        """The open workspace's own PreprocessConfig, or the Data tab's for a new workspace."""
        if self.has_workspace_data():
            try:
                with self.open_workspace() as ws:
                    return ws.preprocess
            except Exception:  # unreadable: the ingest reports the file itself
                pass
        return self.preprocess

    # -- model ---------------------------------------------------------------------------
    def set_checkpoint(self, path: Path | str | None) -> None:
        self.checkpoint_path = Path(path) if path else None
        self._model_cache = None
        self.checkpointChanged.emit(str(self.checkpoint_path) if self.checkpoint_path else "")

    def load_model(self):
        """(VAE in eval mode, Checkpoint) of the current checkpoint, cached; None if none."""
        if self.checkpoint_path is None:
            return None
        if self._model_cache is None or self._model_cache[0] != self.checkpoint_path:
            from training.vae.checkpoint import load_model

            self._model_cache = (self.checkpoint_path, load_model(self.checkpoint_path))
        return self._model_cache[1]

    # -- selection and messages ----------------------------------------------------------
    def select_patient(self, pseudonym: str | None) -> None:
        if pseudonym == self.selected_patient:
            return
        self.selected_patient = pseudonym or None
        self.patientSelected.emit(pseudonym or "")

    def request_rederive(self, cfg) -> None:
        self.rederiveRequested.emit(cfg)

    def show_message(self, text: str, timeout_ms: int = 6000) -> None:
        self.statusMessage.emit(text, timeout_ms)

    @property
    def busy(self) -> bool:
        return self._busy > 0

    def begin_busy(self) -> None:
        self._busy += 1
        if self._busy == 1:
            self.busyChanged.emit(True)

    def end_busy(self) -> None:
        self._busy = max(0, self._busy - 1)
        if self._busy == 0:
            self.busyChanged.emit(False)
