"""Identification by every method side by side (training.latent.similarity.Comparison):
"n of N nearest to self" in the level's unit (patients or series), top-3 and mean rank for KL directed, KL symmetric, Euclidean
between posterior means, pixel L2 between images and between reconstructions."""

from __future__ import annotations

from explorer.qt import QtWidgets

COLUMNS = ("method", "nearest to self", "top-3", "mean rank")


class MethodTable(QtWidgets.QTableWidget):
    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().hide()
        self.horizontalHeader().setStretchLastSection(True)
        self.setToolTip("The same queries (slice b) against the same references (slice a) by each "
                        "method; a method that cannot beat pixel L2 has learned nothing that identifies")
        self.setMinimumHeight(150)

    def set_comparison(self, comp) -> None:
        self.setRowCount(0)
        if comp is None:
            return
        from training.latent.similarity import count_text

        unit = comp.level
        how = ("counted per patient: a patient counts when the query of each of its series is nearest one "
               "of its own series; its rank is the worst of its series'" if unit == "patient"
               else "counted per series: only the query's own series counts")
        for sc in comp.scores.values():
            r = self.rowCount()
            self.insertRow(r)
            st = sc.stats()
            cells = (sc.method, count_text(st["n_identified"], st["n"], unit),
                     count_text(st["n_top3"], st["n"], unit), f"{st['mean_rank']:.2f}")
            for c, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setToolTip(f"{sc.title}; level: {comp.level} ({how})")
                self.setItem(r, c, item)
        self.resizeColumnsToContents()

    def rows(self) -> list[tuple[str, ...]]:
        return [tuple(self.item(r, c).text() for c in range(self.columnCount())) for r in range(self.rowCount())]
