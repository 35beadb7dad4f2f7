"""`ct-vae experiment`: the thesis' quick chapter-7 experiments, one command each.

    ct-vae experiment --list
    ct-vae experiment identify W.h5 --out REPORT/ [--distances-mm 3,6.5,16,33] [--slice-a N]
                      [--level patient|series] [--entries PAT-0001,...] [--preset thesis]
                      [--epochs 200] [--set latent_dim=12 --set lr=0.001 ...]
    ct-vae experiment recon|manifold|samples W.h5 --out REPORT/ [--checkpoint RUN/last.pt] [...]

identify follows thesis 7.5: a fresh model is trained on slice a of every entry only, and
each entry is then identified from slices at the given distances (never trained on) by
KL, Euclidean distance between posterior means and pixel L2 (images, reconstructions).
REPORT/ receives identify.csv, identify.svg (fraction identified vs distance per method),
report.json (settings, data hash, hash of the training subset) and README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.commands import _latent_common as common


def _assignment(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), value.strip()


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a thesis chapter-7 experiment (identify vs distance, "
                       "reconstructions per epoch, manifold, samples)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="experiment (see --list)")
    p.add_argument("workspace", nargs="?", type=Path, help="the 2D workspace (W.h5)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--out", type=Path, help="report folder")
    p.add_argument("--preset", default=None, help="model preset (e.g. thesis; default: project defaults)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--set", dest="overrides", action="append", type=_assignment, default=[],
                   metavar="NAME=VALUE", help="a ModelConfig or TrainConfig setting (repeatable)")
    p.add_argument("--distances-mm", default="3,6.5,16,33", help="identify: query distances in mm")
    p.add_argument("--slice-a", type=int, default=None, help="identify: reference slice index (default: middle)")
    p.add_argument("--level", choices=("patient", "series"), default="patient")
    p.add_argument("--entries", default="", help="identify: comma-separated entry labels (default: all)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="recon/manifold/samples: use this model instead of training one")
    p.add_argument("--n", type=int, default=8, help="manifold/samples: grid size n × n")
    p.set_defaults(func=lambda a: common.run(main, a))


def _split_overrides(pairs):
    import dataclasses

    from training.commands.train import _field_type
    from training.config import ConfigError, ModelConfig, TrainConfig

    model, train = {}, {}
    for key, text in pairs:
        for cls, target in ((ModelConfig, model), (TrainConfig, train)):
            f = {f.name: f for f in dataclasses.fields(cls)}.get(key)
            if f is not None:
                typ, optional = _field_type(cls, f)
                if optional and text.lower() in ("none", ""):
                    target[key] = None
                elif typ is bool:
                    target[key] = text.lower() in ("1", "true", "yes", "on")
                else:
                    try:
                        target[key] = typ(text)
                    except ValueError:
                        raise ConfigError(f"--set {key} expects {typ.__name__}, got {text!r}") from None
                break
        else:
            raise ConfigError(f"--set: unknown setting {key!r}")
    return model, train


def _progress(phase: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{phase}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
    elif done == total or (total >= 10 and done % max(1, total // 10) == 0):
        print(f"{phase}: {done}/{total}", file=sys.stderr, flush=True)


def main(args) -> int:
    from training.config import ConfigError
    from training.explore import experiments as ex
    from training.store.workspace import WorkspaceError

    if args.list or not args.name:
        for name, text in ex.EXPERIMENTS.items():
            print(f"{name:<10} {text}")
        return 0
    if args.name not in ex.EXPERIMENTS:
        raise common.CommandError(f"unknown experiment {args.name!r}; known: {', '.join(ex.EXPERIMENTS)}")
    if args.workspace is None or args.out is None:
        raise common.CommandError("give the workspace and --out REPORT/")
    try:
        model, train = _split_overrides(args.overrides)
        if args.name == "identify":
            distances = tuple(float(v) for v in args.distances_mm.split(",") if v.strip())
            settings = ex.IdentifySettings(preset=args.preset, epochs=args.epochs, model=model, train=train,
                                           slice_a=args.slice_a, distances_mm=distances, level=args.level,
                                           entries=tuple(e for e in args.entries.split(",") if e))
            report = ex.run_identify(args.workspace, args.out, settings, progress=_progress)
            print(ex.identify_table(report))
        else:
            settings = ex.RunSettings(preset=args.preset, epochs=args.epochs, model=model, train=train)
            report = ex.run_simple(args.name, args.workspace, args.out, settings, checkpoint=args.checkpoint,
                                   progress=_progress, n=args.n)
            for f in report["files"]:
                print(f"wrote {f}")
    except (ValueError, ConfigError, RuntimeError, WorkspaceError, OSError) as exc:
        raise common.CommandError(str(exc)) from exc
    print(f"report: {args.out / 'report.json'}")
    return 0
