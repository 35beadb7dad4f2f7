"""`ct-vae interpolate`: a filmstrip between two codes, linear or spherical (F19)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "interpolate",
        help="decode evenly spaced codes between two patients (or two prior draws) to a filmstrip PNG",
        description="Endpoints: the µ of patients --from and --to (needs --workspace; each "
        "patient's posterior is the mixture of its slices' posteriors), or two draws from the "
        "prior N(0, σz² I) with --prior-seed. Writes OUT.png (filmstrip), OUT.npy (images) "
        "and OUT_codes.npy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p, workspace="optional")
    p.add_argument("--from", dest="src", default=None, help="pseudonym of the first patient")
    p.add_argument("--to", dest="dst", default=None, help="pseudonym of the second patient")
    p.add_argument("--prior-seed", type=int, default=None, help="use two prior draws with this seed")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--method", choices=("linear", "spherical"), default="linear")
    p.add_argument("--labels", action="store_true", help="overlay decoded RT labels")
    p.add_argument("--out", type=Path, required=True, help="output PNG path")
    p.set_defaults(func=lambda a: common.run(main, a))


def main(args) -> int:
    from training.latent import export
    from training.latent import encode as latent
    from training.latent import sampling
    from training.images import write_png

    model, ckpt = common.load(args)
    s2 = latent.prior_sigma2_of(ckpt)
    if args.src and args.dst:
        if args.workspace is None:
            raise common.CommandError("--from/--to need --workspace")
        with common.open_workspace(args.workspace) as ws:
            enc = common.encode(model, ws, args)
        z0, z1 = common.patient_code(enc, args.src), common.patient_code(enc, args.dst)
    elif args.prior_seed is not None:
        z0, z1 = sampling.sample_prior(2, model.cfg.latent_dim, s2, args.prior_seed)
    else:
        raise common.CommandError("give --from and --to (with --workspace), or --prior-seed")
    if args.steps < 2:
        raise common.CommandError("--steps must be ≥ 2")
    it = latent.interpolation(model, z0, z1, args.steps, args.method)
    imgs, labs = it.images, it.labels if args.labels else None
    if imgs.ndim == 4:
        mid = imgs.shape[1] // 2
        imgs, labs = imgs[:, mid], None if labs is None else labs[:, mid]
    out = args.out.with_suffix(".png")
    write_png(out, export.filmstrip(imgs, labs, pad=1))
    export.export_npy(out.with_suffix(".npy"), it.images)
    export.export_npy(out.with_name(out.stem + "_codes.npy"), it.codes)
    print(f"wrote {out} ({args.steps} steps, {args.method}; |z0| = {np.linalg.norm(z0):.3f}, |z1| = {np.linalg.norm(z1):.3f})")
    return 0
