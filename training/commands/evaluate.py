"""`ct-vae evaluate`: reconstruction quality of a trained model, beside a baseline.

    ct-vae evaluate RUN/last.pt W.h5 [--split test|train|all|both] [--max-images N] [--json]

Prints MAE in HU inside the body, PSNR and SSIM on the windowed image and Dice per ROI
(training/vae/metrics.py says how each is defined and how the body is found), each beside
the same figure for the baseline: the mean training image taken as every reconstruction.
"""

from __future__ import annotations

import argparse
import json

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="reconstruction quality (MAE in HU, PSNR, SSIM, Dice) beside a mean-image baseline",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(p)
    p.add_argument("--split", choices=("test", "train", "all", "both"), default="both",
                   help="which images to evaluate (both: test and train separately)")
    p.add_argument("--max-images", type=int, default=0,
                   help="evenly spaced images per split (0: all)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    p.set_defaults(func=lambda a: common.run(main, a))


ROWS = (("mae_hu", "MAE in body (HU)", "{:.1f}", "lower is better"),
        ("psnr_db", "PSNR (dB)", "{:.2f}", "higher is better"),
        ("ssim", "SSIM", "{:.4f}", "higher is better"))


def format_table(result: dict) -> str:
    def f(v, fmt):
        return "n/a" if v is None else fmt.format(v)
    lo, hi = result["window"]
    lines = [f"window [{lo:g}, {hi:g}] HU; body = largest component above "
             f"{result['body_threshold_hu']:g} HU on the windowed input, holes filled; "
             f"baseline = mean of {result['baseline_from']} training images"]
    for split, res in result.items():
        if not isinstance(res, dict) or "model" not in res:
            continue
        m, b = res["model"], res["baseline"]
        lines.append(f"{split} ({m['n_images']} images)      model    baseline")
        for key, name, fmt, sense in ROWS:
            lines.append(f"  {name:<20} {f(m[key], fmt):>9} {f(b[key], fmt):>9}   ({sense})")
        for roi, v in (m.get("dice") or {}).items():
            lines.append(f"  {'Dice ' + roi:<20} {f(v, '{:.4f}'):>9} {f(b['dice'].get(roi), '{:.4f}'):>9}")
    return "\n".join(lines)


def main(args) -> int:
    from training.latent.encode import check_model_fits
    from training.vae.metrics import evaluate_workspace

    model, ck = common.load(args)
    splits = {"both": ("test", "train")}.get(args.split, (args.split,))
    with common.open_workspace(args.workspace) as ws:
        try:
            check_model_fits(model, ws)
        except ValueError as exc:
            raise common.CommandError(f"{args.workspace}: {exc}") from exc
        if ck.data_hash and ck.data_hash != ws.data_hash:
            print(f"note: {args.checkpoint} was trained on other data (data hash {ck.data_hash[:12]}…, "
                  f"this workspace {ws.data_hash[:12]}…); the 'train' split here is not its training set")
        try:
            res = evaluate_workspace(model, ws, splits=splits, max_images=args.max_images,
                                     batch_size=args.batch_size, device=args.device,
                                     progress=None if args.json else common.progress_printer("evaluating"))
        except ValueError as exc:
            raise common.CommandError(str(exc)) from exc
    res["checkpoint_epoch"] = ck.epoch
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"checkpoint {args.checkpoint} (epoch {ck.epoch})")
        print(format_table(res))
    return 0
