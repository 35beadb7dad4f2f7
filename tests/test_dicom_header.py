"""The fast header reader (training/dicom/header.py) against pydicom, file by file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.dicom_factory import ramp_volume, write_ct_series, write_ct_slice
from training.dicom.header import KEYWORDS, read_native_header
from training.dicom.scan import _pixel_location, _value


def _pydicom_view(path):
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        pixel = _pixel_location(fp, ts, os.fstat(fp.fileno()).st_size)
    return ds, ts, pixel


def _check_same(path) -> bool:
    """True when the fast reader handled the file (and agreed with pydicom)."""
    fast = read_native_header(str(path))
    if fast is None:
        return False
    header, ts, pixel, size = fast
    ds, ts_ref, pixel_ref = _pydicom_view(path)
    assert ts == ts_ref and size == Path(path).stat().st_size
    assert pixel == pixel_ref, path
    for kw in KEYWORDS:
        assert _value(header, kw) == _value(ds, kw), (path, kw)
    media = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    assert header.file_meta["MediaStorageSOPClassUID"] == media
    return True


def test_hand_built_files(tmp_path):
    spec = write_ct_series(tmp_path / "e", ramp_volume(2, 6, 8), slice_thickness=2.0)
    spec2 = write_ct_series(tmp_path / "i", ramp_volume(2, 6, 8), transfer_syntax="1.2.840.10008.1.2")
    bare = write_ct_slice(tmp_path / "bare", np.zeros((4, 4)), preamble=False)
    for p in spec.paths + spec2.paths:
        assert _check_same(p)
    assert read_native_header(str(bare)) is None  # no preamble: pydicom reads it


def test_truncated_and_odd_files_fall_back(tmp_path):
    spec = write_ct_series(tmp_path, ramp_volume(1, 6, 8))
    data = spec.paths[0].read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:400])  # inside the header
    assert read_native_header(str(cut)) is None
    pix = tmp_path / "cutpix"
    pix.write_bytes(data[:-10])  # inside the pixel data: the header is whole
    assert _check_same(pix)
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm", "ExplVR_BigEndNoMeta.dcm",
                 "no_meta.dcm", "CT_small.dcm", "rtstruct.dcm", "DICOMDIR", "JPEG2000.dcm"):
        _check_same(get_testdata_file(name))


@pytest.mark.parametrize("folder", [
    "dicom/lung1-001", "dicom/sts/STS_001", "dicom/head-ct-gantry-tilt",
    "dicom/transfer-syntaxes/testImages", "dicom/rtstruct-edge",
])
def test_real_files_agree_with_pydicom(test_data, folder):
    files = sorted(p for p in test_data(folder).rglob("*") if p.is_file())
    handled = 0
    for p in files:
        try:
            pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # not DICOM (a licence, a readme): the fast reader must not claim it
            assert read_native_header(str(p)) is None, p
            continue
        handled += _check_same(p)
    assert handled > 0
