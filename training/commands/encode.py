"""`ct-vae encode`: posteriors µ, σ per image and per patient, as CSV and NPZ."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="encode a workspace with a trained model: µ and σ per image and per patient",
        description="Encode every image of a workspace (eval mode: deterministic). Writes "
        "OUT/encoded_images.csv (one row per image), OUT/encoded_patients.csv (one row per "
        "patient, aggregated from its slices by --aggregate) and OUT/encoded.npz (all arrays).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p)
    common.add_encode_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=lambda a: common.run(main, a))


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_outputs(out: Path, enc, pp) -> list[Path]:
    from training.atomic import atomic_save_npz, atomic_write_text

    j = enc.mu.shape[1]
    cols = [f"mu_{d}" for d in range(j)] + [f"sigma_{d}" for d in range(j)]
    img_rows = [
        [enc.names[p], int(i), enc.splits[p] if enc.splits else ""] + [repr(float(v)) for v in np.r_[m, s]]
        for (p, i), m, s in zip(enc.rows, enc.mu, enc.sigma)
    ]
    pat_rows = [
        [name, int(n)] + [repr(float(v)) for v in np.r_[m, s]] for name, n, m, s in zip(pp.names, pp.n_images, pp.mu, pp.sigma)
    ]
    paths = [
        atomic_write_text(out / "encoded_images.csv", _csv(["patient", "image", "split"] + cols, img_rows)),
        atomic_write_text(
            out / "encoded_patients.csv",
            f"# per-patient posterior: {pp.method} of the slice posteriors (training/latent/encode.py)\n"
            + _csv(["patient", "n_images"] + cols, pat_rows),
        ),
        atomic_save_npz(
            out / "encoded.npz",
            mu=enc.mu,
            logvar=enc.logvar,
            rows=enc.rows,
            names=np.array(enc.names),
            splits=np.array(enc.splits),
            patient_mu=pp.mu,
            patient_logvar=pp.logvar,
            patient_names=np.array(pp.names),
            patient_n_images=pp.n_images,
            aggregate=np.array(pp.method),
        ),
    ]
    return paths


def main(args) -> int:
    from training.latent import encode as latent

    model, _ = common.load(args)
    with common.open_workspace(args.workspace) as ws:
        enc = common.encode(model, ws, args)
    pp = latent.aggregate_patients(enc, args.aggregate)
    for p in write_outputs(args.out, enc, pp):
        print(f"wrote {p}")
    print(f"{len(enc.mu)} images of {len(pp.names)} patients, latent dimension {enc.mu.shape[1]}")
    return 0
