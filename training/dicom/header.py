"""A minimal reader of the top-level header of native little-endian DICOM files.

It walks the elements up to Pixel Data and keeps the raw bytes of a few tags, about ten
times faster than building a pydicom Dataset, which is what most of a folder scan costs.
Anything unusual (no preamble, a compressed or big-endian transfer syntax, a malformed
element, a truncated header, an undefined-length element other than a sequence) returns
None and the caller falls back to pydicom. Values come back as pydicom RawDataElements,
so the same accessors read both; keyword lookups that need a decoded value (names with
a character set, sequences) load the pydicom Dataset lazily.
"""

from __future__ import annotations

import os
import struct

import pydicom
import pydicom.config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
PIXEL_DATA = 0x7FE00010


def quiet_pydicom_validation() -> None:
    """Stop pydicom logging and warning invalid values on read (SPEC F7).

    Its message quotes the whole value, and a damaged length makes one element's value
    swallow the elements after it, patient name, ID and birth date included; the GUI
    logs at INFO. Our readers check the values they use and name what is wrong.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


quiet_pydicom_validation()
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "PatientID", "SeriesNumber", "InstanceNumber", "ImageType",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel", "RescaleSlope",
    "RescaleIntercept", "SliceThickness", "NumberOfFrames", "HighBit", "LossyImageCompression",
)
_WANTED = {tag_for_keyword(k) for k in KEYWORDS}


class _More(Exception):
    """The buffer ends before the parse does."""


class _Odd(Exception):
    """Not the simple layout this reader handles: use pydicom."""


class RawHeader:
    """Top-level elements of one file, answering get_item(tag) like a pydicom Dataset."""

    def __init__(self, path: str, elements: dict[int, RawDataElement], file_meta: dict[str, str]):
        self.path = path
        self.file_meta = file_meta
        self._elements = elements
        self._dataset = None

    def get_item(self, tag):
        return self._elements.get(int(tag))

    def dataset(self):
        if self._dataset is None:  # bounded: the file may have been replaced by a deflated one
            from training.dicom.deflate import dcmread_bounded

            self._dataset = dcmread_bounded(self.path, stop_before_pixels=True)
        return self._dataset

    def get(self, keyword: str, default=None):
        """Decoded value through pydicom (names, descriptions, sequences)."""
        return self.dataset().get(keyword, default)


_TAG_VR_LEN = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (explicit VR)
_TAG_LEN = struct.Struct("<HHI")  # group, element, 32-bit length (implicit VR, items)
_U32 = struct.Struct("<I")


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, length, value offset) of the element at pos."""
    if pos + 8 > len(buf):
        raise _More
    if not explicit:
        g, e, length = _TAG_LEN.unpack_from(buf, pos)
        return (g << 16) | e, None, length, pos + 8
    g, e, vr, length = _TAG_VR_LEN.unpack_from(buf, pos)
    if g == 0xFFFE:  # items and delimiters carry no VR
        return (g << 16) | e, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _More
        return (g << 16) | e, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Odd
    return (g << 16) | e, vr, length, pos + 8


def _skip_sequence(buf: bytes, pos: int, explicit: bool) -> int:
    """pos: first item of an undefined-length sequence; returns the offset after it."""
    while True:
        tag, _, length, v = _element(buf, pos, False)
        if tag == _SEQ_END:
            return v
        if tag != _ITEM:
            raise _Odd
        if length != _UNDEFINED:
            pos = v + length
            continue
        pos = v
        while True:
            tag, vr, length, v = _element(buf, pos, explicit)
            if tag == _ITEM_END:
                pos = v
                break
            if length == _UNDEFINED:
                if explicit and vr != b"SQ":
                    raise _Odd
                pos = _skip_sequence(buf, v, explicit)
            else:
                pos = v + length


def _parse(buf: bytes, eof: bool):
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise _Odd
    pos = 132
    meta: dict[int, bytes] = {}
    while True:
        if pos + 8 > len(buf):
            raise _More
        if int.from_bytes(buf[pos:pos + 2], "little") != 0x0002:
            break
        tag, vr, length, v = _element(buf, pos, True)
        if length == _UNDEFINED or v + length > len(buf):
            raise _Odd if length == _UNDEFINED else _More
        meta[tag] = buf[v:v + length]
        pos = v + length
    ts = meta.get(0x00020010, b"").decode("latin-1").strip(" \x00")
    if ts not in (EXPLICIT_LE, IMPLICIT_LE):
        raise _Odd
    explicit = ts == EXPLICIT_LE
    elements: dict[int, RawDataElement] = {}
    while True:
        if pos >= len(buf):
            if eof and pos == len(buf):
                return meta, ts, elements, (False, -1, -1)
            if eof:
                raise _Odd  # an element runs past the end: let pydicom name it
            raise _More
        tag, vr, length, v = _element(buf, pos, explicit)
        if tag >= PIXEL_DATA:
            if tag == PIXEL_DATA:
                return meta, ts, elements, (True, v, length)
            return meta, ts, elements, (False, -1, -1)
        if length == _UNDEFINED:
            if explicit and vr != b"SQ":
                raise _Odd
            pos = _skip_sequence(buf, v, explicit)
            continue
        end = v + length
        if tag in _WANTED:
            if end > len(buf):
                raise _Odd if eof else _More
            elements[tag] = RawDataElement(tag, vr.decode() if vr else None, length, buf[v:end], v,
                                           not explicit, True)
        pos = end


def read_native_header(path: str) -> tuple[RawHeader, str, tuple[bool, int, int], int] | None:
    """(header, transfer syntax, (has pixel data, value offset, length), file size), or
    None where pydicom must read the file."""
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        buf = fp.read(8192)
        while True:
            try:
                meta, ts, elements, pixel = _parse(buf, len(buf) >= size)
                break
            except _More:
                more = fp.read(max(len(buf), 65536))
                if not more:
                    return None
                buf += more
            except (_Odd, IndexError, ValueError, UnicodeDecodeError, struct.error):
                return None
    file_meta = {
        "TransferSyntaxUID": ts,
        "MediaStorageSOPClassUID": meta.get(0x00020002, b"").decode("latin-1").strip(" \x00"),
    }
    return RawHeader(path, elements, file_meta), ts, pixel, size
