"""The KL matrix as a sortable Qt table with heat-map colours, and as a heat-map figure.

Cell (row r, column j) shows M[i, j] with i the patient of row r: the directed matrix
M[i, j] = KL(q_i ‖ q_j) in nats (row i = the posterior the expectation is under, column j
= the reference) or the symmetric ½ (KL(q_i ‖ q_j) + KL(q_j ‖ q_i)); the definition is
stated in the header tooltips. Colours come from training.explore.similarity.heat_rgb (log
scale, dark = small divergence = similar).

Sorting is the model's own: clicking a column header orders the rows by that column with
one numpy argsort (stable) and a single layoutChanged, so 500 rows sort in milliseconds
(QSortFilterProxyModel would call back into Python for every comparison).
"""

from __future__ import annotations

import numpy as np

from explorer.qt import QtCore, QtGui, QtWidgets, Qt, Signal, pg
from training.explore.similarity import heat_rgb, is_dark

class ColumnFormat:
    """The number format of one column: fixed point with `decimals` places (`spec`), except
    that a nonzero value it would show as "0" (or "0.0", …) and, in a column of whole
    numbers, any value under 1 keep 3 significant digits: the nearest patient at 0.03 nats
    beside others at 1300 must not read "0" like the diagonal (a posterior against itself)."""

    __slots__ = ("decimals", "spec", "_small")

    def __init__(self, decimals: int) -> None:
        self.decimals = int(decimals)
        self.spec = f"{{:.{self.decimals}f}}"
        # below this a value keeps 3 significant digits
        self._small = 1.0 if self.decimals == 0 else 0.5 * 10.0 ** -self.decimals

    def __call__(self, v: float) -> str:
        if v != 0 and abs(v) < self._small:
            return f"{v:.3g}"
        return self.spec.format(v)

    def __eq__(self, other) -> bool:
        return isinstance(other, ColumnFormat) and other.decimals == self.decimals

    def __repr__(self) -> str:
        return f"ColumnFormat({self.decimals})"


def column_formats(matrix: np.ndarray) -> list[ColumnFormat]:
    """One fixed-point format per column, chosen from its largest finite value: whole
    numbers from 100 up, then 1, 2 or 3 decimals (no "260" beside "1.31e+03"); small
    values keep 3 significant digits (see ColumnFormat)."""
    out = []
    for col in np.asarray(matrix, np.float64).T:
        finite = np.abs(col[np.isfinite(col)])
        top = float(finite.max()) if finite.size else 0.0
        out.append(ColumnFormat(0 if top >= 100 else 1 if top >= 10 else 2 if top >= 1 else 3))
    return out


VALUE_ROLE = int(Qt.ItemDataRole.UserRole.value) + 1  # the float behind a cell
PATIENT_ROLE = int(Qt.ItemDataRole.UserRole.value) + 2  # the row's patient index (unsorted)
# Roles as plain ints: data() runs for every visible cell and role on each repaint, and
# comparing an int with a Qt enum costs an enum conversion each time.
_DISPLAY = int(Qt.ItemDataRole.DisplayRole.value)
_TOOLTIP = int(Qt.ItemDataRole.ToolTipRole.value)
_BACKGROUND = int(Qt.ItemDataRole.BackgroundRole.value)
_FOREGROUND = int(Qt.ItemDataRole.ForegroundRole.value)
_ALIGN = int(Qt.ItemDataRole.TextAlignmentRole.value)
_FONT = int(Qt.ItemDataRole.FontRole.value)
_ALIGN_RIGHT = int((Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter).value)


class KLTableModel(QtCore.QAbstractTableModel):
    """Rows and columns are workspace entries (CT series; `set_patients` names each one's
    patient); rows can be reordered by `sort`, columns stay put."""

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.matrix = np.zeros((0, 0))
        self.names: list[str] = []
        self.definition = ""
        self.order = np.zeros(0, np.int64)  # order[row] = patient index shown in that row
        self.sort_column = -1
        self.sort_order = Qt.SortOrder.AscendingOrder
        self._rgb = np.zeros((0, 0), np.int64)  # packed 0xRRGGBB per cell
        self._dark = np.zeros((0, 0), bool)
        self._colours: dict[int, QtGui.QColor] = {}
        self._white, self._black = QtGui.QColor("white"), QtGui.QColor("black")
        self.highlight = -1  # patient index whose row and column are drawn in bold
        self.patients: list[str] = []  # patient of each row (rows are CT series); see set_patients
        self._series_of: dict[str, int] = {}
        self._bold = QtGui.QFont()
        self._bold.setBold(True)

    # -- content
    def set_matrix(self, matrix: np.ndarray, names: list[str], definition: str) -> None:
        """Show `matrix` (P, P) with `names`; keeps the current sort column and order."""
        self.beginResetModel()
        self.matrix = np.asarray(matrix, np.float64)
        self.names = [str(n) for n in names]
        self.definition = definition
        self._formats = column_formats(self.matrix)
        rgb = heat_rgb(self.matrix) if self.matrix.size else np.zeros((0, 0, 3), np.uint8)
        self._dark = is_dark(rgb) if self.matrix.size else np.zeros((0, 0), bool)
        rgb = rgb.astype(np.int64)
        self._rgb = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        self._colours = {}
        self.highlight = -1
        self.order = self._sorted_order(self.sort_column, self.sort_order)
        self.endResetModel()

    def clear(self) -> None:
        self.set_matrix(np.zeros((0, 0)), [], "")

    def set_patients(self, patients: list[str] | None) -> None:
        """The patient of each row: rows of a patient with several CT series show it
        (issue 11: the table says which rows belong to one patient)."""
        self.patients = [str(p) for p in patients] if patients else []
        self._series_of = {}
        for p in self.patients:
            self._series_of[p] = self._series_of.get(p, 0) + 1
        self.headerDataChanged.emit(Qt.Orientation.Vertical, 0, max(len(self.names) - 1, 0))
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, max(len(self.names) - 1, 0))

    def patient_of(self, index: int) -> tuple[str, int] | None:
        """(patient, number of its series) of row/column `index` when it has several."""
        if index < len(self.patients) and self._series_of.get(self.patients[index], 1) > 1:
            return self.patients[index], self._series_of[self.patients[index]]
        return None

    def _sorted_order(self, column: int, order) -> np.ndarray:
        n = len(self.names)
        if column < 0 or column >= n:
            return np.arange(n, dtype=np.int64)
        key = self.matrix[:, column]
        idx = np.argsort(key, kind="stable")
        if order == Qt.SortOrder.DescendingOrder:
            idx = np.argsort(-key, kind="stable")
        return idx.astype(np.int64)

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:  # noqa: A003 (Qt API)
        """Order the rows by column `column` (−1: patient order); stable for ties."""
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        old_pat = [(int(self.order[ix.row()]), ix.column()) for ix in old]
        self.sort_column, self.sort_order = int(column), order
        self.order = self._sorted_order(self.sort_column, order)
        if old:
            row_of = np.empty(len(self.order), np.int64)
            row_of[self.order] = np.arange(len(self.order))
            self.changePersistentIndexList(old, [self.index(int(row_of[p]), c) for p, c in old_pat])
        self.layoutChanged.emit()

    # -- lookup
    def patient_at(self, row: int) -> str:
        return self.names[int(self.order[row])]

    def row_of(self, name: str) -> int:
        """The row showing patient `name` now, or −1."""
        try:
            p = self.names.index(name)
        except ValueError:
            return -1
        return int(np.flatnonzero(self.order == p)[0])

    def displayed(self) -> np.ndarray:
        """The matrix in the table's current row order (P, P)."""
        return self.matrix[self.order]

    # -- Qt model API
    def rowCount(self, parent=QtCore.QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.names)

    def columnCount(self, parent=QtCore.QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.names)

    def _colour(self, i: int, j: int) -> QtGui.QColor:
        key = int(self._rgb[i, j])
        c = self._colours.get(key)
        if c is None:
            c = self._colours[key] = QtGui.QColor.fromRgb(key)
        return c

    def set_highlight(self, name: str | None) -> None:
        """Draw patient `name`'s row and column in bold (the heat colours hide a selection)."""
        p = self.names.index(name) if name in self.names else -1
        if p != self.highlight:
            self.highlight = p
            if self.names:
                self.dataChanged.emit(self.index(0, 0), self.index(len(self.names) - 1, len(self.names) - 1), [_FONT])

    def data(self, index, role=_DISPLAY):
        if role not in (_DISPLAY, _BACKGROUND, _FOREGROUND, _ALIGN, _FONT, _TOOLTIP, VALUE_ROLE, PATIENT_ROLE):
            return None
        if role == _ALIGN:
            return _ALIGN_RIGHT
        i, j = int(self.order[index.row()]), index.column()
        if role == _FONT:
            return self._bold if (i == self.highlight or j == self.highlight) and self.highlight >= 0 else None
        if role == _DISPLAY:
            return self._formats[j](float(self.matrix[i, j]))
        if role == _BACKGROUND:
            return self._colour(i, j)
        if role == _FOREGROUND:
            return self._white if self._dark[i, j] else self._black
        v = self.matrix[i, j]
        if role == VALUE_ROLE:
            return float(v)
        if role == _TOOLTIP:
            a, b = self.names[i], self.names[j]
            if self.definition.startswith("0.5"):
                return f"½ (KL(q_{a} ‖ q_{b}) + KL(q_{b} ‖ q_{a})) = {v:.6g} nats"
            return f"KL(q_{a} ‖ q_{b}) = {v:.6g} nats\n(expectation under {a}'s posterior; {b} is the reference)"
        if role == PATIENT_ROLE:
            return i
        return None

    def headerData(self, section, orientation, role=_DISPLAY):  # noqa: N802
        if (role != _DISPLAY and role != _TOOLTIP) or section < 0 or section >= len(self.names):
            return None
        horizontal = orientation == Qt.Orientation.Horizontal
        index = section if horizontal else int(self.order[section])
        name = self.names[index]
        group = self.patient_of(index)
        if role == _DISPLAY:
            return f"{name} ⟨{group[0]}⟩" if group else name
        if role == _TOOLTIP:
            what = ("column j = the reference q_j" if horizontal else
                    "row i = the posterior q_i the expectation is under")
            of = f"\none of {group[1]} CT series of patient {group[0]} (marked ⟨{group[0]}⟩)" if group else ""
            return f"{name}: {what}{of}\n{self.definition}\nClick a column header to sort the rows by it"
        return None


class KLTableView(QtWidgets.QTableView):
    """QTableView on a KLTableModel: sorting by header click, one row selected at a time.

    patientActivated(str): the user selected a row (its patient's pseudonym).
    """

    patientActivated = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.kl_model = KLTableModel(self)
        self.setModel(self.kl_model)
        self.setSortingEnabled(True)
        self.horizontalHeader().setSortIndicatorShown(True)
        self.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setDefaultSectionSize(22)
        self.horizontalHeader().setDefaultSectionSize(74)
        self.setWordWrap(False)
        self.selectionModel().currentRowChanged.connect(self._row_changed)

    def set_matrix(self, matrix: np.ndarray, names: list[str], definition: str) -> None:
        self.kl_model.set_matrix(matrix, names, definition)
        self.horizontalHeader().setToolTip(definition)

    def select_patient(self, name: str) -> bool:
        self.kl_model.set_highlight(name)
        row = self.kl_model.row_of(name)
        if row < 0:
            return False
        self.blockSignals(True)
        self.selectRow(row)
        self.blockSignals(False)
        self.scrollTo(self.kl_model.index(row, 0))
        return True

    def _row_changed(self, current, _previous) -> None:
        if current.isValid():
            self.kl_model.set_highlight(self.kl_model.patient_at(current.row()))
        if current.isValid() and not self.signalsBlocked():
            self.patientActivated.emit(self.kl_model.patient_at(current.row()))


class HeatMapView(pg.GraphicsLayoutWidget):
    """The matrix as an image in entry (series) order: row i at the top down, column j left → right."""

    MAX_TICKS = 40

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = self.addPlot(row=0, col=0)
        self.plot.invertY(True)
        self.plot.setAspectLocked(True)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.plot.setLabel("bottom", "reference j (column)")
        self.plot.setLabel("left", "series i (row)")
        for side in ("bottom", "left"):  # entry indices: never "(×0.001)" (an empty map spans ±0.5)
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.caption = self.addLabel("", row=1, col=0, size="9pt")
        self.rgb: np.ndarray | None = None
        # outline of the selected patient's row (and column)
        pen = pg.mkPen((230, 85, 13), width=2, cosmetic=True)
        self.row_box = QtWidgets.QGraphicsRectItem()
        self.col_box = QtWidgets.QGraphicsRectItem()
        for box in (self.row_box, self.col_box):
            box.setPen(pen)
            box.setZValue(2)
            box.setVisible(False)
            self.plot.addItem(box)
        self.highlighted = -1
        self._names: list[str] = []
        self._fit = True  # the matrix fills the view until the user pans or zooms
        self.plot.vb.sigResized.connect(self._refit)
        self.plot.vb.sigRangeChanged.connect(self._update_ticks)
        self.plot.vb.sigRangeChangedManually.connect(self._user_range)

    def _user_range(self, *_) -> None:
        self._fit = False

    def _refit(self, *_) -> None:
        """Keep the whole matrix in view when the view's size changes (a matrix set while
        its tab was hidden was fitted to the hidden view's size and came out clipped)."""
        if self._fit and self.rgb is not None:
            self.plot.autoRange(padding=0.01)
        self._update_ticks()

    def _update_ticks(self, *_) -> None:
        """Names as ticks, thinned to what fits: on the bottom axis the names stand side by
        side, so every k-th is shown where k columns are as wide as the longest name."""
        n = len(self._names)
        if not n:
            for side in ("bottom", "left"):
                self.plot.getAxis(side).setTicks([[]])
            return
        (x0, x1), (y0, y1) = self.plot.vb.viewRange()
        rect = self.plot.vb.rect()
        font = QtGui.QFontMetrics(self.plot.getAxis("bottom").style.get("tickFont") or QtGui.QFont())
        label_w = max(font.horizontalAdvance(name) for name in self._names) + 10
        col_px = rect.width() / max(x1 - x0, 1e-9)
        row_px = rect.height() / max(y1 - y0, 1e-9)
        for side, need, px in (("bottom", label_w, col_px), ("left", font.height() + 2, row_px)):
            step = max(1, int(np.ceil(need / max(px, 1e-9))), -(-n // self.MAX_TICKS))
            self.plot.getAxis(side).setTicks([[(k + 0.5, self._names[k]) for k in range(0, n, step)]])

    def set_highlight(self, i: int) -> None:
        """Outline row i and column i (−1: none)."""
        n = 0 if self.rgb is None else self.rgb.shape[0]
        self.highlighted = i if 0 <= i < n else -1
        on = self.highlighted >= 0
        if on:
            self.row_box.setRect(QtCore.QRectF(0, i, n, 1))
            self.col_box.setRect(QtCore.QRectF(i, 0, 1, n))
        self.row_box.setVisible(on)
        self.col_box.setVisible(on)

    def set_matrix(self, matrix: np.ndarray, names: list[str], title: str, scale_note: str = "") -> None:
        m = np.asarray(matrix, np.float64)
        self.plot.setTitle(title, size="10pt")
        if not m.size:
            self.image.clear()
            self._names = []
            self._update_ticks()
            self.rgb = None
            self.set_highlight(-1)
            return
        self.rgb = heat_rgb(m)
        self.image.setImage(self.rgb, levels=(0, 255), autoLevels=False)
        self.image.setRect(QtCore.QRectF(0, 0, m.shape[1], m.shape[0]))
        self._names = [str(v) for v in names]
        self._fit = True
        self.plot.autoRange(padding=0.01)
        self._update_ticks()
        self.caption.setText(scale_note)
        self.set_highlight(self.highlighted)
