"""Reconstruction snapshots of a training run, kept in its folder (thesis fig. 7.2).

Every `recon_every` epochs the trainer reconstructs a fixed set of train and test images
(`TrainConfig.n_recon_examples` of each). With an output folder it also writes them as

    <run>/reconstructions/epoch_00012.npz   (one file per snapshot, written atomically)

holding, per split ("train", "test"): `<split>_input` and `<split>_recon`, float16 (n, H, W)
CT channel in [0, 1]. For a 3D model each image is the middle slice along depth of its
volume, which is what the history shows. float16 keeps display precision (~1e-3 on
[0, 1]) at half the size of float32: a snapshot of 6 + 6 images of 128² is ~0.8 MB.

A fresh run in a folder removes the snapshots of an earlier run there; a resumed run
removes those after the epoch it resumes from (they were never checkpointed).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from training.atomic import atomic_write_bytes

FOLDER = "reconstructions"
_NAME = re.compile(r"^epoch_(\d{5,})\.npz$")
SPLITS = ("train", "test")


def _ct_images(a: np.ndarray) -> np.ndarray:
    """(n, C, H, W) or (n, C, D, H, W) → float16 (n, H, W): channel 0, middle depth slice."""
    a = np.asarray(a)[:, 0]
    if a.ndim == 4:
        a = a[:, a.shape[1] // 2]
    return np.clip(a, 0.0, 1.0).astype(np.float16)


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / FOLDER / f"epoch_{int(epoch):05d}.npz"


def save_snapshot(run_dir: str | Path, epoch: int, inputs: dict[str, np.ndarray],
                  recons: dict[str, np.ndarray]) -> Path:
    """Write one snapshot (inputs/recons as the trainer emits them: {split: (n, C, …)})."""
    arrays = {}
    for split in SPLITS:
        if split in inputs and split in recons:
            arrays[f"{split}_input"] = _ct_images(inputs[split])
            arrays[f"{split}_recon"] = _ct_images(recons[split])
    buf = io.BytesIO()
    np.savez(buf, epoch=np.int64(epoch), **arrays)
    return atomic_write_bytes(snapshot_path(run_dir, epoch), buf.getvalue())


def snapshot_epochs(run_dir: str | Path) -> list[int]:
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def load_snapshots(run_dir: str | Path) -> list[tuple[int, dict[str, np.ndarray]]]:
    """[(epoch, {"train_input": float32 (n, H, W), "train_recon": …, "test_…": …})] in
    epoch order. A file that cannot be read is skipped (never code: no pickles)."""
    out = []
    for epoch in snapshot_epochs(run_dir):
        try:
            with np.load(snapshot_path(run_dir, epoch), allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], dtype=np.float32) for k in z.files if k != "epoch"}
        except (OSError, ValueError, KeyError):
            continue
        out.append((epoch, arrays))
    return out


def remove_snapshots(run_dir: str | Path, after: int = -1) -> None:
    """Remove the snapshots of epochs > `after` (all of them with the default)."""
    for epoch in snapshot_epochs(run_dir):
        if epoch > after:
            snapshot_path(run_dir, epoch).unlink(missing_ok=True)
