"""Similarity tab: the KL table equals training.latent.similarity, sorts like numpy, symmetric
toggle, nearest list, identification, checkpoint updates and exports (tiny, offscreen).

Helpers here (tiny workspaces and checkpoints) are reused by tests/test_panel_volume.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SIZE = 16


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    from explorer.settings import ENV_DATA_DIR, AppSettings

    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "userdata"))
    return AppSettings()


def tiny_images(n_patients: int = 4, n_slices: int = 5, size: int = SIZE, depth: int | None = None, seed: int = 0):
    """{pseudonym: images}, {pseudonym: labels}: ellipses per patient, labels 0/1/2.

    2D: (n_slices, size, size); 3D (depth given): (1, depth, size, size).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    imgs, labs = {}, {}
    for i in range(n_patients):
        k = np.arange(depth or n_slices)[:, None, None]
        body = ((xx - c) ** 2 / (size * (2 + i)) + (yy - c) ** 2 / (size * (1.5 + k / 4))) < 1
        img = body * (0.4 + 0.1 * i) + 0.05 * rng.random(body.shape)
        lab = body.astype(np.uint8) + ((xx - c - 2) ** 2 + (yy - c) ** 2 < 4 + i)
        lab = np.minimum(lab, 2).astype(np.uint8)
        name = f"PAT-{i + 1:04d}"
        imgs[name] = img.astype(np.float32)[None] if depth else img.astype(np.float32)
        labs[name] = lab[None] if depth else lab
    return imgs, labs


def write_workspace(path: Path, rt: bool = True, depth: int | None = None, n_patients: int = 4) -> Path:
    from training.config import PreprocessConfig
    from training.store.workspace import write_arrays_workspace

    imgs, labs = tiny_images(n_patients, depth=depth)
    pre = PreprocessConfig(crop=None, mode="3d" if depth else "2d", rois=("BODY", "GTV") if rt else (),
                           hu_min=-1000.0, hu_max=1000.0)
    return write_arrays_workspace(path, imgs, labs if rt else None, preprocess=pre,
                                  roi_names=("BODY", "GTV") if rt else ())


def write_checkpoint(path: Path, n_classes: int = 3, spatial_dims: int = 2, seed: int = 0) -> Path:
    import torch

    from training.vae.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainConfig
    from training.vae.model import VAE

    torch.manual_seed(seed)
    cfg = ModelConfig(spatial_dims=spatial_dims, input_size=SIZE, n_blocks=2, filters=2, convs_per_block=1,
                      fc_units=8, latent_dim=3, n_classes=n_classes, dropout=0.0)
    model = VAE(cfg)
    return save_checkpoint(path, model_config=cfg, train_config=TrainConfig(), preprocess_config=None,
                           model_state=model.state_dict(), optimizer_state=None, epoch=1, history=[],
                           data_hash="")


def make_state(settings, workspace: Path | None, checkpoint: Path | None):
    from explorer.state import AppState

    state = AppState(settings)
    state.workspace_path = workspace
    state.checkpoint_path = checkpoint
    return state


def settle(qtbot, panel) -> None:
    assert panel.wait_idle(60000)
    qtbot.wait(30)  # deliver the queued results
    assert panel.wait_idle(60000)
    qtbot.wait(10)


def headless_similarity(ckpt: Path, ws_path: Path, aggregate="mixture"):
    from training.latent import encode as latent
    from training.latent import similarity
    from training.vae.checkpoint import load_model
    from training.store.workspace import Workspace

    model, _ = load_model(ckpt)
    with Workspace.open(ws_path) as ws:
        enc = latent.encode_workspace(model, ws)
    pp = latent.aggregate_patients(enc, aggregate)
    directed = similarity.similarity_matrix(pp.mu, pp.logvar)
    return pp.names, directed, similarity.similarity_matrix(pp.mu, pp.logvar, True)


@pytest.fixture(params=["ct_rt", "ct_only"])
def panel_env(request, tmp_path, settings):
    rt = request.param == "ct_rt"
    ws = write_workspace(tmp_path / "ws.h5", rt=rt)
    ckpt = write_checkpoint(tmp_path / "model.pt", n_classes=3 if rt else 0)
    return settings, ws, ckpt


_MADE: list = []


@pytest.fixture(autouse=True)
def _shutdown_panels():
    yield
    while _MADE:
        _MADE.pop().shutdown()  # stop the worker threads before Qt deletes the panel


def make_panel(qtbot, state, cls=None):
    from explorer.panels.similarity import SimilarityPanel

    panel = (cls or SimilarityPanel)(state)
    _MADE.append(panel)
    qtbot.addWidget(panel)
    panel.resize(1000, 600)
    panel.show()
    return panel


def test_table_equals_headless_and_sorts_like_numpy(qtbot, panel_env):
    from explorer.qt import Qt
    from explorer.widgets.kl_table import VALUE_ROLE

    settings, ws, ckpt = panel_env
    panel = make_panel(qtbot, make_state(settings, ws, ckpt))
    settle(qtbot, panel)
    names, directed, sym = headless_similarity(ckpt, ws)
    model = panel.table.kl_model
    assert model.names == names
    shown = np.array([[model.data(model.index(r, c), VALUE_ROLE) for c in range(len(names))]
                      for r in range(len(names))])
    np.testing.assert_allclose(shown, directed, rtol=1e-6, atol=1e-9)
    assert "KL(q_i || q_j)" in model.headerData(0, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)

    # a click on column 2's header sorts the rows like a stable argsort of that column
    header = panel.table.horizontalHeader()
    from explorer.qt import QtCore

    x = header.sectionViewportPosition(2) + header.sectionSize(2) // 2
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QtCore.QPoint(x, header.height() // 2))
    assert model.sort_column == 2
    want = np.argsort(directed[:, 2], kind="stable")
    if model.sort_order == Qt.SortOrder.DescendingOrder:
        want = np.argsort(-directed[:, 2], kind="stable")
    assert [model.patient_at(r) for r in range(len(names))] == [names[i] for i in want]
    panel.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
    assert list(model.order) == list(np.argsort(-directed[:, 1], kind="stable"))
    # values follow their rows
    r = model.row_of(names[0])
    assert model.data(model.index(r, 3), VALUE_ROLE) == pytest.approx(directed[0, 3])
    # heat colours: the background is the headless colour of the value
    from training.explore.similarity import heat_rgb

    bg = model.data(model.index(r, 3), Qt.ItemDataRole.BackgroundRole)
    assert (bg.red(), bg.green(), bg.blue()) == tuple(int(v) for v in heat_rgb(directed)[0, 3])

    # symmetric toggle
    panel.symmetric.setChecked(True)
    shown = np.array([[model.data(model.index(model.row_of(a), c), VALUE_ROLE) for c in range(len(names))]
                      for a in names])
    np.testing.assert_allclose(shown, sym, rtol=1e-6, atol=1e-9)
    assert "0.5" in model.definition and "½" in panel.definition.text()


def test_nearest_follows_selection(qtbot, panel_env):
    from training.latent import similarity

    settings, ws, ckpt = panel_env
    state = make_state(settings, ws, ckpt)
    panel = make_panel(qtbot, state)
    settle(qtbot, panel)
    names, directed, sym = headless_similarity(ckpt, ws)
    state.select_patient(names[1])
    want = [(names[j], v) for j, v in similarity.nearest(directed, 1, 5)]
    got = panel.nearest()
    assert [n for n, _ in got] == [n for n, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    assert panel.near_list.count() == len(names) - 1
    assert names[1] in panel.near_title.text()
    # the table selected that patient's row; selecting another row selects the patient
    assert panel.table.currentIndex().row() == panel.table.kl_model.row_of(names[1])
    assert panel.heatmap.highlighted == 1 and panel.heatmap.row_box.isVisible()
    panel.table.selectRow(panel.table.kl_model.row_of(names[3]))
    assert state.selected_patient == names[3]
    panel.symmetric.setChecked(True)
    assert [n for n, _ in panel.nearest()] == [names[j] for j, _ in similarity.nearest(sym, 3, 5)]


def test_identification_equals_headless(qtbot, panel_env):
    from training.latent import encode as latent
    from training.latent import similarity
    from training.vae.checkpoint import load_model
    from training.store.workspace import Workspace

    settings, ws, ckpt = panel_env
    panel = make_panel(qtbot, make_state(settings, ws, ckpt))
    settle(qtbot, panel)
    panel.slice_a.setValue(0)
    panel.slice_b.setValue(3)
    panel.run_identification()
    settle(qtbot, panel)
    res = panel.identification
    assert res is not None
    model, _ = load_model(ckpt)
    with Workspace.open(ws) as w:
        n = len(w.patients)
        ea = latent.encode_workspace(model, w, rows=[(i, 0) for i in range(n)])
        eb = latent.encode_workspace(model, w, rows=[(i, 3) for i in range(n)])
        names = [p.pseudonym for p in w.patients]
    want = similarity.identify(ea.mu, ea.logvar, eb.mu, eb.logvar, names=names)
    # the panel's shared model runs channels_last (the decoder's faster layout): float32 noise
    np.testing.assert_allclose(res.kl, want.kl, rtol=1e-5, atol=1e-7)
    assert res.n_identified == want.n_identified
    assert [c[:2] for c in res.confusions] == [c[:2] for c in want.confusions]
    assert panel.id_score.text() == f"{want.n_identified} of {n} patients identified"
    assert f"{want.mean_same:.4g}" in panel.id_detail.text()
    assert panel.id_confused.count() == max(len(want.confusions), 1)
    # an impossible slice pair is one readable line, not a crash
    panel.slice_a.setValue(50)
    panel.run_identification()
    settle(qtbot, panel)
    assert "fewer than 2 series" in panel.id_detail.text()


def test_new_checkpoint_recomputes_and_exports(qtbot, tmp_path, settings):
    ws = write_workspace(tmp_path / "ws.h5", rt=True)
    ck1 = write_checkpoint(tmp_path / "a.pt", seed=0)
    ck2 = write_checkpoint(tmp_path / "b.pt", seed=5)
    state = make_state(settings, ws, None)
    panel = make_panel(qtbot, state)
    assert "Load or train a model" in panel.message.text()
    state.set_checkpoint(ck1)
    state.set_checkpoint(ck2)  # newest wins
    settle(qtbot, panel)
    _, d2, _ = headless_similarity(ck2, ws)
    np.testing.assert_allclose(panel.matrix(), d2, rtol=1e-6, atol=1e-9)

    # CSV of the matrix through training.latent.similarity.write_matrix_csv (direction stated)
    out = panel.export(tmp_path / "exports" / "kl.csv")
    lines = out.read_text().splitlines()
    assert lines[0].startswith('"series \\ KL(q_i || q_j)')  # a plain header row, no '#' line
    import csv

    assert next(csv.reader(lines[:1]))[1] == "patient"  # each row's patient, then the matrix
    back = np.array([[float(v) for v in row.split(",")[2:]] for row in lines[1:]])
    np.testing.assert_allclose(back, d2, rtol=1e-12)
    # heat map figure as PNG / SVG / PDF
    from explorer.qt import QtGui

    panel.views.setCurrentIndex(1)
    qtbot.wait(20)
    png = panel.export(tmp_path / "exports" / "kl.png")
    assert not QtGui.QImage(str(png)).isNull()
    assert panel.export(tmp_path / "exports" / "kl.svg").read_text().lstrip().startswith("<?xml")
    assert panel.export(tmp_path / "exports" / "kl.pdf").read_bytes().startswith(b"%PDF")
    table_png = panel.export_table_png(tmp_path / "exports" / "table.png")
    assert QtGui.QImage(str(table_png)).width() > 100


def test_mismatched_model_is_a_message(qtbot, tmp_path, settings):
    ws = write_workspace(tmp_path / "ws.h5", rt=False)
    ck = write_checkpoint(tmp_path / "rt.pt", n_classes=3)
    panel = make_panel(qtbot, make_state(settings, ws, ck))
    settle(qtbot, panel)
    assert "RT classes" in panel.message.text() and panel.result is None


def test_3d_workspace_matrix_and_no_identification(qtbot, tmp_path, settings):
    from explorer.qt import QtGui

    ws = write_workspace(tmp_path / "ws3.h5", rt=True, depth=SIZE)
    ck = write_checkpoint(tmp_path / "m3.pt", spatial_dims=3)
    state = make_state(settings, ws, ck)
    panel = make_panel(qtbot, state)
    settle(qtbot, panel)
    _, d, _ = headless_similarity(ck, ws)
    np.testing.assert_allclose(panel.matrix(), d, rtol=1e-6, atol=1e-9)
    assert not panel.run_id_btn.isEnabled() and "2D workspace" in panel.id_detail.text()
    # the selected patient's row and column are drawn in bold
    state.select_patient("PAT-0002")
    m = panel.table.kl_model
    r = m.row_of("PAT-0002")
    font = m.data(m.index(r, 0), int(QtGui.Qt.ItemDataRole.FontRole.value))
    assert font is not None and font.bold()
    assert m.data(m.index(m.row_of("PAT-0001"), 3), int(QtGui.Qt.ItemDataRole.FontRole.value)) is None


def test_hidden_tab_computes_when_shown(qtbot, tmp_path, settings):
    from explorer.panels.similarity import SimilarityPanel

    ws = write_workspace(tmp_path / "ws.h5", rt=False)
    ck = write_checkpoint(tmp_path / "m.pt", n_classes=0)
    state = make_state(settings, ws, None)
    panel = SimilarityPanel(state)
    _MADE.append(panel)
    qtbot.addWidget(panel)
    state.set_checkpoint(ck)
    state.notify_workspace_changed()
    assert panel.worker.latest_id == 0 and panel.result is None  # nothing encoded while hidden
    panel.show()
    settle(qtbot, panel)
    assert panel.worker.latest_id == 1 and panel.result is not None


def test_identification_shows_every_method(qtbot, panel_env):
    from training.latent import similarity

    settings, ws, ckpt = panel_env
    panel = make_panel(qtbot, make_state(settings, ws, ckpt))
    settle(qtbot, panel)
    panel.slice_a.setValue(0)
    panel.slice_b.setValue(3)
    assert panel.id_level.currentText() == "patient"
    panel.run_identification()
    settle(qtbot, panel)
    rows = panel.id_methods.rows()
    assert [r[0] for r in rows] == list(similarity.METHODS)
    res, comp = panel.identification, panel.comparison
    assert rows[0][1] == f"{comp.scores['kl_directed'].stats()['n_identified']} of {res.n_patients} patients"
    assert comp.scores["kl_directed"].n_identified == res.n_identified  # one KL, two views


def test_distance_experiment_dialog_runs_off_the_gui_thread(qtbot, tmp_path, settings):
    from explorer.qt import Qt

    ws = write_workspace(tmp_path / "ws.h5", rt=False, n_patients=3)
    ckpt = write_checkpoint(tmp_path / "model.pt", n_classes=0)
    panel = make_panel(qtbot, make_state(settings, ws, ckpt))
    settle(qtbot, panel)
    d = panel.open_experiment()
    qtbot.addWidget(d)
    d.extra_model = {"filters": 2, "n_blocks": 2, "fc_units": 8, "latent_dim": 2, "convs_per_block": 1}
    d.extra_train = {"batch_size": 4, "threads": 1}
    d.epochs.setValue(2)
    d.distances.setText("1, 2")
    d.distances.setText("bogus")
    assert not d.start() and "distances" in d.status.text()
    d.distances.setText("1, 2")
    assert d.start()
    assert d.is_running() and not d.run_btn.isEnabled()  # returned at once: the work is on a thread
    qtbot.waitUntil(lambda: not d.is_running(), timeout=60000)
    assert d.report is not None, d.error
    assert d.table.rowCount() == 5 and d.table.columnCount() == 2
    assert (d.out_dir / "identify.svg").exists() and "report.json" in d.status.text()
    assert len(d.report["entries"]) == 3 and not d.report["settings"]["entries"]
    # a chosen set of series (the CLI's --entries): untick one
    assert d.entries.count() == 3
    for i in range(3):
        d.entries.item(i).setCheckState(Qt.CheckState.Unchecked if i else Qt.CheckState.Checked)
    assert not d.start() and "at least 2" in d.status.text()
    d.entries.item(1).setCheckState(Qt.CheckState.Checked)
    assert d.start()
    qtbot.waitUntil(lambda: not d.is_running(), timeout=60000)
    assert d.report is not None, d.error
    assert [e["entry"] for e in d.report["entries"]] == [d.entries.item(0).text(), d.entries.item(1).text()]
    d.entries.item(2).setCheckState(Qt.CheckState.Checked)
    # cancel: a long run stops with "Cancelled" and leaves the dialog usable
    d.epochs.setValue(5000)
    assert d.start()
    qtbot.wait(200)
    d.cancel()
    qtbot.waitUntil(lambda: not d.is_running(), timeout=60000)
    assert "Cancelled" in d.status.text() and d.run_btn.isEnabled()


def test_counts_name_their_unit_with_two_series_of_one_patient(qtbot, tmp_path, settings):
    """4 patients, 5 series (PAT-0001-2 is a second series of PAT-0001): the score says
    patients or series by the level, the message series of patients, the CSV export names
    each row's patient (issue 11)."""
    import csv

    from training.config import PreprocessConfig
    from training.store.workspace import write_arrays_workspace

    imgs, _ = tiny_images(4)
    imgs["PAT-0001-2"] = imgs["PAT-0001"] + 0.01
    pre = PreprocessConfig(crop=None, hu_min=-1000.0, hu_max=1000.0)
    ws = write_arrays_workspace(tmp_path / "ws.h5", imgs, None, preprocess=pre,
                                patients={"PAT-0001-2": "PAT-0001"})
    ckpt = write_checkpoint(tmp_path / "m.pt", n_classes=0)
    panel = make_panel(qtbot, make_state(settings, ws, ckpt))
    settle(qtbot, panel)
    assert "5 series of 4 patients" in panel.message.text()
    panel.slice_a.setValue(0)
    panel.slice_b.setValue(3)
    assert panel.id_level.currentText() == "patient"
    panel.run_identification()
    settle(qtbot, panel)
    res = panel.identification
    assert (res.unit, res.n, res.n_series) == ("patient", 4, 5)
    assert panel.id_score.text() == f"{res.n_identified} of 4 patients identified"
    assert all(r[1].endswith(" of 4 patients") for r in panel.id_methods.rows())
    panel.id_level.setCurrentText("series")
    panel.run_identification()
    settle(qtbot, panel)
    res = panel.identification
    assert panel.id_score.text() == f"{res.n_identified} of 5 series identified"
    assert all(r[1].endswith(" of 5 series") for r in panel.id_methods.rows())
    assert "5 series of 4 patients" in panel.id_detail.text()

    rows = list(csv.reader(panel.export(tmp_path / "kl.csv").read_text().splitlines()))
    assert rows[0][0].startswith("series \\ ") and rows[0][1] == "patient"
    assert {r[0]: r[1] for r in rows[1:]}["PAT-0001-2"] == "PAT-0001"
    np.testing.assert_allclose(np.array([[float(v) for v in r[2:]] for r in rows[1:]]), panel.matrix(),
                               rtol=1e-12)
