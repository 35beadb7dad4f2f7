"""Data tab, physical scale: settings in mm, each series' field of view, the warning for
a cohort of mixed pixel spacings, and a preview on the resampled grid."""

from __future__ import annotations

import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, make_window, wait_until,
)
from test_scale import _disc_series

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def mixed(tmp_path, data_dir):
    from training.config import PreprocessConfig
    from training.store.ingest import ingest

    _disc_series(tmp_path / "d" / "fine", 0.5, 10.0, fov=60.0)
    _disc_series(tmp_path / "d" / "coarse", 1.0, 10.0, fov=60.0)
    ws = data_dir / "mixed.h5"
    ingest([tmp_path / "d"], ws, PreprocessConfig(crop=32), workers=1)  # pixels: mixed scale
    return ws


def test_data_tab_shows_fov_in_mm_warns_and_resamples(make_window, mixed, qtbot, tmp_path):
    w = make_window(mixed)
    panel = w.panel("Data")
    w.tabs.setCurrentWidget(panel)
    summary = panel.scale_summary
    # the slice positions (real z step) are read off the GUI thread, then shown
    wait_until(qtbot, lambda: panel._scale_patients and all(
        getattr(p, "positions", None) is not None for p in panel._scale_patients), what="the slice positions")
    assert [r["fov_mm"] for r in summary.rows] == [[60.0, 60.0]] * 2
    assert sorted(r["image_fov_mm"][0] for r in summary.rows) == [16.0, 32.0]
    assert summary.warnings and "mixes pixel spacings" in summary.warnings[0]
    assert not summary.warning.isHidden() and summary.table.rowCount() == 2
    texts = {summary.table.item(i, 2).text() for i in range(2)}
    assert texts == {"60 × 60"}
    assert summary.COLUMNS[4].startswith("Image z step")
    assert [summary.table.item(i, 4).text() for i in range(2)] == [
        f"{r['image_z_mm']:.3g}" for r in summary.rows]  # even stacks: the step

    panel.scale.spacing.setValue(1.0)
    panel.scale.fov.setValue(40.0)
    assert not panel.crop.isEnabled()  # the field of view replaces the crop
    cfg = panel.config()
    assert (cfg.spacing, cfg.fov, cfg.crop) == (1.0, 40.0, None)
    assert summary.warnings == [] and summary.warning.isHidden()
    assert [r["image_fov_mm"] for r in summary.rows] == [[40.0, 40.0]] * 2

    w.patient_list.select(w.patient_list.pseudonyms()[0])
    wait_until(qtbot, lambda: panel.preview_count >= 1 and panel.preview.images.shape[1:] == (40, 40),
               what="a preview on the 1 mm grid")
    panel.grab().save(str(tmp_path / "data_tab.png"))
    panel.apply.click()
    wait_until(qtbot, lambda: w.job is None and not w.state.busy, timeout_s=120, what="the re-derive")
    with w.state.open_workspace() as ws:
        assert ws.preprocess.spacing == 1.0 and ws.image_shape == (40, 40)
    # a new workspace starts from the physicist's default (the Data tab's settings)
    from explorer.state import AppState
    from training.config import PreprocessConfig

    assert AppState().preprocess == PreprocessConfig.new_workspace()


def test_z_step_text_names_an_uneven_stack():
    from explorer.widgets.scale_controls import _z_text

    assert _z_text({"image_z_mm": 3.0, "image_z_range_mm": [3.0, 3.0], "image_z_even": True}) == "3"
    assert _z_text({"image_z_mm": 2.5, "image_z_range_mm": [1.08, 7.0], "image_z_even": False}) == "uneven 1.08–7"
    assert _z_text({"image_z_mm": None}) == "–"
