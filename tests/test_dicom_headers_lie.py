"""Headers that lie (issue 11): a header that does not describe its pixels is refused
with the file named and the reason, before anything is stored, and its series goes on
without it (the consequence said)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRBigEndian

from tests.dicom_factory import ramp_volume, write_ct_series, write_ct_slice
from training.dicom import load_ct_series, scan
from training.dicom.load import HU_FLOOR, HU_MAX


def _series_with(tmp_path, bad_kw: dict, *, pixels=None, name="bad.dcm", z=5.0):
    """A good 5-slice series (2.5 mm apart from z = 0) plus one lying slice at z."""
    spec = write_ct_series(tmp_path, ramp_volume(5, 8, 10), origin=(0, 0, 0), pixel_spacing=(0.8, 0.6))
    for p in spec.paths:
        if abs(float(p.stem.split("_")[1]) * 2.5 - z) < 1e-6:
            p.unlink()  # the lying slice takes this one's place
    px = np.full((8, 10), 1000, np.int16) if pixels is None else pixels
    bad = write_ct_slice(tmp_path / name, px, ipp=(0, 0, z), pixel_spacing=(0.8, 0.6),
                         series_uid=spec.series_uid, **bad_kw)
    return spec, bad


def _scan_reason(tmp_path, bad) -> str:
    result = scan(tmp_path)
    reasons = {s.path: s.reason for s in result.skipped}
    assert list(reasons) == [str(bad)], reasons
    (ref,) = result.series
    assert len(ref) == 4 and str(bad) not in ref.files
    return reasons[str(bad)]


@pytest.mark.parametrize("case, words", [
    ("rows_64_over_128", "64×64×1×16 bits = 8192 bytes, but the pixel data holds 32768 bytes"),
    ("bits_allocated_12", "BitsAllocated 12"),
    ("bits_stored_17", "BitsStored 17 does not fit in BitsAllocated 16"),
    ("high_bit_15_stored_12", "HighBit 15 with BitsStored 12"),
    ("high_bit_11_stored_16", "HighBit 11 with BitsStored 16"),
    ("pixel_representation_2", "PixelRepresentation 2"),
    ("slope_0", "RescaleSlope is 0"),
    ("slope_negative", "RescaleSlope is -1"),
    ("slope_nan", "RescaleSlope is nan"),
    ("slope_inf", "RescaleSlope is inf"),
    ("slope_text", "RescaleSlope is not a number"),
    ("intercept_inf", "RescaleIntercept is inf"),
])
def test_lying_header_is_refused_at_scan_with_the_reason(tmp_path, case, words):
    pixels, kw = None, {}
    if case == "rows_64_over_128":  # the header claims 64² over 128² pixel data
        pixels = np.zeros((128, 128), np.int16)
        kw = {"extra": {"Rows": 64, "Columns": 64}}
    elif case == "bits_allocated_12":
        kw = {"extra": {"BitsAllocated": 12}}
    elif case == "bits_stored_17":
        kw = {"extra": {"BitsStored": 17}}
    elif case == "high_bit_15_stored_12":
        kw = {"extra": {"BitsStored": 12, "HighBit": 15}}
    elif case == "high_bit_11_stored_16":
        kw = {"extra": {"HighBit": 11}}
    elif case == "pixel_representation_2":
        kw = {"extra": {"PixelRepresentation": 2}}
    elif case == "slope_0":
        kw = {"slope": 0.0}
    elif case == "slope_negative":
        kw = {"slope": -1.0}
    elif case.startswith("slope_") or case.startswith("intercept_"):
        value = {"slope_nan": "NaN", "slope_inf": "inf", "slope_text": "7.25", "intercept_inf": "inf"}[case]
        kw = {"extra": {"RescaleSlope" if case.startswith("slope") else "RescaleIntercept": value}}
    spec, bad = _series_with(tmp_path, kw, pixels=pixels)
    if case == "slope_text":  # pydicom will not write a non-number: patch the bytes
        data = bad.read_bytes()
        assert data.count(b"7.25") == 1
        bad.write_bytes(data.replace(b"7.25", b"one "))
    reason = _scan_reason(tmp_path, bad)
    assert words in reason
    assert "left out of its CT series, which goes on with its other 4 file(s)" in reason


def test_size_mismatch_in_a_big_endian_file_is_caught_at_load(tmp_path):
    """Big endian is decoded by pydicom (no scanned offset): the check happens on load."""
    spec, bad = _series_with(tmp_path, {"extra": {"Rows": 8, "Columns": 10},
                                        "transfer_syntax": ExplicitVRBigEndian},
                             pixels=np.zeros((16, 20), np.int16), z=5.0)
    (ref,) = scan(tmp_path).series
    assert len(ref) == 5
    vol = load_ct_series(ref)
    assert vol.hu.shape[0] == 4
    (sk,) = vol.skipped
    assert sk.path == str(bad) and "header and pixel data disagree" in sk.reason
    assert "8×10×1×16 bits = 160 bytes, but the pixel data holds 640 bytes" in sk.reason
    assert "gap between its slices at 2.50 and 7.50 mm" in sk.reason


@pytest.mark.parametrize("case", ["slope_1000", "intercept_far_below", "mostly_below_padding",
                                  "unsigned_read_as_signed"])
def test_hu_far_outside_the_physical_range_is_refused_at_load(tmp_path, case):
    pixels, kw = None, {}
    if case == "slope_1000":  # tissue at 1000 stored → 10⁶ HU
        kw = {"slope": 1000.0}
    elif case == "intercept_far_below":
        kw = {"intercept": -40000.0}
    elif case == "mostly_below_padding":  # a whole slice at −9000 HU: not padding
        kw = {"intercept": -10000.0}
    else:  # −2000 padding written as uint16 (63536) with PixelRepresentation 0
        pixels = np.full((8, 10), 63536, np.uint16)
        pixels[2:6, 2:8] = 1000
    spec, bad = _series_with(tmp_path, kw, pixels=pixels, z=10.0)  # the last slice
    (ref,) = scan(tmp_path).series
    vol = load_ct_series(ref)
    assert vol.hu.shape[0] == 4
    (sk,) = vol.skipped
    assert sk.path == str(bad)
    assert (f"{HU_FLOOR:.0f} to {HU_MAX:.0f} HU" in sk.reason) or ("below -2000 HU" in sk.reason)
    assert "the header does not describe these pixels" in sk.reason
    assert "the series is stored without it, 4 slices, one fewer at its end" in sk.reason


def test_padding_and_metal_are_not_refused(tmp_path):
    """GE pads outside the field of view with −3024 HU (a fifth of the slice), the
    extended CT scale reaches 30710 HU in metal: both are real CT."""
    px = np.full((8, 10), 1000, np.int16)
    px[:2, :8] = -2000  # 16 of 80 pixels: −3024 HU
    px[5, 5] = 31710  # 30686 HU
    spec, bad = _series_with(tmp_path, {}, pixels=px)
    (ref,) = scan(tmp_path).series
    vol = load_ct_series(ref)
    assert vol.skipped == [] and vol.hu.shape[0] == 5
    assert vol.hu.min() == -3024 and vol.hu.max() == 30686
