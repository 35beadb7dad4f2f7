"""Every file accounted for (issue 11): after a drop, every file below the dropped folders
is either in the workspace or listed with a reason, whatever the folder holds: good
series and RTSTRUCTs, junk, lossy and lossless copies of a slice, same-quality copies,
an undecodable slice, lying headers, a series that cannot be stored at all, unreadable
folders and files, dangling and looping links, FIFOs, paths too long to open."""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import pytest
from pydicom.uid import RLELossless

from tests.deep_nest import remove_nest
from tests.dicom_factory import ramp_volume, write_ct_series, write_ct_slice
from training.config import PreprocessConfig
from training.dicom.phantom import generate_cohort
from training.store.discover import PATH_LIMIT, discover
from training.store.ingest import ingest

CFG = PreprocessConfig(crop=8)
DEEP = PATH_LIMIT // 100 + 1  # folders of 99 characters: the path passes the limit


def _nest(base: Path, depth: int, name: str = "d") -> int:
    """depth nested folders below base, made relative to descriptors (deeper than any
    path the system opens by name); returns a descriptor of the deepest (caller closes)."""
    fd = os.open(base, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def _put(fd: int, name: str, data: bytes) -> None:
    out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, data)
    os.close(out)


def _undecodable_rle(path: Path, pixels, **kw) -> Path:
    """An RLE slice whose header is fine but whose RLE segment table is damaged."""
    p = write_ct_slice(path, pixels, transfer_syntax=RLELossless, **kw)
    data = bytearray(p.read_bytes())
    item = data.rfind(b"\xfe\xff\x00\xe0")  # the last fragment: its RLE header follows
    data[item + 12:item + 16] = (10**6).to_bytes(4, "little")  # first segment past the end
    p.write_bytes(bytes(data))
    return p


def _all_entries(root: Path, unreadable: Path) -> list[str]:
    """Everything that is not a folder below root (links, FIFOs included), relative; the
    unreadable folder counts as one entry (nothing in it can be seen)."""
    out = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        if Path(folder) == unreadable:
            dirs[:] = []
            out.append(os.path.relpath(folder, root))
            continue
        for n in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            out.append(os.path.relpath(os.path.join(folder, n), root))
    return out


@pytest.fixture
def messy_drop(tmp_path):
    drop = tmp_path / "drop"
    generate_cohort(drop / "phantom", 1, slices=4, size=16, seed=0, fsync=False)  # CT + RTSTRUCT
    px = ramp_volume(4, 8, 10)
    # B: a lossy copy (sorts first) and a same-quality copy of two slices
    b = write_ct_series(drop / "B", px, origin=(0, 0, 0), pixel_spacing=(0.8, 0.6), patient_id="PB", patient_name="Qzx^Vwy")
    write_ct_slice(drop / "B" / "a_lossy.dcm", px[1] + 3, ipp=(0, 0, 2.5), pixel_spacing=(0.8, 0.6),
                   series_uid=b.series_uid, patient_id="PB", patient_name="Qzx^Vwy", extra={"LossyImageCompression": "01"})
    write_ct_slice(drop / "B" / "z_copy.dcm", px[2] + 5, ipp=(0, 0, 5.0), pixel_spacing=(0.8, 0.6),
                   series_uid=b.series_uid, patient_id="PB", patient_name="Qzx^Vwy")
    # C: an undecodable slice in the middle, a slope-0 slice, a slice with HU of 10⁶
    c = write_ct_series(drop / "C", px, origin=(0, 0, 0), pixel_spacing=(0.8, 0.6), patient_id="PC", patient_name="Qzx^Vwy",
                        names=["c0.dcm", "c1.dcm", "c3.dcm", "c4.dcm"], positions=[0, 2.5, 7.5, 10])
    _undecodable_rle(drop / "C" / "c2_rle.dcm", px[2], ipp=(0, 0, 5.0), pixel_spacing=(0.8, 0.6),
                     series_uid=c.series_uid, patient_id="PC", patient_name="Qzx^Vwy")
    write_ct_slice(drop / "C" / "slope0.dcm", px[0], ipp=(0, 0, 12.5), pixel_spacing=(0.8, 0.6),
                   series_uid=c.series_uid, patient_id="PC", patient_name="Qzx^Vwy", slope=0.0)
    write_ct_slice(drop / "C" / "huge_hu.dcm", px[0], ipp=(0, 0, 15.0), pixel_spacing=(0.8, 0.6),
                   series_uid=c.series_uid, patient_id="PC", patient_name="Qzx^Vwy", slope=1000.0)
    # D: no slice of the series is usable: the whole series is listed, file by file
    write_ct_series(drop / "D", px[:2] + 30000, origin=(0, 0, 0), pixel_spacing=(0.8, 0.6),
                    patient_id="PD", patient_name="Qzx^Vwy", intercept=20000.0)
    # junk, special files and links
    (drop / "junk").mkdir()
    (drop / "junk" / "notes.txt").write_text("not DICOM")
    (drop / "junk" / "empty").write_bytes(b"")
    (drop / "junk" / "noise.bin").write_bytes(os.urandom(300))
    os.mkfifo(drop / "junk" / "a_fifo")
    os.symlink("does-not-exist", drop / "junk" / "dangling")
    os.symlink("loop", drop / "junk" / "loop")
    os.symlink(drop / "B", drop / "junk" / "link_to_B")
    os.symlink(drop / "C" / "c0.dcm", drop / "junk" / "link_to_c0.dcm")  # the same file twice
    (drop / "locked").mkdir()
    write_ct_slice(drop / "locked" / "x.dcm", px[0], patient_id="PL", patient_name="Qzx^Vwy")
    (drop / "unreadable.dcm").write_bytes((drop / "C" / "c0.dcm").read_bytes())
    # a slice too deep to open by its path
    fd = _nest(drop, DEEP, "n" * 99)
    _put(fd, "deep.dcm", (drop / "C" / "c0.dcm").read_bytes())
    os.close(fd)
    return drop


def test_every_file_is_in_the_workspace_or_listed_with_a_reason(messy_drop, tmp_path, monkeypatch):
    drop = messy_drop
    locked, unreadable = drop / "locked", drop / "unreadable.dcm"
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, *a, **k):  # tests run as root: chmod 000 would not stop them
        if os.fspath(path) in (str(locked), "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_os_open(path, *a, **k)

    def py_open(path, *a, **k):
        if os.fspath(path) == str(unreadable) if isinstance(path, (str, os.PathLike)) else False:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    ws = tmp_path / "w.h5"
    rep = ingest([drop], ws, CFG, workers=1)
    monkeypatch.undo()

    rows = dict(rep.skipped)
    assert len(rows) == len(rep.skipped), "a file listed twice"
    from training.store.workspace import entry_files

    stored = {}
    for k, fp in entry_files(ws).items():  # one file per entry (workspace.py)
        with h5py.File(fp, "r") as f:
            stored[k] = int(f["entries"][k].attrs["n_source_files"])
    assert len(stored) == 3  # phantom, B, C
    entries = _all_entries(drop, locked)
    # the link to C/c0.dcm is the file C/c0.dcm (in the workspace): counted once
    entries.remove(os.path.join("junk", "link_to_c0.dcm"))
    entries.append(os.sep.join(["n" * 99] * DEEP + ["deep.dcm"]))  # os.walk cannot go there
    in_workspace = sum(stored.values())
    assert in_workspace + len(rows) == len(entries), (sorted(set(rows) - set(entries)), stored)
    # phantom 4 + RTSTRUCT, B 4 slices, C c0 c1 c3 c4
    assert in_workspace == 5 + 4 + 4, "\n".join(f"{k}: {v}" for k, v in rows.items())

    def why(rel: str) -> str:
        return rows[rel.replace("/", os.sep)]

    assert "lossy compressed" in why("B/a_lossy.dcm") and "B/slice_001.dcm" in why("B/a_lossy.dcm")
    assert "same quality" in why("B/z_copy.dcm") and "B/slice_002.dcm" in why("B/z_copy.dcm")
    assert "cannot decode" in why("C/c2_rle.dcm") or "unreadable" in why("C/c2_rle.dcm")
    assert "gap between its slices at 2.50 and 7.50 mm" in why("C/c2_rle.dcm")
    assert "RescaleSlope is 0" in why("C/slope0.dcm") and "goes on with" in why("C/slope0.dcm")
    assert "the header does not describe these pixels" in why("C/huge_hu.dcm")
    for name in ("slice_000.dcm", "slice_001.dcm"):
        assert "its CT series could not be stored" in why(f"D/{name}") or "outside" in why(f"D/{name}")
    assert "not DICOM" in why("junk/notes.txt") or "not a DICOM file" in why("junk/notes.txt")
    assert "FIFO" in why("junk/a_fifo")
    assert "dangling" in why("junk/dangling")
    assert "loop" in why("junk/loop")
    assert "folder, not followed" in why("junk/link_to_B")
    assert "Permission denied" in why("locked") and "not looked at" in why("locked")
    assert "Permission denied" in why("unreadable.dcm")
    (deep,) = [r for r in rows if r.endswith("deep.dcm")]
    assert "path too long" in rows[deep]
    assert "junk/link_to_c0.dcm" not in rows
    # the same drop again (now readable throughout): the files left out are listed again
    again = ingest([drop], ws, CFG, workers=1)
    assert len(again.unchanged) == 2  # B and the phantom; C gains the now readable copy
    assert "Permission denied" not in str(again.skipped)  # unreadable is not remembered
    rows2 = dict(again.skipped)
    for rel in ("B/a_lossy.dcm", "B/z_copy.dcm", "C/c2_rle.dcm", "C/huge_hu.dcm", "C/slope0.dcm",
                "junk/a_fifo", "junk/notes.txt", deep):
        assert rows2[rel.replace("/", os.sep)] == rows[rel.replace("/", os.sep)]
    entries.append(os.sep.join(["n" * 99] * DEEP + ["deep.dcm"]))  # os.walk cannot go there


@pytest.fixture
def nest_dir(tmp_path):
    """Memory-backed where there is one: removing 3,000 nested folders on a busy disk
    file system costs seconds of journal writes."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(dir=shm, prefix="ct-vae-nest-"))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def test_discovery_of_a_deep_nest_is_linear(nest_dir):
    """A 3,000-deep nest (~6 kB of path, past what the system opens by name) took
    100–150 s when each level resolved its whole path; a lenient bound here."""
    tmp_path = nest_dir
    fd = _nest(tmp_path, 10)
    _put(fd, "shallow.dcm", b"x")
    os.close(fd)
    fd = _nest(tmp_path / os.sep.join(["d"] * 10), 2990)
    _put(fd, "bottom.dcm", b"x")
    os.close(fd)
    skipped = []
    t0 = time.perf_counter()
    try:
        files = discover([tmp_path], skipped=skipped)
        took = time.perf_counter() - t0
    finally:
        remove_nest(tmp_path / "d")
    assert [rel for _, rel, _ in files] == [os.sep.join(["d"] * 10 + ["shallow.dcm"])]
    ((path, rel, reason),) = skipped
    assert rel.endswith("bottom.dcm") and rel.count(os.sep) == 3000 and "path too long" in reason
    assert took < 10, took


def test_copies_of_one_instance_keep_the_lossless_one(tmp_path):
    """Two files with one SOPInstanceUID (a lossless and a lossy export of one slice):
    the lossless one is kept whichever path sorts first, the other listed naming it."""
    from training.dicom import scan

    px = ramp_volume(3, 8, 10)
    spec = write_ct_series(tmp_path, px, origin=(0, 0, 0), pixel_spacing=(0.8, 0.6))
    write_ct_slice(tmp_path / "a_lossy_copy.dcm", px[1] + 2, ipp=(0, 0, 2.5), pixel_spacing=(0.8, 0.6),
                   series_uid=spec.series_uid, sop_uid=spec.sop_uids[1],
                   extra={"LossyImageCompression": "01"})
    result = scan(tmp_path)
    (ref,) = result.series
    assert sorted(ref.files) == sorted(map(str, spec.paths))
    (sk,) = result.skipped
    assert sk.path == str(tmp_path / "a_lossy_copy.dcm")
    assert str(spec.paths[1]) in sk.reason and "lossless copy is kept" in sk.reason
