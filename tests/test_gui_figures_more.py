"""Figures and views that read at a glance: the KL table's number format per column, the
heat map's names thinned so no two overlap, no "(×0.001)" on empty image views, and the
empty Train tab (its hint in view without scrolling, no "epoch 0 / 100" before any run)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from test_gui_support import _one_torch_thread, data_dir, make_window  # noqa: F401 (fixtures)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("pytestqt")


# -- KL table: one format per column ------------------------------------------------------


def test_column_formats_one_fixed_point_format_per_column():
    from explorer.widgets.kl_table import ColumnFormat, column_formats

    m = np.array([[0.0, 0.5, 12.5, 0.5],
                  [1300.4, 1.0, 0.5, 0.25],
                  [37.6, 2.345, 9.0, 0.125]])
    fmts = column_formats(m)
    # from the largest finite value: whole numbers from 100 up, then 1, 2 or 3 decimals
    assert [f.decimals for f in fmts] == [0, 2, 1, 3]
    assert [f(v) for f, v in zip(fmts, m[1])] == ["1300", "1.00", "0.5", "0.250"]
    assert [f(v) for f, v in zip(fmts, m[2])] == ["38", "2.35", "9.0", "0.125"]
    assert fmts[0](0.0) == "0"  # the diagonal (a posterior against itself) stays 0
    # no scientific notation for large values beside small ones in one column
    assert "e" not in column_formats(np.array([[260.0], [1310.0]]))[0](1310.0)
    # non-finite values do not choose the format
    assert column_formats(np.array([[np.inf], [np.nan], [5.0]])) == [ColumnFormat(2)]
    assert column_formats(np.zeros((0, 0))) == []


def test_small_values_in_a_column_of_whole_numbers_keep_three_significant_digits():
    """The nearest patient at 0.0312 nats beside others at 1300 must not read "0", like the
    diagonal: values under 1 in a column of whole numbers keep 3 significant digits."""
    from explorer.widgets.kl_table import KLTableModel, column_formats

    col = np.array([[0.0], [0.0312], [0.5], [1300.4], [37.6]])
    f = column_formats(col)[0]
    assert f.decimals == 0
    assert [f(v) for v in col[:, 0]] == ["0", "0.0312", "0.5", "1300", "38"]
    # in columns with decimals, a nonzero value that would round to zero does too
    g = column_formats(np.array([[12.0], [0.0312]]))[0]
    assert (g.decimals, g(0.0312), g(0.25)) == (1, "0.0312", "0.2")

    m = np.array([[0.0, 1300.4, 250.0], [0.0312, 0.0, 0.5], [410.2, 0.04, 0.0]])
    model = KLTableModel()
    model.set_matrix(m, ["A", "B", "C"], "KL")
    shown = [[model.data(model.index(r, c)) for c in range(3)] for r in range(3)]
    assert shown == [["0", "1300", "250"], ["0.0312", "0", "0.5"], ["410", "0.04", "0"]]


# -- heat map: tick names thinned so none overlap ----------------------------------------


def _ticks(view, side):
    levels = view.plot.getAxis(side)._tickLevels
    return [] if not levels else list(levels[0])


@pytest.mark.parametrize("n, size", [(60, (420, 420)), (12, (700, 600)), (150, (900, 800))])
def test_heatmap_tick_names_do_not_overlap(qtbot, n, size):
    from explorer.qt import QtGui
    from explorer.widgets.kl_table import HeatMapView

    view = HeatMapView()
    qtbot.addWidget(view)
    view.resize(*size)
    view.show()
    qtbot.waitExposed(view)
    names = [f"PAT-{i:04d}{'-long-series' if i % 7 == 0 else ''}" for i in range(n)]
    rng = np.random.default_rng(n)
    view.set_matrix(rng.random((n, n)) * 50, names, "KL")
    qtbot.wait(30)
    font = QtGui.QFontMetrics(view.plot.getAxis("bottom").style.get("tickFont") or QtGui.QFont())

    def check(zoomed: bool):
        (x0, x1), (y0, y1) = view.plot.vb.viewRange()
        rect = view.plot.vb.rect()
        col_px, row_px = rect.width() / (x1 - x0), rect.height() / (y1 - y0)
        bottom, left = _ticks(view, "bottom"), _ticks(view, "left")
        assert bottom and left
        assert {t for _, t in bottom} <= set(names) and {t for _, t in left} <= set(names)
        assert len(bottom) <= HeatMapView.MAX_TICKS and len(left) <= HeatMapView.MAX_TICKS
        # bottom: names side by side, no two closer than their text width
        for (xa, ta), (xb, tb) in zip(bottom, bottom[1:]):
            gap = (xb - xa) * col_px
            assert gap >= max(font.horizontalAdvance(ta), font.horizontalAdvance(tb)), (zoomed, ta, tb, gap)
        # left: names one above the other, no two closer than a line of text
        for (ya, ta), (yb, tb) in zip(left, left[1:]):
            assert (yb - ya) * row_px >= font.height(), (zoomed, ta, tb, (yb - ya) * row_px)
        if n <= HeatMapView.MAX_TICKS and col_px > font.horizontalAdvance(max(names, key=len)) + 10:
            assert len(bottom) == n  # room for all: none dropped

    check(False)
    # zoomed in: the names are thinned again for the new scale
    view.plot.vb.setRange(xRange=(0, min(n, 8)), yRange=(0, min(n, 8)), padding=0)
    qtbot.wait(30)
    check(True)


# -- no SI prefix on empty image views ---------------------------------------------------


def _axes(widget):
    from explorer.qt import pg

    views = [widget] if isinstance(widget, pg.GraphicsView) else widget.findChildren(pg.GraphicsView)
    return [it for v in views for it in v.scene().items() if isinstance(it, pg.AxisItem) and it.isVisible()]


def test_empty_image_views_show_no_si_prefix(qtbot, tmp_path):
    from explorer import figures
    from explorer.widgets.image_grid import ImageGrid
    from explorer.widgets.kl_table import HeatMapView
    from explorer.widgets.latent_canvas import CTImageView
    from explorer.widgets.metrics_plot import MetricsPlot
    from explorer.widgets.slice_preview import SlicePreview
    from explorer.widgets.slice_stack import SliceStackPair

    heat = HeatMapView()
    widgets = [CTImageView("empty"), SlicePreview(), ImageGrid(), heat, MetricsPlot(), SliceStackPair()]
    for w in widgets:
        qtbot.addWidget(w)
        w.resize(400, 300)
        w.show()
    qtbot.waitExposed(widgets[-1])
    heat.set_matrix(np.zeros((0, 0)), [], "")  # emptied again after a matrix
    qtbot.wait(30)
    checked = 0
    for w in widgets:
        for axis in _axes(w):
            label = axis.labelString()
            assert axis.autoSIPrefixScale == 1.0 and "(x" not in label and "×" not in label, (
                type(w).__name__, axis.orientation, label)
            checked += 1
    assert checked >= 8
    # and not in what is exported either
    for w in (widgets[0], heat):
        svg = figures.svg_bytes(w).decode()
        assert "x0.001" not in svg and "×0.001" not in svg


# -- the empty Train tab -----------------------------------------------------------------


def _fully_in_view(widget) -> bool:
    """The widget is shown whole: not clipped by a scroll area or the window's edge."""
    return widget.isVisible() and widget.visibleRegion().boundingRect() == widget.rect()


@pytest.mark.parametrize("workspace", ["none", "empty"])
def test_empty_train_tab_hint_in_view_and_no_epoch_count(make_window, data_dir, qtbot, workspace):
    w = make_window(None if workspace == "none" else data_dir / "empty.h5")
    w.resize(1320, 820)
    panel = w.panel("Train")
    w.tabs.setCurrentWidget(panel)
    qtbot.wait(50)
    assert "No training data yet" in panel.info.text()
    assert _fully_in_view(panel.info), "the 'No training data yet' hint is scrolled out of view"
    # the hint is above the form, at the top of the tab
    top = panel.info.mapTo(panel, panel.info.rect().topLeft()).y()
    assert top < panel.height() / 4, top
    assert not panel.error.isVisible()  # no empty red line either
    # no run: the bar says so instead of a count of epochs that nothing has done
    assert "epoch" not in panel.progress.text() and "100" not in panel.progress.text()
    assert "no run" in panel.progress.text()
    assert panel.progress.value() == panel.progress.minimum()


def test_train_tab_progress_counts_epochs_only_of_a_run(qtbot, tmp_path, data_dir):
    """A model's run shown: "epoch 1 / N"; no model again (another workspace): "no run yet"."""
    from test_panel_similarity import write_checkpoint

    from explorer.panels.trainer import TrainerPanel
    from explorer.settings import AppSettings
    from explorer.state import AppState
    from training.vae.checkpoint import load_checkpoint

    ck = write_checkpoint(tmp_path / "model.pt")
    panel = TrainerPanel(AppState(AppSettings()))
    qtbot.addWidget(panel)
    try:
        assert panel.progress.text() == "no run yet"
        panel.on_checkpoint_changed(str(ck))
        epochs = load_checkpoint(ck).train_config.epochs
        assert panel.progress.text() == f"epoch 1 / {epochs}"
        panel.on_checkpoint_changed("")
        assert panel.progress.text() == "no run yet" and panel.progress.value() == panel.progress.minimum()
    finally:
        panel.shutdown()
