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
                   help="also read every stored array and verify its checksums, and those of "
                        "the head's tables and every entry's attributes (exit 1 when anything "
                        "is damaged; a damaged entry is re-loaded by the next drop of its DICOM)")
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
    from training.store.workspace import DamagedError, WorkspaceError

    try:
        d = describe(args.workspace)
    except DamagedError as exc:
        if exc.label and getattr(args, "check", False):  # an entry: --check lists them all
            return check(args.workspace, as_json=args.json)
        print(f"ct-vae info: {pr(exc)}", file=sys.stderr)
        return 1
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
    """`info --check`: verify every stored array (fletcher32), the head's tables and each
    entry's attributes (digests); name each damaged entry (recording it, so the next drop
    of its DICOM re-loads it) and each damaged head table."""
    from training.commands._printable import printable as pr
    from training.store.workspace import Workspace, WorkspaceError, data_dir

    try:
        with Workspace.open(path) as ws:
            found, nbytes = ws.verify()
            n = len(ws.patients)
            head_checked, unchecked, unrecorded = ws.head_checked, list(ws.unchecked), list(ws.unrecorded)
    except WorkspaceError as exc:  # the head itself (its settings, entry table, file list)
        print(f"ct-vae info: {pr(exc)}", file=sys.stderr)
        return 1
    head = [(k, r) for k, r in found if k == path.name and k not in {p.pseudonym for p in ws.patients}]
    damaged = [(k, r) for k, r in found if (k, r) not in head]
    if as_json:
        print(json.dumps({**(summary or {}), "check": {
            "entries": n, "bytes": nbytes,
            "damaged": [{"entry": k, "reason": r} for k, r in damaged],
            "head_damaged": [r for _, r in head],
            "unrecorded": unrecorded,  # damaged entries a next drop would not re-load
            "head_checked": head_checked,  # False: written before table checksums
            "unchecked_entries": unchecked}}, indent=1))  # no attribute checksums
        return 1 if found else 0
    for _, r in head:
        print(f"DAMAGED {pr(path.name)} (head): {pr(r)}")
    if head:
        print(f"check: the head {pr(path.name)} is damaged; the entries in "
              f"{pr(data_dir(path).name)}/ are not affected, but {pr(path.name)} must be "
              f"restored from a copy (or the workspace built again from its DICOM)")
    for k, r in damaged:
        print(f"DAMAGED {pr(k)}: {pr(r)}")
    if damaged and unrecorded:
        print(f"check: {len(damaged)} of {n} entries damaged; the damage of "
              f"{pr(', '.join(unrecorded))} could not be recorded: make "
              f"{pr(data_dir(path))} writable, run this check again, then drop their DICOM "
              f"again to re-ingest them")
    elif damaged:
        print(f"check: {len(damaged)} of {n} entries damaged; drop their DICOM again to "
              f"re-ingest them (the damage is recorded: the next ingest re-loads them instead "
              f"of calling them unchanged)")
    elif not head:
        print(f"check: all {n} entries read back with valid checksums "
              f"({nbytes / 1e6:.1f} MB stored)")
    if not head_checked:
        print("note: the head was written before its tables and settings had checksums: "
              "they were not checked (the next ingest writes them)")
    if unchecked:
        print(f"note: {len(unchecked)} entries were written before their attributes had "
              f"checksums: their attributes were not checked (their arrays were)")
    return 1 if found else 0
