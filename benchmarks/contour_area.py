"""Mask area against polygon area (issue 11's target: within 2 % on slices with ≥ 200 ROI
pixels) on every structure set in ../shared/data and two phantom patients.

    python benchmarks/contour_area.py [--data ../shared/data]

The polygon areas are tests/test_fidelity_data.py's independent shapely computation;
prints, per structure set, the slices checked, the largest and median relative
difference and how many slices are over 2 %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_fidelity_data import polygon_areas  # noqa: E402
from test_rtstruct_data import EDGE, ct_geometry, folder_geometry  # noqa: E402

from training.dicom.geometry import VolumeGeometry  # noqa: E402
from training.dicom.phantom import write_patient  # noqa: E402
from training.dicom.rtstruct import AREA_MIN_PIXELS, rasterise, read_rtstruct  # noqa: E402


def report(label: str, ss, geo) -> None:
    res = rasterise(ss, geo)
    ref = polygon_areas(ss, geo)
    diffs = [abs(int(mask[k].sum()) - a) / a for name, mask in res.masks.items()
             for k, a in ref[name].items() if int(mask[k].sum()) >= AREA_MIN_PIXELS]
    if not diffs:
        print(f"{label}: no slice with ≥ {AREA_MIN_PIXELS} ROI pixels")
        return
    d = np.array(diffs) * 100
    print(f"{label}: {len(d)} slices checked, max {d.max():.2f} %, median {np.median(d):.2f} %, "
          f"over 2 %: {int((d > 2).sum())}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    data = ap.parse_args(argv).data
    base = data / "dicom/lung1-001"
    report("LUNG1-001", read_rtstruct(base / "mask_rtstruct/1-1.dcm"), folder_geometry(base / "image"))
    for p in ("STS_001", "STS_002", "STS_003"):
        base = data / f"dicom/sts/{p}/CT"
        report(p, read_rtstruct(next((base / "mask").iterdir())), folder_geometry(base / "image"))
    mock = data / EDGE / "mock_data"
    geo = ct_geometry([mock / "ct_1.dcm", mock / "ct_2.dcm"])
    for name in ("mock_data/invalid_reference_rt.dcm", "mock_data/non_existent_reference_rt.dcm",
                 "empty/dummy_rt.dcm", "mock_data/rt.dcm"):
        g = geo
        if name.endswith("/rt.dcm"):  # another frame of reference: compare on the grid alone
            g = VolumeGeometry(geo.ipp, geo.row_dir, geo.col_dir, geo.pixel_spacing, geo.shape, "", geo.sop_uids)
        report(f"rt-utils {name}", read_rtstruct(data / EDGE / name), g)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            info = write_patient(Path(tmp), i, slices=12, size=96, fsync=False)
            report(f"phantom patient {i}", read_rtstruct(info.rtstruct), folder_geometry(Path(info.ct_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
