"""The fast ROIContourSequence reader must give exactly what pydicom's reading gives.

Every structure set is read twice, through rtstruct_raw and with it switched off (pydicom
for the whole file), and the results compared field by field. Files: the phantom's,
hand-encoded ones covering explicit/implicit VR and defined/undefined lengths, damaged
ones, and every RTSTRUCT in ../shared/data.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

import training.dicom.rtstruct_raw as raw
from training.dicom.phantom import generate_cohort
from training.dicom.rtstruct import RTStructError, read_rtstruct

REAL = [
    "dicom/lung1-001/mask_rtstruct/1-1.dcm",
    "dicom/sts/STS_001/CT/mask/RS.dcm",
    "dicom/rtstruct-edge/tests/mock_data/rt.dcm",
    "dicom/rtstruct-edge/tests/mock_data/invalid_reference_rt.dcm",
    "dicom/rtstruct-edge/tests/mock_data/non_existent_reference_rt.dcm",
    "dicom/rtstruct-edge/tests/empty/dummy_rt.dcm",
]


def _both(path, monkeypatch):
    fast = read_rtstruct(path)
    with monkeypatch.context() as m:
        m.setattr(raw, "read_roi_contours", lambda p: None)
        slow = read_rtstruct(path)
    return fast, slow


def _assert_same(a, b):
    assert (a.path, a.frame_of_reference_uid, a.referenced_series_uid, a.sop_instance_uid) == (
        b.path, b.frame_of_reference_uid, b.referenced_series_uid, b.sop_instance_uid)
    assert a.warnings == b.warnings
    assert [(r.number, r.name, r.color, r.frame_of_reference_uid, len(r.contours)) for r in a.rois] == [
        (r.number, r.name, r.color, r.frame_of_reference_uid, len(r.contours)) for r in b.rois]
    for ra, rb in zip(a.rois, b.rois):
        for ca, cb in zip(ra.contours, rb.contours):
            assert (ca.geometric_type, ca.referenced_sop_uid) == (cb.geometric_type, cb.referenced_sop_uid)
            np.testing.assert_array_equal(ca.points, cb.points)


def test_phantom_structure_set_read_fast_and_identically(tmp_path, monkeypatch):
    info = generate_cohort(tmp_path, 1, slices=6, size=32, seed=0, fsync=False)[0]
    path = next((info.folder / "RTSTRUCT").iterdir())
    assert raw.read_roi_contours(str(path)) is not None  # the fast path is taken
    fast, slow = _both(path, monkeypatch)
    assert sum(len(r.contours) for r in fast.rois) > 10
    _assert_same(fast, slow)


@pytest.mark.parametrize("relative", REAL)
def test_real_structure_sets_read_identically(test_data, relative, monkeypatch):
    path = test_data(relative)
    assert raw.read_roi_contours(str(path)) is not None
    _assert_same(*_both(path, monkeypatch))


# ----------------------------------------------------------- hand-encoded structure sets

_LONG = {b"OB", b"OW", b"SQ", b"UN", b"UT"}


def _el(tag: int, vr: bytes, value: bytes, explicit: bool) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack("<I", len(value)) + value
    if vr in _LONG:
        return head + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + vr + struct.pack("<H", len(value)) + value


def _seq(tag: int, items: list[bytes], explicit: bool, defined: bool) -> bytes:
    body = b""
    for it in items:
        if defined:
            body += struct.pack("<HHI", 0xFFFE, 0xE000, len(it)) + it
        else:
            body += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + it + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if explicit:
        head += b"SQ\0\0"
    if defined:
        return head + struct.pack("<I", len(body)) + body
    return head + struct.pack("<I", 0xFFFFFFFF) + body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _write(path: Path, explicit: bool, defined: bool, contour_text: bytes | None = None) -> Path:
    e, d = explicit, defined
    ts = b"1.2.840.10008.1.2.1" if explicit else b"1.2.840.10008.1.2"
    meta = (_el(0x00020001, b"OB", b"\0\1", True)
            + _el(0x00020002, b"UI", b"1.2.840.10008.5.1.4.1.1.481.3", True)
            + _el(0x00020003, b"UI", b"1.2.3.4.5", True) + _el(0x00020010, b"UI", ts, True))
    meta = _el(0x00020000, b"UL", struct.pack("<I", len(meta)), True) + meta
    contours = []
    for k, z in enumerate((0.0, 2.5)):
        text = contour_text or f"0\\0\\{z}\\10.5\\0\\{z}\\10.5\\-7.25\\{z}\\0\\-7.25\\{z}".encode()
        image = _el(0x00081150, b"UI", b"1.2.840.10008.5.1.4.1.1.2", e) + _el(0x00081155, b"UI", f"1.2.3.9.{k}".encode(), e)
        contours.append(_seq(0x30060016, [image], e, d) + _el(0x30060042, b"CS", b"CLOSED_PLANAR", e)
                        + _el(0x30060046, b"IS", b"4", e) + _el(0x30060050, b"DS", text, e))
    roi_contour = (_el(0x3006002A, b"IS", b"255\\0\\128", e) + _seq(0x30060040, contours, e, d)
                   + _el(0x30060084, b"IS", b"7", e))
    roi = (_el(0x30060022, b"IS", b"7", e) + _el(0x30060024, b"UI", b"1.2.3.7", e)
           + _el(0x30060026, b"LO", b"Heart", e))
    data = (_el(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.481.3", e) + _el(0x00080018, b"UI", b"1.2.3.4.5", e)
            + _el(0x00080060, b"CS", b"RTSTRUCT", e) + _seq(0x30060020, [roi], e, d)
            + _seq(0x30060039, [roi_contour], e, d))
    path.write_bytes(b"\0" * 128 + b"DICM" + meta + data)
    return path


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("defined", [True, False])
def test_encodings_read_identically(tmp_path, monkeypatch, explicit, defined):
    path = _write(tmp_path / "rs.dcm", explicit, defined)
    assert raw.read_roi_contours(str(path)) is not None
    fast, slow = _both(path, monkeypatch)
    _assert_same(fast, slow)
    (heart,) = fast.rois
    assert (heart.number, heart.name, heart.color) == (7, "Heart", (255, 0, 128))
    assert [c.referenced_sop_uid for c in heart.contours] == ["1.2.3.9.0", "1.2.3.9.1"]
    np.testing.assert_array_equal(heart.contours[1].points[:, :2], [[0, 0], [10.5, 0], [10.5, -7.25], [0, -7.25]])
    assert (heart.contours[1].points[:, 2] == 2.5).all()


def test_damaged_contour_text_and_truncation(tmp_path, monkeypatch):
    path = _write(tmp_path / "bad.dcm", True, False, contour_text=b"1\\2\\x\\4")
    fast, slow = _both(path, monkeypatch)
    _assert_same(fast, slow)  # the same warnings through both readers
    assert len(fast.warnings) == 2 and "contour" in fast.warnings[0]
    whole = _write(tmp_path / "whole.dcm", False, True).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: len(whole) - 40])  # inside the last contour
    assert raw.read_roi_contours(str(cut)) is None  # left to pydicom, as before
    try:  # pydicom is lenient with a cut sequence; either way nothing but RTStructError
        read_rtstruct(cut)
    except RTStructError:
        pass


def test_layouts_it_does_not_handle_fall_back(tmp_path):
    info = generate_cohort(tmp_path, 1, slices=4, size=24, seed=1, fsync=False)[0]
    src = next((info.folder / "RTSTRUCT").iterdir())
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    pydicom.dcmwrite(tmp_path / "be.dcm", ds, implicit_vr=False, little_endian=False,
                     force_encoding=True)
    assert raw.read_roi_contours(str(tmp_path / "be.dcm")) is None
    ss = read_rtstruct(tmp_path / "be.dcm")
    assert sum(len(r.contours) for r in ss.rois) == sum(len(r.contours) for r in read_rtstruct(src).rois)
    assert raw.read_roi_contours(str(tmp_path / "missing.dcm")) is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_bytes_never_escape_as_anything_but_rtstruct_error(tmp_path, monkeypatch):
    """Random bytes changed in a structure set (lengths, tags, VRs, numbers): the raw reader
    answers a list or None, never raises; read_rtstruct gives a StructureSet or an
    RTStructError naming the file, whichever reader ends up reading it."""
    info = generate_cohort(tmp_path / "c", 1, slices=4, size=24, seed=2, fsync=False)[0]
    sources = [next((info.folder / "RTSTRUCT").iterdir()),
               _write(tmp_path / "imp.dcm", False, True), _write(tmp_path / "exp.dcm", True, False)]
    rng = np.random.default_rng(3)
    fast_used = 0
    for k in range(60):
        data = bytearray(sources[k % 3].read_bytes())
        for pos in rng.integers(132, len(data), size=int(rng.integers(1, 8))):
            data[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"bad{k:02d}.dcm"
        path.write_bytes(bytes(data))
        items = raw.read_roi_contours(str(path))
        assert items is None or isinstance(items, list)
        fast_used += items is not None
        try:
            ss = read_rtstruct(path)
        except RTStructError as exc:
            assert str(path) in str(exc)
            continue
        for r in ss.rois:
            for c in r.contours:
                assert c.points.ndim == 2 and c.points.shape[1] == 3
    assert fast_used > 10  # most damage leaves the layout readable
