"""`ct-vae train` end to end, and a training process killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.vae.checkpoint import load_checkpoint
from training.cli import main
from training.store.workspace import write_arrays_workspace

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _workspace(path, n_patients=4, n_images=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = {f"P{p}": rng.random((n_images, size, size), dtype=np.float32) for p in range(n_patients)}
    labels = {k: (v > 0.6).astype(np.uint8) for k, v in images.items()}
    return write_arrays_workspace(path, images, labels, roi_names=("A",), test_fraction=0.25)


SMALL = ["--filters", "4", "--latent-dim", "2", "--n-blocks", "2", "--fc-units", "8", "--threads", "1"]


def test_cli_trains_logs_json_resumes_and_refuses_to_overwrite(tmp_path, capsys):
    ws = _workspace(tmp_path / "w.h5")
    toml = tmp_path / "s.toml"
    toml.write_text("epochs = 5\nbatch_size = 4\n[model]\nfilters = 8\n", encoding="utf-8")
    out = tmp_path / "run"
    rc = main(["train", "--workspace", str(ws), "--out", str(out), "--config", str(toml), *SMALL,
               "--epochs", "2", "--checkpoint-every", "1", "--log-json"])
    assert rc == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["epoch"] for l in lines[:-1]] == [1, 2]
    summary = lines[-1]["summary"]
    assert summary["status"] == "finished" and summary["train_images_per_s"] > 0
    ck = load_checkpoint(out / "last.pt")
    assert ck.epoch == 2 and ck.model_config.filters == 4  # the flag beat the file
    assert ck.train_config.batch_size == 4  # from the file
    assert ck.model_config.n_classes == 2 and ck.model_config.input_size == 16  # from the workspace
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]) == 2 and history["preprocess_config"]["rois"] == ["A"]

    assert main(["train", "--workspace", str(ws), "--out", str(out), *SMALL]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--workspace", str(ws), "--out", str(out), "--resume", "--epochs", "3"]) == 0
    assert load_checkpoint(out / "last.pt").epoch == 3
    assert main(["train", "--workspace", str(ws), "--out", str(out), "--resume", "--latent-dim", "5"]) == 2
    assert "cannot change" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n", encoding="utf-8")
    assert main(["train", "--workspace", str(ws), "--out", str(tmp_path / "r2"), "--config", str(bad)]) == 2
    assert "unknown setting nonsense" in capsys.readouterr().err


def _completed_epochs(out: Path) -> int:
    try:
        return len(json.loads((out / "history.json").read_text())["history"])
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkill_at_a_random_moment_loses_at_most_one_checkpoint_interval(tmp_path):
    ws = _workspace(tmp_path / "w.h5", n_patients=8, n_images=8, size=32)
    out = tmp_path / "run"
    # Far more epochs than can run before the kill, whatever the machine's speed; the
    # resumed run is then asked to stop two epochs after the last checkpoint.
    every, epochs = 2, 10_000
    cmd = [sys.executable, "-m", "training.cli", "train", "--workspace", str(ws), "--out", str(out),
           "--epochs", str(epochs), "--batch-size", "4", "--checkpoint-every", str(every), "--filters", "8",
           "--latent-dim", "2", "--n-blocks", "2", "--fc-units", "16", "--threads", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _completed_epochs(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    time.sleep(random.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _completed_epochs(out)
    assert done < epochs, "training finished before the kill; make it longer"
    saved = load_checkpoint(out / "last.pt").epoch if (out / "last.pt").exists() else 0
    assert done - saved <= every, (done, saved)

    target = saved + 2
    again = [a if a != str(epochs) else str(target) for a in cmd]
    again += ["--resume"] if saved else []  # killed before the first checkpoint: start over
    rc = subprocess.run(again, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert rc.returncode == 0, rc.stderr.decode()
    final = load_checkpoint(out / "last.pt")
    assert final.epoch == target and len(final.history) == target
    assert not list(out.glob(".*tmp*"))
