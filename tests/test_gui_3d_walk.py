"""3D volume mode end to end on the main window: a phantom cohort dropped with 3D (16³)
chosen on the Data tab, a tiny 3D model trained from the Train tab, then every tab visited:
each shows images or plots for the 3D model, no label carries an error, no message box
opens; the Volume tab steps through the depth slices with their z in mm, and the current
3D view exports as PNG (File ▸ Export current view…)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from test_gui_support import (  # noqa: F401 (fixtures)
    _one_torch_thread, data_dir, drop_paths, make_window, small_training, wait_until,
)

pytestmark = pytest.mark.timeout(180)

N_PATIENTS, SLICES, SIZE, PIXEL_MM, THICK_MM = 4, 16, 48, 1.5, 3.0
CUBE = 16
ROIS = ("Heart", "Lung-Left")  # the order the Data tab lists them (priority)
BAD_TEXT = re.compile(r"Traceback|Exception|Error\b|[Ee]rror:|Could not|Cannot|failed|cannot", re.UNICODE)
TABS = ["Data", "Train", "Manifold", "Interpolation", "Samples", "Density", "Volume", "Similarity", "Query"]


@pytest.fixture(scope="module")
def phantom_3d(tmp_path_factory):
    """4 phantom patients × 16 slices of 48² (1.5 mm pixels, 3 mm slices), and a second
    series of patient 2 as a query folder."""
    from training.dicom.phantom import generate_cohort, write_rescan

    root = tmp_path_factory.mktemp("walk3d")
    generate_cohort(root / "cohort", N_PATIENTS, slices=SLICES, size=SIZE, seed=1, fsync=False,
                    pixel_spacing=PIXEL_MM, slice_thickness=THICK_MM)
    write_rescan(root / "query", 1, seed=1, slices=SLICES, size=SIZE, pixel_spacing=PIXEL_MM,
                 slice_thickness=THICK_MM, fsync=False)
    return root


@pytest.fixture
def boxes(monkeypatch):
    """Every QMessageBox that would open, recorded instead (none may open in the walk)."""
    from explorer.qt import QtWidgets

    calls: list[tuple] = []
    box = QtWidgets.QMessageBox
    for name in ("warning", "critical", "information", "question", "about"):
        monkeypatch.setattr(box, name, staticmethod(lambda *a, _n=name, **k: calls.append((_n, a[2:] or a))
                                                    or box.StandardButton.Ok))
    monkeypatch.setattr(box, "exec", lambda self, *a: calls.append(("exec", self.text())) or 0)
    return calls


def _image_items(panel):
    """pyqtgraph ImageItems with an image, in every plot widget of `panel`."""
    import pyqtgraph as pg

    found = []
    for view in panel.findChildren(pg.GraphicsView):
        for item in view.scene().items():
            if isinstance(item, pg.ImageItem) and item.image is not None and item.image.size:
                found.append(item)
    return found


def _plot_items(panel):
    import pyqtgraph as pg

    found = []
    for view in panel.findChildren(pg.GraphicsView):
        for item in view.scene().items():
            if isinstance(item, (pg.PlotDataItem, pg.ScatterPlotItem)) and item.isVisible():
                data = item.getData() if hasattr(item, "getData") else (None,)
                if data[0] is not None and len(data[0]):
                    found.append(item)
    return found


def _bad_labels(window, panel) -> list[str]:
    from explorer.qt import QtWidgets

    return [lab.text()[:200] for lab in panel.findChildren(QtWidgets.QLabel)
            if lab.isVisibleTo(window) and BAD_TEXT.search(lab.text())]


def _settle(qtbot, panel, ms: int = 150) -> None:
    qtbot.wait(ms)
    wait = getattr(panel, "wait_idle", None)
    if wait is not None:
        assert wait(60_000), f"{panel.title}: its worker did not finish"
    qtbot.wait(ms)


def _choose_3d_on_data_tab(w):
    """The Data tab's form, as a user fills it before the first drop: native 1.5 mm pixels,
    the 72 mm field of view, resize to 16 px, 3D volumes of depth 16."""
    data = w.panel("Data")
    w.tabs.setCurrentWidget(data)
    data.scale.spacing.setValue(PIXEL_MM)
    data.scale.fov.setValue(SIZE * PIXEL_MM)
    data.size.setValue(CUBE)
    assert not data.depth.isEnabled()
    data.mode3d.click()
    assert data.depth.isEnabled()
    data.depth.setValue(CUBE)
    assert data.error.text() == "", data.error.text()
    cfg = w.state.preprocess
    assert (cfg.mode, cfg.depth, cfg.size, cfg.fov, cfg.spacing) == ("3d", CUBE, CUBE, SIZE * PIXEL_MM, PIXEL_MM)
    return data


def test_3d_walk_drop_train_every_tab_volume_export(make_window, phantom_3d, data_dir, qtbot, boxes,
                                                      monkeypatch, tmp_path, caplog):
    from explorer.qt import QtGui, Qt, QtWidgets
    from training.store.workspace import Workspace

    w = make_window(data_dir / "walk3d.h5")
    w.setProperty("quiet", False)  # error boxes would open: `boxes` records them
    w.resize(1320, 820)
    messages: list[str] = []
    w.state.statusMessage.connect(lambda text, _ms: messages.append(text))
    assert [w.tabs.tabText(i) for i in range(w.tabs.count())] == TABS

    # -- Data tab: 3D, then a real drop of the cohort
    _choose_3d_on_data_tab(w)
    drop_paths(w, [phantom_3d / "cohort"])
    assert w.job is not None, "the drop did not start an ingest"
    wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the ingest")
    assert len(w.patient_list.pseudonyms()) == N_PATIENTS
    with Workspace.open(w.state.workspace_path) as ws:
        assert ws.preprocess.mode == "3d" and ws.image_shape == (CUBE, CUBE, CUBE)
        assert ws.n_images == N_PATIENTS  # one volume per patient
    data = w.panel("Data")
    _settle(qtbot, data)
    assert "16 × 16 × 16" in data.summary.text()

    # the ROIs found are listed unchecked: tick two, Apply re-derives the volumes with labels
    items = {data.rois.item(i).text(): data.rois.item(i) for i in range(data.rois.count())}
    assert set(ROIS) <= set(items), list(items)
    for name in ROIS:
        items[name].setCheckState(Qt.CheckState.Checked)
    assert w.state.preprocess.rois == ROIS and w.state.preprocess.mode == "3d"
    assert data.apply.isEnabled(), data.error.text()
    data.apply.click()
    assert w.job is not None, "Apply did not start the re-derive"
    wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the re-derive")
    with Workspace.open(w.state.workspace_path) as ws:
        assert ws.preprocess.rois == ROIS and ws.preprocess.mode == "3d"
        assert ws.image_shape == (CUBE, CUBE, CUBE) and ws.n_images == N_PATIENTS
        images, labels = ws.read_patient(0)
        assert labels is not None and labels.shape[-3:] == images.shape[-3:] == (CUBE, CUBE, CUBE)
        assert set(np.unique(labels)) == {0, 1, 2}, np.unique(labels)  # both ROIs in the cube

    # a patient picked in the list: the Data tab previews its volume's depth slices
    shown = data.preview_count
    w.patient_list.selectRow(0)
    assert w.state.selected_patient == "PAT-0001"
    wait_until(qtbot, lambda: data.preview_count > shown, timeout_s=30, what="the preview")
    assert f"{CUBE} slices of {CUBE} × {CUBE} px" in data.preview.caption.text(), data.preview.caption.text()

    # -- Train tab: a tiny 3D model, 3 epochs, started with the Start button
    train = w.panel("Train")
    w.tabs.setCurrentWidget(train)
    qtbot.wait(50)
    small_training(train, epochs=3)
    train.set_values({"batch_size": 2})
    model_cfg, _ = train.configs()
    assert (model_cfg.spatial_dims, model_cfg.input_size, model_cfg.n_classes) == (3, CUBE, len(ROIS) + 1)
    assert train.start_btn.isEnabled(), train.error.text()
    train.start_btn.click()
    assert train.is_training()
    wait_until(qtbot, lambda: not train.is_training(), timeout_s=120, what="the training")
    assert "finished" in train.last_message.lower(), train.last_message
    assert w.state.checkpoint_path is not None and w.state.checkpoint_path.exists()
    assert train.plot.points("train", "total") == 3

    # -- every tab
    for i, name in enumerate(TABS):
        panel = w.tabs.widget(i)
        w.tabs.setCurrentIndex(i)
        _settle(qtbot, panel)
        if name == "Query":  # a second series of PAT-0002 dropped on the tab: a query
            drop_paths(w, [phantom_3d / "query"])
            assert w.job is not None, "the query drop did not start its ingest"
            wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the query ingest")
            wait_until(qtbot, lambda: panel.answer is not None or panel.error, timeout_s=120, what="the answer")
            _settle(qtbot, panel)
            assert panel.error == "", panel.error
            assert panel.answer.spatial_dims == 3
            pics = panel.grid_host.findChildren(QtWidgets.QLabel, "query-image")
            assert pics and all(not p.pixmap().isNull() for p in pics)
            assert any(p.text().startswith("depth ") for p in panel.grid_host.findChildren(QtWidgets.QLabel))
            assert panel.table.rowCount() == N_PATIENTS
            same = [r for r in range(N_PATIENTS) if "same patient" in panel.table.item(r, 2).text()]
            assert [panel.table.item(r, 1).text() for r in same] == ["PAT-0002"]  # its own other series
            assert panel.volumes.rowCount() > 0  # ROI volumes in cm³ from the stored masks
        elif name == "Data":  # the selected patient's volume, previewed depth slice by slice
            assert _image_items(panel), "Data: no preview"
        elif name == "Train":  # loss curves and a reconstruction snapshot of the 3D model
            assert _plot_items(panel) and _image_items(panel), "Train: no curves or snapshot"
        elif name in ("Manifold", "Interpolation", "Samples", "Density"):
            assert panel.refreshes >= 1, f"{name}: nothing shown ({panel.status.text()})"
            assert _image_items(panel), f"{name}: no image"
            if name == "Interpolation":  # the t slider decodes whole 3D volumes
                panel.slider.setValue(panel.slider.maximum())
                _settle(qtbot, panel)
                wait_until(qtbot, lambda: panel.t_label.text().startswith("t = 1.000"), 10, "t = 1")
                assert np.asarray(panel.current_image).shape[-3:] == (CUBE, CUBE, CUBE)
        elif name == "Similarity":
            assert panel.error == "" and panel.result is not None, panel.error
            assert _image_items(panel) or _plot_items(panel), "Similarity: no matrix"
        elif name == "Volume":
            assert panel.error == "" and panel.pair is not None, panel.error
            assert panel.mode == "3d" and "3D workspace" in panel.note.text()
            assert panel.pair.left.labels is not None and panel.pair.right.labels is not None
            assert panel.stacks.left.overlay_item.isVisible()
        bad = _bad_labels(w, panel)
        assert not bad, f"{name}: {bad}"
        grab = panel.grab().toImage()
        assert not grab.isNull() and grab.width() > 100

    # -- Volume tab: the slider walks the cube's depth, z in mm on each slice
    vol = w.panel("Volume")
    w.tabs.setCurrentWidget(vol)
    _settle(qtbot, vol)
    stacks = vol.stacks
    assert stacks.n_slices == CUBE
    assert vol.pair.left.images.shape == vol.pair.right.images.shape == (CUBE, CUBE, CUBE)
    zs, lefts = [], []
    for k in range(CUBE):
        stacks.slider.setValue(k)
        text = stacks.slice_label.text()
        m = re.fullmatch(rf"slice {k + 1} / {CUBE} · z = (-?[\d.]+|−[\d.]+) mm", text)
        assert m, text
        zs.append(float(m.group(1).replace("−", "-")))
        lefts.append(np.array(stacks.left.image_item.image))
        np.testing.assert_allclose(stacks.right.image_item.image, vol.pair.right.hu()[k], atol=1e-3)
    steps = np.diff(zs)
    assert np.all(steps > 0), zs  # inferior → superior
    # 16 source slices 3 mm apart resampled to 16 depth slices: the same 45 mm span
    assert zs[-1] - zs[0] == pytest.approx((SLICES - 1) * THICK_MM, abs=0.5), zs
    assert not all(np.array_equal(lefts[0], a) for a in lefts[1:]), "every depth slice looks the same"

    # -- File ▸ Export current view… on the Volume tab: PNG of both sides
    out = tmp_path / "exports" / "volume3d.png"
    out.parent.mkdir()
    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(out), "PNG image (*.png)")))
    w.act_export.trigger()
    qtbot.wait(50)
    for path in (out, out.with_name("volume3d-input.png")):
        img = QtGui.QImage(str(path))
        assert not img.isNull() and img.width() > 50, path
        grey = {img.pixelColor(x, y).lightness() for x in range(0, img.width(), 4) for y in range(0, img.height(), 4)}
        assert len(grey) > 8, f"{path.name} is nearly uniform"
    assert any(m.startswith("Exported") for m in messages), messages[-5:]

    # -- nothing went wrong along the way
    assert boxes == [], boxes
    bad = [m for m in messages if BAD_TEXT.search(m)]
    assert not bad, bad
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert not logged, logged  # e.g. "showing a result failed", "could not encode"
