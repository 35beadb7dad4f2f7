"""A deflated DICOM file that would inflate to gigabytes is skipped with a reason, in
bounded memory; an ordinary deflated file still reads."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from training.dicom.deflate import DEFLATED, MAX_INFLATED_BYTES, check_inflated_size

ROOT = Path(__file__).resolve().parents[1]


def _meta(ts: str) -> bytes:
    """128-byte preamble, DICM and a file meta group (explicit VR little endian)."""
    def el(group, elem, vr, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
        if vr in (b"OB",):
            return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    body = (el(2, 1, b"OB", b"\0\1") + el(2, 2, b"UI", b"1.2.840.10008.5.1.4.1.1.2")
            + el(2, 3, b"UI", b"1.2.3.4.5") + el(2, 0x10, b"UI", ts.encode())
            + el(2, 0x12, b"UI", b"1.2.3.4"))
    return b"\0" * 128 + b"DICM" + el(2, 0, b"UL", struct.pack("<I", len(body))) + body


def write_bomb(path: Path, inflated_mib: int) -> Path:
    """A deflated data set: a Modality element, then one OB element of `inflated_mib` MiB
    of zeros. Made from one compressed 1 MiB block repeated (a full flush resets the
    compressor, so each block is the same bytes): ~1 KB per MiB inflated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    n = inflated_mib * (1 << 20)
    head = struct.pack("<HH2sH", 8, 0x60, b"CS", 2) + b"CT" + struct.pack("<HH2sHI", 0x7FE0, 0x10, b"OB", 0, n)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    with open(path, "wb") as fh:
        fh.write(_meta(DEFLATED))
        fh.write(first)
        for _ in range(inflated_mib):
            fh.write(block)
        fh.write(c.flush())
    return path


def test_check_inflated_size_bounds_and_counts(tmp_path):
    bomb = write_bomb(tmp_path / "bomb.dcm", 64)
    assert bomb.stat().st_size < 200_000
    with open(bomb, "rb") as fh:
        fh.seek(len(_meta(DEFLATED)))
        pos = fh.tell()
        with pytest.raises(ValueError, match="inflates to more than 16 MiB"):
            check_inflated_size(fh, limit=16 << 20)
        assert fh.tell() == pos
        check_inflated_size(fh, limit=65 << 20)  # within the bound: fine
    with pytest.raises(ValueError, match="damaged"):
        check_inflated_size(io.BytesIO(b"\xff" * 100))


@pytest.mark.slow
def test_scan_skips_a_gigabyte_bomb_in_bounded_memory(tmp_path):
    size_mib = MAX_INFLATED_BYTES // (1 << 20) * 4  # 1 GiB
    bomb = write_bomb(tmp_path / "drop" / "bomb.dcm", size_mib) if (tmp_path / "drop").mkdir() is None else None
    assert bomb.stat().st_size < 2_000_000
    # VmHWM, not ru_maxrss: the latter keeps the peak of the forked parent across exec
    code = ("import re, sys\nfrom training.dicom import scan\n"
            "r = scan([sys.argv[1]])\n"
            "print(len(r.series), len(r.structs), r.skipped[0].reason)\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(int(hwm) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "drop")], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    first, peak = out.stdout.splitlines()
    assert first.startswith("0 0 deflated data set inflates to more than 256 MiB")
    assert int(peak) < 600, f"peak memory {peak} MiB"


def test_an_ordinary_deflated_ct_still_reads(tmp_path):
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    from training.dicom import scan

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientID = "X1"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.zeros((16, 16), np.int16).tobytes()
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = scan([str(path)])
    assert len(r.series) == 1 and not r.skipped, r.skipped
