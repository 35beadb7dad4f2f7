"""The pseudonym key stays out of the workspace: the stored digests cannot be tested
against guessed PatientIDs with what the file holds; older workspaces migrate once; a
workspace made with another key is refused until the team's key is imported."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pydicom
import pytest

from training.config import PreprocessConfig
from training.dicom.phantom import generate_cohort
from training.store import pseudonym_key as pk
from training.store import workspace as wsmod
from training.store.ingest import ingest
from training.store.workspace import WorkspaceError

ROOT = Path(__file__).resolve().parents[1]
CFG = PreprocessConfig(crop=24)


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "pseudonym.key"
    monkeypatch.setenv(pk.ENV_KEY_FILE, str(path))
    return path


def _pids(drop: Path) -> list[str]:
    return sorted({str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in drop.rglob("CT_0001.dcm")})


def _meta(ws: Path):
    with h5py.File(ws, "r") as f:
        return str(f.attrs["salt"]), wsmod._read_meta(f, "pseudonyms", {})


def _salted(salt: str, pid: str) -> str:
    return hmac.new(bytes.fromhex(salt), f"id:{pid}".encode(), hashlib.sha256).hexdigest()


def test_workspace_alone_cannot_be_tested_against_ids(tmp_path, key_file):
    drop = tmp_path / "drop"
    generate_cohort(drop, 2, slices=4, size=32, seed=0, fsync=False)
    ws = tmp_path / "w.h5"
    ingest([drop], ws, CFG, workers=1)
    key = pk.load_key(create=False)
    assert key_file.stat().st_mode & 0o777 == 0o600
    salt, pseudonyms = _meta(ws)
    raw = ws.read_bytes()
    assert key.hex().encode() not in raw and key not in raw
    for pid in _pids(drop):
        plain = _salted(salt, pid)
        assert plain.encode() not in raw  # what the salt alone would let anyone recompute
        assert pk.keyed(key, plain) in pseudonyms
    assert all(d.startswith(pk.key_id(key) + ":") for d in pseudonyms)


def test_old_workspace_migrates_once_and_keeps_its_pseudonyms(tmp_path, key_file):
    drop = tmp_path / "drop"
    generate_cohort(drop, 2, slices=4, size=32, seed=0, fsync=False)
    ws = tmp_path / "w.h5"
    first = ingest([drop], ws, CFG, workers=1)
    salt, pseudonyms = _meta(ws)
    key = pk.load_key(create=False)
    legacy = {_salted(salt, pid): n for pid, n in zip(_pids(drop), sorted(pseudonyms.values()))}
    assert {pk.keyed(key, d) for d in legacy} == set(pseudonyms)
    with h5py.File(ws, "a") as f:  # as an older version wrote it
        wsmod._write_meta(f, "pseudonyms", legacy)
    (drop / "patient_001" / "extra.txt").write_text("x")  # something new, so the drop writes
    again = ingest([drop], ws, CFG, workers=1)
    assert len(again.notes) == 1 and "2 patient digest(s) migrated" in again.notes[0]
    assert sorted(again.unchanged) == sorted(first.added) and not again.added
    salt2, migrated = _meta(ws)
    assert salt2 == salt and migrated == pseudonyms
    raw = ws.read_bytes()
    assert not any(d.encode() in raw for d in legacy)  # no old digest left in the file
    assert not ingest([drop], ws, CFG, workers=1).notes  # once


def test_other_key_refused_until_imported(tmp_path, key_file, monkeypatch):
    drop = tmp_path / "drop"
    generate_cohort(drop, 2, slices=4, size=32, seed=0, fsync=False)
    ws = tmp_path / "w.h5"
    ingest([drop / "patient_000"], ws, CFG, workers=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "training.cli", "key", "export", str(tmp_path / "team.key")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    other = tmp_path / "other" / "pseudonym.key"
    monkeypatch.setenv(pk.ENV_KEY_FILE, str(other))
    with pytest.raises(WorkspaceError, match=r"other key|pseudonym key .* import the team's key"):
        ingest([drop / "patient_001"], ws, CFG, workers=1)
    env[pk.ENV_KEY_FILE] = str(other)
    refused = subprocess.run([sys.executable, "-m", "training.cli", "key", "import", str(tmp_path / "team.key")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "--force" in refused.stderr  # a different key exists already
    done = subprocess.run([sys.executable, "-m", "training.cli", "key", "import", "--force",
                           str(tmp_path / "team.key")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = ingest([drop / "patient_001"], ws, CFG, workers=1)
    assert report.added == ["PAT-0002"]


def test_migrate_refuses_a_read_only_workspace_and_keeps_its_mode(tmp_path, key_file, capsys):
    """`ct-vae key migrate` refuses a read-only workspace as every other write does (one
    line, nothing changed, mode kept); a writable one keeps its mode when rewritten."""
    from training.cli import main

    drop = tmp_path / "drop"
    generate_cohort(drop, 1, slices=4, size=32, seed=0, fsync=False)
    ws = tmp_path / "w.h5"
    ingest([drop], ws, CFG, workers=1)
    salt, pseudonyms = _meta(ws)
    key = pk.load_key(create=False)
    legacy = {_salted(salt, pid): n for pid, n in zip(_pids(drop), sorted(pseudonyms.values()))}
    with h5py.File(ws, "a") as f:  # as an older version wrote it
        wsmod._write_meta(f, "pseudonyms", legacy)
    os.chmod(ws, 0o444)
    before = ws.read_bytes()
    capsys.readouterr()
    assert main(["key", "migrate", str(ws)]) == 1
    out = capsys.readouterr()
    assert not out.out and out.err.count("\n") == 1, out
    assert out.err.startswith("ct-vae key: ") and "read-only" in out.err and "chmod u+w" in out.err
    assert ws.read_bytes() == before and ws.stat().st_mode & 0o777 == 0o444
    with pytest.raises(WorkspaceError, match="read-only"):
        pk.migrate_workspace(ws, key)
    assert ws.read_bytes() == before

    os.chmod(ws, 0o640)  # writable, not the umask's mode: kept by the rewrite
    assert main(["key", "migrate", str(ws)]) == 0
    assert "1 pseudonym digest(s) keyed" in capsys.readouterr().out
    assert ws.stat().st_mode & 0o777 == 0o640
    assert _meta(ws)[1] == pseudonyms
