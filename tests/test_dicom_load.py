"""training.dicom.load_ct_series on hand-built series with known geometry."""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import RLELossless

from tests.dicom_factory import ramp_volume, write_ct_series, write_ct_slice
from training.dicom import Cancelled, DicomError, load_ct_series, scan


def _load(folder):
    result = scan(folder)
    assert len(result.series) == 1, result
    return load_ct_series(result.series[0])


def _expected_patient(spec, k, i, j):
    """Independent DICOM formula: ipp_k + j·dx·row_dir + i·dy·col_dir."""
    dy, dx = spec.pixel_spacing
    return spec.ipp[k] + j * dx * spec.row_dir + i * dy * spec.col_dir


def test_order_by_position_not_names_or_instance_numbers(tmp_path):
    stored = ramp_volume(6, 12, 16)
    names = [f"IMG{k}" for k in (5, 3, 0, 4, 1, 2)]  # no extension, unrelated to order
    spec = write_ct_series(tmp_path, stored, names=names, shuffle_names=True,
                           reverse_instance_numbers=True, slope=1.0, intercept=-1024.0)
    vol = _load(tmp_path)
    assert vol.hu.dtype == np.float32 and vol.hu.shape == (6, 12, 16)
    np.testing.assert_array_equal(vol.hu, spec.hu.astype(np.float32))
    g = vol.geometry
    assert np.all(np.diff(g.positions) > 0)
    np.testing.assert_allclose(g.ipp, spec.ipp, atol=1e-5)
    assert g.sop_uids == tuple(spec.sop_uids)
    assert g.pixel_spacing == pytest.approx((0.8, 0.6))
    assert g.spacing == pytest.approx((2.5, 0.8, 0.6))
    for kij in [(0, 0, 0), (3, 5, 7), (5, 11, 15)]:
        np.testing.assert_allclose(g.voxel_to_patient(kij)[0], _expected_patient(spec, *kij), atol=1e-4)
    assert vol.warnings == []


def test_oblique_orientation_sorted_along_normal(tmp_path):
    # rotated 30° about x then 20° about z: z of IPP does not follow the slice order
    a, b = np.radians(30), np.radians(20)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    r = rz @ rx
    iop = tuple(r[:, 0]) + tuple(r[:, 1])
    spec = write_ct_series(tmp_path, ramp_volume(5, 10, 12), iop=iop, slice_spacing=3.0,
                           shuffle_names=True, seed=3)
    vol = _load(tmp_path)
    np.testing.assert_array_equal(vol.hu, spec.hu.astype(np.float32))
    np.testing.assert_allclose(vol.geometry.normal, r[:, 2], atol=1e-6)
    assert vol.geometry.slice_spacing == pytest.approx(3.0, abs=1e-4)
    np.testing.assert_allclose(vol.geometry.voxel_to_patient((4, 9, 11))[0],
                               _expected_patient(spec, 4, 9, 11), atol=1e-4)


def test_coronal_series_not_sorted_by_z(tmp_path):
    # coronal: normal = row × col = (1, 0, 0) × (0, 0, -1) = (0, 1, 0); z is the same for all
    spec = write_ct_series(tmp_path, ramp_volume(4, 6, 8), iop=(1, 0, 0, 0, 0, -1),
                           slice_spacing=2.0, shuffle_names=True, seed=1)
    vol = _load(tmp_path)
    np.testing.assert_array_equal(vol.hu, spec.hu.astype(np.float32))
    np.testing.assert_allclose(vol.geometry.ipp[:, 1], [-20, -18, -16, -14], atol=1e-5)


def test_hu_rescale_per_slice_unsigned(tmp_path):
    stored = ramp_volume(3, 6, 8).astype(np.uint16) + 1000
    spec = write_ct_series(tmp_path, stored, slope=2.5, intercept=-1000.0)
    # one slice with its own rescale
    write_ct_slice(spec.paths[1], stored[1], ipp=tuple(spec.ipp[1]), pixel_spacing=(0.8, 0.6),
                   series_uid=spec.series_uid, slope=0.5, intercept=-10.0)
    vol = _load(tmp_path)
    expected = stored.astype(np.float64) * 2.5 - 1000.0
    expected[1] = stored[1] * 0.5 - 10.0
    np.testing.assert_allclose(vol.hu, expected, rtol=1e-6)


def test_metaless_implicit_file_loads(tmp_path):
    img = ramp_volume(1, 6, 8)[0]
    for k in range(3):
        write_ct_slice(tmp_path / f"bare{k}", img + k, ipp=(0, 0, 2.0 * k), preamble=False,
                       series_uid="1.2.3.4")
    vol = _load(tmp_path)
    np.testing.assert_array_equal(vol.hu[2], img + 2 - 1024.0)


def test_missing_slice_named(tmp_path):
    spec = write_ct_series(tmp_path, ramp_volume(5, 6, 8), positions=[0, 2.5, 5, 10, 12.5],
                           slice_thickness=2.5)
    vol = _load(tmp_path)
    (w,) = [w for w in vol.warnings if "missing" in w]
    assert "gap of 5.00 mm between slices at 35.00 and 40.00 mm" in w  # origin z = 30
    assert spec.paths[2].name in w and spec.paths[3].name in w
    assert "about 1 slice" in w
    assert any("uneven" in w for w in vol.warnings)
    assert vol.hu.shape[0] == 5


def test_uneven_spacing_without_gap(tmp_path):
    write_ct_series(tmp_path, ramp_volume(4, 6, 8), positions=[0, 2.0, 4.0, 5.0])
    vol = _load(tmp_path)
    assert any("uneven slice spacing: 1.00 to 2.00 mm" in w for w in vol.warnings)
    assert not any("missing" in w for w in vol.warnings)


def test_duplicate_positions(tmp_path):
    stored = ramp_volume(4, 6, 8)
    # identical pixels at one position: keep one, warn naming the file
    same = stored.copy()
    same[2] = same[1]
    spec = write_ct_series(tmp_path / "same", same, positions=[0, 2.5, 2.5, 5.0])
    vol = _load(tmp_path / "same")
    assert vol.hu.shape[0] == 3
    (w,) = [w for w in vol.warnings if "duplicate" in w]
    assert Path(w.split(":")[0]).name in {spec.paths[1].name, spec.paths[2].name}
    assert [Path(k.path).name for k in vol.skipped] == [Path(w.split(":")[0]).name]
    assert "same pixels" in vol.skipped[0].reason
    # different pixels, same quality: the first path is kept, the other listed (issue 11)
    spec = write_ct_series(tmp_path / "diff", stored, positions=[0, 2.5, 2.5, 5.0])
    vol = _load(tmp_path / "diff")
    assert vol.hu.shape[0] == 3
    np.testing.assert_array_equal(vol.hu[1], stored[1] - 1024.0)  # slice_001 < slice_002
    (k,) = vol.skipped
    assert k.path == str(spec.paths[2]) and str(spec.paths[1]) in k.reason
    diff = np.abs(stored[2].astype(int) - stored[1]).max()
    assert f"different pixels, up to {diff} HU apart" in k.reason and "same quality" in k.reason


def test_gantry_tilt_corrected_onto_orthogonal_grid(tmp_path):
    # slices stacked 20° off the normal in the y–z plane; 2 rows of drift per slice
    theta = np.radians(20)
    step = 2.0 / np.sin(theta)
    nz, ny, nx = 4, 24, 10
    origin = np.array([-5.0, -12.0, 40.0])
    y0 = origin[1] + 14.0  # a line along z at patient y = y0, x = origin.x + 3
    stored = np.zeros((nz, ny, nx), np.int16)
    ramp = np.zeros_like(stored)
    for k in range(nz):
        i = int(round(y0 - (origin[1] + k * step * np.sin(theta))))
        stored[k, i, 3] = 1000
        ramp[k] = 10 * np.arange(ny)[:, None]  # linear in the row index of each slice
    spec = write_ct_series(tmp_path / "line", stored, origin=tuple(origin),
                           pixel_spacing=(1.0, 1.0), slice_spacing=step,
                           stack_dir=(0, np.sin(theta), np.cos(theta)), intercept=0.0)
    vol = _load(tmp_path / "line")
    (w,) = [w for w in vol.warnings if "gantry tilt" in w]
    assert "20.0°" in w
    g = vol.geometry
    # stacked along the normal now, positions along it unchanged
    assert np.allclose(np.cross(g.ipp - g.ipp[0], g.normal), 0, atol=1e-6)
    np.testing.assert_allclose(g.positions, spec.ipp @ np.array([0, 0, 1.0]), atol=1e-5)
    for k in range(nz):
        i, j = np.unravel_index(np.argmax(vol.hu[k]), (ny, nx))
        assert (i, j) == (14, 3)
        np.testing.assert_allclose(g.voxel_to_patient((k, i, j))[0][:2], [origin[0] + 3, y0], atol=1e-5)
        np.testing.assert_allclose(g.patient_to_voxel(spec.ipp[k] + [3, y0 - spec.ipp[k][1], 0])[0],
                                   [k, 14, 3], atol=1e-5)
    # sub-pixel drift on a linear ramp: linear interpolation is exact inside the field
    write_ct_series(tmp_path / "ramp", ramp, origin=tuple(origin), pixel_spacing=(1.0, 1.0),
                    slice_spacing=0.7 / np.sin(theta), stack_dir=(0, np.sin(theta), np.cos(theta)),
                    intercept=0.0)
    vol = _load(tmp_path / "ramp")
    for k in range(nz):
        i = np.arange(ny)
        expected = 10 * (i - 0.7 * k)
        inside = (i - 0.7 * k >= 0) & (i - 0.7 * k <= ny - 1)
        np.testing.assert_allclose(vol.hu[k, inside, 0], expected[inside], atol=1e-3)
        assert np.all(vol.hu[k, ~inside, 0] == vol.hu.min())


def test_one_slice_series(tmp_path):
    write_ct_series(tmp_path, ramp_volume(1, 6, 8), slice_thickness=5.0)
    vol = _load(tmp_path)
    assert vol.hu.shape == (1, 6, 8) and vol.geometry.slice_spacing == 0.0
    assert any("one slice only" in w and "5 mm" in w for w in vol.warnings)


def test_slice_damaged_after_scan_left_out(tmp_path):
    spec = write_ct_series(tmp_path, ramp_volume(5, 6, 8), slice_thickness=2.5)
    ref = scan(tmp_path).series[0]
    data = spec.paths[2].read_bytes()
    spec.paths[2].write_bytes(data[:-20])
    vol = load_ct_series(ref)
    assert vol.hu.shape[0] == 4
    bad = [w for w in vol.warnings if spec.paths[2].name in w and "left out" in w]
    assert bad and ("pixel" in bad[0] or "truncated" in bad[0])
    assert any("missing" in w for w in vol.warnings)
    spec.paths[3].unlink()
    vol = load_ct_series(ref)
    assert any(spec.paths[3].name in w and "cannot read file" in w for w in vol.warnings)


def test_file_rewritten_after_scan_is_read_again(tmp_path):
    stored = ramp_volume(3, 6, 8)
    spec = write_ct_series(tmp_path, stored)
    ref = scan(tmp_path).series[0]
    write_ct_slice(spec.paths[0], stored[0] + 7, ipp=tuple(spec.ipp[0]), pixel_spacing=(0.8, 0.6),
                   series_uid=spec.series_uid, sop_uid=spec.sop_uids[0], instance_number=99,
                   extra={"StudyDescription": "a longer header shifts the pixel data"})
    vol = load_ct_series(ref)
    np.testing.assert_array_equal(vol.hu[0], stored[0] + 7 - 1024.0)


def test_minority_slices_in_a_reference_are_left_out(tmp_path):
    spec = write_ct_series(tmp_path / "a", ramp_volume(3, 6, 8))
    other = write_ct_series(tmp_path / "b", ramp_volume(1, 4, 8))
    ref = scan(tmp_path / "a").series[0]
    odd = scan(tmp_path / "b").series[0].slices[0]
    vol = load_ct_series(dataclasses.replace(ref, slices=ref.slices + (odd,)))
    assert vol.hu.shape == (3, 6, 8)
    assert any(other.paths[0].name in w and "size 4×8" in w for w in vol.warnings)
    assert vol.geometry.sop_uids == tuple(spec.sop_uids)


def test_rle_decodes_and_missing_decoder_names_plugin(tmp_path, monkeypatch):
    stored = ramp_volume(2, 6, 8)
    for k in range(2):
        write_ct_slice(tmp_path / f"rle{k}", stored[k], ipp=(0, 0, 3.0 * k), series_uid="1.2.3.9",
                       transfer_syntax=RLELossless)
    ref = scan(tmp_path).series[0]
    np.testing.assert_array_equal(load_ct_series(ref).hu, stored - 1024.0)
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})
    monkeypatch.setattr(get_decoder(RLELossless), "_decoder", None)
    with pytest.raises(DicomError) as err:
        load_ct_series(ref)
    assert Path(err.value.path).name.startswith("rle")
    assert "pip install pylibjpeg pylibjpeg-rle" in str(err.value)
    assert "RLE Lossless" in str(err.value)


def test_cancel(tmp_path):
    write_ct_series(tmp_path, ramp_volume(3, 6, 8))
    ref = scan(tmp_path).series[0]
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        load_ct_series(ref, cancel=stop)


def test_empty_reference_is_an_error(tmp_path):
    write_ct_series(tmp_path, ramp_volume(2, 6, 8))
    ref = scan(tmp_path).series[0]
    with pytest.raises(DicomError, match="no CT slices"):
        load_ct_series(dataclasses.replace(ref, slices=()))


def test_error_and_volume_pickle_and_worker_process(tmp_path):
    spec = write_ct_series(tmp_path, ramp_volume(3, 6, 8))
    ref = scan(tmp_path).series[0]
    err = pickle.loads(pickle.dumps(DicomError("/x/y.dcm", "why")))
    assert str(err) == "/x/y.dcm: why" and err.reason == "why"
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        vol = ex.submit(load_ct_series, ref).result(timeout=60)
    np.testing.assert_array_equal(vol.hu, spec.hu.astype(np.float32))


def _int16_reference(hu32: np.ndarray) -> np.ndarray:
    """What a workspace stores: float HU rounded to the nearest integer and clipped."""
    return np.clip(np.rint(hu32.astype(np.float64)), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("case", ["uint_intercept", "int16_signed", "fractional_slope",
                                  "negative_overflow"])
def test_int16_loading_equals_rounded_float(tmp_path, case):
    """load_ct_series(dtype=int16) takes integer shortcuts; each must equal the float
    HU rounded and clipped (stored × slope + intercept, per slice)."""
    rng = np.random.default_rng(3)
    if case == "uint_intercept":
        stored, slope, intercept = rng.integers(0, 4096, (3, 6, 8)).astype(np.uint16), 1.0, -1024.0
    elif case == "int16_signed":
        stored, slope, intercept = rng.integers(-2000, 3000, (3, 6, 8)).astype(np.int16), 1.0, 0.0
    elif case == "fractional_slope":
        stored, slope, intercept = rng.integers(0, 4096, (3, 6, 8)).astype(np.uint16), 0.37, -1000.5
    else:  # padding stored as −32768 pushed below the int16 range by the intercept: clipped
        stored, slope, intercept = rng.integers(0, 3000, (3, 6, 8)).astype(np.int16), 1.0, -1024.0
        stored[:, :2, :] = -32768
    write_ct_series(tmp_path, stored, slope=slope, intercept=intercept)
    ref = scan(tmp_path).series[0]
    as_float = load_ct_series(ref)
    as_int = load_ct_series(ref, dtype=np.int16)
    assert as_int.hu.dtype == np.int16
    expected = np.clip(np.rint(stored.astype(np.float64) * np.float32(slope) + intercept), -32768, 32767)
    np.testing.assert_array_equal(as_int.hu, expected.astype(np.int16))
    np.testing.assert_array_equal(as_int.hu, _int16_reference(as_float.hu))


def test_int16_loading_of_a_tilted_series_interpolates_in_float(tmp_path):
    theta = np.radians(20)
    ramp = np.repeat((10 * np.arange(24))[None, :, None], 10, axis=2).repeat(4, axis=0).astype(np.int16)
    write_ct_series(tmp_path, ramp, pixel_spacing=(1.0, 1.0), slice_spacing=0.7 / np.sin(theta),
                    stack_dir=(0, np.sin(theta), np.cos(theta)), intercept=0.0)
    ref = scan(tmp_path).series[0]
    as_float, as_int = load_ct_series(ref), load_ct_series(ref, dtype=np.int16)
    assert as_int.hu.dtype == np.int16 and any("gantry tilt" in w for w in as_int.warnings)
    np.testing.assert_array_equal(as_int.hu, _int16_reference(as_float.hu))
    np.testing.assert_allclose(as_int.geometry.ipp, as_float.geometry.ipp)


def test_on_file_hands_over_each_read_file_whole(tmp_path):
    spec = write_ct_series(tmp_path, ramp_volume(4, 6, 8))
    ref = scan(tmp_path).series[0]
    seen = {}
    vol = load_ct_series(ref, dtype=np.int16, on_file=lambda p, data: seen.__setitem__(str(p), bytes(data)))
    assert sorted(seen) == sorted(str(p) for p in spec.paths)
    for p in spec.paths:
        assert seen[str(p)] == Path(p).read_bytes()
    np.testing.assert_array_equal(vol.hu, spec.hu)
