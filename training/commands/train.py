"""`ct-vae train`: train the VAE on a workspace from the terminal (SPEC F13-F16).

    ct-vae train --workspace W.h5 --out RUN_DIR [--epochs 50 --latent-dim 12 ...]
                 [--config settings.toml] [--resume] [--log-json]
    torchrun --nproc_per_node K -m training.cli train ...   (DistributedDataParallel)

Every TrainConfig and ModelConfig field has a flag (underscores become hyphens). Settings
come from the defaults, then the TOML file (flat keys, or [train] and [model] tables),
then the flags. spatial_dims, input_size and n_classes default to what the workspace
holds. RUN_DIR receives last.pt, best.pt and history.json. Ctrl-C (or SIGTERM) stops after
the current batch and saves the last completed epoch; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from training.config import ConfigError, ModelConfig, TrainConfig

_SECTIONS = {"train": TrainConfig, "model": ModelConfig}


def _field_type(cls, f: dataclasses.Field) -> tuple[Any, bool]:
    """(python type, optional) from a dataclass field's annotation string."""
    text = str(f.type)
    optional = "None" in text
    for name, typ in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text.replace(" | None", "").strip() == name:
            return typ, optional
    return str, optional


def _parse_value(typ, optional: bool, flag: str):
    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            return typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {typ.__name__}, got {text!r}") from None
    return parse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the VAE on a workspace",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", required=True, type=Path, help="the HDF5 workspace (W.h5)")
    p.add_argument("--out", required=True, type=Path, help="run folder for checkpoints and history")
    p.add_argument("--config", type=Path, help="TOML settings file (flags override it)")
    p.add_argument("--preset", choices=sorted(_presets()), default=None,
                   help="start from a named model preset; 'thesis' = the 2D network of thesis 7.1.1 "
                        "(128×128, 24 filters, 4 blocks, J = 12, dropout 0.3 = TensorFlow keep 0.7, "
                        "σz² = 1, Adam 1e-3, batch 32; README lists the sources). The TOML file and "
                        "flags override it")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--log-json", action="store_true", help="print one JSON line per epoch on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    for section, cls in _SECTIONS.items():
        group = p.add_argument_group(f"{cls.__name__} settings")
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            typ, optional = _field_type(cls, f)
            default = f.default
            if typ is bool:
                group.add_argument(flag, dest=f"{section}.{f.name}", default=None,
                                   action=argparse.BooleanOptionalAction,
                                   help=f"(default {default})")
            else:
                group.add_argument(flag, dest=f"{section}.{f.name}", default=None,
                                   type=_parse_value(typ, optional, flag), metavar=typ.__name__.upper(),
                                   help=f"(default {default})")
    p.set_defaults(func=run)


def _presets():
    from training.config import PRESETS

    return PRESETS


def _settings_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{"train": {...}, "model": {...}}: the preset's values, overridden by the TOML file,
    overridden by flags."""
    out: dict[str, dict[str, Any]] = {"train": {}, "model": {}}
    if getattr(args, "preset", None):
        from training.config import preset_settings

        out["model"], out["train"] = preset_settings(args.preset)
    if args.config is not None:
        try:
            doc = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{args.config}: cannot read settings ({exc})") from exc
        names = {s: {f.name for f in dataclasses.fields(c)} for s, c in _SECTIONS.items()}
        for key, value in doc.items():
            if key in _SECTIONS and isinstance(value, dict):
                for k, v in value.items():
                    k = k.replace("-", "_")
                    if k not in names[key]:
                        raise ConfigError(f"{args.config}: unknown setting [{key}] {k}")
                    out[key][k] = v
                continue
            k = key.replace("-", "_")
            home = [s for s in _SECTIONS if k in names[s]]
            if not home:
                raise ConfigError(f"{args.config}: unknown setting {key}")
            out[home[0]][k] = value
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, name = dest.split(".", 1)
            out[section][name] = value
    return out


class TerminalProgress:
    """Progress bar on stderr (epoch, batch, losses, images/s, ETA) and per-epoch lines."""

    def __init__(self, stream=None, log_json: bool = False, bar: bool = True):
        self._stream = stream
        self.log_json = log_json
        self.bar = bar
        self._last = 0.0
        self._width = 0

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr  # as it is now, not at import

    # Callback protocol (duck-typed so this module stays independent of the trainer's import)
    def on_train_start(self, trainer) -> None:
        self._trainer = trainer
        mc, tc = trainer.model_config, trainer.train_config
        n_params = sum(p.numel() for p in trainer.model.parameters())
        self._print(f"training {mc.spatial_dims}D VAE ({n_params:,} parameters, latent {mc.latent_dim}) "
                    f"on {trainer.device} ({trainer.strategy.describe()}), "
                    f"{len(trainer._train_rows)} train / {len(trainer._test_rows)} test images, "
                    f"epochs {len(trainer.history) + 1}..{tc.epochs}")

    def on_batch_end(self, p) -> None:
        now = time.monotonic()
        if not self.bar or (now - self._last < 0.2 and p.batch < p.n_batches):
            return
        self._last = now
        width = 20
        done = int(width * p.batch / max(p.n_batches, 1))
        t = p.terms
        line = (f"epoch {p.epoch}/{p.epochs} [{'#' * done}{'.' * (width - done)}] {p.batch}/{p.n_batches} "
                f"loss {t['total']:.4g} (recon {t['recon']:.4g} kl {t['kl']:.4g} ce {t['ce']:.4g}) "
                f"{p.images_per_s:.1f} img/s ETA {_hms(p.eta_s)}")
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def on_epoch_end(self, epoch, train_terms, test_terms) -> None:
        self._clear()
        test = f" test {test_terms['total']:.5g}" if test_terms else ""
        self._print(f"epoch {epoch}: train {train_terms['total']:.5g} (recon {train_terms['recon']:.4g}, "
                    f"kl {train_terms['kl']:.4g}, ce {train_terms['ce']:.4g}){test}")
        metrics = self._epoch_metrics(epoch)
        if metrics:
            from training.vae.metrics import format_metrics

            for split in ("test", "train"):
                if split in metrics:
                    m = metrics[split]
                    self._print(f"  {split} ({m['n_images']} images): {format_metrics(m)}")
        if self.log_json:
            doc = {"epoch": epoch, "train": train_terms, "test": test_terms}
            if metrics:
                doc["metrics"] = metrics
            print(json.dumps(doc), flush=True)

    def _epoch_metrics(self, epoch):
        history = getattr(getattr(self, "_trainer", None), "history", None) or []
        entry = history[-1] if history else {}
        return entry.get("metrics") if entry.get("epoch") == epoch else None

    def on_reconstructions(self, epoch, inputs, recons) -> None:
        pass

    def on_checkpoint(self, path, epoch) -> None:
        self._clear()
        self._print(f"checkpoint: {path} (epoch {epoch})")

    def on_finished(self, summary) -> None:
        self._clear()

    def on_failed(self, message) -> None:
        self._clear()

    def _clear(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(args: argparse.Namespace) -> int:
    from training.vae.checkpoint import CheckpointError, load_checkpoint
    from training.vae.distributed import strategy_from_env
    from training.vae.model import model_config_for
    from training.vae.trainer import LAST, Trainer, TrainingControl
    from training.store.workspace import Workspace, WorkspaceError

    try:
        settings = _settings_from(args)
        ws = Workspace.open(args.workspace)
    except (ConfigError, WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    strategy = strategy_from_env()
    try:
        resume = None
        last = args.out / LAST
        if args.resume:
            if not last.exists():
                raise ConfigError(f"{args.out}: no {LAST} to resume from")
            resume = load_checkpoint(last)
            changed = [k for k, v in settings["model"].items() if getattr(resume.model_config, k) != v]
            if changed:
                raise ConfigError("model settings cannot change when resuming: " + ", ".join(changed))
            train_cfg = resume.train_config.replace(**settings["train"])
            model_cfg = None
        else:
            if last.exists():
                raise ConfigError(f"{args.out} already holds {LAST}; pass --resume to continue it "
                                  "or choose another --out")
            train_cfg = TrainConfig().replace(**settings["train"])
            size = settings["model"].get("input_size")
            if size is not None and any(s != size for s in ws.image_shape):
                raise ConfigError(
                    f"input size {size} ({'preset ' + args.preset if args.preset else 'settings'}) but "
                    f"{args.workspace} holds {tuple(ws.image_shape)} images; re-derive the workspace "
                    f"(e.g. ct-vae ingest ... --crop {size}) or pass --input-size")
            model_cfg = model_config_for(ws.preprocess, **{"input_size": ws.image_shape[-1],
                                                           **settings["model"]})
        control = TrainingControl()
        callbacks = [TerminalProgress(log_json=args.log_json,
                                      bar=not args.no_progress and sys.stderr.isatty())]
        trainer = Trainer(ws, model_cfg, train_cfg, out_dir=args.out, callbacks=callbacks,
                          control=control, strategy=strategy, resume=resume)
    except (ConfigError, CheckpointError, TypeError) as exc:
        from training.commands._printable import printable

        print(f"error: {printable(exc)}", file=sys.stderr)
        ws.close()
        strategy.close()
        return 2

    def on_signal(signum, frame):
        if control.stop_requested:
            raise KeyboardInterrupt
        print("\nstopping after this batch (again to abort)...", file=sys.stderr, flush=True)
        control.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = trainer.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        ws.close()
    if strategy.rank != 0:
        return 1 if summary.status == "failed" else 0
    best = f", best test {summary.best_test:.5g} at epoch {summary.best_epoch}" if summary.best_test else ""
    final = summary.final_train["total"] if summary.final_train else float("nan")
    print(f"{summary.status}: {summary.epochs_completed}/{summary.epochs} epochs in {summary.seconds:.1f} s, "
          f"final train loss {final:.5g}{best}; {summary.train_images_per_s:.1f} images/s training, "
          f"{summary.images_per_s:.1f} images/s overall on {summary.device}", file=sys.stderr)
    if summary.message:
        print(summary.message, file=sys.stderr)
    if summary.last_checkpoint:
        print(f"checkpoint: {summary.last_checkpoint}", file=sys.stderr)
    if args.log_json:
        print(json.dumps({"summary": summary.to_dict()}), flush=True)
    return 1 if summary.status == "failed" else 0
