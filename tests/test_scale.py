"""Physical scale: resampling in mm (in-plane and z), field of view in mm, the default of a
new workspace, and the warning for mixed spacings — against scipy and hand-built DICOM."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from tests.dicom_factory import write_ct_series
from training.config import ConfigError, PreprocessConfig
from training.store import resample as rs
from training.store import scale
from training.store.ingest import derive, ingest
from training.store.preprocess import preprocess_volume
from training.store.workspace import Workspace, preprocess_hash

# ----------------------------------------------------------------------------- config


def test_pixel_config_json_and_hash_unchanged_and_mm_round_trips():
    old = PreprocessConfig(crop=64, size=32)
    d = json.loads(old.to_json())
    assert not {"spacing", "fov", "z_spacing"} & set(d)  # serialises exactly as before
    assert PreprocessConfig.from_json(old.to_json()) == old
    # a workspace written before the mm settings existed: its JSON still loads, same hash
    legacy = ('{"crop": 128, "depth": null, "hu_max": 700.0, "hu_min": -800.0, "mode": "2d", '
              '"rois": [], "size": null, "slice_center": null, "slice_count": 10, "slice_start": 0, '
              '"slice_stop": null, "slices": "all", "window_name": "thorax"}')
    cfg = PreprocessConfig.from_json(legacy)
    assert cfg.spacing is None and cfg.fov is None and cfg.z_spacing is None and cfg.crop == 128
    assert not cfg.physical and cfg.to_json() == legacy
    assert preprocess_hash(cfg) == preprocess_hash(PreprocessConfig.from_json(legacy))
    mm = PreprocessConfig(crop=None, spacing=0.8, fov=200.0, z_spacing=2.5, mode="3d")
    assert PreprocessConfig.from_json(mm.to_json()) == mm and mm.physical


def test_new_workspace_default_and_validation():
    new = PreprocessConfig.new_workspace()
    assert (new.spacing, new.fov, new.crop, new.z_spacing) == (1.0, 128.0, None, None)
    assert PreprocessConfig().spacing is None  # the dataclass default keeps old meaning
    with pytest.raises(ConfigError, match="crop .* or fov"):
        PreprocessConfig(crop=64).replace(fov=64.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="spacing"):
            PreprocessConfig().replace(spacing=bad)
    with pytest.raises(ConfigError, match="under 4 pixels"):
        PreprocessConfig.from_dict({"crop": None, "spacing": 2.0, "fov": 6.0})
    # an int window limit is the same setting as its float (same JSON, same hash)
    assert PreprocessConfig(hu_min=-1000).to_json() == PreprocessConfig(hu_min=-1000.0).to_json()
    with pytest.raises(ConfigError):
        PreprocessConfig.from_dict({"spacing": "1mm"})


# ----------------------------------------------------------------------------- 1D weights


def test_upsampling_is_linear_interpolation_like_scipy():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 11, 9)).astype(np.float32)
    src_y, src_x = np.arange(11) * 1.2, np.arange(9) * 0.9
    out_y, out_x = np.linspace(-0.5, 12.4, 31), np.linspace(0.1, 7.0, 17)
    wy, wx = rs.axis_weights(src_y, out_y, 0.43), rs.axis_weights(src_x, out_x, 0.43)
    got = rs.resample(v, {1: wy, 2: wx}, fill=0.0)
    # independent: map_coordinates at fractional indices, edge values held within the
    # edge pixel (mode="nearest")
    yy, xx = np.meshgrid(out_y / 1.2, out_x / 0.9, indexing="ij")
    ref = np.stack([ndimage.map_coordinates(s, [yy, xx], order=1, mode="nearest") for s in v])
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_outside_the_slice_is_fill():
    v = np.zeros((1, 4, 4), np.float32)
    src = np.arange(4) * 1.0
    out = np.array([-3.0, -0.5, 0.0, 3.0, 3.5, 5.0])  # cells end at -0.5 and 3.5
    w = rs.axis_weights(src, out, 1.0)
    got = rs.resample(v, {2: w}, fill=-1000.0)[0, 0]
    np.testing.assert_allclose(got, [-1000, 0, 0, 0, 0, -1000])


def test_downsampling_is_the_area_mean():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(2, 12, 18)).astype(np.float32)
    ds = 0.5
    grid = scale.InplaneGrid((1.0, 1.0), (6, 9))  # 0.5 mm → 1 mm: exactly 2 × 2 blocks
    (ys, yo), (xs, xo) = scale.inplane_positions(grid, (ds, ds), v.shape[1:])
    got = rs.resample(v, {1: rs.axis_weights(ys, yo, 1.0), 2: rs.axis_weights(xs, xo, 1.0)})
    ref = v.reshape(2, 6, 2, 9, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # a non-integer factor: the overlap weights equal the area of each source pixel inside
    # the output pixel, computed here by supersampling each source pixel 20×
    src = np.arange(10) * 0.4
    out = 1.8 + (np.arange(4) - 1.5) * 1.0
    w = rs.axis_weights(src, out, 1.0)
    fine = np.repeat(np.arange(10), 20)  # source index of each 0.02 mm sub-sample
    fine_pos = (np.arange(200) + 0.5) * 0.02 - 0.2
    for o in range(4):
        inside = np.abs(fine_pos - out[o]) < 0.5
        area = np.bincount(fine[inside], minlength=10) * 0.02
        dense = np.zeros(10)
        np.add.at(dense, w.index[o], w.weight[o])
        np.testing.assert_allclose(dense, area, atol=1e-6)


def test_labels_by_area_fraction_ties_to_the_roi():
    # one ROI pixel in a 2 × 2 block: 25 % → complement; two: 50 % → ROI; priority on ties
    lab = np.zeros((1, 2, 8), np.uint8)
    lab[0, 0, 0] = 1
    lab[0, :, 2] = 1
    lab[0, :, 4] = 2
    lab[0, :, 5] = 1
    lab[0, 0, 6:8] = 2
    lab[0, 1, 6] = 1
    grid = scale.InplaneGrid((1.0, 1.0), (1, 4))
    (ys, yo), (xs, xo) = scale.inplane_positions(grid, (0.5, 0.5), (2, 8))
    got = rs.resample_labels(lab, {1: rs.axis_weights(ys, yo, 1.0), 2: rs.axis_weights(xs, xo, 1.0)})
    assert got.tolist() == [[[0, 1, 1, 2]]]


def test_labels_against_thresholded_map_coordinates():
    yy, xx = np.mgrid[:40, :40]
    lab = ((yy - 19.3) ** 2 + (xx - 21.1) ** 2 < 11.5 ** 2).astype(np.uint8)[None]
    out = np.linspace(0, 39, 97)  # upsampling 1 mm → 0.4 mm
    w = rs.axis_weights(np.arange(40.0), out, 0.4)
    got = rs.resample_labels(lab, {1: w, 2: w})[0]
    oy, ox = np.meshgrid(out, out, indexing="ij")
    ref = ndimage.map_coordinates(lab[0].astype(float), [oy, ox], order=1, mode="nearest") >= 0.5 - 1e-6
    np.testing.assert_array_equal(got.astype(bool), ref)


# ----------------------------------------------------------------------------- DICOM


def _disc_series(folder, ds: float, radius: float, fov: float = 100.0, nz: int = 3):
    n = int(round(fov / ds))
    c = (np.arange(n) - (n - 1) / 2) * ds
    inside = c[:, None] ** 2 + c[None, :] ** 2 <= radius ** 2
    stored = np.where(inside, 1024, 24).astype(np.int16)  # 0 HU disc, −1000 HU outside
    origin = (-(n - 1) / 2 * ds, -(n - 1) / 2 * ds, 0.0)
    return write_ct_series(folder, np.repeat(stored[None], nz, 0), origin=origin,
                           pixel_spacing=(ds, ds), slice_spacing=2.0,
                           patient_id=f"P{ds}", series_uid=None)


def _axial_geometry(nz: int, n: int, ds: float):
    from training.dicom.geometry import VolumeGeometry

    ipp = np.array([[0.0, 0.0, 3.0 * k] for k in range(nz)])
    return VolumeGeometry(ipp=ipp, row_dir=np.array([1.0, 0, 0]), col_dir=np.array([0, 1.0, 0]),
                          pixel_spacing=(ds, ds), shape=(nz, n, n))


def _diameters(row: np.ndarray) -> int:
    return int((row >= 0.25).sum())  # window [-1000, 1000]: 0.25 is −500 HU, half-way


def test_same_disc_at_0p5_and_1mm_gives_the_same_diameter_after_resampling(tmp_path):
    r = 15.0
    _disc_series(tmp_path / "fine", 0.5, r)
    _disc_series(tmp_path / "coarse", 1.0, r)
    cfg = PreprocessConfig(crop=None, spacing=1.0, fov=64.0, window_name="custom", hu_min=-1000, hu_max=1000)
    ws = tmp_path / "w.h5"
    rep = ingest([tmp_path / "fine", tmp_path / "coarse"], ws, cfg, workers=1)
    assert len(rep.added) == 2, rep.skipped
    with Workspace.open(ws) as w:
        assert w.image_shape == (64, 64)
        diam, areas = [], []
        for i, p in enumerate(w.patients):
            img = w.read_patient(i)[0][1]
            diam.append((_diameters(img[31]), _diameters(img[:, 31]), p.spacing[1]))
            areas.append(float((img >= 0.25).sum()))
    assert {d[2] for d in diam} == {0.5, 1.0}
    # 2r = 30 mm at 1 mm pixels: 30 pixels across both axes for both patients
    assert all(d[0] == d[1] == 30 for d in diam), diam
    assert all(abs(a - np.pi * r * r) < 0.03 * np.pi * r * r for a in areas), areas
    # without resampling (pixels) the same disc spans 60 and 30 pixels
    pix = PreprocessConfig(crop=64, window_name="custom", hu_min=-1000, hu_max=1000)
    rep = ingest([tmp_path / "fine", tmp_path / "coarse"], ws, pix, workers=1)
    with Workspace.open(ws) as w:
        got = sorted(_diameters(w.read_patient(i)[0][1][31]) for i in range(2))
        assert got == [30, 60]
        warn = scale.scale_warnings(w.preprocess, w.patients)
        assert warn and "mixes pixel spacings (0.5–1 mm)" in warn[0]


def test_disc_masks_resample_consistently():
    # the same disc as masks on 0.5 mm and 1 mm grids → equal masks at 1 mm (area rule)
    out = []
    for ds in (0.5, 1.0):
        n = int(round(80 / ds))
        c = (np.arange(n) - (n - 1) / 2) * ds
        disc = c[:, None] ** 2 + c[None, :] ** 2 <= 12.0 ** 2
        hu = np.where(disc, 40, -1000).astype(np.int16)[None].repeat(2, 0)
        masks = {"GTV": disc[None].repeat(2, 0)}
        cfg = PreprocessConfig(crop=None, spacing=1.0, fov=48.0, rois=("GTV",))
        geo = _axial_geometry(2, n, ds)
        images, labels, missing = derive(hu, masks, geo, cfg)  # the ingest's own derivation
        assert not missing and images.shape == labels.shape == (2, 48, 48)
        out.append(labels[0])
    assert out[0].shape == (48, 48)
    assert abs(int(out[0].sum()) - np.pi * 144) < 0.05 * np.pi * 144
    assert np.sum(out[0] != out[1]) <= 0.02 * out[0].sum()  # edge pixels at most


def test_uneven_slice_gaps_resampled_to_uniform_z_from_real_positions(tmp_path):
    # HU = 10 × z (mm) on each slice: linear interpolation along z is exact, so every
    # output slice must read 10 × its position on the uniform grid
    pos = np.array([0.0, 1.0, 2.0, 5.0, 12.0, 13.0, 20.0])
    stored = (np.round(10 * pos) + 1024).astype(np.int16)[:, None, None] * np.ones((1, 8, 8), np.int16)
    write_ct_series(tmp_path / "s", stored, origin=(0.0, 0.0, 0.0), positions=list(pos),
                    pixel_spacing=(1.0, 1.0), slice_spacing=None)
    cfg = PreprocessConfig(crop=None, z_spacing=1.0, window_name="custom", hu_min=-100.0, hu_max=300.0)
    ws = tmp_path / "w.h5"
    rep = ingest([tmp_path / "s"], ws, cfg, workers=1)
    assert rep.added, rep.skipped
    with Workspace.open(ws) as w:
        img = w.read_patient(0)[0]
        warnings = " ".join(w.patients[0].warnings)
    assert img.shape[0] == 21  # 0 … 20 mm at 1 mm
    hu = img[:, 4, 4] * 400 - 100
    np.testing.assert_allclose(hu, 10 * np.arange(21.0), atol=0.05)
    assert "uneven slice spacing" in warnings  # and the series' own spacing is not one dz
    # 3D: a 16 × 1 mm block centred on the series (10 mm): z from 2.5 to 17.5 mm
    cfg3 = cfg.replace(mode="3d", crop=None, size=None, depth=16)
    img3, _ = preprocess_volume(stored.astype(np.float32) - 1024, None, pos, cfg3, (1.0, 1.0))
    assert img3.shape == (1, 16, 8, 8)
    np.testing.assert_allclose(img3[0, :, 3, 3] * 400 - 100, 10 * (10 + np.arange(16) - 7.5), atol=0.05)


def test_z_labels_follow_a_slab_at_its_real_position():
    pos = np.array([0.0, 2.0, 3.0, 9.0, 10.0, 11.0, 18.0])
    lab = np.zeros((7, 4, 4), np.uint8)
    lab[3:6] = 1  # ROI on the slices at 9, 10, 11 mm
    hu = np.zeros((7, 4, 4), np.int16)
    cfg = PreprocessConfig(crop=None, z_spacing=1.0, rois=("A",))
    _, got = preprocess_volume(hu, lab, pos, cfg, (1.0, 1.0))
    z = scale.z_grid(pos, 1.0)
    inside = np.interp(z, pos, lab[:, 0, 0].astype(float)) >= 0.5
    np.testing.assert_array_equal(got[:, 0, 0].astype(bool), inside)
    assert z[got[:, 0, 0] == 1].min() == 6.0 and z[got[:, 0, 0] == 1].max() == 14.0


def test_fov_with_size_and_output_spacing_summary():
    cfg = PreprocessConfig(crop=None, fov=250.0, size=125)
    g = scale.inplane_grid(cfg, (0.7, 0.7), (512, 512))
    assert g.spacing == (2.0, 2.0) and g.shape == (125, 125)
    s = scale.output_spacing(cfg, (3.0, 0.7, 0.7), (100, 512, 512))
    assert s["pixels"] == (125, 125) and s["fov_mm"] == (250.0, 250.0)
    pix = scale.output_spacing(PreprocessConfig(crop=128), (3.0, 0.977, 0.977), (100, 512, 512))
    assert pix["fov_mm"] == pytest.approx((125.056, 125.056))
    assert scale.source_fov((3.0, 0.977, 0.977), (100, 512, 512)) == pytest.approx((500.224, 500.224))


# ----------------------------------------------------------------------------- CLI


def test_cli_ingest_options_and_info_fov_and_warning(tmp_path, capsys):
    from training.cli import main

    _disc_series(tmp_path / "d" / "fine", 0.5, 10.0, fov=60.0)
    _disc_series(tmp_path / "d" / "coarse", 1.0, 10.0, fov=60.0)
    ws = tmp_path / "w.h5"
    # pixels: mixed spacings without resampling → info warns and shows FOV in mm
    assert main(["ingest", str(tmp_path / "d"), "-w", str(ws), "--crop", "32", "--spacing", "none",
                 "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["info", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "FOV mm" in out and "60×60" in out  # both series cover 60 mm
    assert "16×16" in out and "32×32" in out  # a 32 px crop: 16 mm of one, 32 mm of the other
    assert "warning: the workspace mixes pixel spacings (0.5–1 mm)" in out
    # mm: --spacing/--fov replace the crop; the warning goes
    assert main(["ingest", str(tmp_path / "d"), "-w", str(ws), "--spacing", "1", "--fov", "40",
                 "--z-spacing", "1", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["info", str(ws), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    pp = d["preprocess"]
    assert (pp["spacing"], pp["fov"], pp["z_spacing"], pp["crop"]) == (1.0, 40.0, 1.0, None)
    assert d["image_shape"] == [40, 40] and d["scale"]["warnings"] == []
    assert [r["image_fov_mm"] for r in d["scale"]["series"]] == [[40.0, 40.0]] * 2
    assert sorted(r["fov_mm"][0] for r in d["scale"]["series"]) == [60.0, 60.0]
    assert all(p["n_images"] == 5 for p in d["series"])  # 0…4 mm at 1 mm (slices 2 mm apart)
    # a new workspace without options gets the physicist's default: 1 mm, 128 mm
    ws2 = tmp_path / "w2.h5"
    assert main(["ingest", str(tmp_path / "d"), "-w", str(ws2), "--workers", "1"]) == 0
    with Workspace.open(ws2) as w:
        assert w.preprocess == PreprocessConfig.new_workspace() and w.image_shape == (128, 128)


# ----------------------------------------------------------------------------- real data


def test_real_mixed_spacings_and_uneven_slices_resampled(test_data, tmp_path):
    """LUNG1-001 (0.977 mm pixels, 3 mm slices) and the GE head CT (0.488 mm pixels,
    uneven 1.08–7.0 mm slices): one physical scale, z from the real positions."""
    lung = test_data("dicom/lung1-001")
    head = test_data("dicom/head-ct-gantry-tilt")
    cfg = PreprocessConfig.new_workspace(z_spacing=2.0, fov=200.0, rois=("Lung-Left",))
    ws = tmp_path / "w.h5"
    rep = ingest([lung, head], ws, cfg, workers=1)
    assert len(rep.added) == 2, rep.skipped
    with Workspace.open(ws) as w:
        assert w.image_shape == (200, 200)
        summary = scale.scale_summary(w.preprocess, w.patients)
        assert summary["warnings"] == []
        assert [r["image_pixel_mm"] for r in summary["series"]] == [[1.0, 1.0]] * 2
        for i, p in enumerate(w.patients):
            hu, masks, geo = w.read_source(i)
            grid = scale.z_grid(geo.positions, 2.0)
            assert p.n_images == len(grid)  # every 2 mm of the series, uneven or not
            images, labels = w.read_patient(i)
            # the middle output slice against an independent resampling of the source:
            # linear along z at its position, then the area mean of 1 mm in-plane cells
            k = len(grid) // 2
            pos = geo.positions
            j = np.searchsorted(pos, grid[k]) - 1
            t = (grid[k] - pos[j]) / (pos[j + 1] - pos[j])
            sl = (1 - t) * hu[j].astype(np.float64) + t * hu[j + 1]
            g = scale.inplane_grid(w.preprocess, geo.pixel_spacing, sl.shape)
            (ys, yo), (xs, xo) = scale.inplane_positions(g, geo.pixel_spacing, sl.shape)
            ref = _area_resample(sl, ys, yo, xs, xo, -1000.0)
            ref = np.clip((ref + 800) / 1500, 0, 1)
            np.testing.assert_allclose(images[k], ref, atol=2e-3)
            if "Lung-Left" in p.rois:
                # the source voxels whose centres lie inside the output block (200 mm
                # square, the z grid's extent): the lung reaches past the field of view
                iny = (ys >= yo[0] - 0.5) & (ys <= yo[-1] + 0.5)
                inx = (xs >= xo[0] - 0.5) & (xs <= xo[-1] + 0.5)
                inz = (pos >= grid[0] - 1.0) & (pos <= grid[-1] + 1.0)
                lm = masks["Lung-Left"][inz][:, iny][:, :, inx]
                vol_src = lm.sum() * geo.pixel_spacing[0] * geo.pixel_spacing[1] * 3.0
                vol_out = (labels == 1).sum() * 1.0 * 1.0 * 2.0
                assert abs(vol_out - vol_src) < 0.02 * vol_src  # the lung keeps its volume


def _area_resample(sl, ys, yo, xs, xo, fill):
    """Independent in-plane resampling. Output pixels no larger than a source pixel:
    bilinear by map_coordinates; larger: per axis a dense matrix of the share of each
    output cell falling in each source pixel, measured by 2000 sub-samples per cell, then
    out = Wy · slice · Wxᵀ with the uncovered share filled."""
    dy, dx = ys[1] - ys[0], xs[1] - xs[0]
    sy, sx = yo[1] - yo[0], xo[1] - xo[0]
    if sy <= dy and sx <= dx:
        yy, xx = np.meshgrid(yo / dy, xo / dx, indexing="ij")
        inside = (yy >= -0.5) & (yy <= len(ys) - 0.5) & (xx >= -0.5) & (xx <= len(xs) - 0.5)
        v = ndimage.map_coordinates(sl, [yy, xx], order=1, mode="nearest")
        return np.where(inside, v, fill)

    def shares(src_n, d, out, s, f=2000):
        w = np.zeros((len(out), src_n))
        offs = (np.arange(f) + 0.5) / f * s - s / 2
        for o, c in enumerate(out):
            idx = np.floor((c + offs) / d + 0.5).astype(int)
            ok = (idx >= 0) & (idx < src_n)
            np.add.at(w[o], idx[ok], 1.0 / f)
        return w

    wy, wx = shares(len(ys), dy, yo, sy), shares(len(xs), dx, xo, sx)
    inside = wy.sum(1)[:, None] * wx.sum(1)[None, :]
    return wy @ sl @ wx.T + fill * (1 - inside)


# ----------------------------------------------------------------------------- cousins


def test_non_square_pixels_become_square():
    # 0.5 mm rows × 1.0 mm columns (a rare but legal PixelSpacing): the disc stays round
    dy, dx = 0.5, 1.0
    ny, nx = 160, 80
    y = (np.arange(ny) - (ny - 1) / 2) * dy
    x = (np.arange(nx) - (nx - 1) / 2) * dx
    disc = (y[:, None] ** 2 + x[None, :] ** 2 <= 15.0 ** 2)
    hu = np.where(disc, 0, -1000).astype(np.int16)[None]
    cfg = PreprocessConfig(crop=None, spacing=1.0, fov=60.0, rois=("D",), window_name="custom",
                           hu_min=-1000.0, hu_max=1000.0)
    img, lab = preprocess_volume(hu, disc[None].astype(np.uint8), np.array([0.0]), cfg, (dy, dx))
    assert img.shape == lab.shape == (1, 60, 60)
    assert _diameters(img[0, 29]) == _diameters(img[0, :, 29]) == 30
    assert lab[0, 29].sum() == lab[0, :, 29].sum() == 30


def test_one_slice_series_with_z_spacing_and_3d_labels():
    hu = np.zeros((1, 8, 8), np.int16)
    lab = np.ones((1, 8, 8), np.uint8)
    img, got = preprocess_volume(hu, lab, np.array([5.0]), PreprocessConfig(crop=None, z_spacing=2.0,
                                 rois=("A",)), (1.0, 1.0))
    assert img.shape == got.shape == (1, 8, 8) and got.all()
    # 3D: 8 samples 2 mm apart around the one slice; only the sample on it (cell ±1 mm) is ROI
    cfg3 = PreprocessConfig(crop=None, z_spacing=2.0, mode="3d", depth=8, rois=("A",))
    img3, lab3 = preprocess_volume(hu, lab, np.array([5.0]), cfg3, (1.0, 1.0))
    assert img3.shape == lab3.shape == (1, 8, 8, 8)
    z = 5.0 + (np.arange(8) - 3.5) * 2.0  # 2, 4, 6, ...: 4 and 6 lie 1 mm from the slice
    inside = np.abs(z - 5.0) <= 1.0
    assert lab3[0, :, 0, 0].tolist() == inside.astype(int).tolist()
    np.testing.assert_allclose(img3[0, ~inside, 0, 0], 0.0)  # outside the series: air


def test_export_spacing_follows_the_mm_settings():
    from training.latent.export import output_spacing

    src = (3.0, 0.488, 0.488)
    assert output_spacing(PreprocessConfig.new_workspace(), src, (40, 512, 512)) == (3.0, 1.0, 1.0)
    assert output_spacing(PreprocessConfig.new_workspace(z_spacing=2.0, mode="3d"), src,
                          (40, 512, 512), (128, 128, 128)) == (2.0, 1.0, 1.0)
    got = output_spacing(PreprocessConfig(crop=None, fov=250.0, size=125), src, (40, 512, 512))
    assert got == pytest.approx((3.0, 2.0, 2.0))
    # pixels, unchanged: a 128 px crop keeps the source pixels
    assert output_spacing(PreprocessConfig(crop=128), src, (40, 512, 512)) == src


def test_crop_none_or_fov_none_means_the_whole_field():
    """--crop none replaces the default 128 mm field of view too (it once kept it, so a
    user asking for no crop got the centre 128 mm)."""
    import argparse

    from training.commands.ingest import add_preprocess_args, preprocess_from_args

    p = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    add_preprocess_args(p)
    base = PreprocessConfig.new_workspace()
    assert base.fov == 128.0 and base.crop is None

    def cfg(*argv):
        return preprocess_from_args(p.parse_args(list(argv)), base)

    assert (cfg("--crop", "none").crop, cfg("--crop", "none").fov) == (None, None)
    assert (cfg("--fov", "none").crop, cfg("--fov", "none").fov) == (None, None)
    assert (cfg("--crop", "96").crop, cfg("--crop", "96").fov) == (96, None)
    assert (cfg("--fov", "200").crop, cfg("--fov", "200").fov) == (None, 200.0)
    assert cfg("--size", "64").fov == 128.0  # neither given: the default stays
    assert cfg("--crop", "none", "--fov", "200").fov == 200.0
