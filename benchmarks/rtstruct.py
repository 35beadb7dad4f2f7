"""Rasterise LUNG1-001's RTSTRUCT: training.dicom.rtstruct vs a bare skimage.draw.polygon loop.

Usage: python benchmarks/rtstruct.py ../shared/data
"""
import sys, time
from pathlib import Path
import numpy as np
from skimage.draw import polygon
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_rtstruct_data import folder_geometry, to_pixels
from training.dicom.rtstruct import rasterise, read_rtstruct

root = Path(sys.argv[1]) / "dicom/lung1-001"
geo = folder_geometry(root / "image")
t = time.perf_counter(); ss = read_rtstruct(root / "mask_rtstruct/1-1.dcm"); t_read = time.perf_counter() - t
def ours():
    return rasterise(ss, geo).masks
def bare():
    idx = {u: k for k, u in enumerate(geo.sop_uids)}
    out = {}
    for roi in ss.rois:
        m = np.zeros(geo.shape, bool)
        for c in roi.contours:
            k = idx[c.referenced_sop_uid]
            p = to_pixels(c.points, geo, k)
            rr, cc = polygon(p[:, 0], p[:, 1], geo.shape[1:])
            s = np.zeros(geo.shape[1:], bool); s[rr, cc] = True
            m[k] ^= s
        out[roi.name] = m
    return out
for name, fn in [("training.dicom.rtstruct.rasterise", ours), ("bare skimage.draw.polygon", bare)]:
    best = min((lambda: (lambda t0: (fn(), time.perf_counter() - t0)[1])(time.perf_counter()))() for _ in range(3))
    print(f"{name}: {best:.3f} s (best of 3)")
    if name.startswith("training"): t_ours = best
    else: t_bare = best
a, b = ours(), bare()
print(f"read_rtstruct: {t_read:.3f} s; ratio ours/bare: {t_ours / t_bare:.2f}")
print("voxels differing from skimage.draw.polygon (different centre convention):",
      {k: int((a[k] ^ b[k]).sum()) for k in a}, "of", {k: int(a[k].sum()) for k in a})
