"""The one place explorer/ imports Qt and configures pyqtgraph.

pyqtgraph's ImageItem reads arrays as (x, y) by default; the whole explorer passes
images as stored, rows top→bottom (anterior at the top) and columns left→right (the
patient's left on the image's right), so row-major order is set here, once, before any
ImageItem exists.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtSvg, QtWidgets  # noqa: F401
from PySide6.QtCore import QObject, QSettings, Qt, QThread, QTimer, Signal, Slot  # noqa: F401

import pyqtgraph as pg

# antialias off: antialiased curves cost most of a redraw in software rendering and a
# redraw every epoch must stay well under the 50 ms the event loop may be late.
pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, background="w", foreground="k")

__all__ = [
    "QtCore", "QtGui", "QtSvg", "QtWidgets", "QObject", "QSettings", "Qt", "QThread",
    "QTimer", "Signal", "Slot", "pg",
]
