"""Training checkpoints: atomic writes and loading that never runs code from the file.

A checkpoint is one `torch.save` file holding only tensors and plain values (str, int,
float, bool, None, lists and dicts of those), so `torch.load(weights_only=True)` reads
it; anything else in the file (a pickled object whose `__reduce__` would run code) makes
loading fail with `CheckpointError` before that code can run.

Contents: model weights, Adam state, the three settings dataclasses as JSON
(`ModelConfig`, `TrainConfig`, `PreprocessConfig`), the number of completed epochs, the
loss history (one dict per epoch), the workspace's data hash, the ROI names, the torch
RNG state and the trainer's own small state (early-stopping counters, the current
augmentation draws) so a resumed run continues the same loss curve.
"""

from __future__ import annotations

import json
import os
import re
from pickle import UnpicklingError  # what weights_only=True raises; nothing is unpickled here
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.atomic import atomic_write, atomic_write_text  # noqa: F401 - re-exported for callers
from training.config import ModelConfig, PreprocessConfig, TrainConfig

FORMAT = "ct-vae-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint cannot be written or read; the message names the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Checkpoint:
    """What a checkpoint file holds, with the settings parsed back into dataclasses.

    epoch: the number of completed epochs (training resumes at this epoch index).
    history: one dict per completed epoch, as the trainer records it (`"epoch"`,
    `"train"` and `"test"` loss terms per image, seconds, images per second, ...).
    """

    model_config: ModelConfig
    train_config: TrainConfig
    preprocess_config: PreprocessConfig | None
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    epoch: int
    history: list[dict[str, Any]]
    data_hash: str
    roi_names: tuple[str, ...] = ()
    rng_state: dict[str, torch.Tensor] = field(default_factory=dict)
    trainer_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(
    path: os.PathLike | str,
    *,
    model_config: ModelConfig,
    train_config: TrainConfig,
    preprocess_config: PreprocessConfig | None,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    epoch: int,
    history: list[dict[str, Any]],
    data_hash: str,
    roi_names: tuple[str, ...] | list[str] = (),
    rng_state: dict[str, torch.Tensor] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file, fsync, os.replace). Returns the path."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model_config.to_json(),
        "train_config": train_config.to_json(),
        "preprocess_config": preprocess_config.to_json() if preprocess_config else None,
        "model_state": {k: v.detach().cpu() for k, v in model_state.items()},
        "optimizer_state": _to_cpu(optimizer_state),
        "epoch": int(epoch),
        # JSON keeps the history to plain values whatever the trainer put in it.
        "history": json.dumps(history),
        "data_hash": str(data_hash),
        "roi_names": list(roi_names),
        "rng_state": _to_cpu(rng_state or {}),
        "trainer_state": _to_cpu(trainer_state or {}),
    }
    try:
        return atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as exc:
        raise CheckpointError(path, f"cannot write checkpoint ({exc.strerror or exc})") from exc


def load_checkpoint(path: os.PathLike | str, *, mmap: bool = False) -> Checkpoint:
    """Read a checkpoint onto the CPU with `weights_only=True` (no code from the file runs).

    mmap: map the tensors from the file instead of reading them (for a look at the
    metadata: the data hash, the configurations, the history)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UnpicklingError as exc:
        what = _refused_global(str(exc))
        raise CheckpointError(
            path, "refused: the file holds Python objects other than tensors and plain values "
            f"(only weights are loaded, never code){': ' + what if what else ''}"
        ) from None
    except Exception as exc:  # truncated, not a torch file, ...
        raise CheckpointError(path, f"not a readable checkpoint ({type(exc).__name__}: "
                                    f"{one_line(str(exc))})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(path, "not a ct-vae checkpoint (format marker missing)")
    if raw.get("version", 0) > VERSION:
        raise CheckpointError(path, f"written by a newer version (format {raw['version']} > {VERSION})")
    try:
        pre = raw.get("preprocess_config")
        return Checkpoint(
            model_config=ModelConfig.from_json(raw["model_config"]),  # type-checked by name
            train_config=TrainConfig.from_json(raw["train_config"]),
            preprocess_config=PreprocessConfig.from_json(pre) if pre else None,
            model_state=raw["model_state"],
            optimizer_state=raw.get("optimizer_state"),
            epoch=int(raw["epoch"]),
            history=json.loads(raw.get("history") or "[]"),
            data_hash=str(raw.get("data_hash", "")),
            roi_names=tuple(raw.get("roi_names", ())),
            rng_state=raw.get("rng_state") or {},
            trainer_state=raw.get("trainer_state") or {},
            path=path,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(path, "checkpoint content is incomplete or invalid "
                                    f"({one_line(str(exc))})") from None


def load_model(path: os.PathLike | str, device: str | torch.device = "cpu"):
    """Return `(VAE in eval mode on device, Checkpoint)` for the latent tools and the GUI.

    device: "cpu", "cuda", "cuda:N" or "auto" (a GPU when there is one); a GPU asked for
    on a machine without one is a RuntimeError saying so."""
    from training.vae.distributed import resolve_device
    from training.vae.model import VAE  # imported here so checkpoints can be inspected without the model

    device = resolve_device(str(device))  # RuntimeError naming the device when there is no GPU
    ckpt = load_checkpoint(path)
    model = build_checked_model(ckpt)
    model.to(device).eval()
    return model, ckpt


def build_checked_model(ckpt: Checkpoint, *, optimizer: bool = False):
    """The checkpoint's VAE with its weights loaded; CheckpointError (one line) when the
    stored ModelConfig describes no network or the weights (or, with optimizer=True, the
    Adam state) do not fit it. What "Load model" and `train --resume` check first."""
    from training.vae.model import VAE  # imported here so checkpoints can be inspected without the model

    path = ckpt.path or Path("checkpoint")
    try:
        model = VAE(ckpt.model_config)
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(path, f"its ModelConfig does not describe a network ({one_line(str(exc))})") from None
    state = ckpt.model_state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "its model weights are not a table of tensors")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(path, f"weights do not fit the stored ModelConfig ({one_line(str(exc))})") from None
    if optimizer and ckpt.optimizer_state:
        try:
            torch.optim.Adam(model.parameters()).load_state_dict(ckpt.optimizer_state)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise CheckpointError(path, f"its optimizer state does not fit the model ({one_line(str(exc))})") from None
    return model


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]?")
# torch's advice for files it refuses ("Re-running torch.load with weights_only=False will
# likely succeed", "you can still load this ..."): never repeated to the user.
_HINTS = re.compile(r"weights_only|can still|still load|trusted source|trust the source|"
                    r"Re-running|documentation|add_safe_globals|safe_globals|option", re.IGNORECASE)


def one_line(text: str, limit: int = 300) -> str:
    """A library's message as one printable line: terminal escapes and control characters
    out, torch's "you can still load this" hints out, whitespace collapsed, shortened."""
    text = _ANSI.sub("", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    sentences = [x for x in re.split(r"(?<=[.:])\s+(?=[A-Z(])|\s{2,}", text) if x.strip()]
    kept = [x.strip() for x in sentences if not _HINTS.search(x)] or ([sentences[0].strip()] if sentences else [])
    out = re.sub(r"\s+", " ", " ".join(kept)).strip()
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _refused_global(message: str) -> str:
    """What a weights-only load refused ("posix.system"), from torch's message."""
    m = re.search(r"(?:unsupported GLOBAL|Unsupported global:\s*GLOBAL)\s+([\w.]+)", _ANSI.sub("", message))
    if m:
        return f"it names {m.group(1)}"
    return ""


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_cpu(v) for v in obj]
    return obj
