"""The per-ROI fidelity report of one workspace entry: what rasterisation made of each
structure, in numbers a physicist can check.

`build_report` gathers the records `training.dicom.rtstruct.rasterise` fills (one per ROI,
see `rtstruct.roi_fidelity`) into the JSON document stored with the entry
(``EntryData.fidelity``); `format_report` turns it into the lines `ct-vae info` prints
and the Data tab shows. Areas are compared per slice: mask area = voxel centres inside
(pixels); polygon area = the area of the region the contour rule makes (distinct outlines,
holes cut, overlaps united; pixels², clipped to the image).
"""

from __future__ import annotations

from collections.abc import Iterable

from training.dicom.contour_rule import DUPLICATE_TOLERANCE_MM, RULE
from training.dicom.rtstruct import AREA_MIN_PIXELS

VERSION = 1
AREA_TARGET = 0.02  # a slice whose mask area is further than this from the polygon area is flagged
NOT_RECORDED = "not recorded (ingested before fidelity reports existed; re-ingest to see it)"


def build_report(rois: Iterable[tuple[str, dict]], failed: Iterable[tuple[str, str]] = ()
                 ) -> dict:
    """rois: (structure set file as shown, rasterise's fidelity record); failed: (file,
    reason) of structure sets that could not be used at all."""
    return {
        "version": VERSION,
        "rule": RULE,
        "duplicate_tolerance_mm": DUPLICATE_TOLERANCE_MM,
        "area_min_pixels": AREA_MIN_PIXELS,
        "area_target": AREA_TARGET,
        "rois": [{**rec, "structure_set": name} for name, rec in rois],
        "failed": [{"structure_set": f, "reason": r} for f, r in failed],
    }


def _skipped_text(skipped: dict) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"


def _area_text(rec: dict) -> str:
    diff = rec.get("area_max_diff")
    if diff is None:
        return f"no slice with ≥ {AREA_MIN_PIXELS} pixels"
    flag = "" if diff <= AREA_TARGET else f"  ABOVE {AREA_TARGET:.0%}"
    return (f"{diff:.2%} (slice {rec.get('area_max_diff_slice')}, "
            f"{rec.get('area_slices_checked', 0)} slices checked){flag}")


def roi_rows(report: dict | None) -> list[dict]:
    """One row per ROI for a table: the columns `format_report` prints, as text."""
    if not report:
        return []
    rows = []
    for rec in report.get("rois", []):
        rows.append({
            "ROI": rec.get("roi", ""),
            "structure set": rec.get("structure_set", ""),
            "contours": str(rec.get("contours", 0)),
            "duplicates collapsed": str(rec.get("duplicates", 0)),
            "holes": str(rec.get("holes", 0)),
            "overlaps united": str(rec.get("overlaps", 0)),
            "XOR": str(rec.get("xor", 0)),
            "skipped": _skipped_text(rec.get("skipped", {})),
            "frame": rec.get("frame", ""),
            "mask": "yes" if rec.get("mask") else "no",
            "max area difference": _area_text(rec),
        })
    return rows


def format_report(report: dict | None, indent: str = "  ") -> list[str]:
    """Text lines of a report (None → one line saying it was not recorded)."""
    if report is None:
        return [f"{indent}fidelity: {NOT_RECORDED}"]
    rows = roi_rows(report)
    lines = []
    if not rows and not report.get("failed"):
        return [f"{indent}fidelity: no RT structure set"]
    lines.append(f"{indent}fidelity (rule: {report.get('rule', '?')}):")
    for r in rows:
        lines.append(
            f"{indent}  {r['ROI']} [{r['structure set']}]: {r['contours']} contours, "
            f"{r['duplicates collapsed']} duplicates collapsed, {r['holes']} holes, "
            f"{r['overlaps united']} overlaps united, {r['XOR']} XOR; skipped: {r['skipped']}; "
            f"frame: {r['frame']}; mask: {r['mask']}; "
            f"max |mask − polygon| area: {r['max area difference']}")
    for f in report.get("failed", []):
        lines.append(f"{indent}  {f['structure_set']}: not used ({f['reason']})")
    return lines
