"""Volume tab (SPEC F22; thesis 7.3): a patient's input beside its reconstruction — or a
generated or interpolated stack — with one slider through both, ROI overlays and a
window/level control in HU.

3D workspaces (preprocess mode "3d"): one volume per patient, encoded and decoded as a
whole by the 3D model. 2D workspaces: the patient's stack of slices beside the per-slice
reconstructions (each slice encoded and decoded on its own). The stacks come from
training.explore.volume; encoding and decoding run on a background thread
(explorer.widgets.latest_worker.LatestWorker: newest request wins).
"""

from __future__ import annotations


from explorer import figures
from explorer.panels import Panel
from explorer.qt import QtWidgets
from explorer.widgets.latest_worker import LatestWorker
from explorer.widgets.slice_stack import SliceStackPair

SOURCE_TEXT = {
    "reconstruction": "Reconstruction",
    "generated": "Generated (prior sample)",
    "interpolated": "Interpolated to another patient",
}


def _compute(ckpt: str | None, ws_path: str, patient: str, source: str, params: dict):
    """A training.explore.volume.VolumePair (or, without a model, (input stack, None))."""
    from training.explore import volume as vv
    from training.store.workspace import Workspace

    with Workspace.open(ws_path) as ws:
        index = ws.patient_index(patient)
        if ckpt is None:
            return vv.patient_stack(ws, index), ws.preprocess.mode
        from training.explore.latent import load_latent_model

        lm = load_latent_model(ckpt)  # cached while the file is unchanged
        model, prior_sigma2 = lm.model, lm.prior_sigma2
        if source == "generated":
            return vv.generated_pair(model, ws, index, seed=params.get("seed", 0), prior_sigma2=prior_sigma2)
        if source == "interpolated":
            other = ws.patient_index(params["other"])
            return vv.interpolated_pair(model, ws, index, other, t=params.get("t", 0.5),
                                        method=params.get("method", "linear"))
        return vv.reconstruction_pair(model, ws, index)


class VolumePanel(Panel):
    title = "Volume"
    tooltip = "A patient's CT beside its reconstruction (or a generated or interpolated stack), slice by slice"

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.pair = None  # the training.explore.volume.VolumePair shown
        self.mode = ""
        self.error = ""
        self.worker = LatestWorker(self, "volume")
        self.worker.resultReady.connect(self._ready)
        self.worker.failed.connect(self._failed)
        self.worker.busyChanged.connect(self._busy_changed)

        self.patient = QtWidgets.QComboBox()
        self.patient.setToolTip("Patient shown on the left (follows the patient list)")
        self.patient.setMinimumContentsLength(10)
        self.source = QtWidgets.QComboBox()
        for key, text in SOURCE_TEXT.items():
            self.source.addItem(text, key)
        self.source.setToolTip("What the right side shows: the model's reconstruction of the patient, "
                               "a draw from the prior decoded, or the decoded interpolation towards another patient")
        self.seed = QtWidgets.QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed of the prior draw")
        self.other = QtWidgets.QComboBox()
        self.other.setToolTip("Patient at t = 1")
        self.t = QtWidgets.QDoubleSpinBox()
        self.t.setRange(0.0, 1.0)
        self.t.setSingleStep(0.1)
        self.t.setValue(0.5)
        self.t.setDecimals(2)
        self.t.setToolTip("Interpolation position: 0 = this patient, 1 = the other")
        self.t.setKeyboardTracking(False)
        self.busy = QtWidgets.QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(120)
        self.busy.setFormat("decoding")
        self.busy.setToolTip("Encoding and decoding in the background")
        self.busy.setVisible(False)
        self.stacks = SliceStackPair()
        self.export_btn = figures.ExportButton(lambda: self.stacks.right, "volume-slice", settings=state.settings)
        self.export_btn.add_action("Save input side as PNG…", lambda: self._export_side(self.stacks.left))
        self.export_btn.add_action("Save right side as PNG, .npy and DICOM…", self._export_volume_dialog)
        self.export_btn.exported.connect(lambda p: state.show_message(f"Exported {p}"))
        self.export_btn.failed.connect(lambda m: state.show_message(m, 0))

        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Patient"))
        top.addWidget(self.patient)
        top.addWidget(QtWidgets.QLabel("Right side"))
        top.addWidget(self.source)
        self.seed_label = QtWidgets.QLabel("seed")
        self.other_label = QtWidgets.QLabel("to")
        self.t_label = QtWidgets.QLabel("t")
        for w in (self.seed_label, self.seed, self.other_label, self.other, self.t_label, self.t):
            top.addWidget(w)
        top.addStretch(1)
        top.addWidget(self.busy)
        top.addWidget(self.export_btn)
        self.note = QtWidgets.QLabel()
        self.note.setWordWrap(True)
        self.message = QtWidgets.QLabel()
        self.message.setWordWrap(True)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.note)
        lay.addWidget(self.message)
        lay.addWidget(self.stacks, 1)

        self.patient.currentIndexChanged.connect(lambda _: self.refresh())
        self.patient.activated.connect(self._patient_chosen)
        self.source.currentIndexChanged.connect(lambda _: self._source_changed())
        self.seed.valueChanged.connect(lambda _: self.refresh())
        self.other.currentIndexChanged.connect(lambda _: self.refresh())
        self.t.valueChanged.connect(lambda _: self.refresh())
        self._source_changed(refresh=False)
        self.on_workspace_changed()

    # -- panel hooks
    def on_workspace_changed(self) -> None:
        names, mode = [], ""
        if self.state.has_workspace_data():
            try:
                with self.state.open_workspace() as ws:
                    names = [p.pseudonym for p in ws.patients if p.n_images]
                    self._splits = {p.pseudonym: p.split for p in ws.patients}
                    mode = ws.preprocess.mode
            except Exception as exc:  # unreadable workspace: say so, stay usable
                from explorer.workers import readable_error

                self._set_message(readable_error(exc), error=True)
        self.mode = mode
        keep = self.patient.currentText()
        for box in (self.patient, self.other):
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            box.blockSignals(False)
        want = self.state.selected_patient or keep
        for box in (self.patient, self.other):
            box.blockSignals(True)
        if want in names:
            self.patient.setCurrentIndex(names.index(want))
        if len(names) > 1:
            self.other.setCurrentIndex(1 if self.patient.currentIndex() == 0 else 0)
        for box in (self.patient, self.other):
            box.blockSignals(False)
        self._update_note()
        self.refresh()

    def on_checkpoint_changed(self, path: str) -> None:
        self.refresh()

    def on_patient_selected(self, pseudonym: str) -> None:
        i = self.patient.findText(pseudonym) if pseudonym else -1
        if i >= 0 and i != self.patient.currentIndex():
            self.patient.setCurrentIndex(i)  # → refresh

    def shutdown(self) -> None:
        self.worker.shutdown()
        job = getattr(self, "_export_job", None)
        if job is not None:
            try:
                job.wait(10_000)  # a DICOM export finishes; longer ones are left to end alone
            except RuntimeError:  # already deleted after it ended
                pass

    # -- requests
    def params(self) -> dict:
        return {"seed": self.seed.value(), "other": self.other.currentText(), "t": self.t.value()}

    def refresh(self) -> int | None:
        """Recompute the shown pair in the background (newest request wins); its id.

        A hidden tab only remembers that it is out of date and computes when shown (an ingest
        changes the workspace once per patient; a hidden tab must not re-encode each time).
        """
        if not self.visible_or_stale():
            return None
        name = self.patient.currentText()
        if not self.state.has_workspace_data() or not name:
            self.worker.cancel()
            self.pair = None
            self.stacks.set_pair(None, None)
            self._set_message("Open a workspace with patients to see their CT here.")
            return None
        ckpt = str(self.state.checkpoint_path) if self.state.checkpoint_path else None
        if ckpt is None:
            self._set_message("No model loaded: the input alone is shown. Load or train a model "
                              "to see its reconstruction beside it.")
        source = self.source.currentData()
        if source == "interpolated" and self.other.currentText() == name:
            self._set_message("Choose another patient to interpolate to.")
        return self.worker.submit(_compute, ckpt, str(self.state.workspace_path), name,
                                  source, self.params())

    def wait_idle(self, timeout_ms: int = 30000) -> bool:
        """Tests and benchmarks: block until the worker is idle (process events after)."""
        return self.worker.wait_idle(timeout_ms)

    # -- results
    def _ready(self, _rid: int, result) -> None:
        self.error = ""
        if isinstance(result, tuple):  # input only
            stack, self.mode = result
            self.pair = None
            self.stacks.set_pair(stack, None, f"{stack.title}", "no model loaded")
            self._update_note()
            return
        self.pair = result
        self.mode = result.mode
        self.stacks.set_pair(result.left, result.right, self._title(result.left.title),
                             self._title(result.right.title))
        name = self.patient.currentText()
        split = getattr(self, "_splits", {}).get(name, "")
        about = f"{name}: {split + ' patient, ' if split else ''}{result.left.n_slices} slices"
        if result.source == "reconstruction":
            self._set_message(f"{about}; right: decode(µ(x)), the posterior mean decoded "
                              "(deterministic).")
        else:
            self._set_message(f"{about}; right: {result.note}.")
        self._update_note()

    def _title(self, text: str) -> str:
        return f"<b>{text}</b>"

    def _failed(self, _rid: int, message: str) -> None:
        self.error = message
        self._set_message(f"Could not show the volume: {message}", error=True)

    def _busy_changed(self, busy: bool) -> None:
        self.busy.setVisible(busy)

    # -- ui helpers
    def _patient_chosen(self, _i: int) -> None:
        name = self.patient.currentText()  # the user picked it here: tell the other tabs
        if name and name != self.state.selected_patient:
            self.state.select_patient(name)

    def _source_changed(self, refresh: bool = True) -> None:
        src = self.source.currentData()
        for w in (self.seed_label, self.seed):
            w.setVisible(src == "generated")
        for w in (self.other_label, self.other, self.t_label, self.t):
            w.setVisible(src == "interpolated")
        if refresh:
            self.refresh()

    def _update_note(self) -> None:
        if self.mode == "3d":
            text = ("3D workspace: each patient is one volume; the slider moves through its depth "
                    "slices (inferior → superior) on both sides.")
        elif self.mode == "2d":
            text = ("2D workspace: a patient is a stack of slices and the model encodes and decodes "
                    "each slice on its own, so the right side is built slice by slice (per-slice "
                    "reconstructions).")
        else:
            text = ""
        self.note.setText(text + " Anterior at the top, patient's left on the image's right (R | L marked).")

    def _set_message(self, text: str, error: bool = False) -> None:
        self.message.setStyleSheet("color: #b00020" if error else "color: #555")
        self.message.setText(text)

    def _export_side(self, view) -> None:
        path = figures.ask_save_path(self, "Save the input side as PNG", "volume-input", "png", self.state.settings)
        if path is not None:
            figures.export_png(view, path)
            self.state.show_message(f"Exported {path}")

    def export_volume(self, out_dir, formats=("png", "npy", "dicom")):
        """Write the right side (training.explore.volume.export_right) into `out_dir` now;
        {format: [paths]}. GUI thread only (reads the widgets); the dialog's background
        job calls `_export_right` with the values taken here."""
        if self.pair is None:
            raise ValueError("nothing to export yet: load a model first")
        return _export_right(self.pair, self.state.workspace_path, self.patient.currentText(), out_dir, formats)

    def _export_volume_dialog(self) -> None:
        from explorer import workers

        if self.pair is None:
            self.state.show_message("Nothing to export yet: load a model first", 0)
            return
        lo, hi = self.pair.left.hu_window
        out = figures.ask_save_folder(
            self, f"Folder for the PNG, .npy and DICOM files (HU outside the training window "
                  f"[{lo:g}, {hi:g}] cannot be restored)", self.state.settings)
        if out is None:
            return
        notes: list[str] = []
        # what is exported is fixed now: the worker thread must not read widgets, and a
        # patient picked during the export must not mix with the pair shown before
        pair, ws_path, pseudonym = self.pair, self.state.workspace_path, self.patient.currentText()
        job = workers.Job(lambda _ctx: _export_right(pair, ws_path, pseudonym, out,
                                                     ("png", "npy", "dicom"), notes), parent=self)
        job.done.connect(lambda res: self.state.show_message(
            f"Exported {sum(len(v) for v in res.values())} files to {out}"
            + "".join(f". Note: {n}" for n in notes), 0 if notes else 6000))
        job.failed.connect(lambda msg: self.state.show_message(f"Export failed: {msg}", 0))
        job.ended.connect(job.deleteLater)
        self._export_job = job
        job.start()

    def export(self, path):
        """File ▸ Export: both sides of the current slice are written, the right one to `path`
        (PNG/SVG/PDF by suffix) and the left one beside it as <stem>-input<suffix>."""
        from pathlib import Path

        path = Path(path)
        fmt = path.suffix.lstrip(".").lower() or "png"
        figures.export_figure(self.stacks.left, path.with_name(f"{path.stem}-input{path.suffix}"), fmt)
        return figures.export_figure(self.stacks.right, path, fmt)


def _export_right(pair, workspace, pseudonym: str, out_dir, formats, notes=None):
    """training.explore.volume.export_right for the named patient; {format: [paths]}."""
    from training.explore.volume import export_right
    from training.store.workspace import Workspace

    with Workspace.open(workspace) as ws:
        return export_right(pair, ws, ws.patient_index(pseudonym), out_dir, formats, notes)


PANEL = VolumePanel
