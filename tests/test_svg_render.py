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
