"""Window-level details: the drop overlay floats over the layout, the Help menu (shortcuts,
a guide to each tab, versions), the status bar's workspace label."""

from __future__ import annotations

import pytest

from test_gui_support import _one_torch_thread, data_dir, drop_paths, make_window  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)


def test_drop_overlay_covers_the_window_without_reflowing_it(make_window, data_dir, qtbot):
    from explorer.qt import QtCore, QtGui, QtWidgets, Qt

    w = make_window(data_dir / "w.h5")
    sections = w.splitter.count()
    sizes = w.splitter.sizes()
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(data_dir))])
    enter = QtGui.QDragEnterEvent(w.splitter.rect().center(), Qt.DropAction.CopyAction, mime,
                                  Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(w.patient_list.viewport(), enter)
    assert w.drop_overlay.isVisible()
    assert w.splitter.count() == sections == 2, "the overlay became a splitter column"
    assert w.splitter.sizes() == sizes
    top_left = w.splitter.mapTo(w, QtCore.QPoint(0, 0))
    assert w.drop_overlay.geometry() == QtCore.QRect(top_left, w.splitter.size())
    QtWidgets.QApplication.sendEvent(w.patient_list.viewport(), QtGui.QDragLeaveEvent())
    assert not w.drop_overlay.isVisible()


def test_help_menu_lists_shortcuts_tabs_and_versions(make_window, data_dir):
    from explorer import help as help_text

    w = make_window(data_dir / "w.h5")
    keys = dict(help_text.shortcuts(w))
    assert keys.get("Ctrl+O", "").startswith("Open workspace")
    assert "Start" in keys.get("Ctrl+Return", "") and "Train tab" in keys["Ctrl+Return"]
    assert "Mouse wheel" in keys
    guide = help_text.guide_html(w)
    for i in range(w.tabs.count()):
        assert f"<b>{w.tabs.tabText(i)}</b>" in guide
    versions = dict(help_text.versions())
    assert {"ct-vae-explorer", "PySide6", "pyqtgraph", "torch"} <= set(versions)
    from explorer.qt import QtWidgets

    dialog = w.show_shortcuts()
    assert "Ctrl+O" in dialog.findChild(QtWidgets.QTextBrowser).toPlainText()
    dialog.close()


def test_status_bar_shows_the_workspace_name_apart(make_window, data_dir):
    w = make_window(data_dir / "some-long-folder-name" / "cohort.h5")
    assert w.workspace_label.text() == "Workspace: cohort.h5"
    assert str(data_dir / "some-long-folder-name" / "cohort.h5") in w.workspace_label.toolTip()


def test_warm_imports_runs_off_the_gui_thread_and_ignores_failures():
    import threading

    from explorer.app import WARM_MODULES, warm_imports

    assert "pydicom" in WARM_MODULES and "training.store.ingest" in WARM_MODULES
    thread = warm_imports(("json", "no_such_module_i14"))
    assert thread is not threading.current_thread() and thread.daemon
    thread.join(30)
    assert not thread.is_alive()


def test_a_cancelled_ingest_says_so_first():
    from explorer.workers import describe_result
    from training.store.ingest import IngestReport

    text = describe_result(IngestReport(added=["PAT-0001"], cancelled=True))
    assert text.startswith("Ingest cancelled: ") and "1 series added" in text and "finished" not in text
    assert describe_result(IngestReport(cancelled=True)).startswith("Ingest cancelled")
