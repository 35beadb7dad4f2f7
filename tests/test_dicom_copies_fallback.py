"""Copies of a slice fall back on each other: a slice is lost only when no copy of it
decodes, whether the copies share a SOPInstanceUID (scan keeps one and hands the others
to the loader as SeriesRef.copies) or not (the loader groups them by position). The
reasons listed say what happened: which copy was used, which was left out and why."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_encoder
from pydicom.uid import JPEGLSNearLossless, RLELossless

import training.dicom.load as load_mod
from training.config import PreprocessConfig
from training.dicom import load_ct_series, scan
from tests.dicom_factory import ramp_volume, write_ct_series, write_ct_slice

SPACING = (0.8, 0.6)
STEP = 2.5  # mm between slices


def _series(folder: Path, n: int = 3, **kw):
    """A native series of n slices at z = 0, 2.5, 5, … (stored values ramp_volume)."""
    px = ramp_volume(n, 8, 10)
    spec = write_ct_series(folder, px, origin=(0, 0, 0), pixel_spacing=SPACING, **kw)
    return px, spec


def _slice(path: Path, pixels, spec, k: int, *, same_uid: bool = True, **kw) -> Path:
    """A file for slice k of spec (its position), with its SOPInstanceUID or a new one."""
    return write_ct_slice(path, pixels, ipp=(0, 0, STEP * k), pixel_spacing=SPACING,
                          series_uid=spec.series_uid, sop_uid=spec.sop_uids[k] if same_uid else None,
                          **kw)


def _compressed(path: Path, ts, **kw) -> Path:
    """path rewritten with transfer syntax ts, its SOPInstanceUID kept."""
    ds = pydicom.dcmread(path)
    ds.compress(ts, generate_instance_uid=False, **kw)
    ds.save_as(path, enforce_file_format=True)
    return path


def _truncated_rle(path: Path, pixels, spec, k: int, **kw) -> Path:
    """A lossless (RLE) file for slice k whose pixel data is cut short: its header reads,
    its pixels do not (the scan cannot tell; the loader can)."""
    p = _compressed(_slice(path, pixels, spec, k, **kw), RLELossless)
    data = p.read_bytes()
    p.write_bytes(data[:-40])
    return p


def _undecodable_rle(path: Path, pixels, spec, k: int, **kw) -> Path:
    """A lossless (RLE) file whose RLE segment table points past its data."""
    p = _compressed(_slice(path, pixels, spec, k, **kw), RLELossless)
    data = bytearray(p.read_bytes())
    item = data.rfind(b"\xfe\xff\x00\xe0")  # the last fragment: its RLE header follows
    data[item + 12:item + 16] = (10**6).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    return p


def _lossy(path: Path, pixels, spec, k: int, **kw) -> Path:
    """A native copy flagged lossy (LossyImageCompression 01): decodes, ranks below lossless."""
    return _slice(path, pixels, spec, k, extra={"LossyImageCompression": "01"}, **kw)


def _hu(stored) -> np.ndarray:
    return np.asarray(stored, dtype=np.float32) - 1024.0


def _gap_warnings(vol) -> list[str]:
    return [w for w in vol.warnings if "missing slices" in w]


@pytest.fixture
def reads(monkeypatch):
    """The files the loader tries to read, in order."""
    seen: list[str] = []
    real = load_mod._read_one

    def spy(s, target, on_file=None):
        seen.append(Path(s.path).name)
        return real(s, target, on_file)

    monkeypatch.setattr(load_mod, "_read_one", spy)
    return seen


# ------------------------------------------------------------------ one SOPInstanceUID


def test_same_uid_lossless_fine_lossy_copy_is_never_read(tmp_path, reads):
    """The normal case: the lossless file is used, the lossy copy is listed by the scan
    only (naming the kept file) and never opened by the loader."""
    px, spec = _series(tmp_path)
    lossy = _lossy(tmp_path / "a_lossy.dcm", px[1] + 2, spec, 1)
    result = scan(tmp_path)
    (ref,) = result.series
    assert sorted(ref.files) == sorted(map(str, spec.paths)) and len(ref) == 3
    assert [c.path for c in ref.copies] == [str(lossy)]
    (sk,) = result.skipped
    assert sk.path == str(lossy) and str(spec.paths[1]) in sk.reason
    assert "same SOPInstanceUID" in sk.reason and "lossless copy is kept" in sk.reason
    vol = load_ct_series(ref)
    assert vol.skipped == [] and _gap_warnings(vol) == []
    assert vol.sources == tuple(map(str, spec.paths))
    np.testing.assert_array_equal(vol.hu, _hu(px))
    assert "a_lossy.dcm" not in reads and len(reads) == 3


def test_same_uid_damaged_lossless_falls_back_to_the_lossy_copy(tmp_path):
    """Lossless copy with truncated pixel data + a decodable lossy copy of the same
    instance: the slice comes from the lossy copy, the damaged file is listed saying so."""
    px, spec = _series(tmp_path)
    damaged = _truncated_rle(spec.paths[1], px[1], spec, 1)
    lossy = _lossy(tmp_path / "z_lossy.dcm", px[1] + 2, spec, 1)
    result = scan(tmp_path)
    (ref,) = result.series
    assert str(damaged) in ref.files and [c.path for c in ref.copies] == [str(lossy)]
    vol = load_ct_series(ref)
    assert vol.hu.shape == (3, 8, 10) and _gap_warnings(vol) == []
    np.testing.assert_array_equal(vol.hu[1], _hu(px[1] + 2))
    assert vol.sources[1] == str(lossy)
    assert vol.geometry.sop_uids[1] == spec.sop_uids[1]
    (sk,) = vol.skipped
    assert sk.path == str(damaged)
    assert "the copy with the same SOPInstanceUID" in sk.reason and str(lossy) in sk.reason
    assert sk.reason.endswith("is used instead")


def test_same_uid_damaged_lossless_listed_first_lossy_copy_sorts_first(tmp_path):
    """The lossy copy's path sorts first and the damaged lossless one is the series' own
    file: still the lossless one is tried first, the lossy one used when it fails."""
    px, spec = _series(tmp_path, names=["s0.dcm", "s1.dcm", "s2.dcm"])
    damaged = _undecodable_rle(spec.paths[1], px[1], spec, 1)
    lossy = _lossy(tmp_path / "a_lossy.dcm", px[1] + 7, spec, 1)
    (ref,) = scan(tmp_path).series
    vol = load_ct_series(ref)
    np.testing.assert_array_equal(vol.hu[1], _hu(px[1] + 7))
    (sk,) = vol.skipped
    assert sk.path == str(damaged) and str(lossy) in sk.reason and "is used instead" in sk.reason


def test_same_uid_both_damaged_one_gap_both_listed(tmp_path):
    px, spec = _series(tmp_path, n=5)
    damaged = _truncated_rle(spec.paths[1], px[1], spec, 1)
    lossy = _undecodable_rle(tmp_path / "z_lossy.dcm", px[1], spec, 1,
                             extra={"LossyImageCompression": "01"})
    result = scan(tmp_path)
    (ref,) = result.series
    assert [c.path for c in ref.copies] == [str(lossy)]
    vol = load_ct_series(ref)
    assert vol.hu.shape == (4, 8, 10)
    np.testing.assert_array_equal(vol.hu, _hu(px[[0, 2, 3, 4]]))
    (gap,) = _gap_warnings(vol)
    assert "gap of 5.00 mm between slices at 0.00 and 5.00 mm" in gap
    reasons = {Path(s.path).name: s.reason for s in vol.skipped}
    assert set(reasons) == {damaged.name, lossy.name}
    for why in reasons.values():
        assert "none of the 2 copies of this slice could be decoded" in why
        assert "gap between its slices at 0.00 and 5.00 mm" in why
        assert "is kept" not in why and "used instead" not in why


def test_three_copies_damaged_one_first(tmp_path, reads):
    """Three files of one instance, the damaged lossless one first in name order: the
    other lossless copy is used; the lossy one is listed against the file actually used
    (not against the damaged one the scan named)."""
    px, spec = _series(tmp_path, names=["s0.dcm", "s1.dcm", "s2.dcm"])
    for p in tmp_path.glob("s1.dcm"):
        p.unlink()
    damaged = _undecodable_rle(tmp_path / "a_damaged.dcm", px[1], spec, 1)
    good = _slice(tmp_path / "b_copy.dcm", px[1] + 1, spec, 1)
    lossy = _lossy(tmp_path / "c_lossy.dcm", px[1] + 2, spec, 1)
    result = scan(tmp_path)
    (ref,) = result.series
    assert str(damaged) in ref.files
    assert sorted(c.path for c in ref.copies) == [str(good), str(lossy)]
    assert {Path(s.path).name for s in result.skipped} == {"b_copy.dcm", "c_lossy.dcm"}
    vol = load_ct_series(ref)
    assert vol.hu.shape == (3, 8, 10) and _gap_warnings(vol) == []
    np.testing.assert_array_equal(vol.hu[1], _hu(px[1] + 1))
    assert vol.sources[1] == str(good)
    reasons = {Path(s.path).name: s.reason for s in vol.skipped}
    assert set(reasons) == {"a_damaged.dcm", "c_lossy.dcm"}
    assert "the copy with the same SOPInstanceUID" in reasons["a_damaged.dcm"]
    assert str(good) in reasons["a_damaged.dcm"] and "is used instead" in reasons["a_damaged.dcm"]
    assert f"as {good}, which is kept" in reasons["c_lossy.dcm"]
    assert "lossy compressed" in reasons["c_lossy.dcm"]
    assert "different pixels, up to 1 HU apart" in reasons["c_lossy.dcm"]
    assert str(damaged) not in reasons["c_lossy.dcm"]
    # tried in order lossless, lossless, then (only to compare its pixels) the lossy one
    assert [r for r in reads if r not in ("s0.dcm", "s2.dcm")] == ["a_damaged.dcm", "b_copy.dcm", "c_lossy.dcm"]


def test_two_lossless_copies_first_damaged(tmp_path):
    px, spec = _series(tmp_path, names=["s0.dcm", "s1.dcm", "s2.dcm"])
    spec.paths[1].unlink()
    damaged = _truncated_rle(tmp_path / "a.dcm", px[1], spec, 1)
    good = _slice(tmp_path / "b.dcm", px[1], spec, 1)
    result = scan(tmp_path)
    (sk,) = result.skipped
    assert sk.path == str(good) and "lossy" not in sk.reason  # same quality: first path kept
    vol = load_ct_series(result.series[0])
    np.testing.assert_array_equal(vol.hu, _hu(px))
    (sk,) = vol.skipped
    assert sk.path == str(damaged) and str(good) in sk.reason and "is used instead" in sk.reason


def test_same_uid_missing_decoder_falls_back(tmp_path, monkeypatch):
    """The lossless file's codec is missing (a DicomError that would fail the series):
    the lossy copy of the same instance is used, the reason names the package."""
    px, spec = _series(tmp_path)
    rle = _compressed(_slice(spec.paths[1], px[1], spec, 1), RLELossless)
    lossy = _lossy(tmp_path / "z_lossy.dcm", px[1] + 2, spec, 1)
    real = load_mod._check_decoder

    def no_rle(path, ts):
        if ts == RLELossless:
            raise load_mod.DicomError(path, f"no decoder plugin is installed: {load_mod.plugin_hint(ts)}")
        return real(path, ts)

    monkeypatch.setattr(load_mod, "_check_decoder", no_rle)
    vol = load_ct_series(scan(tmp_path).series[0])
    np.testing.assert_array_equal(vol.hu[1], _hu(px[1] + 2))
    (sk,) = vol.skipped
    assert sk.path == str(rle) and "pylibjpeg-rle" in sk.reason and str(lossy) in sk.reason


def test_same_uid_copy_elsewhere_is_no_stand_in(tmp_path):
    """A copy with the instance's UID but another position is not used in its place;
    when the instance's file fails, the copy's line says so (not "which is kept")."""
    px, spec = _series(tmp_path, n=4)
    damaged = _truncated_rle(spec.paths[1], px[1], spec, 1)
    elsewhere = write_ct_slice(tmp_path / "z_moved.dcm", px[1], ipp=(0, 0, 40.0), pixel_spacing=SPACING,
                               series_uid=spec.series_uid, sop_uid=spec.sop_uids[1])
    (ref,) = scan(tmp_path).series
    vol = load_ct_series(ref)
    assert vol.hu.shape == (3, 8, 10)
    reasons = {Path(s.path).name: s.reason for s in vol.skipped}
    assert set(reasons) == {damaged.name, elsewhere.name}
    assert "gap between its slices at 0.00 and 5.00 mm" in reasons[damaged.name]
    assert str(damaged) in reasons[elsewhere.name] and "cannot be decoded" in reasons[elsewhere.name]
    assert "another position" in reasons[elsewhere.name] and "is kept" not in reasons[elsewhere.name]


@pytest.mark.skipif(not get_encoder(JPEGLSNearLossless).is_available, reason="no JPEG-LS encoder (pyjpegls)")
def test_same_uid_real_jpegls_lossy_copy_is_used(tmp_path):
    """A genuinely lossy copy (JPEG-LS near-lossless, error ≤ 2) of a damaged slice."""
    px, spec = _series(tmp_path)
    damaged = _truncated_rle(spec.paths[1], px[1], spec, 1)
    jls = _compressed(_slice(tmp_path / "z_jls.dcm", px[1], spec, 1), JPEGLSNearLossless, jls_error=2)
    (ref,) = scan(tmp_path).series
    assert [c.path for c in ref.copies] == [str(jls)] and ref.copies[0].lossy
    vol = load_ct_series(ref)
    assert np.abs(vol.hu[1] - _hu(px[1])).max() <= 2
    (sk,) = vol.skipped
    assert sk.path == str(damaged) and str(jls) in sk.reason


# ------------------------------------------------------------------ different UIDs


def test_different_uids_damaged_lossless_lossy_used(tmp_path):
    """The fallback for copies at one position with their own SOPInstanceUIDs."""
    px, spec = _series(tmp_path)
    damaged = _undecodable_rle(spec.paths[1], px[1], spec, 1)
    lossy = _lossy(tmp_path / "z_lossy.dcm", px[1] + 2, spec, 1, same_uid=False)
    result = scan(tmp_path)
    (ref,) = result.series
    assert result.skipped == [] and ref.copies == () and len(ref) == 4
    vol = load_ct_series(ref)
    assert vol.hu.shape == (3, 8, 10) and _gap_warnings(vol) == []
    np.testing.assert_array_equal(vol.hu[1], _hu(px[1] + 2))
    (sk,) = vol.skipped
    assert sk.path == str(damaged)
    assert "the copy at the same position (2.50 mm along the normal)" in sk.reason
    assert str(lossy) in sk.reason and sk.reason.endswith("is used instead")


def test_mixed_uids_at_one_position(tmp_path):
    """The instance's damaged file, its same-UID lossy copy and another lossless file of
    the position with its own UID: the lossless one is used; the lossy copy is compared
    with it and named against it."""
    px, spec = _series(tmp_path)
    damaged = _truncated_rle(spec.paths[1], px[1], spec, 1)
    lossy = _lossy(tmp_path / "a_lossy.dcm", px[1] + 4, spec, 1)
    other = _slice(tmp_path / "z_other.dcm", px[1], spec, 1, same_uid=False)
    vol = load_ct_series(scan(tmp_path).series[0])
    np.testing.assert_array_equal(vol.hu, _hu(px))
    assert vol.sources[1] == str(other)
    reasons = {Path(s.path).name: s.reason for s in vol.skipped}
    assert set(reasons) == {damaged.name, lossy.name}
    assert "the copy at the same position" in reasons[damaged.name] and str(other) in reasons[damaged.name]
    assert f"as {other}, which is kept" in reasons[lossy.name] and "up to 4 HU apart" in reasons[lossy.name]


# ------------------------------------------------------------------ end to end


def test_ingest_lists_every_file_and_keeps_the_slice(tmp_path, monkeypatch, reads):
    """Through the ingest: A (damaged lossless + lossy copy, one UID) is stored whole from
    the copy; B (both copies damaged) with one gap, both listed; C (the normal case) from
    its lossless files with the copy listed as before, and never read past its header (no
    pixel read, no hash). Every file is stored or listed, and the same drop again lists
    the same lines."""
    import training.store.ingest as ingest_mod
    from training.store.ingest import ingest
    from training.store.workspace import entry_files

    drop = tmp_path / "drop"
    pa, a = _series(drop / "A", patient_id="PA")
    a_bad = _truncated_rle(a.paths[1], pa[1], a, 1, patient_id="PA")
    a_copy = _lossy(drop / "A" / "z_lossy.dcm", pa[1] + 2, a, 1, patient_id="PA")
    pb, b = _series(drop / "B", patient_id="PB")
    b_bad = _truncated_rle(b.paths[1], pb[1], b, 1, patient_id="PB")
    b_copy = _undecodable_rle(drop / "B" / "z_lossy.dcm", pb[1], b, 1, patient_id="PB",
                              extra={"LossyImageCompression": "01"})
    pc, c = _series(drop / "C", patient_id="PC")
    c_copy = _lossy(drop / "C" / "a_lossy.dcm", pc[1] + 2, c, 1, patient_id="PC")

    hashed: list[str] = []
    real_hash = ingest_mod.hash_file
    monkeypatch.setattr(ingest_mod, "hash_file", lambda p, *a: hashed.append(str(p)) or real_hash(p, *a))
    infos = []
    ws = tmp_path / "w.h5"
    rep = ingest([drop], ws, PreprocessConfig(crop=8), workers=1, on_patient=infos.append)
    assert str(c_copy) not in hashed and c_copy.name not in reads  # workers=1: jobs run here
    assert "z_lossy.dcm" in reads
    rows = dict(rep.skipped)
    assert len(rows) == len(rep.skipped), "a file listed twice"

    def rel(p: Path) -> str:
        return os.path.relpath(p, drop)

    assert set(rows) == {rel(a_bad), rel(b_bad), rel(b_copy), rel(c_copy)}
    assert rel(a_copy) not in rows  # stored: it is the slice
    assert "the copy with the same SOPInstanceUID" in rows[rel(a_bad)]
    assert rel(a_copy) in rows[rel(a_bad)] and "is used instead" in rows[rel(a_bad)]
    for p in (b_bad, b_copy):
        assert "none of the 2 copies" in rows[rel(p)] and "gap between its slices" in rows[rel(p)]
    assert "same SOPInstanceUID" in rows[rel(c_copy)] and rel(c.paths[1]) in rows[rel(c_copy)]
    assert "lossless copy is kept" in rows[rel(c_copy)]

    by_shape = sorted(i.source_shape[0] for i in infos)
    assert by_shape == [2, 3, 3]
    (info_a,) = [i for i in infos if i.source_shape[0] == 3 and not any("missing slices" in w for w in i.warnings)
                 and any("z_lossy" in w for w in i.warnings)]
    stored = {}
    for k, fp in entry_files(ws).items():
        with h5py.File(fp, "r") as f:
            stored[k] = int(f["entries"][k].attrs["n_source_files"])
    n_files = sum(1 for _ in drop.rglob("*.dcm"))
    assert sum(stored.values()) + len(rows) == n_files == 12
    assert sorted(stored.values()) == [2, 3, 3]

    again = ingest([drop], ws, PreprocessConfig(crop=8), workers=1)
    assert len(again.unchanged) == 3 and again.added == []
    assert dict(again.skipped) == rows
