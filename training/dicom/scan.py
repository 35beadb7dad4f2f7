"""Content-based DICOM discovery: header-only scan, grouping into CT series and RTSTRUCTs.

A file is DICOM when it has the 128-byte preamble + "DICM", or when it starts with a
plausible data element (group 0x0002/0x0008) and parses to a dataset with a SOP Class or
Modality; file names and extensions are ignored. Each file is read once, header only
(`stop_before_pixels`); for native little-endian files the byte offset of the pixel
values is recorded so load_ct_series can read them without parsing the header again.
"""

from __future__ import annotations

import os
import re
import struct
from collections import defaultdict
from typing import Callable, Iterable

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.uid import UID

from training.dicom.deflate import check_deflated_file
from training.dicom.header import read_native_header
from training.dicom.identity import IDENTIFYING_KEYWORDS, note_identity
from training.dicom.types import (
    Cancelled,
    ScanResult,
    SeriesRef,
    Skipped,
    SliceHeader,
    StructRef,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
IMPLICIT_LE = "1.2.840.10008.1.2"

# Orientation cosines closer than this are the same orientation (DICOM stores ~6 digits).
IOP_TOLERANCE = 1e-3

_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"


MAX_EDGE = 8192  # pixels per slice edge; clinical CT is 512 or 1024
_US_KEYWORDS = {"Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
                "HighBit"}
# Transfer syntaxes whose pixel data may have lost information (JPEG baseline/extended and
# their retired siblings, JPEG-LS near-lossless, JPEG 2000 and HTJ2K that allow lossy).
LOSSY_TS = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.52",
    "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.54", "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.56", "1.2.840.10008.1.2.4.58", "1.2.840.10008.1.2.4.59",
    "1.2.840.10008.1.2.4.60", "1.2.840.10008.1.2.4.61", "1.2.840.10008.1.2.4.62",
    "1.2.840.10008.1.2.4.63", "1.2.840.10008.1.2.4.64", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
}
_TAGS: dict[str, int] = {}


def _value(ds, keyword: str):
    """An element's value, read from the raw bytes where pydicom has not converted it yet
    (about ten times faster than ds.get): str for text VRs ("\\"-joined when
    multi-valued), int for the US elements, None when absent or empty."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = tag_for_keyword(keyword)
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return None
    v = elem.value
    if isinstance(elem, RawDataElement):
        if keyword in _US_KEYWORDS:
            return int.from_bytes(v[:2], "little" if elem.is_little_endian else "big") if len(v) >= 2 else None
        text = v.decode("latin-1").strip(" \x00")
        return text or None
    if keyword in _US_KEYWORDS:
        return int(v)
    if isinstance(v, (list, tuple, MultiValue)):
        return "\\".join(str(x) for x in v)
    return str(v).strip() or None


_UID_CHARS = re.compile(r"[0-9.]{1,64}")
_NUMBER_CHARS = re.compile(r"[0-9eE+\-. \\]{0,80}")
_CODE_CHARS = re.compile(r"[A-Z0-9 _]{1,16}")


# What a stored UID may hold: printable ASCII without spaces or backslashes. Lenient about
# digits and the 64-character limit (some writers break both); a damaged length that
# swallows the next elements brings their binary tags (control bytes) with it.
_PLAUSIBLE_UID = re.compile(r"[!-\[\]-~]{1,128}")


def _uid(ds, keyword: str) -> str:
    """A UID element's text ("" when absent); ValueError when it cannot be a UID, since it
    would be stored (geometry, entry attributes) or shown with whatever it swallowed."""
    text = _text(ds, keyword)
    if text and not _PLAUSIBLE_UID.fullmatch(text):
        raise ValueError(f"{keyword} is malformed ({len(text)} characters; damaged file?)")
    return text


def _shown_uid(uid: str) -> str:
    """A UID fit for a message. A damaged length makes an element swallow the elements
    after it, names and birth dates included, so a value that is not a plausible UID is
    described, never quoted."""
    return uid if _UID_CHARS.fullmatch(uid) else f"malformed UID ({len(uid)} characters)"


def _shown_number(value) -> str:
    """A numeric element's text quoted only while it looks numeric (see _shown_uid)."""
    text = str(value)
    return repr(text) if _NUMBER_CHARS.fullmatch(text) else f"{len(text)} malformed characters"


def _shown_code(value: str) -> str:
    """A code string (Modality) quoted only while it looks like one (see _shown_uid)."""
    return value if _CODE_CHARS.fullmatch(value) else f"malformed ({len(value)} characters)"


def _text(ds, keyword: str) -> str:
    value = _value(ds, keyword)
    return "" if value is None else str(value)


def _decoded(ds, keyword: str) -> str:
    """A text value decoded with the data set's character set (names, descriptions)."""
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int_or_none(ds, keyword: str) -> int | None:
    value = _value(ds, keyword)
    if value is None or isinstance(value, int):
        return value
    try:
        return int(float(value))
    except ValueError:
        return None


def _float_or(ds, keyword: str, default: float | None) -> float | None:
    value = _value(ds, keyword)
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


def _number_or(ds, keyword: str, default: float) -> float:
    """A numeric element's value, default when absent or empty; ValueError naming it when
    present but not a number (guessing 1 for a damaged RescaleSlope would store wrong HU)."""
    value = _value(ds, keyword)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{keyword} is not a number ({_shown_number(value)})") from None


def _floats(ds, keyword: str, n: int) -> tuple[float, ...]:
    """n finite floats from a multi-valued element; ValueError naming it otherwise."""
    value = _value(ds, keyword)
    if value is None:
        raise ValueError(f"no {keyword}")
    try:
        out = tuple(float(v) for v in str(value).split("\\"))
    except ValueError:
        raise ValueError(f"{keyword} is not numeric ({_shown_number(value)})") from None
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"{keyword} should hold {n} finite numbers, holds {_shown_number(value)}")
    return out


def _list_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files under paths (folders recursively, sorted), each path once."""
    files: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                for n in sorted(names):
                    add(os.path.join(root, n))
        else:
            add(p)
    return files


def _looks_metaless(head: bytes) -> bool:
    """A dataset without preamble: does it start with a group 0x0002/0x0008 element?"""
    if len(head) < 8:
        return False
    group_le, elem_le = struct.unpack("<HH", head[:4])
    group_be = struct.unpack(">H", head[:2])[0]
    return (group_le in (0x0002, 0x0008) and elem_le < 0x0200) or group_be == 0x0008


def _pixel_location(fp, ts: str, size: int) -> tuple[bool, int, int]:
    """After a stop_before_pixels read: (has pixel data, value offset, value length).

    Offsets are only resolved for native little-endian transfer syntaxes; otherwise
    (True, -1, -1) is returned when pixel data is present or cannot be ruled out.
    """
    pos = fp.tell()
    if ts == "1.2.840.10008.1.2.1.99":  # deflated: positions refer to inflated bytes
        return True, -1, -1
    if pos >= size:
        return False, -1, -1
    head = fp.read(12)
    if ts not in NATIVE_LE:
        return True, -1, -1
    if head[:4] != _PIXEL_TAG_LE:
        return False, -1, -1
    # Trust the bytes over the declared syntax (files declared explicit but written
    # implicit exist); an implicit length never reads as "OW"/"OB" for even lengths.
    if head[4:6] in (b"OW", b"OB", b"UN"):
        if len(head) < 12:
            return True, pos, 0
        return True, pos + 12, struct.unpack("<I", head[8:12])[0]
    if len(head) < 8:
        return True, pos, 0
    return True, pos + 8, struct.unpack("<I", head[4:8])[0]


def _read_header(path: str):
    """(dataset, transfer syntax, pixel info, size) or raise ValueError with the reason.

    The dataset is a RawHeader for plain native little-endian files (fast), otherwise a
    pydicom Dataset; both answer get_item/get/file_meta the same way.
    """
    fast = read_native_header(path)
    if fast is not None:
        return fast
    with open(path, "rb") as fp:
        head = fp.read(132)
        preamble = len(head) == 132 and head[128:132] == b"DICM"
        if not preamble and not _looks_metaless(head):
            raise _NotDicom("not a DICOM file (no 'DICM' marker and no DICOM data set at the start)")
        # pydicom inflates a deflated data set whole, with or without the preamble (a
        # file meta group at the start is read with force): bound it first
        check_deflated_file(fp)
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not preamble)
        except Exception as exc:  # pydicom raises many types on damaged headers
            raise ValueError(f"unreadable DICOM header ({type(exc).__name__}: {exc}); truncated or damaged file?") from None
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not ts:  # no file meta: the encoding pydicom found while reading
            implicit, little = ds.original_encoding
            ts = IMPLICIT_LE if implicit else "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
        if not UID(ts).is_transfer_syntax:
            raise ValueError(f"unknown Transfer Syntax UID {_shown_uid(ts)}")
        size = os.fstat(fp.fileno()).st_size
        pixel = _pixel_location(fp, ts, size)
    if not preamble and not (ds.get("SOPClassUID") or ds.get("Modality")):
        raise _NotDicom("not a DICOM file (no 'DICM' marker and no SOP Class or Modality)")
    return ds, ts, pixel, size


class _NotDicom(ValueError):
    pass


def _sop_class_name(uid: str) -> str:
    if not uid:
        return "unknown SOP class"
    if not _UID_CHARS.fullmatch(uid):
        return _shown_uid(uid)
    name = UID(uid).name
    return name if name and name != uid else uid


def _ct_slice(path: str, st, ds, ts: str, pixel, size: int) -> SliceHeader:
    """SliceHeader for a CT image, or ValueError with the reason it cannot be used."""
    image_type = _text(ds, "ImageType").upper().split("\\")
    if "LOCALIZER" in image_type:
        raise ValueError("localizer (scout) image, not part of the CT volume")
    frames = _int_or_none(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise ValueError(f"multi-frame image ({frames} frames) is not supported")
    has_pixels, offset, length = pixel
    if not has_pixels:
        raise ValueError("no pixel data")
    samples = _int_or_none(ds, "SamplesPerPixel") or 1
    if samples != 1:
        raise ValueError(f"colour image (SamplesPerPixel {samples}), CT must be greyscale")
    ipp = _floats(ds, "ImagePositionPatient", 3)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    row, col = np.array(iop[:3]), np.array(iop[3:])
    if (
        abs(np.linalg.norm(row) - 1) > 0.01
        or abs(np.linalg.norm(col) - 1) > 0.01
        or abs(row @ col) > 0.01
    ):
        raise ValueError(f"ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors")
    spacing = _floats(ds, "PixelSpacing", 2)
    if min(spacing) <= 0:
        raise ValueError(f"PixelSpacing {list(spacing)} is not positive")
    rows, cols = _int_or_none(ds, "Rows"), _int_or_none(ds, "Columns")
    bits = _int_or_none(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        raise ValueError("Rows, Columns or BitsAllocated missing")
    if rows > MAX_EDGE or cols > MAX_EDGE:  # a damaged header must not make a worker allocate gigabytes
        raise ValueError(f"{rows}×{cols} pixels is larger than any CT slice (at most {MAX_EDGE}² accepted)")
    stored_bits, high_bit = _int_or_none(ds, "BitsStored"), _int_or_none(ds, "HighBit")
    representation = _int_or_none(ds, "PixelRepresentation") or 0
    check_pixel_format(bits, stored_bits, high_bit, representation)
    slope = _number_or(ds, "RescaleSlope", 1.0)
    intercept = _number_or(ds, "RescaleIntercept", 0.0)
    check_rescale(slope, intercept)
    if offset >= 0:
        expected = rows * cols * samples * (bits // 8)
        available = size - offset
        if min(length, available) < expected:
            raise ValueError(
                f"truncated: pixel data holds {min(length, available)} of {expected} bytes"
            )
        check_pixel_length(length, rows, cols, samples, bits)
    thickness = _float_or(ds, "SliceThickness", None)
    return SliceHeader(
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        ipp=ipp,  # type: ignore[arg-type]
        iop=iop,  # type: ignore[arg-type]
        pixel_spacing=spacing,  # type: ignore[arg-type]
        rows=rows,
        columns=cols,
        slope=slope,
        intercept=intercept,
        slice_thickness=thickness,
        transfer_syntax=ts,
        bits_allocated=bits,
        bits_stored=stored_bits or bits,
        pixel_representation=representation,
        samples_per_pixel=samples,
        pixel_value_offset=offset,
        pixel_length=length,
        lossy=_text(ds, "LossyImageCompression") == "01" or ts in LOSSY_TS,
    )


def check_pixel_format(bits: int, stored: int | None, high: int | None, representation: int) -> None:
    """ValueError unless BitsAllocated/BitsStored/HighBit/PixelRepresentation describe
    integer pixels this reader stores faithfully (CT Image module: HighBit = BitsStored − 1)."""
    if bits not in (8, 16, 32):
        raise ValueError(f"BitsAllocated {bits} is not 8, 16 or 32 (packed or damaged header?)")
    if stored is not None and not 1 <= stored <= bits:
        raise ValueError(f"BitsStored {stored} does not fit in BitsAllocated {bits}")
    if high is not None and high != (stored or bits) - 1:
        raise ValueError(
            f"HighBit {high} with BitsStored {stored or bits}: the CT Image module requires "
            f"HighBit = BitsStored − 1 = {(stored or bits) - 1}; the pixel values cannot be "
            "read reliably"
        )
    if representation not in (0, 1):
        raise ValueError(f"PixelRepresentation {representation} is neither 0 (unsigned) nor 1 (signed)")


def check_rescale(slope: float | None, intercept: float) -> None:
    """ValueError unless HU = stored × slope + intercept is usable: a slope of 0 would make
    every pixel the intercept, a negative one inverts the image (no CT writes either)."""
    for keyword, v in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if v is None or not np.isfinite(v):  # NaN HU would become arbitrary int16 values
            raise ValueError(f"{keyword} is {v}, not a finite number")
    if slope <= 0:
        raise ValueError(f"RescaleSlope is {slope:g}; HU = stored × slope + intercept needs a positive slope")


def check_pixel_length(length: int, rows: int, cols: int, samples: int, bits: int) -> None:
    """ValueError when native pixel data holds more bytes than the header's image size
    (a header that describes another image: its pixels would be stored as garbage). One
    padding byte to an even length is allowed."""
    expected = rows * cols * samples * (bits // 8)
    if length > expected + (expected % 2):
        raise ValueError(
            f"header and pixel data disagree: Rows × Columns × SamplesPerPixel × BitsAllocated = "
            f"{rows}×{cols}×{samples}×{bits} bits = {expected} bytes, but the pixel data holds "
            f"{length} bytes"
        )


def _struct_ref(path: str, st, ds) -> StructRef:
    for_uid = ""
    series: list[str] = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", None) or []:
        for_uid = for_uid or _uid(fr, "FrameOfReferenceUID")
        for study in fr.get("RTReferencedStudySequence", None) or []:
            for s in study.get("RTReferencedSeriesSequence", None) or []:
                uid = _uid(s, "SeriesInstanceUID")
                if uid and uid not in series:
                    series.append(uid)
    if not for_uid:
        for roi in ds.get("StructureSetROISequence", None) or []:
            for_uid = _uid(roi, "ReferencedFrameOfReferenceUID")
            if for_uid:
                break
    return StructRef(
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=for_uid or _uid(ds, "FrameOfReferenceUID"),
        referenced_series_uids=tuple(series),
        label=_decoded(ds, "StructureSetLabel"),
        patient_id=_decoded(ds, "PatientID"),
        patient_name=_decoded(ds, "PatientName"),
        birth_date=_decoded(ds, "PatientBirthDate"),
    )


def _same_kind(a: SliceHeader, b: SliceHeader) -> bool:
    if (a.rows, a.columns, a.iop, a.pixel_spacing) == (b.rows, b.columns, b.iop, b.pixel_spacing):
        return True  # the usual case, without numpy's overhead
    return (
        (a.rows, a.columns) == (b.rows, b.columns)
        and np.allclose(a.iop, b.iop, atol=IOP_TOLERANCE)
        and np.allclose(a.pixel_spacing, b.pixel_spacing, rtol=1e-3, atol=1e-4)
    )


def majority_filter(slices: list[SliceHeader]) -> tuple[list[SliceHeader], list[Skipped]]:
    """Keep the slices sharing the most common orientation, size and pixel spacing; the
    others are returned as Skipped with what differs."""
    groups: list[list[SliceHeader]] = []
    for s in slices:
        for g in groups:
            if _same_kind(g[0], s):
                g.append(s)
                break
        else:
            groups.append([s])
    if len(groups) <= 1:
        return list(slices), []
    groups.sort(key=lambda g: -len(g))
    keep = groups[0]
    ref = keep[0]
    skipped = []
    for members in groups[1:]:
        s = members[0]
        what = []
        if not np.allclose(s.iop, ref.iop, atol=IOP_TOLERANCE):
            what.append(
                f"orientation {np.round(s.iop, 4).tolist()} differs from {np.round(ref.iop, 4).tolist()}"
            )
        if (s.rows, s.columns) != (ref.rows, ref.columns):
            what.append(f"size {s.rows}×{s.columns} differs from {ref.rows}×{ref.columns}")
        if not np.allclose(s.pixel_spacing, ref.pixel_spacing, rtol=1e-3, atol=1e-4):
            what.append(f"pixel spacing {list(s.pixel_spacing)} differs from {list(ref.pixel_spacing)} mm")
        reason = (
            f"{' and '.join(what)} of the other {len(keep)} slices of the series "
            "(a localizer or reformatted image?)"
        )
        skipped.extend(Skipped(m.path, reason) for m in members)
    return keep, skipped


def scan(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> ScanResult:
    """Find CT series and RTSTRUCT files in files/folders (recursive), by content.

    Reads headers only. progress(done, total) is called after each file; cancel is an
    object with is_set() (e.g. threading.Event) checked before each file, raising
    Cancelled. Every file not used ends up in .skipped with the reason.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result = ScanResult()
    files = _list_files(paths)
    total = len(files)
    # Keyed by (PatientID, SeriesInstanceUID): series UIDs are unique, and some writers
    # (e.g. SimpleITK) give every slice of a series its own StudyInstanceUID.
    by_series: dict[tuple[str, str], list[SliceHeader]] = defaultdict(list)
    series_info: dict[tuple[str, str], dict] = {}
    bad_slices: dict[tuple[str, str], list[int]] = defaultdict(list)  # → indices in skipped
    for done, path in enumerate(files, 1):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"scan cancelled after {done - 1} of {total} files")
        _scan_one(path, result, by_series, series_info, bad_slices)
        if progress is not None:
            progress(done, total)
    _say_series_consequence(result, by_series, bad_slices)

    for key, slices in by_series.items():
        unique, copies = _unique_instances(slices, result.skipped)
        kept, dropped = majority_filter(unique)
        result.skipped.extend(dropped)
        if copies:  # the loader's fallbacks, for the instances still in the series
            uids = {s.sop_instance_uid for s in kept}
            copies = [c for c in copies if c.sop_instance_uid in uids]
        info = series_info[key]
        result.series.append(SeriesRef(slices=tuple(kept), copies=tuple(copies), **info))
    result.series.sort(key=lambda r: (r.patient_id, r.study_uid, r.series_number or 0, r.series_uid))
    result.structs.sort(key=lambda r: (r.patient_id, r.study_uid, r.path))
    return result


def copy_key(s: SliceHeader) -> tuple:
    """Which of two copies of one slice is kept: the lossless one, then the first path
    (deterministic whatever the order the files were found in)."""
    return (s.lossy, s.path)


def _unique_instances(slices: list[SliceHeader], skipped: list[Skipped]
                      ) -> tuple[list[SliceHeader], list[SliceHeader]]:
    """(one slice per SOPInstanceUID, the other copies). Of copies of an instance the
    lossless one is kept (see copy_key); the others are listed in skipped, naming the copy
    kept, and returned: load_ct_series reads one of them where the kept file cannot be
    decoded (SeriesRef.copies), and then lists what it did instead. Reading them here
    would cost every ingest a read of each copy; they are only read when needed."""
    best: dict[str, SliceHeader] = {}
    for s in slices:
        if s.sop_instance_uid:
            b = best.get(s.sop_instance_uid)
            if b is None or copy_key(s) < copy_key(b):
                best[s.sop_instance_uid] = s
    unique, copies = [], []
    for s in slices:
        kept = best.get(s.sop_instance_uid)
        if kept is None or kept is s:
            unique.append(s)
            continue
        copies.append(s)
        why = " (lossy compressed; the lossless copy is kept)" if s.lossy and not kept.lossy else ""
        skipped.append(Skipped(s.path, f"same SOPInstanceUID as {kept.path}, which is kept (a copy){why}"))
    return unique, copies


def _say_series_consequence(result: ScanResult, by_series, bad_slices) -> None:
    """Each unusable slice of a CT series says what it means for its series."""
    for key, indices in bad_slices.items():
        n = len(by_series.get(key, ()))
        what = (f"left out of its CT series, which goes on with its other {n} file(s)" if n else
                "its CT series has no other usable file here, so it is not stored")
        for i in indices:
            sk = result.skipped[i]
            result.skipped[i] = Skipped(sk.path, f"{sk.reason}; {what}")


def _scan_one(path: str, result: ScanResult, by_series, series_info, bad_slices=None) -> None:
    try:
        _classify(path, result, by_series, series_info, bad_slices)
    except Exception as exc:  # a damaged file must never stop the scan
        result.skipped.append(Skipped(path, f"unreadable DICOM data ({type(exc).__name__}: {exc})"))


def _classify(path: str, result: ScanResult, by_series, series_info, bad_slices=None) -> None:
    try:
        st = os.stat(path)
        ds, ts, pixel, size = _read_header(path)
    except OSError as exc:
        result.skipped.append(Skipped(path, f"cannot read file ({exc.strerror or exc})"))
        return
    except ValueError as exc:
        result.skipped.append(Skipped(path, str(exc)))
        return
    _note_identity(result, ds)
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    sop_class = _text(ds, "SOPClassUID") or media_class
    modality = _text(ds, "Modality").upper()
    if media_class == DICOMDIR_CLASS or sop_class == DICOMDIR_CLASS:
        result.skipped.append(
            Skipped(path, "DICOMDIR (a media index, not an image); its images are scanned as files")
        )
        return
    try:
        if sop_class == RTSTRUCT or (not sop_class and modality == "RTSTRUCT"):
            result.structs.append(_struct_ref(path, st, ds))
            return
        if sop_class in ENHANCED_CT:
            raise ValueError(
                f"{_sop_class_name(sop_class)} (multi-frame) is not supported; "
                "export the series as classic CT Image Storage"
            )
        if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
            raise ValueError(f"secondary capture image ({_sop_class_name(sop_class)}), not CT")
        if not (sop_class == CT_IMAGE or (not sop_class and modality == "CT")):
            raise ValueError(
                f"neither a CT image nor an RT structure set (Modality {_shown_code(modality) if modality else 'missing'}, "
                f"{_sop_class_name(sop_class)})"
            )
        study, series = _uid(ds, "StudyInstanceUID"), _uid(ds, "SeriesInstanceUID")
        if not series:
            raise ValueError("no SeriesInstanceUID")
        for_uid = _uid(ds, "FrameOfReferenceUID")
        try:
            header = _ct_slice(path, st, ds, ts, pixel, size)
        except ValueError:
            if bad_slices is not None:  # a slice of a known series: say what it costs it
                bad_slices[(_text(ds, "PatientID"), series)].append(len(result.skipped))
            raise
    except ValueError as exc:
        reason = str(exc)
        if not pixel[0] and "pixel data" not in reason and modality in ("", "CT"):
            reason += "; the file ends before any pixel data (truncated?)"
        result.skipped.append(Skipped(path, reason))
        return
    key = (_text(ds, "PatientID"), series)
    if key not in series_info:
        series_info[key] = dict(
            study_uid=study,
            series_uid=series,
            frame_of_reference_uid=for_uid,
            series_description=_decoded(ds, "SeriesDescription"),
            series_number=_int_or_none(ds, "SeriesNumber"),
            patient_id=_decoded(ds, "PatientID"),
            patient_name=_decoded(ds, "PatientName"),
            birth_date=_decoded(ds, "PatientBirthDate"),
        )
    by_series[key].append(header)


def _note_identity(result: ScanResult, ds) -> None:
    """Identifying values of every header read (CT or not), for the store to scrub."""
    try:
        note_identity(result, ds, tuple(_text(ds, k) for k in IDENTIFYING_KEYWORDS))
    except Exception:  # a header too damaged to decode its names still gets classified
        pass
