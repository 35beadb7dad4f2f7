"""Workspace read API: round trip, chunk layout, split by patient, batch reads, atomicity."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from training.config import PreprocessConfig
from training.store.workspace import (
    Workspace,
    WorkspaceError,
    assign_splits,
    write_arrays_workspace,
)


# stored images are uint16 round(v · 65535): reads are within half a step of what was written
STEP = 0.5 / 65535 + 1e-7


def _cohort(n_patients=6, n=5, shape=(16, 16), seed=0, rois=2):
    rng = np.random.default_rng(seed)
    images = {f"PAT-{i + 1:04d}": rng.random((n + i, *shape), dtype=np.float32) for i in range(n_patients)}
    labels = {k: rng.integers(0, rois + 1, v.shape, dtype=np.uint8) for k, v in images.items()}
    return images, labels


def test_round_trip_2d(tmp_path):
    images, labels = _cohort()
    p = write_arrays_workspace(tmp_path / "w.h5", images, labels, roi_names=("A", "B"))
    with Workspace.open(p) as ws:
        assert ws.image_shape == (16, 16)
        assert ws.roi_names == ("A", "B")
        assert ws.preprocess.rois == ("A", "B")
        assert [pi.pseudonym for pi in ws.patients] == sorted(images)
        assert [pi.n_images for pi in ws.patients] == [len(images[k]) for k in sorted(images)]
        idx = ws.index()
        assert idx.shape == (sum(len(v) for v in images.values()), 2) and idx.dtype == np.int64
        rng = np.random.default_rng(1)
        rows = idx[rng.permutation(len(idx))[:7]]
        got = ws.read_images(rows)
        lab = ws.read_labels(rows)
        assert got.dtype == np.float32 and got.shape == (7, 16, 16)
        assert lab.dtype == np.uint8
        for b, (pi, ii) in enumerate(rows):
            key = ws.patients[pi].pseudonym
            np.testing.assert_allclose(got[b], images[key][ii], rtol=0, atol=STEP)
            np.testing.assert_array_equal(lab[b], labels[key][ii])
        # out= is filled in place, consecutive rows read as one slice
        out = np.zeros((3, 16, 16), np.float32)
        r = ws.read_images([[0, 1], [0, 2], [0, 3]], out=out)
        assert r is out
        np.testing.assert_allclose(out, images["PAT-0001"][1:4], rtol=0, atol=STEP)
        assert len(ws.data_hash) == 16


def test_round_trip_3d_and_chunks(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"P{i}": rng.random((1, 8, 12, 12), dtype=np.float32) for i in range(3)}
    p = write_arrays_workspace(tmp_path / "w.h5", images)
    with Workspace.open(p) as ws:
        assert ws.image_shape == (8, 12, 12)
        assert ws.preprocess.mode == "3d"
        assert ws.read_labels(ws.index()) is None
        np.testing.assert_allclose(ws.read_images([[2, 0]])[0], images["P2"][0], rtol=0, atol=STEP)
        assert ws.images_dataset(0).chunks == (1, 1, 12, 12)
    images2, _ = _cohort(2)
    p2 = write_arrays_workspace(tmp_path / "w2.h5", images2)
    with Workspace.open(p2) as ws:
        assert ws.images_dataset(0).chunks == (1, 16, 16)


def test_split_by_patient_seeded_and_recorded(tmp_path):
    images, _ = _cohort(8)
    p = write_arrays_workspace(tmp_path / "w.h5", images, test_fraction=0.25, seed=3)
    with Workspace.open(p) as ws:
        splits = [pi.split for pi in ws.patients]
        assert splits.count("test") == 2 and splits.count("train") == 6
        tr, te = ws.index("train"), ws.index("test")
        assert not set(tr[:, 0]) & set(te[:, 0])
        assert len(tr) + len(te) == len(ws.index())
    with h5py.File(p, "r") as f:  # recorded in the file
        assert f.attrs["split_seed"] == 3
    p2 = write_arrays_workspace(tmp_path / "w2.h5", images, test_fraction=0.25, seed=3)
    with Workspace.open(p2) as ws:
        assert [pi.split for pi in ws.patients] == splits
    # series of one patient stay together
    s = assign_splits(["A", "A", "B", "C", "D"], 0.5, 0)
    assert set(s) == {"A", "B", "C", "D"}
    assert list(s.values()).count("test") == 2
    assert assign_splits(["A"], 0.5, 0) == {"A": "train"}
    assert "test" in assign_splits(["A", "B"], 0.01, 0).values()


def test_split_stable_when_patients_are_added():
    base = [f"PAT-{i:04d}" for i in range(1, 41)]
    s1 = assign_splits(base, 0.25, 0)
    s2 = assign_splits(base + ["PAT-0041"], 0.25, 0)
    moved = sum(s1[p] != s2[p] for p in base)
    assert moved <= 1


def test_batches_larger_than_memory_read_chunk_by_chunk(tmp_path, monkeypatch):
    images, _ = _cohort(3, n=10)
    p = write_arrays_workspace(tmp_path / "w.h5", images)
    calls = []
    orig = h5py.Dataset.read_direct

    def spy(self, arr, source_sel=None, dest_sel=None):
        calls.append(source_sel)
        return orig(self, arr, source_sel, dest_sel)

    with Workspace.open(p) as ws:
        monkeypatch.setattr(h5py.Dataset, "read_direct", spy)
        monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("whole-array read"))
        idx = ws.index()
        seen = 0
        for start in range(0, len(idx), 4):
            batch = ws.read_images(idx[start:start + 4])
            seen += len(batch)
        assert seen == len(idx)
        monkeypatch.undo()
    assert calls and all(isinstance(s, slice) for s in calls)


def test_bad_rows_and_files(tmp_path):
    images, _ = _cohort(2)
    p = write_arrays_workspace(tmp_path / "w.h5", images)
    with Workspace.open(p) as ws:
        with pytest.raises(IndexError):
            ws.read_images([[5, 0]])
        with pytest.raises(IndexError):
            ws.read_images([[0, 99]])
        with pytest.raises(ValueError):
            ws.index("validation")
    with pytest.raises(WorkspaceError):
        Workspace.open(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WorkspaceError, match="junk.h5"):
        Workspace.open(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(WorkspaceError, match="not a ct-vae workspace"):
        Workspace.open(tmp_path / "other.h5")


def test_write_is_atomic_no_temp_left(tmp_path):
    images, _ = _cohort(2)
    p = write_arrays_workspace(tmp_path / "w.h5", images, preprocess=PreprocessConfig(crop=16))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.h5", "w.h5.d"]
    files = sorted(x.name for x in (tmp_path / "w.h5.d").iterdir())
    assert len(files) == 2
    with pytest.raises(ValueError):
        write_arrays_workspace(p, {"a": np.zeros((1, 4, 4), np.float32), "b": np.zeros((1, 5, 5), np.float32)})
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.h5", "w.h5.d"]
    assert sorted(x.name for x in (tmp_path / "w.h5.d").iterdir()) == files
    with Workspace.open(p) as ws:  # old content intact
        assert len(ws.patients) == 2 and ws.preprocess.crop == 16


@pytest.mark.parametrize("damage", ["empty", "truncated", "zeroed_tail"])
def test_damaged_staged_file_is_skipped_by_open_and_merge(tmp_path, damage):
    """Staged files are not fsynced (only the merged copy is): after a power cut one may be
    empty or cut short. Opening and merging leave it out; the merge records and removes it."""
    from training.store.workspace import (
        EntryData, create_empty, list_staged, merge, preprocess_hash, staging_dir, write_staged)

    cfg = PreprocessConfig(crop=8)
    p = create_empty(tmp_path / "w.h5", cfg)
    with h5py.File(p, "r") as f:
        salt = f.attrs["salt"]
    rng = np.random.default_rng(1)
    for seq, label in enumerate(["PAT-0001", "PAT-0002"], start=1):
        write_staged(p, seq, EntryData(label=label, patient=label, content_hash=f"h{seq}",
                                       images=rng.random((3, 8, 8), dtype=np.float32),
                                       hu=rng.integers(-1000, 1000, (3, 8, 8)).astype(np.int16)),
                     preprocess_hash(cfg), salt, {f"q{seq}": ["c", "s", "", ""]}, {f"d{seq}": seq})
    bad = list_staged(p)[1][1]
    raw = bad.read_bytes()
    bad.write_bytes({"empty": b"", "truncated": raw[: len(raw) // 3],
                     "zeroed_tail": raw[:2048] + bytes(len(raw) - 2048)}[damage])
    with Workspace.open(p) as ws:
        assert [x.pseudonym for x in ws.patients] == ["PAT-0001"]
    merge(p)
    assert not bad.exists()  # recorded and removed
    assert [x.name for x in staging_dir(p).iterdir()] == [list_staged(p)[0][1].name]
    with Workspace.open(p) as ws:
        assert [x.pseudonym for x in ws.patients] == ["PAT-0001"]
        (note,) = ws.provenance[-1]["damaged_staged_files"]
        assert note.startswith(f"{bad.name}: unreadable (") and str(tmp_path) not in note
    with h5py.File(p, "r") as f:
        assert f.attrs["merged_through"] == 2  # the damaged file is not merged later either


def test_staged_entries_are_read_and_merged(tmp_path):
    import shutil

    from training.store.workspace import (
        EntryData,
        create_empty,
        list_staged,
        merge,
        preprocess_hash,
        staging_dir,
        write_staged,
    )

    cfg = PreprocessConfig(crop=8)
    p = create_empty(tmp_path / "w.h5", cfg)
    with h5py.File(p, "r") as f:
        salt = f.attrs["salt"]
    rng = np.random.default_rng(0)
    arrays = {}
    for seq, label in enumerate(["PAT-0002", "PAT-0001"], start=1):
        arrays[label] = rng.random((3, 8, 8), dtype=np.float32)
        hu = rng.integers(-1000, 1000, (3, 8, 8)).astype(np.int16)
        masks = {"Body": hu > 0}
        write_staged(p, seq, EntryData(label=label, patient=label, content_hash=f"h{seq}",
                                       images=arrays[label], hu=hu, masks=masks),
                     preprocess_hash(cfg), salt, {f"q{seq}": ["c", "s", "", ""]}, {f"d{seq}": seq})
    keep = tmp_path / "copy.h5"
    shutil.copy(list_staged(p)[0][1], keep)
    for max_open in (0, 1):  # entry files kept open, or reopened on demand (many of them)
        Workspace.LRU_STAGED = max_open
        try:
            with Workspace.open(p) as ws:  # leftovers of a killed ingest are part of the workspace
                assert [x.pseudonym for x in ws.patients] == ["PAT-0001", "PAT-0002"]
                for _ in range(2):
                    np.testing.assert_allclose(ws.read_images([[1, 2], [0, 0]]),
                                               [arrays["PAT-0002"][2], arrays["PAT-0001"][0]],
                                               rtol=0, atol=STEP)
                hu, masks, _ = ws.read_source(0)
                np.testing.assert_array_equal(masks["Body"], hu > 0)  # packed bits round trip
        finally:
            Workspace.LRU_STAGED = 0
    merge(p)
    assert len(list(staging_dir(p).iterdir())) == 2  # the entry files stay: the head names them
    # a file the head no longer names (crash between a new head and its removal) is ignored
    stale = staging_dir(p) / "00000001-PAT-0002-old.h5"
    shutil.copy(keep, stale)
    with Workspace.open(p) as ws:
        assert len(ws.patients) == 2 and ws.patients[0].has_source
        np.testing.assert_allclose(ws.read_images([[1, 2]])[0], arrays["PAT-0002"][2], atol=STEP)
    with h5py.File(p, "r") as f:
        assert f.attrs["merged_through"] == 2
        assert f.attrs["schema_version"] == 2 and f.attrs["format"] == "ct-vae-workspace"
    from training.store.workspace import remove_stale_temps

    remove_stale_temps(p)  # the next writer removes it
    assert not stale.exists() and len(list(staging_dir(p).iterdir())) == 2


def test_fidelity_report_round_trip_and_old_entries_say_not_recorded(tmp_path):
    from training.store.workspace import (
        EntryData, create_empty, merge, preprocess_hash, write_staged)

    cfg = PreprocessConfig(crop=8)
    p = create_empty(tmp_path / "w.h5", cfg)
    with h5py.File(p, "r") as f:
        salt = f.attrs["salt"]
    report = {"rois": {"Lung": {"contours_read": 3, "duplicates_collapsed": 1}}}
    for seq, (label, fid) in enumerate([("PAT-0001", report), ("PAT-0002", None)], start=1):
        write_staged(p, seq, EntryData(label=label, patient=label, content_hash=f"h{seq}",
                                       images=np.zeros((2, 8, 8), np.float32), fidelity=fid),
                     preprocess_hash(cfg), salt, {}, {})
    for _ in range(2):  # staged, then merged
        with Workspace.open(p) as ws:
            assert ws.fidelity(0) == report
            assert ws.fidelity(1) is None  # written without one: "not recorded"
        merge(p)
    old = write_arrays_workspace(tmp_path / "old.h5", {"PAT-0001": np.zeros((1, 4, 4), np.float32)})
    with Workspace.open(old) as ws:
        assert ws.fidelity(0) is None
