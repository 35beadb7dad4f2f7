"""The workspace's patients: thumbnail, pseudonym, split, slice count, spacing, ROIs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from explorer.qt import Qt, QtGui, QtWidgets, Signal

THUMB = 48
COLUMNS = ["Series", "Split", "Images", "Spacing (mm)", "ROIs"]  # a row per CT series


@dataclass
class PatientRow:
    """What the list shows of one patient. spacing is (z, y, x) in mm; thumbnail in [0, 1]."""

    pseudonym: str
    n_images: int = 0
    spacing: tuple[float, ...] | None = None
    rois: tuple[str, ...] = field(default_factory=tuple)
    split: str = ""
    thumbnail: np.ndarray | None = None


def thumbnail_icon(image: np.ndarray, size: int = THUMB) -> QtGui.QIcon:
    """A grey icon of a 2-D image in [0, 1] (rows top→bottom, as stored)."""
    a = np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0.0, 1.0)
    a8 = np.ascontiguousarray((a * 255).astype(np.uint8))
    h, w = a8.shape
    qimg = QtGui.QImage(a8.data, w, h, w, QtGui.QImage.Format.Format_Grayscale8).copy()
    pix = QtGui.QPixmap.fromImage(qimg).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    return QtGui.QIcon(pix)


def format_spacing(spacing) -> str:
    if spacing is None:
        return "–"
    return " × ".join(f"{float(s):.2g}" for s in spacing)


class PatientList(QtWidgets.QTableWidget):
    """One row per patient, keyed by pseudonym. Emits patientClicked(pseudonym)."""

    patientClicked = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setIconSize(QtGui.QPixmap(THUMB, THUMB).size())
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(THUMB + 6)
        self.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSortingEnabled(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.setToolTip("CT series in the workspace, one row each, named by the patient's pseudonym "
                        "(PAT-0001-2 is a second series of PAT-0001). Drop DICOM folders to add more.")
        self._rows: dict[str, int] = {}
        self.itemSelectionChanged.connect(self._selection_changed)

    def pseudonyms(self) -> list[str]:
        return list(self._rows)

    def icons(self) -> dict[str, QtGui.QIcon]:
        """The thumbnails already shown, by pseudonym."""
        return {name: item.icon() for name, row in self._rows.items()
                if (item := self.item(row, 0)) is not None and not item.icon().isNull()}

    def set_thumbnail(self, pseudonym: str, image: np.ndarray) -> bool:
        """Give a listed patient its thumbnail (read later, off the GUI thread)."""
        row = self._rows.get(pseudonym)
        item = None if row is None else self.item(row, 0)
        if item is None:
            return False
        item.setIcon(thumbnail_icon(image))
        return True

    def clear_patients(self) -> None:
        self.setRowCount(0)
        self._rows = {}
        self.viewport().update()

    def upsert(self, p: PatientRow, icon: QtGui.QIcon | None = None) -> None:
        """Add the patient, or update its row when the pseudonym is already listed.

        icon: a thumbnail already made (kept when the list is rebuilt in another order)."""
        row = self._rows.get(p.pseudonym)
        if row is None:
            row = self.rowCount()
            self.insertRow(row)
            self._rows[p.pseudonym] = row
        name = QtWidgets.QTableWidgetItem(p.pseudonym)
        name.setData(Qt.ItemDataRole.UserRole, p.pseudonym)
        if p.thumbnail is not None:
            name.setIcon(thumbnail_icon(p.thumbnail))
        elif icon is not None:
            name.setIcon(icon)
        elif (old := self.item(row, 0)) is not None:
            name.setIcon(old.icon())
        rois = ", ".join(p.rois) if p.rois else "–"
        cells = [name, QtWidgets.QTableWidgetItem(p.split or "–"),
                 QtWidgets.QTableWidgetItem(str(p.n_images)),
                 QtWidgets.QTableWidgetItem(format_spacing(p.spacing)),
                 QtWidgets.QTableWidgetItem(rois)]
        cells[2].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        cells[4].setToolTip(rois)
        for col, item in enumerate(cells):
            self.setItem(row, col, item)

    def select(self, pseudonym: str | None) -> None:
        row = self._rows.get(pseudonym or "")
        if row is None:
            self.clearSelection()
        else:
            self.selectRow(row)

    def selected(self) -> str | None:
        items = self.selectedItems()
        return items[0].tableWidget().item(items[0].row(), 0).data(Qt.ItemDataRole.UserRole) if items else None

    def _selection_changed(self) -> None:
        self.patientClicked.emit(self.selected() or "")

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.rowCount() == 0:
            p = QtGui.QPainter(self.viewport())
            p.setPen(self.palette().placeholderText().color())
            p.drawText(self.viewport().rect().adjusted(12, 12, -12, -12),
                       Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       "No patients yet.\n\nDrag DICOM folders (CT + RTSTRUCT) from your file "
                       "manager and drop them anywhere on this window.")
