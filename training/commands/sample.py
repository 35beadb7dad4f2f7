"""`ct-vae sample`: draws from the prior or the aggregate posterior as a grid (F20), and
the aggregate posterior's density beside the prior's (F21)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="decode seeded draws from the prior or the aggregate posterior to a PNG grid (+ .npy)",
        description="--source prior: z ~ N(0, σz² I) (σz² from the checkpoint). --source "
        "aggregate: z ~ (1/K) Σ_k N(µ_k, σ_k²) over the K encoded images of --workspace "
        "(component uniform, then Gaussian). Writes OUT.png (grid), OUT.npy (images), "
        "OUT_codes.npy. With --density-dims D0 D1 (needs --workspace) also writes "
        "OUT_density.npz (x, y, density, prior on a grid) and OUT_density.png (aggregate "
        "posterior | prior, each scaled to its maximum).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p, workspace="optional")
    p.add_argument("--split", choices=("train", "test", "all"), default="train", help="images forming the aggregate posterior")
    p.add_argument("--source", choices=("prior", "aggregate"), default="prior")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", action="store_true", help="overlay decoded RT labels")
    p.add_argument("--density-dims", type=int, nargs=2, default=None, metavar=("D0", "D1"))
    p.add_argument("--density-n", type=int, default=101, help="density grid points per axis")
    p.add_argument("--out", type=Path, required=True, help="output PNG path")
    p.set_defaults(func=lambda a: common.run(main, a))


def main(args) -> int:
    from training.latent import export
    from training.latent import encode as latent
    from training.latent import sampling
    from training.images import write_png, to_uint8

    model, ckpt = common.load(args)
    s2 = latent.prior_sigma2_of(ckpt)
    enc = None
    if args.source == "aggregate" or args.density_dims:
        if args.workspace is None:
            raise common.CommandError("--source aggregate and --density-dims need --workspace")
        with common.open_workspace(args.workspace) as ws:
            enc = common.encode(model, ws, args)
    post = None if enc is None else (enc.mu, enc.logvar)
    s = latent.generate(model, args.n, args.source, args.seed, s2, posteriors=post)
    out = args.out.with_suffix(".png")
    cols = math.ceil(math.sqrt(args.n))
    rows = math.ceil(args.n / cols)
    imgs = s.images if s.images.ndim == 3 else s.images[:, s.images.shape[1] // 2]
    labs = None
    if args.labels and s.labels is not None:
        labs = s.labels if s.labels.ndim == 3 else s.labels[:, s.labels.shape[1] // 2]
    pad = rows * cols - args.n
    grid = np.concatenate([imgs, np.ones((pad, *imgs.shape[1:]), imgs.dtype)]).reshape(rows, cols, *imgs.shape[1:])
    glab = None if labs is None else np.concatenate([labs, np.zeros((pad, *labs.shape[1:]), labs.dtype)]).reshape(rows, cols, *labs.shape[1:])
    export.export_grid_png(out, grid, glab, pad=1)
    export.export_npy(out.with_suffix(".npy"), s.images)
    export.export_npy(out.with_name(out.stem + "_codes.npy"), s.codes)
    print(f"wrote {out}: {args.n} draws from the {args.source}, seed {args.seed}")
    if args.density_dims:
        try:
            g = sampling.density_grid(enc.mu, enc.logvar, tuple(args.density_dims), args.density_n, prior_sigma2=s2)
        except IndexError as exc:
            raise common.CommandError(f"--density-dims out of range for J = {enc.mu.shape[1]}") from exc
        from training.atomic import atomic_save_npz

        atomic_save_npz(out.with_name(out.stem + "_density.npz"), x=g.x, y=g.y, density=g.density, prior=g.prior, dims=np.array(g.dims))
        pair = np.stack([g.density[::-1] / g.density.max(), g.prior[::-1] / g.prior.max()])[None]
        from training.images import compose_grid

        write_png(out.with_name(out.stem + "_density.png"), to_uint8(compose_grid(pair, pad=2, pad_value=1.0)))
        print(f"wrote {out.with_name(out.stem + '_density.png')} (aggregate posterior | prior, dims {g.dims})")
    return 0
