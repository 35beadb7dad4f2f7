"""Data tab: the preview follows the settings; applying them re-derives the workspace."""

from __future__ import annotations

import numpy as np
import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, make_window, phantom_cohort, wait_until,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def ingested(phantom_cohort, data_dir):
    pytest.importorskip("training.dicom", reason="training/dicom.py has not landed yet")
    from training.config import PreprocessConfig
    from training.store.ingest import ingest

    ws = data_dir / "phantom.h5"
    cfg = PreprocessConfig.preset("thorax", crop=None, rois=("Lung-Left", "Heart"))
    ingest([phantom_cohort], ws, cfg, workers=1)
    return ws


def test_preview_follows_the_window_and_apply_rederives(make_window, ingested, qtbot):
    w = make_window(ingested)
    panel = w.panel("Data")
    w.tabs.setCurrentWidget(panel)
    first = w.patient_list.pseudonyms()[0]
    w.patient_list.select(first)
    wait_until(qtbot, lambda: panel.preview_count >= 1, what="a first preview")
    # counts name their unit: entries are CT series, a patient may have several (issue 11)
    n_series = len(w.patient_list.pseudonyms())
    assert f"{n_series} series of {n_series} patients" in panel.summary.text()
    assert "train " in panel.summary.text() and "test " in panel.summary.text()
    assert w.patient_list.horizontalHeaderItem(0).text() == "Series"
    before = panel.preview.current_image().copy()
    assert panel.preview.labels is not None and panel.preview.labels.max() >= 1  # ROI overlay
    n = panel.preview_count
    panel.preset.setCurrentText("lung")
    assert (panel.hu_min.value(), panel.hu_max.value()) == (-1350.0, 150.0)
    wait_until(qtbot, lambda: panel.preview_count > n, what="the preview to follow")
    after = panel.preview.current_image()
    assert after.shape == before.shape and not np.allclose(after, before)

    # 3D: the preview scrolls through the cube's depth slices
    n = panel.preview_count
    panel.mode3d.setChecked(True)
    wait_until(qtbot, lambda: panel.preview_count > n, what="the 3D preview")
    assert panel.preview.images.shape == (32, 32, 32)
    panel.mode2d.setChecked(True)

    # custom limits switch the preset to "custom"
    panel.hu_max.setValue(100.0)
    assert panel.preset.currentText() == "custom"
    panel.hu_min.setValue(200.0)  # invalid: min above max
    assert "hu_max" in panel.error.text() and not panel.apply.isEnabled()
    panel.hu_min.setValue(-1000.0)
    assert panel.apply.isEnabled()
    panel.apply.click()
    wait_until(qtbot, lambda: w.job is None and not w.state.busy, timeout_s=120, what="the re-derive")
    with w.state.open_workspace() as ws:
        assert (ws.preprocess.hu_min, ws.preprocess.hu_max) == (-1000.0, 100.0)
    assert len(w.patient_list.pseudonyms()) == 3


def test_fidelity_table_follows_the_selected_patient(make_window, ingested, qtbot, tmp_path):
    from training.store.workspace import write_arrays_workspace

    w = make_window(ingested)
    panel = w.panel("Data")
    w.tabs.setCurrentWidget(panel)
    first = w.patient_list.pseudonyms()[0]
    w.patient_list.select(first)
    view = panel.fidelity
    wait_until(qtbot, lambda: view.table.rowCount() > 0, what="the fidelity table")
    header, rows = view.rows()
    assert header[0] == "ROI" and "duplicates collapsed" in header
    with w.state.open_workspace() as ws:
        rep = ws.fidelity(ws.patient_index(first))
    assert [r[0] for r in rows] == [r["roi"] for r in rep["rois"]]
    assert first in view.title.text() and "rule" in view.title.text()
    out = tmp_path / "fid.csv"
    from explorer.figures import export_csv

    export_csv(view.rows(), out)
    assert out.read_text().splitlines()[0].startswith("ROI,contours,duplicates collapsed")
    # a workspace written before the report existed says so
    old = write_arrays_workspace(tmp_path / "old.h5", {"PAT-0001": np.zeros((2, 8, 8), np.float32)})
    w2 = make_window(old)
    p2 = w2.panel("Data")
    w2.patient_list.select("PAT-0001")
    wait_until(qtbot, lambda: "not recorded" in p2.fidelity.title.text(), what="'not recorded'")
    assert p2.fidelity.table.rowCount() == 0
