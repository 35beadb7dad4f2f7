"""`ct-vae info`: what a workspace holds — patients, series, slices, spacing, ROIs, split,
preprocessing, provenance and every skipped file with its reason."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="list a workspace's CT series and patients, ROIs, split and skipped files",
        description="Print the contents of a workspace. Patients appear only by pseudonym.",
    )
    p.add_argument("workspace", type=Path, help="workspace file (.h5)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--check", action="store_true",
                   help="also read every stored array and verify its checksums (exit 1 when "
                        "an entry is damaged)")
    p.set_defaults(func=main)


def describe(path: Path) -> dict:
    """The workspace summary as a plain dict (what `--json` prints)."""
    from training.store.units import unit_counts
    from training.store.workspace import Workspace

    with Workspace.open(path) as ws:
        d = {
            "workspace": str(path),
            "schema_version": ws.schema_version,
            "data_hash": ws.data_hash,
            "preprocess": ws.preprocess.to_dict(),
            "image_shape": list(ws.image_shape),
            "roi_names": list(ws.roi_names),
            "available_rois": list(ws.available_rois),
            "split_seed": ws.split_seed,
            "test_fraction": ws.test_fraction,
            "n_images": ws.n_images,
            # one row per CT series (a patient may have several: "patient" groups them);
            # the counts say which unit they count
            **unit_counts(ws.patients),
            "series": [
                {"pseudonym": p.pseudonym, "patient": p.patient, "split": p.split,
                 "n_images": p.n_images,
                 "source_slices": p.source_shape[0] if p.source_shape else None,
                 "source_shape": list(p.source_shape) if p.source_shape else None,
                 "spacing_mm": list(p.spacing), "rois": list(p.rois), "warnings": list(p.warnings)}
                for p in ws.patients
            ],
            "scale": _scale(ws),
            "patients": _patients(ws.patients),
            "skipped": [{"path": s[0], "reason": s[1]} for s in ws.skipped],
            "provenance": ws.provenance,
        }
        for i, row in enumerate(d["series"]):  # per-ROI rasterisation report; None: not recorded
            row["fidelity"] = ws.fidelity(i)
        return d


def _patients(infos) -> list[dict]:
    """One row per patient: its pseudonym, split, series labels and images."""
    out: dict[str, dict] = {}
    for p in infos:
        row = out.setdefault(p.patient or p.pseudonym, {"patient": p.patient or p.pseudonym,
                                                        "split": p.split, "series": [], "n_images": 0})
        row["series"].append(p.pseudonym)
        row["n_images"] += int(p.n_images)
    return list(out.values())


def main(args: argparse.Namespace) -> int:
    from training.commands._printable import printable as pr
    from training.dicom.fidelity import format_report
    from training.store.workspace import WorkspaceError

    try:
        d = describe(args.workspace)
    except WorkspaceError as exc:
        print(f"ct-vae info: {pr(exc)}", file=sys.stderr)
        return 1
    if getattr(args, "check", False):
        return check(args.workspace, as_json=args.json, summary=d)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    pp = d["preprocess"]
    print(f"workspace {pr(d['workspace'])} (schema {d['schema_version']}, data hash {d['data_hash']})")
    print(f"preprocessing: window {pp['window_name']} [{pp['hu_min']:g}, {pp['hu_max']:g}] HU, "
          f"crop {pp['crop']}, size {pp['size']}, slices {pp['slices']}, mode {pp['mode']}, "
          f"ROIs {pr(', '.join(pp['rois'])) or '(CT only)'}; image shape {tuple(d['image_shape'])}")
    from training.store.units import series_of_patients

    splits = ", ".join(f"{k} {series_of_patients(v['n_series'], v['n_patients'])}"
                       for k, v in d["by_split"].items())
    print(f"{series_of_patients(d['n_series'], d['n_patients'])}, {d['n_images']} images"
          f"{' (' + splits + ')' if splits else ''}; split seed {d['split_seed']}, "
          f"test fraction {d['test_fraction']:g} of the patients")
    print(f"{'series':<12} {'patient':<10} {'split':<5} {'images':>6} {'slices':>6}  "
          f"{'spacing dz,dy,dx mm':<22} ROIs")
    for p in d["series"]:
        sp = ",".join(f"{v:.3g}" for v in p["spacing_mm"])
        print(f"{p['pseudonym']:<12} {p['patient']:<10} {p['split']:<5} {p['n_images']:>6} "
              f"{p['source_slices'] if p['source_slices'] is not None else '-':>6}  {sp:<22} "
              f"{pr(', '.join(p['rois'])) or '-'}")
        for w in p["warnings"]:
            print(f"{'':<12} warning: {pr(w)}")
        for line in format_report(p.get("fidelity"), indent=" " * 13):
            print(pr(line))
    _print_scale(d)
    if d["skipped"]:
        print(f"skipped files ({len(d['skipped'])}):")
        for s in d["skipped"]:
            print(f"  {pr(s['path'])}: {pr(s['reason'])}")
    return 0


def _scale(ws) -> dict:
    """Physical scale: each series' pixels and field of view in mm, the training images'
    under the workspace's settings, and a warning for mixed spacings (training/store/scale.py)."""
    from training.store import scale

    out = scale.scale_summary(ws.preprocess, scale.series_with_positions(ws))  # the real z step
    out["settings"] = scale.describe_settings(ws.preprocess)
    return out


def _print_scale(d: dict) -> None:
    sc = d.get("scale")
    if not sc:
        return

    def pair(v, fmt="{:.3g}"):
        return "-" if not v else "×".join(fmt.format(x) for x in v)

    print(f"physical scale: {sc['settings']}")
    print(f"{'series':<12} {'pixel mm':<12} {'FOV mm':<14} {'image pixel mm':<15} {'image FOV mm':<14}")
    for r in sc["series"]:
        print(f"{r['series']:<12} {pair(r['pixel_mm']):<12} {pair(r['fov_mm'], '{:.0f}'):<14} "
              f"{pair(r['image_pixel_mm']):<15} {pair(r['image_fov_mm'], '{:.0f}'):<14}")
    for w in sc["warnings"]:
        print(f"warning: {w}")


def check(path: Path, *, as_json: bool = False, summary: dict | None = None) -> int:
    """`info --check`: verify every stored array (fletcher32); name each damaged entry."""
    from training.commands._printable import printable as pr
    from training.store.workspace import Workspace

    with Workspace.open(path) as ws:
        damaged, nbytes = ws.verify()
        n = len(ws.patients)
    if as_json:
        print(json.dumps({**(summary or {}), "check": {
            "entries": n, "bytes": nbytes,
            "damaged": [{"entry": k, "reason": r} for k, r in damaged]}}, indent=1))
    else:
        if damaged:
            for k, r in damaged:
                print(f"DAMAGED {pr(k)}: {pr(r)}")
            print(f"check: {len(damaged)} of {n} entries damaged; drop their DICOM again to "
                  f"re-ingest them")
        else:
            print(f"check: all {n} entries read back with valid checksums "
                  f"({nbytes / 1e6:.1f} MB stored)")
    return 1 if damaged else 0
