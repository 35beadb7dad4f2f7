"""A bound on what a deflated DICOM file may inflate to (decompression bombs).

pydicom inflates a Deflated Explicit VR Little Endian data set whole, in memory, before
it reads a single element (stop_before_pixels does not help): 420 KB of deflate can ask
for gigabytes. `check_inflated_size` inflates the stream once in bounded pieces, counting
and discarding, and raises ValueError with the reason when it would exceed
MAX_INFLATED_BYTES, so the file is skipped before pydicom touches it.

The bound is far above any real data set: the largest CT slice accepted (MAX_EDGE² 16-bit
pixels) is 128 MiB, and an RT structure set of that size would already be exceptional.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_INFLATED_BYTES = 256 * 1024 * 1024
_CHUNK = 1 << 20


def check_inflated_size(fp: BinaryIO, limit: int | None = None) -> None:
    """fp: a file positioned at the start of the deflated data set (after the file meta
    group). Returns the file position unchanged; ValueError when the inflated data set
    is larger than `limit` bytes (default MAX_INFLATED_BYTES) or not valid deflate."""
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
                    raise ValueError(
                        f"deflated data set inflates to more than {limit // (1024 * 1024)} MiB "
                        f"(from {fp.tell() - start:,} bytes read so far): a decompression bomb or "
                        "a damaged file; not read")
                data = d.unconsumed_tail
    except zlib.error as exc:
        raise ValueError(f"deflated data set is damaged (zlib: {exc})") from None
    finally:
        fp.seek(start)


def check_deflated_file(fp: BinaryIO) -> None:
    """For a file with a 128-byte preamble + DICM: when its file meta says Deflated
    Explicit VR Little Endian, check_inflated_size of the rest. fp's position is kept."""
    from pydicom.filereader import _read_file_meta_info

    pos = fp.tell()
    try:
        fp.seek(132)
        try:
            meta = _read_file_meta_info(fp)
        except Exception:  # a damaged meta group: pydicom reports it when it reads the file
            return
        if str(meta.get("TransferSyntaxUID", "")).strip("\0 ") == DEFLATED:
            check_inflated_size(fp)
    finally:
        fp.seek(pos)
