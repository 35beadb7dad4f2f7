"""SIGKILL at random moments of an ingest leaves the workspace openable and every
committed patient intact; the next ingest completes the rest."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from training.dicom.phantom import generate_cohort
from training.store.workspace import Workspace, entry_files, has_leftovers, staging_dir


ROOT = Path(__file__).resolve().parents[1]
N, SLICES = 6, 6
CHILD = """
import sys
from training.config import PreprocessConfig
from training.store.ingest import ingest
def progress(phase, done, total, msg):
    if phase == "discover" and done == 0:
        print("START", flush=True)
    if phase == "merge" and done == 0:
        print("MERGE", flush=True)
ingest([sys.argv[1]], sys.argv[2], PreprocessConfig(crop=24, rois=("Heart",)), workers=1,
       progress=progress, on_patient=lambda p: print("COMMITTED", p.pseudonym, flush=True))
print("DONE", flush=True)
"""


def _check(ws_path: Path, committed: set[str]) -> int:
    if not ws_path.exists():
        assert not committed
        return 0
    with Workspace.open(ws_path) as ws:
        names = {p.pseudonym for p in ws.patients}
        assert committed <= names, (committed, names)
        for i, p in enumerate(ws.patients):
            assert p.n_images == SLICES
            rows = np.stack([np.full(SLICES, i), np.arange(SLICES)], axis=1)
            images = ws.read_images(rows)
            assert np.isfinite(images).all() and images.max() <= 1.0
            assert ws.read_labels(rows).max() == 1
        return len(names)


def _run_and_kill(drop: Path, ws_path: Path, *, delay: float | None = None,
                  at_line: str | None = None, after: str = "COMMITTED") -> set[str]:
    """Run the child; SIGKILL it `delay` s after it prints `after` or when it prints `at_line`.

    Returns the patients it reported as committed (printed after the commit returned).
    """
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(drop), str(ws_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    t0 = None
    while proc.poll() is None:
        if t0 is None and any(x.startswith(after) for x in list(lines)):
            t0 = time.monotonic()
        if (delay is not None and t0 is not None and time.monotonic() - t0 >= delay) or (
                at_line and any(x.startswith(at_line) for x in list(lines))):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    reader.join(5)
    return {x.split()[1] for x in lines if x.startswith("COMMITTED")}


@pytest.mark.slow
def test_sigkill_mid_ingest_keeps_committed_patients(tmp_path):
    drop = tmp_path / "drop"
    generate_cohort(drop, N, slices=SLICES, size=32, seed=0, fsync=False)
    rng = random.Random(0)
    # fresh workspaces killed at random moments while patients are committed (~20-80 ms
    # each here), and once before the first commit
    delays = [(0.0, "START")] + [(rng.uniform(0.0, 0.25), "COMMITTED") for _ in range(2)]
    for k, (delay, after) in enumerate(delays):
        ws_k = tmp_path / f"w{k}.h5"
        _check(ws_k, _run_and_kill(drop, ws_k, delay=delay, after=after))
    ws_path = tmp_path / "w.h5"
    seen = _run_and_kill(drop, ws_path, at_line="MERGE")  # killed while merging
    assert len(seen) == N
    _check(ws_path, seen)
    seen |= _run_and_kill(drop, ws_path, delay=0.0, after="START")  # while folding in leftovers
    _check(ws_path, seen)
    out = subprocess.run([sys.executable, "-c", CHILD, str(drop), str(ws_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert "DONE" in out.stdout, out.stderr
    assert _check(ws_path, seen) == N
    assert not has_leftovers(ws_path)
    assert sorted(staging_dir(ws_path).iterdir()) == sorted(entry_files(ws_path).values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".w.h5.")]
