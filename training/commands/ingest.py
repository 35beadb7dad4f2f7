"""`ct-vae ingest`: DICOM folders → workspace, with a progress bar and a list of skipped files."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from training.config import WINDOW_PRESETS, ConfigError, PreprocessConfig


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "off", "0") else int(text)


def _mm_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "0") else float(text)


def add_preprocess_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing (unset options keep the workspace's current value)",
                             argument_default=argparse.SUPPRESS)
    w = g.add_mutually_exclusive_group()
    w.argument_default = argparse.SUPPRESS
    w.add_argument("--window", choices=sorted(WINDOW_PRESETS), help="HU window preset")
    w.add_argument("--hu-min", type=float, help="custom window lower limit, HU (with --hu-max)")
    g.add_argument("--hu-max", type=float, help="custom window upper limit, HU")
    g.add_argument("--crop", type=_int_or_none, metavar="N|none", help="centre crop N×N pixels (of the --spacing grid when one is set; replaces --fov; "
                   "none: no crop, the whole field)")
    g.add_argument("--size", type=_int_or_none, metavar="N|none", help="resample in-plane to N×N after cropping")
    g.add_argument("--slices", choices=("all", "around", "range"), help="which slices to keep")
    g.add_argument("--slice-center", type=float, metavar="MM", help="'around': centre z position, mm")
    g.add_argument("--slice-count", type=int, metavar="N", help="'around': number of slices")
    g.add_argument("--slice-start", type=int, metavar="I", help="'range': first slice index")
    g.add_argument("--slice-stop", type=_int_or_none, metavar="I", help="'range': stop index (exclusive)")
    g.add_argument("--mode", choices=("2d", "3d"), help="2D slices or 3D volumes (cube)")
    g.add_argument("--depth", type=_int_or_none, metavar="N", help="3D: cube depth (default: size or crop)")
    g.add_argument("--spacing", type=_mm_or_none, metavar="MM|none",
                   help="resample in-plane to MM × MM pixels before cropping (none: keep each series' pixels)")
    g.add_argument("--fov", type=_mm_or_none, metavar="MM|none",
                   help="field of view: centred MM × MM square (replaces --crop; none: the whole field)")
    g.add_argument("--z-spacing", type=_mm_or_none, metavar="MM|none",
                   help="resample along z onto a uniform MM grid from the real slice positions")
    g.add_argument("--rois", metavar="NAMES", help='comma-separated ROI names in priority order, e.g. "Lung-Left,Lung-Right"; "" for CT only')


def preprocess_from_args(args: argparse.Namespace, base: PreprocessConfig) -> PreprocessConfig:
    """Options given on the command line override `base` (the workspace's settings)."""
    given = vars(args)
    changes: dict = {}
    if "window" in given:
        lo, hi = WINDOW_PRESETS[args.window]
        changes.update(window_name=args.window, hu_min=lo, hu_max=hi)
    if "hu_min" in given or "hu_max" in given:
        if "hu_min" not in given or "hu_max" not in given:
            raise ConfigError("--hu-min and --hu-max go together")
        changes.update(window_name="custom", hu_min=args.hu_min, hu_max=args.hu_max)
    for name in ("crop", "size", "slices", "slice_center", "slice_count", "slice_start",
                 "slice_stop", "mode", "depth"):
        if name in given:
            changes[name] = given[name]
    for name in ("spacing", "fov", "z_spacing"):
        if name in given:
            changes[name] = given[name]
    # crop (pixels) and fov (mm) are one setting in two units: the one given replaces the
    # other, also when it is "none" (--crop none: the whole field, not the default FOV)
    if "crop" in given and "fov" not in given:
        changes["fov"] = None
    if "fov" in given and "crop" not in given:
        changes["crop"] = None
    if "rois" in given:
        changes["rois"] = tuple(r.strip() for r in args.rois.split(",") if r.strip())
    return base.replace(**changes)


def register(sub) -> None:
    p = sub.add_parser(
        "ingest",
        help="read DICOM CT + RTSTRUCT folders into a workspace",
        description="Find every DICOM file below PATH (by content, recursively), group it into "
        "series, attach RTSTRUCTs, preprocess and store everything in the workspace (HDF5). "
        "Unchanged files dropped again are not re-read; changed preprocessing re-derives "
        "from the stored source without reading DICOM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="folders or files")
    p.add_argument("--workspace", "-w", type=Path, required=True, help="workspace file (.h5)")
    add_preprocess_args(p)
    p.add_argument("--workers", type=int, default=2, help="loader processes (1 = in this process)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="test share of patients (new workspace)")
    p.add_argument("--seed", type=int, default=0, help="split seed (new workspace)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout instead of a progress bar")
    p.set_defaults(func=main)


def _current_cfg(path: Path) -> PreprocessConfig:
    if not path.exists():
        return PreprocessConfig.new_workspace()
    from training.store.workspace import Workspace

    with Workspace.open(path) as ws:
        return ws.preprocess


class ProgressBar:
    """A one-line terminal bar on stderr: phase, bar, done/total, message."""

    def __init__(self, stream=None, width: int = 30):
        # sys.stderr looked up now, not at import (a test's captured stream may be closed since)
        self.stream, self.width, self.last = stream or sys.stderr, width, 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, phase: str, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if self.tty and now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = done / total if total else 0.0
        fill = int(frac * self.width)
        line = f"{phase:<9} [{'#' * fill}{'.' * (self.width - fill)}] {done}/{total} {message[:40]}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if total and done >= total:
                self.stream.write("\n")
        elif total and done >= total or phase == "merge":
            self.stream.write(line + "\n")
        self.stream.flush()


def main(args: argparse.Namespace) -> int:
    from training.commands._printable import printable as pr
    from training.store.ingest import ingest
    from training.store.workspace import WorkspaceError

    try:
        cfg = preprocess_from_args(args, _current_cfg(args.workspace))
    except (ConfigError, WorkspaceError) as exc:
        print(f"ct-vae ingest: {pr(exc)}", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"ct-vae ingest: no such file or folder: {pr(', '.join(missing))}", file=sys.stderr)
        return 2

    def emit(obj):
        print(json.dumps(obj), flush=True)

    if args.json:
        def progress(phase, done, total, message):
            emit({"event": "progress", "phase": phase, "done": done, "total": total, "message": message})

        def on_patient(info):
            emit({"event": "patient", "pseudonym": info.pseudonym, "patient": info.patient,
                  "n_images": info.n_images, "spacing": list(info.spacing), "rois": list(info.rois)})
    else:
        progress = ProgressBar()
        on_patient = None
    try:
        report = ingest(args.paths, args.workspace, cfg, progress=progress, on_patient=on_patient,
                        workers=args.workers, test_fraction=args.test_fraction, seed=args.seed)
    except WorkspaceError as exc:
        print(f"ct-vae ingest: {pr(exc)}", file=sys.stderr)
        return 1
    if args.json:
        emit({"event": "report", **report.to_dict()})
        return 0
    print(f"{pr(args.workspace)}: {len(report.added)} series added, {len(report.unchanged)} unchanged, "
          f"{len(report.rederived)} re-derived, {len(report.skipped)} file(s) skipped "
          f"({report.n_files} files, {report.seconds:.1f} s)")
    for note in report.notes:
        print(f"note: {pr(note)}")
    for roi, labels in sorted(report.rois_missing.items()):
        print(f"ROI {pr(repr(roi))} missing in {len(labels)} series: {', '.join(labels)}")
    if report.skipped:
        print("skipped:")
        for path, reason in report.skipped:
            print(f"  {pr(path)}: {pr(reason)}")
    if report.cancelled:
        print("cancelled: what was committed is kept")
        return 130
    return 0
