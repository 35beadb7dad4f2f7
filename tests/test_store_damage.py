"""Damaged stored data is never silent, and the advice the error gives works: a damaged
entry is re-loaded when its DICOM is dropped again; the head's tables and settings and
each entry's attributes carry a digest checked when read and by `verify`
(`ct-vae info --check`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_store_faults import _chunk_offset, _flip
from training.config import PreprocessConfig
from training.dicom.phantom import generate_cohort
from training.store import workspace as wsmod
from training.store.ingest import ingest
from training.store.workspace import DamagedError, Workspace, WorkspaceError, entry_files

CFG = PreprocessConfig(crop=24, rois=("Heart",))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three phantom patients and a reference workspace ingested from them."""
    root = tmp_path_factory.mktemp("damage")
    generate_cohort(root / "dicom", 3, slices=6, size=32, seed=5, fsync=False)
    ref = root / "ref" / "w.h5"
    ref.parent.mkdir()
    ingest([root / "dicom"], ref, CFG, workers=1)
    return root / "dicom", ref


def _fresh(cohort, tmp_path) -> Path:
    path = tmp_path / "w" / "w.h5"
    path.parent.mkdir()
    wsmod.copy_workspace(cohort[1], path)
    return path



def _contents(path: Path) -> dict:
    """Everything a reader sees, per entry: arrays, source, attributes, head tables."""
    out = {}
    with Workspace.open(path) as ws:
        out["data_hash"] = ws.data_hash
        out["patients"] = ws.patients
        for i, p in enumerate(ws.patients):
            hu, masks, geo = ws.read_source(i)
            imgs, labs = ws.read_patient(i)
            out[p.pseudonym] = (hu, masks, geo.to_dict() if geo else None, imgs, labs,
                                ws.fidelity(i))
    with h5py.File(path, "r") as f:
        for name in ("identity", "pseudonyms", "entries", "skipped"):
            out["meta/" + name] = wsmod._read_meta(f, name, None)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], tuple):
            hu, masks, geo, imgs, labs, fid = a[k]
            hu2, masks2, geo2, imgs2, labs2, fid2 = b[k]
            np.testing.assert_array_equal(hu, hu2)
            assert masks.keys() == masks2.keys()
            for r in masks:
                np.testing.assert_array_equal(masks[r], masks2[r])
            np.testing.assert_array_equal(imgs, imgs2)
            np.testing.assert_array_equal(labs, labs2)
            assert geo == geo2 and fid == fid2
        else:
            assert a[k] == b[k], k


def _file_bytes(path: Path, labels) -> dict[str, bytes]:
    files = entry_files(path)
    return {k: files[k].read_bytes() for k in labels}


# ----------------------------------------------------------------------------- re-load


@pytest.mark.parametrize("touch", [False, True])
def test_damaged_hu_message_advice_works(cohort, tmp_path, capsys, touch):
    from training.cli import main

    dicom, ref = cohort
    path = _fresh(cohort, tmp_path)
    f2 = entry_files(path)["PAT-0002"]
    _flip(f2, _chunk_offset(f2, "entries/PAT-0002/source/hu", 2))
    others = _file_bytes(path, ["PAT-0001", "PAT-0003"])
    with Workspace.open(path) as ws:
        with pytest.raises(DamagedError) as ei:
            ws.read_source(1)
    msg = str(ei.value)
    assert "PAT-0002: stored data is damaged" in msg and "\n" not in msg
    assert "drop its DICOM again" in msg and "the damage is recorded" in msg
    assert f2.with_name(f2.name + wsmod.DAMAGE_SUFFIX).exists()
    assert wsmod.recorded_damage(path) == {"PAT-0002"}
    assert main(["info", str(path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED PAT-0002" in out and "drop their DICOM again" in out

    times = {p: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in dicom.rglob("*") if p.is_file()}
    try:
        if touch:  # touched mtimes: the files are hashed, and their content is unchanged
            for p in times:
                os.utime(p)
        rep = ingest([dicom], path, workers=1)  # the advice: drop its DICOM again
    finally:
        for p, ns in times.items():  # the cohort is shared by the other tests
            os.utime(p, ns=ns)
    assert rep.added == ["PAT-0002"] and sorted(rep.unchanged) == ["PAT-0001", "PAT-0003"]
    assert any("PAT-0002" in n and "loaded again" in n for n in rep.notes)
    assert not f2.exists() and not list(wsmod.data_dir(path).glob("*" + wsmod.DAMAGE_SUFFIX))
    assert wsmod.recorded_damage(path) == set()
    assert main(["info", str(path), "--check"]) == 0
    capsys.readouterr()
    got, want = _contents(path), _contents(ref)
    if touch:  # touched files have new quick identities (rows added), same contents
        assert {tuple(r) for r in got.pop("meta/identity").values()} == \
            {tuple(r) for r in want.pop("meta/identity").values()}
    _assert_same(got, want)  # voxel-identical to a fresh ingest
    assert _file_bytes(path, ["PAT-0001", "PAT-0003"]) == others  # nothing else touched
    # and the next drop calls it unchanged again
    rep = ingest([dicom], path, workers=1)
    assert not rep.added and len(rep.unchanged) == 3


def test_damaged_images_found_by_a_batch_read_are_reloaded(cohort, tmp_path):
    dicom, ref = cohort
    path = _fresh(cohort, tmp_path)
    with Workspace.open(path) as ws:
        phash = ws.preprocess_hash
    f3 = entry_files(path)["PAT-0003"]
    _flip(f3, _chunk_offset(f3, f"entries/PAT-0003/derived/{phash}/images", 1))
    with Workspace.open(path) as ws:
        with pytest.raises(WorkspaceError, match="PAT-0003: stored data is damaged"):
            ws.read_images(ws.index())
    rep = ingest([dicom], path, workers=1)
    assert rep.added == ["PAT-0003"]
    _assert_same(_contents(path), _contents(ref))


def test_an_unrecorded_damage_says_how_to_record_it(cohort, tmp_path, monkeypatch):
    path = _fresh(cohort, tmp_path)
    f1 = entry_files(path)["PAT-0001"]
    _flip(f1, _chunk_offset(f1, "entries/PAT-0001/source/hu", 0))
    monkeypatch.setattr(Workspace, "_record_damage", lambda self, p: "permission denied")
    with Workspace.open(path) as ws:
        with pytest.raises(DamagedError) as ei:
            ws.read_source(0)
    msg = str(ei.value)
    assert "could not be recorded (permission denied)" in msg
    assert "ct-vae info --check" in msg and "then drop its DICOM again" in msg


def test_damage_not_in_the_drop_stays_recorded(cohort, tmp_path):
    """A drop without the damaged series' DICOM leaves it (and its record) as it is."""
    dicom, _ = cohort
    path = _fresh(cohort, tmp_path)
    f2 = entry_files(path)["PAT-0002"]
    _flip(f2, _chunk_offset(f2, "entries/PAT-0002/source/hu", 1))
    with Workspace.open(path) as ws:
        assert [k for k, _ in ws.verify()[0]] == ["PAT-0002"]
    one = sorted(p for p in dicom.iterdir() if p.is_dir())[0]  # PAT-0001's folder
    rep = ingest([one], path, workers=1)
    assert not rep.added and rep.unchanged == ["PAT-0001"]
    assert wsmod.recorded_damage(path) == {"PAT-0002"}


# ----------------------------------------------------------------------------- digests


def _rewrite_table(path: Path, name: str, change) -> None:
    """Edit a head table in place, as damage would (its digest is left as it was)."""
    with h5py.File(path, "r+") as f:
        obj = json.loads(f["meta"][name][()])
        change(obj)
        del f["meta"][name]
        f["meta"].create_dataset(name, data=json.dumps(obj, sort_keys=True), dtype=wsmod._STR)


def test_head_entry_table_damage_is_one_line_naming_the_table(cohort, tmp_path, capsys):
    from training.cli import main

    path = _fresh(cohort, tmp_path)

    def more_images(t):
        t["PAT-0002"]["n_images"] += 80

    _rewrite_table(path, "entries", more_images)
    with pytest.raises(DamagedError) as ei:
        Workspace.open(path)
    assert "table 'entries'" in str(ei.value) and "head is damaged" in str(ei.value)
    assert main(["info", str(path), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "table 'entries'" in err and "Traceback" not in err
    dicom = cohort[0]
    with pytest.raises(WorkspaceError, match="table 'entries'"):  # no writer builds on it
        ingest([dicom], path, workers=1)


def test_head_identity_table_damage_is_found_by_check(cohort, tmp_path, capsys):
    from training.cli import main

    path = _fresh(cohort, tmp_path)

    def forget(t):
        t.pop(sorted(t)[0])

    _rewrite_table(path, "identity", forget)
    with Workspace.open(path) as ws:  # opening reads only the entry table and file list
        damaged, _ = ws.verify()
    assert damaged == [("w.h5", "table 'identity' does not match its checksum")]
    assert main(["info", str(path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED w.h5 (head)" in out and "restored from a copy" in out


def test_head_settings_damage_is_reported(cohort, tmp_path):
    path = _fresh(cohort, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["test_fraction"] = 0.9
    with pytest.raises(DamagedError, match="settings"):
        Workspace.open(path)


def test_entry_spacing_damage_names_the_series_and_is_reloaded(cohort, tmp_path, capsys):
    from training.cli import main

    dicom, ref = cohort
    path = _fresh(cohort, tmp_path)
    f1 = entry_files(path)["PAT-0001"]
    with h5py.File(f1, "r+") as f:
        sp = f["entries/PAT-0001"].attrs["spacing"]
        f["entries/PAT-0001"].attrs["spacing"] = np.asarray([196608.0, *sp[1:]])
    with Workspace.open(path) as ws:
        for i, p in enumerate(ws.patients):
            if p.pseudonym == "PAT-0001":
                for read in (ws.read_source, ws.source_geometry, ws.fidelity):
                    with pytest.raises(DamagedError, match="PAT-0001: stored data is damaged "
                                                           r"\(its attributes do not match"):
                        read(i)
            else:
                ws.read_source(i)
    assert main(["info", str(path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED PAT-0001" in out and "attributes" in out
    rep = ingest([dicom], path, workers=1)
    assert rep.added == ["PAT-0001"]
    _assert_same(_contents(path), _contents(ref))


def test_source_geometry_attribute_damage_is_reported(cohort, tmp_path):
    path = _fresh(cohort, tmp_path)
    f3 = entry_files(path)["PAT-0003"]
    with h5py.File(f3, "r+") as f:
        g = f["entries/PAT-0003/source"]
        g.attrs["geometry"] = g.attrs["geometry"].replace(",", ", ", 1)  # same JSON, other bytes
    with Workspace.open(path) as ws:
        damaged, _ = ws.verify()
    assert [k for k, _ in damaged] == ["PAT-0003"] and "attributes" in damaged[0][1]


def test_head_and_entry_file_disagreeing_without_digests_is_named(cohort, tmp_path):
    """An old head (no digests) whose entry row says more images than the file holds: a
    read names the series instead of raising a bare IndexError."""
    path = _fresh(cohort, tmp_path)
    _strip_digests(path)

    def more_images(t):
        t["PAT-0002"]["n_images"] += 80

    _rewrite_table(path, "entries", more_images)
    with Workspace.open(path) as ws:
        with pytest.raises(DamagedError, match="PAT-0002: .*entry table says"):
            ws.read_images(ws.index())


def _strip_digests(path: Path) -> None:
    """The workspace as written before digests existed."""
    with h5py.File(path, "r+") as f:
        del f.attrs[wsmod._HEAD_DIGEST_ATTR]
        del f["meta"].attrs[wsmod._DIGESTS_ATTR]
    for file in entry_files(path).values():
        with h5py.File(file, "r+") as f:
            for g in f["entries"].values():
                del g.attrs[wsmod._ENTRY_DIGEST_ATTR]
            del f["meta"].attrs[wsmod._DIGESTS_ATTR]


def test_a_workspace_without_digests_opens_and_check_says_so(cohort, tmp_path, capsys):
    from training.cli import main

    dicom, ref = cohort
    path = _fresh(cohort, tmp_path)
    _strip_digests(path)
    with Workspace.open(path) as ws:
        assert not ws.head_checked
        damaged, _ = ws.verify()
        assert not damaged and sorted(ws.unchecked) == ["PAT-0001", "PAT-0002", "PAT-0003"]
    assert main(["info", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "all 3 entries" in out and "not checked" in out
    assert main(["info", str(path), "--check", "--json"]) == 0
    chk = json.loads(capsys.readouterr().out)["check"]
    assert chk["head_checked"] is False and len(chk["unchecked_entries"]) == 3
    rep = ingest([dicom], path, workers=1)  # a writer adds digests to what it writes
    assert len(rep.unchanged) == 3


def test_a_leftover_with_damaged_attributes_is_skipped(cohort, tmp_path):
    """A committed file the head does not name yet (a killed writer's) whose attributes
    fail their digest is left out when opening and when the next writer folds it in."""
    path = _fresh(cohort, tmp_path)
    files = entry_files(path)
    with h5py.File(path, "r") as f:
        through = int(f.attrs["merged_through"])
    left = wsmod.staged_path(path, through + 1, "PAT-0009")
    with h5py.File(files["PAT-0001"], "r") as src, h5py.File(left, "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        src.copy(src["entries/PAT-0001"], dst.create_group("entries"), name="PAT-0009")
        src.copy(src["meta"], dst, name="meta")
        dst["entries/PAT-0009"].attrs["pseudonym"] = "PAT-0009"  # digest now stale
    with Workspace.open(path) as ws:
        assert [p.pseudonym for p in ws.patients] == ["PAT-0001", "PAT-0002", "PAT-0003"]
    wsmod.merge(path)
    with Workspace.open(path) as ws:
        assert len(ws.patients) == 3
        assert "PAT-0009" in ws.provenance[-1]["damaged_staged_files"][0]
    assert not left.exists()


def test_digests_survive_a_rederive_and_a_role_change(cohort, tmp_path):
    from training.store.ingest import rederive
    from training.store.roles import mark_as_query

    path = _fresh(cohort, tmp_path)
    rederive(path, CFG.replace(crop=16), workers=1)
    mark_as_query(path, ["PAT-0003"])
    with Workspace.open(path) as ws:
        assert ws.head_checked
        damaged, _ = ws.verify()
        assert not damaged and not ws.unchecked
    shutil.rmtree(tmp_path / "w")
