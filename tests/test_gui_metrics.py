"""Train tab: the reconstruction metrics plot beside the loss curves (issue 15)."""

from __future__ import annotations

import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, make_window, small_training, tiny_workspace, wait_until,
)

pytestmark = pytest.mark.timeout(180)


def test_metrics_are_drawn_per_epoch_and_reloaded(make_window, tiny_workspace, qtbot):
    w = make_window(tiny_workspace)
    panel = w.panel("Train")
    w.tabs.setCurrentWidget(panel)
    small_training(panel, epochs=2)
    assert panel.start()
    wait_until(qtbot, lambda: not panel.is_training(), what="training to end")
    mp = panel.metrics_plot
    for figure in ("mae_hu", "psnr_db", "ssim"):
        for split in ("train", "test"):
            xs, ys = mp.values(split, figure)
            assert xs == [1, 2], (figure, split)
    assert 0 < mp.values("test", "ssim")[1][-1] <= 1
    assert "last epoch" in mp.note.text()
    # a checkpoint chosen later (not the panel's own run) brings its metrics back
    path = w.state.checkpoint_path
    panel.last_checkpoint = None
    mp.clear_curves()
    panel.on_checkpoint_changed(str(path))
    assert mp.values("test", "ssim")[0] == [1, 2]


def test_dice_entries_appear_per_roi(qtbot):
    from explorer.widgets.metrics_plot import MetricsPlot

    mp = MetricsPlot()
    qtbot.addWidget(mp)
    row = {"n_images": 4, "mae_hu": 80.0, "psnr_db": 20.0, "ssim": 0.5, "dice": {"Heart": 0.4, "Cord": None}}
    mp.add_epoch(1, {"test": row, "train": dict(row, dice={"Heart": 0.6, "Cord": 0.1})})
    mp.choice.setCurrentIndex(mp.choice.findData("dice:Heart"))
    assert mp.values("train") == ([1], [0.6]) and mp.values("test") == ([1], [0.4])
    assert mp.values("test", "dice:Cord") == ([], [])  # undefined Dice is not drawn as 0
    mp.clear_curves()
    assert mp.choice.findData("dice:Heart") < 0


def test_thesis_preset_fills_the_form(make_window, tiny_workspace, qtbot):
    from training.config import PRESETS

    w = make_window(tiny_workspace)
    panel = w.panel("Train")
    assert panel.preset.currentText() == "custom"
    i = panel.preset.findData("thesis")
    assert panel.preset.itemText(i) == "Thesis 7.1.1"
    panel.preset.setCurrentIndex(i)
    panel.preset.activated.emit(i)
    p = PRESETS["thesis"]
    for key, value in {**p["model"], **p["train"]}.items():
        if key != "input_size":
            assert panel._value(key) == pytest.approx(value), key
    assert panel._value("dropout") == pytest.approx(0.3)  # TensorFlow keep 0.7 → drop 0.3
    assert panel.preset.currentText() == "Thesis 7.1.1"
    assert "keep probability" in panel.preset.toolTip()
    panel.fields["filters"].setValue(8)  # any change: no longer the preset
    assert panel.preset.currentText() == "custom"
    assert "128" in panel.preset.note((32, 32)) or panel.preset.currentData() is None


def test_device_and_gpu_precision_are_train_settings(make_window, tiny_workspace):
    """The Train tab offers the TrainConfig device and bf16 autocast (issue 15's GPU path)."""
    w = make_window(tiny_workspace)
    panel = w.panel("Train")
    assert panel._value("device") == "auto" and panel._value("autocast") == "none"
    panel.fields["autocast"].setCurrentText("bf16")
    panel.fields["device"].setCurrentText("cpu")
    _, train = panel.configs()
    assert (train.device, train.autocast) == ("cpu", "bf16")  # bf16 is ignored on the CPU
    assert "GPU" in panel.fields["autocast"].toolTip()
    panel.reset_defaults()
    assert (panel._value("device"), panel._value("autocast")) == ("auto", "none")
