"""Arguments and loading shared by the latent-analysis subcommands (not a command itself)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

KL_HELP = (
    "Divergences are KL(q_i || q_j) between diagonal Gaussian posteriors, in nats: row i is "
    "the posterior the expectation is taken under, column j the reference. --symmetric "
    "shows 0.5*(KL(q_i || q_j) + KL(q_j || q_i))."
)


class CommandError(Exception):
    """A user-facing problem: printed as one line, exit code 1."""


def add_model_args(p: argparse.ArgumentParser, workspace: str = "required") -> None:
    p.add_argument("checkpoint", type=Path, help="trained model checkpoint (.pt)")
    if workspace == "required":
        p.add_argument("workspace", type=Path, help="workspace (.h5) with the images to encode")
    elif workspace == "optional":
        p.add_argument("--workspace", type=Path, default=None, help="workspace (.h5) with encoded patients")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--batch-size", type=int, default=64)


def add_encode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=("train", "test", "all"), default="all", help="which patients to encode")
    p.add_argument(
        "--aggregate",
        choices=("mixture", "product", "middle"),
        default="mixture",
        help="posterior of a series (or, where a command says so, of a patient) from its slices: "
        "moment-matched mixture (default), product of experts, or the middle slice "
        "(see training/latent/encode.py)",
    )


def load(args):
    """(model in eval mode, Checkpoint) from args.checkpoint, errors as CommandError."""
    import torch

    from training.vae.checkpoint import CheckpointError, load_model

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    try:
        return load_model(args.checkpoint, device=args.device)
    except (CheckpointError, OSError) as exc:
        raise CommandError(f"{args.checkpoint}: {exc}") from exc
    except RuntimeError as exc:  # --device names a GPU this machine lacks
        raise CommandError(str(exc)) from exc


def open_workspace(path: Path):
    from training.store.workspace import Workspace, WorkspaceError

    try:
        return Workspace.open(path)
    except (WorkspaceError, OSError) as exc:
        raise CommandError(str(exc)) from exc


def progress_printer(label: str):
    def show(done: int, total: int) -> None:
        print(f"\r{label}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return show


def encode(model, ws, args):
    from training.latent import encode as latent

    split = None if getattr(args, "split", "all") == "all" else args.split
    enc = latent.encode_workspace(model, ws, split=split, batch_size=args.batch_size, progress=progress_printer("encoding"))
    if not len(enc.mu):
        raise CommandError(f"{ws.path}: no images to encode" + (f" in split {split!r}" if split else ""))
    return enc


def patient_code(enc, name: str) -> np.ndarray:
    """µ of a patient's aggregate posterior (mixture) by pseudonym."""
    from training.latent import encode as latent

    pp = latent.aggregate_patients(enc, "mixture")
    if name not in pp.names:
        raise CommandError(f"no encoded patient {name!r}; known: {', '.join(pp.names[:20])}")
    return pp.mu[pp.names.index(name)].astype(np.float32)


def run(func, args) -> int:
    try:
        return func(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
