"""`ct-vae manifold`: the decoded n×n grid over two latent dimensions (F18, thesis 4.4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "manifold",
        help="decode an n×n grid over two latent dimensions to a PNG (and .npy)",
        description="Grid positions z = σz·Φ⁻¹((i + ½)/n) (σz² = the checkpoint's prior "
        "variance); dims[0] varies along columns (left → right ascending), dims[1] along rows "
        "(top → bottom descending); other dimensions are 0, or the µ of --base-patient (which "
        "needs --workspace). Writes OUT.png, OUT.npy (images (n, n, H, W)) and "
        "OUT_codes.npy (n, n, J).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p, workspace="optional")
    p.add_argument("--n", type=int, default=15)
    p.add_argument("--dims", type=int, nargs=2, default=(0, 1), metavar=("D0", "D1"))
    p.add_argument("--base-patient", default=None, help="pseudonym whose µ holds the other dimensions")
    p.add_argument("--labels", action="store_true", help="overlay decoded RT labels")
    p.add_argument("--out", type=Path, required=True, help="output PNG path")
    p.set_defaults(func=lambda a: common.run(main, a))


def main(args) -> int:
    from training.latent import export
    from training.latent import encode as latent

    model, ckpt = common.load(args)
    base = None
    if args.base_patient:
        if args.workspace is None:
            raise common.CommandError("--base-patient needs --workspace")
        with common.open_workspace(args.workspace) as ws:
            base = common.patient_code(common.encode(model, ws, args), args.base_patient)
    try:
        mf = latent.manifold(model, args.n, tuple(args.dims), base=base, prior_sigma2=latent.prior_sigma2_of(ckpt))
    except ValueError as exc:
        raise common.CommandError(str(exc)) from exc
    imgs = mf.images if mf.images.ndim == 4 else mf.images[:, :, mf.images.shape[2] // 2]
    labs = None
    if args.labels and mf.labels is not None:
        labs = mf.labels if mf.labels.ndim == 4 else mf.labels[:, :, mf.labels.shape[2] // 2]
    out = args.out.with_suffix(".png")
    export.export_grid_png(out, imgs, labs, pad=1)
    export.export_npy(out.with_suffix(".npy"), mf.images)
    export.export_npy(out.with_name(out.stem + "_codes.npy"), mf.codes)
    print(f"wrote {out} ({args.n}×{args.n}, dims {tuple(args.dims)}, positions {mf.positions.round(3).tolist()})")
    return 0
