"""A deflated DICOM file that would inflate to gigabytes is skipped with a reason, in
bounded memory; an ordinary deflated file still reads.

Every layout pydicom inflates is bounded: preamble + DICM + file meta, and a file meta
group at the very start (no preamble: pydicom reads it with force and inflates it all the
same); every reader too: the scan, the CT loader's pydicom path, the RTSTRUCT reader
(with its force fallback)."""

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


def _meta(ts: str, preamble: bool = True) -> bytes:
    """128-byte preamble, DICM (unless not `preamble`) and a file meta group (explicit VR
    little endian)."""
    def el(group, elem, vr, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
        if vr in (b"OB",):
            return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    body = (el(2, 1, b"OB", b"\0\1") + el(2, 2, b"UI", b"1.2.840.10008.5.1.4.1.1.2")
            + el(2, 3, b"UI", b"1.2.3.4.5") + el(2, 0x10, b"UI", ts.encode())
            + el(2, 0x12, b"UI", b"1.2.3.4"))
    return (b"\0" * 128 + b"DICM" if preamble else b"") + el(2, 0, b"UL", struct.pack("<I", len(body))) + body


# file layouts: what comes before the deflated data set
LAYOUTS = {
    "preamble + meta": lambda: _meta(DEFLATED),
    "meta, no preamble": lambda: _meta(DEFLATED, preamble=False),
}


def write_bomb(path: Path, inflated_mib: int, layout: str = "preamble + meta",
               modality: bytes = b"CT") -> Path:
    """A deflated data set: a Modality element, then one OB element of `inflated_mib` MiB
    of zeros. Made from one compressed 1 MiB block repeated (a full flush resets the
    compressor, so each block is the same bytes): ~1 KB per MiB inflated. layout: a key
    of LAYOUTS, or "preamble, no meta" (DICM, then the deflated bytes straight away)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    n = inflated_mib * (1 << 20)
    if len(modality) % 2:
        modality += b" "
    head = (struct.pack("<HH2sH", 8, 0x60, b"CS", len(modality)) + modality
            + struct.pack("<HH2sHI", 0x7FE0, 0x10, b"OB", 0, n))
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" if layout == "preamble, no meta" else LAYOUTS[layout]())
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
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scan_skips_a_gigabyte_bomb_in_bounded_memory(tmp_path, layout):
    size_mib = MAX_INFLATED_BYTES // (1 << 20) * 4  # 1 GiB
    (tmp_path / "drop").mkdir()
    bomb = write_bomb(tmp_path / "drop" / "bomb.dcm", size_mib, layout)
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
    # without the preamble the bomb went through (2.1 GB peak; "no SeriesInstanceUID")
    assert first.startswith("0 0 deflated data set inflates to more than 256 MiB"), first
    assert int(peak) < 600, f"peak memory {peak} MiB"


@pytest.fixture
def pydicom_inflates(monkeypatch):
    """A 16 MiB bound, and the sizes of what pydicom itself inflates (zlib.decompress in
    pydicom.filereader, which inflates a deflated data set whole)."""
    import types

    import pydicom.filereader

    from training.dicom import deflate

    monkeypatch.setattr(deflate, "MAX_INFLATED_BYTES", 16 << 20)
    calls: list[int] = []

    def decompress(data, *args, **kwargs):
        out = zlib.decompress(data, *args, **kwargs)
        calls.append(len(out))
        return out

    monkeypatch.setattr(pydicom.filereader, "zlib", types.SimpleNamespace(
        decompress=decompress, MAX_WBITS=zlib.MAX_WBITS))
    return calls


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_check_deflated_file_finds_the_meta_with_or_without_preamble(tmp_path, layout, monkeypatch):
    from training.dicom import deflate

    bomb = write_bomb(tmp_path / "bomb.dcm", 64, layout)
    with open(bomb, "rb") as fh:
        fh.seek(5)
        deflate.check_deflated_file(fh)  # 64 MiB is within the real bound
        monkeypatch.setattr(deflate, "MAX_INFLATED_BYTES", 32 << 20)
        with pytest.raises(deflate.InflateError, match="inflates to more than 32 MiB"):
            deflate.check_deflated_file(fh)
        assert fh.tell() == 5


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scan_bounds_every_layout_before_pydicom_inflates(tmp_path, layout, pydicom_inflates):
    from training.dicom import scan

    bomb = write_bomb(tmp_path / "bomb.dcm", 64, layout)
    r = scan([str(tmp_path)])
    assert not r.series and not r.structs
    assert [s.path for s in r.skipped] == [str(bomb)]
    assert r.skipped[0].reason.startswith("deflated data set inflates to more than 16 MiB"), r.skipped
    assert pydicom_inflates == []  # pydicom never inflated it


def test_a_deflated_stream_without_file_meta_is_never_inflated(tmp_path, pydicom_inflates):
    """Preamble + DICM but no file meta group: no transfer syntax says deflated, so
    pydicom parses the bytes as they are (garbage) and never inflates them."""
    from training.dicom import scan

    bomb = write_bomb(tmp_path / "bomb.dcm", 64, "preamble, no meta")
    r = scan([str(tmp_path)])
    assert not r.series and [s.path for s in r.skipped] == [str(bomb)]
    assert pydicom_inflates == []


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rtstruct_reader_bounds_a_deflated_file(tmp_path, layout, pydicom_inflates):
    """read_rtstruct and roi_names (pydicom, with force where the preamble is missing)."""
    from training.dicom.rtstruct import RTStructError, read_rtstruct, roi_names

    bomb = write_bomb(tmp_path / "rs.dcm", 64, layout, modality=b"RTSTRUCT")
    for read in (read_rtstruct, roi_names):
        with pytest.raises(RTStructError) as err:
            read(bomb)
        assert err.value.path == str(bomb)
        assert err.value.reason.startswith("deflated data set inflates to more than 16 MiB")
        assert str(bomb) in str(err.value)
    assert pydicom_inflates == []


def test_rtstruct_reader_reads_an_ordinary_deflated_file(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    from training.dicom.rtstruct import read_rtstruct

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 1, "Heart"
    ds.StructureSetROISequence = [roi]
    ds.ROIContourSequence = []
    path = tmp_path / "rs.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert read_rtstruct(path).roi_names == ["Heart"]
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian


def test_ct_loader_bounds_a_file_replaced_by_a_bomb(tmp_path, pydicom_inflates):
    """The loader reads a deflated slice through pydicom again: a file turned into a bomb
    since the scan is left out with the reason, not inflated."""
    import numpy as np
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.dicom_factory import write_ct_series
    from training.dicom import load_ct_series, scan

    write_ct_series(tmp_path / "ct", np.zeros((3, 8, 8), np.int16) + 1024,
                    transfer_syntax=DeflatedExplicitVRLittleEndian)
    r = scan([str(tmp_path / "ct")])
    assert len(r.series) == 1 and not r.skipped, r.skipped
    ref = r.series[0]
    assert load_ct_series(ref).hu.shape[0] == 3
    victim = sorted(s.path for s in ref.slices)[1]
    write_bomb(Path(victim), 64)
    pydicom_inflates.clear()
    vol = load_ct_series(ref)
    assert vol.hu.shape[0] == 2
    reasons = {s.path: s.reason for s in vol.skipped}
    assert reasons[victim].startswith("deflated data set inflates to more than 16 MiB"), reasons
    assert 64 << 20 not in pydicom_inflates and all(n < 16 << 20 for n in pydicom_inflates)


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
