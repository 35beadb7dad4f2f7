"""A compact job indicator for the status bar: text, progress bar with counts, cancel."""

from __future__ import annotations

from explorer.qt import QtWidgets, Signal


class JobProgress(QtWidgets.QWidget):
    cancelRequested = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QtWidgets.QLabel()
        self.bar = QtWidgets.QProgressBar()
        self.bar.setMinimumWidth(220)
        self.bar.setMaximumHeight(18)
        self.cancel = QtWidgets.QPushButton("Cancel")
        self.cancel.setToolTip("Stop this job; what is already committed is kept")
        self.cancel.clicked.connect(self._cancel)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel)
        self.hide()

    def start(self, text: str) -> None:
        self.label.setText(text)
        self.bar.setRange(0, 0)  # busy until the first count arrives
        self.cancel.setEnabled(True)
        self.show()

    def set_progress(self, done: int, total: int, text: str | None = None) -> None:
        if total > 0:
            self.bar.setRange(0, int(total))
            self.bar.setValue(min(int(done), int(total)))
            self.bar.setFormat(f"{int(done)} / {int(total)}")
        if text:
            self.label.setText(text)

    def finish(self) -> None:
        self.hide()

    def _cancel(self) -> None:
        self.cancel.setEnabled(False)
        self.label.setText("Cancelling…")
        self.cancelRequested.emit()
