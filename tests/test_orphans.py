"""Killing an ingest (SIGKILL, SIGTERM) leaves no worker running and no lock held: the
next ingest starts at once. Same for an ingest started from the window (a Job on a
QThread, forkserver workers) and for torchrun-style ranks whose launcher dies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.dicom.phantom import generate_cohort
from training.store.lock import workspace_lock
from training.store.workspace import WorkspaceError

ROOT = Path(__file__).resolve().parents[1]

WINDOW_CHILD = """
import sys
from pathlib import Path
from explorer.qt import QtCore
from explorer.workers import Job, run_ingest
from training.config import PreprocessConfig
from training.store.ingest import start_worker_server
app = QtCore.QCoreApplication([])
start_worker_server()
job = Job(run_ingest, [Path(sys.argv[1])], Path(sys.argv[2]), PreprocessConfig(crop=24), workers=2)
job.progress.connect(lambda d, t, s: print("PROGRESS", s, flush=True))
job.ended.connect(app.quit)
job.start()
app.exec()
print("DONE", job.error, flush=True)
"""

RANK_CHILD = """
import os, time
from training.store.lock import die_with_parent
die_with_parent()
os.write(1, b"RANK %d\\n" % os.getpid())  # one write under PIPE_BUF: never interleaved
time.sleep(60)
"""

LAUNCHER = """
import subprocess, sys, time
procs = [subprocess.Popen([sys.executable, "-c", sys.argv[1]]) for _ in range(2)]
time.sleep(60)
"""


def _children(pid: int) -> set[int]:
    """All descendants of pid (from /proc)."""
    parent_of: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    stat = fh.read().rsplit(b")", 1)[1].split()
                parent_of[int(d)] = int(stat[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for c, pp in parent_of.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except OSError:
        return False


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if _alive(p)}
        if not left:
            return set()
        time.sleep(0.05)
    return {p for p in pids if _alive(p)}


def _kill_at_random(cmd: list[str], delay: float, sig: int = signal.SIGKILL,
                    env: dict | None = None, workers: int = 0) -> tuple[set[int], int]:
    """Start cmd, watch its descendants, send sig `delay` s after at least `workers` of
    them are alive (at once when workers = 0). (descendants seen, how many were alive
    just before the signal); (…, -1) when cmd ended before it could be killed."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while workers and proc.poll() is None and time.monotonic() < deadline:
        kids = _children(proc.pid)
        seen |= kids
        if sum(_alive(p) for p in kids) >= workers:
            break
        time.sleep(0.01)
    t0 = time.monotonic()
    while time.monotonic() - t0 < delay and proc.poll() is None:
        seen |= _children(proc.pid)
        time.sleep(0.01)
    kids = _children(proc.pid)
    seen |= kids
    alive = sum(_alive(p) for p in kids)
    if proc.poll() is not None:
        return seen, -1
    proc.send_signal(sig)
    proc.wait()
    return seen, alive


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    return env


@pytest.fixture(scope="module")
def drop(tmp_path_factory):
    d = tmp_path_factory.mktemp("orph") / "drop"
    generate_cohort(d, 12, slices=12, size=48, seed=0, fsync=False)  # workers live ~0.5 s
    return d


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cli", "window"])
def test_killed_ingest_leaves_no_workers_and_no_lock(drop, tmp_path, how):
    rng = random.Random(1 if how == "cli" else 2)
    ws = tmp_path / "w.h5"
    if how == "cli":
        cmd = [sys.executable, "-m", "training.cli", "ingest", str(drop), "-w", str(ws),
               "--crop", "24", "--workers", "2", "--json"]
    else:
        cmd = [sys.executable, "-c", WINDOW_CHILD, str(drop), str(ws)]
    # each kill lands while the ingest's two workers are alive (the case that left
    # orphans holding the lock), a random moment after they started; the window's
    # descendants also hold the forkserver and its resource tracker
    need = 2 if how == "cli" else 4
    for k, sig in enumerate([signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL]):
        for _ in range(3):  # an ingest that ended before the kill: try again sooner
            seen, alive = _kill_at_random(cmd, rng.uniform(0.0, 0.15), sig, env=_env(), workers=need)
            if alive >= 0:
                break
            if ws.exists():
                import shutil

                shutil.rmtree(str(ws) + ".d", ignore_errors=True)
                ws.unlink()
        assert alive >= need, f"kill {k}: {alive} descendants alive when killed (wanted the workers)"
        left = _wait_gone(seen, 5.0)
        assert not left, f"kill {k}: processes {sorted(left)} outlived the ingest"
        t0 = time.monotonic()
        with workspace_lock(ws):  # free at once: nobody holds it
            pass
        assert time.monotonic() - t0 < 1.0
        assert not Path(str(ws) + ".lock").exists()
    out = subprocess.run([sys.executable, "-m", "training.cli", "ingest", str(drop), "-w", str(ws),
                          "--crop", "24", "--workers", "2"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]


def test_lock_names_its_holder_and_is_not_left_behind(tmp_path):
    ws = tmp_path / "w.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time\nfrom pathlib import Path\n"
         "from training.store.lock import workspace_lock\n"
         "with workspace_lock(Path(sys.argv[1])):\n print('HELD', flush=True); time.sleep(30)",
         str(ws)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(WorkspaceError, match=rf"another process is writing this workspace \(process {holder.pid} "):
            with workspace_lock(ws):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's file is stale: taken over, then removed
    assert Path(str(ws) + ".lock").exists()
    with workspace_lock(ws):
        with pytest.raises(WorkspaceError, match="in this process"):
            with workspace_lock(ws):
                pass
    assert not Path(str(ws) + ".lock").exists()


@pytest.mark.slow
def test_ranks_die_with_torchrun(tmp_path):
    import threading

    import numpy as np

    from training.store.workspace import write_arrays_workspace

    rng = np.random.default_rng(0)
    images = {f"P{p}": rng.random((4, 16, 16), dtype=np.float32) for p in range(4)}
    ws = write_arrays_workspace(tmp_path / "w.h5", images, test_fraction=0.25)
    env = _env()
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.cli", "train", "--workspace", str(ws), "--filters", "4", "--latent-dim", "2",
         "--n-blocks", "2", "--fc-units", "16", "--threads", "1", "--batch-size", "4",
         "--epochs", "100000", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[bytes] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, b"")), daemon=True).start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(b"rank 0 of 2" in x for x in list(lines)):
        time.sleep(0.05)
    ranks = _children(proc.pid)
    assert len(ranks) >= 2, b"".join(lines)[-2000:]
    proc.kill()
    proc.wait()
    assert not _wait_gone(ranks, 5.0)


@pytest.mark.slow
def test_ranks_die_with_their_launcher():
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, RANK_CHILD], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, text=True)
    armed = [proc.stdout.readline() for _ in range(2)]  # each prints once its signal is armed
    assert all(x.startswith("RANK") for x in armed), armed
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    proc.kill()
    proc.wait()
    assert not _wait_gone(ranks, 5.0)
