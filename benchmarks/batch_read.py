"""Training-batch reads: the appending workspace (uint16 images, fletcher32, one file per
entry) against schema 1 (float32 images inside one file), read through the same
`Workspace.read_images`, plus a bare h5py loop over the schema 1 file as a reference.

    python benchmarks/batch_read.py [--patients 60] [--slices 100] [--size 128] [--batch 32]

Prints median seconds per random batch of each and the ratio new / schema 1 (target ≤ 1.2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import PreprocessConfig  # noqa: E402
from training.store import workspace as wsmod  # noqa: E402
from training.store.pseudonym import new_salt  # noqa: E402


def phantom_images(rng, n: int, size: int) -> np.ndarray:
    """Body-like images: an ellipse of noisy tissue on an empty background, in [0, 1]."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = (yy / 0.42) ** 2 + (xx / 0.36) ** 2 < 1
    img = np.where(body, 0.45 + 0.05 * rng.standard_normal((n, size, size)), 0.0)
    return np.clip(img, 0, 1).astype(np.float32)


def write_schema1(path: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
    """The layout before schema 2: float32 images, lzf labels, everything in one file."""
    cfg = PreprocessConfig(crop=None, rois=("A",))
    phash = wsmod.preprocess_hash(cfg)
    shape = next(iter(images.values())).shape[1:]
    with h5py.File(path, "w") as f:
        wsmod._init_attrs(f, cfg, salt=new_salt(), seed=0, test_fraction=0.25, image_shape=shape)
        f.attrs["schema_version"] = 1
        rows = {}
        for k, a in images.items():
            g = f["entries"].create_group(k)
            g.attrs["pseudonym"] = k
            g.attrs["patient"] = k
            d = g.create_group("derived").create_group(phash)
            d.create_dataset("images", data=a, chunks=(1, *shape))
            d.create_dataset("labels", data=labels[k], chunks=(1, *shape), compression="lzf")
            rows[k] = wsmod._entry_row(g, phash)
        wsmod._write_meta(f, "entries", rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    images = {f"PAT-{i + 1:04d}": phantom_images(rng, a.slices, a.size) for i in range(a.patients)}
    labels = {k: (v > 0.5).astype(np.uint8) for k, v in images.items()}
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "old.h5", Path(tmp) / "new.h5"
        write_schema1(old, images, labels)
        wsmod.write_arrays_workspace(new, images, labels, roi_names=("A",),
                                     preprocess=PreprocessConfig(crop=None, rois=("A",)))
        size_old = old.stat().st_size
        size_new = new.stat().st_size + sum(p.stat().st_size for p in wsmod.data_dir(new).iterdir())
        results: dict[str, list[float]] = {"schema 1 (Workspace)": [], "schema 2 (Workspace)": [],
                                           "bare h5py, schema 1 file": []}
        with wsmod.Workspace.open(old) as ws_old, wsmod.Workspace.open(new) as ws_new:
            idx = ws_new.index()
            order = [idx[rng.permutation(len(idx))[:a.batch]] for _ in range(a.batches)]
            out = np.empty((a.batch, a.size, a.size), np.float32)
            lab = np.empty((a.batch, a.size, a.size), np.uint8)
            with h5py.File(old, "r", rdcc_nbytes=0) as bare:
                phash = str(bare.attrs["preprocess_hash"])
                names = sorted(images)
                ds_i = [bare[f"entries/{k}/derived/{phash}/images"] for k in names]
                ds_l = [bare[f"entries/{k}/derived/{phash}/labels"] for k in names]

                def run_bare():
                    for rows in order:
                        for b, (p, i) in enumerate(rows):
                            ds_i[p].read_direct(out, np.s_[i:i + 1], np.s_[b:b + 1])
                            ds_l[p].read_direct(lab, np.s_[i:i + 1], np.s_[b:b + 1])

                def run(ws):
                    def go():
                        for rows in order:
                            ws.read_images(rows, out=out)
                            ws.read_labels(rows, out=lab)
                    return go

                runs = {"schema 1 (Workspace)": run(ws_old), "schema 2 (Workspace)": run(ws_new),
                        "bare h5py, schema 1 file": run_bare}
                for name, fn in runs.items():
                    fn()  # warm: handles opened, pages cached
                for _ in range(a.rounds):  # interleaved, so load changes hit all alike
                    for name, fn in runs.items():
                        t = time.perf_counter()
                        fn()
                        results[name].append((time.perf_counter() - t) / a.batches)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{a.patients} patients × {a.slices} images of {a.size}², batch {a.batch}, "
          f"{a.batches} random batches × {a.rounds} rounds (images + labels)")
    for k, v in med.items():
        print(f"  {k:28s} {v * 1e3:7.2f} ms per batch")
    ratio = med["schema 2 (Workspace)"] / med["schema 1 (Workspace)"]
    print(f"  schema 2 / schema 1: {ratio:.2f}  (target ≤ 1.2)")
    print(f"  size: schema 1 {size_old / 1e6:.1f} MB, schema 2 {size_new / 1e6:.1f} MB "
          f"({size_new / size_old:.2f}×)")
    print(json.dumps({"ms_per_batch": {k: round(v * 1e3, 3) for k, v in med.items()},
                      "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
