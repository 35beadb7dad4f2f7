"""The contour rule on hand-built RTSTRUCT files: duplicated outlines, nested holes,
CLOSEDPLANAR_XOR, overlapping outlines, the ROI frame-of-reference fallback, and the
per-ROI fidelity report.

Independent references: skimage's points_in_poly (voxel centres inside each polygon,
combined with numpy set operations the rule names) and shapely's polygon areas. Every
file is read twice: through the raw ROIContourSequence reader (with preamble) and
through the pydicom fallback (no preamble), which must agree.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage.measure import points_in_poly

from training.dicom.contour_rule import clip_to_box, is_duplicate, polygon_area
from training.dicom.rtstruct import rasterise, read_rtstruct

from test_rtstruct import FOR, SERIES, SOPS, axial, circle


def Polygon(points):
    """shapely's Polygon (a test dependency: only the area checks skip without it)."""
    geometry = pytest.importorskip("shapely.geometry")
    return geometry.Polygon(points)

OTHER_FOR = "1.2.826.0.1.3680043.8.498.77"


def write_set(path, rois, *, for_uid=FOR, series_uid=SERIES, extra_frames=(), preamble=True):
    """rois: [(number, name, roi_frame_uid, [(type, (n, 3) points, ref sop)])]."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    frames = []
    for uid in (for_uid, *extra_frames):
        fr = pydicom.Dataset()
        fr.FrameOfReferenceUID = uid
        if uid == for_uid and series_uid:
            se = pydicom.Dataset()
            se.SeriesInstanceUID = series_uid
            st = pydicom.Dataset()
            st.RTReferencedSeriesSequence = [se]
            fr.RTReferencedStudySequence = [st]
        frames.append(fr)
    ds.ReferencedFrameOfReferenceSequence = frames
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    for number, name, roi_for, contours in rois:
        item = pydicom.Dataset()
        item.ROINumber = number
        item.ROIName = name
        item.ReferencedFrameOfReferenceUID = roi_for
        ds.StructureSetROISequence.append(item)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber = number
        rc.ContourSequence = []
        for kind, pts, ref in contours:
            c = pydicom.Dataset()
            c.ContourGeometricType = kind
            flat = [round(float(v), 5) for v in np.asarray(pts).ravel()]
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


@pytest.fixture(params=["raw reader", "pydicom fallback"])
def reader(request, tmp_path):
    """Write and read a structure set the way the parameter names; both must agree."""
    preamble = request.param == "raw reader"
    count = [0]

    def read(rois, **kw):
        count[0] += 1
        p = write_set(tmp_path / f"rs{count[0]}.dcm", rois, preamble=preamble, **kw)
        return read_rtstruct(p)

    return read


GEO = axial(shape=(6, 64, 72))
CENTRES = np.stack(np.mgrid[0:64, 0:72], axis=-1).reshape(-1, 2).astype(float)


def px(geo, k, pts):
    """LPS points of slice k → fractional (i, j), independently of the rasteriser."""
    d = np.asarray(pts) - geo.ipp[k]
    return np.stack([d @ geo.col_dir / geo.pixel_spacing[0], d @ geo.row_dir / geo.pixel_spacing[1]], 1)


def inside(geo, k, pts):
    return points_in_poly(CENTRES, px(geo, k, pts)).reshape(geo.shape[1:])


def shp(geo, k, pts):
    return Polygon(px(geo, k, pts)).buffer(0)


def one(rois, reader, ct_series=SERIES, **kw):
    """Write, read and rasterise on GEO; ct_series: the CT's SeriesInstanceUID."""
    ss = reader(rois, **kw)
    return ss, rasterise(ss, GEO, series_uid=ct_series)


def disc(k, ci, cj, r, n=240, start=0, reverse=False, jitter=0.0, seed=0):
    pts = circle(GEO, k, ci, cj, r, n=n)
    pts = np.roll(pts, start, axis=0)
    if reverse:
        pts = pts[::-1]
    if jitter:
        d = np.random.default_rng(seed).uniform(-jitter, jitter, pts.shape)
        d[:, 2] = 0.0  # in-plane jitter only (the plane stays the slice's)
        pts = pts + d
    return pts


def C(pts, k=2, kind="CLOSED_PLANAR"):
    return (kind, pts, SOPS[k])


# ------------------------------------------------------------------------------ duplicates


@pytest.mark.parametrize("copies", [2, 3, 4, 18])
def test_exact_duplicates_count_once_even_and_odd(reader, copies):
    d = disc(2, 30, 35, 18)
    ss, res = one([(1, "Lung", FOR, [C(d)] * copies)], reader)
    m = res.masks["Lung"]
    assert np.array_equal(m[2], inside(GEO, 2, d)) and m.sum() == m[2].sum()
    fid = res.fidelity["Lung"]
    assert fid["duplicates"] == copies - 1 and fid["contours"] == copies and fid["holes"] == 0
    assert any("duplicated outline" in w for w in res.warnings)


@pytest.mark.parametrize("variant", ["jitter 0.4 mm", "reversed", "other start point",
                                     "reversed, start and jitter"])
def test_perturbed_duplicates_count_once(reader, variant):
    base = disc(2, 30, 35, 18)
    kw = {"jitter 0.4 mm": dict(jitter=0.4), "reversed": dict(reverse=True),
          "other start point": dict(start=77),
          "reversed, start and jitter": dict(reverse=True, start=33, jitter=0.3, seed=5)}[variant]
    copies = [C(base)] + [C(disc(2, 30, 35, 18, **{**kw, "seed": s + 1})) for s in range(3)]
    _, res = one([(1, "Lung", FOR, copies)], reader)
    m = res.masks["Lung"][2]
    assert res.fidelity["Lung"]["duplicates"] == 3
    # the first copy is kept: voxel-identical to it alone
    assert np.array_equal(m, inside(GEO, 2, base))


def test_duplicate_on_one_slice_only(reader):
    rois = [(1, "Lung", FOR, [C(disc(1, 30, 35, 15), 1), C(disc(2, 30, 35, 16), 2),
                              C(disc(2, 30, 35, 16), 2), C(disc(3, 30, 35, 15), 3)])]
    _, res = one(rois, reader)
    m = res.masks["Lung"]
    for k in (1, 2, 3):
        assert m[k].sum() > 600, k  # the doubled slice is not erased
    assert res.fidelity["Lung"]["duplicates"] == 1


def test_copy_shifted_by_a_few_mm_is_not_a_duplicate_and_unites(reader):
    a = disc(2, 30, 30, 15)
    b = a + np.array([3.0, 0.0, 0.0])  # 3 mm along x (5 columns at 0.6 mm)
    _, res = one([(1, "Lung", FOR, [C(a), C(b)])], reader)
    fid = res.fidelity["Lung"]
    assert fid["duplicates"] == 0 and fid["overlaps"] == 1 and fid["holes"] == 0
    expected = inside(GEO, 2, a) | inside(GEO, 2, b)  # union, not the even-odd lens hole
    assert np.array_equal(res.masks["Lung"][2], expected)
    area = shp(GEO, 2, a).union(shp(GEO, 2, b)).area
    assert abs(expected.sum() - area) / area < 0.02


def test_duplicate_tolerance_is_one_millimetre():
    sq = np.array([[0.0, 0.0], [0, 20], [20, 20], [20, 0]])
    # moved 0.6 mm in y and x: each vertex moves 0.85 mm
    assert is_duplicate(sq, sq + 0.6, (1.0, 1.0))
    assert not is_duplicate(sq, sq + 0.9, (1.0, 1.0))  # a corner 1.27 mm from the other's
    assert is_duplicate(sq[::-1], np.roll(sq, 2, axis=0), (1.0, 1.0))
    assert not is_duplicate(sq, sq + [1.5, 0.0], (1.0, 1.0))
    assert not is_duplicate(sq, sq + [0.0, 2.2], (1.0, 0.5))  # 1.1 mm along x
    assert is_duplicate(sq, sq + [0.0, 1.8], (1.0, 0.5))  # 0.9 mm along x


# ------------------------------------------------------------------------- holes and XOR


def test_nested_outline_is_a_hole_and_island_fills_again(reader):
    outer, hole, island = disc(2, 32, 36, 20), disc(2, 32, 36, 10), disc(2, 32, 36, 4)
    _, res = one([(1, "Ring", FOR, [C(hole), C(outer), C(island)])], reader)  # any order
    fid = res.fidelity["Ring"]
    assert fid["holes"] == 1 and fid["duplicates"] == 0 and fid["overlaps"] == 0
    expected = (inside(GEO, 2, outer) & ~inside(GEO, 2, hole)) | inside(GEO, 2, island)
    assert np.array_equal(res.masks["Ring"][2], expected)
    area = shp(GEO, 2, outer).difference(shp(GEO, 2, hole)).union(shp(GEO, 2, island)).area
    assert abs(expected.sum() - area) / area < 0.02
    assert fid["area_max_diff"] == pytest.approx(abs(expected.sum() - area) / area, abs=1e-4)


def test_duplicated_hole_still_a_hole(reader):
    outer, hole = disc(2, 32, 36, 20), disc(2, 32, 36, 10)
    _, res = one([(1, "Ring", FOR, [C(outer), C(hole), C(hole[::-1]), C(outer)])], reader)
    assert np.array_equal(res.masks["Ring"][2], inside(GEO, 2, outer) & ~inside(GEO, 2, hole))
    assert res.fidelity["Ring"]["duplicates"] == 2 and res.fidelity["Ring"]["holes"] == 1


def test_closedplanar_xor_is_exclusive_or(reader):
    a, b = disc(2, 30, 30, 14), disc(2, 30, 40, 14)
    x = "CLOSEDPLANAR_XOR"
    _, res = one([(1, "X", FOR, [C(a, kind=x), C(b, kind=x)]),
                  (2, "Cancel", FOR, [C(a, kind=x), C(a, kind=x)])], reader)
    expected = inside(GEO, 2, a) ^ inside(GEO, 2, b)
    assert np.array_equal(res.masks["X"][2], expected)
    area = shp(GEO, 2, a).symmetric_difference(shp(GEO, 2, b)).area
    assert abs(expected.sum() - area) / area < 0.02
    assert res.fidelity["X"]["xor"] == 2 and res.fidelity["X"]["duplicates"] == 0
    assert not res.masks["Cancel"].any()  # identical XOR contours cancel, as the type says


def test_xor_contour_inside_a_closed_outline_cuts_a_hole(reader):
    outer, inner = disc(2, 32, 36, 20), disc(2, 32, 36, 8)
    _, res = one([(1, "Mix", FOR, [C(outer), C(inner, kind="CLOSEDPLANAR_XOR")])], reader)
    assert np.array_equal(res.masks["Mix"][2], inside(GEO, 2, outer) & ~inside(GEO, 2, inner))


def test_overlapping_non_nested_outlines_unite(reader):
    """Two discs overlapping by about half, a third crossing both: the union."""
    polys = [disc(2, 30, 28, 12), disc(2, 30, 40, 12), disc(2, 42, 34, 9)]
    _, res = one([(1, "U", FOR, [C(p) for p in polys])], reader)
    expected = np.zeros(GEO.shape[1:], bool)
    union = shp(GEO, 2, polys[0])
    for p in polys:
        expected |= inside(GEO, 2, p)
        union = union.union(shp(GEO, 2, p))
    assert np.array_equal(res.masks["U"][2], expected)
    assert res.fidelity["U"]["overlaps"] == 3
    assert res.fidelity["U"]["area_max_diff"] == pytest.approx(
        abs(expected.sum() - union.area) / union.area, abs=2e-3)  # supersampled polygon area


def test_hole_inside_two_overlapping_outlines_stays_a_hole(reader):
    a, b, hole = disc(2, 32, 30, 16), disc(2, 32, 40, 16), disc(2, 32, 35, 5)
    _, res = one([(1, "H", FOR, [C(a), C(b), C(hole)])], reader)
    expected = (inside(GEO, 2, a) | inside(GEO, 2, b)) & ~inside(GEO, 2, hole)
    assert np.array_equal(res.masks["H"][2], expected)
    assert res.fidelity["H"]["holes"] == 1


# ------------------------------------------------------------------------ skipped contours


def test_skipped_contours_are_counted_by_reason(reader):
    d = disc(2, 30, 35, 12)
    far = disc(2, 30, 35, 12) + GEO.normal * 40.0  # 40 mm beyond the slices
    away = disc(2, 30, 35, 5) + np.array([500.0, 0, 0])  # in-plane far outside the image
    rois = [(1, "S", FOR, [C(d), ("POINT", d[:1], SOPS[2]), ("OPEN_PLANAR", d[:20], SOPS[2]),
                           ("CLOSED_PLANAR", d[:2], SOPS[2]), ("CLOSED_PLANAR", far, None),
                           ("CLOSED_PLANAR", away, None)])]
    _, res = one(rois, reader)
    fid = res.fidelity["S"]
    assert fid["contours"] == 6
    assert fid["skipped"] == {"point": 1, "open": 1, "fewer than 3 points": 1, "off the grid": 1,
                              "outside the image (in-plane)": 1}
    assert np.array_equal(res.masks["S"][2], inside(GEO, 2, d))


# -------------------------------------------------------------------- frame of reference


def test_roi_frame_naming_no_frame_of_the_file_falls_back_with_a_warning(reader):
    d = disc(2, 30, 35, 12)
    ss, res = one([(1, "GTV", OTHER_FOR, [C(d)]), (2, "Body", FOR, [C(disc(2, 30, 35, 25))])],
                  reader)
    assert np.array_equal(res.masks["GTV"][2], inside(GEO, 2, d))
    assert res.fidelity["GTV"]["frame"] == "structure set's (fallback)"
    assert res.fidelity["Body"]["frame"] == "own"
    assert any("GTV" in w and OTHER_FOR in w and "rasterised" in w for w in res.warnings)


def test_roi_frame_fallback_needs_the_series_to_match(reader):
    d = disc(2, 30, 35, 12)
    _, res = one([(1, "GTV", OTHER_FOR, [C(d)])], reader, ct_series="1.2.3.4.5")
    assert "GTV" not in res.masks
    _, res = one([(1, "GTV", OTHER_FOR, [C(d)])], reader, series_uid="")  # names no series
    assert "GTV" not in res.masks and res.fidelity["GTV"]["frame"] == "mismatch"
    assert res.fidelity["GTV"]["skipped"] == {"frame of reference not the CT's": 1}


def test_roi_frame_listed_in_the_file_is_a_real_mismatch(reader):
    d = disc(2, 30, 35, 12)
    _, res = one([(1, "GTV", OTHER_FOR, [C(d)])], reader, extra_frames=(OTHER_FOR,))
    assert "GTV" not in res.masks
    assert any("not the CT's" in w for w in res.warnings)


# ----------------------------------------------------------------------- polygon geometry


def test_clipped_area_matches_shapely():
    rng = np.random.default_rng(3)
    box = Polygon([(-0.5, -0.5), (-0.5, 39.5), (29.5, 39.5), (29.5, -0.5)])
    for _ in range(30):
        t = np.sort(rng.uniform(0, 2 * np.pi, 12))
        r = rng.uniform(5, 25, 12)
        p = np.stack([15 + r * np.sin(t), 20 + r * np.cos(t)], 1)  # star-shaped, simple
        ref = Polygon(p).intersection(box).area
        assert polygon_area(clip_to_box(p, -0.5, 29.5, -0.5, 39.5)) == pytest.approx(ref, rel=1e-9)
