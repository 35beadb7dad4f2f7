"""RTSTRUCT rasterisation and labels on synthetic geometries (no real data needed).

Contours are built in voxel units and mapped to patient coordinates with
VolumeGeometry.voxel_to_patient, so expected areas and centroids are known analytically;
the polygon fill is checked against skimage.measure.points_in_poly.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage.measure import points_in_poly

from training.dicom.geometry import VolumeGeometry
from training.dicom.rtstruct import (
    ROI,
    Contour,
    RTStructError,
    StructureSet,
    exclusive_labels,
    fill_polygon_slices,
    fill_polygons,
    match_roi_names,
    normalise_roi_name,
    rasterise,
    read_rtstruct,
    roi_names,
)

FOR = "1.2.826.0.1.3680043.8.498.1"
SOPS = tuple(f"1.2.826.0.1.3680043.8.498.10.{k + 1}" for k in range(6))


def axial(shape=(6, 64, 72), spacing=(0.8, 0.6), dz=2.5, origin=(-20.0, -30.0, 10.0)):
    ipp = np.array(origin) + np.outer(np.arange(shape[0]) * dz, [0.0, 0.0, 1.0])
    return VolumeGeometry(
        ipp, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), spacing, shape, FOR, SOPS[: shape[0]]
    )


def oblique(shape=(4, 60, 56)):
    row = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    col = np.array([-np.sin(0.3) * 0.8, np.cos(0.3) * 0.8, 0.6])
    col /= np.linalg.norm(col)
    n = np.cross(row, col)
    ipp = np.array([10.0, -5.0, 2.0]) + np.outer(np.arange(shape[0]) * 2.5, n)
    return VolumeGeometry(ipp, row, col, (0.7, 0.9), shape, FOR, SOPS[: shape[0]])


def circle(geo, k, ci, cj, r, n=720):
    """Circle of radius r pixels about (ci, cj) on slice k, as (n, 3) LPS mm points.

    Vertices sit half a step off the axes: still mirror-symmetric about both (n divisible
    by 4), but none lands exactly on a voxel centre, where the tie-break of the even-odd
    rule would break the symmetry that makes centroids exact.
    """
    t = (np.arange(n) + 0.5) * 2 * np.pi / n
    kij = np.stack([np.full(n, float(k)), ci + r * np.sin(t), cj + r * np.cos(t)], axis=1)
    return geo.voxel_to_patient(kij)


def sset(*rois, for_uid=FOR, path="synthetic.dcm"):
    return StructureSet(path=path, frame_of_reference_uid=for_uid, rois=tuple(rois))


def roi(name, *contours, number=1):
    return ROI(number, name, tuple(contours))


def closed(points, ref=None):
    return Contour(np.asarray(points, dtype=float), "CLOSED_PLANAR", ref)


def centroid(mask2d):
    return np.argwhere(mask2d).mean(axis=0)


# -------------------------------------------------------------------------- polygon fill


def test_fill_matches_points_in_poly_on_random_polygons():
    rng = np.random.default_rng(0)
    ii, jj = np.mgrid[0:40, 0:50]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    for _ in range(20):
        n = rng.integers(3, 30)
        # Self-intersecting polygons too: both rules are even-odd.
        poly = np.stack([rng.uniform(-5, 45, n), rng.uniform(-5, 55, n)], axis=1)
        expected = points_in_poly(centres, poly).reshape(40, 50)
        assert np.array_equal(fill_polygons([poly], (40, 50)), expected)


def test_fill_combines_polygons_by_parity():
    rng = np.random.default_rng(1)
    ii, jj = np.mgrid[0:30, 0:30]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    polys = [np.stack([rng.uniform(0, 30, 8), rng.uniform(0, 30, 8)], axis=1) for _ in range(3)]
    expected = np.zeros(900, dtype=bool)
    for p in polys:
        expected ^= points_in_poly(centres, p)
    assert np.array_equal(fill_polygons(polys, (30, 30)), expected.reshape(30, 30))


def test_fill_outside_the_grid_is_empty_and_clipped_parts_stay():
    assert not fill_polygons([np.array([[-10.0, -10], [-10, -2], [-2, -2]])], (8, 8)).any()
    square = np.array([[-3.5, -3.5], [-3.5, 2.5], [2.5, 2.5], [2.5, -3.5]])
    assert fill_polygons([square], (8, 8)).sum() == 9  # centres (0..2, 0..2)


def test_fill_of_many_slices_at_once_matches_each_slice():
    """fill_polygon_slices batches every slice of an ROI; each slice must equal the even–odd
    rule of skimage's points_in_poly for that slice's polygons alone."""
    rng = np.random.default_rng(4)
    ii, jj = np.mgrid[0:25, 0:35]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    by_slice = {k: [np.stack([rng.uniform(-4, 29, m), rng.uniform(-4, 39, m)], axis=1)
                    for m in rng.integers(3, 25, size=rng.integers(1, 4))] for k in (0, 2, 3, 6)}
    by_slice[4] = []  # a slice listed without polygons stays empty
    got = fill_polygon_slices(by_slice, (7, 25, 35))
    for k in range(7):
        expected = np.zeros(25 * 35, dtype=bool)
        for p in by_slice.get(k, []):
            expected ^= points_in_poly(centres, p)
        assert np.array_equal(got[k], expected.reshape(25, 35)), k


# ------------------------------------------------------------------------ rasterisation


def test_circle_area_and_centroid_exact():
    geo = axial()
    ss = sset(roi("disc", closed(circle(geo, 2, 30.0, 33.5, 20.0), SOPS[2])))
    res = rasterise(ss, geo)
    m = res.masks["disc"]
    assert m.dtype == bool and m.shape == geo.shape
    assert m[2].sum() == m.sum()  # only its slice
    assert abs(m.sum() - np.pi * 400) / (np.pi * 400) < 0.01
    assert np.allclose(centroid(m[2]), [30.0, 33.5], atol=1e-9)
    assert res.warnings == []


def test_ring_hole_and_island_by_parity():
    geo = axial()
    outer = closed(circle(geo, 3, 32, 36, 20), SOPS[3])
    # Winding is irrelevant; an XOR contour inside the closed region cuts a hole.
    inner = Contour(circle(geo, 3, 32, 36, 10)[::-1], "CLOSED_PLANAR_XOR", SOPS[3])
    m = rasterise(sset(roi("ring", outer, inner)), geo).masks["ring"][3]
    assert abs(m.sum() - np.pi * 300) / (np.pi * 300) < 0.015
    assert not m[32, 36] and m[32, 36 + 15] and not m[32, 36 + 21]
    assert np.allclose(centroid(m), [32, 36], atol=1e-9)
    island = closed(circle(geo, 3, 32, 36, 4), SOPS[3])
    m2 = rasterise(sset(roi("ring", outer, inner, island)), geo).masks["ring"][3]
    assert m2[32, 36] and (m2 & ~m).sum() == m2[28:37, 32:41].sum()


def test_oblique_geometry_circle():
    geo = oblique()
    pts = circle(geo, 1, 29.0, 27.0, 20.0)
    # The contour really is oblique in patient space: it spans several mm in z.
    assert np.ptp(pts[:, 2]) > 10
    res = rasterise(sset(roi("disc", closed(pts))), geo)  # no reference: placed by z
    m = res.masks["disc"]
    assert m.sum() == m[1].sum()
    assert abs(m.sum() - np.pi * 400) / (np.pi * 400) < 0.01
    assert np.allclose(centroid(m[1]), [29.0, 27.0], atol=1e-9)


def test_in_plane_shift_per_slice_uses_each_slice_origin():
    # Gantry-tilt style: IPP moves in-plane from slice to slice (same directions).
    ipp = np.array([[0.0, 0.0, 0.0], [0.0, 1.5, 2.0], [0.0, 3.0, 4.0]])
    geo = VolumeGeometry(ipp, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (1.0, 1.0),
                         (3, 40, 40), FOR, SOPS[:3])
    m = rasterise(sset(roi("d", closed(circle(geo, 2, 20, 20, 8)))), geo).masks["d"]
    assert np.allclose(centroid(m[2]), [20, 20], atol=1e-9)


def test_dangling_reference_placed_by_z_and_far_contour_dropped():
    geo = axial()
    pos = geo.positions
    near = circle(geo, 4, 30, 30, 6)
    near[:, 2] += 0.4 * 2.5  # still nearest slice 4, within half a spacing
    far = circle(geo, 5, 30, 30, 6)
    far[:, 2] += 2.0  # 2 mm beyond the last slice: more than half of 2.5 mm
    by_ref = circle(geo, 1, 30, 30, 6)
    ss = sset(roi("gtv", closed(near, "9.9.9.dangling"), closed(far, "9.9.9.other"),
                  closed(by_ref, SOPS[1])))
    res = rasterise(ss, geo)
    per_slice = res.masks["gtv"].sum(axis=(1, 2))
    assert per_slice[4] > 0 and per_slice[1] > 0 and per_slice[[0, 2, 3, 5]].sum() == 0
    text = "\n".join(res.warnings)
    assert "placed by z" in text and "'gtv'" in text and "dropped" in text
    assert f"{pos[-1] + 2:.2f}" in text


def test_reference_wins_over_z():
    geo = axial()
    pts = circle(geo, 2, 30, 30, 6)
    res = rasterise(sset(roi("a", closed(pts, SOPS[3]))), geo)
    assert res.masks["a"][3].any() and not res.masks["a"][2].any()
    assert any("kept on that image" in w for w in res.warnings)


def test_finer_contour_planes_on_one_slice_do_not_cancel():
    geo = axial()
    a = circle(geo, 2, 30, 30, 10)
    b = a.copy()
    b[:, 2] += 1.0  # a second plane 1 mm above, nearest the same slice
    res = rasterise(sset(roi("a", closed(a), closed(b))), geo)
    assert res.masks["a"][2].sum() > 300
    assert any("nearer the same slice" in w for w in res.warnings)


def test_non_parallel_contour_dropped_with_warning():
    geo = axial()
    sag = np.array([[0.0, -20, 10], [0.0, -5, 10], [0.0, -5, 20], [0.0, -20, 20]])
    res = rasterise(sset(roi("sag", closed(sag)), roi("ok", closed(circle(geo, 0, 9, 9, 5)),
                                                      number=2)), geo)
    assert not res.masks["sag"].any() and res.masks["ok"].any()
    assert any("'sag'" in w and "not parallel" in w for w in res.warnings)


def test_frame_of_reference_mismatch_names_both():
    geo = axial()
    with pytest.raises(RTStructError) as info:
        rasterise(sset(roi("a", closed(circle(geo, 0, 9, 9, 5))), for_uid="1.2.3.4",
                       path="/x/rs.dcm"), geo)
    msg = str(info.value)
    assert msg.startswith("/x/rs.dcm: ") and "1.2.3.4" in msg and FOR in msg
    assert info.value.path == "/x/rs.dcm"


def test_points_only_and_contourless_rois_warn_without_mask():
    geo = axial()
    pts = Contour(np.array([[0.0, 0, 10]]), "POINT")
    line = Contour(np.array([[0.0, 0, 10], [5, 5, 10]]), "OPEN_PLANAR")
    ss = sset(roi("Isocenter", pts), roi("Line", line, pts, number=2), roi("Nothing", number=3),
              roi("disc", closed(circle(geo, 0, 9, 9, 5)), number=4))
    res = rasterise(ss, geo)
    assert set(res.masks) == {"disc"}
    for name in ("Isocenter", "Line", "Nothing"):
        assert any(f"'{name}'" in w and "no mask" in w for w in res.warnings)
    assert any("OPEN_PLANAR, POINT" in w for w in res.warnings)


def test_empty_structure_set():
    res = rasterise(sset(), axial())
    assert res.masks == {} and len(res.warnings) == 1 and "no ROI" in res.warnings[0]


def test_rasterise_speed_on_large_grid():
    import time

    geo = axial(shape=(40, 512, 512), spacing=(0.98, 0.98))
    # 40 slices × 4 ROIs × a 300-point contour each
    rois = [ROI(n, f"r{n}", tuple(closed(circle(geo, k, 256, 200 + 10 * n, 80, n=300))
                                  for k in range(40))) for n in range(4)]
    t = time.perf_counter()
    res = rasterise(sset(*rois), geo)
    assert time.perf_counter() - t < 5.0
    assert all(m.sum(axis=(1, 2)).min() > 0 for m in res.masks.values())


# ----------------------------------------------------------------------- names & labels


def test_match_roi_names_ignores_case_space_underscore_hyphen():
    available = ["Lung-Left", "LUNG_RIGHT", "GTV-1", "gtv 1", "Spinal Cord"]
    got = match_roi_names(available, ["lung left", "Lung-Right", "gtv 1", "spinal_cord", "Heart"])
    assert got == {"lung left": "Lung-Left", "Lung-Right": "LUNG_RIGHT", "gtv 1": "gtv 1",
                   "spinal_cord": "Spinal Cord", "Heart": None}
    assert match_roi_names(available, ["GTV_1"])["GTV_1"] == "GTV-1"  # first of equals
    assert normalise_roi_name(" Lung_Left - 2 ") == "lungleft2"


def test_exclusive_labels_priority_complement_and_missing():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True
    b[0, 1:3] = True
    masks = {"Lung_Left": a, "GTV-1": b}
    lab = exclusive_labels(masks, ("gtv 1", "lung-left", "Heart"))
    assert lab.dtype == np.uint8 and lab.shape == a.shape
    assert (lab[0, 1:3] == 1).all() and (lab[0, 0] == 2).all()
    assert (lab[0, 3] == 0).all() and (lab[1] == 0).all() and not (lab == 3).any()
    lab2 = exclusive_labels(masks, ("Lung_Left", "GTV-1"))
    assert (lab2[0, :2] == 1).all() and (lab2[0, 2] == 2).all()
    # One-hot view of the layout: every voxel in exactly one channel.
    onehot = np.eye(4, dtype=bool)[lab]
    assert (onehot.sum(-1) == 1).all()
    assert exclusive_labels({}, ("x",), shape=(1, 2, 2)).sum() == 0
    with pytest.raises(ValueError):
        exclusive_labels({}, ("x",))


# ------------------------------------------------------------------------ reading files


SERIES = "1.2.826.0.1.3680043.8.498.2"


def write_rtstruct(path, rois, for_uid=FOR, series_uid=SERIES, preamble=True):
    """Hand-built RTSTRUCT: rois = [(number, name, colour, [(type, points, ref), ...])]."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientName = "Secret^Name"
    fr = pydicom.Dataset()
    fr.FrameOfReferenceUID = for_uid
    if series_uid:
        se = pydicom.Dataset()
        se.SeriesInstanceUID = series_uid
        st = pydicom.Dataset()
        st.RTReferencedSeriesSequence = [se]
        fr.RTReferencedStudySequence = [st]
    ds.ReferencedFrameOfReferenceSequence = [fr]
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    for number, name, colour, contours in rois:
        if name is not None:
            item = pydicom.Dataset()
            item.ROINumber = number
            item.ROIName = name
            item.ReferencedFrameOfReferenceUID = for_uid
            ds.StructureSetROISequence.append(item)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber = number
        if colour:
            rc.ROIDisplayColor = list(colour)
        rc.ContourSequence = []
        for kind, pts, ref in contours:
            c = pydicom.Dataset()
            c.ContourGeometricType = kind
            flat = [round(float(v), 4) for v in np.asarray(pts).ravel()]
            c.NumberOfContourPoints = len(flat) // 3
            c.ContourData = flat
            if ref:
                img = pydicom.Dataset()
                img.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
                img.ReferencedSOPInstanceUID = ref
                c.ContourImageSequence = [img]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def test_read_hand_built_rtstruct(tmp_path):
    geo = axial()
    disc = circle(geo, 2, 30, 33.5, 20)
    path = write_rtstruct(tmp_path / "rs.dcm", [
        (3, "Disc", (255, 0, 10), [("CLOSED_PLANAR", disc, SOPS[2])]),
        (7, "Iso", None, [("POINT", [[1.0, 2.0, 3.0]], None)]),
        (9, None, (1, 2, 3), [("CLOSED_PLANAR", disc, None)]),  # undeclared ROI number
        (4, "Bad", None, [("CLOSED_PLANAR", [1.0, 2.0, 3.0, 4.0], None)]),
    ])
    ss = read_rtstruct(path)
    assert ss.path == str(path) and ss.frame_of_reference_uid == FOR
    assert ss.referenced_series_uid == SERIES
    assert ss.roi_names == ["Disc", "Iso", "Bad", "ROI 9"]
    d = ss.roi("disc")
    assert d.number == 3 and d.color == (255, 0, 10) and d.frame_of_reference_uid == FOR
    assert d.contours[0].points.shape == (720, 3) and d.contours[0].referenced_sop_uid == SOPS[2]
    assert np.allclose(d.contours[0].points, disc, atol=1e-4)
    assert ss.roi("Iso").contours[0].geometric_type == "POINT" and ss.roi("Iso").color is None
    assert any("'Bad'" in w and "multiple of 3" in w for w in ss.warnings)
    assert any("ROI Number 9" in w for w in ss.warnings)
    assert roi_names(path) == ["Disc", "Iso", "Bad"]
    res = rasterise(ss, geo)
    assert abs(res.masks["Disc"].sum() - np.pi * 400) / (np.pi * 400) < 0.01
    assert "Iso" not in res.masks and "Secret" not in "".join(res.warnings + list(ss.warnings))


def test_read_duplicate_names_and_no_preamble(tmp_path):
    sq = [[0.0, 0, 10], [5, 0, 10], [5, 5, 10]]
    path = write_rtstruct(tmp_path / "rs", [(1, "A", None, [("CLOSED_PLANAR", sq, None)]),
                                           (2, "A", None, [])], series_uid=None, preamble=False)
    ss = read_rtstruct(path)
    assert ss.roi_names == ["A", "A (2)"] and ss.referenced_series_uid is None
    assert any("used twice" in w for w in ss.warnings)


def test_read_empty_rtstruct(tmp_path):
    ss = read_rtstruct(write_rtstruct(tmp_path / "empty.dcm", []))
    assert ss.rois == () and roi_names(ss.path) == []
    res = rasterise(ss, axial())
    assert res.masks == {} and res.warnings


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.dcm"
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    ct = tmp_path / "ct.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Modality = "CT"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.save_as(ct, enforce_file_format=True)
    for p in (missing, junk, ct, tmp_path):
        for fn in (read_rtstruct, roi_names):
            with pytest.raises(RTStructError) as info:
                fn(p)
            assert str(info.value).startswith(f"{p}: ") and info.value.reason


def test_round_trip_through_the_phantom_writer(tmp_path):
    # training.dicom.phantom writes masks as RTSTRUCT contours; reading them back must give the
    # masks it started from, voxel for voxel.
    from test_rtstruct_data import folder_geometry

    from training.dicom import phantom

    info = phantom.write_patient(tmp_path, 0, slices=6, size=48, fsync=False)
    ph = phantom.phantom_patient(0, slices=6, size=48)
    ss = read_rtstruct(info.rtstruct)
    res = rasterise(ss, folder_geometry(info.ct_dir))
    assert res.warnings == [] and ss.warnings == ()
    assert set(res.masks) == set(ph.masks)
    for name, mask in ph.masks.items():
        assert np.array_equal(res.masks[name], mask), name
