"""Data tab: preprocessing settings, a live preview of the selected patient, re-derive.

The preview runs the core's preprocessing on the selected entry's stored source (HU and
ROI masks) with the settings in the form, in a worker thread; "Apply" re-derives the
whole workspace in the background (training.store.ingest.rederive). For a workspace with no
data yet, the settings are the ones the first ingest uses.
"""

from __future__ import annotations

from explorer import workers
from explorer.panels import Panel
from explorer.qt import Qt, QTimer, QtWidgets
from explorer.widgets.scale_controls import ScaleControls, ScaleSummary
from explorer.widgets.fidelity_view import FidelityView
from explorer.widgets.slice_preview import SlicePreview
from explorer.widgets.latest_worker import LatestWorker

CUSTOM = "custom"


def _series_with_positions(path):
    """Worker thread: the entries with their slice positions (training.store.scale)."""
    from training.store.scale import series_with_positions
    from training.store.workspace import Workspace

    with Workspace.open(path) as ws:
        return series_with_positions(ws)


class DataPanel(Panel):
    title = "Data"
    tooltip = "Preprocessing settings and a preview of the selected patient"

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        from training.config import WINDOW_PRESETS, PreprocessConfig

        self._presets = WINDOW_PRESETS
        self._Config = PreprocessConfig
        self._loading = False
        self._preview_job: workers.Job | None = None
        self._preview_pending = False
        self.preview_count = 0  # previews shown (tests wait on it)

        # -- form
        self.preset = QtWidgets.QComboBox()
        self.preset.addItems(list(WINDOW_PRESETS) + [CUSTOM])
        for i, (lo, hi) in enumerate(WINDOW_PRESETS.values()):  # the range on hover
            self.preset.setItemData(i, f"[{lo:g}, {hi:g}] HU", Qt.ItemDataRole.ToolTipRole)
        self.preset.setToolTip("Named HU window; editing the limits makes it custom")
        self.hu_min = self._dspin(-3000, 3000, "Lower HU limit (maps to 0)")
        self.hu_max = self._dspin(-3000, 5000, "Upper HU limit (maps to 1)")
        self.crop = self._spin(0, 2048, "Centre crop to N × N pixels (0: keep the full slice)", "full slice")
        self.size = self._spin(0, 1024, "Resample in-plane to N × N pixels after cropping (0: keep)", "keep")
        self.slices = QtWidgets.QComboBox()
        self.slices.addItems(["all", "around", "range"])
        self.slices.setToolTip("All slices, N slices around a position, or an index range")
        self.slice_count = self._spin(1, 4096, "Number of slices around the centre")
        self.slice_center = self._dspin(-5000, 5000, "Centre position in mm along the slice normal")
        self.center_auto = QtWidgets.QCheckBox("middle")
        self.center_auto.setToolTip("Centre on the middle of each series")
        self.slice_start = self._spin(0, 4096, "First slice index (inferior → superior)")
        self.slice_stop = self._spin(0, 4096, "Stop index (exclusive; 0: to the end)", "end")
        self.mode2d = QtWidgets.QRadioButton("2D slices")
        self.mode3d = QtWidgets.QRadioButton("3D volumes")
        self.mode2d.setToolTip("Train on slices")
        self.mode3d.setToolTip("Train on volumes interpolated along depth to a cube")
        self.depth = self._spin(0, 512, "Cube edge in 3D (0: the in-plane size)", "auto")
        self.scale = ScaleControls(self)  # spacing, fov, z spacing in mm
        self.scale_summary = ScaleSummary()
        self._scale_patients: list = []
        # each series' slice positions (the real z step) need every entry file opened:
        # ~0.2-0.5 s for 300 series, so they are read off the GUI thread
        self.positions_loader = LatestWorker(self, name="scale-positions")
        self.positions_loader.resultReady.connect(self._positions_ready)
        self.rois = QtWidgets.QListWidget()
        self.rois.setToolTip("ROIs to use, in priority order (drag to reorder; where ROIs overlap the upper wins)")
        self.rois.setDragDropMode(QtWidgets.QAbstractItemView.DragDropMode.InternalMove)
        self.rois.setMaximumHeight(130)

        centre = QtWidgets.QHBoxLayout()
        centre.addWidget(self.slice_center, 1)
        centre.addWidget(self.center_auto)
        modes = QtWidgets.QHBoxLayout()
        modes.addWidget(self.mode2d)
        modes.addWidget(self.mode3d)
        form = QtWidgets.QFormLayout()
        form.addRow("Window", self.preset)
        form.addRow("HU min", self.hu_min)
        form.addRow("HU max", self.hu_max)
        form.addRow("Crop (px)", self.crop)
        form.addRow("Resize (px)", self.size)
        form.addRow("Pixel spacing", self.scale.spacing)
        form.addRow("Field of view", self.scale.fov)
        form.addRow("z spacing", self.scale.z_spacing)
        form.addRow("Slices", self.slices)
        form.addRow("Count", self.slice_count)
        form.addRow("Centre (mm)", centre)
        form.addRow("Start", self.slice_start)
        form.addRow("Stop", self.slice_stop)
        form.addRow("Mode", modes)
        form.addRow("Depth (3D)", self.depth)
        form.addRow("ROIs", self.rois)
        self.form = form

        self.error = QtWidgets.QLabel()
        self.error.setStyleSheet("color: #b00020")
        self.error.setWordWrap(True)
        self.summary = QtWidgets.QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.apply = QtWidgets.QPushButton("Apply to workspace")
        self.apply.setToolTip("Re-derive every patient's arrays with these settings (in the background)")
        self.revert = QtWidgets.QPushButton("Revert")
        self.revert.setToolTip("Back to the workspace's current settings")
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.revert)
        buttons.addStretch(1)
        buttons.addWidget(self.apply)

        box = QtWidgets.QGroupBox("Preprocessing")
        box_lay = QtWidgets.QVBoxLayout(box)
        box_lay.addLayout(form)
        box_lay.addWidget(self.error)
        box_lay.addWidget(self.scale_summary.warning)  # mixed spacings: seen without scrolling
        box_lay.addLayout(buttons)
        left = QtWidgets.QWidget()
        left_lay = QtWidgets.QVBoxLayout(left)
        left_lay.addWidget(box)
        left_lay.addWidget(self.summary)
        left_lay.addWidget(self.scale_summary)
        left_lay.addStretch(1)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(left.sizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self.preview = SlicePreview()
        split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(self.preview)
        split.setStretchFactor(1, 1)
        split.setSizes([330, 700])
        split.setChildrenCollapsible(False)
        lay = QtWidgets.QVBoxLayout(self)
        self.fidelity = FidelityView()  # the selected entry's per-ROI rasterisation report
        below = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        below.addWidget(split)
        below.addWidget(self.fidelity)
        below.setStretchFactor(0, 1)
        below.setSizes([760, 140])
        lay.addWidget(below)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(150)
        self._debounce.timeout.connect(self._request_preview)

        self.preset.currentTextChanged.connect(self._preset_changed)
        for w in (self.hu_min, self.hu_max):
            w.valueChanged.connect(self._limits_edited)
        for w in (self.crop, self.size, self.slice_count, self.slice_center, self.slice_start,
                  self.slice_stop, self.depth):
            w.valueChanged.connect(self._changed)
        for w in (self.slices,):
            w.currentTextChanged.connect(self._changed)
        for w in (self.center_auto, self.mode2d):
            w.toggled.connect(self._changed)
        self.rois.itemChanged.connect(self._changed)
        self.scale.changed.connect(self._changed)
        self.rois.model().rowsMoved.connect(self._changed)
        self.apply.clicked.connect(self._apply)
        self.revert.clicked.connect(self.load_config_from_workspace)
        self.set_config(state.preprocess)

    # -- widgets helpers
    def _spin(self, lo, hi, tip, special=None):
        w = QtWidgets.QSpinBox()
        w.setRange(lo, hi)
        w.setToolTip(tip)
        if special:
            w.setSpecialValueText(special)
        w.setKeyboardTracking(False)
        return w

    def _dspin(self, lo, hi, tip):
        w = QtWidgets.QDoubleSpinBox()
        w.setRange(lo, hi)
        w.setDecimals(1)
        w.setSingleStep(10)
        w.setToolTip(tip)
        w.setKeyboardTracking(False)
        return w

    # -- config <-> form
    def set_config(self, cfg, available_rois=()) -> None:
        self._loading = True
        try:
            name = cfg.window_name if cfg.window_name in self._presets else CUSTOM
            self.preset.setCurrentText(name)
            self.hu_min.setValue(cfg.hu_min)
            self.hu_max.setValue(cfg.hu_max)
            self.crop.setValue(cfg.crop or 0)
            self.size.setValue(cfg.size or 0)
            self.slices.setCurrentText(cfg.slices)
            self.slice_count.setValue(cfg.slice_count)
            self.center_auto.setChecked(cfg.slice_center is None)
            self.slice_center.setValue(cfg.slice_center or 0.0)
            self.slice_start.setValue(cfg.slice_start)
            self.slice_stop.setValue(cfg.slice_stop or 0)
            (self.mode3d if cfg.mode == "3d" else self.mode2d).setChecked(True)
            self.depth.setValue(cfg.depth or 0)
            self.scale.set_config(cfg)
            self.rois.clear()
            names = list(cfg.rois) + [r for r in available_rois if r not in cfg.rois]
            for name in names:
                item = QtWidgets.QListWidgetItem(name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsDragEnabled)
                item.setCheckState(Qt.CheckState.Checked if name in cfg.rois else Qt.CheckState.Unchecked)
                self.rois.addItem(item)
        finally:
            self._loading = False
        self._update_enabled()
        self._changed()

    def config(self):
        """The form as a PreprocessConfig (raises ConfigError when invalid)."""
        name = self.preset.currentText()
        rois = tuple(self.rois.item(i).text() for i in range(self.rois.count())
                     if self.rois.item(i).checkState() == Qt.CheckState.Checked)
        return self._Config(
            window_name=name, hu_min=float(self.hu_min.value()), hu_max=float(self.hu_max.value()),
            crop=self.crop.value() or None, size=self.size.value() or None,
            slices=self.slices.currentText(), slice_count=self.slice_count.value(),
            slice_center=None if self.center_auto.isChecked() else float(self.slice_center.value()),
            slice_start=self.slice_start.value(), slice_stop=self.slice_stop.value() or None,
            mode="3d" if self.mode3d.isChecked() else "2d", depth=self.depth.value() or None,
            rois=rois,
        ).replace(**self._scale_values())  # replace() validates

    def _scale_values(self) -> dict:
        """The mm settings; a field of view replaces the crop (one setting in two units)."""
        v = self.scale.values()
        if v["fov"] is not None:
            v["crop"] = None
        return v

    def _preset_changed(self, name: str) -> None:
        if self._loading or name not in self._presets:
            return
        self._loading = True
        lo, hi = self._presets[name]
        self.hu_min.setValue(lo)
        self.hu_max.setValue(hi)
        self._loading = False
        self._changed()

    def _limits_edited(self) -> None:
        if self._loading:
            return
        name = self.preset.currentText()
        if name in self._presets and self._presets[name] != (self.hu_min.value(), self.hu_max.value()):
            self._loading = True
            self.preset.setCurrentText(CUSTOM)
            self._loading = False
        self._changed()

    def _update_enabled(self) -> None:
        mode = self.slices.currentText()
        self.slice_count.setEnabled(mode == "around")
        self.slice_center.setEnabled(mode == "around" and not self.center_auto.isChecked())
        self.center_auto.setEnabled(mode == "around")
        self.slice_start.setEnabled(mode == "range")
        self.slice_stop.setEnabled(mode == "range")
        self.depth.setEnabled(self.mode3d.isChecked())
        self.crop.setEnabled(self.scale.values()["fov"] is None)

    def _changed(self, *_) -> None:
        if self._loading:
            return
        self._update_enabled()
        try:
            cfg = self.config()
        except Exception as exc:
            self.error.setText(workers.readable_error(exc))
            self.apply.setEnabled(False)
            return
        self.error.setText("")
        self.state.preprocess = cfg
        self.scale_summary.update_summary(cfg, self._scale_patients)
        current = self._workspace_cfg
        self.apply.setEnabled(self.state.has_workspace_data() and current is not None
                              and cfg != current and not self.state.busy)
        self._debounce.start()

    # -- workspace
    _workspace_cfg = None

    def on_workspace_changed(self) -> None:
        if self.state.busy:
            return  # re-read when the job ends (it emits workspaceChanged again)
        self.load_config_from_workspace()

    def load_config_from_workspace(self) -> None:
        self._workspace_cfg = None
        self._scale_patients = []
        available = ()
        cfg = self.state.preprocess
        if self.state.has_workspace_data():
            try:
                with self.state.open_workspace() as ws:
                    cfg = ws.preprocess
                    available = ws.available_rois
                    self._workspace_cfg = cfg
                    self._scale_patients = list(ws.patients)  # positions follow (_positions_ready)
                    n_img = ws.n_images
                    shape = " × ".join(map(str, ws.image_shape)) or "–"
                    from training.store.units import split_summary

                    counts = split_summary(ws.patients).split("; ", 1)  # series and patients
                    self.summary.setText(
                        f"<b>Workspace</b>: {counts[0]}, {n_img} images of {shape}<br>"
                        f"{counts[1] if len(counts) > 1 else ''}<br>"
                        f"ROIs found: {', '.join(available) or 'none'}")
            except Exception as exc:
                self.summary.setText(f"Cannot read the workspace: {workers.readable_error(exc)}")
        else:
            self.summary.setText("<b>Empty workspace</b>: these settings are used for the first ingest.")
        self.set_config(cfg, available)
        self.fidelity.load(self.state, self.state.selected_patient)
        if self._workspace_cfg is not None:
            self.positions_loader.submit(_series_with_positions, self.state.workspace_path)
        else:
            self.positions_loader.cancel()

    def _positions_ready(self, rid: int, patients) -> None:
        if not self.positions_loader.is_current(rid):
            return
        self._scale_patients = patients
        try:
            cfg = self.config()
        except Exception:  # settings being edited: shown with the next valid change
            return
        self.scale_summary.update_summary(cfg, patients)

    def on_patient_selected(self, pseudonym: str) -> None:
        self._debounce.start()
        self.fidelity.load(self.state, pseudonym)

    # -- preview
    def _request_preview(self) -> None:
        pseudonym = self.state.selected_patient
        if not pseudonym or not self.state.has_workspace_data():
            self.preview.set_stack(None, caption="Select a patient in the list to preview its preprocessed slices")
            return
        if self._preview_job is not None:
            self._preview_pending = True
            return
        try:
            cfg = self.config()
        except Exception:
            return
        job = workers.Job(workers.preview_patient, self.state.workspace_path, pseudonym, cfg, parent=self)
        job.done.connect(self._show_preview)
        job.failed.connect(lambda msg: self.preview.set_stack(None, caption=f"No preview: {msg}"))
        job.ended.connect(self._preview_ended)
        self._preview_job = job
        job.start()

    def _preview_ended(self) -> None:
        job, self._preview_job = self._preview_job, None
        if job is not None:
            job.deleteLater()
        if self._preview_pending:
            self._preview_pending = False
            self._request_preview()

    def _show_preview(self, result: dict) -> None:
        images = result["images"]
        shape = " × ".join(map(str, images.shape[1:]))
        self.preview.set_stack(
            images, result["labels"], result["rois"],
            caption=f"<b>{result['pseudonym']}</b>: {len(images)} slices of {shape} px with the "
                    f"settings on the left{result['note']}", z_mm=result.get("z_mm"))
        self.preview_count += 1

    def _apply(self) -> None:
        try:
            cfg = self.config()
        except Exception as exc:
            self.error.setText(workers.readable_error(exc))
            return
        if self.state.training:
            self.error.setText("Stop the training (Train tab) before re-deriving the workspace")
            return
        self.apply.setEnabled(False)
        self.state.request_rederive(cfg)

    def shutdown(self) -> None:
        if self._preview_job is not None:
            self._preview_job.wait(5000)


PANEL = DataPanel
