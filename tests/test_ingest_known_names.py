"""Adding a patient to a cohort reads no header of the patients already in it, yet a
path this drop stores is still scrubbed of every known patient's identifiers (the
headers are then read once, lazily)."""

from __future__ import annotations

import shutil

from training.config import PreprocessConfig
from training.dicom.phantom import write_patient
from training.store import ingest as ingest_mod
from training.store.ingest import ingest
from training.store.workspace import Workspace

CFG = PreprocessConfig(crop=32, rois=("Heart",))


def _patient(root, i):
    info = write_patient(root, i, slices=6, size=48, fsync=False)
    named = root / f"{info.patient_id}_Phantom_{info.patient_birth_date}"  # identifiers in the folder name
    info.folder.rename(named)
    return info, named


def test_add_one_reads_no_known_header_and_stored_paths_stay_scrubbed(tmp_path, monkeypatch):
    cohort = tmp_path / "cohort"
    infos = [_patient(cohort, i) for i in range(2)]
    ws = tmp_path / "w.h5"
    assert len(ingest([cohort], ws, CFG, workers=1).added) == 2

    calls: list[list] = []
    real = ingest_mod._learn_identifiers
    monkeypatch.setattr(ingest_mod, "_learn_identifiers",
                        lambda files, *a: calls.append(list(files)) or real(files, *a))

    # a new patient (CT + RTSTRUCT) next to the known ones: no known header is read
    _patient(cohort, 2)
    rep = ingest([cohort], ws, CFG, workers=2)
    assert len(rep.added) == 1 and len(rep.unchanged) == 2 and not rep.skipped
    assert calls == []

    # an unusable file and an RTSTRUCT without its CT, named after known patients and
    # outside their folders: listed, with the known patients' identifiers scrubbed
    pid0, birth0 = infos[0][0].patient_id, infos[0][0].patient_birth_date
    pid1 = infos[1][0].patient_id
    (cohort / "misc").mkdir()
    (cohort / "misc" / f"notes_{pid0}_{birth0}.txt").write_text("x")
    scratch = tmp_path / "scratch"
    orphan = write_patient(scratch, 7, slices=6, size=48, fsync=False)
    (cohort / f"extra_{pid1}").mkdir()
    shutil.copy(orphan.rtstruct, cohort / f"extra_{pid1}" / "rs.dcm")
    rep = ingest([cohort], ws, CFG, workers=2)
    rows = dict(rep.skipped)
    assert len(rows) == 2, rows
    with Workspace.open(ws) as w:
        stored = dict(w.skipped)
    for text in [*rows, *rows.values(), *stored, *stored.values()]:
        for ident in (pid0, pid1, birth0, "PHANTOM"):
            assert ident.lower() not in text.lower(), (ident, text)
    assert any(p.startswith("misc/notes_PAT-0001") for p in stored), stored
    assert any(p.startswith("extra_PAT-0002") for p in stored), stored
    assert len(calls) == 3  # one header of each known patient, once

    # dropped again unchanged: the old rows are matched (their paths scrubbed the same way)
    calls.clear()
    rep = ingest([cohort], ws, CFG, workers=2)
    assert not rep.added and sorted(dict(rep.skipped)) == sorted(rows)
    with Workspace.open(ws) as w:
        assert dict(w.skipped) == stored
