"""RT Structure Sets (RTSTRUCT): reading, rasterisation on a CT grid, exclusive labels.

Conventions: contour points are DICOM patient coordinates (LPS, mm); masks and label
volumes have array axes (z, y, x) = (slice k, row i, column j) of a
`training.dicom.geometry.VolumeGeometry`.

Rasterisation rule: a voxel belongs to a ROI when its centre lies inside the ROI's
region on its slice (a centre exactly on an edge may fall either way). The contours of
one ROI on one slice make the region as `training.dicom.contour_rule` states: duplicated
outlines count once, nested outlines are holes (an island in a hole fills again),
overlapping non-nested outlines are united, CLOSEDPLANAR_XOR contours combine by
exclusive or. A contour goes to
the slice its ContourImageSequence names when that SOP Instance UID is in the series;
otherwise (a dangling reference, or none) to the slice nearest its plane, if that slice
lies within half the local slice spacing, else it is dropped with a warning.

ROI names are matched (`match_roi_names`) ignoring case, whitespace, '_' and '-':
"Lung_Left", "lung left" and "LUNG-LEFT" are one name.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.errors import InvalidDicomError

from training.dicom.contour_rule import (
    RULE, XOR_TYPES, SliceOutlines, combine, region_area, resolve_slice)
from training.dicom.deflate import InflateError, check_deflated_file
from training.dicom.header import quiet_pydicom_validation
from training.dicom.geometry import VolumeGeometry

quiet_pydicom_validation()

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# CLOSEDPLANAR_XOR (the standard's spelling; the variant CLOSED_PLANAR_XOR is read alike)
CLOSED_TYPES = ("CLOSED_PLANAR", *XOR_TYPES)
AREA_MIN_PIXELS = 200  # slices at least this large enter the fidelity report's area check


class RTStructError(ValueError):
    """An RTSTRUCT cannot be used; str() is "<path>: <reason>"."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Contour:
    """One contour: (n, 3) points in LPS mm, its ContourGeometricType (upper case) and the
    SOP Instance UID of the image it was drawn on (None when the file names none)."""

    points: np.ndarray
    geometric_type: str
    referenced_sop_uid: str | None = None


@dataclass(frozen=True)
class ROI:
    """A structure: ROI Number, ROI Name, display colour (r, g, b) 0–255 or None, its
    Frame of Reference UID ("" when not stated) and its contours."""

    number: int
    name: str
    contours: tuple[Contour, ...] = ()
    color: tuple[int, int, int] | None = None
    frame_of_reference_uid: str = ""
    n_damaged: int = 0  # contours whose data could not be read (see StructureSet.warnings)


@dataclass(frozen=True)
class StructureSet:
    """What `read_rtstruct` found. `warnings` are problems met while parsing (bad contour
    data, contours naming an unknown ROI); the set is still usable."""

    path: str
    frame_of_reference_uid: str
    rois: tuple[ROI, ...]
    referenced_series_uid: str | None = None
    sop_instance_uid: str = ""
    warnings: tuple[str, ...] = ()
    # every Frame of Reference UID the file names (ReferencedFrameOfReferenceSequence, top level)
    frame_uids: tuple[str, ...] = ()

    @property
    def roi_names(self) -> list[str]:
        return [r.name for r in self.rois]

    def roi(self, name: str) -> ROI | None:
        """The ROI called `name`, matched as `match_roi_names` does; None if absent."""
        found = match_roi_names(self.roi_names, [name])[name]
        return None if found is None else next(r for r in self.rois if r.name == found)


@dataclass
class RasterResult:
    """masks: ROI name → bool (z, y, x) on the geometry's grid; warnings: one line each,
    starting with the RTSTRUCT's path."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # ROI name → fidelity record (see `roi_fidelity`); one per ROI of the structure set
    fidelity: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------------------- reading


def _read_dataset(path: str | Path, **kwargs) -> pydicom.Dataset:
    try:
        with open(path, "rb") as fp:
            # a deflated data set is inflated whole by pydicom, with or without force
            check_deflated_file(fp)
            try:
                ds = pydicom.dcmread(fp, **kwargs)
            except InvalidDicomError:
                # Files without the 128-byte preamble / 'DICM' (older writers, pydicom's own
                # rtstruct.dcm) are still DICOM; the Modality check below rejects non-DICOM.
                fp.seek(0)
                ds = pydicom.dcmread(fp, force=True, **kwargs)
    except InflateError as exc:
        raise RTStructError(path, str(exc)) from None
    except (InvalidDicomError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise RTStructError(path, f"not readable as DICOM ({exc})") from exc
    except Exception as exc:  # pydicom raises many types on damaged files
        raise RTStructError(path, f"damaged DICOM file ({type(exc).__name__}: {exc})") from exc
    modality = str(ds.get("Modality", "")).upper()
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality != "RTSTRUCT" and sop_class != RTSTRUCT_SOP_CLASS:
        # A damaged length can make Modality swallow the elements after it: quote only a code.
        shown = modality if re.fullmatch(r"[A-Z0-9 _]{1,16}", modality) else (
            f"malformed, {len(modality)} characters" if modality else "missing")
        raise RTStructError(path, f"not an RT Structure Set (Modality {shown})")
    return ds


def roi_names(path: str | Path) -> list[str]:
    """ROI names of an RTSTRUCT in StructureSetROISequence order, without reading contours.

    Raises RTStructError when the file is not a readable RTSTRUCT.
    """
    ds = _read_dataset(
        path, specific_tags=["Modality", "SOPClassUID", "StructureSetROISequence"]
    )
    names = []
    for item in ds.get("StructureSetROISequence", []) or []:
        name = str(item.get("ROIName", "") or "").strip()
        names.append(name or f"ROI {item.get('ROINumber', '?')}")
    return names


def _colour(value) -> tuple[int, int, int] | None:
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return rgb if len(rgb) == 3 else None  # type: ignore[return-value]


_CONTOUR_DATA = 0x30060050


def _raw_numbers(item) -> np.ndarray | None:
    """ContourData parsed straight from the raw DS bytes ("x\\y\\z\\…").

    pydicom builds one DSfloat object per number (about 5 µs each: seconds for a large
    structure set); numpy parses the same text in bulk. None when the element is already
    converted or the text is not plain numbers (the caller falls back to pydicom).
    """
    try:
        elem = item.get_item(_CONTOUR_DATA)
    except (KeyError, AttributeError):
        return None
    value = getattr(elem, "value", None)
    if not isinstance(value, (bytes, bytearray)):
        return None
    text = bytes(value).replace(b"\\", b" ").replace(b"\x00", b" ")
    try:
        pts = np.array(text.split(), dtype=np.float64)
    except ValueError:
        return None
    return pts


def _contour_points(item) -> np.ndarray:
    pts = _raw_numbers(item)
    if pts is None:
        raw = item.get("ContourData", None)
        if raw is None:
            raise ValueError("no ContourData")
        values = [raw] if not isinstance(raw, (list, tuple, MultiValue)) else raw
        pts = np.asarray([float(v) for v in values], dtype=np.float64)
    if pts.size == 0 or pts.size % 3:
        raise ValueError(f"ContourData holds {pts.size} numbers, not a multiple of 3")
    pts = pts.reshape(-1, 3)
    if not np.isfinite(pts).all():
        raise ValueError("ContourData holds non-finite numbers")
    return pts


def read_rtstruct(path: str | Path) -> StructureSet:
    """Read ROI names, numbers, colours, contours (LPS mm) and references of an RTSTRUCT.

    Raises RTStructError(path, reason) when the file is not a readable RTSTRUCT. Damaged
    contours are skipped and reported in `StructureSet.warnings`.
    """
    from training.dicom.rtstruct_raw import read_roi_contours

    # Contours straight from the bytes where the layout allows (most of the reading
    # time); the rest of the structure set (names, references) through pydicom.
    contour_items = read_roi_contours(str(path))
    if contour_items is None:
        ds = _read_dataset(path)
    else:
        ds = _read_dataset(path, specific_tags=_HEADER_TAGS)
    path = str(path)
    warnings: list[str] = []
    try:
        return _parse(ds, path, warnings, contour_items)
    except RTStructError:
        raise
    except Exception as exc:  # a malformed sequence must not crash the caller
        reason = f"malformed structure set ({type(exc).__name__}: {exc})"
        raise RTStructError(path, reason) from exc


# What _parse reads through pydicom when the contours come from rtstruct_raw.
_HEADER_TAGS = ["SpecificCharacterSet", "Modality", "SOPClassUID", "SOPInstanceUID",
                "FrameOfReferenceUID", "ReferencedFrameOfReferenceSequence",
                "StructureSetROISequence"]


def _parse(ds: pydicom.Dataset, path: str, warnings: list[str], contour_items=None) -> StructureSet:
    """contour_items: the ROIContourSequence read by rtstruct_raw (None: from `ds`)."""
    for_uid = ""
    series_uid = None
    frames: list[str] = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for_uid = for_uid or str(fr.get("FrameOfReferenceUID", "") or "")
        frames.append(str(fr.get("FrameOfReferenceUID", "") or ""))
        for study in fr.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                uid = str(series.get("SeriesInstanceUID", "") or "")
                series_uid = series_uid or uid or None

    declared: dict[int, tuple[str, str]] = {}
    order: list[int] = []
    for item in ds.get("StructureSetROISequence", []) or []:
        try:
            number = int(item.get("ROINumber"))
        except (TypeError, ValueError):
            warnings.append(
                f"{path}: a StructureSetROISequence item has no valid ROI Number; skipped"
            )
            continue
        name = str(item.get("ROIName", "") or "").strip() or f"ROI {number}"
        roi_for = str(item.get("ReferencedFrameOfReferenceUID", "") or "")
        if number in declared:
            warnings.append(f"{path}: ROI Number {number} declared twice; the first kept")
            continue
        declared[number] = (name, roi_for)
        order.append(number)
    if not for_uid:
        for_uid = next((f for _, f in declared.values() if f), "")
        for_uid = for_uid or str(ds.get("FrameOfReferenceUID", "") or "")

    frames.append(str(ds.get("FrameOfReferenceUID", "") or ""))
    contours: dict[int, list[Contour]] = defaultdict(list)
    damaged: dict[int, int] = defaultdict(int)
    colours: dict[int, tuple[int, int, int] | None] = {}
    if contour_items is None:
        contour_items = ds.get("ROIContourSequence", []) or []
    for rc in contour_items:
        try:
            number = int(rc.get("ReferencedROINumber"))
        except (TypeError, ValueError):
            warnings.append(f"{path}: an ROIContourSequence item names no ROI; skipped")
            continue
        if number not in declared:
            # Contours of an undeclared ROI still carry data; keep them under a made-up name.
            warnings.append(
                f"{path}: contours for ROI Number {number}, which StructureSetROISequence "
                "does not declare; named 'ROI {number}'".replace("{number}", str(number))
            )
            declared[number] = (f"ROI {number}", "")
            order.append(number)
        colours[number] = _colour(rc.get("ROIDisplayColor", None))
        name = declared[number][0]
        for index, item in enumerate(rc.get("ContourSequence", []) or []):
            try:
                pts = _contour_points(item)
            except (ValueError, TypeError) as exc:
                warnings.append(f"{path}: ROI '{name}' contour {index}: {exc}; skipped")
                damaged[number] += 1
                continue
            ref = None
            for img in item.get("ContourImageSequence", []) or []:
                ref = str(img.get("ReferencedSOPInstanceUID", "") or "") or None
                if ref:
                    break
            kind = str(item.get("ContourGeometricType", "") or "").strip().upper()
            contours[number].append(Contour(pts, kind, ref))

    # Two ROIs with one name would collide as mask keys; the later gets its number appended.
    seen: set[str] = set()
    rois = []
    for number in order:
        name, roi_for = declared[number]
        if name in seen:
            new = f"{name} ({number})"
            warnings.append(f"{path}: ROI name '{name}' used twice; ROI {number} renamed '{new}'")
            name = new
        seen.add(name)
        rois.append(
            ROI(number, name, tuple(contours.get(number, ())), colours.get(number), roi_for,
                damaged.get(number, 0))
        )
    return StructureSet(
        path=path,
        frame_of_reference_uid=for_uid,
        rois=tuple(rois),
        referenced_series_uid=series_uid,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        warnings=tuple(warnings),
        frame_uids=tuple(sorted({f for f in frames if f})),
    )


# ------------------------------------------------------------------------ rasterising


def fill_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even–odd fill of polygons given as (n, 2) arrays of fractional (row i, column j).

    Returns bool (ny, nx): True where the pixel centre (i, j) lies inside an odd number of
    the polygons (one slice of `fill_polygon_slices`).
    """
    return fill_polygon_slices({0: polygons}, (1, *shape))[0]


def fill_polygon_slices(polygons: dict[int, list[np.ndarray]], shape: tuple[int, int, int]
                        ) -> np.ndarray:
    """Even–odd fill of the polygons of many slices at once: {slice k: [(n, 2) arrays of
    fractional (row i, column j)]} → bool (nz, ny, nx).

    Scanline parity: a horizontal ray from the centre (i, j) crosses the edges whose ends
    straddle row i (half-open: min(y) ≤ i < max(y)); the centre is inside when the number
    of crossings at x ≤ j is odd. Only the crossings themselves are computed (about two
    per row and polygon), then one cumulative sum along x gives every slice's parity.
    """
    nz, ny, nx = shape
    out = np.zeros(shape, dtype=bool)
    ks: list[int] = []
    polys: list[np.ndarray] = []
    for k, plist in polygons.items():
        for poly in plist:
            poly = np.asarray(poly, dtype=np.float64)
            if len(poly) >= 3:
                polys.append(poly)
                ks.append(k)
    if not polys:
        return out
    lens = np.array([len(poly) for poly in polys], dtype=np.int64)
    a = np.concatenate(polys)  # edge starts; each edge ends at the next point of its polygon
    ends = np.cumsum(lens)
    nxt = np.arange(1, len(a) + 1)
    nxt[ends - 1] = ends - lens  # the closing edge returns to the polygon's first point
    b = a[nxt]
    ya, yb = a[:, 0], b[:, 0]
    lo = np.maximum(np.ceil(np.minimum(ya, yb)), 0).astype(np.int64)
    hi = np.minimum(np.ceil(np.maximum(ya, yb)), ny).astype(np.int64)
    n = np.maximum(hi - lo, 0)  # rows each edge crosses (none for horizontal edges)
    total = int(n.sum())
    if total == 0:
        return out
    e = np.repeat(np.arange(len(a)), n)
    r = lo[e] + (np.arange(total) - (np.cumsum(n) - n)[e])
    ya_e, yb_e = ya[e], yb[e]
    x = a[e, 1] + (r - ya_e) / (yb_e - ya_e) * (b[e, 1] - a[e, 1])
    # a crossing at x flips the centres j ≥ x; at or beyond nx it flips none
    col = np.clip(np.ceil(x), 0, nx).astype(np.int64)
    used, slot = np.unique(np.repeat(np.asarray(ks), lens)[e], return_inverse=True)
    r0, r1 = int(r.min()), int(r.max())
    c0, c1 = int(col.min()), int(col.max())
    flips = np.zeros((len(used), r1 - r0 + 1, c1 - c0 + 1), dtype=np.uint8)
    np.add.at(flips, (slot, r - r0, col - c0), 1)
    # uint8 sums wrap at 256, which keeps the parity bit
    parity = np.cumsum(flips, axis=2, dtype=np.uint8) & 1
    width = min(c1, nx) - c0
    if width > 0:
        out[used, r0:r1 + 1, c0:c0 + width] = parity[:, :, :width].astype(bool)
    return out


def _z_tolerances(positions: np.ndarray, single_slice_mm: float) -> np.ndarray:
    """Half the local slice spacing at each slice (the wider neighbouring gap), mm."""
    if len(positions) < 2:
        return np.full(len(positions), single_slice_mm)
    gaps = np.diff(positions)
    left = np.concatenate([[gaps[0]], gaps])
    right = np.concatenate([gaps, [gaps[-1]]])
    return 0.5 * np.maximum(left, right)


def roi_fidelity(name: str) -> dict:
    """An empty fidelity record of one ROI: what rasterise read, collapsed and skipped.

    contours: contour items read; duplicates: CLOSED_PLANAR outlines collapsed into one
    already kept on their slice; holes: kept outlines nested an odd number of levels;
    overlaps: pairs of overlapping non-nested outlines united; xor: CLOSEDPLANAR_XOR
    contours; skipped: reason → count; slices: slices with contours; area_max_diff: the
    largest |mask area − polygon area| / polygon area over slices with at least
    AREA_MIN_PIXELS mask pixels (None when no slice is that large), at slice
    area_max_diff_slice; frame: "own", "structure set's (fallback)" or "mismatch".
    """
    return {"roi": name, "contours": 0, "duplicates": 0, "holes": 0, "overlaps": 0, "xor": 0,
            "skipped": {}, "slices": 0, "area_slices_checked": 0, "area_max_diff": None,
            "area_max_diff_slice": None, "frame": "own", "mask": False}


def _skip(fid: dict, reason: str, n: int = 1) -> None:
    if n:
        fid["skipped"][reason] = fid["skipped"].get(reason, 0) + int(n)


def _type_skip_reason(kind: str) -> str:
    if kind == "POINT":
        return "point"
    if kind.startswith("OPEN"):
        return "open"
    return f"type {kind or 'missing'}"


def rasterise(
    structure_set: StructureSet,
    geometry: VolumeGeometry,
    single_slice_tolerance_mm: float = 1.0,
    series_uid: str | None = None,
) -> RasterResult:
    """Rasterise every ROI with closed planar contours onto `geometry`'s grid.

    Returns RasterResult(masks: name → bool (z, y, x), warnings, fidelity). Raises
    RTStructError when the structure set's Frame of Reference UID differs from the
    geometry's (both named; the check is skipped where either is unknown). An ROI whose own
    ReferencedFrameOfReferenceUID differs from the CT's gets no mask, unless that UID names
    no frame of the file while the structure set's frame and referenced series match the CT
    (`series_uid`: the CT's SeriesInstanceUID): then it is rasterised with a warning.
    ROIs holding no closed planar contour (only POINT / OPEN_PLANAR ones, or none) get no
    mask and a warning. Contours not parallel to the slices, with fewer than 3 points, or
    with no slice within half a slice spacing (`single_slice_tolerance_mm` for a one-slice
    series) are dropped with a warning. When several planes of one ROI fall on one slice
    (contours drawn on a finer z grid than the CT's), only the plane nearest the slice is
    kept. The contours of a slice combine by the rule of `training.dicom.contour_rule`.
    In-plane positions are measured from each slice's own ImagePositionPatient, which
    keeps series with per-slice in-plane shifts exact.
    """
    path = structure_set.path
    result = RasterResult()
    geo_for = geometry.frame_of_reference_uid
    ss_for = structure_set.frame_of_reference_uid
    if geo_for and ss_for and geo_for != ss_for:
        raise RTStructError(
            path, f"Frame of Reference UID {ss_for} differs from the CT series' {geo_for}"
        )
    if not structure_set.rois:
        result.warnings.append(f"{path}: the structure set holds no ROI")
        return result

    nz, ny, nx = geometry.shape
    normal = geometry.normal
    ipp = np.asarray(geometry.ipp, dtype=np.float64)
    positions = ipp @ normal
    tol = _z_tolerances(positions, single_slice_tolerance_mm)
    # A contour is "on one plane" when its spread along the normal is small against the
    # slice spacing; DS rounding of oblique coordinates stays far below this.
    spacing = geometry.slice_spacing if nz > 1 else 2 * single_slice_tolerance_mm
    plane_tol = float(np.clip(0.25 * spacing, 0.01, 0.5))
    dy, dx = float(geometry.pixel_spacing[0]), float(geometry.pixel_spacing[1])
    sop_index = {uid: k for k, uid in enumerate(geometry.sop_uids) if uid}
    n_dangling = 0

    for roi in structure_set.rois:
        fid = roi_fidelity(roi.name)
        result.fidelity[roi.name] = fid
        fid["contours"] = len(roi.contours) + roi.n_damaged
        _skip(fid, "damaged data", roi.n_damaged)
        if geometry.frame_of_reference_uid and roi.frame_of_reference_uid and (
            roi.frame_of_reference_uid != geo_for
        ):
            series_match = bool(series_uid) and structure_set.referenced_series_uid == series_uid
            if (roi.frame_of_reference_uid not in structure_set.frame_uids
                    and ss_for == geo_for and series_match):
                fid["frame"] = "structure set's (fallback)"
                result.warnings.append(
                    f"{path}: ROI '{roi.name}' names Frame of Reference "
                    f"{roi.frame_of_reference_uid}, a frame missing from the structure set's "
                    "list; the set's own frame and referenced series are the CT's, so the ROI "
                    "is rasterised in the CT's frame"
                )
            else:
                fid["frame"] = "mismatch"
                _skip(fid, "frame of reference not the CT's", len(roi.contours))
                result.warnings.append(
                    f"{path}: ROI '{roi.name}' is in Frame of Reference "
                    f"{roi.frame_of_reference_uid}, not the CT's {geo_for}; no mask"
                )
                continue
        closed = []
        for c in roi.contours:
            if c.geometric_type in CLOSED_TYPES:
                closed.append(c)
            else:
                _skip(fid, _type_skip_reason(c.geometric_type))
        if not closed:
            kinds = sorted({c.geometric_type or "untyped" for c in roi.contours})
            what = f"only {', '.join(kinds)} contours" if kinds else "no contours"
            result.warnings.append(f"{path}: ROI '{roi.name}' has {what}; no mask")
            continue
        dropped: dict[str, int] = defaultdict(int)
        off_plane = 0
        far_planes: list[float] = []
        by_slice: dict[int, list[tuple[float, np.ndarray, str]]] = defaultdict(list)
        for c in closed:
            if len(c.points) < 3:
                dropped["fewer than 3 points"] += 1
                continue
            s = c.points @ normal
            if s.max() - s.min() > plane_tol:
                dropped["not parallel to the slices"] += 1
                continue
            plane = float(s.mean())
            k = sop_index.get(c.referenced_sop_uid) if c.referenced_sop_uid else None
            if k is not None and abs(positions[k] - plane) > tol[k] + 1e-6:
                off_plane += 1
            if k is None:
                if c.referenced_sop_uid:
                    n_dangling += 1
                k = int(np.argmin(np.abs(positions - plane)))
                if abs(positions[k] - plane) > tol[k] + 1e-6:
                    far_planes.append(plane)
                    continue
            by_slice[k].append((plane, c.points, c.geometric_type))

        parity: dict[int, list[np.ndarray]] = {}
        resolved: dict[int, SliceOutlines] = {}
        for k, items in by_slice.items():
            planes = np.array([p for p, _, _ in items])
            nearest = planes[np.argmin(np.abs(planes - positions[k]))]
            keep = np.abs(planes - nearest) <= plane_tol
            if not keep.all():
                reason = "another plane of the ROI lies nearer the same slice"
                dropped[reason] += int((~keep).sum())
            polys = []
            for (_, pts, kind), kept in zip(items, keep):
                if kept:
                    d = pts - ipp[k]
                    ij = np.stack((d @ geometry.col_dir / dy, d @ geometry.row_dir / dx), axis=1)
                    lo, hi = ij.min(axis=0), ij.max(axis=0)
                    if hi[0] < -0.5 or lo[0] > ny - 0.5 or hi[1] < -0.5 or lo[1] > nx - 0.5:
                        dropped["outside the image (in-plane)"] += 1
                        continue
                    polys.append((kind, ij))
            if not polys:
                continue
            if len(polys) == 1:
                kind, ij = polys[0]
                res = (SliceOutlines(xor=[ij]) if kind in XOR_TYPES
                       else SliceOutlines(closed=[ij], depth=[0]))
            else:
                res = resolve_slice(polys, (dy, dx))
            resolved[k] = res
            fid["duplicates"] += res.duplicates
            fid["holes"] += res.holes
            fid["overlaps"] += res.overlaps
            fid["xor"] += len(res.xor)
            if res.simple:
                parity[k] = res.polygons()
        mask = fill_polygon_slices(parity, (nz, ny, nx))
        for k, res in resolved.items():
            if not res.simple:
                mask[k] = combine(res, fill_polygons, (ny, nx))
        _measure_areas(fid, mask, resolved, ny, nx)
        if off_plane:
            result.warnings.append(
                f"{path}: ROI '{roi.name}': {off_plane} contour(s) lie more than half a slice "
                "spacing from the image they reference; kept on that image"
            )
        if far_planes:
            shown = ", ".join(f"{p:.2f}" for p in sorted(set(far_planes))[:5])
            more = ", ..." if len(set(far_planes)) > 5 else ""
            _skip(fid, "off the grid", len(far_planes))
            dropped[
                f"no slice within half a slice spacing of their plane (at {shown}{more} mm "
                f"along the normal; slices span {positions.min():.2f} to {positions.max():.2f})"
            ] = len(far_planes)
        for reason, count in dropped.items():
            if not reason.startswith("no slice within"):
                _skip(fid, reason, count)
            result.warnings.append(
                f"{path}: ROI '{roi.name}': {count} contour(s) dropped: {reason}"
            )
        if fid["duplicates"]:
            result.warnings.append(
                f"{path}: ROI '{roi.name}': {fid['duplicates']} duplicated outline(s) counted once"
            )
        if not mask.any():
            result.warnings.append(
                f"{path}: ROI '{roi.name}' covers no voxel centre of the series"
            )
        fid["mask"] = True
        result.masks[roi.name] = mask
    if n_dangling:
        result.warnings.append(
            f"{path}: {n_dangling} contour(s) reference images not in the series; placed by z"
        )
    return result


def _measure_areas(fid: dict, mask: np.ndarray, resolved: dict[int, SliceOutlines],
                   ny: int, nx: int) -> None:
    """Per slice: mask pixels against the rule's polygon area (pixels², clipped to the
    image); the largest relative difference over slices with ≥ AREA_MIN_PIXELS pixels."""
    fid["slices"] = len(resolved)
    if not resolved:
        return
    worst, worst_k, checked = None, None, 0
    for k in sorted(resolved):
        n = np.count_nonzero(mask[k])
        if n < AREA_MIN_PIXELS:
            continue
        area = region_area(resolved[k], fill_polygons, ny, nx)
        checked += 1
        diff = abs(float(n) - area) / area if area > 0 else float("inf")
        if worst is None or diff > worst:
            worst, worst_k = diff, int(k)
    fid["area_slices_checked"] = checked
    fid["area_max_diff"] = None if worst is None else round(float(worst), 6)
    fid["area_max_diff_slice"] = worst_k


# --------------------------------------------------------------------- exclusive labels

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_roi_name(name: str) -> str:
    """The key names are matched by: case-folded, whitespace, '_' and '-' removed."""
    return _SEPARATORS.sub("", str(name)).casefold()


def match_roi_names(available, wanted) -> dict[str, str | None]:
    """Map each wanted ROI name to the available name it denotes, or None.

    An exact match wins; otherwise the first available name equal after
    `normalise_roi_name` (case, whitespace, '_' and '-' ignored).
    """
    available = list(available)
    by_key: dict[str, str] = {}
    for name in available:
        by_key.setdefault(normalise_roi_name(name), name)
    exact = set(available)
    return {w: (w if w in exact else by_key.get(normalise_roi_name(w))) for w in wanted}


def exclusive_labels(
    masks: dict[str, np.ndarray],
    rois,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Exclusive one-hot layout as integer labels, uint8 with the masks' shape (z, y, x).

    0 = complement (in no chosen ROI), k = rois[k-1]. Where ROIs overlap the earlier name
    in `rois` wins. Names are matched as `match_roi_names` does; a ROI without a mask
    simply has no voxels (the caller reports it). `shape` is needed only when no chosen
    ROI has a mask.
    """
    rois = tuple(rois)
    if len(rois) > 255:
        raise ValueError(f"{len(rois)} ROIs do not fit uint8 labels (at most 255)")
    found = match_roi_names(masks.keys(), rois)
    present = [
        (k, masks[found[name]]) for k, name in enumerate(rois, start=1) if found[name] is not None
    ]
    if shape is None:
        if not present:
            raise ValueError("no chosen ROI has a mask; pass shape")
        shape = present[0][1].shape
    labels = np.zeros(shape, dtype=np.uint8)
    for k, mask in reversed(present):  # earlier names are written last and so win
        if mask.shape != tuple(shape):
            raise ValueError(
                f"mask of ROI '{rois[k - 1]}' has shape {mask.shape}, not {tuple(shape)}"
            )
        labels[mask] = k
    return labels
