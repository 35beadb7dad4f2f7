"""Mask area against polygon area on every real structure set and on the phantom.

The polygon area is computed independently with shapely: the contours of each ROI are
put on slices by their plane (nearest slice), mapped to pixel coordinates from the CT
headers read with pydicom (tests/test_rtstruct_data.py), combined by symmetric
difference (these sets hold no duplicated or crossing outlines, which the report must
confirm, so nested outlines are holes exactly as the rule says) and clipped to the image.
Target: on slices with ≥ 200 mask pixels, |mask − polygon| / polygon ≤ 2 %.

LUNG1-001 is the one exception, measured and explained: its outlines follow pixel edges
(vertices at half-pixel coordinates) with every corner cut by a short diagonal, so each
corner removes about 0.16 pixel² from the polygon that the voxel set it was traced from
still has. On thin, ragged slices (a lung tip of 440 pixels with a 171-pixel perimeter)
that is up to 4.7 %; 6 of its large-enough slices exceed 2 % (spinal cord 2.3 %, lungs
2.2–4.7 %). The rt-utils test ring (mock_data/rt.dcm) is 2.1 % off by one row of
voxel centres; see test_rtstruct_edge_sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.dicom.geometry import VolumeGeometry
from training.dicom.rtstruct import AREA_MIN_PIXELS, rasterise, read_rtstruct

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon, box  # noqa: E402

from test_rtstruct_data import EDGE, ct_geometry, folder_geometry, to_pixels  # noqa: E402


def polygon_areas(ss, geo) -> dict[str, dict[int, float]]:
    """ROI → slice → area (pixels²) of the contours' region, clipped to the image."""
    pos = geo.ipp @ geo.normal
    half_gap = 0.5 * float(np.diff(pos).max()) if len(pos) > 1 else 1.0
    field = box(-0.5, -0.5, geo.shape[1] - 0.5, geo.shape[2] - 0.5)
    out = {}
    for roi in ss.rois:
        by_slice: dict[int, list] = {}
        for c in roi.contours:
            if c.geometric_type != "CLOSED_PLANAR" or len(c.points) < 3:
                continue
            plane = float(np.mean(c.points @ geo.normal))
            k = int(np.argmin(np.abs(pos - plane)))
            if abs(pos[k] - plane) > half_gap + 1e-6:
                continue  # no slice within half a slice spacing: off the grid
            by_slice.setdefault(k, []).append(Polygon(to_pixels(c.points, geo, k)).buffer(0))
        areas = {}
        for k, polys in by_slice.items():
            region = polys[0]
            for p in polys[1:]:
                region = region.symmetric_difference(p)
            areas[k] = region.intersection(field).area
        out[roi.name] = areas
    return out


def check(ss, geo, *, limit=0.02, allowed_over=0):
    res = rasterise(ss, geo)
    ref = polygon_areas(ss, geo)
    over = []
    for name, mask in res.masks.items():
        fid = res.fidelity[name]
        assert fid["duplicates"] == 0 and fid["overlaps"] == 0, (name, fid)
        diffs = {}
        for k, area in ref[name].items():
            n = int(mask[k].sum())
            if n >= AREA_MIN_PIXELS:
                diffs[k] = abs(n - area) / area
        over += [(name, k, round(d, 4)) for k, d in diffs.items() if d > 0.02]
        assert all(d <= limit for d in diffs.values()), (name, max(diffs.values()))
        if diffs:  # the report's own (shoelace) figure agrees with shapely's
            worst = max(diffs, key=diffs.get)
            assert fid["area_max_diff"] == pytest.approx(diffs[worst], abs=1e-4)
            assert fid["area_max_diff_slice"] == worst
            assert fid["area_slices_checked"] == len(diffs)
        else:
            assert fid["area_max_diff"] is None
    assert len(over) <= allowed_over, over
    return res


def test_lung1(test_data):
    base = test_data("dicom/lung1-001")
    geo = folder_geometry(base / "image")
    res = check(read_rtstruct(base / "mask_rtstruct/1-1.dcm"), geo, limit=0.05, allowed_over=6)
    assert {r["holes"] for r in res.fidelity.values()} >= {9, 10}  # lungs with holes


@pytest.mark.parametrize("patient", ["STS_001", "STS_002", "STS_003"])
def test_sts(test_data, patient):
    base = test_data(f"dicom/sts/{patient}/CT")
    check(read_rtstruct(next((base / "mask").iterdir())), folder_geometry(base / "image"))


@pytest.mark.parametrize("name", ["mock_data/invalid_reference_rt.dcm",
                                  "mock_data/non_existent_reference_rt.dcm",
                                  "empty/dummy_rt.dcm", "mock_data/rt.dcm"])
def test_rtstruct_edge_sets(test_data, name):
    mock = test_data(f"{EDGE}/mock_data")
    geo = ct_geometry([mock / "ct_1.dcm", mock / "ct_2.dcm"])
    if name.endswith("/rt.dcm"):  # another frame of reference: compare on the grid alone
        geo = VolumeGeometry(geo.ipp, geo.row_dir, geo.col_dir, geo.pixel_spacing, geo.shape,
                             "", geo.sop_uids)
    # rt.dcm is a 1443-pixel ring (a 49-pixel square around a 31-pixel octagonal hole) whose
    # edges lie just past rows of voxel centres: one row of the hole is 31 pixels = 2.1 %.
    check(read_rtstruct(test_data(f"{EDGE}/{name}")), geo,
          limit=0.025 if name.endswith("/rt.dcm") else 0.02, allowed_over=1)


def test_phantom(tmp_path):
    from training.dicom.phantom import write_patient

    for i in range(2):
        info = write_patient(tmp_path, i, slices=12, size=96, fsync=False)
        res = check(read_rtstruct(info.rtstruct), folder_geometry(Path(info.ct_dir)))
        assert sum(f["area_slices_checked"] for f in res.fidelity.values()) >= 10
