"""Skipped files: the path relative to the dropped folder, the whole reason on hover, one row
per file after a re-drop, the list back after reopening, and the status bar's count."""

from __future__ import annotations

import re
import shutil

import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, drop_paths, make_window, phantom_cohort, wait_until,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cohort_with_bad_files(phantom_cohort, tmp_path):
    folder = tmp_path / "drop"
    shutil.copytree(phantom_cohort, folder)
    (folder / "notes.dcm").write_bytes(b"this is not a DICOM file at all\n" * 4)
    (folder / "extra" / "DIRFILE").parent.mkdir()
    (folder / "extra" / "DIRFILE").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")  # a cut-off header
    return folder


def _ingest(w, qtbot, folder):
    drop_paths(w, [folder])
    wait_until(qtbot, lambda: w.job is None, timeout_s=180, what="the ingest")


def _count_in_status(w) -> int:
    m = re.search(r"(\d+) file\(s\) skipped", w.statusBar().currentMessage())
    assert m, w.statusBar().currentMessage()
    return int(m.group(1))


def test_skipped_list_survives_redrop_and_reopen(make_window, cohort_with_bad_files, data_dir, qtbot):
    from training.config import PreprocessConfig

    ws = data_dir / "skips.h5"
    w = make_window(ws)
    w.state.preprocess = PreprocessConfig.preset("thorax", crop=None)
    _ingest(w, qtbot, cohort_with_bad_files)
    first = dict(w.skipped.entries())
    assert set(first) == {"notes.dcm", "extra/DIRFILE"}, first  # relative to the dropped folder
    assert w.skipped.table.item(0, 0).text() in first  # the path shown, not just the file name
    assert _count_in_status(w) == w.skipped.count() == 2
    reason = first["notes.dcm"]
    row = [r for r in range(2) if w.skipped.table.item(r, 0).text() == "notes.dcm"][0]
    assert reason and reason in w.skipped.table.item(row, 1).toolTip().replace("&#x27;", "'")  # whole reason

    _ingest(w, qtbot, cohort_with_bad_files)  # the same folder again
    assert w.skipped.count() == 2, w.skipped.entries()  # no duplicates
    assert _count_in_status(w) == 2
    w.close()

    w2 = make_window(ws)
    assert dict(w2.skipped.entries()) == first, "the skipped files are gone after reopening"
    assert "Skipped files</b>: 2" in w2.skipped.title.text()
