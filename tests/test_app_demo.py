"""--demo: phantom cohort → ingest → a small model trained in the background; a second
--demo reuses the cohort, the workspace and the model."""

from __future__ import annotations

import pytest

from test_gui_support import _one_torch_thread, data_dir, wait_until  # noqa: F401

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def tiny_demo(monkeypatch):
    from explorer import demo

    monkeypatch.setattr(demo, "N_PATIENTS", 3)
    monkeypatch.setattr(demo, "SLICES", 8)
    monkeypatch.setattr(demo, "SIZE", 32)
    monkeypatch.setattr(demo, "MODEL", dict(demo.MODEL, n_blocks=2, filters=4, fc_units=16))
    monkeypatch.setattr(demo, "TRAIN", dict(demo.TRAIN, epochs=2, n_recon_examples=3, threads=1))
    return demo


def _run_demo(qtbot):
    from explorer.app import build_window, parse_args

    w = build_window(parse_args(["--demo"]))
    w.setProperty("quiet", True)
    qtbot.addWidget(w)
    return w


def test_demo_builds_then_reuses(tiny_demo, data_dir, qtbot, monkeypatch):
    w = _run_demo(qtbot)
    train = w.panel("Train")
    wait_until(qtbot, lambda: w.job is None and train.worker is not None, 180, "the demo to start training")
    assert w.state.workspace_path == tiny_demo.demo_workspace()
    assert len(w.patient_list.pseudonyms()) == 3
    assert w.skipped.entries() == []
    wait_until(qtbot, lambda: not train.is_training(), 180, "the demo training")
    wait_until(qtbot, lambda: train.history.snapshots, 5, "reconstructions")
    assert train.plot.points("train", "total") == 2
    assert w.state.checkpoint_path == tiny_demo.demo_run_dir() / "last.pt"
    w.close()

    import training.dicom.phantom

    def no_regeneration(*a, **k):
        raise AssertionError("the second --demo regenerated the cohort")

    monkeypatch.setattr(training.dicom.phantom, "generate_cohort", no_regeneration)
    w2 = _run_demo(qtbot)
    wait_until(qtbot, lambda: w2.state.checkpoint_path is not None, 120, "the demo model to load")
    assert w2.panel("Train").worker is None, "a finished demo model was trained again"
    assert "3 unchanged" in (w2.job_progress.label.text() + w2.statusBar().currentMessage()) or \
        len(w2.patient_list.pseudonyms()) == 3
    w2.close()
