"""`ct-vae`: the headless command line.

Each subcommand lives in its own module under training/commands/ and exposes
`register(subparsers)`, which adds its parser and sets `func` (called with the parsed
namespace; returns an exit code). Modules are discovered here, so adding a command is
adding a file. Run with `python -m training.cli` too (torchrun uses that form).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from training import __version__
from training import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ct-vae",
        description="Ingest DICOM CT + RTSTRUCT, train a VAE and analyse its latent space, without a screen.",
    )
    parser.add_argument("--version", action="version", version=f"ct-vae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"training.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    if "TORCHELASTIC_RUN_ID" in os.environ:
        # a torchrun rank: end with the launcher (armed before the slow imports, so a
        # launcher killed during start-up leaves no rank behind)
        from training.store.lock import die_with_parent

        die_with_parent()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of stdout went away (`ct-vae info w.h5 | head`): end quietly, with the
    shell's status for SIGPIPE, and keep Python's exit-time flush from complaining."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
