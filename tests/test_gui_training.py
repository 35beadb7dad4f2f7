"""Train tab: curves and reconstructions, pause/resume/stop, close mid-run, failures."""

from __future__ import annotations

import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, make_window, small_training, tiny_workspace, wait_until,
)

pytestmark = pytest.mark.timeout(180)


def _train_tab(window):
    panel = window.panel("Train")
    window.tabs.setCurrentWidget(panel)
    return panel


def test_two_epochs_draw_curves_and_reconstructions(make_window, tiny_workspace, qtbot):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=2)
    assert panel.validate(), panel.error.text()
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="training to end")
    assert "finished" in panel.last_message.lower(), panel.last_message
    for split in ("train", "test"):
        for term in ("total", "recon", "kl"):
            assert panel.plot.points(split, term) == 2, (split, term)
    wait_until(qtbot, lambda: len(panel.history.snapshots) == 2, 5, "the last reconstructions")
    assert [s.epoch for s in panel.history.snapshots] == [1, 2]
    grid = panel.history.grid.current
    assert grid is not None and grid.shape[0] > 4 * 32 and grid.std() > 0  # 4 rows of 32 px tiles
    assert panel.progress.value() == 2
    # the finished model becomes the current checkpoint for the explorer tabs
    assert w.state.checkpoint_path is not None and w.state.checkpoint_path.name == "last.pt"
    # scrubbing back shows the first epoch
    panel.history.slider.setValue(0)
    assert panel.history.label.text().startswith("epoch 1")


def test_explorer_tabs_follow_each_checkpoint_while_training(make_window, tiny_workspace, qtbot):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=3)  # checkpoint_every=1
    seen = []
    w.state.checkpointChanged.connect(lambda path: seen.append((path, panel.is_training())))
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="training to end")
    during = [p for p, training in seen if training]
    assert len(during) >= 2 and all(p.endswith("last.pt") for p in during), seen


def test_pause_resume_stop(make_window, tiny_workspace, qtbot):
    from training.vae.checkpoint import load_checkpoint

    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=500)
    assert panel.start()
    wait_until(qtbot, lambda: panel.plot.points("train", "total") >= 1, what="a first epoch")
    panel.toggle_pause()
    assert panel.run_state == "paused" and panel.pause_btn.text() == "Resume"
    qtbot.wait(1500)  # the batch in flight (and, if it was the last, its epoch's end) finishes
    frozen = panel.plot.points("train", "total")
    qtbot.wait(1000)
    assert panel.plot.points("train", "total") == frozen, "epochs advanced while paused"
    panel.toggle_pause()
    assert panel.run_state == "running"
    wait_until(qtbot, lambda: panel.plot.points("train", "total") > frozen, what="progress after resume")
    panel.stop()
    wait_until(qtbot, lambda: not panel.is_training(), what="the stop")
    assert "stopped" in panel.last_message.lower(), panel.last_message
    assert panel.start_btn.isEnabled() and not panel.stop_btn.isEnabled()
    ck = load_checkpoint(w.state.checkpoint_path)
    assert 1 <= ck.epoch < 500


def test_closing_mid_training_leaves_checkpoint_and_offers_to_continue(make_window, tiny_workspace, qtbot):
    from training.vae.checkpoint import load_checkpoint

    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=500)
    assert panel.start()
    wait_until(qtbot, lambda: panel.plot.points("train", "total") >= 2, what="two epochs")
    worker_ckpt = panel.worker.checkpoint_path
    w.close()
    ck = load_checkpoint(worker_ckpt)  # readable, weights-only
    assert ck.epoch >= 2
    run = w.state.settings.interrupted_run()
    assert run is not None and run[1] == worker_ckpt

    w2 = make_window(tiny_workspace)
    panel2 = _train_tab(w2)
    assert panel2.banner.isVisibleTo(panel2), "no offer to continue"
    panel2.continue_interrupted()
    assert panel2.is_training()
    wait_until(qtbot, lambda: panel2.plot.points("train", "total") > ck.epoch, what="a resumed epoch")
    panel2.stop()
    wait_until(qtbot, lambda: not panel2.is_training(), what="the stop")
    assert load_checkpoint(worker_ckpt).epoch > ck.epoch


def test_bad_settings_and_failures_are_readable(make_window, tiny_workspace, qtbot):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel)
    panel.set_values({"n_blocks": 6})  # 32 px is not divisible by 2**6
    assert not panel.validate()
    assert "divisible" in panel.error.text() and not panel.start_btn.isEnabled()
    panel.set_values({"n_blocks": 2})
    assert panel.validate()
    panel.extra_train = {"threads": 1, "max_loss": 1.0}  # any real loss "explodes"
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="the failure")
    msg = panel.error.text()
    assert "max_loss" in msg and "Traceback" not in msg, msg


def test_loss_numbers_export_as_csv(make_window, tiny_workspace, qtbot, tmp_path):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=1)
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="training to end")
    panel.export(tmp_path / "losses.csv")
    lines = (tmp_path / "losses.csv").read_text().splitlines()
    assert lines[0] == "epoch,split,term,loss_per_image" and len(lines) == 1 + 2 * 4
    panel.export(tmp_path / "train.png")
    assert (tmp_path / "train.png").stat().st_size > 1000


def test_reopening_a_workspace_loads_its_latest_model(make_window, tiny_workspace, qtbot):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=1)
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="training to end")
    trained = w.state.checkpoint_path
    w.close()
    w2 = make_window(tiny_workspace)
    assert w2.state.checkpoint_path == trained
    assert w2.panel("Train").plot.points("train", "total") == 1  # its curves are shown
