"""Train tab: runs that continue (after Stop, after finishing, after reopening the window),
with their curves and every reconstruction snapshot in one history; paused and ETA labels;
each figure exported on its own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, make_window, small_training, tiny_workspace, wait_until,
)

pytestmark = pytest.mark.timeout(180)


def _train_tab(window):
    panel = window.panel("Train")
    window.tabs.setCurrentWidget(panel)
    return panel


def _epochs(panel, split="train", term="total"):
    return [int(x) for x in panel.plot.data.get((split, term), ([], []))[0]]


def test_continue_after_stop_keeps_the_run_folder_and_its_curves(make_window, tiny_workspace, qtbot):
    from training.vae.checkpoint import load_checkpoint

    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=500)
    assert not panel.resume_run_btn.isEnabled()  # nothing to continue yet
    assert panel.start()
    wait_until(qtbot, lambda: panel.plot.points("train", "total") >= 2, what="two epochs")
    panel.stop()
    wait_until(qtbot, lambda: not panel.is_training(), what="the stop")
    first = w.state.checkpoint_path
    stopped_at = load_checkpoint(first).epoch
    assert panel.eta.text() == "", "a stale ETA is left after the run ended"
    assert panel.resume_run_btn.isEnabled() and panel.continuable == (first, stopped_at)

    panel.more_epochs.setValue(2)
    assert panel.continue_run()
    wait_until(qtbot, lambda: not panel.is_training(), what="the continued run to end")
    assert "finished" in panel.last_message.lower(), panel.last_message
    assert w.state.checkpoint_path == first  # same run folder, same last.pt
    ck = load_checkpoint(first)
    assert ck.epoch == stopped_at + 2 and ck.train_config.epochs == stopped_at + 2
    assert [int(r["epoch"]) for r in ck.history] == list(range(1, stopped_at + 3))
    # the curves run on without a gap or a restart at epoch 1
    assert _epochs(panel) == list(range(1, stopped_at + 3))
    # every snapshot, before and after the continue, is reachable with the slider
    wait_until(qtbot, lambda: len(panel.history.snapshots) == stopped_at + 2, 10, "all snapshots")
    assert [s.epoch for s in panel.history.snapshots] == list(range(1, stopped_at + 3))
    panel.history.slider.setValue(0)
    assert panel.history.label.text().startswith("epoch 1 ")
    runs = list(first.parent.parent.iterdir())
    assert runs == [first.parent], f"continuing made a new run folder: {runs}"

    # a finished run continues too ("as many again" by default)
    assert panel.resume_run_btn.isEnabled() and panel.more_epochs.value() == stopped_at + 2
    panel.more_epochs.setValue(1)
    assert panel.continue_run()
    wait_until(qtbot, lambda: not panel.is_training(), what="the second continue")
    assert load_checkpoint(first).epoch == stopped_at + 3
    assert _epochs(panel) == list(range(1, stopped_at + 4))


def test_continue_after_reopen_has_the_whole_history(make_window, tiny_workspace, qtbot):
    from training.vae.checkpoint import load_checkpoint

    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=500)
    assert panel.start()
    wait_until(qtbot, lambda: len(panel.history.snapshots) >= 3, what="three snapshots")
    ckpt = panel.worker.checkpoint_path
    w.close()
    done = load_checkpoint(ckpt).epoch
    assert done >= 3

    w2 = make_window(tiny_workspace)
    panel2 = w2.panel("Train")
    # the window shows the offer on its own: it lands on the Train tab with the banner
    assert w2.tabs.currentWidget() is panel2, "reopening does not show the offer to continue"
    assert panel2.banner.isVisibleTo(panel2)
    assert panel2.banner_text.wordWrap()
    # the banner does not widen the tabs (which would squeeze the patient list)
    shown = panel2.minimumSizeHint().width()
    panel2.banner.hide()
    assert shown <= panel2.minimumSizeHint().width()
    panel2.banner.show()
    wait_until(qtbot, lambda: len(panel2.history.snapshots) == done, 10, "the run's snapshots on reopening")

    panel2.continue_interrupted()
    assert panel2.is_training()
    wait_until(qtbot, lambda: panel2.plot.points("train", "total") >= done + 2, what="two resumed epochs")
    panel2.stop()
    wait_until(qtbot, lambda: not panel2.is_training(), what="the stop")
    end = load_checkpoint(ckpt).epoch
    assert _epochs(panel2) == list(range(1, end + 1))
    wait_until(qtbot, lambda: len(panel2.history.snapshots) == end, 10, "every snapshot")
    assert [s.epoch for s in panel2.history.snapshots] == list(range(1, end + 1))
    panel2.history.slider.setValue(0)
    assert panel2.history.label.text().startswith("epoch 1 ")


def test_paused_is_labelled_and_eta_says_so(make_window, tiny_workspace, qtbot):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=500)
    assert panel.start()
    wait_until(qtbot, lambda: panel.eta.text().startswith("ETA"), what="an ETA")
    panel.toggle_pause()
    assert panel.eta.text() == "paused" and "paused" in panel.progress.format()
    qtbot.wait(300)
    assert panel.eta.text() == "paused"  # an epoch that ends meanwhile does not overwrite it
    panel.toggle_pause()
    assert "paused" not in panel.progress.format()
    panel.stop()
    wait_until(qtbot, lambda: not panel.is_training(), what="the stop")
    assert panel.eta.text() == ""


def test_empty_train_tab_shows_no_exception_text(make_window, data_dir):
    w = make_window(data_dir / "empty.h5")
    panel = _train_tab(w)
    assert "Error" not in panel.error.text() and "Error" not in panel.info.text()
    assert "drop DICOM folders" in panel.info.text()


def _ink_fraction(png: Path) -> float:
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGBA"), dtype=np.float32)
    ink = (a[..., 3] > 0) & (a[..., :3].min(axis=-1) < 200)
    return float(ink.mean())


@pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="rsvg-convert (librsvg) is not installed")
def test_train_tab_exports_the_curves_alone(make_window, tiny_workspace, qtbot, tmp_path):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=3)
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="training to end")
    wait_until(qtbot, lambda: len(panel.history.snapshots) == 3, 10, "the snapshots")

    svg = panel.export(tmp_path / "curves.svg")
    text = svg.read_text()
    # the curves and their key, not the settings form or the buttons
    assert "Learning rate" not in text and "Start" not in text
    assert "reconstruction (train)" in text and "nats per image" in text
    png = tmp_path / "curves-rsvg.png"
    subprocess.run(["rsvg-convert", str(svg), "-o", str(png)], check=True, timeout=60)
    assert _ink_fraction(png) < 0.15, "the curves render as filled shapes in librsvg"

    out = panel.export(tmp_path / "curves.png")
    from PIL import Image

    size = Image.open(out).size
    plot = panel.plot.viewport().size()
    assert size[0] in (plot.width(), 2 * plot.width()) and size[1] in (plot.height(), 2 * plot.height())
    assert not panel.plot.plotItem.legend and all(
        type(it).__name__ != "LegendItem" for it in panel.plot.scene().items()), "the export legend stayed"

    # the reconstruction grid exports separately
    grid = panel.recon_export.export("png", tmp_path / "recon.png")
    gsize = Image.open(grid).size
    view = panel.history.grid.viewport().size()
    assert gsize[0] >= view.width() and gsize[0] % view.width() == 0
    panel.recon_export.export("svg", tmp_path / "recon.svg")
    assert "train input" in (tmp_path / "recon.svg").read_text()


def test_another_workspace_leaves_nothing_of_the_last_run(make_window, tiny_workspace, data_dir, qtbot):
    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=500)
    assert panel.start()
    wait_until(qtbot, lambda: panel.plot.points("train", "total") >= 1, what="an epoch")
    w.open_workspace(data_dir / "other.h5")  # refused while training runs
    assert w.state.workspace_path == tiny_workspace and "Stop training" in w.statusBar().currentMessage()
    panel.stop()
    wait_until(qtbot, lambda: not panel.is_training(), what="the stop")
    assert panel.resume_run_btn.isEnabled()
    w.open_workspace(data_dir / "other.h5")
    assert w.state.workspace_path == data_dir / "other.h5"
    assert panel.plot.points("train", "total") == 0 and not panel.history.snapshots
    assert panel.continuable is None and not panel.resume_run_btn.isEnabled()


def test_offer_for_a_run_that_had_finished_adds_epochs(make_window, tiny_workspace, qtbot):
    from training.vae.checkpoint import load_checkpoint

    w = make_window(tiny_workspace)
    panel = _train_tab(w)
    small_training(panel, epochs=1)
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="training to end")
    ckpt = w.state.checkpoint_path
    w.state.settings.set_interrupted_run(tiny_workspace, ckpt)  # closed just as it finished
    panel._check_interrupted()
    assert panel.banner.isVisibleTo(panel)
    panel.more_epochs.setValue(1)
    panel.continue_interrupted()
    assert panel.is_training(), panel.error.text()
    wait_until(qtbot, lambda: not panel.is_training(), what="the added epoch")
    assert load_checkpoint(ckpt).epoch == 2
