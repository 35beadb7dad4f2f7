"""Manifold tab: the grid sets the view, patients outside it are not squashed onto the
frame, the marker colours are explained, and hover readouts stay out of exports."""

from __future__ import annotations

import numpy as np
import pytest

from test_panels_latent import _panel, _shutdown_panels, latent_env  # noqa: F401 (fixtures)
from test_gui_support import _one_torch_thread, data_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(180)


def test_grid_sets_the_view_and_outside_patients_are_named(qtbot, latent_env, tmp_path):
    from explorer.panels.manifold import ManifoldPanel

    state, ws, ck = latent_env
    p = _panel(qtbot, ManifoldPanel, state)
    p.n_spin.setValue(5)
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result is not None and len(p.result["manifold"].positions) == 5, timeout=60000)
    pos = p.result["manifold"].positions
    (x0, x1), (y0, y1) = p.plot.vb.viewRange()
    edge = pos[-1] + p.result["side"] / 2
    # the grid sets the range (the aspect lock may widen one axis), not the patients
    assert min(x1 - x0, y1 - y0) == pytest.approx(2 * edge, rel=0.06)
    assert "posterior mean" in p.key.text() and "selected in the list" in p.key.text()

    # one patient far out in the tails
    pp = p.result["wl"].patients
    pp.mu[0, :2] = 6.0
    p._draw_patients()
    assert p.patients_outside == [pp.names[0]] and p.outside.isVisibleTo(p)
    assert len(p.points.getData()[0]) == len(pp.names)  # z scale: drawn where it is, out of view
    p.layout_mode.setCurrentIndex(p.layout_mode.findData("quantile"))
    assert len(p.points.getData()[0]) == len(pp.names) - 1  # quantile scale: not squashed onto the frame
    assert "not drawn" in p.outside.text() and pp.names[0] in p.outside.text()
    assert len(p.ellipses) == len(pp.names) - 1
    for e in p.ellipses:  # no part of an ellipse pressed against the frame
        xs, ys = e.getData()
        z = p.to_z(np.stack([xs, ys], axis=1))
        z = z[np.all(np.isfinite(z), axis=1)]
        assert np.all(np.abs(z) <= edge + 1e-6), np.abs(z).max()

    # a hover readout and the selected tile's box stay out of the exported figure
    p.select_cell(1, 1)
    p.hover.setText("z0 = 0.123, tile (7, 7)")
    p.hover.setVisible(True)
    svg = p.export.export("svg", tmp_path / "m.svg").read_text()
    assert "tile (7, 7)" not in svg
    assert p.hover.isVisible() and p.selection.isVisible()
