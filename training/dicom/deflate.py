"""A bound on what a deflated DICOM file may inflate to (decompression bombs).

pydicom inflates a Deflated Explicit VR Little Endian data set whole, in memory, before
it reads a single element (stop_before_pixels does not help): 420 KB of deflate can ask
for gigabytes. `check_inflated_size` inflates the stream once in bounded pieces, counting
and discarding, and raises ValueError with the reason when it would exceed
MAX_INFLATED_BYTES, so the file is skipped before pydicom touches it.

Every reader of a file that may be deflated goes through `check_deflated_file` (or
`dcmread_bounded`): the scan (with or without the preamble, whichever way pydicom reads
it), the CT loader's pydicom path and the RTSTRUCT reader. A file whose meta group is
found only with force is inflated by pydicom all the same, so it is checked the same way.

The bound is far above any real data set: the largest CT slice accepted (MAX_EDGE² 16-bit
pixels) is 128 MiB, and an RT structure set of that size would already be exceptional.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_INFLATED_BYTES = 256 * 1024 * 1024
_CHUNK = 1 << 20


class InflateError(ValueError):
    """A deflated data set too large to inflate, or damaged deflate; str: the reason."""


def check_inflated_size(fp: BinaryIO, limit: int | None = None) -> None:
    """fp: a file positioned at the start of the deflated data set (after the file meta
    group). Returns the file position unchanged; InflateError (a ValueError) when the
    inflated data set is larger than `limit` bytes (default MAX_INFLATED_BYTES) or is not
    valid deflate."""
    limit = MAX_INFLATED_BYTES if limit is None else limit
    start = fp.tell()
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not d.eof:
            data = fp.read(_CHUNK)
            if not data:
                break
            while data and not d.eof:
                total += len(d.decompress(data, _CHUNK * 4))
                if total > limit:
                    raise InflateError(
                        f"deflated data set inflates to more than {limit // (1024 * 1024)} MiB "
                        f"(from {fp.tell() - start:,} bytes read so far): a decompression bomb or "
                        "a damaged file; not read")
                data = d.unconsumed_tail
    except zlib.error as exc:
        raise InflateError(f"deflated data set is damaged (zlib: {exc})") from None
    finally:
        fp.seek(start)


def check_deflated_file(fp: BinaryIO) -> None:
    """When the file meta of `fp` says Deflated Explicit VR Little Endian,
    check_inflated_size of the data set after it. fp's position is kept.

    The file meta group is found exactly as pydicom finds it when it reads the file, with
    or without force: after a 128-byte preamble + DICM, or at the very start of a file
    without them (pydicom reads such a file with force, and inflates it as well). A file
    without a file meta group has no transfer syntax, so pydicom never inflates it."""
    from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble

    pos = fp.tell()
    try:
        fp.seek(0)
        try:
            read_preamble(fp, force=True)  # past DICM, or back at 0 when there is none
            meta = _read_file_meta_info(fp)
            ts = str(meta.get("TransferSyntaxUID", "")).strip("\0 ")
            if ts != DEFLATED:
                return
            _read_command_set_elements(fp)  # pydicom inflates what follows these
        except Exception:  # a damaged meta group: pydicom fails on it too, before inflating
            return
        check_inflated_size(fp)
    finally:
        fp.seek(pos)


def dcmread_bounded(path, **kwargs):
    """pydicom.dcmread of `path` (same keywords), after check_deflated_file on the same
    open file: InflateError with the reason, instead of inflating a decompression bomb."""
    import pydicom

    with open(path, "rb") as fp:
        check_deflated_file(fp)
        return pydicom.dcmread(fp, **kwargs)
