"""Where the explorer keeps its files and remembers things between runs.

Everything lives under one folder, `user_data_dir()`: platformdirs'
user_data_dir("ct-vae-explorer"), or the folder named by the environment variable
CT_VAE_EXPLORER_DATA_DIR (tests point it at tmp_path so they never touch the real
user folder). Settings are an INI file in that folder (QSettings), not the registry or
~/.config, for the same reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from explorer.qt import QSettings, QtCore

APP_NAME = "ct-vae-explorer"
ENV_DATA_DIR = "CT_VAE_EXPLORER_DATA_DIR"
MAX_RECENT = 8


def user_data_dir() -> Path:
    """The explorer's data folder (created on first use)."""
    override = os.environ.get(ENV_DATA_DIR)
    path = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_workspace_path() -> Path:
    """The workspace a first start opens (empty until something is dropped)."""
    return user_data_dir() / "workspace.h5"


def runs_dir(workspace: Path) -> Path:
    """Checkpoints of a workspace live beside it: `<stem>.runs/`."""
    workspace = Path(workspace)
    return workspace.with_name(workspace.stem + ".runs")


def new_run_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder `parent/prefix-YYYYmmdd-HHMMSS` (with -2, -3, … when a run of
    the same second has it already), created here so two runs never share one."""
    import time

    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stem = time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        folder = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free folder name for {stem}")


class AppSettings:
    """Typed access to the explorer's QSettings (INI file in user_data_dir())."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or user_data_dir() / "settings.ini"
        self._s = QSettings(str(path), QSettings.Format.IniFormat)

    def sync(self) -> None:
        self._s.sync()

    # -- workspaces ----------------------------------------------------------------------
    @property
    def last_workspace(self) -> Path | None:
        value = self._s.value("workspace/last", "")
        return Path(value) if value else None

    @last_workspace.setter
    def last_workspace(self, path: Path | None) -> None:
        self._s.setValue("workspace/last", str(path) if path else "")

    def recent_workspaces(self) -> list[Path]:
        value = self._s.value("workspace/recent", [])
        if isinstance(value, str):
            value = [value] if value else []
        return [Path(v) for v in value]

    def add_recent_workspace(self, path: Path) -> None:
        path = Path(path).resolve()
        items = [p for p in self.recent_workspaces() if p != path]
        items.insert(0, path)
        self._s.setValue("workspace/recent", [str(p) for p in items[:MAX_RECENT]])

    # -- an interrupted training run, offered for continuation at the next start -----------
    def interrupted_run(self) -> tuple[Path, Path] | None:
        """(workspace, checkpoint) of a run stopped by closing the window, if any."""
        ws = self._s.value("training/interrupted_workspace", "")
        ck = self._s.value("training/interrupted_checkpoint", "")
        return (Path(ws), Path(ck)) if ws and ck else None

    def set_interrupted_run(self, workspace: Path | None, checkpoint: Path | None) -> None:
        self._s.setValue("training/interrupted_workspace", str(workspace) if workspace else "")
        self._s.setValue("training/interrupted_checkpoint", str(checkpoint) if checkpoint else "")
        self._s.sync()

    # -- window --------------------------------------------------------------------------
    def window_geometry(self) -> QtCore.QByteArray | None:
        value = self._s.value("window/geometry")
        return value if isinstance(value, QtCore.QByteArray) else None

    def window_state(self) -> QtCore.QByteArray | None:
        value = self._s.value("window/state")
        return value if isinstance(value, QtCore.QByteArray) else None

    def save_window(self, geometry: QtCore.QByteArray, state: QtCore.QByteArray) -> None:
        self._s.setValue("window/geometry", geometry)
        self._s.setValue("window/state", state)
        self._s.sync()

    def value(self, key: str, default=None):
        return self._s.value(key, default)

    def set_value(self, key: str, value) -> None:
        self._s.setValue(key, value)
