"""ct-vae-explorer entry point, settings, panel registry and window basics."""

from __future__ import annotations

import subprocess
import sys

from test_gui_support import data_dir, make_window, tiny_workspace  # noqa: F401


def test_help_lists_options():
    out = subprocess.run([sys.executable, "-m", "explorer.app", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "ct-vae-explorer" in out and "--demo" in out and "WORKSPACE" in out.upper()


def test_user_data_dir_follows_the_environment(data_dir):
    from explorer.settings import AppSettings, default_workspace_path, user_data_dir

    assert user_data_dir() == data_dir and data_dir.is_dir()
    assert default_workspace_path().parent == data_dir
    s = AppSettings()
    s.add_recent_workspace(data_dir / "a.h5")
    s.add_recent_workspace(data_dir / "b.h5")
    s.add_recent_workspace(data_dir / "a.h5")
    s.sync()
    assert (data_dir / "settings.ini").exists()
    assert [p.name for p in AppSettings().recent_workspaces()] == ["a.h5", "b.h5"]


def test_window_opens_empty_workspace_with_tabs(make_window, data_dir):
    w = make_window(None)
    tabs = [w.tabs.tabText(i) for i in range(w.tabs.count())]
    assert tabs[:2] == ["Data", "Train"]
    assert w.state.workspace_path == data_dir / "workspace.h5"
    assert "CT VAE Explorer" in w.windowTitle()
    assert w.patient_list.rowCount() == 0
    assert not w.windowIcon().isNull()
    for act in (w.act_open, w.act_new, w.act_save_model, w.act_load_model, w.act_export, w.act_quit):
        assert not act.shortcut().isEmpty() and act.statusTip()


def test_reopens_last_workspace_and_geometry(make_window, tiny_workspace, qtbot):
    from explorer.app import build_window, parse_args

    w = make_window(tiny_workspace)
    assert w.patient_list.pseudonyms() == ["PAT-0001", "PAT-0002", "PAT-0003"]
    w.resize(760, 530)
    qtbot.wait(50)
    w.close()
    w2 = build_window(parse_args([]))
    qtbot.addWidget(w2)
    try:
        assert w2.state.workspace_path == tiny_workspace
        assert (w2.width(), w2.height()) == (760, 530)
        assert w2.patient_list.rowCount() == 3
    finally:
        w2.close()


def test_extra_panels_register_and_receive_state(make_window, tiny_workspace):
    from explorer.panels import Panel, _EXTRA, panel_classes, register_panel

    seen = []

    class Probe(Panel):
        title = "Probe"

        def on_workspace_changed(self):
            seen.append(("ws", self.state.workspace_path))

        def on_patient_selected(self, pseudonym):
            seen.append(("patient", pseudonym))

        def on_checkpoint_changed(self, path):
            seen.append(("ckpt", path))

    register_panel(Probe)
    try:
        assert panel_classes()[-1] is Probe
        w = make_window(tiny_workspace)
        assert w.tabs.tabText(w.tabs.count() - 1) == "Probe"
        w.patient_list.select("PAT-0002")
        w.state.set_checkpoint(tiny_workspace.with_suffix(".pt"))
        assert ("ws", tiny_workspace) in seen
        assert ("patient", "PAT-0002") in seen
        assert ("ckpt", str(tiny_workspace.with_suffix(".pt"))) in seen
    finally:
        _EXTRA.remove(Probe)


def test_loading_a_bad_model_is_a_message(make_window, data_dir):
    w = make_window(None)
    bad = data_dir / "not-a-model.pt"
    bad.write_bytes(b"garbage")
    assert not w.load_model(bad)
    assert "not-a-model.pt" in w.statusBar().currentMessage()
    assert w.state.checkpoint_path is None


def test_errors_read_as_one_line():
    import errno

    from explorer.workers import _humanise_training_error, describe_result, readable_error
    from training.config import ConfigError
    from training.store.ingest import IngestReport

    full = OSError(errno.ENOSPC, "No space left on device", "/data/w.h5")
    assert readable_error(full).startswith("The disk is full") and "/data/w.h5" in readable_error(full)
    assert readable_error(ConfigError("lr must be > 0")) == "lr must be > 0"
    assert readable_error(ValueError("bad")) == "ValueError: bad"
    msg = _humanise_training_error("training failed: CheckpointError: x.pt: cannot write checkpoint "
                                   "([Errno 28] No space left on device)")
    assert msg.startswith("The disk is full")
    report = IngestReport(added=["PAT-0001"], unchanged=["PAT-0002"], skipped=[("a.txt", "not DICOM")],
                          rois_missing={"Heart": ["PAT-0001"]})
    text = describe_result(report)
    assert "1 series added" in text and "1 unchanged" in text and "1 file(s) skipped" in text
    assert "Heart in 1 series" in text and "\n" not in text
