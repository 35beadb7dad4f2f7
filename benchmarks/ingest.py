"""Ingest speed and memory against a bare pydicom loop, in one run.

    python benchmarks/ingest.py [--patients 8] [--slices 64] [--size 256] [--workers 2]
                                [--lung1 DIR] [--memory]

Measures, on a synthetic phantom cohort (uncompressed CT, written by training.dicom.phantom):
1. bare reference: for each series, pydicom.dcmread + pixel_array of every file, sort by
   ImagePositionPatient along the slice normal, HU = pixel × slope + intercept (float32);
2. `ingest` of the same CT files into a fresh workspace (hash, load, preprocess, HDF5,
   merge), `workers` processes; ratio = bare time / ingest time (≥ 1.5 is the target);
3. the same with the RTSTRUCTs (rasterisation of every ROI included);
3b. ingest with resampling (physical scale): the new-workspace default (1.0 mm pixels,
   128 mm field of view; the phantom has 1.5 mm pixels), and that plus z resampled to
   1.0 mm (3 mm slices → 3× the images), alternating with the bare loop like 2.;
4. opening the workspace and reading the first training batch (32 rows of the train
   split) with the DICOM folder renamed away (so touching it would fail), vs ingest time;
5. re-ingesting the unchanged folder;
6. --memory: peak RSS of an ingest subprocess (parent and worker processes) for a folder
   of N and of 3N patients of the same series size.
Files are read once before timing so both sides see the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import PreprocessConfig  # noqa: E402
from training.store.ingest import ingest  # noqa: E402
from training.dicom.phantom import generate_cohort  # noqa: E402
from training.store.workspace import Workspace, data_dir  # noqa: E402


def bare_load(series_dirs: list[Path]) -> int:
    """The reference: what any script would do to get HU volumes. Returns slices read."""
    n = 0
    for d in series_dirs:
        dss = [pydicom.dcmread(f) for f in sorted(d.iterdir()) if f.is_file()]
        iop = np.asarray(dss[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        dss.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
        vol = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope)
                        + float(ds.RescaleIntercept) for ds in dss])
        n += vol.shape[0]
    return n


def warm(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            p.read_bytes()


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


MEM_CHILD = """
import sys
from training.config import PreprocessConfig
from training.store.ingest import ingest
ingest([sys.argv[1]], sys.argv[2], PreprocessConfig(crop=int(sys.argv[4])), workers=int(sys.argv[3]))
"""


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def peak_rss(drop: Path, ws: Path, workers: int, crop: int) -> dict:
    """Peak resident memory of an ingest subprocess and of its largest worker, sampled
    from /proc every 10 ms (ru_maxrss would include the benchmark's own memory, which a
    child inherits across fork + exec on Linux)."""
    proc = subprocess.Popen([sys.executable, "-c", MEM_CHILD, str(drop), str(ws), str(workers), str(crop)],
                            cwd=ROOT)
    parent = worker = total = 0.0
    while proc.poll() is None:
        p = _rss_mb(proc.pid)
        kids = [_rss_mb(c) for c in _children(proc.pid)]
        parent = max(parent, p)
        worker = max([worker, *kids])
        total = max(total, p + sum(kids))
        time.sleep(0.01)
    if proc.returncode:
        raise RuntimeError(f"ingest subprocess failed ({proc.returncode})")
    return {"parent_mb": parent, "worker_mb": worker, "total_mb": total}


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the ingest's workers are
    joined when it returns), user + system: unlike wall time, not inflated by other load."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - w0, _cpu() - c0


def _resampled(run_ingest, drop_ct, drop_rt, series_dirs, n_files, repeat) -> None:
    """3b: ingest with and without resampling to mm, each paired with the bare loop; wall
    time and CPU time (the load-independent cost)."""
    rois = ("Lung-Left", "Lung-Right", "Heart")
    print("(3b) each row alternates bare loop / ingest; wall: best of each; CPU: best of each")
    for name, c, drop in (
            ("pixels: crop 128 (CT only)", PreprocessConfig(crop=128), drop_ct),
            ("1 mm, FOV 128 mm (CT only)", PreprocessConfig.new_workspace(), drop_ct),
            ("1 mm, FOV 128 mm, z 1 mm (CT only)", PreprocessConfig.new_workspace(z_spacing=1.0), drop_ct),
            ("pixels: crop 128, CT + RTSTRUCT", PreprocessConfig(crop=128, rois=rois), drop_rt),
            ("1 mm, FOV 128 mm, CT + RTSTRUCT", PreprocessConfig.new_workspace(rois=rois), drop_rt)):
        run_ingest(drop, c)
        bare, ing = [], []
        for _ in range(repeat):
            bare.append(_timed(lambda: bare_load(series_dirs)))
            ing.append(_timed(lambda: run_ingest(drop, c)))
        bw, bc = min(b[0] for b in bare), min(b[1] for b in bare)
        iw, ic = min(i[0] for i in ing), min(i[1] for i in ing)
        paired = sorted(b[0] / i[0] for b, i in zip(bare, ing))
        print(f"  {name:<36} wall {iw:5.2f} s (bare {bw:5.2f} s): {bw / iw:4.2f}× (pairs median "
              f"{paired[len(paired) // 2]:.2f}×, {paired[0]:.2f}–{paired[-1]:.2f}×);  CPU {ic:5.2f} s "
              f"(bare {bc:5.2f} s): {bc / ic:4.2f}×")
    # re-derive (no DICOM read) of a CT + RTSTRUCT workspace: pixels vs mm
    from training.store.ingest import rederive

    ws = run_ingest(drop_rt, PreprocessConfig(crop=128, rois=rois))
    for name, cfgs in (("pixels (crop 128 ↔ 120)", [PreprocessConfig(crop=120, rois=rois),
                                                     PreprocessConfig(crop=128, rois=rois)]),
                       ("to 1 mm, FOV 128 mm ↔ 120 mm", [PreprocessConfig.new_workspace(rois=rois),
                                                          PreprocessConfig.new_workspace(fov=120.0, rois=rois)])):
        times = []
        for k in range(repeat):
            t0 = time.perf_counter()
            rederive(ws, cfgs[k % 2], workers=2)
            times.append(time.perf_counter() - t0)
        print(f"re-derive CT + RTSTRUCT, {name:<29} {min(times):6.2f} s (best of {repeat})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lung1", type=Path, default=None, help="also time this CT folder (e.g. LUNG1-001/image)")
    ap.add_argument("--memory", action="store_true", help="peak RSS for N and 3N patients")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ctvae-bench-"))
    try:
        drop_rt = tmp / "cohort"
        t0 = time.perf_counter()
        infos = generate_cohort(drop_rt, args.patients, slices=args.slices, size=args.size, seed=0, fsync=False)
        gen_s = time.perf_counter() - t0
        drop_ct = tmp / "cohort_ct"
        shutil.copytree(drop_rt, drop_ct, ignore=shutil.ignore_patterns("RTSTRUCT"))
        series_dirs = [drop_ct / i.folder.name / "CT" for i in infos]
        n_files = sum(len(list(d.iterdir())) for d in series_dirs)
        mb = sum(f.stat().st_size for d in series_dirs for f in d.iterdir()) / 2**20
        warm(drop_rt)
        warm(drop_ct)
        crop = min(128, args.size)
        cfg = PreprocessConfig(crop=crop)
        print(f"cohort: {args.patients} patients × {args.slices} slices × {args.size}² px "
              f"({n_files} CT files, {mb:.0f} MiB, generated in {gen_s:.1f} s); workers={args.workers}")

        k = [0]

        def run_ingest(drop, c=cfg, workers=args.workers):
            k[0] += 1
            ws = tmp / f"w{k[0]}.h5"
            ingest([drop], ws, c, workers=workers)
            return ws

        # Bare loop and ingest alternate, so a noisy neighbour slows both sides alike;
        # the ratio is reported from the best of each and as the median of the pairs.
        run_ingest(drop_ct)  # first call: imports and the page cache of the new code paths
        bare_times, ing_times = [], []
        for _ in range(args.repeat):
            bare_times.append(best_of(lambda: bare_load(series_dirs), 1))
            ing_times.append(best_of(lambda: run_ingest(drop_ct), 1))
        t_bare, t_ing = min(bare_times), min(ing_times)
        paired = sorted(b / i for b, i in zip(bare_times, ing_times))
        t_ing1 = best_of(lambda: run_ingest(drop_ct, workers=1), args.repeat)
        t_ing_rt = best_of(lambda: run_ingest(drop_rt, cfg.replace(rois=("Lung-Left", "Lung-Right", "Heart"))),
                           args.repeat)
        ws = run_ingest(drop_rt, cfg.replace(rois=("Lung-Left", "Lung-Right", "Heart")))
        print(f"bare pydicom loop (CT only)       {t_bare:7.2f} s  {n_files / t_bare:7.0f} slices/s")
        print(f"ingest (CT only)                  {t_ing:7.2f} s  {n_files / t_ing:7.0f} slices/s  "
              f"ratio {t_bare / t_ing:.2f}× (target ≥ 1.5×); paired runs: median "
              f"{paired[len(paired) // 2]:.2f}×, range {paired[0]:.2f}–{paired[-1]:.2f}× ({len(paired)} pairs)")
        print(f"ingest (CT only), workers=1       {t_ing1:7.2f} s  {n_files / t_ing1:7.0f} slices/s  "
              f"ratio {t_bare / t_ing1:.2f}×")
        print(f"ingest (CT + RTSTRUCT, 6 ROIs)    {t_ing_rt:7.2f} s  {n_files / t_ing_rt:7.0f} slices/s  "
              f"ratio {t_bare / t_ing_rt:.2f}×")
        _resampled(run_ingest, drop_ct, drop_rt, series_dirs, n_files, args.repeat)

        ws_ct = run_ingest(drop_ct)
        hidden_rt, hidden_ct = tmp / "hidden_rt", tmp / "hidden_ct"
        drop_rt.rename(hidden_rt)  # opening must not need the DICOM files
        drop_ct.rename(hidden_ct)

        def open_and_read(path):
            with Workspace.open(path) as w:
                rows = w.index("train")[:32]
                w.read_labels(rows)
                return w.read_images(rows)

        for name, path, t_own in (("CT + RTSTRUCT", ws, t_ing_rt), ("CT only", ws_ct, t_ing)):
            t_open = best_of(lambda: open_and_read(path), 4 * args.repeat)
            batch = open_and_read(path)
            print(f"open + first batch {batch.shape}, {name} workspace  {t_open * 1000:6.1f} ms = "
                  f"{100 * t_open / t_own:.2f}% of its ingest (target < 1%)")
        hidden_rt.rename(drop_rt)
        hidden_ct.rename(drop_ct)
        t0 = time.perf_counter()
        rep = ingest([drop_rt], ws, cfg.replace(rois=("Lung-Left", "Lung-Right", "Heart")), workers=args.workers)
        t_re = time.perf_counter() - t0
        print(f"re-ingest unchanged folder        {t_re:7.3f} s  ({len(rep.unchanged)} unchanged, "
              f"{len(rep.added)} added) = {100 * t_re / t_ing_rt:.1f}% of ingest")
        size = ws.stat().st_size + sum(f.stat().st_size for f in data_dir(ws).iterdir()) if data_dir(ws).is_dir() else ws.stat().st_size
        print(f"workspace size {size / 2**20:.1f} MiB (head + {data_dir(ws).name}/)")

        if args.lung1:
            lung = args.lung1
            warm(lung)
            t_b = best_of(lambda: bare_load([lung]), args.repeat)
            t_i = best_of(lambda: run_ingest(lung), args.repeat)
            n = len(list(lung.iterdir()))
            print(f"LUNG1 ({n} slices, 512²): bare {t_b:.2f} s, ingest {t_i:.2f} s, ratio {t_b / t_i:.2f}× "
                  "(one series: one worker busy)")
            t_m = best_of(lambda: run_ingest(lung, PreprocessConfig.new_workspace()), args.repeat)
            print(f"LUNG1 resampled 0.977 → 1 mm, FOV 128 mm: ingest {t_m:.2f} s, ratio {t_b / t_m:.2f}×")

        if args.memory:
            small = tmp / "mem_small"
            big = tmp / "mem_big"
            n1 = max(2, args.patients // 2)
            big_infos = generate_cohort(big, 3 * n1, slices=args.slices, size=args.size, seed=1, fsync=False)
            for info in big_infos[:n1]:  # the same series, fewer of them
                shutil.copytree(info.folder, small / info.folder.name)
            m1 = peak_rss(small, tmp / "m1.h5", args.workers, crop)
            m2 = peak_rss(big, tmp / "m2.h5", args.workers, crop)
            vol_mb = args.slices * args.size * args.size * 4 / 2**20
            for n, m in ((n1, m1), (3 * n1, m2)):
                print(f"peak RSS, {n} patients: parent {m['parent_mb']:.0f} MiB, largest worker "
                      f"{m['worker_mb']:.0f} MiB, all processes {m['total_mb']:.0f} MiB")
            print(f"(one series as float32: {vol_mb:.0f} MiB; folder of {3 * n1}: {3 * n1 * vol_mb:.0f} MiB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
