"""Scale: an N-patient phantom cohort through ingest, add-one, re-derive and window open.

    python benchmarks/scale.py [--patients 300] [--slices 100] [--size 256] [--workers 2]
                               [--keep DIR] [--skip-window]

Builds a phantom cohort (training.dicom.phantom, 4 ROIs chosen of its 6, `--slices` slices of `--size`²),
then runs each step in its own process and reports wall time, bytes written and peak RSS:

1. ingest the N − 1 first patients (crop 192 → size 128 by default, thorax window, 4 ROIs);
2. the reference: ingest the last patient alone into an empty workspace;
3. add-one: ingest the last patient into the cohort's workspace;
4. re-derive every entry with another crop;
5. open the window on the workspace (offscreen) until its patient list is filled.

Bytes written: the sizes of the files the step created or replaced in the workspace
(a file rewritten counts whole; what a copy-the-workspace design writes), and the
bytes the step's processes passed to write() (/proc/self/io wchar, children included
once they are reaped; counts pipes too). Peak RSS: the largest of the step's process and
its worker processes (VmHWM of the step's process, ru_maxrss of its children).
Targets (issue 13): add-one ≤ 2× the reference;
workspace ≤ 0.6× the DICOM size; re-derive peak RSS ≤ the first ingest's.
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

ROOT = Path(__file__).resolve().parents[1]

STEP = r"""
import json, os, resource, sys, time
sys.path.insert(0, %(root)r)
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
if args["step"] == "ingest":
    from training.config import PreprocessConfig
    from training.store.ingest import ingest
    cfg = PreprocessConfig.from_json(args["cfg"])
    rep = ingest(args["paths"], args["ws"], cfg, workers=args["workers"])
    info = {"added": len(rep.added), "skipped": len(rep.skipped)}
elif args["step"] == "rederive":
    from training.config import PreprocessConfig
    from training.store.ingest import rederive
    rep = rederive(args["ws"], PreprocessConfig.from_json(args["cfg"]), workers=args["workers"])
    info = {"rederived": len(rep.rederived), "skipped": len(rep.skipped)}
elif args["step"] == "window":
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["CT_VAE_EXPLORER_DATA_DIR"] = args["userdata"]
    from explorer.app import create_app
    from explorer.main_window import MainWindow
    from explorer.settings import AppSettings
    from explorer.state import AppState
    app = create_app()
    t0 = time.perf_counter()
    w = MainWindow(AppState(AppSettings()))
    w.setProperty("quiet", True)
    w.resize(1400, 900)
    w.show()
    w.open_workspace(args["ws"])
    deadline = time.perf_counter() + 120
    while len(w.patient_list.pseudonyms()) < args["n"] and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.005)
    info = {"listed": len(w.patient_list.pseudonyms())}
seconds = time.perf_counter() - t0
io = {}
with open("/proc/self/io") as f:
    for line in f:
        k, v = line.split(":")
        io[k] = int(v)
# this process: VmHWM (ru_maxrss would carry the launching process's peak across exec);
# workers (forked from here): the largest child's ru_maxrss
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print("RESULT " + json.dumps({"seconds": seconds, "peak_rss": max(hwm, workers), "rss_main": hwm,
                              "rss_workers": workers, "wchar": io.get("wchar", 0), **info}))
"""


def tree_state(folder: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def written(before: dict, after: dict) -> int:
    """Bytes of files created or replaced between two tree states."""
    return sum(v[2] for k, v in after.items() if before.get(k, (None,))[:2] != v[:2])


def run_step(args: dict, folder: Path) -> dict:
    before = tree_state(folder)
    r = subprocess.run([sys.executable, "-c", STEP % {"root": str(ROOT)}, json.dumps(args)],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"step {args['step']} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.split("RESULT ", 1)[1].splitlines()[0])
    res["bytes_written"] = written(before, tree_state(folder))
    return res


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ws_size(ws: Path) -> int:
    return du(ws) + (du(ws.with_name(ws.name + ".d")) if ws.with_name(ws.name + ".d").exists() else 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--out-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="work folder (kept); default: a temporary one")
    ap.add_argument("--skip-window", action="store_true")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from training.config import PreprocessConfig
    from training.dicom.phantom import generate_cohort

    work = a.keep or Path(tempfile.mkdtemp(prefix="ctvae-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        dicom = work / "dicom"
        if not dicom.exists():
            t = time.perf_counter()
            generate_cohort(dicom / "all", a.patients, slices=a.slices, size=a.size, seed=0, fsync=False)
            folders = sorted(p for p in (dicom / "all").iterdir() if p.is_dir())
            (dicom / "cohort").mkdir()
            (dicom / "one").mkdir()
            for p in folders[:-1]:
                shutil.move(str(p), dicom / "cohort" / p.name)
            shutil.move(str(folders[-1]), dicom / "one" / folders[-1].name)
            shutil.rmtree(dicom / "all")
            print(f"phantom cohort: {a.patients} patients × {a.slices} slices × {a.size}², "
                  f"{time.perf_counter() - t:.0f} s to write", flush=True)
        rois = ("Lung-Left", "Lung-Right", "Heart", "Spinal-Cord")  # 4 of the phantom's 6
        cfg = PreprocessConfig.preset("thorax", crop=a.crop, size=a.out_size, rois=rois)
        dicom_bytes = du(dicom)
        ws_dir = work / "ws"
        if ws_dir.exists():
            shutil.rmtree(ws_dir)
        ws_dir.mkdir()
        ws = ws_dir / "w.h5"
        one_dir = work / "one"
        if one_dir.exists():
            shutil.rmtree(one_dir)
        one_dir.mkdir()
        common = {"workers": a.workers, "cfg": cfg.to_json()}
        results = {}
        results["ingest"] = run_step({"step": "ingest", "paths": [str(dicom / "cohort")],
                                      "ws": str(ws), **common}, ws_dir)
        print(f"ingest of {a.patients - 1}: {results['ingest']}", flush=True)
        results["one_into_empty"] = run_step({"step": "ingest", "paths": [str(dicom / "one")],
                                              "ws": str(one_dir / "w.h5"), **common}, one_dir)
        print(f"one patient into an empty workspace: {results['one_into_empty']}", flush=True)
        results["add_one"] = run_step({"step": "ingest", "paths": [str(dicom / "cohort"), str(dicom / "one")],
                                       "ws": str(ws), **common}, ws_dir)
        print(f"add one: {results['add_one']}", flush=True)
        size_after = ws_size(ws)
        results["rederive"] = run_step({"step": "rederive", "ws": str(ws), "workers": a.workers,
                                        "cfg": cfg.replace(crop=a.crop - 32).to_json()}, ws_dir)
        print(f"re-derive: {results['rederive']}", flush=True)
        if not a.skip_window:
            results["window"] = run_step({"step": "window", "ws": str(ws), "n": a.patients,
                                          "userdata": str(work / "userdata")}, ws_dir)
            print(f"window: {results['window']}", flush=True)
        mb = 1e6
        print()
        print(f"N = {a.patients} patients × {a.slices} slices of {a.size}², crop {a.crop} → "
              f"{a.out_size}, {a.workers} workers; DICOM {dicom_bytes / mb:.0f} MB")
        print(f"{'step':<34} {'time s':>8} {'written MB':>11} {'write() MB':>11} {'peak RSS MB':>12} "
              f"{'main / worker':>14}")
        names = {"ingest": f"ingest {a.patients - 1} patients", "one_into_empty": "1 patient, empty workspace",
                 "add_one": "add 1 patient to the cohort", "rederive": "re-derive (new crop)",
                 "window": "window open, list filled"}
        for k, r in results.items():
            print(f"{names[k]:<34} {r['seconds']:8.1f} {r['bytes_written'] / mb:11.1f} "
                  f"{r['wchar'] / mb:11.1f} {r['peak_rss'] / mb:12.0f} "
                  f"{r['rss_main'] / mb:6.0f} / {r['rss_workers'] / mb:.0f}")
        ratio_size = size_after / dicom_bytes
        add_ratio = results["add_one"]["seconds"] / results["one_into_empty"]["seconds"]
        rss_ratio = results["rederive"]["peak_rss"] / results["ingest"]["peak_rss"]
        print(f"workspace {size_after / mb:.0f} MB / DICOM {dicom_bytes / mb:.0f} MB = {ratio_size:.2f} (target ≤ 0.6)")
        print(f"add-one / one-into-empty time: {add_ratio:.2f} (target ≤ 2); bytes "
              f"{results['add_one']['bytes_written'] / mb:.1f} MB vs "
              f"{results['one_into_empty']['bytes_written'] / mb:.1f} MB")
        print(f"re-derive peak RSS / first ingest's: {rss_ratio:.2f} (target ≤ 1)")
        print(json.dumps({"patients": a.patients, "dicom_bytes": dicom_bytes, "workspace_bytes": size_after,
                          "steps": results}))
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
