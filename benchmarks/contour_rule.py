"""What the contour rule costs where it has work: duplicated outlines.

Usage: python benchmarks/contour_rule.py [--copies 18] [--slices 30] [--points 400]
           [--before OLD_RTSTRUCT_PY --data ../shared/data]

--before: an earlier training/dicom/rtstruct.py (e.g. `git show <commit>:training/dicom/
rtstruct.py > /tmp/old_rtstruct.py`); its rasterise and today's run alternately on
LUNG1-001 (with --data) and on a 64 × 256² phantom patient, best of 5, same masks checked.

A synthetic 30 × 512² series with one lung-sized outline (≈ 150 × 110 mm, 400 points) per
slice, stored `copies` times with 0.3 mm jitter (the pattern seen in real exports), then
the same set with one copy per slice. Reference: a bare skimage.draw.polygon fill of the
single copy per slice (what a reader that knew the duplicates would do). Prints the times
and ratios, best of 3.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from skimage.draw import polygon

from training.dicom.geometry import VolumeGeometry
from training.dicom.rtstruct import ROI, Contour, StructureSet, rasterise


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=18)
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--before", default=None)
    ap.add_argument("--data", default=None)
    a = ap.parse_args()
    if a.before:
        compare(a.before, a.data)
    nz, n = a.slices, 512
    ipp = np.outer(np.arange(nz) * 3.0, [0, 0, 1.0]) + [-250.0, -250.0, 0]
    geo = VolumeGeometry(ipp, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.977, 0.977),
                         (nz, n, n), "", ())
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, a.points, endpoint=False)
    many, one, pix = [], [], []
    for k in range(nz):
        r = 1 + 0.08 * np.sin(5 * t + k)
        base = np.stack([-60 + 75 * r * np.cos(t), 10 + 55 * r * np.sin(t), np.full_like(t, ipp[k, 2])], 1)
        one.append(Contour(base, "CLOSED_PLANAR"))
        for c in range(a.copies):
            j = rng.uniform(-0.3, 0.3, base.shape) * [1, 1, 0] if c else 0.0
            many.append(Contour(base + j, "CLOSED_PLANAR"))
        pix.append((k, (base[:, 1] - ipp[k, 1]) / 0.977, (base[:, 0] - ipp[k, 0]) / 0.977))

    def bare():
        m = np.zeros(geo.shape, bool)
        for k, i, j in pix:
            rr, cc = polygon(i, j, (n, n))
            m[k, rr, cc] = True
        return m

    def timed(fn):
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    ss_many = StructureSet("many.dcm", "", (ROI(1, "Lung", tuple(many)),))
    ss_one = StructureSet("one.dcm", "", (ROI(1, "Lung", tuple(one)),))
    t_many = timed(lambda: rasterise(ss_many, geo))
    t_one = timed(lambda: rasterise(ss_one, geo))
    t_bare = timed(bare)
    res = rasterise(ss_many, geo)
    fid = res.fidelity["Lung"]
    print(f"{nz} slices × {a.copies} copies of a {a.points}-point outline on {n}²")
    print(f"rasterise, {a.copies} copies per slice: {t_many:.3f} s "
          f"(duplicates collapsed: {fid['duplicates']}, max area difference "
          f"{fid['area_max_diff']:.2%})")
    print(f"rasterise, one copy per slice:        {t_one:.3f} s")
    print(f"bare skimage.draw.polygon, one copy:  {t_bare:.3f} s")
    print(f"ratio copies/one: {t_many / t_one:.1f}; copies/bare: {t_many / t_bare:.2f}; "
          f"masks equal to one copy's: {np.array_equal(res.masks['Lung'], rasterise(ss_one, geo).masks['Lung'])}")


def compare(before: str, data: str | None) -> None:
    import importlib.util
    import sys
    import tempfile
    from pathlib import Path

    from training.dicom.phantom import write_patient
    from training.dicom.rtstruct import read_rtstruct

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_rtstruct_data import folder_geometry

    spec = importlib.util.spec_from_file_location("old_rtstruct", before)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_rtstruct"] = old
    spec.loader.exec_module(old)
    cases = []
    if data:
        root = Path(data) / "dicom/lung1-001"
        cases.append(("LUNG1-001", folder_geometry(root / "image"),
                      read_rtstruct(root / "mask_rtstruct/1-1.dcm")))
    tmp = Path(tempfile.mkdtemp())
    info = write_patient(tmp, 0, slices=64, size=256, fsync=False)
    cases.append(("phantom 64 × 256²", folder_geometry(Path(info.ct_dir)), read_rtstruct(info.rtstruct)))
    for name, geo, ss in cases:
        times = {"before": [], "now": []}
        for _ in range(5):
            for key, fn in (("before", old.rasterise), ("now", rasterise)):
                t0 = time.perf_counter()
                fn(ss, geo)
                times[key].append(time.perf_counter() - t0)
        b, n = min(times["before"]), min(times["now"])
        m_old, m_new = old.rasterise(ss, geo).masks, rasterise(ss, geo).masks
        same = all(np.array_equal(m_old[k], m_new[k]) for k in m_old)
        print(f"{name}: before {b:.3f} s, now {n:.3f} s, ratio now/before {n / b:.2f}; "
              f"masks identical: {same}")


if __name__ == "__main__":
    main()
