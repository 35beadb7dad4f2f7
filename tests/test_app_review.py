"""Window-level review checks: File ▸ Export formats, error paths through the real menu
code, LatestWorker cleanup when its owner is destroyed."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_gui_support import data_dir, make_window, tiny_workspace  # noqa: F401


def _answer_save_dialog(monkeypatch, path: Path, chosen: str = ""):
    from explorer.qt import QtWidgets

    seen = {}

    def fake(parent, caption, directory, filters, *a, **k):
        seen["filters"] = filters
        return str(path), chosen

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", staticmethod(fake))
    return seen


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_export_dialog_writes_every_tab_in_each_image_format(make_window, tiny_workspace, tmp_path,
                                                             monkeypatch, fmt):
    w = make_window(tiny_workspace)
    messages = []
    w.state.statusMessage.connect(lambda text, ms: messages.append(text))
    magic = {"svg": b"<svg", "pdf": b"%PDF", "png": b"\x89PNG"}[fmt]
    for i in range(w.tabs.count()):
        w.tabs.setCurrentIndex(i)
        out = tmp_path / f"tab{i}.{fmt}"
        seen = _answer_save_dialog(monkeypatch, out)
        w.export_dialog()
        assert "SVG" in seen["filters"] and "PDF" in seen["filters"]
        assert messages[-1] == f"Exported {out}", (w.tabs.tabText(i), messages[-1])
        assert magic in out.read_bytes()[:4096], w.tabs.tabText(i)


def test_export_adds_the_chosen_filters_suffix():
    from explorer.main_window import with_export_suffix

    assert with_export_suffix("/x/fig", "SVG vector image (*.svg)") == "/x/fig.svg"
    assert with_export_suffix("/x/fig.pdf", "PNG image (*.png)") == "/x/fig.pdf"
    assert with_export_suffix("/x/fig", "") == "/x/fig.png"


def test_latest_worker_stops_when_its_parent_is_destroyed(qtbot):
    import time

    from explorer.qt import QtCore, QtWidgets
    from explorer.widgets.latest_worker import LatestWorker

    parent = QtWidgets.QWidget()
    worker = LatestWorker(parent)
    got = []
    worker.resultReady.connect(lambda rid, value: got.append(value))
    worker.submit(time.sleep, 0.2)
    thread = worker._thread
    assert thread is not None and thread.isRunning()
    parent.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    assert thread.isFinished()  # stopped (after the running call) while the parent died
    assert worker.submit(time.sleep, 0) == -1
    qtbot.wait(50)
    assert got == []
