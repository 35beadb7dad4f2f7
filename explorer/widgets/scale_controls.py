"""Physical scale in the Data tab: the settings in mm (pixel spacing, field of view, z
spacing) and a table of each series' field of view with the mixed-spacing warning.

The numbers come from training.store.scale (the same as `ct-vae info`); this module only
shows them.
"""

from __future__ import annotations

from explorer.qt import QtCore, QtWidgets

KEEP_PIXELS = "keep (pixels)"


def _mm_spin(lo: float, hi: float, step: float, special: str, tip: str) -> QtWidgets.QDoubleSpinBox:
    w = QtWidgets.QDoubleSpinBox()
    w.setRange(0.0, hi)
    w.setDecimals(2)
    w.setSingleStep(step)
    w.setSuffix(" mm")
    w.setSpecialValueText(special)  # shown at 0 (= unset)
    w.setToolTip(tip)
    w.setKeyboardTracking(False)
    w.setProperty("min_mm", lo)
    return w


class ScaleControls(QtCore.QObject):
    """Three spin boxes (0 = unset) for PreprocessConfig.spacing, fov and z_spacing."""

    changed = QtCore.Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.spacing = _mm_spin(0.05, 20.0, 0.1, KEEP_PIXELS,
                                "Resample in-plane to this pixel spacing before cropping, so every "
                                "series has one physical scale (0: keep each series' own pixels)")
        self.fov = _mm_spin(1.0, 2000.0, 8.0, "use crop (px)",
                            "Field of view: a centred square of this many mm; replaces the crop "
                            "in pixels (0: use the crop)")
        self.z_spacing = _mm_spin(0.05, 50.0, 0.5, "as acquired",
                                  "Resample along z onto a uniform grid of this spacing from the real "
                                  "slice positions (uneven spacing included); 3D: cube of depth × this")
        for w in (self.spacing, self.fov, self.z_spacing):
            w.valueChanged.connect(self.changed)

    @staticmethod
    def _value(w) -> float | None:
        v = float(w.value())
        return v if v > 0 else None

    def values(self) -> dict:
        return {"spacing": self._value(self.spacing), "fov": self._value(self.fov),
                "z_spacing": self._value(self.z_spacing)}

    def set_config(self, cfg) -> None:
        for name, w in (("spacing", self.spacing), ("fov", self.fov), ("z_spacing", self.z_spacing)):
            blocked = w.blockSignals(True)
            w.setValue(getattr(cfg, name) or 0.0)
            w.blockSignals(blocked)


class ScaleSummary(QtWidgets.QWidget):
    """Each series' pixel spacing and field of view (mm), the training images' field of
    view under the form's settings, and a warning when the cohort mixes spacings."""

    COLUMNS = ("Series", "Pixel (mm)", "FOV (mm)", "Image FOV (mm)", "Image z step (mm)")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.heading = QtWidgets.QLabel("<b>Physical scale</b>")
        self.settings = QtWidgets.QLabel()
        self.settings.setWordWrap(True)
        self.warning = QtWidgets.QLabel()
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #a15c00")
        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMaximumHeight(150)
        self.table.setToolTip("FOV: the series' rows × columns × pixel spacing. Image FOV: what a "
                              "training image covers with the settings above. Image z step: the "
                              "distance between stored images (3D: between the cube's planes); "
                              "'uneven' gives the smallest and largest gap of a 2D stack")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for w in (self.heading, self.settings, self.warning, self.table):
            lay.addWidget(w)
        self.rows: list[dict] = []
        self.warnings: list[str] = []

    def update_summary(self, cfg, patients) -> None:
        from training.store import scale

        summary = scale.scale_summary(cfg, patients)
        self.rows, self.warnings = summary["series"], summary["warnings"]
        self.settings.setText(scale.describe_settings(cfg))
        self.warning.setText("\n".join("⚠ " + w for w in self.warnings))
        self.warning.setVisible(bool(self.warnings))
        self.table.setVisible(bool(self.rows))

        def pair(v, fmt):
            return "–" if not v else " × ".join(fmt.format(x) for x in v)

        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            cells = (r["series"], pair(r["pixel_mm"], "{:.3g}"), pair(r["fov_mm"], "{:.0f}"),
                     pair(r["image_fov_mm"], "{:.0f}"), _z_text(r))
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QtWidgets.QTableWidgetItem(text))
        self.table.resizeColumnsToContents()


def _z_text(row: dict) -> str:
    """The stored images' z step: "3", "uneven 1.08–7" (2D stack of uneven slices), or "–"."""
    z = row.get("image_z_mm")
    if z is None:
        return "–"
    zr = row.get("image_z_range_mm")
    if row.get("image_z_even") is False and zr:
        return f"uneven {zr[0]:.3g}–{zr[1]:.3g}"
    return f"{z:.3g}"
