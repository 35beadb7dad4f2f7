"""Query entries in the workspace (issue 16): stored, never trained on, moved on request."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from training.config import PreprocessConfig
from training.dicom.phantom import generate_cohort, write_rescan
from training.store.ingest import ingest
from training.store.roles import mark_as_query, move_to_cohort, set_roles
from training.store.workspace import ROLE_QUERY, Workspace

SLICES, SIZE = 5, 32
CFG = PreprocessConfig(crop=24, rois=("Lung-Left", "Heart"))


@pytest.fixture(scope="module")
def drops(tmp_path_factory):
    root = tmp_path_factory.mktemp("query_store")
    generate_cohort(root / "cohort", 4, slices=SLICES, size=SIZE, seed=0, fsync=False)
    write_rescan(root / "query", 1, slices=SLICES, size=SIZE, fsync=False)
    return root


def test_query_is_stored_apart_and_never_in_the_training_index(drops, tmp_path):
    ws_path = tmp_path / "w.h5"
    ingest([drops / "cohort"], ws_path, CFG, workers=1, test_fraction=0.25)
    with Workspace.open(ws_path) as ws:
        hash0 = ws.data_hash
        split0 = {p.pseudonym: p.split for p in ws.patients}
        n_cohort = len(ws.index())
    arrived = []
    rep = ingest([drops / "query"], ws_path, role=ROLE_QUERY, workers=1, on_patient=arrived.append)
    # the rescan has the same PatientID as the second patient: same pseudonym, second series
    assert rep.added == ["PAT-0002-2"] and arrived[0].is_query and arrived[0].split == "query"
    with Workspace.open(ws_path) as ws:
        q = ws.patient_index("PAT-0002-2")
        assert ws.patients[q].is_query and ws.patients[q].split == "query"
        assert ws.patients[q].n_images == SLICES
        for split in ("train", "test", None):
            assert q not in set(ws.index(split)[:, 0].tolist())
        assert len(ws.index()) == n_cohort
        np.testing.assert_array_equal(ws.index("query"), np.stack([np.full(SLICES, q), np.arange(SLICES)], 1))
        # the cohort's split and the data hash a checkpoint was trained on are unchanged
        assert {p.pseudonym: p.split for p in ws.patients if not p.is_query} == split0
        assert ws.data_hash == hash0
        # images were derived with the workspace's preprocessing
        assert ws.read_images(ws.index("query")).shape == (SLICES, 24, 24)
    from training.store.workspace import _read_meta, entry_files

    with h5py.File(ws_path, "r") as f:  # the head's row holds the role
        assert _read_meta(f, "entries", {})["PAT-0002-2"]["role"] == "query"
    with h5py.File(entry_files(ws_path)["PAT-0002-2"], "r") as f:  # and the entry as written
        assert f["entries/PAT-0002-2"].attrs["role"] == "query"
    # re-dropping the query folder as cohort data keeps it a query (roles move explicitly)
    rep = ingest([drops / "query"], ws_path, workers=1)
    assert rep.unchanged == ["PAT-0002-2"]
    with Workspace.open(ws_path) as ws:
        assert ws.patients[ws.patient_index("PAT-0002-2")].is_query


def test_trainer_never_reads_a_query(drops, tmp_path):
    from training.config import ModelConfig, TrainConfig
    from training.vae.trainer import Trainer

    ws_path = tmp_path / "w.h5"
    ingest([drops / "cohort"], ws_path, CFG, workers=1)
    ingest([drops / "query"], ws_path, role=ROLE_QUERY, workers=1)
    with Workspace.open(ws_path) as ws:
        q = ws.patient_index("PAT-0002-2")
        seen = []
        orig = ws.read_images

        def spy(rows, out=None):
            seen.append(np.asarray(rows).reshape(-1, 2)[:, 0].copy())
            return orig(rows, out)

        ws.read_images = spy
        Trainer(ws, ModelConfig(input_size=24, n_blocks=2, filters=2, fc_units=8, latent_dim=2,
                                n_classes=CFG.n_classes),
                TrainConfig(epochs=1, batch_size=4, threads=1), data_workers=0).run()
        read = set(np.concatenate(seen).tolist())
        assert read and q not in read


def test_move_between_query_and_cohort(drops, tmp_path):
    ws_path = tmp_path / "w.h5"
    ingest([drops / "cohort"], ws_path, CFG, workers=1)
    ingest([drops / "query"], ws_path, role=ROLE_QUERY, workers=1)
    with Workspace.open(ws_path) as ws:
        hash_q = ws.data_hash
        n = len(ws.index())
    assert move_to_cohort(ws_path, ["PAT-0002-2"]) == ["PAT-0002-2"]
    assert move_to_cohort(ws_path, ["PAT-0002-2"]) == []  # already there: nothing written
    with Workspace.open(ws_path) as ws:
        p = ws.patients[ws.patient_index("PAT-0002-2")]
        assert not p.is_query and p.split in ("train", "test")
        # a patient's series stay on one side of the split
        assert p.split == ws.patients[ws.patient_index("PAT-0002")].split
        assert len(ws.index()) == n + SLICES and ws.data_hash != hash_q
        assert ws.provenance[-1]["action"] == "set_roles"
    assert mark_as_query(ws_path, ["PAT-0002-2"]) == ["PAT-0002-2"]
    with Workspace.open(ws_path) as ws:
        assert ws.patients[ws.patient_index("PAT-0002-2")].is_query and ws.data_hash == hash_q
    with pytest.raises(KeyError, match="PAT-0099"):
        set_roles(ws_path, {"PAT-0099": ""})
    with pytest.raises(ValueError, match="role"):
        set_roles(ws_path, {"PAT-0001": "train"})
