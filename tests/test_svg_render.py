"""Every kind of SVG the explorer writes, drawn by librsvg (`rsvg-convert`), as a standard
renderer outside Qt sees it: curves stay lines (a cosmetic pen under a data-space transform
once came out as filled shapes), and the ink matches Qt's own drawing of the same figure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytestmark = pytest.mark.skipif(shutil.which("rsvg-convert") is None,
                                reason="rsvg-convert (librsvg) is not installed")


def _ink(rgba: np.ndarray) -> float:
    """Fraction of clearly non-white, non-transparent pixels."""
    return float(((rgba[..., 3] > 0) & (rgba[..., :3].min(axis=-1) < 200)).mean())


def _rsvg_ink(svg: bytes, tmp_path: Path, name: str) -> float:
    from PIL import Image

    src, png = tmp_path / f"{name}.svg", tmp_path / f"{name}.png"
    src.write_bytes(svg)
    subprocess.run(["rsvg-convert", str(src), "-o", str(png)], check=True, timeout=60)
    return _ink(np.asarray(Image.open(png).convert("RGBA")))


def _qt_ink(view) -> float:
    from explorer import figures

    img = figures.render_image(view, 1).convertToFormat(figures.QtGui.QImage.Format.Format_RGBA8888)
    a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)
    return _ink(a[:, :img.width()])


def _loss_plot(qtbot, log: bool):
    from explorer.widgets.loss_plot import LossPlot

    p = LossPlot()
    qtbot.addWidget(p)
    p.resize(520, 320)
    for e in range(1, 16):
        p.add_epoch(e, {"train": {"total": 900 / e, "recon": 800 / e, "kl": 5 + e, "ce": 60 / e ** 0.5},
                        "test": {"total": 950 / e, "recon": 850 / e, "kl": 6 + e, "ce": 70 / e ** 0.5}})
    p.set_log(log)
    p.show()
    qtbot.wait(20)
    return p


@pytest.mark.parametrize("log", [True, False])
def test_loss_curves_svg_are_lines_in_librsvg(qtbot, tmp_path, log):
    from explorer import figures

    p = _loss_plot(qtbot, log)
    qt = _qt_ink(p)
    for name, svg in (("view", figures.svg_bytes(p)), ("widget", figures.widget_bytes(p, "svg"))):
        ink = _rsvg_ink(svg, tmp_path, f"{name}-{log}")
        assert ink < 0.12 and ink < 2.5 * qt + 0.01, (name, ink, qt)
    with p.legend_shown():
        ink = _rsvg_ink(figures.svg_bytes(p), tmp_path, "legend")
    assert ink < 0.15, ink


def test_image_grid_and_scatter_svg_render_in_librsvg(qtbot, tmp_path):
    from explorer import figures
    from explorer.qt import pg
    from explorer.widgets.image_grid import ImageGrid

    grid = ImageGrid()
    qtbot.addWidget(grid)
    grid.resize(400, 300)
    rng = np.random.default_rng(0)
    grid.set_rows([("train input", rng.random((3, 16, 16))), ("train recon.", rng.random((3, 16, 16)))])
    grid.show()
    qtbot.wait(20)
    svg = figures.svg_bytes(grid)
    assert b"train input" in svg  # row labels are axis text, kept as text
    ink = _rsvg_ink(svg, tmp_path, "grid")
    assert abs(ink - _qt_ink(grid)) < 0.1, ink

    plot = pg.PlotWidget()
    qtbot.addWidget(plot)
    plot.resize(400, 300)
    plot.plot(rng.normal(size=200), rng.normal(size=200), pen=None, symbol="o", symbolSize=5)
    plot.plot(np.linspace(-3, 3, 50), np.sin(np.linspace(-3, 3, 50)), pen=pg.mkPen("r", width=2))
    plot.show()
    qtbot.wait(20)
    ink = _rsvg_ink(figures.svg_bytes(plot), tmp_path, "scatter")
    assert ink < 2.5 * _qt_ink(plot) + 0.01, ink


def test_hover_readouts_are_not_baked_into_exports(qtbot, tmp_path):
    from explorer import figures
    from explorer.qt import pg

    plot = pg.PlotWidget()
    qtbot.addWidget(plot)
    plot.resize(300, 200)
    plot.plot([0, 1, 2], [1, 0, 1])
    hover = pg.TextItem("z0 = 0.123, tile (7, 7)")
    plot.addItem(hover)
    box = pg.PlotCurveItem([0, 1, 1, 0, 0], [0, 0, 1, 1, 0], pen=pg.mkPen((255, 200, 0), width=2))
    plot.addItem(box)
    plot.show()
    btn = figures.ExportButton(plot, "fig")
    qtbot.addWidget(btn)
    btn.hide_while_exporting(hover, box)
    svg = btn.export("svg", tmp_path / "fig.svg").read_text()
    assert "tile (7, 7)" not in svg and "#ffc800" not in svg.lower()
    assert hover.isVisible() and box.isVisible()  # back on screen after the export
    hover.setVisible(False)
    btn.export("png", tmp_path / "fig.png")
    assert not hover.isVisible()  # a hidden readout stays hidden


# -- every panel's figure, through its own Export button ---------------------------------
# Tiny models as the panel tests build them (tests/test_panels_latent.py: 3 patients × 4
# slices × 16 px, an untrained J = 4 VAE; tests/test_panel_similarity.py for the
# similarity and volume tabs), CT + RT only, one torch thread.

_PANELS: list = []


@pytest.fixture(autouse=True)
def _one_thread_and_shutdown():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    while _PANELS:
        _PANELS.pop().shutdown()  # worker threads stop before Qt deletes the panel
    torch.set_num_threads(n)


@pytest.fixture
def app_settings(tmp_path, monkeypatch):
    from explorer.settings import ENV_DATA_DIR, AppSettings

    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "userdata"))
    return AppSettings()


def _show_panel(qtbot, panel, size=(900, 600)):
    _PANELS.append(panel)
    qtbot.addWidget(panel)
    panel.resize(*size)
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.wait_idle(60000)
    qtbot.wait(30)  # deliver the queued results
    assert panel.wait_idle(60000)
    qtbot.wait(30)
    return panel


def _same_ink(svg: bytes, view, tmp_path: Path, name: str, tol: float = 0.05) -> float:
    """librsvg's drawing of `svg` has the ink of Qt's drawing of `view` (within `tol`)."""
    ink, qt = _rsvg_ink(svg, tmp_path, name), _qt_ink(view)
    assert qt > 0.005, (name, qt)  # something is drawn at all
    assert abs(ink - qt) < tol, (name, ink, qt)
    return ink


@pytest.fixture
def latent_state(tmp_path, app_settings):
    from test_panels_latent import _checkpoint, _workspace

    from explorer.state import AppState
    from training.explore import latent as latent_views

    latent_views.clear_caches()
    ws = _workspace(tmp_path / "ws.h5", rt=True)
    state = AppState(app_settings)
    state.set_workspace(ws)
    state.set_checkpoint(_checkpoint(tmp_path / "model.pt", ws))
    return state


@pytest.mark.parametrize("name", ["manifold", "density", "samples", "interpolation"])
def test_latent_panel_svg_renders_in_librsvg(qtbot, tmp_path, latent_state, name):
    import importlib

    from explorer import figures

    panel = importlib.import_module(f"explorer.panels.{name}").PANEL(latent_state)
    _show_panel(qtbot, panel)
    qtbot.waitUntil(lambda: panel.refreshes > 0, timeout=60000)
    assert panel.wait_idle(60000)
    qtbot.wait(100)
    buttons = [b for b in (getattr(panel, "export", None), getattr(panel, "film_export", None))
               if isinstance(b, figures.ExportButton)]
    assert buttons
    for k, b in enumerate(buttons):
        out = b.export("svg", tmp_path / f"{name}{k}.svg")
        _same_ink(out.read_bytes(), b.view(), tmp_path, f"{name}{k}")


@pytest.fixture
def tiny_model(tmp_path):
    from test_panel_similarity import write_checkpoint, write_workspace

    return write_workspace(tmp_path / "ws2.h5", rt=True), write_checkpoint(tmp_path / "model2.pt", n_classes=3)


def _similarity_panel(qtbot, app_settings, tiny_model):
    from test_panel_similarity import make_state

    from explorer.panels.similarity import SimilarityPanel

    panel = _show_panel(qtbot, SimilarityPanel(make_state(app_settings, *tiny_model)), (1000, 600))
    panel.views.setCurrentWidget(panel.heatmap)  # the heat map on screen, as a user exports it
    qtbot.wait(50)
    assert panel.heatmap.rgb is not None
    return panel


def test_similarity_heatmap_svg_renders_in_librsvg(qtbot, tmp_path, app_settings, tiny_model):
    panel = _similarity_panel(qtbot, app_settings, tiny_model)
    out = panel.export_btn.export("svg", tmp_path / "heat.svg")
    text = out.read_text()
    assert "PAT-0001" in text  # the names stay text
    _same_ink(out.read_bytes(), panel.heatmap, tmp_path, "heat")


def test_heatmap_export_leaves_the_selection_out(qtbot, tmp_path, app_settings, tiny_model):
    panel = _similarity_panel(qtbot, app_settings, tiny_model)
    panel.heatmap.set_highlight(1)
    assert panel.heatmap.row_box.isVisible()  # on screen the selected patient is outlined
    svg = panel.export_btn.export("svg", tmp_path / "heat-selected.svg").read_text().lower()
    # THE SELECTION OUTLINE (#e6550d, HeatMapView.row_box / col_box) MUST NOT BE IN THE EXPORT
    assert "#e6550d" not in svg, "the selected patient's outline is baked into the exported heat map"
    assert panel.heatmap.row_box.isVisible()  # and it is back on screen afterwards


def test_volume_slice_and_whole_tab_svg_render_in_librsvg(qtbot, tmp_path, app_settings, tiny_model):
    from test_panel_similarity import make_state

    from explorer import figures
    from explorer.panels.volume import VolumePanel

    panel = _show_panel(qtbot, VolumePanel(make_state(app_settings, *tiny_model)), (1000, 600))
    assert panel.pair is not None and panel.stacks.right.image_item.image is not None
    out = panel.export_btn.export("svg", tmp_path / "slice.svg")
    _same_ink(out.read_bytes(), panel.stacks.right, tmp_path, "slice")

    # the whole tab (form, both stacks, labels) as the window's File ▸ Export writes a tab
    # that is not one figure (figures.widget_bytes)
    svg = figures.widget_bytes(panel, "svg", "Volume")
    assert b"ROI overlay" in svg  # widget text stays text
    ink = _rsvg_ink(svg, tmp_path, "volume-tab")
    img = panel.grab().toImage().convertToFormat(figures.QtGui.QImage.Format.Format_RGBA8888)
    a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)
    qt = _ink(a[:, :img.width()])
    assert qt > 0.005 and abs(ink - qt) < 0.05, (ink, qt)


def test_train_tab_metrics_plot_svg_renders_in_librsvg(qtbot, tmp_path):
    from explorer import figures
    from explorer.widgets.metrics_plot import MetricsPlot

    mp = MetricsPlot()
    qtbot.addWidget(mp)
    mp.resize(360, 300)
    for e in range(1, 11):
        mp.add_epoch(e, {split: {"mae_hu": 120 / e + off, "psnr_db": 20 + e + off, "ssim": 0.4 + 0.04 * e,
                                 "dice": {"GTV": 0.3 + 0.05 * e}, "n_images": 4}
                         for split, off in (("train", 0.0), ("test", 5.0))})
    mp.show()
    qtbot.waitExposed(mp)
    for k in range(mp.choice.count()):  # MAE, PSNR, SSIM, Dice GTV
        mp.choice.setCurrentIndex(k)
        qtbot.wait(10)
        svg = figures.svg_bytes(mp.plot)
        ink = _same_ink(svg, mp.plot, tmp_path, f"metrics{k}", tol=0.02)
        assert ink < 0.15, ink  # curves stay lines
        assert mp.choice.currentText().split(" (")[0].encode() in svg  # the axis label stays text
