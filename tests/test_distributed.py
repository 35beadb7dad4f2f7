"""DistributedDataParallel under torchrun gives the single-process model (SPEC F16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.vae.checkpoint import load_checkpoint
from training.vae.distributed import DDPStrategy, SingleProcess, physical_cores, resolve_device, strategy_from_env
from training.store.workspace import write_arrays_workspace

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_strategy_from_env_and_single_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    st = strategy_from_env()
    assert isinstance(st, SingleProcess) and st.is_main and st.world_size == 1
    t = torch.ones(3)
    assert st.all_reduce_sum(t) is t and st.wrap(t) is t
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    st = strategy_from_env()
    assert isinstance(st, DDPStrategy) and st.rank == 1 and not st.is_main
    assert resolve_device("cpu").type == "cpu"
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"P{p}": rng.random((4, 16, 16), dtype=np.float32) for p in range(6)}
    labels = {k: (v > 0.5).astype(np.uint8) + (v > 0.8).astype(np.uint8) for k, v in images.items()}
    ws = write_arrays_workspace(tmp_path / "w.h5", images, labels, roi_names=("A", "B"), test_fraction=0.34)
    flags = ["train", "--workspace", str(ws), "--filters", "4", "--latent-dim", "2", "--n-blocks", "2",
             "--fc-units", "16", "--threads", "1", "--dropout", "0", "--batch-size", "8", "--epochs", "2",
             "--mc-samples", "2", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.cli", *flags, "--out", str(tmp_path / "ddp")],
        cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr.decode()[-3000:]
    assert b"rank 0 of 2" in ddp.stderr
    from training.cli import main

    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    a, b = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert a.epoch == b.epoch == 2
    for ha, hb in zip(a.history, b.history):
        assert ha["images"] == hb["images"] == 16
        for split in ("train", "test"):
            for k in ("total", "recon", "kl", "ce"):
                assert ha[split][k] == pytest.approx(hb[split][k], rel=1e-5, abs=1e-7)
    for k in b.model_state:
        torch.testing.assert_close(a.model_state[k], b.model_state[k], rtol=1e-4, atol=1e-6)
    # checkpoints and logs from rank 0 only: one set of files
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "best.pt", "history.json", "last.pt", "reconstructions"]  # rank 0 alone writes
    from training.vae import recon_history

    assert recon_history.snapshot_epochs(tmp_path / "ddp") == recon_history.snapshot_epochs(tmp_path / "one") == [2]


_STOP_ONE_RANK = """
import sys, torch
torch.set_num_threads(1)
from training.config import ModelConfig, TrainConfig
from training.vae.distributed import DDPStrategy
from training.vae.trainer import Trainer, TrainingControl
st = DDPStrategy(timeout_s=20)
control = TrainingControl()
if st.rank == 1:
    control.stop()  # a signal that reached this process only
mc = ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=2, fc_units=16, n_classes=0, dropout=0.0)
tc = TrainConfig(epochs=2, batch_size=8, threads=1, device="cpu")
s = Trainer(sys.argv[1], mc, tc, out_dir=sys.argv[2], control=control, strategy=st).run()
sys.stdout.write(f"rank {st.rank}: {s.status} after {s.epochs_completed} epochs\\n"); sys.stdout.flush()  # one write: ranks share the pipe
sys.exit(0 if s.status == "stopped" else 3)
"""


@pytest.mark.slow
def test_a_stop_on_one_rank_stops_every_rank(tmp_path):
    # Before the fix rank 1 left the loop alone and rank 0 waited in its first all-reduce
    # until the process-group timeout (here 20 s, by default 30 min), then failed.
    rng = np.random.default_rng(0)
    images = {f"P{p}": rng.random((4, 16, 16), dtype=np.float32) for p in range(6)}
    ws = write_arrays_workspace(tmp_path / "w.h5", images, None, test_fraction=0.34)
    script = tmp_path / "stop_one_rank.py"
    script.write_text(_STOP_ONE_RANK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(ws), str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, timeout=120)
    out = run.stdout.decode()
    assert run.returncode == 0, (out + run.stderr.decode())[-3000:]
    assert "rank 0: stopped after 0 epochs" in out and "rank 1: stopped after 0 epochs" in out


_FAIL_ONE_RANK = """
import sys, torch
torch.set_num_threads(1)
from training.config import ModelConfig, TrainConfig
from training.vae.distributed import DDPStrategy
from training.vae.trainer import Trainer
st = DDPStrategy()  # the default 30-minute group timeout
if st.rank == 1:
    def broken(self, epoch_index):
        raise OSError("the workspace became unreadable on this node")
    Trainer._evaluate = broken
mc = ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=2, fc_units=16, n_classes=0, dropout=0.0)
tc = TrainConfig(epochs=3, batch_size=8, threads=1, device="cpu")
s = Trainer(sys.argv[1], mc, tc, strategy=st).run()
sys.stdout.write(f"rank {st.rank}: {s.status}: {s.message}\\n"); sys.stdout.flush()  # one write: ranks share the pipe
sys.exit(1 if s.status == "failed" else 0)
"""


@pytest.mark.slow
def test_an_error_on_one_rank_ends_the_job_instead_of_hanging(tmp_path):
    # Before the fix the failed rank waited in close()'s barrier while rank 0 waited in
    # its test-loss all-reduce: both hung until the 30-minute process-group timeout.
    rng = np.random.default_rng(0)
    images = {f"P{p}": rng.random((4, 16, 16), dtype=np.float32) for p in range(6)}
    ws = write_arrays_workspace(tmp_path / "w.h5", images, None, test_fraction=0.34)
    script = tmp_path / "fail_one_rank.py"
    script.write_text(_FAIL_ONE_RANK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(ws)],
        cwd=ROOT, env=env, capture_output=True, timeout=90)
    assert run.returncode != 0
    assert "rank 1: failed: training failed: OSError: the workspace became unreadable" in run.stdout.decode()
