"""Fixtures and helpers shared by the GUI tests (no tests here).

Every GUI test runs with CT_VAE_EXPLORER_DATA_DIR pointing into tmp_path, so the real
user data folder and its settings are never touched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    from explorer.settings import ENV_DATA_DIR

    d = tmp_path / "userdata"
    monkeypatch.setenv(ENV_DATA_DIR, str(d))
    return d


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_tiny_workspace(path: Path, n_patients: int = 3, n_slices: int = 8, size: int = 32) -> Path:
    """Arrays-only workspace: ellipses of varying size, (n_slices, size, size) per patient."""
    from training.store.workspace import write_arrays_workspace

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    images = {}
    for i in range(n_patients):
        stack = []
        for k in range(n_slices):
            ell = ((xx - c) ** 2 / (size * (3 + i)) + (yy - c) ** 2 / (size * (2 + k / 4))) < 1
            stack.append(ell.astype(np.float32) * 0.7 + 0.1 * rng.random((size, size), dtype=np.float32))
        images[f"PAT-{i + 1:04d}"] = np.stack(stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_arrays_workspace(path, images)


@pytest.fixture
def tiny_workspace(data_dir) -> Path:
    return write_tiny_workspace(data_dir / "tiny.h5")


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory) -> Path:
    """3 phantom patients × 8 slices × 32 px (DICOM CT + RTSTRUCT), made once per session."""
    from training.dicom.phantom import generate_cohort

    out = tmp_path_factory.mktemp("phantom")
    generate_cohort(out, 3, slices=8, size=32, seed=1, fsync=False)
    return out


@pytest.fixture
def make_window(qtbot, data_dir):
    """make_window(workspace=None) -> MainWindow (closed at teardown)."""
    from explorer.main_window import MainWindow
    from explorer.settings import AppSettings
    from explorer.state import AppState

    made = []

    def make(workspace: Path | None = None):
        w = MainWindow(AppState(AppSettings()))
        w.setProperty("quiet", True)  # no modal message boxes in tests
        qtbot.addWidget(w)
        w.show()
        w.open_workspace(workspace)
        made.append(w)
        return w

    yield make
    for w in made:
        if w.isVisible():
            w.close()


def wait_until(qtbot, predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        qtbot.wait(20)


def small_training(panel, **train) -> None:
    """Tiny, fast settings on a TrainerPanel (32 px inputs)."""
    panel.set_values(dict(latent_dim=4, filters=4, n_blocks=2, convs_per_block=1, fc_units=16,
                          batch_size=8, recon_every=1, checkpoint_every=1, n_recon_examples=3,
                          threads=1, **{"epochs": 2, **train}))
    panel.extra_train = {"threads": 1}


def drop_paths(widget, paths) -> None:
    """A real drag-enter + drop of local paths on `widget` (QMimeData.setUrls)."""
    from explorer.qt import QtCore, QtGui, QtWidgets, Qt

    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QtCore.QPointF(widget.rect().center())
    enter = QtGui.QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime,
                                  Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(widget, enter)
    assert enter.isAccepted(), "the window refused the drag"
    drop = QtGui.QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(widget, drop)
    assert drop.isAccepted(), "the window refused the drop"


def test_new_run_folder_never_shares_a_folder_within_one_second(tmp_path, monkeypatch):
    import time

    from explorer.settings import new_run_folder

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: fmt.replace("%Y%m%d-%H%M%S", "20261207-120000"))
    first = new_run_folder(tmp_path / "runs", "run")
    second = new_run_folder(tmp_path / "runs", "run")
    assert first.name == "run-20261207-120000" and second.name == "run-20261207-120000-2"
    assert first.is_dir() and second.is_dir() and not any(first.iterdir())
