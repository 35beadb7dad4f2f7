"""Slices with their z in mm: the Volume tab's wheel stepping and labels, the Data preview's
label, and training.store.preprocess.output_positions against hand-computed positions."""

from __future__ import annotations

import numpy as np
import pytest

from test_gui_support import _one_torch_thread, data_dir, phantom_cohort  # noqa: F401 (fixtures)


def _wheel(widget, dy: int, modifiers=None):
    from explorer.qt import QtCore, QtGui, QtWidgets, Qt

    pos = QtCore.QPointF(widget.rect().center())
    ev = QtGui.QWheelEvent(pos, QtCore.QPointF(widget.mapToGlobal(pos.toPoint())), QtCore.QPoint(0, 0),
                           QtCore.QPoint(0, dy), Qt.MouseButton.NoButton,
                           modifiers or Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QtWidgets.QApplication.sendEvent(widget, ev)


def _stack(n=6, z=None):
    from training.explore.volume import SliceStack

    rng = np.random.default_rng(0)
    return SliceStack(rng.random((n, 16, 16), dtype=np.float32), None, (-1000.0, 1000.0), "t", (), z)


def test_wheel_steps_slices_and_ctrl_wheel_zooms(qtbot):
    from explorer.qt import Qt
    from explorer.widgets.slice_stack import SliceStackPair

    pair = SliceStackPair()
    qtbot.addWidget(pair)
    pair.resize(700, 400)
    pair.show()
    z = np.array([-30.0, -27.5, -25.0, -22.5, -20.0, -17.5])
    pair.set_pair(_stack(z=z), _stack())
    pair.slider.setValue(2)
    before = pair.left.view.viewRange()
    _wheel(pair.left.viewport(), 120)
    assert pair.slider.value() == 3
    _wheel(pair.right.viewport(), -240)  # either side, two notches back
    assert pair.slider.value() == 1
    assert pair.slice_label.text() == "slice 2 / 6 · z = -27.5 mm"
    for _ in range(4):  # half notches (touchpads) add up
        _wheel(pair.left.viewport(), 60)
    assert pair.slider.value() == 3
    assert pair.left.view.viewRange() == before, "the plain wheel zoomed"
    _wheel(pair.left.viewport(), 120, Qt.KeyboardModifier.ControlModifier)
    assert pair.slider.value() == 3, "Ctrl + wheel stepped a slice"
    assert pair.left.view.viewRange() != before, "Ctrl + wheel did not zoom"
    # no z known (generated stacks, arrays-only workspaces): the index alone
    pair.set_pair(_stack(), _stack())
    assert pair.slice_label.text().startswith("slice ") and "mm" not in pair.slice_label.text()


def test_output_positions_follow_the_slice_choice():
    from training.config import PreprocessConfig
    from training.store.preprocess import output_positions

    pos = np.array([-10.0, -7.0, -4.0, -1.0, 2.0, 5.0, 8.0])  # 3 mm apart
    all2d = PreprocessConfig(slices="all", mode="2d")
    np.testing.assert_array_equal(output_positions(pos, all2d, 7), pos)
    rng = PreprocessConfig(slices="range", slice_start=2, slice_stop=5, mode="2d")
    np.testing.assert_array_equal(output_positions(pos, rng, 3), [-4.0, -1.0, 2.0])
    around = PreprocessConfig(slices="around", slice_count=3, slice_center=5.5, mode="2d")
    np.testing.assert_array_equal(output_positions(pos, around, 3), [2.0, 5.0, 8.0])
    cube = PreprocessConfig(slices="all", mode="3d")
    np.testing.assert_allclose(output_positions(pos, cube, 4), [-10.0, -4.0, 2.0, 8.0])
    with pytest.raises(ValueError):
        output_positions(pos, all2d, 5)  # not what was stored
    # slices resampled onto a uniform z grid (z_spacing): centred on the extent [-10, 8]
    zs = PreprocessConfig(slices="all", mode="2d", z_spacing=5.0)
    np.testing.assert_allclose(output_positions(pos, zs, 4), [-8.5, -3.5, 1.5, 6.5])
    zs3 = PreprocessConfig(slices="all", mode="3d", z_spacing=5.0)
    np.testing.assert_allclose(output_positions(pos, zs3, 2), [-3.5, 1.5])


def test_patient_stack_z_is_the_dicom_slice_position(phantom_cohort, tmp_path):
    import pydicom

    from training.config import PreprocessConfig
    from training.explore.volume import patient_stack
    from training.store.ingest import ingest
    from training.store.workspace import Workspace

    cfg = PreprocessConfig(slices="range", slice_start=1, slice_stop=6, mode="2d")
    ingest([phantom_cohort], tmp_path / "ws.h5", cfg, workers=0)
    with Workspace.open(tmp_path / "ws.h5") as ws:
        stack = patient_stack(ws, 0)
    # independent: ImagePositionPatient z of the first patient's CT files (axial phantom)
    zs = {}
    for f in sorted(phantom_cohort.rglob("*")):
        if f.is_file():
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            if getattr(ds, "Modality", "") == "CT":
                zs.setdefault(str(ds.PatientID), []).append(float(ds.ImagePositionPatient[2]))
    expected = [sorted(v)[1:6] for v in zs.values()]
    assert stack.z_mm is not None and any(np.allclose(stack.z_mm, e) for e in expected), (stack.z_mm, expected)


@pytest.mark.parametrize("mode,n_out", [("2d", None), ("3d", 3)])
def test_output_positions_match_what_z_resampling_makes(mode, n_out):
    """Independent check: a volume whose HU equal each slice's z comes out of
    preprocess_volume with each image's HU ≈ the z output_positions names for it (the
    resampling averages a z_spacing-thick slab of sampled slices, so the mean z of what it
    weighs sits up to ~0.2 mm from the slab's centre here; a wrong grid is ≥ 1 mm off)."""
    from training.config import PreprocessConfig
    from training.store.preprocess import output_positions, preprocess_volume

    pos = np.array([-10.0, -7.0, -4.0, -1.0, 2.0, 5.0, 8.0])
    hu = np.repeat(pos[:, None, None], 8, axis=1).repeat(8, axis=2).astype(np.float32)
    cfg = PreprocessConfig(hu_min=-1000.0, hu_max=1000.0, crop=None, slices="all", mode=mode,
                           z_spacing=5.0, depth=n_out)
    images, _ = preprocess_volume(hu, None, pos, cfg, pixel_spacing=(1.0, 1.0))
    stack = images[0] if mode == "3d" else images
    made_z = stack[:, 4, 4].astype(np.float64) * 2000.0 - 1000.0
    np.testing.assert_allclose(output_positions(pos, cfg, len(stack)), made_z, atol=0.3)
