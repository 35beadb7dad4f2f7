"""DICOM writer: CT series and RTSTRUCT read back with plain pydicom (no project reader)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage

from training.dicom.write import (
    RESCALE_INTERCEPT,
    masks_to_contours,
    masks_to_rois,
    new_uid,
    write_ct_series,
    write_rtstruct,
)
from training.dicom.geometry import VolumeGeometry


def _oblique_geometry(shape=(4, 12, 10)):
    row = np.array([np.cos(0.2), np.sin(0.2), 0.0])
    col = np.array([-np.sin(0.2) * 0.8, np.cos(0.2) * 0.8, 0.6])
    col /= np.linalg.norm(col)
    n = np.cross(row, col)
    ipp = np.array([-50.0, 20.0, -300.25]) + np.outer(np.arange(shape[0]) * 2.5, n)
    return VolumeGeometry(ipp, row, col, (0.75, 0.9), shape)


def _read_sorted(paths):
    """Read CT files and sort by position along the normal computed from the header alone."""
    dss = [pydicom.dcmread(p) for p in paths]

    def pos(ds):
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), np.cross(iop[:3], iop[3:])))

    return sorted(dss, key=pos)


def test_new_uid_unique_and_valid():
    a, b = new_uid(), new_uid()
    assert a != b and len(a) <= 64 and all(c in "0123456789." for c in a)


def test_ct_round_trip_hu_and_geometry(tmp_path):
    g = _oblique_geometry()
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 2500, size=g.shape).astype(np.float32)
    hu[0, 0, 0], hu[0, 0, 1] = -1024.0, 3000.4
    ws = write_ct_series(hu, g, tmp_path / "ct", patient_name="X^Y", patient_id="P1",
                         series_description="test", extra={"PatientSex": "O"})
    assert len(ws.paths) == g.shape[0] and all(p.exists() for p in ws.paths)
    assert not list((tmp_path / "ct").glob("*.tmp"))
    assert len(set(ws.geometry.sop_uids)) == g.shape[0]

    dss = _read_sorted(reversed(ws.paths))
    back = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in dss])
    assert back.shape == hu.shape
    assert np.max(np.abs(back - hu)) <= 0.5 + 1e-6  # quantisation step 1 HU
    for k, ds in enumerate(dss):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.ImplementationClassUID
        assert ds.preamble == b"\0" * 128
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert ds.SOPInstanceUID == ws.geometry.sop_uids[k]
        assert ds.InstanceNumber == k + 1
        assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == RESCALE_INTERCEPT
        assert np.allclose(np.array(ds.ImagePositionPatient, float), g.ipp[k], atol=1e-6)
        assert np.allclose(np.array(ds.ImageOrientationPatient, float), np.r_[g.row_dir, g.col_dir], atol=1e-9)
        assert np.allclose(np.array(ds.PixelSpacing, float), g.pixel_spacing)
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(2.5)
        assert float(ds.SliceLocation) == pytest.approx(g.positions[k])
        assert ds.FrameOfReferenceUID == ws.frame_of_reference_uid
        assert ds.StudyInstanceUID == ws.study_uid and ds.SeriesInstanceUID == ws.series_uid
        assert ds.PatientBirthDate == "" and ds.PatientSex == "O"
        assert str(ds.PatientName) == "X^Y" and ds.PatientID == "P1"
        assert float(ds.WindowWidth) > 0
    # Geometry rebuilt by hand from the headers equals the one the writer reports.
    ipp = np.array([np.array(ds.ImagePositionPatient, float) for ds in dss])
    assert np.allclose(ipp, ws.geometry.ipp, atol=1e-6)
    assert np.allclose(ws.geometry.row_dir, g.row_dir) and ws.geometry.shape == g.shape
    assert ws.geometry.frame_of_reference_uid == ws.frame_of_reference_uid


def test_ct_default_geometry_uids_given_and_int_input(tmp_path):
    hu = np.arange(-1000, -1000 + 3 * 8 * 6).reshape(3, 8, 6).astype(np.int16)
    ws = write_ct_series(hu, None, tmp_path, study_uid="1.2.3", series_uid="1.2.3.4",
                         frame_of_reference_uid="1.2.3.5", pixel_spacing=(0.5, 0.7), slice_spacing=3.0)
    ds = pydicom.dcmread(ws.paths[2])
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) == ("1.2.3", "1.2.3.4", "1.2.3.5")
    assert np.array_equal(ds.pixel_array.astype(int) - 1024, hu[2])
    assert np.allclose(np.array(ds.PixelSpacing, float), (0.5, 0.7))
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(6.0)
    assert list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="shape"):
        write_ct_series(hu, _oblique_geometry(), tmp_path / "bad")


def _point_in_polygon(x, y, poly):
    """Even-odd ray casting, written independently of the writer (poly: (n, 2) of (x, y))."""
    inside = False
    n = len(poly)
    for a in range(n):
        x1, y1 = poly[a]
        x2, y2 = poly[(a + 1) % n]
        if (y1 > y) != (y2 > y):
            xc = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < xc:
                inside = not inside
    return inside


def test_masks_to_contours_recover_mask():
    yy, xx = np.mgrid[:20, :24]
    mask = ((yy - 9) ** 2 + (xx - 11) ** 2 < 40) & ~((yy - 9) ** 2 + (xx - 11) ** 2 < 6)
    mask[1:3, 20:23] = True  # a second island
    contours = masks_to_contours(mask)
    assert len(contours) == 3  # ring outer, ring hole, island
    back = np.zeros_like(mask)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            back[i, j] = sum(_point_in_polygon(j, i, c[:, ::-1]) for c in contours) % 2 == 1
    assert np.array_equal(back, mask)
    assert masks_to_contours(np.zeros((5, 5), bool)) == []


def test_rtstruct_round_trip(tmp_path):
    g = _oblique_geometry((3, 16, 14))
    ws = write_ct_series(np.zeros(g.shape, np.float32), g, tmp_path / "CT", patient_name="A^B", patient_id="Q9")
    masks = {"Body": np.zeros(g.shape, bool), "Heart": np.zeros(g.shape, bool), "Empty": np.zeros(g.shape, bool)}
    masks["Body"][:, 2:14, 2:12] = True
    masks["Heart"][1, 5:9, 6:10] = True
    rois = masks_to_rois(masks)
    path = write_rtstruct(tmp_path / "RTSTRUCT" / "rs.dcm", ws, rois)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert ds.file_meta.MediaStorageSOPClassUID == RTStructureSetStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.StudyInstanceUID == ws.study_uid and ds.PatientID == "Q9"
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Body", "Heart", "Empty"]
    ref_for = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref_for.FrameOfReferenceUID == ws.frame_of_reference_uid
    rt_series = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert rt_series.SeriesInstanceUID == ws.series_uid
    assert [c.ReferencedSOPInstanceUID for c in rt_series.ContourImageSequence] == list(ws.geometry.sop_uids)

    ct_by_uid = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in ws.paths}
    by_number = {rc.ReferencedROINumber: rc for rc in ds.ROIContourSequence}
    body, heart, empty = by_number[1], by_number[2], by_number[3]
    assert len(body.ContourSequence) == 3 and len(heart.ContourSequence) == 1
    assert "ContourSequence" not in empty
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence][:2] == ["EXTERNAL", "ORGAN"]
    assert len(body.ROIDisplayColor) == 3
    for rc in (body, heart):
        for c in rc.ContourSequence:
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            pts = np.array(c.ContourData, float).reshape(-1, 3)
            assert len(pts) == c.NumberOfContourPoints
            ct = ct_by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
            # Every point lies in the referenced slice's plane, inside its pixel grid.
            ipp = np.array(ct.ImagePositionPatient, float)
            iop = np.array(ct.ImageOrientationPatient, float)
            d = pts - ipp
            assert np.allclose(d @ np.cross(iop[:3], iop[3:]), 0, atol=1e-3)
            col_j = d @ iop[:3] / float(ct.PixelSpacing[1])
            row_i = d @ iop[3:] / float(ct.PixelSpacing[0])
            assert col_j.min() > -1 and col_j.max() < ct.Columns and row_i.min() > -1 and row_i.max() < ct.Rows
    # Heart contour (slice 1) encloses exactly the heart voxels when rasterised by hand.
    c = heart.ContourSequence[0]
    ct = ct_by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
    assert ct.SOPInstanceUID == ws.geometry.sop_uids[1]
    iop = np.array(ct.ImageOrientationPatient, float)
    d = np.array(c.ContourData, float).reshape(-1, 3) - np.array(ct.ImagePositionPatient, float)
    poly = np.column_stack([d @ iop[:3] / float(ct.PixelSpacing[1]), d @ iop[3:] / float(ct.PixelSpacing[0])])
    got = np.array([[_point_in_polygon(j, i, poly) for j in range(g.shape[2])] for i in range(g.shape[1])])
    assert np.array_equal(got, masks["Heart"][1])


def test_rtstruct_rejects_bad_slice(tmp_path):
    ws = write_ct_series(np.zeros((2, 8, 8)), None, tmp_path)
    with pytest.raises(ValueError, match="slice 5"):
        write_rtstruct(tmp_path / "rs.dcm", ws, {"X": [(5, np.array([[1, 1], [1, 3], [3, 3.0]]))]})


def test_contours_at_image_border_and_large_coordinates():
    from training.dicom.write import _CONTOUR_DATA, _raw_ds_element

    full = np.ones((4, 5), bool)
    (c,) = masks_to_contours(full)
    assert c[:, 0].min() == pytest.approx(-0.5) and c[:, 0].max() == pytest.approx(3.5)
    assert c[:, 1].min() == pytest.approx(-0.5) and c[:, 1].max() == pytest.approx(4.5)
    values = np.array([1.25e9, -0.5, 0.0, 123.4567891, -98765.4321])
    elem = _raw_ds_element(_CONTOUR_DATA, values)
    assert len(elem.value) % 2 == 0
    parts = elem.value.decode().strip().split("\\")
    assert all(len(p) <= 16 for p in parts)
    assert np.allclose([float(p) for p in parts], values, rtol=1e-9, atol=1e-6)
    small = _raw_ds_element(_CONTOUR_DATA, values[1:])
    assert np.allclose([float(p) for p in small.value.decode().strip().split("\\")], values[1:], atol=1e-6)
