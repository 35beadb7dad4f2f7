"""A checkpoint that cannot be resumed or loaded is refused in one plain line: no
traceback, no terminal escape codes, no "you can still load this" hint from torch; the
window's Load model checks the weights before saying the model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ModelConfig, TrainConfig
from training.vae.checkpoint import CheckpointError, build_checked_model, load_checkpoint, one_line, save_checkpoint
from training.vae.model import VAE  # noqa: F401

from test_gui_support import data_dir, make_window  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--filters", "2", "--latent-dim", "2", "--n-blocks", "2", "--fc-units", "8", "--threads", "1",
         "--batch-size", "4", "--epochs", "1", "--no-progress", "--device", "cpu"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED",))


def _clean(text: str) -> None:
    assert "\x1b" not in text
    low = text.lower()
    for hint in ("weights_only", "can still", "trusted source", "traceback", "re-running"):
        assert hint not in low, text


def test_one_line_drops_escapes_and_torch_hints():
    msg = ("Weights only load failed. This file can still be loaded, to do so you have two options, "
           "\x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) "
           "Re-running `torch.load` with `weights_only` set to `False` will likely succeed.\n"
           "WeightsUnpickler error: Unsupported global: GLOBAL posix.system")
    out = one_line(msg)
    assert "\n" not in out and "posix.system" in out
    _clean(out)


def _variants(tmp: Path, good: Path) -> dict[str, Path]:
    raw = torch.load(good, weights_only=True)
    out = {}
    evil = tmp / "evil.pt"
    torch.save({**raw, "model_state": {"x": _Evil()}}, evil)
    out["evil"] = evil
    trunc = tmp / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:500])
    out["truncated"] = trunc
    shapes = tmp / "shapes.pt"
    ms = dict(raw["model_state"])
    k = next(k for k, v in ms.items() if v.ndim >= 2)
    ms[k] = torch.zeros(3, 3)
    torch.save({**raw, "model_state": ms}, shapes)
    out["shapes"] = shapes
    missing = tmp / "missing.pt"
    torch.save({**raw, "model_state": dict(list(raw["model_state"].items())[1:])}, missing)
    out["missing"] = missing
    opt = tmp / "optim.pt"
    torch.save({**raw, "optimizer_state": {"state": {}, "param_groups": [{"params": [0, 1]}]}}, opt)
    out["optimizer"] = opt
    notdict = tmp / "notdict.pt"
    torch.save({**raw, "model_state": [1, 2]}, notdict)
    out["not a table"] = notdict
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from training.cli import main
    from training.store.workspace import write_arrays_workspace

    tmp = tmp_path_factory.mktemp("ckr")
    rng = np.random.default_rng(0)
    ws = write_arrays_workspace(tmp / "w.h5", {f"P{i}": rng.random((2, 16, 16), dtype=np.float32)
                                              for i in range(4)}, test_fraction=0.25)
    assert main(["train", "--workspace", str(ws), *FLAGS, "--out", str(tmp / "run")]) == 0
    return ws, tmp / "run" / "last.pt"


def test_every_bad_checkpoint_is_one_line(trained, tmp_path):
    _, good = trained
    for name, path in _variants(tmp_path, good).items():
        with pytest.raises(CheckpointError) as info:
            build_checked_model(load_checkpoint(path), optimizer=True)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg, (name, msg)
        _clean(msg)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["evil", "shapes"])
def test_train_resume_refuses_in_one_line(trained, tmp_path, variant):
    ws, good = trained
    run = tmp_path / "run\x1b[31mred"
    run.mkdir()
    src = _variants(tmp_path, good)[variant]
    (run / "last.pt").write_bytes(src.read_bytes())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "training.cli", "train", "--workspace", str(ws), *FLAGS,
                          "--epochs", "2", "--resume", "--out", str(run)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and "run\\x1b[31mred" in lines[0]
    _clean(out.stderr)
    assert "PWNED" not in out.stdout + out.stderr


def test_window_load_model_checks_the_weights(make_window, trained, tmp_path):
    _, good = trained
    w = make_window(None)
    bad = _variants(tmp_path, good)["shapes"]
    assert not w.load_model(bad)
    msg = w.statusBar().currentMessage()
    assert "shapes.pt" in msg and "Loaded" not in msg and "\n" not in msg
    _clean(msg)
    assert w.state.checkpoint_path is None
    assert w.load_model(good)
    assert w.statusBar().currentMessage().startswith("Loaded model last.pt")
