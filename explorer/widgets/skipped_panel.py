"""Every file an ingest could not use, with its one-line reason."""

from __future__ import annotations

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
        self.table.setToolTip("Files the last ingest could not use; everything usable was kept")
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
        row = self.table.rowCount()
        self.table.insertRow(row)
        name = QtWidgets.QTableWidgetItem(Path(path).name or str(path))
        name.setToolTip(str(path))
        name.setData(Qt.ItemDataRole.UserRole, str(path))
        why = QtWidgets.QTableWidgetItem(str(reason))
        why.setToolTip(f"{path}\n{reason}")
        self.table.setItem(row, 0, name)
        self.table.setItem(row, 1, why)
        self._update_title()

    def entries(self) -> list[tuple[str, str]]:
        return [(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole), self.table.item(r, 1).text())
                for r in range(self.table.rowCount())]

    def clear(self) -> None:
        self.table.setRowCount(0)
        self._update_title()

    def _update_title(self) -> None:
        n = self.table.rowCount()
        self.title.setText("<b>Skipped files</b>: none" if n == 0 else f"<b>Skipped files</b>: {n}")
