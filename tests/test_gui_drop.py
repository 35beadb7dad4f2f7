"""Folder drops: real QDragEnterEvent/QDropEvent → background ingest → patients listed,
bad files listed with their reason, a second drop of the same folder costs nothing."""

from __future__ import annotations

import shutil

import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, drop_paths, make_window, phantom_cohort, wait_until,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cohort_with_bad_file(phantom_cohort, tmp_path):
    pytest.importorskip("training.dicom", reason="training/dicom.py has not landed yet")
    folder = tmp_path / "drop"
    shutil.copytree(phantom_cohort, folder)
    (folder / "notes.dcm").write_bytes(b"this is not a DICOM file at all\n" * 4)
    return folder


def _small_preprocess(window):
    from training.config import PreprocessConfig

    window.state.preprocess = PreprocessConfig.preset("thorax", crop=None, rois=("Lung-Left", "Heart"))


def test_folder_drop_lists_patients_and_skipped_files(make_window, cohort_with_bad_file, qtbot):
    w = make_window(None)
    _small_preprocess(w)
    committed = []
    drop_paths(w, [cohort_with_bad_file])
    assert w.job is not None, "the drop did not start an ingest"
    w.job.patientCommitted.connect(lambda row: committed.append(row.pseudonym))
    assert w.job_progress.isVisible()
    wait_until(qtbot, lambda: w.job is None, timeout_s=180, what="the ingest")
    assert len(w.patient_list.pseudonyms()) == 3
    assert committed, "no patient appeared while the ingest ran"
    row = w.patient_list.item(0, 0)
    assert row.text().startswith("PAT-") and not row.icon().isNull()
    assert w.patient_list.item(0, 2).text() == "8"
    assert "Lung-Left" in w.patient_list.item(0, 4).text()
    skipped = dict(w.skipped.entries())
    bad = [p for p in skipped if p.endswith("notes.dcm")]
    assert bad and skipped[bad[0]], skipped
    assert not w.job_progress.isVisible()

    # the same folder again: nothing new, nothing re-read
    drop_paths(w.patient_list.viewport(), [cohort_with_bad_file])
    wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the second ingest")
    assert "0 series added" in w.statusBar().currentMessage()
    assert "3 unchanged" in w.statusBar().currentMessage()
    assert len(w.patient_list.pseudonyms()) == 3


def test_cancel_keeps_window_usable(make_window, cohort_with_bad_file, qtbot):
    w = make_window(None)
    _small_preprocess(w)
    drop_paths(w, [cohort_with_bad_file])
    w.job_progress.cancel.click()
    wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the cancelled ingest")
    assert not w.job_progress.isVisible()
    assert len(w.patient_list.pseudonyms()) <= 3


def test_a_drop_during_an_ingest_is_queued(make_window, cohort_with_bad_file, qtbot):
    w = make_window(None)
    _small_preprocess(w)
    drop_paths(w, [cohort_with_bad_file])
    first = w.job
    drop_paths(w.skipped.table.viewport(), [cohort_with_bad_file])  # a drop on a child widget
    assert w.job is first and w._queued_drops, "the second drop was not queued"
    wait_until(qtbot, lambda: w.job is None and not w._queued_drops, timeout_s=180, what="both ingests")
    assert len(w.patient_list.pseudonyms()) == 3
    assert "3 unchanged" in w.statusBar().currentMessage()
