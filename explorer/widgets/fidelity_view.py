"""The selected entry's per-ROI rasterisation fidelity report (computed by the core at
ingest: training.dicom.fidelity), as a table with a CSV export."""

from __future__ import annotations

from explorer.qt import QtWidgets

COLUMNS = ("ROI", "contours", "duplicates collapsed", "holes", "overlaps united", "XOR",
           "skipped", "frame", "mask", "max area difference", "structure set")


class FidelityView(QtWidgets.QWidget):
    """Title line (entry and contour rule) and one row per ROI."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QtWidgets.QLabel()
        self.title.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.setToolTip(
            "How each ROI's contours became its mask: contours read, duplicated outlines counted "
            "once, holes, overlapping outlines united, contours skipped and why, and the largest "
            "per-slice difference between mask area and polygon area (slices of ≥ 200 pixels)")
        self.table.setMinimumHeight(60)
        self.export = QtWidgets.QToolButton()
        self.export.setText("CSV…")
        self.export.setToolTip("Save this table as CSV")
        self.export.clicked.connect(self._export)
        head = QtWidgets.QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.export)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 4, 0, 0)
        lay.addLayout(head)
        lay.addWidget(self.table)
        self.pseudonym = ""
        self.show_report(None, None)

    def show_report(self, pseudonym: str | None, report: dict | None, recorded: bool = False) -> None:
        """report None: 'not recorded' for an entry (recorded=False), or nothing selected."""
        from training.dicom.fidelity import NOT_RECORDED, roi_rows

        self.pseudonym = pseudonym or ""
        rows = roi_rows(report)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(COLUMNS):
                item = QtWidgets.QTableWidgetItem(row.get(key, ""))
                item.setToolTip(f"{key}: {row.get(key, '')}")
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self.export.setEnabled(bool(rows))
        if not pseudonym:
            text = "<b>RT structure fidelity</b>: select a patient"
        elif report is None:
            text = f"<b>RT structure fidelity</b> of {pseudonym}: {NOT_RECORDED}"
        elif not rows and not report.get("failed"):
            text = f"<b>RT structure fidelity</b> of {pseudonym}: no RT structure set"
        else:
            failed = "; ".join(f"{f['structure_set']}: not used ({f['reason']})"
                               for f in report.get("failed", []))
            text = (f"<b>RT structure fidelity</b> of {pseudonym}<br>"
                    f"<small>rule: {report.get('rule', '?')}</small>"
                    + (f"<br>{failed}" if failed else ""))
        self.title.setText(text)

    def load(self, state, pseudonym: str | None) -> None:
        """Read the report of `pseudonym` from the app state's workspace (one attribute)."""
        if not pseudonym or not state.has_workspace_data():
            self.show_report(None, None)
            return
        try:
            with state.open_workspace() as ws:
                report = ws.fidelity(ws.patient_index(pseudonym))
        except Exception as exc:  # a vanished entry or an unreadable file: say so, never crash
            self.show_report(None, None)
            self.title.setText(f"<b>RT structure fidelity</b> of {pseudonym}: cannot be read ({exc})")
            return
        self.show_report(pseudonym, report)

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """(header, rows) as shown (figures.Table form)."""
        out = []
        for r in range(self.table.rowCount()):
            out.append([self.table.item(r, c).text() for c in range(self.table.columnCount())])
        return list(COLUMNS), out

    def _export(self) -> None:
        from explorer.figures import export_csv

        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, "Save fidelity table", f"{self.pseudonym or 'fidelity'}-fidelity.csv", "CSV (*.csv)")
        if path:
            export_csv(self.rows(), path)
