"""training.dicom on the real DICOM data in CT_VAE_TEST_DATA (see its README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless

from training.dicom import DicomError, load_ct_series, scan

TS_DIR = "dicom/transfer-syntaxes/testImages"


def _independent_hu(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_lung1_series(test_data):
    folder = test_data("dicom/lung1-001/image")
    result = scan(folder)
    assert result.skipped == []
    (ref,) = result.series
    assert len(ref) == 134 and ref.patient_id == "LUNG1-001"
    vol = load_ct_series(ref)
    assert vol.hu.shape == (134, 512, 512) and vol.hu.dtype == np.float32
    g = vol.geometry
    assert np.all(np.diff(g.positions) > 0)
    np.testing.assert_allclose(np.diff(g.positions), 3.0, atol=1e-3)
    assert g.pixel_spacing == pytest.approx((0.977, 0.977), abs=5e-4)
    assert g.frame_of_reference_uid == ref.frame_of_reference_uid
    by_uid = {}
    for p in ref.files:
        by_uid[pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID] = p
    for k in (0, 67, 133):
        path = by_uid[g.sop_uids[k]]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        np.testing.assert_allclose(g.ipp[k], [float(v) for v in ds.ImagePositionPatient], atol=1e-6)
        np.testing.assert_array_equal(vol.hu[k], _independent_hu(path).astype(np.float32))
    assert vol.warnings == []


def test_lung1_rtstruct_found(test_data):
    image = test_data("dicom/lung1-001/image")
    result = scan([image, test_data("dicom/lung1-001/mask_rtstruct")])
    (s,) = result.structs
    assert s.referenced_series_uids == (result.series[0].series_uid,)
    assert s.frame_of_reference_uid == result.series[0].frame_of_reference_uid


@pytest.mark.parametrize(
    "name, tol",
    [
        ("CTImage.dcm", 0),
        ("CTImage.dcm_LittleEndianImplicitTransferSyntax_1.2.840.10008.1.2.dcm", 0),
        ("CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm", 0),
        ("CTImage.dcm_BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2.dcm", 0),
        ("CTImage.dcm_DeflatedExplicitVRLittleEndianTransferSyntax_1.2.840.10008.1.2.1.99.dcm", 0),
        ("CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm", 0),
        ("CTImage.dcm_JPEGProcess14TransferSyntax_1.2.840.10008.1.2.4.57.dcm", 0),
        ("CTImage.dcm_JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70.dcm", 0),
        ("CTImage.dcm_JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80.dcm", 0),
        ("CTImage.dcm_JPEGLSLossyTransferSyntax_1.2.840.10008.1.2.4.81.dcm", 2),
        ("CTImage.dcm_JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90.dcm", 0),
        ("CTImage.dcm_JPEG2000TransferSyntax_1.2.840.10008.1.2.4.91.dcm", 10),
        ("CTImage.dcm_JPEGProcess2_4TransferSyntax_1.2.840.10008.1.2.4.51.dcm", None),
        ("CTImage.dcm_JPEGProcess1TransferSyntax_1.2.840.10008.1.2.4.50.dcm", None),
    ],
)
def test_transfer_syntaxes_decode(test_data, name, tol):
    folder = test_data(TS_DIR)
    (ref,) = scan(folder / name).series
    vol = load_ct_series(ref)
    assert vol.hu.shape == (1, 512, 512)
    np.testing.assert_allclose(vol.hu[0], _independent_hu(folder / name), rtol=1e-6, atol=1e-3)
    if tol is not None:  # against the uncompressed original
        assert np.abs(vol.hu[0] - _independent_hu(folder / "CTImage.dcm")).max() <= tol


@pytest.mark.parametrize("suffix", ["4.53.dcm", "4.55.dcm"])
def test_gdcm_only_jpeg_processes_name_the_plugin(test_data, suffix, monkeypatch):
    import training.dicom.load as load_mod

    monkeypatch.setattr(load_mod, "_gdcm_available", lambda: False)  # as without python-gdcm
    (path,) = [p for p in test_data(TS_DIR).iterdir() if p.name.endswith(suffix)]
    result = scan([test_data("dicom/lung1-001/image") / "1-001.dcm", path])
    assert len(result.series) == 2  # the good file of the drop is still found
    ref = next(r for r in result.series if r.files == (str(path),))
    with pytest.raises(DicomError) as err:
        load_ct_series(ref)
    assert err.value.path == str(path)
    assert "python-gdcm" in err.value.reason and "Process" in err.value.reason


def test_missing_openjpeg_names_the_plugin(test_data, monkeypatch):
    folder = test_data(TS_DIR)
    (ref,) = scan(folder / "CT1_J2KR").series
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    with pytest.raises(DicomError) as err:
        load_ct_series(ref)
    assert str(err.value).startswith(str(folder / "CT1_J2KR") + ": ")
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in err.value.reason


def test_transfer_syntax_folder_oddities(test_data):
    folder = test_data(TS_DIR)
    result = scan(folder)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert "Enhanced CT" in reasons["CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"]
    assert "neither a CT image" in reasons["no-pixel-data.dcm"]
    assert "US" in reasons["US-YBR_FULL_422-EVRLE.dcm"]
    assert "same SOPInstanceUID" in reasons[
        "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm"
    ]
    files = {Path(f).name for r in result.series for f in r.files}
    assert {"CT1_J2KR", "CT2_J2KR", "CTImage.dcm"} <= files  # no extension needed


def test_gantry_tilt_head_ct(test_data):
    folder = test_data("dicom/head-ct-gantry-tilt")
    (ref,) = scan(folder).series
    vol = load_ct_series(ref)
    assert vol.hu.shape == (28, 512, 512)
    (tilt,) = [w for w in vol.warnings if "gantry tilt" in w]
    assert "18.5°" in tilt  # the header's GantryDetectorTilt is +18.5
    assert any("uneven slice spacing: 1.08 to 7.00 mm" in w for w in vol.warnings)
    assert not any("missing" in w for w in vol.warnings)  # 7 mm slices 7 mm apart
    g = vol.geometry
    assert np.allclose(np.cross(g.ipp - g.ipp[0], g.normal), 0, atol=1e-6)
    # the first slice is the reference and is not resampled
    first = min(ref.files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                               .ImagePositionPatient[2]))
    np.testing.assert_array_equal(vol.hu[0], _independent_hu(first).astype(np.float32))


def test_rtstruct_edge_drop(test_data):
    result = scan(test_data("dicom/rtstruct-edge"))
    by_desc = {r.series_description: r for r in result.series}
    # SimpleITK gave each oriented slice its own StudyInstanceUID: still one series
    assert len(by_desc["Created-SimpleITK"]) == 3
    assert len(by_desc["PHANTOM_EXAMPLE"]) == 2
    assert len(result.structs) == 4
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert "not a DICOM file" in reasons["info.txt"]
    vol = load_ct_series(by_desc["Created-SimpleITK"])
    assert vol.hu.shape == (3, 50, 100) and vol.warnings == []
    assert vol.geometry.slice_spacing == pytest.approx(4.5, abs=1e-3)
    (one,) = scan(test_data("dicom/rtstruct-edge/tests/one_slice_data")).series
    assert any("one slice only" in w for w in load_ct_series(one).warnings)


def test_sts_cohort(test_data):
    result = scan(test_data("dicom/sts"))
    assert len(result.series) == 3 and len(result.structs) == 3
    assert len({r.patient_id for r in result.series}) == 3
    for ref in result.series:
        vol = load_ct_series(ref)
        assert vol.geometry.slice_spacing == pytest.approx(3.27, abs=0.01)
