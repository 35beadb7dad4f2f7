"""`ct-vae generate`: decode draws and export them as PNG, .npy and DICOM (F24)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images/volumes from the prior or aggregate posterior and export PNG, .npy, DICOM CT + RTSTRUCT",
        description="Each draw becomes one synthetic patient: a DICOM CT series with new UIDs "
        "and a pseudonymous patient (CTVAE-GEN-…), HU = hu_min + x·(hu_max − hu_min) with the "
        "training window, voxel spacing from the workspace's preprocessing (--spacing without "
        "a workspace), and the decoded RT labels as an RTSTRUCT and labels.npy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p, workspace="optional")
    p.add_argument("--split", choices=("train", "test", "all"), default="train")
    p.add_argument("--source", choices=("prior", "aggregate"), default="prior")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default="png,npy,dicom", help="comma-separated: png, npy, dicom")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("DZ", "DY", "DX"), help="mm; default from the workspace")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=lambda a: common.run(main, a))


def main(args) -> int:
    from training.latent import export
    from training.latent import encode as latent

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = set(formats) - {"png", "npy", "dicom"}
    if bad:
        raise common.CommandError(f"unknown format(s): {', '.join(sorted(bad))}")
    model, ckpt = common.load(args)
    pre = ckpt.preprocess_config
    enc, spacing = None, args.spacing
    if args.workspace is not None:
        with common.open_workspace(args.workspace) as ws:
            pre = ws.preprocess
            if spacing is None:
                spacing = export.workspace_spacing(ws)
            if args.source == "aggregate":
                enc = common.encode(model, ws, args)
    elif args.source == "aggregate":
        raise common.CommandError("--source aggregate needs --workspace")
    if pre is None:
        raise common.CommandError(f"{args.checkpoint}: no preprocessing settings stored; give --workspace")
    spacing = spacing or (1.0, 1.0, 1.0)
    post = None if enc is None else (enc.mu, enc.logvar)
    s = latent.generate(model, args.n, args.source, args.seed, latent.prior_sigma2_of(ckpt), posteriors=post)
    written = export.export_generated(
        args.out, s.images, s.labels, preprocess=pre, spacing=spacing, roi_names=pre.rois, formats=formats
    )
    for fmt, paths in written.items():
        print(f"{fmt}: {len(paths)} file(s) under {args.out}")
    print(f"spacing (dz, dy, dx) = {tuple(round(v, 4) for v in spacing)} mm; window {pre.hu_min}..{pre.hu_max} HU")
    return 0
