"""The main window's tabs, and how a new one is added.

A panel is a QWidget subclass of `Panel`: class attributes `title` (the tab's text) and
`tooltip`, constructed as `PanelClass(state: AppState, parent=None)`. It listens to
`state.workspaceChanged`, `state.checkpointChanged(str)` and `state.patientSelected(str)`
(the base class connects them to the overridable methods below) and never reaches into
another panel.

Adding a tab: create `explorer/panels/<name>.py` defining `PANEL = YourPanel` and put
`<name>` in PANEL_MODULES (the order of the tabs); modules named there but not present
yet are skipped. `register_panel(cls)` adds a class at run time (plugins, tests).
"""

from __future__ import annotations

import importlib
import logging

from explorer.qt import QtCore, QtWidgets
from explorer.state import AppState

log = logging.getLogger(__name__)

PANEL_MODULES: list[str] = [
    "data", "trainer", "manifold", "interpolation", "samples", "density", "volume", "similarity",
    "query",
]
_EXTRA: list[type] = []


class Panel(QtWidgets.QWidget):
    """Base of every tab. Override the on_* hooks; call super().__init__(state, parent)."""

    title = "Panel"
    tooltip = ""

    def __init__(self, state: AppState, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        state.workspaceChanged.connect(self.on_workspace_changed)
        state.checkpointChanged.connect(self.on_checkpoint_changed)
        state.patientSelected.connect(self.on_patient_selected)

    #: set when the tab had to recompute while hidden; showEvent then calls refresh().
    stale = False
    #: refresh on the next turn of the event loop rather than inside showEvent (lets the
    #: new tab's layout settle first).
    defer_refresh_on_show = False

    def refresh(self) -> object:
        """Recompute what the tab shows (tabs that compute override it)."""
        return None

    def visible_or_stale(self) -> bool:
        """True when the tab is visible and should compute now; otherwise remember that it
        is out of date and return False. An ingest changes the workspace once per patient,
        and a hidden tab must not re-encode each time: it computes when next shown."""
        if self.isVisible():
            self.stale = False
            return True
        self.stale = True
        return False

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        if self.stale:
            if self.defer_refresh_on_show:
                QtCore.QTimer.singleShot(0, self, self.refresh)
            else:
                self.refresh()

    def on_workspace_changed(self) -> None:
        """The open workspace, or its content, changed."""

    def on_checkpoint_changed(self, path: str) -> None:
        """The current checkpoint is now `path` ("" for none)."""

    def on_patient_selected(self, pseudonym: str) -> None:
        """The user picked `pseudonym` in the patient list ("" for none)."""

    def shutdown(self) -> None:
        """The window closes: stop background work (a checkpoint is saved by the trainer tab)."""


def register_panel(cls: type) -> type:
    """Add a panel class after the PANEL_MODULES ones (usable as a decorator)."""
    if cls not in _EXTRA:
        _EXTRA.append(cls)
    return cls


def panel_classes() -> list[type]:
    """Every panel class in tab order: PANEL_MODULES that exist, then registered ones."""
    classes: list[type] = []
    for name in PANEL_MODULES:
        full = f"{__name__}.{name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name == full:
                continue  # a tab not written yet
            raise
        cls = getattr(module, "PANEL", None)
        if cls is None:
            log.warning("%s defines no PANEL; skipped", full)
            continue
        classes.append(cls)
    return classes + [c for c in _EXTRA if c not in classes]


__all__ = ["AppState", "Panel", "PANEL_MODULES", "panel_classes", "register_panel"]
