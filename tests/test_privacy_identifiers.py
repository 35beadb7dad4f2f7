"""Identifiers outside the CT headers: names, IDs, birth dates (any spelling), other IDs,
accession numbers and the institution, learnt from every header of a drop (MR, dose,
orphan RTSTRUCT too), are scrubbed from stored paths, messages and ROI names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from planted import plant_drop, search_markers
from training.config import PreprocessConfig
from training.store.ingest import ingest
from training.store.pseudonym import identifying_tokens, identity_replacements, scrub
from training.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def _repl(**values) -> dict[str, str]:
    return identity_replacements(values, "PAT-0001")


@pytest.mark.parametrize("text,expected", [
    ("drop/DOE_JOHN/CT/1.dcm", "drop/PAT-0001/CT/1.dcm"),
    ("john doe/x", "PAT-0001/x"),
    ("Doe, John (19230417)/x", "PAT-0001 (PAT-0001)/x"),
    ("1923-04-17/a", "PAT-0001/a"), ("17.04.1923/a", "PAT-0001/a"), ("4/17/1923", "PAT-0001"),
    ("17041923_ct", "PAT-0001_ct"),
    ("Li/ct.dcm", "PAT-0001/ct.dcm"), ("Lima/ct.dcm", "Lima/ct.dcm"),  # a short part: whole components only
    ("GTV_doe", "GTV_PAT-0001"), ("Heart", "Heart"), ("ART_x", "PAT-0001_x"),
    ("1.2.840.1192304170.5", "1.2.840.1192304170.5"),  # digits inside a longer number stay
    ("MRN 7391046/x", "MRN PAT-0001/x"), ("ACC-55/x", "PAT-0001/x"), ("o2x/a", "PAT-0001/a"),
    ("St_Mary_Hospital/a", "[institution]/a"), ("st mary hospital", "[institution]"),
])
def test_scrub_spellings(text, expected):
    r = _repl(PatientID="7391046", PatientName="Doe^John^Li", PatientBirthDate="19230417",
              OtherPatientIDs="ACC-55\\o2x", OtherPatientNames="Art^Q", AccessionNumber="",
              InstitutionName="St Mary Hospital")
    assert scrub(text, r) == expected


def test_tokens_cover_names_in_any_order_and_dates():
    toks = {t.lstrip("\0").split(":", 1)[-1] for t in identifying_tokens({"PatientName": "Doe^John",
                                                                           "PatientBirthDate": "19310302"})}
    assert {"Doe_John", "John_Doe", "JohnDoe", "John Doe", "Doe, John"} <= toks
    assert {"02.03.1931", "1931-03-02", "19310302", "03/02/1931"} <= toks


@pytest.fixture(scope="module")
def planted_ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    drop, people = plant_drop(tmp)
    ws = tmp / "w.h5"
    report = ingest([drop], ws, PreprocessConfig(crop=24, rois=("Heart",)), workers=1)
    return drop, people, ws, report


def test_no_identifier_of_any_patient_in_workspace_or_report(planted_ws):
    drop, people, ws, report = planted_ws
    assert len(report.added) == 2
    markers = [m for p in people for m in p.all_markers()]
    text = repr(report.to_dict())
    assert not search_markers([ws], {"report": text}, markers)
    rows = dict(report.skipped)
    # the non-CT patients got pseudonyms in place of their names, IDs and dates
    mr = [r for r in rows if r.endswith(".dcm") and "/MR/" in r]
    assert len(mr) == 3 and all(r.startswith("PAT-0003 (PAT-0003)/MR/mr_PAT-0003_") for r in mr), mr
    assert "[institution]/PAT-0001_PAT-0001/PAT-0001/notes_PAT-0001.txt" in rows
    assert "PAT-0002 PAT-0002/PAT-0002/PAT-0002/notes_PAT-0002.txt" in rows
    assert "PAT-0004/PAT-0004/PAT-0004/RS_PAT-0004.dcm" in rows  # an RTSTRUCT without its CT
    assert "PAT-0005/PAT-0005/dose_PAT-0005.dcm" in rows  # a dose file
    with Workspace.open(ws) as w:
        assert "GTV_PAT-0001" in w.available_rois and "GTV_PAT-0002" in w.available_rois


def test_info_prints_no_identifier(planted_ws):
    drop, people, ws, report = planted_ws
    out = subprocess.run([sys.executable, "-m", "training.cli", "info", str(ws)], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    markers = [m for p in people for m in p.all_markers()]
    assert not search_markers([], {"info": out.stdout + out.stderr}, markers)
    assert "GTV_PAT-0001" in out.stdout


def test_numbers_in_a_name_are_no_name_parts():
    r = identity_replacements({"PatientName": "PHANTOM^001", "PatientID": "PH001"}, "PAT-0002")
    assert scrub("CT/slice_001.dcm", r) == "CT/slice_001.dcm"
    assert scrub("PHANTOM_001 notes/x", r) == "PAT-0002 notes/x"
    assert scrub("001^phantom", r) == "PAT-0002"
