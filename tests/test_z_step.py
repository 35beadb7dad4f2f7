"""The z step of the stored images comes from their real positions, not from one median
slice spacing (training.store.scale.z_step / output_spacing, training.latent.export
output_spacing / workspace_spacing / export_dicom): a 3D cube of depth D made from
unevenly spaced slices has planes (z_last − z_first)/(D − 1) apart; a 2D stack of such
slices has no single spacing (the median gap, flagged uneven, with the range), and its
DICOM export keeps every slice's own z. Evenly spaced series are unchanged."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from tests.dicom_factory import write_ct_series
from training.config import PreprocessConfig
from training.latent import export
from training.store import scale
from training.store.ingest import ingest
from training.store.workspace import Workspace

# uneven gaps 1, 1, 3, 7, 1, 7 mm: median 2 mm, extent 20 mm
UNEVEN = np.array([0.0, 1.0, 2.0, 5.0, 12.0, 13.0, 20.0])
EVEN = np.arange(8) * 2.5


def _series(folder, pos):
    stored = (np.round(10 * pos) + 1024).astype(np.int16)[:, None, None] * np.ones((1, 8, 8), np.int16)
    write_ct_series(folder, stored, origin=(0.0, 0.0, 30.0), positions=list(pos),
                    pixel_spacing=(1.0, 1.0), slice_spacing=None)
    return folder


def _ingest(tmp_path, folder, cfg, name="w.h5"):
    ws = tmp_path / name
    rep = ingest([folder], ws, cfg, workers=1)
    assert rep.added, rep.skipped
    return ws


def _slice_z(paths):
    """(SliceLocation, ImagePositionPatient z) of each written file, in file order."""
    dss = [pydicom.dcmread(p) for p in paths if p.name.startswith("CT_")]
    return (np.array([float(d.SliceLocation) for d in dss]),
            np.array([float(d.ImagePositionPatient[2]) for d in dss]))


def _cube_cfg(depth):
    return PreprocessConfig(crop=None, mode="3d", depth=depth, window_name="custom",
                            hu_min=-100.0, hu_max=300.0)


# ----------------------------------------------------------------------------- unit level


def test_z_step_even_uneven_and_degenerate():
    assert scale.z_step([0.0, 2.5, 5.0, 7.5]) == {"z_mm": 2.5, "z_range_mm": (2.5, 2.5), "z_even": True}
    st = scale.z_step(UNEVEN)
    assert st["z_even"] is False and st["z_mm"] == 2.0 and st["z_range_mm"] == (1.0, 7.0)
    # DICOM rounding noise (well under 0.01 mm) is still one spacing
    st = scale.z_step([0.0, 3.0004, 5.9998, 9.0])
    assert st["z_even"] is True and st["z_mm"] == pytest.approx(3.0)
    for z in ([4.0], [3.0, 3.0, 3.0], []):
        assert scale.z_step(z) == {"z_mm": None, "z_range_mm": None, "z_even": None}


def test_output_spacing_3d_uneven_from_the_real_extent():
    depth = 5
    cfg = _cube_cfg(depth)
    shape = (len(UNEVEN), 8, 8)
    median = float(np.median(np.diff(UNEVEN)))
    by_hand = (20.0 - 0.0) / (depth - 1)  # 5 mm: the planes at 0, 5, 10, 15, 20 mm
    out = scale.output_spacing(cfg, (median, 1.0, 1.0), shape, UNEVEN)
    assert out["z_mm"] == pytest.approx(by_hand) and out["z_even"] is True
    # the old estimate from the median: 2 × 6 / 4 = 3 mm, 40 % short
    assert scale.output_spacing(cfg, (median, 1.0, 1.0), shape)["z_mm"] == pytest.approx(3.0)
    got = export.output_spacing(cfg, (median, 1.0, 1.0), shape, (depth, 8, 8), positions=UNEVEN)
    assert got == pytest.approx((by_hand, 1.0, 1.0))
    # a selection: "range" 1..5 takes the slices at 1, 2, 5, 12 mm → 11 mm over 4 gaps
    rng = cfg.replace(slices="range", slice_start=1, slice_stop=5)
    assert scale.output_spacing(rng, (median, 1.0, 1.0), shape, UNEVEN)["z_mm"] == pytest.approx(11 / 4)
    assert export.output_spacing(rng, (median, 1.0, 1.0), shape, (depth, 8, 8),
                                 positions=UNEVEN)[0] == pytest.approx(11 / 4)


def test_output_spacing_2d_uneven_is_the_median_flagged_uneven():
    cfg = PreprocessConfig(crop=None)
    out = scale.output_spacing(cfg, (2.0, 1.0, 1.0), (7, 8, 8), UNEVEN)
    assert out["z_mm"] == 2.0 and out["z_even"] is False and out["z_range_mm"] == (1.0, 7.0)
    assert export.output_spacing(cfg, (2.0, 1.0, 1.0), (7, 8, 8), positions=UNEVEN)[0] == 2.0
    # no positions: unknown (None), as before
    assert scale.output_spacing(cfg, (2.0, 1.0, 1.0), (7, 8, 8))["z_even"] is None


def test_uniform_series_unchanged():
    shape = (len(EVEN), 8, 8)
    for cfg, image_shape in ((_cube_cfg(8), (8, 8, 8)), (_cube_cfg(15), (15, 8, 8)),
                             (PreprocessConfig(crop=None), None),
                             (_cube_cfg(6).replace(slices="around", slice_count=4), (6, 8, 8))):
        old = export.output_spacing(cfg, (2.5, 1.0, 1.0), shape, image_shape)
        new = export.output_spacing(cfg, (2.5, 1.0, 1.0), shape, image_shape, positions=EVEN)
        assert new == pytest.approx(old), cfg
    cfg = _cube_cfg(15)
    assert scale.output_spacing(cfg, (2.5, 1.0, 1.0), shape, EVEN)["z_mm"] == pytest.approx(2.5 * 7 / 14)
    assert scale.output_spacing(cfg, (2.5, 1.0, 1.0), shape)["z_mm"] == pytest.approx(2.5 * 7 / 14)
    flat = scale.output_spacing(PreprocessConfig(crop=None), (2.5, 1.0, 1.0), shape, EVEN)
    assert flat["z_mm"] == pytest.approx(2.5) and flat["z_even"] is True
    # z_spacing: the grid's spacing, positions or not
    zs = PreprocessConfig(crop=None, z_spacing=1.0, mode="3d", depth=4)
    assert scale.output_spacing(zs, (2.0, 1.0, 1.0), (7, 8, 8), UNEVEN)["z_mm"] == 1.0
    assert export.output_spacing(zs, (2.0, 1.0, 1.0), (7, 8, 8), (4, 8, 8), positions=UNEVEN)[0] == 1.0


# ----------------------------------------------------------------------------- workspace level


def test_3d_workspace_reports_and_exports_the_real_cube_step(tmp_path, capsys):
    from training.cli import main

    depth = 9
    ws_path = _ingest(tmp_path, _series(tmp_path / "s", UNEVEN), _cube_cfg(depth))
    by_hand = (UNEVEN[-1] - UNEVEN[0]) / (depth - 1)  # 2.5 mm
    with Workspace.open(ws_path) as ws:
        assert ws.patients[0].spacing[0] == pytest.approx(2.0)  # the stored median
        row = scale.scale_summary(ws.preprocess, scale.series_with_positions(ws))["series"][0]
        assert row["image_z_mm"] == pytest.approx(by_hand) and row["image_z_even"] is True
        sp = export.workspace_spacing(ws, 0)
        assert sp[0] == pytest.approx(by_hand) and export.workspace_spacing(ws)[0] == pytest.approx(by_hand)
        # the stored cube really has these planes: HU = 10 × z, linear along z
        hu = ws.read_patient(0)[0][0, :, 4, 4] * 400 - 100
        np.testing.assert_allclose(np.diff(hu), 10 * by_hand, atol=0.05)
        vol = ws.read_patient(0)[0][0]
    capsys.readouterr()
    assert main(["info", str(ws_path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["scale"]["series"][0]["image_z_mm"] == pytest.approx(by_hand)
    # DICOM of a volume with the workspace's spacing: SliceLocation and IPP z step by_hand
    written = export.export_generated(tmp_path / "out", vol[None], preprocess=_cube_cfg(depth),
                                      spacing=sp, formats=("dicom",))
    loc, ipp_z = _slice_z(written["dicom"])
    np.testing.assert_allclose(np.diff(loc), by_hand, atol=1e-3)
    np.testing.assert_allclose(np.diff(ipp_z), by_hand, atol=1e-3)


def test_2d_uneven_stack_reported_uneven_and_exported_at_its_real_z(tmp_path):
    from training.explore.volume import SliceStack, VolumePair, export_right, patient_stack

    ws_path = _ingest(tmp_path, _series(tmp_path / "s", UNEVEN), PreprocessConfig(crop=None))
    with Workspace.open(ws_path) as ws:
        row = scale.scale_summary(ws.preprocess, scale.series_with_positions(ws))["series"][0]
        assert row["image_z_mm"] == 2.0 and row["image_z_even"] is False
        assert row["image_z_range_mm"] == [1.0, 7.0]
        # without positions (PatientInfo alone) nothing is claimed about evenness
        assert scale.scale_summary(ws.preprocess, ws.patients)["series"][0]["image_z_even"] is None
        left = patient_stack(ws, 0)
        np.testing.assert_allclose(left.z_mm, 30.0 + UNEVEN)  # the series' origin lies at z = 30 mm
        right = SliceStack(left.images.copy(), None, left.hu_window, "reconstruction", (), left.z_mm)
        notes: list[str] = []
        written = export_right(VolumePair(left, right, "2d", "reconstruction"), ws, 0, tmp_path / "out",
                               formats=("dicom",), notes=notes)
    loc, ipp_z = _slice_z(sorted(written["dicom"]))
    np.testing.assert_allclose(loc, UNEVEN - UNEVEN[0], atol=1e-3)  # relative to the first slice
    np.testing.assert_allclose(ipp_z, UNEVEN - UNEVEN[0], atol=1e-3)
    assert any("unevenly spaced (1–7 mm apart)" in n for n in notes), notes


def test_export_dicom_z_mm_checks():
    with pytest.raises(ValueError, match="3 z positions for 2 slices"):
        export.export_dicom("/nonexistent/never", np.zeros((2, 4, 4)), hu_window=(-100, 100), z_mm=[0, 1, 2])
    with pytest.raises(ValueError, match="ascending"):
        export.export_dicom("/nonexistent/never", np.zeros((2, 4, 4)), hu_window=(-100, 100), z_mm=[1, 1])


# ----------------------------------------------------------------------------- real data


def test_real_head_ct_uneven_gaps_cube_step(test_data, tmp_path):
    """GE head CT (gantry tilt, 1.08–7.0 mm gaps), all slices to a 16-deep cube: the
    planes are (z_last − z_first)/15 apart (about 9.6 mm), not the median-based 7.2 mm."""
    head = test_data("dicom/head-ct-gantry-tilt")
    depth = 16
    cfg = PreprocessConfig(crop=None, size=32, mode="3d", depth=depth)
    ws_path = _ingest(tmp_path, head, cfg)
    with Workspace.open(ws_path) as ws:
        pos = ws.source_geometry(0).positions
        by_hand = (pos[-1] - pos[0]) / (depth - 1)
        median_based = float(np.median(np.diff(pos))) * (len(pos) - 1) / (depth - 1)
        assert abs(by_hand - median_based) > 1.0  # the bug this guards against
        row = scale.scale_summary(ws.preprocess, scale.series_with_positions(ws))["series"][0]
        assert row["image_z_mm"] == pytest.approx(by_hand, abs=1e-4)
        sp = export.workspace_spacing(ws, 0)
        assert sp[0] == pytest.approx(by_hand)
        vol = ws.read_patient(0)[0][0]
    written = export.export_generated(tmp_path / "out", vol[None], preprocess=cfg, spacing=sp,
                                      formats=("dicom",))
    loc, ipp_z = _slice_z(written["dicom"])
    np.testing.assert_allclose(np.diff(loc), by_hand, atol=1e-3)
    np.testing.assert_allclose(np.diff(ipp_z), by_hand, atol=1e-3)
    # 2D: the stack is flagged uneven with its real smallest and largest gap
    ws2 = _ingest(tmp_path, head, PreprocessConfig(crop=None, size=32), "w2.h5")
    with Workspace.open(ws2) as ws:
        row = scale.scale_summary(ws.preprocess, scale.series_with_positions(ws))["series"][0]
    gaps = np.diff(pos)
    assert row["image_z_even"] is False
    assert row["image_z_range_mm"] == pytest.approx([gaps.min(), gaps.max()], abs=1e-3)
    assert row["image_z_mm"] == pytest.approx(float(np.median(gaps)), abs=1e-3)
