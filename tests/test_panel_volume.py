"""Volume tab: synchronised slider, overlays, window/level in HU, 2D and 3D workspaces,
sources, checkpoint updates and exports (tiny, offscreen); training.explore.volume."""

from __future__ import annotations

import numpy as np
import pytest

from test_panel_similarity import (  # noqa: F401 (fixtures)
    SIZE, _MADE, _one_torch_thread, _shutdown_panels, make_panel, make_state, settings, settle,
    write_checkpoint, write_workspace,
)


def volume_panel(qtbot, state):
    from explorer.panels.volume import VolumePanel

    return make_panel(qtbot, state, VolumePanel)


@pytest.fixture(params=["2d", "3d"])
def panel_env(request, tmp_path, settings):
    three = request.param == "3d"
    ws = write_workspace(tmp_path / "ws.h5", rt=True, depth=SIZE if three else None)
    ckpt = write_checkpoint(tmp_path / "model.pt", n_classes=3, spatial_dims=3 if three else 2)
    return settings, ws, ckpt, request.param


def headless_pair(ckpt, ws_path, patient=0):
    from training.explore import volume as vv
    from training.vae.checkpoint import load_model
    from training.store.workspace import Workspace

    model, _ = load_model(ckpt)
    with Workspace.open(ws_path) as ws:
        return vv.reconstruction_pair(model, ws, patient)


def test_slider_moves_both_sides_with_overlay_and_window(qtbot, panel_env):
    settings, ws, ckpt, mode = panel_env
    state = make_state(settings, ws, ckpt)
    panel = volume_panel(qtbot, state)
    settle(qtbot, panel)
    pair = headless_pair(ckpt, ws)
    assert panel.pair is not None and panel.mode == mode
    assert ("3D workspace" if mode == "3d" else "2D workspace") in panel.note.text()
    n = pair.left.n_slices
    assert panel.stacks.n_slices == n == (SIZE if mode == "3d" else 5)
    left, right = panel.stacks.left, panel.stacks.right
    for k in (0, n - 1, 2):
        panel.stacks.slider.setValue(k)
        np.testing.assert_allclose(left.image_item.image, pair.left.hu()[k], atol=1e-3)
        np.testing.assert_allclose(right.image_item.image, pair.right.hu()[k], atol=1e-3)
        assert panel.stacks.slice_label.text() == f"slice {k + 1} / {n}"
    # HU: the workspace window [-1000, 1000] undone
    assert left.image_item.image.min() >= -1000 and left.image_item.image.max() <= 1000
    # overlay: labels of this slice on their own item; toggling hides them
    assert left.overlay_item.isVisible()
    from explorer.widgets.slice_stack import overlay_lut

    np.testing.assert_array_equal(left.overlay_item.image, overlay_lut(3)[pair.left.labels[2]])
    before = left.grab().toImage()
    panel.stacks.overlay.setChecked(False)
    assert not left.overlay_item.isVisible() and not right.overlay_item.isVisible()
    assert left.grab().toImage() != before
    # window/level: the default is the workspace window, then L/W set the levels in HU
    assert tuple(left.image_item.levels) == pytest.approx((-1000.0, 1000.0))
    panel.stacks.level.setValue(40.0)
    panel.stacks.width.setValue(400.0)
    assert tuple(left.image_item.levels) == pytest.approx((-160.0, 240.0))
    assert tuple(right.image_item.levels) == pytest.approx((-160.0, 240.0))
    panel.stacks.preset.setCurrentIndex(panel.stacks.preset.findData("lung"))
    assert panel.stacks.preset.currentText() == "lung [−1350, 150] HU"
    assert tuple(left.image_item.levels) == pytest.approx((-1350.0, 150.0))
    # right way up: row 0 (anterior) at the top of the view
    assert left.view.yInverted()


def test_sources_and_patient_selection(qtbot, tmp_path, settings):
    from training.explore import volume as vv
    from training.vae.checkpoint import load_model
    from training.store.workspace import Workspace

    ws = write_workspace(tmp_path / "ws.h5", rt=True)
    ckpt = write_checkpoint(tmp_path / "m.pt")
    state = make_state(settings, ws, ckpt)
    panel = volume_panel(qtbot, state)
    settle(qtbot, panel)
    state.select_patient("PAT-0003")
    settle(qtbot, panel)
    assert panel.pair.left.title.startswith("PAT-0003")
    model, _ = load_model(ckpt)
    panel.source.setCurrentIndex(panel.source.findData("generated"))
    panel.seed.setValue(7)
    settle(qtbot, panel)
    with Workspace.open(ws) as w:
        want = vv.generated_pair(model, w, w.patient_index("PAT-0003"), seed=7)
    np.testing.assert_allclose(panel.pair.right.images, want.right.images, atol=1e-6)
    panel.source.setCurrentIndex(panel.source.findData("interpolated"))
    panel.other.setCurrentText("PAT-0001")
    panel.t.setValue(1.0)
    settle(qtbot, panel)
    with Workspace.open(ws) as w:
        want = vv.interpolated_pair(model, w, w.patient_index("PAT-0003"), w.patient_index("PAT-0001"), t=1.0)
        rec1 = vv.reconstruction_pair(model, w, w.patient_index("PAT-0001"))
    np.testing.assert_allclose(panel.pair.right.images, want.right.images, atol=1e-6)
    np.testing.assert_allclose(want.right.images, rec1.right.images, atol=1e-5)  # t = 1: the other patient


def test_checkpoint_updates_input_only_and_exports(qtbot, tmp_path, settings):
    from explorer.qt import QtGui

    ws = write_workspace(tmp_path / "ws.h5", rt=False)
    ck1 = write_checkpoint(tmp_path / "a.pt", n_classes=0, seed=1)
    ck2 = write_checkpoint(tmp_path / "b.pt", n_classes=0, seed=2)
    state = make_state(settings, ws, None)
    panel = volume_panel(qtbot, state)
    settle(qtbot, panel)
    assert panel.pair is None and "No model loaded" in panel.message.text()
    assert panel.stacks.left.image_item.image is not None  # the input alone
    state.set_checkpoint(ck1)
    settle(qtbot, panel)
    first = panel.pair.right.images.copy()
    state.set_checkpoint(ck2)
    settle(qtbot, panel)
    np.testing.assert_allclose(panel.pair.right.images, headless_pair(ck2, ws).right.images, atol=1e-6)
    assert not np.allclose(first, panel.pair.right.images)
    out = panel.export(tmp_path / "exports" / "slice.png")
    assert not QtGui.QImage(str(out)).isNull()
    assert not QtGui.QImage(str(tmp_path / "exports" / "slice-input.png")).isNull()
    # a model that does not fit: one readable line
    state.set_checkpoint(write_checkpoint(tmp_path / "rt.pt", n_classes=3))
    settle(qtbot, panel)
    assert "RT classes" in panel.message.text()


def test_volume_views_headless(tmp_path):
    from training.explore import volume as vv

    assert vv.window_level_range(40, 400) == (-160.0, 240.0)
    assert vv.level_width_of(-1350, 150) == (-600.0, 1500.0)
    with pytest.raises(ValueError):
        vv.window_level_range(0, 0)
    np.testing.assert_array_equal(vv.matched_slices(5, 3), [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(vv.matched_slices(1, 4), [0])
    stack = vv.SliceStack(np.array([[[0.0, 0.25, 1.0]]], np.float32), None, (-1000.0, 1000.0), "t")
    np.testing.assert_allclose(stack.hu(), [[[-1000.0, -500.0, 1000.0]]])


def test_export_right_side_png_npy_dicom(qtbot, tmp_path, settings):
    import pydicom

    ws = write_workspace(tmp_path / "ws.h5", rt=True)
    ck = write_checkpoint(tmp_path / "m.pt")
    panel = volume_panel(qtbot, make_state(settings, ws, ck))
    settle(qtbot, panel)
    out = panel.export_volume(tmp_path / "vol")
    ct = np.load(out["npy"][0])
    assert ct.shape == (1, 5, SIZE, SIZE)  # a 2D patient's reconstructed stack: one volume
    np.testing.assert_allclose(ct[0], panel.pair.right.images)
    cts = [p for p in out["dicom"] if p.name.startswith("CT")]
    assert len(cts) == 5
    ds = pydicom.dcmread(cts[0])
    assert str(ds.PatientName).startswith("CTVAE-GEN-") and "PAT-" not in str(ds.PatientID)
