"""Storage faults: flipped bytes (fletcher32), a power cut, a full disk, read-only files and
folders, and the one-time conversion of a schema 1 workspace (issues 12 and 13)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from training.config import PreprocessConfig
from training.dicom.phantom import generate_cohort
from training.store import workspace as wsmod
from training.store.ingest import ingest, rederive
from training.store.workspace import Workspace, WorkspaceError, entry_files, write_arrays_workspace

ROOT = Path(__file__).resolve().parents[1]
CFG = PreprocessConfig(crop=24, rois=("Heart",))


@pytest.fixture(scope="module")
def drops(tmp_path_factory):
    """Two drops of phantom patients: A (3 patients) and B (2 more)."""
    root = tmp_path_factory.mktemp("drops")
    generate_cohort(root / "all", 5, slices=6, size=32, seed=3, fsync=False)
    folders = sorted(p for p in (root / "all").iterdir() if p.is_dir())
    (root / "A").mkdir()
    (root / "B").mkdir()
    for k, f in enumerate(folders):
        shutil.move(str(f), root / ("A" if k < 3 else "B") / f.name)
    return root / "A", root / "B"


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _chunk_offset(file: Path, dataset: str, index: int = 0) -> int:
    with h5py.File(file, "r") as f:
        info = f[dataset].id.get_chunk_info(index)
        return info.byte_offset + min(info.size // 2, 40)


def _all_images(ws: Workspace) -> dict[str, np.ndarray]:
    return {p.pseudonym: ws.read_patient(i)[0] for i, p in enumerate(ws.patients)}


# ----------------------------------------------------------------------------- checksums


def test_flipped_byte_is_reported_naming_the_series(drops, tmp_path, capsys):
    from training.cli import main

    ws_path = tmp_path / "w.h5"
    ingest([drops[0]], ws_path, CFG, workers=1)
    files = entry_files(ws_path)
    with Workspace.open(ws_path) as ws:
        phash = ws.preprocess_hash
        good = _all_images(ws)
    assert main(["info", str(ws_path), "--check"]) == 0
    assert "all 3 entries" in capsys.readouterr().out
    _flip(files["PAT-0002"], _chunk_offset(files["PAT-0002"], f"entries/PAT-0002/derived/{phash}/images", 2))
    with Workspace.open(ws_path) as ws:
        np.testing.assert_array_equal(ws.read_patient(0)[0], good["PAT-0001"])  # others unharmed
        with pytest.raises(WorkspaceError, match="PAT-0002: stored data is damaged"):
            ws.read_patient(1)
    assert main(["info", str(ws_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED PAT-0002" in out and "PAT-0001" not in out.split("check:")[0].replace(
        "DAMAGED PAT-0002", "")
    assert "1 of 3 entries damaged" in out


def test_rederive_leaves_a_damaged_source_out_and_the_next_drop_brings_it_back(drops, tmp_path):
    ws_path = tmp_path / "w.h5"
    ingest([drops[0]], ws_path, CFG, workers=1)
    f3 = entry_files(ws_path)["PAT-0003"]
    _flip(f3, _chunk_offset(f3, "entries/PAT-0003/source/hu", 3))
    rep = rederive(ws_path, CFG.replace(crop=16), workers=1)
    assert sorted(rep.rederived) == ["PAT-0001", "PAT-0002"]
    assert rep.skipped and rep.skipped[0][0] == "PAT-0003" and "damaged" in rep.skipped[0][1]
    with Workspace.open(ws_path) as ws:  # never copied forward
        assert [p.pseudonym for p in ws.patients] == ["PAT-0001", "PAT-0002"]
        assert "PAT-0003: " in ws.provenance[-1]["damaged_entries_removed"][0]
        assert not ws.verify()[0]
    assert not f3.exists()
    rep = ingest([drops[0]], ws_path, workers=1)  # its DICOM dropped again: it comes back
    assert rep.added == ["PAT-0003"] and sorted(rep.unchanged) == ["PAT-0001", "PAT-0002"]
    with Workspace.open(ws_path) as ws:
        assert len(ws.patients) == 3 and not ws.verify()[0]


def test_training_stops_with_the_damaged_series_not_nan(tmp_path):
    from training.config import ModelConfig, TrainConfig
    from training.vae.trainer import Trainer

    rng = np.random.default_rng(0)
    images = {f"P{i}": rng.random((4, 16, 16), dtype=np.float32) for i in range(4)}
    p = write_arrays_workspace(tmp_path / "w.h5", images, test_fraction=0.25)
    f = entry_files(p)["P2"]
    with Workspace.open(p) as ws:
        phash = ws.preprocess_hash
    _flip(f, _chunk_offset(f, f"entries/P2/derived/{phash}/images", 1))
    mc = ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=2, fc_units=8, n_classes=0)
    tc = TrainConfig(epochs=2, batch_size=4, threads=1, device="cpu", checkpoint_every=1,
                     recon_every=5, n_recon_examples=1)
    with Workspace.open(p) as ws:
        s = Trainer(ws, mc, tc, out_dir=tmp_path / "run").run()
    assert s.status == "failed"
    assert s.message.startswith("training stopped: ") and "P2: stored data is damaged" in s.message
    assert "nan" not in s.message.lower() and "\n" not in s.message


# ----------------------------------------------------------------------------- power cut


class Disk:
    """What reached the disk: each file's bytes as of its last fsync (by inode, so a
    rename after the fsync keeps them). `cut()` truncates every file whose current bytes
    were never fsynced to a random prefix, as a power cut may leave them."""

    def __init__(self, monkeypatch):
        import training.atomic as atomic

        self.synced: dict[int, bytes] = {}
        orig = atomic.fsync_file

        def fsync_file(path):
            orig(path)
            self.synced[os.stat(path).st_ino] = Path(path).read_bytes()

        monkeypatch.setattr(atomic, "fsync_file", fsync_file)

    def cut(self, folder: Path, rng: np.random.Generator) -> list[str]:
        damaged = []
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p.name.endswith(".lock"):  # the lock holds no data
                continue
            data = p.read_bytes()
            if self.synced.get(p.stat().st_ino) == data:
                continue
            p.write_bytes(data[: int(rng.integers(0, max(1, len(data) // 2)))])
            damaged.append(p.name)
        return damaged


def test_power_cut_truncating_the_newest_writes(drops, tmp_path, monkeypatch):
    """A first ingest completes; a second is interrupted after committing its series but
    before writing its head; then every write not fsynced is cut short. The workspace opens
    with the first ingest's series intact; the next ingest brings back the rest."""
    disk = Disk(monkeypatch)
    ws_path = tmp_path / "w.h5"
    ingest([drops[0]], ws_path, CFG, workers=1)
    with Workspace.open(ws_path) as ws:
        before = _all_images(ws)
    assert disk.cut(ws_path.parent, np.random.default_rng(0)) == []  # all it names was fsynced

    def lost_power(self, *a, **k):
        raise KeyboardInterrupt("power cut")

    finish = wsmod.Merger.finish
    monkeypatch.setattr(wsmod.Merger, "finish", lost_power)
    with pytest.raises(KeyboardInterrupt):
        ingest([drops[1]], ws_path, workers=1)
    monkeypatch.setattr(wsmod.Merger, "finish", finish)
    damaged = disk.cut(ws_path.parent, np.random.default_rng(1))
    assert len(damaged) >= 2  # the new series' files (and the identity stash) are cut
    with Workspace.open(ws_path) as ws:
        assert set(_all_images(ws)) == set(before)
        for k, v in _all_images(ws).items():
            np.testing.assert_array_equal(v, before[k])
    rep = ingest([drops[0], drops[1]], ws_path, workers=1)
    assert sorted(rep.added) == ["PAT-0004", "PAT-0005"]
    with Workspace.open(ws_path) as ws:
        assert len(ws.patients) == 5 and not ws.verify()[0]
        assert "damaged_staged_files" in ws.provenance[-1] or "damaged_staged_files" in ws.provenance[-2]
    # and a cut right after a completed ingest loses nothing
    assert disk.cut(ws_path.parent, np.random.default_rng(2)) == []


# ----------------------------------------------------------------------------- read-only, disk full


def test_read_only_workspace_is_refused_and_keeps_its_mode(drops, tmp_path):
    ws_path = tmp_path / "w.h5"
    ingest([drops[0]], ws_path, CFG, workers=1)
    ws_path.chmod(0o440)
    raw = ws_path.read_bytes()
    with pytest.raises(WorkspaceError, match="read-only"):
        ingest([drops[1]], ws_path, workers=1)
    with pytest.raises(WorkspaceError, match="read-only"):
        rederive(ws_path, CFG.replace(crop=16), workers=1)
    assert stat.S_IMODE(ws_path.stat().st_mode) == 0o440 and ws_path.read_bytes() == raw
    ws_path.chmod(0o640)  # writable again: a commit keeps the user's mode
    ingest([drops[1]], ws_path, workers=1)
    assert stat.S_IMODE(ws_path.stat().st_mode) == 0o640


@pytest.mark.slow
def test_read_only_folder_gives_a_message_not_a_traceback(drops, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        r = subprocess.run([sys.executable, "-m", "training.cli", "ingest", str(drops[0]),
                            "--workspace", str(folder / "w.h5")], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "read-only" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(folder.iterdir())


_FSIZE_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from training.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_disk_full_while_ingesting_keeps_the_workspace(drops, tmp_path):
    ws_path = tmp_path / "w.h5"
    ingest([drops[0]], ws_path, CFG, workers=1)
    with Workspace.open(ws_path) as ws:
        before = _all_images(ws)
    head = ws_path.read_bytes()
    limit = min(p.stat().st_size for p in entry_files(ws_path).values()) // 2
    r = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(limit), "ingest", str(drops[1]),
                        "--workspace", str(ws_path), "--workers", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("ct-vae ingest: ") and "file size limit reached while ingesting" in err[-1]
    assert "Traceback" not in r.stderr
    assert ws_path.read_bytes() == head
    with Workspace.open(ws_path) as ws:
        assert _all_images(ws).keys() == before.keys()
    assert not [p for p in tmp_path.rglob(".*.tmp")]


@pytest.mark.slow
def test_disk_full_while_training_keeps_the_checkpoints(tmp_path):
    from training.vae.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    images = {f"P{i}": rng.random((4, 16, 16), dtype=np.float32) for i in range(4)}
    ws = write_arrays_workspace(tmp_path / "w.h5", images, test_fraction=0.25)
    out = tmp_path / "run"
    small = ["--filters", "4", "--latent-dim", "2", "--n-blocks", "2", "--fc-units", "8",
             "--threads", "1", "--batch-size", "4", "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "training.cli", "train", "--workspace", str(ws),
                        "--out", str(out), "--epochs", "1", *small], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    last = out / "last.pt"
    raw = last.read_bytes()
    r = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(len(raw) // 2), "train",
                        "--workspace", str(ws), "--out", str(out), "--resume", "--epochs", "3",
                        *small], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    assert "file size limit reached" in r.stderr, r.stderr
    assert last.read_bytes() == raw and load_checkpoint(last).epoch == 1


# ----------------------------------------------------------------------------- schema 1


def _downgrade_to_schema1(ws_path: Path, out: Path) -> None:
    """The schema 1 layout: every entry inside one file (as written before schema 2)."""
    with h5py.File(ws_path, "r") as head, h5py.File(out, "w") as f:
        for k, v in head.attrs.items():
            f.attrs[k] = v
        f.attrs["schema_version"] = 1
        f.attrs["merged_through"] = 0
        ents = f.create_group("entries")
        for name in ("provenance", "skipped", "identity", "pseudonyms", "entries"):
            wsmod._write_meta(f, name, wsmod._read_meta(head, name, {}))
        for label, file in entry_files(ws_path).items():
            with h5py.File(file, "r") as src:
                src.copy(src["entries"][label], ents, name=label)


def test_schema1_workspace_opens_and_is_converted_once(drops, tmp_path):
    from training.cli import main

    new = tmp_path / "new.h5"
    ingest([drops[0]], new, CFG, workers=1)
    old = tmp_path / "old" / "w.h5"
    old.parent.mkdir()
    _downgrade_to_schema1(new, old)
    with Workspace.open(old) as ws:  # read as it is
        assert ws.schema_version == 1 and len(ws.patients) == 3
        before = _all_images(ws)
    rep = ingest([drops[0], drops[1]], old, workers=1)
    assert rep.notes and "converted to the appending layout" in rep.notes[0]
    assert sorted(rep.added) == ["PAT-0004", "PAT-0005"] and len(rep.unchanged) == 3
    with Workspace.open(old) as ws:
        assert ws.schema_version == 2 and len(ws.patients) == 5
        for k, v in before.items():
            np.testing.assert_array_equal(ws.read_patient(ws.patient_index(k))[0], v)
    assert old.stat().st_size < 200_000  # the head holds no arrays
    assert sorted(os.listdir(old.parent)) == ["w.h5", "w.h5.d", "w.h5.lock"] or \
        sorted(os.listdir(old.parent)) == ["w.h5", "w.h5.d"]
    rep = ingest([drops[1]], old, workers=1)
    assert not rep.notes  # once
    assert main(["info", str(old), "--check"]) == 0


def test_a_moved_role_survives_a_rederive_and_the_head_alone_changes(tmp_path):
    """set_roles rewrites only the head (entry files are immutable); a re-derive, which
    writes every entry again from its file, keeps the head's role, not the file's."""
    from training.dicom.phantom import write_rescan
    from training.store.roles import move_to_cohort

    drop = tmp_path / "drop"
    generate_cohort(drop / "cohort", 2, slices=4, size=32, seed=0, fsync=False)
    write_rescan(drop / "query", 1, slices=4, size=32, fsync=False)
    ws_path = tmp_path / "w.h5"
    ingest([drop / "cohort"], ws_path, CFG, workers=1)
    ingest([drop / "query"], ws_path, role=wsmod.ROLE_QUERY, workers=1)
    with Workspace.open(ws_path) as ws:
        (label,) = [p.pseudonym for p in ws.patients if p.is_query]
    files = set(entry_files(ws_path).values())
    move_to_cohort(ws_path, [label])
    assert set(entry_files(ws_path).values()) == files  # no entry file rewritten
    rederive(ws_path, CFG.replace(crop=16), workers=1)
    with Workspace.open(ws_path) as ws:
        assert not ws.patients[ws.patient_index(label)].is_query
        assert len(ws.index()) == 3 * 4
