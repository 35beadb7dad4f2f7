"""`ct-vae export`: one patient's preprocessed arrays (and optionally its source) to NumPy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a patient's preprocessed volume and masks to .npy/.npz",
        description="Write OUT/<pseudonym>_images.npy (float32 in [0, 1], axes (z, y, x) or "
        "(1, D, H, W) in 3D), OUT/<pseudonym>_labels.npy (uint8: 0 = complement, k = ROI k) "
        "and OUT/<pseudonym>.npz with both plus spacing and ROI names. --source adds the "
        "native HU (int16) and one boolean mask per ROI (OUT/<pseudonym>_source.npz).",
    )
    p.add_argument("workspace", type=Path, help="workspace file (.h5)")
    p.add_argument("--patient", required=True, action="append",
                   help="pseudonym, e.g. PAT-0001 (repeatable; 'all' for every series)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--source", action="store_true", help="also export native HU and ROI masks")
    p.set_defaults(func=main)


def export_patient(ws, index: int, out: Path, source: bool = False) -> list[Path]:
    from training.atomic import atomic_save_npy, atomic_save_npz

    info = ws.patients[index]
    images, labels = ws.read_patient(index)
    name = info.pseudonym
    meta = json.dumps({"pseudonym": name, "patient": info.patient, "spacing_mm": list(info.spacing),
                       "roi_names": list(ws.roi_names), "preprocess": ws.preprocess.to_dict(),
                       "data_hash": ws.data_hash})
    written = [atomic_save_npy(out / f"{name}_images.npy", images)]
    arrays = {"images": images, "spacing": np.asarray(info.spacing), "roi_names": np.asarray(ws.roi_names, dtype=str),
              "meta": np.asarray(meta)}
    if labels is not None:
        written.append(atomic_save_npy(out / f"{name}_labels.npy", labels))
        arrays["labels"] = labels
    written.append(atomic_save_npz(out / f"{name}.npz", **arrays))
    if source:
        hu, masks, geometry = ws.read_source(index)
        src = {"hu": hu, "roi_names": np.asarray(sorted(masks), dtype=str),
               "geometry": np.asarray(json.dumps(geometry.to_dict() if geometry else None))}
        for k, roi in enumerate(sorted(masks)):
            src[f"mask_{k}"] = masks[roi]
        written.append(atomic_save_npz(out / f"{name}_source.npz", **src))
    return written


def main(args: argparse.Namespace) -> int:
    from training.store.workspace import Workspace, WorkspaceError

    try:
        with Workspace.open(args.workspace) as ws:
            if "all" in args.patient:
                indices = list(range(len(ws.patients)))
            else:
                indices = []
                for name in args.patient:
                    try:
                        indices.append(ws.patient_index(name))
                    except KeyError:
                        known = ", ".join(p.pseudonym for p in ws.patients[:10])
                        print(f"ct-vae export: no patient {name!r} in {args.workspace} (known: {known}…)",
                              file=sys.stderr)
                        return 2
            for i in indices:
                for path in export_patient(ws, i, args.out, args.source):
                    print(path)
    except WorkspaceError as exc:
        print(f"ct-vae export: {exc}", file=sys.stderr)
        return 1
    return 0
