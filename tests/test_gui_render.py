"""The PySide6 pin's guard: 6.12.0 + pyqtgraph 0.14 aborted after a few thousand
ImageItem.setImage + render calls (DESIGN.md). 5,000 frames must run to the end."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.timeout(300)
def test_5000_imageitem_renders_do_not_abort(qtbot):
    from explorer.qt import QtGui, QtWidgets, pg

    win = pg.GraphicsLayoutWidget()
    qtbot.addWidget(win)
    win.resize(200, 200)
    win.show()
    view = win.addViewBox(lockAspect=True, invertY=True)
    item = pg.ImageItem()
    view.addItem(item)
    frames = np.random.default_rng(0).random((16, 32, 32), dtype=np.float32)
    target = QtGui.QImage(64, 64, QtGui.QImage.Format.Format_ARGB32)
    for i in range(5000):
        item.setImage(frames[i % 16], levels=(0.0, 1.0), autoLevels=False)
        if i % 10 == 0:
            painter = QtGui.QPainter(target)
            win.render(painter)
            painter.end()
        else:
            win.viewport().repaint()
        if i % 50 == 0:
            QtWidgets.QApplication.processEvents()
    assert item.image is not None and item.image.shape == (32, 32)
