"""Loading one scanned CT series as a HU volume on its patient geometry.

Slices are ordered by ImagePositionPatient projected on the normal row_dir × col_dir
(never by file name or InstanceNumber). HU = stored value × RescaleSlope +
RescaleIntercept, per slice. Native little-endian pixel data is read straight from the
byte offset found by the scan (np.frombuffer, no second header parse) while the file's
size and mtime are unchanged; anything else goes through pydicom's decoders.
"""

from __future__ import annotations

import math
import os

import numpy as np
from pydicom.uid import UID

from training.dicom.deflate import InflateError, dcmread_bounded
from training.dicom.scan import (
    NATIVE_LE,
    _same_kind,
    check_pixel_length,
    check_rescale,
    copy_key,
    majority_filter,
)
from training.dicom.types import Cancelled, CTVolume, DicomError, SeriesRef, SliceHeader, Skipped
from training.dicom.geometry import VolumeGeometry

# Slices closer than this along the normal (mm) share a position.
DUPLICATE_TOLERANCE_MM = 0.01
# A gap wider than this many times the median spacing (and the slices' thickness) is
# reported as missing slices.
GAP_FACTOR = 1.5
# In-plane drift of slice origins (pixels) below which the stack counts as orthogonal.
TILT_TOLERANCE_PX = 0.01
# HU a CT can hold. Above HU_MAX: nothing a CT reconstructs (the extended CT scale ends at
# 30710 HU). Below HU_FLOOR: less than any stored int16 value with the usual intercept
# (−32768 − 1024). Padding outside the field of view is often −2000 or −3024 HU and
# covers at most ~22 % of a slice (the corners outside the reconstruction circle), so a
# slice of which more than half lies below HU_PADDING is not a CT image as described.
HU_MAX = 31000.0
HU_FLOOR = -34000.0
HU_PADDING = -2000.0

_PLUGINS = {
    # transfer syntax UID -> what to install
    "1.2.840.10008.1.2.4.50": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pip install pyjpegls (or pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.81": "pip install pyjpegls (or pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.90": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.92": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.93": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",
}
# JPEG processes the pylibjpeg plugins cannot decode (6/8, 10/12 and retired ones).
_GDCM_ONLY = "pip install python-gdcm (JPEG processes 6/8 and 10/12 decode only with GDCM)"


def plugin_hint(transfer_syntax: str) -> str:
    """What to install so pydicom can decode this transfer syntax."""
    if transfer_syntax in _PLUGINS:
        return _PLUGINS[transfer_syntax]
    if transfer_syntax.startswith("1.2.840.10008.1.2.4.5") or transfer_syntax.startswith(
        "1.2.840.10008.1.2.4.6"
    ):
        return _GDCM_ONLY
    return "pip install python-gdcm (it decodes most transfer syntaxes)"


def _ts_label(ts: str) -> str:
    name = UID(ts).name
    return f"{name} ({ts})" if name and name != ts else ts


class _SliceProblem(Exception):
    """One slice unusable; the series goes on without it."""


def _gdcm_available() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def _check_decoder(path: str, ts: str) -> bool:
    """True when pydicom decodes ts, False when only GDCM does (called directly: pydicom
    has no decoder for the retired JPEG processes 6/8 and 10/12); DicomError naming the
    package to install when neither can."""
    uid = UID(ts)
    if not uid.is_encapsulated:
        return True
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        if _gdcm_available():
            return False
        raise DicomError(
            path, f"pydicom has no decoder for {_ts_label(ts)}; {plugin_hint(ts)}"
        ) from None
    if not decoder.is_available:
        raise DicomError(
            path,
            f"compressed pixel data ({_ts_label(ts)}) but no decoder plugin is installed: "
            f"{plugin_hint(ts)}",
        )
    return True


_GDCM_TYPES = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
               "UINT32": np.uint32, "INT32": np.int32}


def _gdcm_decode(path: str) -> np.ndarray:
    """Stored values of a single-frame greyscale image decoded by GDCM itself."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        raise _SliceProblem("GDCM cannot read the file")
    image = reader.GetImage()
    kind = image.GetPixelFormat().GetScalarTypeAsString()
    if kind not in _GDCM_TYPES or image.GetPixelFormat().GetSamplesPerPixel() != 1:
        raise _SliceProblem(f"GDCM decodes it to {kind} × {image.GetPixelFormat().GetSamplesPerPixel()}, "
                            "not greyscale integers")
    cols, rows = image.GetDimension(0), image.GetDimension(1)
    data = image.GetBuffer().encode("utf-8", "surrogateescape")
    dtype = np.dtype(_GDCM_TYPES[kind])
    if len(data) != rows * cols * dtype.itemsize:
        raise _SliceProblem(f"GDCM decoded {len(data)} bytes for {rows}×{cols} pixels")
    return np.frombuffer(data, dtype).reshape(rows, cols)


def _check_hu(stored: np.ndarray, s: SliceHeader) -> tuple:
    """_SliceProblem when stored × slope + intercept lies far outside what a CT holds (a
    header whose rescale or pixel description does not fit its pixels); see HU_MAX.
    Returns the stored (min, max), which _rescale_into needs too."""
    lo, hi = stored.min().item(), stored.max().item()
    hu_lo, hu_hi = lo * s.slope + s.intercept, hi * s.slope + s.intercept
    if hu_hi > HU_MAX or hu_lo < HU_FLOOR:
        raise _SliceProblem(
            f"HU {hu_lo:.0f} to {hu_hi:.0f} after rescale (stored {lo:.0f} to {hi:.0f} × "
            f"RescaleSlope {s.slope:g} + RescaleIntercept {s.intercept:g}) lie outside what a CT "
            f"can hold ({HU_FLOOR:.0f} to {HU_MAX:.0f} HU); the header does not describe these pixels"
        )
    if hu_lo < HU_PADDING:
        t = (HU_PADDING - s.intercept) / s.slope  # stored values below t are below HU_PADDING
        if stored.dtype.kind in "iu":  # compare in the stored type (no float copy)
            t = math.ceil(t)
            below = stored.size if t > hi else int(np.count_nonzero(stored < stored.dtype.type(t)))
        else:
            below = int(np.count_nonzero(stored < t))
        if below * 2 > stored.size:
            raise _SliceProblem(
                f"{100 * below / stored.size:.0f} % of the pixels are below {HU_PADDING:.0f} HU after "
                f"rescale (RescaleSlope {s.slope:g}, RescaleIntercept {s.intercept:g}); air is "
                "−1000 HU and padding covers at most a quarter of a slice: the header does not "
                "describe these pixels"
            )
    return lo, hi


def _rescale_into(stored: np.ndarray, s: SliceHeader, out: np.ndarray, bounds=None) -> None:
    """out = stored × slope + intercept: float32 (one pass when the slope is 1), or int16
    HU rounded to the nearest integer and clipped to the int16 range (integer arithmetic
    when the slope is 1 and the intercept whole, which is every CT seen so far)."""
    if out.dtype == np.int16:
        if s.slope == 1.0 and float(s.intercept).is_integer():
            b = int(s.intercept)
            if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
                lo, hi = bounds if bounds is not None else (int(stored.min()), int(stored.max()))
                if hi <= 32767 and -32768 <= lo + b and hi + b <= 32767:  # no clipping needed
                    np.copyto(out, stored, casting="unsafe")
                    if b:
                        np.add(out, np.int16(b), out=out)
                    return
            wide = stored.astype(np.int64 if stored.dtype.itemsize >= 4 else np.int32)
            wide += b
        else:
            wide = np.multiply(stored, np.float32(s.slope), dtype=np.float32)
            wide += np.float32(s.intercept)
            np.rint(wide, out=wide)
        np.clip(wide, -32768, 32767, out=wide)
        out[...] = wide
        return
    if s.slope == 1.0:
        np.add(stored, np.float32(s.intercept), out=out, casting="unsafe")
        return
    np.multiply(stored, np.float32(s.slope), out=out, casting="unsafe")
    if s.intercept != 0.0:
        out += np.float32(s.intercept)


def _native_dtype(s: SliceHeader) -> np.dtype | None:
    if s.samples_per_pixel != 1 or s.bits_allocated not in (8, 16, 32):
        return None
    kind = "i" if s.pixel_representation == 1 else "u"
    return np.dtype(f"<{kind}{s.bits_allocated // 8}")


def _read_fast(s: SliceHeader, out: np.ndarray, on_file=None) -> bool:
    """Read native LE pixel values from the scanned offset; False when not applicable.

    on_file(path, data): when given, the whole file is read in one call and handed over
    (the caller hashes it: each file is read once)."""
    dtype = _native_dtype(s)
    if s.pixel_value_offset < 0 or s.transfer_syntax not in NATIVE_LE or dtype is None:
        return False
    nbytes = s.rows * s.columns * dtype.itemsize
    with open(s.path, "rb") as fp:
        st = os.fstat(fp.fileno())
        if st.st_size != s.size or st.st_mtime_ns != s.mtime_ns:
            return False
        if on_file is not None:
            data = fp.read()
            buf = memoryview(data)[s.pixel_value_offset:s.pixel_value_offset + nbytes]
        else:
            fp.seek(s.pixel_value_offset)
            buf = fp.read(nbytes)
    if len(buf) < nbytes:
        raise _SliceProblem(f"truncated: pixel data holds {len(buf)} of {nbytes} bytes")
    stored = np.frombuffer(buf, dtype).reshape(s.rows, s.columns)
    _rescale_into(stored, s, out, _check_hu(stored, s))
    if on_file is not None:
        on_file(s.path, data)
    return True


def _read_decoded(s: SliceHeader, out: np.ndarray) -> None:
    """Read through pydicom (compressed, big endian, deflated, or a changed file), or GDCM
    where pydicom has no decoder for the transfer syntax."""
    _check_decoder(s.path, s.transfer_syntax)
    try:
        ds = dcmread_bounded(s.path)  # a deflated data set: bounded before pydicom inflates it
    except InflateError as exc:
        raise _SliceProblem(str(exc)) from None
    except Exception as exc:
        raise _SliceProblem(f"unreadable ({type(exc).__name__}: {exc}); truncated or damaged file?") from None
    if "PixelData" not in ds:
        raise _SliceProblem("no pixel data")
    ts = str(ds.file_meta.get("TransferSyntaxUID", s.transfer_syntax)) if hasattr(ds, "file_meta") else s.transfer_syntax
    by_pydicom = _check_decoder(s.path, ts)
    ipp = ds.get("ImagePositionPatient")
    if ipp is not None and not np.allclose([float(v) for v in ipp], s.ipp, atol=1e-4):
        raise DicomError(s.path, "changed since the folder was scanned (different position); scan again")
    if not UID(ts).is_encapsulated:
        try:
            check_pixel_length(len(ds.PixelData), s.rows, s.columns, s.samples_per_pixel, s.bits_allocated)
        except ValueError as exc:
            raise _SliceProblem(str(exc)) from None
    try:
        stored = ds.pixel_array if by_pydicom else _gdcm_decode(s.path)
    except _SliceProblem:
        raise
    except Exception as exc:
        raise _SliceProblem(f"cannot decode pixel data ({type(exc).__name__}: {exc})") from None
    if stored.shape != (s.rows, s.columns):
        raise _SliceProblem(f"pixel array shape {stored.shape} is not {s.rows}×{s.columns}")
    try:
        slope = float(ds.get("RescaleSlope", 1.0) if ds.get("RescaleSlope", None) not in (None, "") else 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        check_rescale(slope, intercept)
    except (TypeError, ValueError) as exc:
        raise _SliceProblem(str(exc)) from None
    if (slope, intercept) != (s.slope, s.intercept):
        s = SliceHeader(**{**s.__dict__, "slope": slope, "intercept": intercept})
    _rescale_into(stored, s, out, _check_hu(stored, s))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def load_ct_series(ref: SeriesRef, cancel=None, *, dtype=np.float32, on_file=None) -> CTVolume:
    """Load a SeriesRef from scan() as HU (z, y, x) with its VolumeGeometry.

    dtype: float32 (exact stored × slope + intercept) or int16 (HU rounded to the nearest
    integer and clipped, what a workspace stores; no float copy when the slope is 1).
    on_file(path, data): called with the whole content of each file read natively
    (the ingest hashes files as they are read instead of reading them twice).

    Slices are sorted by position along the normal; slices of a minority orientation,
    size or spacing, unreadable slices (a lying header among them, see _check_hu) and
    copies at one position are left out, each in .skipped with the reason and what it
    means for the series (and as a warning). Of copies at one position the lossless one
    is read (scan.copy_key: lossless first, then path), another copy where it cannot be;
    ref.copies (files with a slice's SOPInstanceUID, which scan() lists as left out) are
    such copies too: one is read only where its slice's file cannot be, and then
    .skipped says so and supersedes the scan's line for every copy it names (the copy
    used is in .sources, the file each slice was read from). A slice is lost only when
    no copy of it decodes.
    A gantry tilt (slices stacked off the normal) is corrected by shifting each slice
    in-plane (linear interpolation) onto an orthogonal grid. Raises DicomError for an
    unusable series (no readable slice, a missing decoder) and Cancelled when
    cancel.is_set().
    """
    name = ref.series_uid or "series"
    if not ref.slices:
        raise DicomError(name, "series has no CT slices")
    warnings: list[str] = []
    skipped: list[Skipped] = []
    slices, dropped = majority_filter(list(ref.slices))
    for d in dropped:
        skipped.append(Skipped(d.path, f"{d.reason}; left out"))

    first = slices[0]
    row_dir = _unit(first.iop[:3])
    col_dir = np.asarray(first.iop[3:], dtype=np.float64)
    col_dir = _unit(col_dir - (col_dir @ row_dir) * row_dir)
    normal = _unit(np.cross(row_dir, col_dir))
    positions = np.array([np.asarray(s.ipp) @ normal for s in slices])
    order = np.argsort(positions, kind="stable")
    groups = _position_groups([slices[i] for i in order], positions[order])
    alternates, strays = _alternates(slices, getattr(ref, "copies", ()), normal)

    ny, nx = first.rows, first.columns
    hu = np.empty((len(groups), ny, nx), dtype=np.dtype(dtype))
    good: list[SliceHeader] = []
    lost: list[tuple[float, SliceHeader, str, int]] = []  # unreadable, no copy at its position decodes
    unusable: dict[str, str] = {}  # path → why it cannot be read
    for pos, group in groups:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"loading {name} cancelled")
        target = hu[len(good)]
        if alternates:  # same-UID copies (scan lists them) are tried where their file fails
            group = sorted([*group, *(c for s in group for c in alternates.get(s.path, ()))], key=copy_key)
        kept, failed = None, []
        for s in group:
            try:
                problem = _read_one(s, target, on_file)
            except DicomError as exc:  # a missing decoder: fatal unless a copy decodes
                if len(group) == 1:
                    raise
                problem = exc.reason
            if problem is None:
                kept = s
                break
            failed.append((s, problem))
        if kept is None:
            lost.extend((pos, s, problem, len(group)) for s, problem in failed)
            unusable.update((s.path, problem) for s, problem in failed)
            continue
        good.append(kept)
        for s, problem in failed:
            unusable[s.path] = problem
            skipped.append(Skipped(s.path, f"{problem}; {_copy_of(s, kept, pos)}, {kept.path}, is used instead"))
        for s in group[group.index(kept) + 1:]:
            if s in alternates.get(kept.path, ()):
                continue  # the scan's reason for it stands: the file it names is kept
            skipped.append(Skipped(s.path, _copy_reason(s, kept, pos, target)))
    if not good:
        raise DicomError(slices[0].path, "no slice of the series could be read; "
                         + "; ".join(f"{s.path}: {p}" for _, s, p, _ in lost[:3]))
    kept_pos = np.array([np.asarray(s.ipp) @ normal for s in good])
    for pos, s, problem, n in lost:
        below, above = kept_pos[kept_pos < pos], kept_pos[kept_pos > pos]
        if len(below) and len(above):
            what = (f"the series is stored without it, with a gap between its slices at "
                    f"{_fmt(below.max())} and {_fmt(above.min())} mm along the normal")
        else:
            what = f"the series is stored without it, {len(good)} slices, one fewer at its {'end' if len(below) else 'start'}"
        both = f"; none of the {n} copies of this slice could be decoded" if n > 1 else ""
        skipped.append(Skipped(s.path, f"{problem}{both}; slice left out: {what}"))
    for c, s, why_not in strays:  # the scan named s as kept: say what became of it
        if s.path in unusable:
            skipped.append(Skipped(c.path, f"same SOPInstanceUID as {s.path}, which cannot be decoded "
                                           f"({unusable[s.path]}), but not read in its place: {why_not}"))
    warnings.extend(f"{k.path}: {k.reason}" for k in skipped)
    if len(good) < len(hu):
        hu = hu[: len(good)].copy()

    ipp = np.array([s.ipp for s in good], dtype=np.float64)
    dy, dx = first.pixel_spacing
    ipp, hu = _correct_tilt(ipp, hu, row_dir, col_dir, normal, (dy, dx), warnings)
    _check_spacing(good, ipp @ normal, warnings)

    geometry = VolumeGeometry(
        ipp=ipp,
        row_dir=row_dir,
        col_dir=col_dir,
        pixel_spacing=(float(dy), float(dx)),
        shape=(len(good), ny, nx),
        frame_of_reference_uid=ref.frame_of_reference_uid,
        sop_uids=tuple(s.sop_instance_uid for s in good),
    )
    return CTVolume(hu=hu, geometry=geometry, warnings=warnings, skipped=skipped,
                    sources=tuple(s.path for s in good))


def _read_one(s: SliceHeader, target: np.ndarray, on_file=None) -> str | None:
    """Read slice s into target: None when done, else why it cannot be used (DicomError
    and Cancelled propagate: they concern the whole series)."""
    try:
        if not _read_fast(s, target, on_file):
            _read_decoded(s, target)
    except _SliceProblem as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    except (DicomError, Cancelled):
        raise
    except Exception as exc:  # damaged data must not stop the series
        return f"unreadable pixel data ({type(exc).__name__}: {exc})"
    return None


def _position_groups(slices: list[SliceHeader], pos: np.ndarray) -> list[tuple[float, list[SliceHeader]]]:
    """Slices (sorted along the normal) grouped by position (within DUPLICATE_TOLERANCE_MM
    of the group's first); each group's files in the order they are tried (copy_key: the
    lossless copy first, then by path)."""
    groups: list[tuple[float, list[SliceHeader]]] = []
    for p, s in zip(pos, slices):
        if groups and abs(p - groups[-1][0]) <= DUPLICATE_TOLERANCE_MM:
            groups[-1][1].append(s)
        else:
            groups.append((float(p), [s]))
    for _, g in groups:
        if len(g) > 1:
            g.sort(key=copy_key)
    return groups


def _alternates(slices: list[SliceHeader], copies, normal: np.ndarray):
    """(SeriesRef.copies by the path of the slice whose SOPInstanceUID they share: the
    files read in its place where it cannot be decoded; [(copy, slice, why it cannot
    stand in)]): a copy at another position or of another size, orientation or spacing
    is no stand-in for its slice (which of the two is right?)."""
    out: dict[str, list[SliceHeader]] = {}
    strays: list[tuple[SliceHeader, SliceHeader, str]] = []
    if not copies:
        return out, strays
    by_uid = {s.sop_instance_uid: s for s in slices if s.sop_instance_uid}
    for c in copies:
        s = by_uid.get(c.sop_instance_uid)
        if s is None or c.path == s.path:
            continue
        at, at_s = np.asarray(c.ipp) @ normal, np.asarray(s.ipp) @ normal
        if not _same_kind(s, c):
            strays.append((c, s, "its size, orientation or pixel spacing differs"))
        elif abs(at - at_s) > DUPLICATE_TOLERANCE_MM:
            strays.append((c, s, f"it lies at another position ({_fmt(at)} mm along the normal, "
                                 f"that file at {_fmt(at_s)} mm)"))
        else:
            out.setdefault(s.path, []).append(c)
    return out, strays


def _copy_of(s: SliceHeader, kept: SliceHeader, pos: float) -> str:
    """How kept, read in place of s, relates to it (for "…, <kept>, is used instead")."""
    if s.sop_instance_uid and s.sop_instance_uid == kept.sop_instance_uid:
        return "the copy with the same SOPInstanceUID"
    return f"the copy at the same position ({_fmt(pos)} mm along the normal)"


def _copy_reason(s: SliceHeader, kept: SliceHeader, pos: float, kept_hu: np.ndarray) -> str:
    """Why s, another file at the position of kept, is left out (its pixels compared)."""
    if s.lossy and not kept.lossy:
        rule = "this file is lossy compressed, that one lossless"
    else:  # copies sort lossless first (copy_key), so kept is of the same quality
        rule = "copies of the same quality: the first path is kept"
    other = np.empty_like(kept_hu)
    try:
        problem = _read_one(s, other)
    except DicomError as exc:
        problem = exc.reason
    if problem is not None:
        pixels = f"it cannot be read either ({problem})"
    elif np.array_equal(other, kept_hu):
        pixels = "same pixels"
    else:
        diff = float(np.max(np.abs(other.astype(np.float64) - kept_hu)))
        pixels = f"different pixels, up to {diff:g} HU apart"
    return (f"duplicate slice: same position ({_fmt(pos)} mm along the normal) as {kept.path}, "
            f"which is kept ({rule}); {pixels}; duplicate left out")


def _correct_tilt(ipp, hu, row_dir, col_dir, normal, spacing, warnings):
    """Shift slices stacked off the normal (gantry tilt) onto an orthogonal grid.

    Pixel (i, j) of slice k lies at ipp_k + j·dx·row_dir + i·dy·col_dir. The corrected
    slice k keeps its position along the normal but takes the in-plane origin of slice
    0: new ipp_k = ipp_0 + ((ipp_k − ipp_0)·n) n, so its pixel (i, j) is the original
    pixel (i − v_k, j − u_k) with u_k, v_k the in-plane drift of ipp_k in pixels.
    """
    if len(ipp) < 2:
        return ipp, hu
    dy, dx = spacing
    d = ipp - ipp[0]
    u = d @ row_dir / dx
    v = d @ col_dir / dy
    drift = float(np.max(np.hypot(u, v)))
    if drift <= TILT_TOLERANCE_PX:
        return ipp, hu
    from scipy.ndimage import shift as nd_shift

    stack = d[-1]
    angle = float(np.degrees(np.arccos(min(1.0, abs(stack @ normal) / np.linalg.norm(stack)))))
    fill = float(hu.min())
    out = np.empty(hu.shape, dtype=np.float32)
    for k in range(len(hu)):
        if np.hypot(u[k], v[k]) <= TILT_TOLERANCE_PX:
            out[k] = hu[k]
        else:
            nd_shift(hu[k].astype(np.float32, copy=False), (v[k], u[k]), output=out[k], order=1,
                     mode="constant", cval=fill)
    if hu.dtype != np.float32:  # interpolated in float, stored as the caller asked
        np.rint(out, out=out)
        np.clip(out, np.iinfo(hu.dtype).min, np.iinfo(hu.dtype).max, out=out)
        out = out.astype(hu.dtype)
    new_ipp = ipp[0] + np.outer(d @ normal, normal)
    warnings.append(
        f"gantry tilt: slices stacked {angle:.1f}° off the slice normal; each slice shifted "
        f"in-plane (up to {drift:.1f} pixels, linear interpolation) onto an orthogonal grid; "
        f"pixels shifted in from outside the field of view are {fill:g} HU"
    )
    return new_ipp, out


def _check_spacing(slices, pos, warnings):
    if len(pos) == 1:
        t = slices[0].slice_thickness
        warnings.append(
            f"{slices[0].path}: the series has one slice only, slice spacing unknown"
            + (f" (SliceThickness {t:g} mm)" if t else "")
        )
        return
    gaps = np.diff(pos)
    med = float(np.median(gaps))
    missing = []
    for k, g in enumerate(gaps):
        t = [s.slice_thickness for s in (slices[k], slices[k + 1])]
        local = max(med, min(t)) if all(t) else med
        if g > GAP_FACTOR * local:
            n = int(round(g / med)) - 1
            missing.append(
                f"gap of {_fmt(g)} mm between slices at {_fmt(pos[k])} and {_fmt(pos[k + 1])} mm "
                f"({slices[k].path}, {slices[k + 1].path}), about {n} slice(s) missing"
            )
    if missing:
        more = f"; and {len(missing) - 5} more gaps" if len(missing) > 5 else ""
        warnings.append(
            f"missing slices? median spacing {_fmt(med)} mm; " + "; ".join(missing[:5]) + more
        )
    if gaps.max() - gaps.min() > max(0.01, 0.01 * med):
        warnings.append(
            f"uneven slice spacing: {_fmt(gaps.min())} to {_fmt(gaps.max())} mm (median "
            f"{_fmt(med)} mm); slice positions are kept as measured"
        )
