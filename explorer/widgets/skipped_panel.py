"""Every file an ingest could not use, with its one-line reason.

Paths are relative to the dropped folder (as training.store.ingest reports and the
workspace stores them); one row per file, so a re-drop updates a row rather than adding
a second one. The window fills the list from the workspace when it is opened.
"""

from __future__ import annotations

import html
from pathlib import Path

from explorer.qt import Qt, QtWidgets


class SkippedFiles(QtWidgets.QWidget):
    """A titled table of (file, reason); the title counts them."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QtWidgets.QLabel()
        self.table = QtWidgets.QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["File", "Reason"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setColumnWidth(0, 180)
        self.table.setWordWrap(False)
        # the file name and the start of the reason both matter: cut long text in the middle
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setToolTip("Files an ingest into this workspace could not use (path relative to the "
                              "dropped folder); everything usable was kept. Hover a row for its whole reason")
        self._rows: dict[str, int] = {}
        clear = QtWidgets.QToolButton()
        clear.setText("Clear")
        clear.setToolTip("Forget this list")
        clear.clicked.connect(self.clear)
        head = QtWidgets.QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(clear)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 4, 0, 0)
        lay.addLayout(head)
        lay.addWidget(self.table)
        self._update_title()

    def add(self, path: str | Path, reason: str) -> None:
        """List `path` (relative to the dropped folder) with its reason; a path already
        listed gets the new reason instead of a second row."""
        key = str(path)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = self.table.rowCount()
            self.table.insertRow(row)
        name = QtWidgets.QTableWidgetItem(key)
        name.setData(Qt.ItemDataRole.UserRole, key)
        why = QtWidgets.QTableWidgetItem(str(reason))
        # rich text: Qt wraps it, so a long reason is read whole
        tip = f"<p><b>{html.escape(key)}</b></p><p>{html.escape(str(reason))}</p>"
        name.setToolTip(tip)
        why.setToolTip(tip)
        self.table.setItem(row, 0, name)
        self.table.setItem(row, 1, why)
        self._update_title()

    def set_entries(self, rows) -> None:
        """Replace the list by (path, reason) rows (a workspace's record)."""
        self.clear()
        self.add_entries(rows)

    def add_entries(self, rows) -> None:
        self.table.setUpdatesEnabled(False)
        try:
            for path, reason in rows:
                self.add(path, reason)
        finally:
            self.table.setUpdatesEnabled(True)

    def entries(self) -> list[tuple[str, str]]:
        return [(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole), self.table.item(r, 1).text())
                for r in range(self.table.rowCount())]

    def count(self) -> int:
        return self.table.rowCount()

    def clear(self) -> None:
        self._rows = {}
        self.table.setRowCount(0)
        self._update_title()

    def _update_title(self) -> None:
        n = self.table.rowCount()
        self.title.setText("<b>Skipped files</b>: none" if n == 0 else f"<b>Skipped files</b>: {n}")
