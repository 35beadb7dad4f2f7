"""Folder/file drops: which local paths a drag carries, and the hint shown while dragging."""

from __future__ import annotations

from pathlib import Path

from explorer.qt import Qt, QtCore, QtGui, QtWidgets


def local_paths(mime: QtCore.QMimeData | None) -> list[Path]:
    """Local files and folders in a drag's URLs (remote URLs are ignored)."""
    if mime is None or not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile() and u.toLocalFile()]


class DropOverlay(QtWidgets.QWidget):
    """A translucent banner over `cover` (default: its parent) while files are dragged
    over the window; it floats above the layout and never takes part in it.

    Give a QSplitter as `cover`, not as the parent: a splitter takes every child widget
    as a new section, which made the overlay a column that reflowed the window."""

    def __init__(self, parent: QtWidgets.QWidget, cover: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.cover = cover or parent
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.text = "Drop DICOM folders or files to add them to the workspace"
        self.hide()
        self.cover.installEventFilter(self)

    def _place(self) -> None:
        if self.cover is self.parent():
            self.setGeometry(self.parent().rect())
        else:
            top_left = self.cover.mapTo(self.parent(), QtCore.QPoint(0, 0))
            self.setGeometry(QtCore.QRect(top_left, self.cover.size()))

    def eventFilter(self, obj, event) -> bool:  # keep covering it when it moves or resizes
        if obj is self.cover and event.type() in (QtCore.QEvent.Type.Resize, QtCore.QEvent.Type.Move):
            self._place()
        return False

    def show_for(self, n_paths: int) -> None:
        self.text = f"Drop {n_paths} item{'s' if n_paths != 1 else ''} to add to the workspace"
        self._place()
        self.raise_()
        self.show()
        self.update()

    def paintEvent(self, event) -> None:
        p = QtGui.QPainter(self)
        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QtGui.QColor(30, 90, 160, 60))
        pen = QtGui.QPen(QtGui.QColor(30, 90, 160), 3, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawRoundedRect(self.rect().adjusted(8, 8, -8, -8), 12, 12)
        font = p.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        p.setFont(font)
        p.setPen(QtGui.QColor(20, 60, 120))
        p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.text)
