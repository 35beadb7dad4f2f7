"""`ct-vae similarity`: the KL matrix between patients' posteriors, and nearest patients."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "similarity",
        help="KL(q_i || q_j) between patients' posteriors as CSV, with nearest patients",
        description="Encode a workspace and write the matrix of divergences between the "
        "patients' posteriors (or between single images with --level image). " + common.KL_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p)
    common.add_encode_args(p)
    p.add_argument("--level", choices=("patient", "image"), default="patient")
    p.add_argument("--symmetric", action="store_true", help="0.5*(KL(q_i||q_j) + KL(q_j||q_i))")
    p.add_argument("--nearest", type=int, default=3, help="print the k nearest of every row (0: none)")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    p.set_defaults(func=lambda a: common.run(main, a))


def main(args) -> int:
    from training.latent import encode as latent
    from training.latent import similarity

    model, _ = common.load(args)
    with common.open_workspace(args.workspace) as ws:
        enc = common.encode(model, ws, args)
    if args.level == "patient":
        pp = latent.aggregate_patients(enc, args.aggregate)
        mu, lv, names = pp.mu, pp.logvar, pp.names
    else:
        mu, lv, names = enc.mu, enc.logvar, enc.labels
    d = similarity.similarity_matrix(mu, lv, symmetric=args.symmetric)
    similarity.write_matrix_csv(args.out, d, names, args.symmetric)
    print(f"wrote {args.out}: {len(names)}×{len(names)}, "
          + (similarity.SYMMETRIC_DEFINITION if args.symmetric else similarity.KL_DIRECTION))
    if args.nearest > 0:
        idx, vals = similarity.nearest_all(d, args.nearest)
        for i, name in enumerate(names):
            near = ", ".join(f"{names[j]} ({v:.4g})" for j, v in zip(idx[i], vals[i]))
            print(f"{name}: {near}")
    return 0
