"""RTSTRUCT reading and rasterisation on real data (through the `test_data` fixture).

The CT grid is built here straight from the CT headers with pydicom (sorted by
ImagePositionPatient · normal), independently of training/dicom.py. Expected per-slice
areas and centroids come from the contours' shoelace formulas in pixel units.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from skimage.measure import points_in_poly

from training.dicom.geometry import VolumeGeometry
from training.dicom.rtstruct import RTStructError, rasterise, read_rtstruct, roi_names


def ct_geometry(files) -> VolumeGeometry:
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    headers.sort(key=lambda h: float(np.dot(np.array(h.ImagePositionPatient, float), normal)))
    h0 = headers[0]
    return VolumeGeometry(
        ipp=np.array([h.ImagePositionPatient for h in headers], dtype=float),
        row_dir=row,
        col_dir=col,
        pixel_spacing=(float(h0.PixelSpacing[0]), float(h0.PixelSpacing[1])),
        shape=(len(headers), int(h0.Rows), int(h0.Columns)),
        frame_of_reference_uid=str(h0.get("FrameOfReferenceUID", "")),
        sop_uids=tuple(str(h.SOPInstanceUID) for h in headers),
    )


def folder_geometry(folder: Path) -> VolumeGeometry:
    return ct_geometry(sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm"))


def to_pixels(points, geo, k):
    d = points - geo.ipp[k]
    return np.stack([d @ geo.col_dir / geo.pixel_spacing[0],
                     d @ geo.row_dir / geo.pixel_spacing[1]], axis=1)


def shoelace(poly):
    """Signed area and centroid (i, j) of a closed polygon in pixel units."""
    i, j = poly[:, 0], poly[:, 1]
    i2, j2 = np.roll(i, -1), np.roll(j, -1)
    cross = i * j2 - i2 * j
    area = cross.sum() / 2
    return area, np.array([((i + i2) * cross).sum(), ((j + j2) * cross).sum()]) / (6 * area)


def slice_reference(polys):
    """Area and centroid of the even-odd union of non-crossing polygons on one slice:
    each polygon counts + or - by the parity of the number of others enclosing it."""
    total, moment = 0.0, np.zeros(2)
    for n, p in enumerate(polys):
        depth = sum(points_in_poly(p[:1], q)[0] for m, q in enumerate(polys) if m != n)
        area, c = shoelace(p)
        sign = -1.0 if depth % 2 else 1.0
        total += sign * abs(area)
        moment += sign * abs(area) * c
    return total, moment / total


_LUNG1: list = []


@pytest.fixture(scope="module", autouse=True)
def _free_lung1():
    yield
    _LUNG1.clear()  # about 140 MB of masks


@pytest.fixture
def lung1(test_data):
    """(geometry, structure set, raster result, seconds), computed once per session."""
    if _LUNG1:
        return _LUNG1[0]
    geo = folder_geometry(test_data("dicom/lung1-001/image"))
    ss = read_rtstruct(test_data("dicom/lung1-001/mask_rtstruct") / "1-1.dcm")
    t = time.perf_counter()
    res = rasterise(ss, geo)
    _LUNG1.append((geo, ss, res, time.perf_counter() - t))
    return _LUNG1[0]


def test_lung1_rois_found_and_fast(lung1):
    geo, ss, res, seconds = lung1
    assert ss.roi_names == ["GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"]
    assert roi_names(ss.path) == ss.roi_names
    assert ss.frame_of_reference_uid == geo.frame_of_reference_uid
    assert ss.referenced_series_uid and ss.roi("GTV-1").color == (0, 255, 120)
    assert set(res.masks) == set(ss.roi_names) and res.warnings == []
    assert all(m.shape == geo.shape and m.dtype == bool and m.any() for m in res.masks.values())
    assert seconds < 10.0  # measured about 0.3 s on one core


def perimeter(poly):
    return float(np.linalg.norm(poly - np.roll(poly, -1, axis=0), axis=1).sum())


def centres_inside(polys, shape):
    """Independent fill: XOR of skimage's points_in_poly over all pixel centres."""
    ii, jj = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    inside = np.zeros(len(centres), dtype=bool)
    for p in polys:
        inside ^= points_in_poly(centres, p)
    return inside.reshape(shape)


@pytest.mark.parametrize("name", ["GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"])
def test_lung1_areas_and_centroids_match_polygons(lung1, name):
    geo, ss, res, _ = lung1
    mask = res.masks[name]
    index = {uid: k for k, uid in enumerate(geo.sop_uids)}
    by_slice: dict[int, list[np.ndarray]] = {}
    for c in ss.roi(name).contours:
        k = index[c.referenced_sop_uid]  # LUNG1's references all resolve
        by_slice.setdefault(k, []).append(to_pixels(c.points, geo, k))
    assert sorted(by_slice) == list(np.flatnonzero(mask.any(axis=(1, 2))))
    total_ref = 0.0
    for n, (k, polys) in enumerate(sorted(by_slice.items())):
        area, cen = slice_reference(polys)
        got = int(mask[k].sum())
        total_ref += area
        # Counting centres differs from the exact area by a lattice error that grows with
        # the boundary length: 1% on compact sections, else a fraction of the perimeter
        # (lung sections are jagged; observed at most 0.15 px per px of perimeter).
        edge = sum(perimeter(p) for p in polys)
        if area >= 20 * edge:
            assert abs(got - area) / area < 0.01, (name, k, got, area)
        else:
            assert abs(got - area) <= 0.2 * edge, (name, k, got, area, edge)
        if area > 20:
            assert np.all(np.abs(np.argwhere(mask[k]).mean(axis=0) - cen) < 1.0), (name, k)
        if n % 4 == 0:  # every 4th slice against an independent fill (slow-ish)
            pts = np.concatenate(polys)
            lo = np.floor(pts.min(axis=0)).astype(int) - 1
            hi = np.ceil(pts.max(axis=0)).astype(int) + 2
            box = mask[k, lo[0] : hi[0], lo[1] : hi[1]]
            assert box.sum() == got  # nothing outside the polygons' box
            assert np.array_equal(box, centres_inside([p - lo for p in polys], box.shape))
    tol = 0.01 if name.startswith("Lung") else 0.02
    assert abs(mask.sum() - total_ref) / total_ref < tol


def test_lung1_left_lung_on_patient_left(lung1):
    geo, _, res, _ = lung1
    assert np.allclose(geo.row_dir, [1, 0, 0])  # +x (patient left) is increasing column
    left = np.argwhere(res.masks["Lung-Left"])[:, 2].mean()
    right = np.argwhere(res.masks["Lung-Right"])[:, 2].mean()
    assert left > geo.shape[2] / 2 > right


@pytest.mark.parametrize("patient", ["STS_001", "STS_002", "STS_003"])
def test_sts_dangling_references_placed_by_z(test_data, patient):
    base = test_data(f"dicom/sts/{patient}/CT")
    geo = folder_geometry(base / "image")
    ss = read_rtstruct(next((base / "mask").iterdir()))
    gtv = ss.roi("GTV_Mass_CT")
    assert gtv is not None and not any(c.referenced_sop_uid in geo.sop_uids for c in gtv.contours)
    res = rasterise(ss, geo)
    mask = res.masks["GTV_Mass_CT"]
    planes = {round(float(c.points[0] @ geo.normal), 2) for c in gtv.contours}
    assert mask.any() and mask.any(axis=(1, 2)).sum() == len(planes)
    assert any("placed by z" in w for w in res.warnings)
    assert not any("dropped" in w for w in res.warnings)


EDGE = "dicom/rtstruct-edge/tests"


@pytest.fixture
def edge_ct(test_data):
    mock = test_data(f"{EDGE}/mock_data")
    return mock, ct_geometry([mock / "ct_1.dcm", mock / "ct_2.dcm"])


@pytest.mark.parametrize("name", ["mock_data/invalid_reference_rt.dcm",
                                  "mock_data/non_existent_reference_rt.dcm",
                                  "empty/dummy_rt.dcm"])
def test_edge_invalid_or_absent_references_warn(test_data, edge_ct, name):
    _, geo = edge_ct
    ss = read_rtstruct(test_data(f"{EDGE}/{name}"))
    assert ss.roi_names == ["ROI-1", "ROI-2", "ROI-3", "ROI-4"]
    assert (ss.referenced_series_uid is None) == ("non_existent" in name)
    res = rasterise(ss, geo)
    # Contours at z = 60 and 65 reference the two CT slices; those at z = 70 reference an
    # absent image, have no slice within 2.5 mm and are dropped with a warning per ROI.
    for roi in ss.roi_names:
        assert res.masks[roi].any(axis=(1, 2)).all()
        assert any(f"'{roi}'" in w and "dropped" in w and "70.00" in w for w in res.warnings)
    assert any("placed by z" in w for w in res.warnings)


def test_edge_frame_of_reference_mismatch_is_a_clear_error(test_data, edge_ct):
    _, geo = edge_ct
    ss = read_rtstruct(test_data(f"{EDGE}/mock_data/rt.dcm"))
    with pytest.raises(RTStructError) as info:
        rasterise(ss, geo)
    assert ss.frame_of_reference_uid in str(info.value)
    assert geo.frame_of_reference_uid in str(info.value) and "rt.dcm: " in str(info.value)


def test_edge_rt_utils_square_with_hole(test_data, edge_ct):
    # rt.dcm: a 24 mm square with an 8-point contour inside it on the first slice. Its
    # Frame of Reference differs from the CT's, so compare on the CT grid without one.
    _, geo = edge_ct
    ss = read_rtstruct(test_data(f"{EDGE}/mock_data/rt.dcm"))
    free = VolumeGeometry(geo.ipp, geo.row_dir, geo.col_dir, geo.pixel_spacing, geo.shape,
                          "", geo.sop_uids)
    mask = rasterise(ss, free).masks["ROI-1"]
    polys = [to_pixels(c.points, geo, 0) for c in ss.roi("ROI-1").contours]
    assert np.array_equal(mask[0], centres_inside(polys, geo.shape[1:]))
    area, _ = slice_reference(polys)
    assert not mask[1].any() and abs(mask[0].sum() - area) <= 0.5 * sum(map(perimeter, polys))


def test_edge_ct_file_and_empty_copy(test_data, edge_ct, tmp_path):
    mock, geo = edge_ct
    with pytest.raises(RTStructError, match="not an RT Structure Set"):
        read_rtstruct(mock / "ct_1.dcm")
    ds = pydicom.dcmread(test_data(f"{EDGE}/empty/dummy_rt.dcm"))
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    del ds.RTROIObservationsSequence
    ds.save_as(tmp_path / "empty_rt.dcm")
    ss = read_rtstruct(tmp_path / "empty_rt.dcm")
    res = rasterise(ss, geo)
    assert res.masks == {} and "no ROI" in res.warnings[0]


def test_edge_oblique_series_contour(test_data):
    geo = folder_geometry(test_data(f"{EDGE}/oriented_data"))
    assert abs(geo.normal[2]) < 0.95  # really oblique
    t = (np.arange(400) + 0.5) * 2 * np.pi / 400
    kij = np.stack([np.ones(400), 25 + 20 * np.sin(t), 50 + 20 * np.cos(t)], axis=1)
    from training.dicom.rtstruct import ROI, Contour, StructureSet

    ss = StructureSet("oblique.dcm", geo.frame_of_reference_uid,
                      (ROI(1, "disc", (Contour(geo.voxel_to_patient(kij), "CLOSED_PLANAR"),)),))
    mask = rasterise(ss, geo).masks["disc"]
    assert mask.sum() == mask[1].sum() and abs(mask.sum() - np.pi * 400) / (np.pi * 400) < 0.01
    assert np.array_equal(mask[1], centres_inside([kij[:, 1:]], geo.shape[1:]))
    assert np.allclose(np.argwhere(mask[1]).mean(axis=0), [25, 50], atol=1e-9)


def test_edge_one_slice_series(test_data):
    geo = folder_geometry(test_data(f"{EDGE}/one_slice_data"))
    assert geo.shape[0] == 1
    from training.dicom.rtstruct import ROI, Contour, StructureSet

    square = geo.voxel_to_patient(np.array([[0, 10.5, 20.5], [0, 10.5, 30.5], [0, 20.5, 30.5],
                                            [0, 20.5, 20.5]], dtype=float))
    away = square + 3.0 * geo.normal
    ss = StructureSet("one.dcm", "", (ROI(1, "sq", (Contour(square, "CLOSED_PLANAR"),)),
                                      ROI(2, "away", (Contour(away, "CLOSED_PLANAR"),))))
    res = rasterise(ss, geo)
    assert res.masks["sq"].sum() == 100 and not res.masks["away"].any()
    assert any("'away'" in w and "dropped" in w for w in res.warnings)


def test_pydicom_rtstruct_testfile():
    ss = read_rtstruct(get_testdata_file("rtstruct.dcm"))
    assert ss.roi_names == ["patient", "Isocenter 1", "Isocenter 2"]
    assert ss.roi("patient").color == (220, 160, 120)
    assert all(c.geometric_type == "POINT" for c in ss.roi("Isocenter 1").contours)
    assert ss.frame_of_reference_uid and roi_names(ss.path) == ss.roi_names
    zs = sorted({float(c.points[0, 2]) for c in ss.roi("patient").contours})
    ipp = np.array([[-250.0, -250.0, z] for z in zs])
    geo = VolumeGeometry(ipp, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (2.0, 2.0),
                         (len(zs), 256, 256), ss.frame_of_reference_uid)
    res = rasterise(ss, geo)
    assert set(res.masks) == {"patient"} and res.masks["patient"].any(axis=(1, 2)).all()
    assert sum("Isocenter" in w and "POINT" in w for w in res.warnings) == 2
