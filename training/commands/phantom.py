"""`ct-vae phantom`: write a synthetic thorax cohort (DICOM CT + RTSTRUCT per patient)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantom",
        help="write a synthetic thorax CT cohort with RT structures (DICOM)",
        description=(
            "Write N synthetic thorax patients as DICOM: OUT/patient_000/CT/*.dcm and "
            "OUT/patient_000/RTSTRUCT/rs.dcm with ROIs Body, Lung-Left, Lung-Right, Heart, "
            "Spinal-Cord, Spine. Patient i of a seed is the same whatever N."
        ),
    )
    p.add_argument("--patients", type=int, required=True, metavar="N", help="number of patients")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--slices", type=int, default=24, help="axial slices per patient (default 24)")
    p.add_argument("--size", type=int, default=128, help="rows = columns per slice (default 128)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--pixel-spacing", type=float, default=1.5, help="in-plane spacing, mm (default 1.5)")
    p.add_argument("--slice-thickness", type=float, default=3.0,
                   help="slice thickness = spacing between slices, mm (default 3.0)")
    p.add_argument("--json", action="store_true", help="print one JSON summary instead of progress lines")
    p.set_defaults(func=run)


def _check(args) -> str | None:
    if args.patients < 1:
        return f"--patients must be at least 1, got {args.patients}"
    if args.slices < 1:
        return f"--slices must be at least 1, got {args.slices}"
    if args.size < 16:
        return f"--size must be at least 16, got {args.size}"
    if not args.pixel_spacing > 0 or not args.slice_thickness > 0:
        return "--pixel-spacing and --slice-thickness must be positive"
    if args.out.exists() and not args.out.is_dir():
        return f"{args.out}: exists and is not a folder"
    return None


def run(args: argparse.Namespace) -> int:
    from training.dicom.phantom import generate_cohort

    problem = _check(args)
    if problem:
        print(f"ct-vae phantom: {problem}", file=sys.stderr)
        return 2

    # Progress names the folder only: the fake patient names/IDs stay inside the files.
    def progress(done: int, total: int, info) -> None:
        if not args.json:
            print(f"[{done}/{total}] {info.folder.name}: {info.n_slices} slices + RTSTRUCT", flush=True)

    t0 = time.perf_counter()
    try:
        infos = generate_cohort(
            args.out, args.patients, slices=args.slices, size=args.size, seed=args.seed,
            pixel_spacing=args.pixel_spacing, slice_thickness=args.slice_thickness,
            progress=progress,
        )
    except OSError as e:
        print(f"ct-vae phantom: cannot write to {args.out}: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    if args.json:
        summary = {
            "out": str(args.out),
            "seed": args.seed,
            "seconds": round(seconds, 3),
            "patients": [
                {
                    "folder": str(i.folder),
                    "ct_dir": str(i.ct_dir),
                    "rtstruct": str(i.rtstruct),
                    "slices": i.n_slices,
                    "shape": list(i.shape),
                    "spacing_mm": list(i.spacing),
                }
                for i in infos
            ],
        }
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {len(infos)} patients to {args.out} in {seconds:.1f} s")
    return 0
