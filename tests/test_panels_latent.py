"""Latent tabs (manifold, interpolation, samples, density) and training/explore/latent.py.

Tiny: 3 patients × 4 slices × 16 px, an untrained model (J = 4) saved as a checkpoint;
one thread. The panels are shown on their own (not in the main window) with an AppState
pointing at the tiny workspace and checkpoint.
"""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from tests.test_gui_support import _one_torch_thread, data_dir  # noqa: F401  (fixtures)

pytest.importorskip("pytestqt")

SIZE = 16


def _workspace(path, rt: bool):
    from training.store.workspace import write_arrays_workspace

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, labels = {}, {}
    for i in range(3):
        disc = ((yy - 8) ** 2 + (xx - 8) ** 2) < (3 + i) ** 2
        stack = disc[None] * 0.6 + 0.1 * rng.random((4, SIZE, SIZE))
        images[f"PAT-{i + 1:04d}"] = stack.astype(np.float32)
        labels[f"PAT-{i + 1:04d}"] = np.repeat(disc[None], 4, 0).astype(np.uint8)
    if rt:
        return write_arrays_workspace(path, images, labels, roi_names=("GTV",))
    return write_arrays_workspace(path, images)


def _checkpoint(path, workspace, seed: int = 0):
    import torch

    from training.vae.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainConfig
    from training.vae.model import VAE
    from training.store.workspace import Workspace

    with Workspace.open(workspace) as ws:
        pre, n_classes, dh = ws.preprocess, ws.preprocess.n_classes, ws.data_hash
    torch.manual_seed(seed)
    cfg = ModelConfig(input_size=SIZE, n_classes=n_classes, latent_dim=4, filters=4, n_blocks=2,
                      convs_per_block=1, fc_units=16, dropout=0.0)
    model = VAE(cfg)
    return save_checkpoint(path, model_config=cfg, train_config=TrainConfig(), preprocess_config=pre,
                           model_state=model.state_dict(), optimizer_state=None, epoch=seed + 1,
                           history=[], data_hash=dh, roi_names=tuple(pre.rois))


@pytest.fixture(params=["ct", "ct+rt"])
def latent_env(request, data_dir, qtbot):
    """(AppState, workspace path, checkpoint path) for a CT-only or CT+RT tiny model."""
    from explorer.settings import AppSettings
    from explorer.state import AppState
    from training.explore import latent as latent_views

    latent_views.clear_caches()
    ws = _workspace(data_dir / "ws.h5", rt=request.param == "ct+rt")
    ck = _checkpoint(data_dir / "model.pt", ws)
    state = AppState(AppSettings())
    state.set_workspace(ws)
    state.set_checkpoint(ck)
    return state, ws, ck


_OPEN: list = []


@pytest.fixture(autouse=True)
def _shutdown_panels():
    yield
    while _OPEN:
        _OPEN.pop().shutdown()


def _panel(qtbot, cls, state):
    p = cls(state)
    _OPEN.append(p)
    qtbot.addWidget(p)
    p.resize(900, 600)
    p.show()
    qtbot.waitExposed(p)
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.refreshes > 0, timeout=60000)
    return p


def _headless(ck, ws):
    from training.explore import latent as latent_views

    lm = latent_views.load_latent_model(ck)
    return lm, latent_views.encode_patients(lm, ws)


# ----------------------------------------------------------------------------- headless


def test_nearest_to_code_matches_scipy():
    from scipy.stats import multivariate_normal

    from training.explore.latent import nearest_to_code

    rng = np.random.default_rng(3)
    mu, lv = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) * 0.5
    z = rng.normal(size=3)
    got = nearest_to_code(z, mu, lv, k=6)
    ref = [-multivariate_normal(mu[i], np.diag(np.exp(lv[i]))).logpdf(z) for i in range(6)]
    assert [i for i, _ in got] == list(np.argsort(ref))
    np.testing.assert_allclose([v for _, v in got], np.sort(ref), rtol=1e-10)


def test_display_rgb_equals_overlay_labels():
    from training.images import overlay_labels, roi_colour_table
    from training.explore.latent import display_rgb

    rng = np.random.default_rng(5)
    ct = rng.random((2, 3, 8, 8)) * 1.2 - 0.1
    lab = rng.integers(0, 5, (2, 3, 8, 8)).astype(np.uint8)
    got = display_rgb(ct, lab, 5)
    for i in range(2):
        for j in range(3):
            ref = overlay_labels(ct[i, j], lab[i, j], roi_colour_table(6)).astype(int)
            assert np.abs(got[i, j].astype(int) - ref).max() <= 1  # float32 vs float64 grey rounding
    ref = overlay_labels(ct[0, 0], None).astype(int)
    assert np.abs(display_rgb(ct[0, 0]).astype(int) - ref).max() <= 1
    # exact where the grey level is not at a rounding boundary
    ct2 = np.round(rng.random((8, 8)) * 255) / 255
    np.testing.assert_array_equal(display_rgb(ct2, lab[0, 0], 5), overlay_labels(ct2, lab[0, 0], roi_colour_table(6)))


def test_sigma_ellipse_and_tiles():
    from training.explore.latent import code_at, quantile_coord, quantile_to_z, sigma_ellipse, tile_side
    from training.latent.sampling import grid_positions, interpolate

    pts = sigma_ellipse((1.0, -2.0), (0.5, 2.0))
    # every point satisfies ((x−µa)/σa)² + ((y−µb)/σb)² = 1
    np.testing.assert_allclose(((pts[:, 0] - 1) / 0.5) ** 2 + ((pts[:, 1] + 2) / 2) ** 2, 1.0)
    pos = grid_positions(15)
    s = tile_side(pos)
    assert s == pytest.approx(np.min(np.diff(pos))) and np.all(np.diff(pos) >= s - 1e-12)
    for s2 in (1.0, 2.5):
        p2 = grid_positions(15, s2)
        np.testing.assert_allclose(quantile_coord(p2, 15, s2), np.arange(15) + 0.5, atol=1e-9)
        np.testing.assert_allclose(quantile_to_z(np.arange(15) + 0.5, 15, s2), p2, atol=1e-9)
    z0, z1 = np.array([1.0, 0, 0]), np.array([0, 2.0, 0])
    for method in ("linear", "spherical"):
        ref = interpolate(z0, z1, 5, method)
        for k, t in enumerate(np.linspace(0, 1, 5)):
            np.testing.assert_allclose(code_at(z0, z1, t, method), ref[k], atol=1e-6)


# ----------------------------------------------------------------------------- manifold


def test_manifold_click_shows_cell_code(qtbot, latent_env):
    from explorer.panels.manifold import ManifoldPanel
    from explorer.qt import Qt, QtCore
    from training.latent import encode as latent

    state, ws, ck = latent_env
    p = _panel(qtbot, ManifoldPanel, state)
    p.n_spin.setValue(5)
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result is not None and len(p.result["manifold"].positions) == 5, timeout=60000)
    lm, wl = _headless(ck, ws)
    ref = latent.manifold(lm.model, n=5, dims=(0, 1), prior_sigma2=lm.prior_sigma2)
    np.testing.assert_allclose(p.result["manifold"].images, ref.images, atol=1e-6)
    # click on the centre of tile (1, 3) through the real mouse path
    cx, cy = p.cell_centre(1, 3)
    scene = p.plot.vb.mapViewToScene(QtCore.QPointF(cx, cy))
    pos = p.view.mapFromScene(scene)
    qtbot.mouseClick(p.view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    qtbot.waitUntil(lambda: p.selected == (1, 3), timeout=5000)
    np.testing.assert_array_equal(p.cell_code, ref.codes[1, 3])
    assert f"z0 = {ref.codes[1, 3][0]:.3f}" in p.cell_view.plot.titleLabel.text
    # the large view shows that tile's image
    shown = p.cell_view.array
    exp = ref.images[1, 3]
    if ref.labels is None:
        np.testing.assert_allclose(shown, exp, atol=1e-6)
    else:
        assert shown.shape == (*exp.shape, 3)
    # nearest patients from the headless ranking
    from training.explore.latent import nearest_to_code

    near = nearest_to_code(ref.codes[1, 3], wl.patients.mu, wl.patients.logvar, k=5)
    assert [n for n, _ in p.cell_neighbours] == [wl.patients.names[i] for i, _ in near]
    # patients drawn at their µ
    xs, ys = p.points.getData()
    np.testing.assert_allclose(xs, wl.patients.mu[:, 0])
    np.testing.assert_allclose(ys, wl.patients.mu[:, 1])
    assert len(p.ellipses) == 3
    state.select_patient("PAT-0002")  # picked in the patient list: highlighted
    assert [pt.size() for pt in p.points.points()] == [7, 11, 7]
    # hovering shows z
    p._moved(scene)
    assert p.hover.isVisible() and f"z0 = {cx:.3f}" in p.hover.toPlainText()
    # tiles are drawn right way up: row 0 of the tile image maps to the tile's top edge
    tile = p.tiles[1 * 5 + 3]
    top = tile.mapToParent(QtCore.QPointF(0, 0))
    bottom = tile.mapToParent(QtCore.QPointF(0, SIZE))
    assert top.y() > bottom.y()  # y points up in the manifold plot
    # other dims held at a patient's µ
    p.base.setCurrentText("PAT-0002")
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result["base_name"] == "PAT-0002", timeout=60000)
    code = p.result["manifold"].codes[0, 0]
    np.testing.assert_allclose(code[2:], wl.patient_mu("PAT-0002")[2:], atol=1e-6)
    # tiled layout on the prior's quantile scale: same cells, patients mapped through n·Φ(z/σz)
    from training.explore.latent import quantile_coord

    p.layout_mode.setCurrentIndex(1)
    cx, cy = p.cell_centre(4, 0)
    assert (cx, cy) == (0.5, 0.5)
    qtbot.mouseClick(p.view.viewport(), Qt.MouseButton.LeftButton,
                     pos=p.view.mapFromScene(p.plot.vb.mapViewToScene(QtCore.QPointF(cx + 0.3, cy - 0.3))))
    qtbot.waitUntil(lambda: p.selected == (4, 0), timeout=5000)
    np.testing.assert_array_equal(p.cell_code, p.result["manifold"].codes[4, 0])
    xs, ys = p.points.getData()
    np.testing.assert_allclose(xs, quantile_coord(wl.patients.mu[:, 0], 5, lm.prior_sigma2))
    p.shutdown()


def test_panels_follow_new_checkpoint(qtbot, latent_env):
    from explorer.panels.density import DensityPanel
    from explorer.panels.interpolation import InterpolationPanel
    from explorer.panels.manifold import ManifoldPanel
    from explorer.panels.samples import SamplesPanel

    state, ws, ck = latent_env
    panels = [_panel(qtbot, cls, state) for cls in (ManifoldPanel, InterpolationPanel, SamplesPanel, DensityPanel)]
    before = [p.refreshes for p in panels]
    ck2 = _checkpoint(ck.with_name("model2.pt"), ws, seed=1)
    state.set_checkpoint(ck2)
    for p in panels:
        assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: all(p.refreshes > b for p, b in zip(panels, before)), timeout=60000)
    assert panels[0].result["lm"].epoch == 2
    for p in panels:
        p.shutdown()


# ----------------------------------------------------------------------------- interpolation


def test_interpolation_slider_reaches_reconstruction(qtbot, latent_env, monkeypatch):
    import explorer.panels.interpolation as interp
    from explorer.panels.interpolation import SLIDER_STEPS, InterpolationPanel

    # This test checks values, not the sync/async choice: on a busy machine a tiny decode
    # can measure over the limit and go to the worker.
    monkeypatch.setattr(interp, "SYNC_LIMIT_MS", 1e9)

    state, ws, ck = latent_env
    p = _panel(qtbot, InterpolationPanel, state)
    lm, wl = _headless(ck, ws)
    # first view: first and last patient
    assert (p.src.currentText(), p.dst.currentText()) == ("PAT-0001", "PAT-0003")
    p.slider.setValue(0)
    start = p.current_image.copy()
    np.testing.assert_allclose(start, lm.decoder.decode(wl.patient_mu("PAT-0001")).ct[0], atol=1e-6)
    p.slider.setValue(SLIDER_STEPS // 2)
    assert not np.allclose(p.current_image, start)
    mid = p.current_image.copy()
    p.slider.setValue(SLIDER_STEPS)
    assert not np.allclose(p.current_image, mid)
    from training.explore.latent import display_rgb

    expect = p.current_image if p.current_labels is None else display_rgb(p.current_image, p.current_labels, 1)
    np.testing.assert_array_equal(p.image.item.image, expect)  # what the screen shows
    end = lm.decoder.decode(wl.patient_mu("PAT-0003"))
    np.testing.assert_allclose(p.current_image, end.ct[0], atol=1e-6)
    np.testing.assert_array_equal(p.current_code, wl.patient_mu("PAT-0003"))
    if end.labels is not None:
        assert p.image.array.shape == (SIZE, SIZE, 3)  # RT as a coloured overlay
    assert max(p.decode_ms) < 1000
    assert p.endpoints["decode_ms"] > 0  # timed off the GUI thread: picks sync/async from the first move
    # filmstrip = headless interpolation
    from training.latent import encode as latent

    ref = latent.interpolation(lm.model, wl.patient_mu("PAT-0001"), wl.patient_mu("PAT-0003"), 8, "linear")
    np.testing.assert_allclose(p.endpoints["film"].images, ref.images, atol=1e-6)
    # spherical, random prior endpoints
    p.method.setCurrentText("spherical")
    p.src.setCurrentText("random prior draw")
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.endpoints["method"] == "spherical" and p.endpoints["src"] != "PAT-0001",
                    timeout=60000)
    from training.latent.sampling import sample_prior

    np.testing.assert_allclose(p.endpoints["z0"], sample_prior(2, 4, lm.prior_sigma2, 0)[0])
    p.shutdown()


# ----------------------------------------------------------------------------- samples


def test_samples_reproducible_with_seed(qtbot, latent_env):
    from explorer.panels.samples import SamplesPanel
    from training.latent import encode as latent

    state, ws, ck = latent_env
    p = _panel(qtbot, SamplesPanel, state)
    p.count.setValue(6)
    p.seed.setValue(7)
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result["samples"].seed == 7 and len(p.result["samples"].codes) == 6, timeout=60000)
    first = p.result["samples"].images.copy()
    lm, wl = _headless(ck, ws)
    ref = latent.generate(lm.model, 6, "prior", 7, lm.prior_sigma2)
    np.testing.assert_allclose(first, ref.images, atol=1e-6)
    p.again.click()
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result["samples"].seed == 8, timeout=60000)
    assert not np.allclose(p.result["samples"].images, first)
    p.seed.setValue(7)
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result["samples"].seed == 7, timeout=60000)
    np.testing.assert_array_equal(p.result["samples"].images, first)
    # aggregate posterior
    p.source.setCurrentIndex(1)
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result["samples"].source == "aggregate", timeout=60000)
    ref = latent.generate(lm.model, 6, "aggregate", 7, lm.prior_sigma2,
                          posteriors=(wl.encoded.mu, wl.encoded.logvar))
    np.testing.assert_allclose(p.result["samples"].codes, ref.codes)
    p.shutdown()


# ----------------------------------------------------------------------------- density


def test_density_equals_headless(qtbot, latent_env):
    from explorer.panels.density import DensityPanel
    from training.latent.sampling import density_grid

    state, ws, ck = latent_env
    p = _panel(qtbot, DensityPanel, state)
    lm, wl = _headless(ck, ws)
    ref = density_grid(wl.encoded.mu, wl.encoded.logvar, (0, 1), n=101, extent=4.0, prior_sigma2=lm.prior_sigma2)
    dens, prior = p.arrays()
    np.testing.assert_allclose(dens, ref.density, rtol=1e-6)
    np.testing.assert_allclose(prior, ref.prior, rtol=1e-6)
    xs, ys = p.scatters[0].getData()
    np.testing.assert_allclose(xs, wl.encoded.mu[:, 0])
    p.dim_y.setCurrentIndex(3)
    assert p.wait_idle(60000)
    qtbot.waitUntil(lambda: p.result["grid"].dims == (0, 3), timeout=60000)
    ref = density_grid(wl.encoded.mu, wl.encoded.logvar, (0, 3), n=101, extent=4.0, prior_sigma2=lm.prior_sigma2)
    np.testing.assert_allclose(p.arrays()[0], ref.density, rtol=1e-6)
    p.shutdown()


# ----------------------------------------------------------------------------- exports


def test_every_panel_exports(qtbot, latent_env, tmp_path):
    from explorer.panels.density import DensityPanel
    from explorer.panels.manifold import ManifoldPanel
    from explorer.panels.samples import SamplesPanel
    from explorer.qt import QtGui

    state, ws, ck = latent_env
    for cls in (ManifoldPanel, SamplesPanel, DensityPanel):
        p = _panel(qtbot, cls, state)
        name = cls.__name__
        png = p.export.export("png", tmp_path / f"{name}.png")
        img = QtGui.QImage(str(png))
        from explorer.figures import true_pixel_scale

        vp = p.export.view().viewport().size()
        s = true_pixel_scale(p.export.view())
        assert (img.width(), img.height()) == (vp.width() * s, vp.height() * s)
        svg = p.export.export("svg", tmp_path / f"{name}.svg")
        root = ET.parse(svg).getroot()
        assert any(e.tag.endswith("image") for e in root.iter())
        assert p.export.export("pdf", tmp_path / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
        rows = list(csv.reader(open(p.export.export("csv", tmp_path / f"{name}.csv"))))
        assert len(rows) > 1
        if cls is not DensityPanel:
            out = tmp_path / f"{name}-gen"
            images, labels, prefix = (p._generated())
            for fmt in ("png", "npy", "dicom"):
                written = p.export_generated(fmt, out, images[:2], None if labels is None else labels[:2], prefix)
                assert written[fmt] and all(f.exists() for f in written[fmt])
            np.testing.assert_array_equal(np.load(out / f"{prefix}_ct.npy"), images[:2])
            import pydicom

            ds = pydicom.dcmread(next((out / "dicom").rglob("CT_*.dcm")))
            assert ds.Rows == SIZE and "GEN" in str(ds.PatientID)
        p.shutdown()


def test_3d_model_shows_middle_slices(qtbot, data_dir):
    """A 3-D model (8³ volumes): tiles and images are the middle z slice of each volume."""
    import torch

    from explorer.panels.interpolation import SLIDER_STEPS, InterpolationPanel
    from explorer.panels.manifold import ManifoldPanel
    from explorer.settings import AppSettings
    from explorer.state import AppState
    from training.explore import latent as latent_views
    from training.vae.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainConfig
    from training.vae.model import VAE
    from training.store.workspace import Workspace, write_arrays_workspace

    latent_views.clear_caches()
    rng = np.random.default_rng(0)
    vols = {f"PAT-{i}": rng.random((1, 8, 8, 8)).astype(np.float32) for i in range(3)}
    ws = write_arrays_workspace(data_dir / "ws3d.h5", vols)
    with Workspace.open(ws) as w:
        pre, dh = w.preprocess, w.data_hash
    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=3, input_size=8, latent_dim=3, filters=2, n_blocks=2, convs_per_block=1,
                      fc_units=8, dropout=0.0)
    ck = save_checkpoint(data_dir / "m3d.pt", model_config=cfg, train_config=TrainConfig(), preprocess_config=pre,
                         model_state=VAE(cfg).state_dict(), optimizer_state=None, epoch=1, history=[],
                         data_hash=dh)
    state = AppState(AppSettings())
    state.set_workspace(ws)
    state.set_checkpoint(ck)
    man = _panel(qtbot, ManifoldPanel, state)
    m = man.result["manifold"]
    assert m.images.shape[2:] == (8, 8, 8)
    np.testing.assert_array_equal(man.result["shown"][0, 0], m.images[0, 0, 4])
    it = _panel(qtbot, InterpolationPanel, state)
    it.slider.setValue(SLIDER_STEPS)
    lm, wl = _headless(ck, ws)
    np.testing.assert_allclose(it.image.array, lm.decoder.decode(wl.patient_mu("PAT-2")).ct[0, 4], atol=1e-6)


def test_no_model_and_bad_checkpoint_are_messages(qtbot, data_dir):
    from explorer.panels.density import DensityPanel
    from explorer.panels.manifold import ManifoldPanel
    from explorer.settings import AppSettings
    from explorer.state import AppState

    state = AppState(AppSettings())
    panels = []
    for cls in (ManifoldPanel, DensityPanel):
        p = cls(state)
        _OPEN.append(p)
        qtbot.addWidget(p)
        p.show()
        qtbot.waitExposed(p)
        panels.append(p)
    qtbot.wait(20)
    assert all("No model" in p.status.text() for p in panels)
    bad = data_dir / "bad.pt"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not a checkpoint")
    state.set_checkpoint(bad)
    panels[0].wait_idle(30000)
    qtbot.waitUntil(lambda: "bad.pt" in panels[0].status.text(), timeout=30000)
    assert "No workspace" in panels[1].status.text()  # density needs encoded images
