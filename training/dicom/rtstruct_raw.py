"""A fast reader of an RTSTRUCT's ROIContourSequence, straight from the file's bytes.

pydicom builds a Dataset for every contour item (and for the image reference inside it),
which is most of the time spent reading a structure set of a few hundred contours. This
walker parses only the three nested sequences that hold contours (ROIContourSequence →
ContourSequence → ContourImageSequence) into `RawItem`s that answer `get(keyword)` and
`get_item(tag)` like the pydicom items `training.dicom.rtstruct` reads, so one parser serves
both. Anything it does not handle (no preamble, a big-endian or deflated transfer
syntax, a malformed length, nesting deeper than DICOM needs) returns None and the caller
reads the file with pydicom as before.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

from training.dicom.header import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    _element,
    _More,
    _Odd,
    _skip_sequence,
)

ROI_CONTOUR_SEQUENCE = 0x30060039
_SEQUENCES = {0x30060039, 0x30060040, 0x30060016}  # ROIContour, Contour, ContourImage
# the elements of those items that training.dicom.rtstruct reads, by keyword
_KEYWORDS = {
    "ReferencedROINumber": 0x30060084,
    "ROIDisplayColor": 0x3006002A,
    "ContourSequence": 0x30060040,
    "ContourImageSequence": 0x30060016,
    "ReferencedSOPInstanceUID": 0x00081155,
    "ContourGeometricType": 0x30060042,
    "NumberOfContourPoints": 0x30060046,
    "ContourData": 0x30060050,
}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 8


class RawItem:
    """One sequence item: raw element values by tag, nested sequences as lists."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[int, bytes | list]):
        self._values = values

    def get_item(self, tag: int):
        value = self._values.get(int(tag))
        return None if value is None else SimpleNamespace(value=value)

    def get(self, keyword: str, default=None):
        """Sequences as lists of RawItem; text values as str ("\\"-separated values as a
        list of str); absent or empty → default."""
        tag = _KEYWORDS.get(keyword)
        value = self._values.get(tag) if tag is not None else None
        if value is None:
            return default
        if isinstance(value, list):
            return value
        text = value.decode("latin-1").strip(" \x00")
        if not text:
            return default
        return text.split("\\") if "\\" in text else text


def _items(buf: bytes, pos: int, end: int | None, explicit: bool, depth: int) -> tuple[list[RawItem], int]:
    """The items of a sequence whose value starts at pos (end=None: undefined length,
    up to its delimiter). Returns (items, offset after the sequence)."""
    if depth > _MAX_DEPTH:
        raise _Odd
    items: list[RawItem] = []
    while end is None or pos < end:
        tag, _, length, v = _element(buf, pos, False)
        if tag == _SEQ_END and end is None:
            return items, v
        if tag != _ITEM:
            raise _Odd
        item_end = None if length == _UNDEFINED else v + length
        if item_end is not None and item_end > len(buf):
            raise _Odd
        values, pos = _item(buf, v, item_end, explicit, depth + 1)
        items.append(RawItem(values))
    if pos != end:
        raise _Odd
    return items, pos


def _item(buf: bytes, pos: int, end: int | None, explicit: bool, depth: int
          ) -> tuple[dict[int, bytes | list], int]:
    values: dict[int, bytes | list] = {}
    while end is None or pos < end:
        tag, vr, length, v = _element(buf, pos, explicit)
        if tag == _ITEM_END and end is None:
            return values, v
        if tag >> 16 == 0xFFFE:
            raise _Odd
        is_seq = vr == b"SQ" if explicit else (tag in _SEQUENCES or length == _UNDEFINED)
        if length == _UNDEFINED:
            if not is_seq:
                raise _Odd
            if tag in _SEQUENCES:
                values[tag], pos = _items(buf, v, None, explicit, depth)
            else:
                pos = _skip_sequence(buf, v, explicit)
            continue
        stop = v + length
        if stop > len(buf):
            raise _Odd
        if tag in _SEQUENCES:
            values[tag], _ = _items(buf, v, stop, explicit, depth)
        elif not is_seq:
            values[tag] = buf[v:stop]
        pos = stop
    if pos != end:
        raise _Odd
    return values, pos


def read_roi_contours(path: str) -> list[RawItem] | None:
    """The ROIContourSequence items of an RTSTRUCT file ([] when it has none), or None
    when the file is not the simple native little-endian layout this reader handles."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
        return _roi_contours(buf)
    except (OSError, _Odd, _More, IndexError, ValueError, UnicodeDecodeError, RecursionError,
            struct.error):
        return None


def _roi_contours(buf: bytes) -> list[RawItem] | None:
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    pos = 132
    ts = ""
    while pos + 8 <= len(buf) and int.from_bytes(buf[pos:pos + 2], "little") == 0x0002:
        tag, _, length, v = _element(buf, pos, True)
        if length == _UNDEFINED or v + length > len(buf):
            return None
        if tag == 0x00020010:
            ts = buf[v:v + length].decode("latin-1").strip(" \x00")
        pos = v + length
    if ts not in (EXPLICIT_LE, IMPLICIT_LE):
        return None
    explicit = ts == EXPLICIT_LE
    while pos < len(buf):
        tag, vr, length, v = _element(buf, pos, explicit)
        if tag == ROI_CONTOUR_SEQUENCE:
            items, _ = _items(buf, v, None if length == _UNDEFINED else v + length, explicit, 0)
            return items
        if tag > ROI_CONTOUR_SEQUENCE:
            return []
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, v, explicit)
        else:
            pos = v + length
    return []
