"""Ingest: phantom cohorts → workspace; re-ingest, re-derive, cancel, privacy, bad files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from training.config import PreprocessConfig
from training.store.ingest import ingest, rederive
from training.dicom.phantom import generate_cohort
from training.store.preprocess import preprocess_volume
from training.store.workspace import Workspace, entry_files, has_leftovers, staging_dir


SLICES, SIZE = 6, 32
CFG = PreprocessConfig(crop=24, rois=("Lung-Left", "Lung-Right", "Heart"))


@pytest.fixture(scope="module")
def cohort_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    infos = generate_cohort(root / "drop", 3, slices=SLICES, size=SIZE, seed=0, fsync=False)
    return root / "drop", infos


@pytest.fixture
def cohort(cohort_src, tmp_path):
    src, infos = cohort_src
    dst = tmp_path / "drop"
    shutil.copytree(src, dst)
    return dst, infos


class DcmreadCounter:
    """Counts pydicom.dcmread calls made anywhere in the DICOM and RTSTRUCT readers."""

    def __init__(self, monkeypatch):
        import pydicom.filereader

        import training.dicom as dicom_mod
        import training.dicom.rtstruct as rt_mod

        self.calls = 0
        orig = pydicom.dcmread

        def counting(*a, **k):
            self.calls += 1
            return orig(*a, **k)

        monkeypatch.setattr(pydicom, "dcmread", counting)
        monkeypatch.setattr(pydicom.filereader, "dcmread", counting)
        for mod in (dicom_mod, rt_mod):
            if hasattr(mod, "dcmread"):
                monkeypatch.setattr(mod, "dcmread", counting)


def _hu_from_files(files):
    """Independent HU reading: pydicom pixel_array × slope + intercept, sorted along the normal."""
    dss = [pydicom.dcmread(f) for f in files]
    iop = np.asarray(dss[0].ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), n)))
    return np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])


def test_ingest_phantom_round_trip(cohort, tmp_path):
    drop, infos = cohort
    events, arrived = [], []
    ws_path = tmp_path / "w.h5"
    rep = ingest([drop], ws_path, CFG, workers=1, progress=lambda *a: events.append(a),
                 on_patient=arrived.append)
    assert rep.added == ["PAT-0001", "PAT-0002", "PAT-0003"] and not rep.skipped
    assert [p.pseudonym for p in arrived] == rep.added
    assert {e[0] for e in events} >= {"discover", "ingest", "merge"}
    assert not has_leftovers(ws_path)  # one file per entry, all named by the head
    assert sorted(staging_dir(ws_path).iterdir()) == sorted(entry_files(ws_path).values())
    with Workspace.open(ws_path) as ws:
        assert ws.image_shape == (24, 24) and ws.roi_names == CFG.rois
        assert [p.n_images for p in ws.patients] == [SLICES] * 3
        for p in ws.patients:
            np.testing.assert_allclose(p.spacing, (3.0, 1.5, 1.5))
            assert {"Lung-Left", "Lung-Right", "Heart", "Body"} <= set(p.rois)
        assert {p.split for p in ws.patients} == {"train", "test"}
        # stored source = an independent pydicom read of the files (pseudonyms follow drop order)
        for k, info in enumerate(infos):
            hu, masks, geo = ws.read_source(k)
            np.testing.assert_array_equal(hu, _hu_from_files(info.ct_files))
            assert geo.shape == (SLICES, SIZE, SIZE)
            images, labels = ws.read_patient(k)
            lab = np.zeros(hu.shape, np.uint8)
            for c, roi in reversed(list(enumerate(CFG.rois, 1))):
                lab[masks[roi]] = c
            ref_i, ref_l = preprocess_volume(hu, lab, geo.positions, CFG)
            np.testing.assert_allclose(images, ref_i, atol=0.5 / 65535 + 1e-6)  # stored as uint16
            np.testing.assert_array_equal(labels, ref_l)
            assert set(np.unique(labels)) == {0, 1, 2, 3}
        assert ws.images_dataset(0).chunks == (1, 24, 24)
        assert ws.provenance[-1]["n_source_files"] == 3 * (SLICES + 1)


def test_reingest_unchanged_reads_no_dicom(cohort, tmp_path, monkeypatch):
    drop, _ = cohort
    ws_path = tmp_path / "w.h5"
    ingest([drop], ws_path, CFG, workers=1)
    before = ws_path.stat().st_mtime_ns
    counter = DcmreadCounter(monkeypatch)
    monkeypatch.setattr("training.store.ingest.hash_file", lambda p: pytest.fail(f"{p} was read"))
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert counter.calls == 0
    assert sorted(rep.unchanged) == ["PAT-0001", "PAT-0002", "PAT-0003"] and not rep.added
    with Workspace.open(ws_path) as ws:
        assert len(ws.patients) == 3
    # a touched (same bytes, new mtime) file is hashed but its series is not parsed again
    monkeypatch.undo()
    import training.dicom

    monkeypatch.setattr(training.dicom, "load_ct_series", lambda *a: pytest.fail("series loaded"))
    f = next((drop / "patient_001" / "CT").iterdir())
    os.utime(f, ns=(before + 10**9, before + 10**9))
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert "PAT-0002" in rep.unchanged and not rep.added


def test_content_hash_read_in_one_pass_equals_hashing_each_file(cohort, tmp_path):
    """New series are hashed from the bytes the loader reads (one read per file); the
    content hash must be the one hash_file gives, with the RTSTRUCT included."""
    from training.store.ingest import combine_hashes, hash_file

    drop, infos = cohort
    ws_path = tmp_path / "w.h5"
    ingest([drop], ws_path, CFG, workers=2)
    stored = {}
    for k, fp in entry_files(ws_path).items():
        with h5py.File(fp, "r") as f:
            stored[f["entries"][k].attrs["series_uid"]] = f["entries"][k].attrs["content_hash"]
    for info in infos:
        files = [p for p in info.folder.rglob("*") if p.is_file()]
        uid = pydicom.dcmread(next((info.folder / "CT").iterdir()), stop_before_pixels=True).SeriesInstanceUID
        assert stored[uid] == combine_hashes(hash_file(p) for p in files)


def test_changed_parameters_rederive_without_dicom(cohort, tmp_path, monkeypatch):
    drop, _ = cohort
    ws_path = tmp_path / "w.h5"
    ingest([drop], ws_path, CFG, workers=1)
    with Workspace.open(ws_path) as ws:
        hash_before = ws.data_hash
    shutil.rmtree(drop)  # the DICOM files are gone: re-deriving must not need them
    calls = []
    rep = rederive(ws_path, CFG.replace(crop=16), workers=1, cancel=lambda: bool(calls),
                   progress=lambda *a: calls.append(a))
    assert rep.cancelled and not rep.rederived  # all or nothing
    with Workspace.open(ws_path) as ws:
        assert ws.data_hash == hash_before and ws.preprocess == CFG
    counter = DcmreadCounter(monkeypatch)
    new = CFG.replace(crop=None, size=16, mode="3d", depth=8, rois=("Heart",))
    rep = rederive(ws_path, new, workers=1)
    assert sorted(rep.rederived) == ["PAT-0001", "PAT-0002", "PAT-0003"] and not rep.cancelled
    assert counter.calls == 0
    with Workspace.open(ws_path) as ws:
        assert ws.preprocess == new and ws.data_hash != hash_before
        assert ws.image_shape == (8, 16, 16) and ws.roi_names == ("Heart",)
        hu, masks, geo = ws.read_source(1)
        ref_i, ref_l = preprocess_volume(hu, masks["Heart"].astype(np.uint8), geo.positions, new)
        images, labels = ws.read_patient(1)
        np.testing.assert_allclose(images, ref_i, atol=0.5 / 65535 + 1e-6)
        np.testing.assert_array_equal(labels, ref_l)
        assert ws.images_dataset(0).chunks == (1, 1, 16, 16)
        phash = ws.preprocess_hash
    with h5py.File(entry_files(ws_path)["PAT-0001"], "r") as f:  # only the current arrays
        assert list(f["entries/PAT-0001/derived"]) == [phash]
    # the old entry files are gone: one per entry
    assert sorted(staging_dir(ws_path).iterdir()) == sorted(entry_files(ws_path).values())


def test_ingest_with_new_settings_rederives_existing(cohort, tmp_path):
    drop, infos = cohort
    ws_path = tmp_path / "w.h5"
    shutil.move(str(drop / infos[2].folder.name), tmp_path / "later")
    ingest([drop], ws_path, CFG, workers=1)
    rep = ingest([drop, tmp_path / "later"], ws_path, CFG.replace(crop=16), workers=1)
    assert sorted(rep.rederived) == ["PAT-0001", "PAT-0002"] and rep.added == ["PAT-0003"]
    with Workspace.open(ws_path) as ws:
        assert ws.image_shape == (16, 16) and [p.n_images for p in ws.patients] == [SLICES] * 3
    rep = ingest([drop], ws_path, None, workers=1)  # None keeps the workspace's settings
    assert not rep.rederived and not rep.added
    with Workspace.open(ws_path) as ws:
        assert ws.preprocess.crop == 16


def test_cancel_keeps_committed_patients(cohort, tmp_path):
    drop, _ = cohort
    ws_path = tmp_path / "w.h5"
    arrived = []
    rep = ingest([drop], ws_path, CFG, workers=1, on_patient=arrived.append,
                 cancel=lambda: len(arrived) >= 1)
    assert rep.cancelled and 1 <= len(rep.added) < 3
    with Workspace.open(ws_path) as ws:
        assert [p.pseudonym for p in ws.patients] == rep.added
        ws.read_images(ws.index())
    rep2 = ingest([drop], ws_path, CFG, workers=1)
    assert len(rep2.added) + len(rep2.unchanged) == 3 and not rep2.cancelled
    with Workspace.open(ws_path) as ws:
        assert len(ws.patients) == 3


def test_no_identifiers_in_workspace_bytes(cohort, tmp_path):
    drop, infos = cohort
    # a user's folder named after the patient, holding a file that is not DICOM
    named = drop / "PHANTOM_001 notes"
    named.mkdir()
    (named / "PH001 readme.txt").write_text("not dicom")
    ws_path = tmp_path / "w.h5"
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert len(rep.added) == 3
    skipped_paths = [p for p, _ in rep.skipped]
    assert len(skipped_paths) == 1 and "PAT-0002" in skipped_paths[0]
    raw = ws_path.read_bytes().lower()
    for info in infos:
        for value in (info.patient_name, info.patient_id, info.patient_birth_date,
                      info.patient_name.replace("^", "_")):
            assert value.lower().encode() not in raw, value
    assert str(tmp_path).lower().encode() not in raw  # no absolute paths either
    with Workspace.open(ws_path) as ws:
        assert ws.skipped == [(skipped_paths[0], rep.skipped[0][1])]
    # dropped again with a new unusable file beside the known series: still scrubbed
    (named / "PHANTOM^001.txt").write_text("not dicom either")
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert not rep.added and sorted(p for p, _ in rep.skipped) == [
        "PAT-0002 notes/PAT-0002 readme.txt", "PAT-0002 notes/PAT-0002.txt"]
    raw = ws_path.read_bytes().lower()
    assert b"phantom^001" not in raw and b"phantom_001" not in raw


def test_bad_files_are_listed_and_the_rest_ingested(cohort, tmp_path, monkeypatch):
    drop, infos = cohort
    bad = drop / "bad"
    bad.mkdir()
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "text.txt").write_text("hello")
    good = infos[0].ct_files[0].read_bytes()
    (bad / "truncated.dcm").write_bytes(good[:300])
    # an RTSTRUCT whose Frame of Reference differs from its referenced CT's
    ds = pydicom.dcmread(infos[1].rtstruct)
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4.5"
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = "1.2.3.4.5"
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(bad / "wrong_for_rs.dcm")
    # an RTSTRUCT whose CT series is not dropped
    from training.dicom.phantom import write_patient

    other = write_patient(tmp_path / "other", 3, 0, slices=SLICES, size=SIZE, fsync=False)
    orphan = tmp_path / "orphan"
    shutil.copytree(other.folder, orphan)
    shutil.rmtree(orphan / "CT")
    ws_path = tmp_path / "w.h5"
    live = []
    rep = ingest([drop, orphan], ws_path, CFG, workers=1, on_skipped=lambda p, r: live.append((p, r)))
    assert len(rep.added) == 3
    assert live == rep.skipped  # each one reported as it was found
    reasons = dict(rep.skipped)
    for name in ("bad/empty.dcm", "bad/text.txt", "bad/truncated.dcm", "bad/wrong_for_rs.dcm",
                 "RTSTRUCT/rs.dcm"):
        assert any(p.endswith(name) for p in reasons), (name, reasons)
    assert "Frame of Reference" in next(r for p, r in reasons.items() if p.endswith("wrong_for_rs.dcm"))
    with Workspace.open(ws_path) as ws:
        assert len(ws.skipped) == len(rep.skipped)
        assert len(ws.patients) == 3
    # dropped again: the bad files are reported again without being read
    import training.store.ingest as ingest_mod

    scanned = []
    real_scan = ingest_mod._scan
    monkeypatch.setattr(ingest_mod, "_scan", lambda d, files, *a: scanned.extend(files) or real_scan(d, files, *a))
    rep2 = ingest([drop, orphan], ws_path, CFG, workers=1)
    assert [os.path.basename(f) for f in scanned] == ["rs.dcm"]  # only the orphan RTSTRUCT is looked at again
    monkeypatch.undo()
    assert not rep2.added and {p for p, _ in rep2.skipped} >= {p for p, _ in rep.skipped if "bad/" in p}
    # a file fixed since is no longer listed; the others still are
    shutil.copy(infos[1].rtstruct, bad / "wrong_for_rs.dcm")
    rep3 = ingest([drop, orphan], ws_path, CFG, workers=1)
    assert rep3.added == ["PAT-0002"]  # its series gained an RTSTRUCT file
    with Workspace.open(ws_path) as ws:
        listed = {p for p, _ in ws.skipped}
        assert "bad/wrong_for_rs.dcm" not in listed
        assert {"bad/empty.dcm", "bad/text.txt", "bad/truncated.dcm"} <= listed


def test_workspace_inside_the_dropped_folder_is_not_ingested(cohort):
    drop, _ = cohort
    ws_path = drop / "w.h5"
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert len(rep.added) == 3 and not rep.skipped
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert not rep.added and not rep.skipped and len(rep.unchanged) == 3


def test_two_series_of_one_patient(tmp_path):
    a = generate_cohort(tmp_path / "a", 1, slices=4, size=SIZE, seed=0, fsync=False)
    b = generate_cohort(tmp_path / "b", 1, slices=4, size=SIZE, seed=1, fsync=False)
    assert a[0].patient_id == b[0].patient_id
    c = generate_cohort(tmp_path / "c", 2, slices=4, size=SIZE, seed=0, fsync=False)[1:]
    ws_path = tmp_path / "w.h5"
    rep = ingest([tmp_path / "a", tmp_path / "b", c[0].folder], ws_path, CFG, workers=1)
    assert sorted(rep.added) == ["PAT-0001", "PAT-0001-2", "PAT-0002"]
    with Workspace.open(ws_path) as ws:
        by = {p.pseudonym: p for p in ws.patients}
        assert by["PAT-0001"].patient == by["PAT-0001-2"].patient == "PAT-0001"
        assert by["PAT-0001"].split == by["PAT-0001-2"].split != by["PAT-0002"].split


def test_worker_pool_gives_the_same_workspace(cohort, tmp_path):
    drop, _ = cohort
    ingest([drop], tmp_path / "one.h5", CFG, workers=1)
    # from a thread, as the GUI runs it: workers come from a forkserver, not a fork,
    # which the app starts ahead (start_worker_server returns at once)
    import threading
    import time
    from multiprocessing import forkserver

    from training.store.ingest import start_worker_server

    t0 = time.perf_counter()
    start_worker_server()
    assert time.perf_counter() - t0 < 2.0
    assert forkserver._forkserver._forkserver_pid is not None  # running
    t = threading.Thread(target=ingest, args=([drop], tmp_path / "two.h5", CFG), kwargs={"workers": 2})
    t.start()
    t.join(120)
    with Workspace.open(tmp_path / "one.h5") as w1, Workspace.open(tmp_path / "two.h5") as w2:
        assert [p.pseudonym for p in w1.patients] == [p.pseudonym for p in w2.patients]
        np.testing.assert_array_equal(w1.read_images(w1.index()), w2.read_images(w2.index()))
        np.testing.assert_array_equal(w1.read_labels(w1.index()), w2.read_labels(w2.index()))


def test_refuses_foreign_files_and_arrays_only_rederive(cohort, tmp_path):
    from training.store.workspace import WorkspaceError, write_arrays_workspace

    drop, _ = cohort
    junk = tmp_path / "junk.h5"
    junk.write_text("not a workspace")
    with pytest.raises(WorkspaceError, match="junk.h5"):
        ingest([drop], junk, CFG, workers=1)
    assert junk.read_text() == "not a workspace"
    arr = write_arrays_workspace(tmp_path / "a.h5", {"A": np.zeros((2, 8, 8), np.float32)})
    with pytest.raises(WorkspaceError, match="no source"):
        rederive(arr, CFG, workers=1)
    with Workspace.open(arr) as ws:
        assert len(ws.patients) == 1


def test_failed_series_in_the_dropped_folder_itself_stores_no_path_above_it(cohort, tmp_path,
                                                                          monkeypatch):
    # The CT folder itself is dropped and its series cannot be loaded: the skipped row
    # names the folder relative to the drop ("."), never its absolute path (the dropped
    # folder's name and the folders above it may name the patient or the user).
    drop, _ = cohort
    ct = drop.parent / "Secret_Surname_folder" / "CT"
    shutil.copytree(drop / "patient_001" / "CT", ct)
    import training.dicom

    def boom(*a, **k):
        raise MemoryError("Unable to allocate 40.2 GiB for an array")

    monkeypatch.setattr(training.dicom, "load_ct_series", boom)
    ws_path = tmp_path / "w.h5"
    rep = ingest([ct], ws_path, CFG, workers=1)
    # every file of the series is listed (issue 11), none with a path above the drop
    assert not rep.added and len(rep.skipped) == len(list(ct.iterdir()))
    for where, why in rep.skipped:
        assert "/" not in where and where.endswith(".dcm") and "MemoryError" in why
        assert "Secret_Surname" not in where + why
    assert b"Secret_Surname" not in ws_path.read_bytes()


def test_non_utf8_file_names_are_stored_printable(cohort, tmp_path):
    # A Latin-1 file name (old archives) is not UTF-8; Python holds its bytes as lone
    # surrogates, which `ct-vae info` could not print on a strict UTF-8 terminal.
    drop, _ = cohort
    with open(os.path.join(os.fsencode(drop), b"M\xfcller.txt"), "wb") as fh:
        fh.write(b"not DICOM")
    ws_path = tmp_path / "w.h5"
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert len(rep.added) == 3
    assert [p for p, _ in rep.skipped] == ["M\\xfcller.txt"]
    with Workspace.open(ws_path) as ws:
        for path, reason in ws.skipped:
            (path + reason).encode("utf-8")  # strict: raises on a surrogate
    rep = ingest([drop], ws_path, CFG, workers=1)  # known unusable file: same row again
    assert [p for p, _ in rep.skipped] == ["M\\xfcller.txt"]


def test_rederive_settings_unfit_for_an_entry_name_it_and_change_nothing(cohort, tmp_path):
    from training.store.workspace import WorkspaceError

    drop, _ = cohort
    ws_path = tmp_path / "w.h5"
    ingest([drop], ws_path, CFG, workers=1)
    before = ws_path.read_bytes()
    far = CFG.replace(slices="around", slice_center=1e4, slice_count=2)
    with pytest.raises(WorkspaceError, match=r"PAT-000\d: slice centre .* outside the series"):
        rederive(ws_path, far, workers=1)
    with pytest.raises(WorkspaceError, match="workspace is unchanged"):
        ingest([drop], ws_path, far, workers=1)
    assert ws_path.read_bytes() == before


def test_birth_date_in_a_folder_name_is_scrubbed(cohort, tmp_path):
    drop, infos = cohort
    date = infos[0].patient_birth_date
    named = drop / f"scan of {date}"
    named.mkdir()
    (named / f"{date}.txt").write_text("not dicom")
    ws_path = tmp_path / "w.h5"
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert len(rep.added) == 3 and len(rep.skipped) == 1
    assert date not in repr(rep.skipped)
    assert date.encode() not in ws_path.read_bytes()
    # dropped again with a new unusable file: the known series' header is read for it
    (named / f"{date} notes.txt").write_text("not dicom either")
    rep = ingest([drop], ws_path, CFG, workers=1)
    assert len(rep.skipped) == 2 and date not in repr(rep.skipped)
    assert date.encode() not in ws_path.read_bytes()
