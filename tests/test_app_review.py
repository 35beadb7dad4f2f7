"""Window-level review checks: File ▸ Export formats, error paths through the real menu
code, LatestWorker cleanup when its owner is destroyed."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_gui_support import data_dir, make_window, tiny_workspace  # noqa: F401


def _answer_save_dialog(monkeypatch, path: Path, chosen: str = ""):
    from explorer.qt import QtWidgets

    seen = {}

    def fake(parent, caption, directory, filters, *a, **k):
        seen["filters"] = filters
        return str(path), chosen

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", staticmethod(fake))
    return seen


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_export_dialog_writes_every_tab_in_each_image_format(make_window, tiny_workspace, tmp_path,
                                                             monkeypatch, qtbot, fmt):
    w = make_window(tiny_workspace)
    messages = []
    w.state.statusMessage.connect(lambda text, ms: messages.append(text))
    magic = {"svg": b"<svg", "pdf": b"%PDF", "png": b"\x89PNG"}[fmt]
    for i in range(w.tabs.count()):
        w.tabs.setCurrentIndex(i)
        out = tmp_path / f"tab{i}.{fmt}"
        seen = _answer_save_dialog(monkeypatch, out)
        w.export_dialog()
        assert "SVG" in seen["filters"] and "PDF" in seen["filters"]
        qtbot.waitUntil(lambda: bool(messages) and (messages[-1].startswith("Export failed")
                                                    or messages[-1] == f"Exported {out}"), timeout=10000)
        assert messages[-1] == f"Exported {out}", (w.tabs.tabText(i), messages[-1])
        assert magic in out.read_bytes()[:4096], w.tabs.tabText(i)


def test_export_adds_the_chosen_filters_suffix():
    from explorer.main_window import with_export_suffix

    assert with_export_suffix("/x/fig", "SVG vector image (*.svg)") == "/x/fig.svg"
    assert with_export_suffix("/x/fig.pdf", "PNG image (*.png)") == "/x/fig.pdf"
    assert with_export_suffix("/x/fig", "") == "/x/fig.png"


def test_latest_worker_stops_when_its_parent_is_destroyed(qtbot):
    import time

    from explorer.qt import QtCore, QtWidgets
    from explorer.widgets.latest_worker import LatestWorker

    parent = QtWidgets.QWidget()
    worker = LatestWorker(parent)
    got = []
    worker.resultReady.connect(lambda rid, value: got.append(value))
    worker.submit(time.sleep, 0.2)
    thread = worker._thread
    assert thread is not None and thread.isRunning()
    parent.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    assert thread.isFinished()  # stopped (after the running call) while the parent died
    assert worker.submit(time.sleep, 0) == -1
    qtbot.wait(50)
    assert got == []


def _open_via_menu(w, monkeypatch, path):
    from explorer.qt import QtWidgets

    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(path), "")))
    w.act_open.trigger()


@pytest.mark.parametrize("damage", ["not_hdf5", "truncated"])
def test_opening_a_damaged_workspace_gives_a_message(make_window, tiny_workspace, monkeypatch, qtbot,
                                                     damage):
    bad = tiny_workspace.with_name(f"{damage}.h5")
    data = tiny_workspace.read_bytes()
    bad.write_bytes(b"this is not a workspace\n" * 100 if damage == "not_hdf5" else data[: len(data) // 3])
    w = make_window(tiny_workspace)
    messages = []
    w.state.statusMessage.connect(lambda text, ms: messages.append(text))
    _open_via_menu(w, monkeypatch, bad)
    for i in range(w.tabs.count()):  # every tab reacts to the new workspace without raising
        w.tabs.setCurrentIndex(i)
        qtbot.wait(20)
    assert w.state.workspace_path == bad
    assert w.patient_list.rowCount() == 0
    assert any(bad.name in m for m in messages), messages


def test_loading_a_checkpoint_of_another_workspace_or_garbage(make_window, tiny_workspace, monkeypatch,
                                                              qtbot, tmp_path):
    from explorer.qt import QtWidgets
    from test_gui_support import write_tiny_workspace

    other = write_tiny_workspace(tmp_path / "other.h5", n_patients=2, size=16)
    w = make_window(tiny_workspace)
    messages = []
    w.state.statusMessage.connect(lambda text, ms: messages.append(text))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not a checkpoint")
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(garbage), "")))
    w.act_load_model.trigger()
    assert w.state.checkpoint_path is None and "garbage.pt" in messages[-1]

    # a valid checkpoint of a model for another workspace (16 px inputs, not 32): loads,
    # and every tab shows a message instead of raising in a slot
    import torch

    from training.vae.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainConfig
    from training.vae.model import VAE
    from training.store.workspace import Workspace

    with Workspace.open(other) as ws:
        pre, dh = ws.preprocess, ws.data_hash
    cfg = ModelConfig(input_size=16, n_classes=pre.n_classes, latent_dim=4, filters=4, n_blocks=2,
                      convs_per_block=1, fc_units=16, dropout=0.0)
    foreign = save_checkpoint(tmp_path / "foreign.pt", model_config=cfg, train_config=TrainConfig(),
                              preprocess_config=pre, model_state=VAE(cfg).state_dict(),
                              optimizer_state=None, epoch=1, history=[], data_hash=dh)
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(foreign), "")))
    w.act_load_model.trigger()
    assert w.state.checkpoint_path == foreign and "cannot encode this workspace" in messages[-1]
    for i in range(w.tabs.count()):
        w.tabs.setCurrentIndex(i)
        w.state.select_patient("PAT-0002")
        qtbot.wait(300)
    for p in w.panels:
        if hasattr(p, "wait_idle"):
            p.wait_idle(30000)
    qtbot.wait(200)


def test_data_preview_is_marked_and_the_right_way_up(qtbot):
    import numpy as np

    from explorer.widgets.slice_preview import SlicePreview

    w = SlicePreview()
    qtbot.addWidget(w)
    w.resize(400, 400)
    w.show()
    qtbot.waitExposed(w)
    img = np.zeros((3, 20, 30), np.float32)
    img[:, 0, 0] = 1.0  # row 0, column 0: anterior, the patient's right
    w.set_stack(img, caption="test")
    qtbot.wait(20)
    letters = {t.textItem.toPlainText(): t for t in w._letters}
    assert set(letters) == {"A", "P", "R", "L"}
    scene = {k: w.view.mapViewToScene(t.pos()) for k, t in letters.items()}
    assert scene["A"].y() < scene["P"].y() and scene["R"].x() < scene["L"].x()
    corner = w.view.mapViewToScene(w.image_item.mapToView(w.image_item.boundingRect().topLeft()))
    assert abs(corner.y() - scene["A"].y()) < 1 and abs(corner.x() - scene["R"].x()) < 1
    assert w.plot.getAxis("left").labelText and w.plot.getAxis("bottom").labelText
    w.set_stack(None)
    assert w._letters == []


def test_opening_a_workspace_reads_thumbnails_off_the_gui_thread(make_window, tiny_workspace, qtbot,
                                                                 monkeypatch):
    import threading

    from training.store.workspace import Workspace

    threads = []
    real = Workspace.read_images

    def spy(self, *a, **k):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(self, *a, **k)

    monkeypatch.setattr(Workspace, "read_images", spy)
    w = make_window(tiny_workspace)
    assert w.patient_list.pseudonyms() == ["PAT-0001", "PAT-0002", "PAT-0003"]
    qtbot.waitUntil(lambda: len(w.patient_list.icons()) == 3, timeout=10000)
    assert threads and not any(threads)


def test_a_job_outlives_its_destroyed_owner_without_aborting(qtbot):
    import time

    from explorer import workers
    from explorer.qt import QtCore, QtWidgets

    parent = QtWidgets.QWidget()
    started = []

    def slow(ctx):
        started.append(1)
        for _ in range(100):
            if ctx.cancel():
                return "cancelled"
            time.sleep(0.01)
        ctx.progress(1, 2, "late")
        return "ok"

    job = workers.Job(slow, parent=parent)
    runner = job._thread
    job.start()
    qtbot.waitUntil(lambda: bool(started), timeout=5000)
    del job
    parent.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    assert runner in workers._ORPHANED or runner.isFinished()
    assert workers.wait_orphaned(5000)
    assert runner.isFinished()


def test_save_model_copies_off_the_gui_thread(make_window, tiny_workspace, monkeypatch, qtbot, tmp_path):
    import threading

    from explorer import workers
    from test_gui_support import wait_until

    src = tmp_path / "model.pt"
    src.write_bytes(b"x" * 100_000)  # the copy does not read it as a checkpoint
    w = make_window(tiny_workspace)
    w.state.set_checkpoint(src)
    on_main = []
    real = workers.copy_checkpoint

    def spy(a, b):
        on_main.append(threading.current_thread() is threading.main_thread())
        return real(a, b)

    monkeypatch.setattr(workers, "copy_checkpoint", spy)
    messages = []
    w.state.statusMessage.connect(lambda text, ms: messages.append(text))
    dst = tmp_path / "out" / "saved.pt"
    dst.parent.mkdir()
    _answer_save_dialog(monkeypatch, dst)
    w.act_save_model.trigger()
    wait_until(qtbot, lambda: any(m.startswith("Saved the model") for m in messages), 10, "the copy")
    assert on_main == [False] and dst.read_bytes() == src.read_bytes()
    (tmp_path / "a-file").write_text("")
    _answer_save_dialog(monkeypatch, tmp_path / "a-file" / "saved.pt")  # its folder is a file
    w.act_save_model.trigger()
    wait_until(qtbot, lambda: messages[-1].startswith("Could not save"), 10, "the failure")


def test_latest_worker_keeps_a_thread_that_outlives_its_stop(qtbot):
    import time

    from explorer.widgets import latest_worker
    from explorer.widgets.latest_worker import LatestWorker

    worker = LatestWorker()
    worker.submit(time.sleep, 0.5)
    qtbot.waitUntil(lambda: worker._running_id is not None, timeout=5000)
    thread = worker._thread
    worker.shutdown(timeout_ms=10)  # gives up waiting: the thread must stay referenced
    assert thread in latest_worker._UNFINISHED
    assert latest_worker.wait_unfinished(5000) and thread.isFinished()


def test_export_button_png_is_encoded_off_the_gui_thread(qtbot, monkeypatch, tmp_path):
    import threading

    import numpy as np

    from explorer import figures
    from explorer.qt import pg

    view = pg.GraphicsLayoutWidget()
    qtbot.addWidget(view)
    vb = view.addViewBox()
    vb.addItem(pg.ImageItem(np.random.default_rng(0).random((64, 64)).astype(np.float32)))
    view.resize(200, 200)
    view.show()
    btn = figures.ExportButton(view, "fig")
    qtbot.addWidget(btn)
    on_main, written, failed = [], [], []
    real = figures._qimage_bytes

    def spy(img, fmt="PNG"):
        on_main.append(threading.current_thread() is threading.main_thread())
        return real(img, fmt)

    monkeypatch.setattr(figures, "_qimage_bytes", spy)
    monkeypatch.setattr(figures, "ask_save_path", lambda *a, **k: tmp_path / "fig.png")
    btn.exported.connect(written.append)
    btn.failed.connect(failed.append)
    btn.actions_by_format["png"].trigger()
    qtbot.waitUntil(lambda: bool(written or failed), timeout=10000)
    assert written == [str(tmp_path / "fig.png")] and on_main == [False]
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(figures, "ask_save_path", lambda *a, **k: tmp_path / "no-dir" / "x" / "fig.png")
    (tmp_path / "no-dir").write_text("")  # a file where a folder should be
    btn.actions_by_format["png"].trigger()
    qtbot.waitUntil(lambda: bool(failed), timeout=10000)
    assert failed[0].startswith("Could not write fig.png")


@pytest.mark.slow
def test_a_script_ending_without_closing_the_window_exits_cleanly(tiny_workspace, data_dir):
    import os
    import subprocess
    import sys

    code = (
        "from explorer.qt import QtWidgets\n"
        "app = QtWidgets.QApplication([])\n"
        "from explorer.main_window import MainWindow\n"
        "w = MainWindow()\n"
        "w.show()\n"
        f"w.open_workspace({str(tiny_workspace)!r})\n"
        "app.processEvents()\n"  # no app.exec(): aboutToQuit never comes, nobody closes w
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Destroyed while thread" not in r.stderr


def _write_run(workspace, name: str, data_hash: str, age_s: float = 0.0):
    """A run folder beside the workspace with a tiny last.pt (mtime age_s in the past)."""
    import os
    import time

    import torch

    from explorer.settings import runs_dir
    from training.vae.checkpoint import save_checkpoint
    from training.config import ModelConfig, PreprocessConfig, TrainConfig

    path = runs_dir(workspace) / name / "last.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, model_config=ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=2),
                    train_config=TrainConfig(epochs=1), preprocess_config=PreprocessConfig(crop=16),
                    model_state=torch.nn.Linear(2, 2).state_dict(), optimizer_state=None, epoch=0,
                    history=[], data_hash=data_hash)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_latest_checkpoint_skips_damaged_and_stale_runs(tiny_workspace, tmp_path):
    """Opening a workspace picks the newest run whose data hash matches it; a damaged newer
    run or one trained on other data does not stop the search (checkpoints are mapped,
    not read, for this look)."""
    from explorer import workers
    from training.store.workspace import Workspace

    with Workspace.open(tiny_workspace) as ws:
        data_hash = ws.data_hash
    good = _write_run(tiny_workspace, "a-good", data_hash, 30)
    _write_run(tiny_workspace, "b-stale", "other data", 20)
    damaged = _write_run(tiny_workspace, "c-damaged", data_hash, 10)
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert workers.latest_checkpoint(tiny_workspace) == good


def test_train_tab_shows_the_reconstruction_history_of_an_opened_run(make_window, tiny_workspace, qtbot):
    """A run's reconstruction snapshots live in its folder: opening the workspace later
    brings back the history slider, not only the loss curves."""
    import numpy as np

    from training.vae import recon_history
    from training.store.workspace import Workspace

    with Workspace.open(tiny_workspace) as ws:
        data_hash = ws.data_hash
    ck = _write_run(tiny_workspace, "run", data_hash)
    rng = np.random.default_rng(0)
    for epoch in (2, 4, 6):
        x = rng.random((3, 1, 16, 16)).astype(np.float32)
        recon_history.save_snapshot(ck.parent, epoch, {"train": x, "test": x}, {"train": x / 2, "test": x / 3})
    w = make_window(tiny_workspace)
    hist = w.panel("Train").history
    qtbot.waitUntil(lambda: len(hist.snapshots) == 3, timeout=10000)
    assert [s.epoch for s in hist.snapshots] == [2, 4, 6]
    assert [t for t, _ in hist.snapshots[0].rows] == ["train input", "train recon.", "test input", "test recon."]
    assert hist.slider.isEnabled() and hist.slider.value() == 2
