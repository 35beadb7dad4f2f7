"""Train tab (SPEC F17): settings form, start/pause/resume/stop, epoch progress with ETA,
live loss curves (train solid, test dashed, optional log scale), and inputs over their
reconstructions with a history slider (thesis fig. 7.2).

Training runs in explorer.workers.TrainingWorker (a QThread driving training.vae.trainer);
this panel only reacts to its signals. Closing the window stops at a checkpoint and the
next start offers to continue from it; a stopped or finished run of this workspace can be
continued for more epochs ("Continue"): same settings, same run folder, the curves and the
reconstruction history carry on from where they were.
"""

from __future__ import annotations

import time
from pathlib import Path

from explorer import figures, workers
from explorer.panels import Panel
from explorer.qt import Qt, QTimer, QtGui, QtWidgets, Signal
from explorer.settings import new_run_folder, runs_dir
from explorer.widgets.image_grid import ReconstructionHistory
from explorer.widgets.latest_worker import LatestWorker
from explorer.widgets.loss_plot import LossPlot
from explorer.widgets.metrics_plot import MetricsPlot
from explorer.widgets.preset_picker import PresetPicker

# Small, fast defaults: a newcomer sees curves move within a minute on 2 CPU cores.
# threads=1: on the 2-core development machine one torch thread trained 3× faster than
# two (benchmarks/README.md, "GUI"); 0 means one per physical core.
MODEL_DEFAULTS = dict(latent_dim=8, filters=8, convs_per_block=1, n_blocks=3, dropout=0.1, fc_units=64)
TRAIN_DEFAULTS = dict(epochs=30, batch_size=16, lr=1e-3, seed=0, recon_sigma2=0.01, prior_sigma2=1.0,
                      mc_samples=1, ce_weight=1.0, ce_weighting="none", recon_every=2,
                      checkpoint_every=5, early_stopping_patience=0, n_recon_examples=6, threads=1,
                      device="auto", autocast="none")


RECON_DELAY_MS = 40
NO_DATA = "No training data yet: drop DICOM folders on the window (or File ▸ Add DICOM folder…)."


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainerPanel(Panel):
    title = "Train"
    tooltip = "Train the VAE and watch its losses and reconstructions"
    trainingStateChanged = Signal(str)  # "idle", "running", "paused", "stopping"
    #: the tab has something the user should see now (the offer to continue an
    #: interrupted run); the window brings it to the front
    attentionRequested = Signal()

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        from training.config import ModelConfig, TrainConfig

        self._ModelConfig, self._TrainConfig = ModelConfig, TrainConfig
        self.worker: workers.TrainingWorker | None = None
        self.run_state = "idle"
        self._image_shape: tuple[int, ...] = ()
        self._n_classes = 0
        self.last_checkpoint: Path | None = None
        # the run "Continue" would carry on: (last.pt of a run of this workspace, its epoch)
        self.continuable: tuple[Path, int] | None = None
        self._resume_epoch = 0  # epoch the running run resumed from (0: a new run)
        self.last_message = ""
        # TrainConfig fields without a form field (threads, device, max_loss, …); tests
        # and scripts set them here.
        self.extra_train: dict = {}

        # -- settings form
        self.fields: dict[str, QtWidgets.QWidget] = {}
        model_box = QtWidgets.QGroupBox("Model")
        mf = QtWidgets.QFormLayout(model_box)
        self._int(mf, "latent_dim", "Latent size J", 1, 512, "Dimensions of the latent space z")
        self._int(mf, "filters", "Filters f", 1, 256, "Convolution filters per layer")
        self._int(mf, "n_blocks", "Blocks", 1, 8, "Encoder blocks, each halving the size (input size must divide by 2^blocks)")
        self._int(mf, "convs_per_block", "Convs per block N", 1, 6, "3×3 convolutions in each block")
        self._int(mf, "fc_units", "Dense units", 4, 4096, "Units of the fully connected layer")
        self._float(mf, "dropout", "Dropout", 0.0, 0.95, 2, 0.05, "Drop rate after each block: the fraction of units set to zero while training "
                    "(0 = no dropout). The thesis' TensorFlow code gives keep probabilities: its "
                    "keep_prob 0.7 is a drop rate of 0.3 here, 0.9 is 0.1")
        self.preset = PresetPicker()  # "Thesis 7.1.1" fills the form (training.config.PRESETS)
        self.preset.chosen.connect(self.set_values)
        self.preset.chosen.connect(lambda _: self.state.show_message(self.preset.note(self._image_shape)))
        mf.insertRow(0, "Preset", self.preset)
        train_box = QtWidgets.QGroupBox("Training")
        tf = QtWidgets.QFormLayout(train_box)
        self._int(tf, "epochs", "Epochs", 1, 100000, "Passes over the training patients")
        self._int(tf, "batch_size", "Batch size", 1, 4096, "Images per optimisation step")
        self._float(tf, "lr", "Learning rate", 1e-6, 1.0, 5, 1e-4, "Adam learning rate")
        self._int(tf, "seed", "Seed", 0, 2**31 - 1, "Random seed (same seed, same run on CPU)")
        self._float(tf, "recon_sigma2", "Recon. σ²", 1e-5, 10.0, 4, 0.001, "Fixed variance of the Gaussian reconstruction term")
        self._float(tf, "prior_sigma2", "Prior σz²", 1e-3, 100.0, 3, 0.1, "Variance of the prior N(0, σz² I)")
        self._int(tf, "mc_samples", "MC samples U", 1, 64, "Latent samples per input")
        self._float(tf, "ce_weight", "CE weight", 0.0, 1000.0, 2, 0.1, "Weight of the RT cross-entropy")
        w = QtWidgets.QComboBox()
        w.addItems(["none", "inverse_frequency"])
        w.setToolTip("Class weighting of the RT cross-entropy (inverse frequency helps small ROIs)")
        self.fields["ce_weighting"] = w
        tf.addRow("CE weighting", w)
        self._int(tf, "recon_every", "Recon. every", 1, 1000, "Show reconstructions every K epochs")
        self._int(tf, "n_recon_examples", "Recon. examples", 1, 32, "Fixed train and test images shown with their reconstructions")
        self._int(tf, "checkpoint_every", "Checkpoint every", 1, 1000, "Save a checkpoint every K epochs (and on stop)")
        self._int(tf, "early_stopping_patience", "Early stop", 0, 1000, "Stop when the test loss has not improved for K epochs (0: off)")
        self._int(tf, "threads", "CPU threads", 0, 256, "Torch threads for training (0: one per physical core; "
                  "1 is fastest on a small or busy machine)")
        self._combo(tf, "device", "Device", ["auto", "cpu", "cuda"],
                    "auto: the GPU when there is one, else the CPU; cuda without a GPU is refused with a message")
        self._combo(tf, "autocast", "GPU precision", ["none", "bf16"],
                    "bf16: bfloat16 autocast of the forward pass and loss on a GPU (loss sums stay float32); "
                    "pays for large 3D nets (128³), not for small 2D ones; ignored on the CPU")
        self.info = QtWidgets.QLabel(NO_DATA)
        self.info.setWordWrap(True)
        self.error = _LineIfAny()
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b00020")
        defaults = QtWidgets.QPushButton("Defaults")
        defaults.setToolTip("Back to the small, fast defaults")
        defaults.clicked.connect(self.reset_defaults)
        form_w = QtWidgets.QWidget()
        fl = QtWidgets.QVBoxLayout(form_w)
        fl.addWidget(model_box)
        fl.addWidget(train_box)
        fl.addStretch(1)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(form_w)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(form_w.sizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # The data line ("No training data yet: …", or the input size and image counts) and
        # the red line of settings to fix above the scrolled form, the Defaults button below
        # it: always in view (inside the form, below its last field, they were cut off).
        form_side = QtWidgets.QWidget()
        fsl = QtWidgets.QVBoxLayout(form_side)
        fsl.setContentsMargins(0, 0, 0, 0)
        fsl.addWidget(self.info)
        fsl.addWidget(self.error)
        fsl.addWidget(scroll, 1)
        fsl.addWidget(defaults, 0, Qt.AlignmentFlag.AlignLeft)

        # -- controls
        sp = QtWidgets.QStyle.StandardPixmap
        self.start_btn = self._button("Start", sp.SP_MediaPlay, "Start training a new model (Ctrl+Return)", self.start)
        self.start_btn.setShortcut(QtGui.QKeySequence("Ctrl+Return"))
        self.pause_btn = self._button("Pause", sp.SP_MediaPause, "Pause after the current batch (Ctrl+P)", self.toggle_pause)
        self.pause_btn.setShortcut(QtGui.QKeySequence("Ctrl+P"))
        self.stop_btn = self._button("Stop", sp.SP_MediaStop, "Stop and save a checkpoint (Ctrl+.)", self.stop)
        self.stop_btn.setShortcut(QtGui.QKeySequence("Ctrl+."))
        self.resume_run_btn = self._button("Continue", sp.SP_MediaSeekForward,
                                           "Continue the current run for more epochs", self.continue_run)
        self.more_epochs = QtWidgets.QSpinBox()
        self.more_epochs.setRange(1, 100000)
        self.more_epochs.setPrefix("+ ")
        self.more_epochs.setSuffix(" epochs")
        self.more_epochs.setToolTip("How many more epochs Continue trains")
        self.more_epochs.setValue(TRAIN_DEFAULTS["epochs"])
        self.progress = QtWidgets.QProgressBar()
        self.progress.setToolTip("Epochs completed")
        self._show_no_run()  # "epoch %v / %m" once a run is started or a model's run shown
        self.batch_progress = QtWidgets.QProgressBar()
        self.batch_progress.setMaximumWidth(120)
        self.batch_progress.setMaximumHeight(10)
        self.batch_progress.setTextVisible(False)
        self.batch_progress.setToolTip("Batches of the current epoch")
        self.eta = QtWidgets.QLabel("")
        self.eta.setMinimumWidth(190)
        self.log_scale = QtWidgets.QCheckBox("Log scale")
        self.log_scale.setToolTip("Logarithmic loss axis (the terms differ by orders of magnitude)")
        controls = QtWidgets.QHBoxLayout()
        for b in (self.start_btn, self.pause_btn, self.stop_btn, self.resume_run_btn):
            b.setMinimumWidth(b.sizeHint().width())
            controls.addWidget(b)
        controls.addWidget(self.more_epochs)
        controls.addStretch(1)
        controls.addWidget(self.log_scale)
        progress_row = QtWidgets.QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.batch_progress)
        progress_row.addWidget(self.eta)
        self.eta.setFixedWidth(self.eta.fontMetrics().horizontalAdvance("ETA 00:00:00 · 0000 img/s") + 8)

        # continue banner (shown when a run was interrupted by closing the window)
        self.banner = QtWidgets.QFrame()
        self.banner.setStyleSheet("QFrame { background: #fff4ce; border: 1px solid #e0c060; border-radius: 4px; }"
                                  " QLabel { border: none; }")
        self.banner_text = QtWidgets.QLabel()
        # wrapped: a long line would otherwise set the tab's minimum width and squeeze the
        # patient list beside the tabs
        self.banner_text.setWordWrap(True)
        self.banner_text.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                       QtWidgets.QSizePolicy.Policy.Preferred)
        self.continue_btn = QtWidgets.QPushButton("Continue training")
        self.continue_btn.setToolTip("Resume from the checkpoint saved when the window closed")
        self.continue_btn.clicked.connect(self.continue_interrupted)
        dismiss = QtWidgets.QPushButton("Dismiss")
        dismiss.clicked.connect(self._dismiss_banner)
        bl = QtWidgets.QHBoxLayout(self.banner)
        bl.addWidget(self.banner_text, 1)
        bl.addWidget(self.continue_btn)
        bl.addWidget(dismiss)
        self.banner.hide()

        self.plot = LossPlot()
        self.history = ReconstructionHistory()
        self._history_for: Path | None = None  # the checkpoint whose snapshots are loading
        self.history_loader = LatestWorker(self, name="recon-history")
        self.history_loader.resultReady.connect(self._show_loaded_history)
        self.log_scale.toggled.connect(self.plot.set_log)
        self.log_scale.setChecked(True)
        self.legend = QtWidgets.QLabel(LossPlot.legend_html())
        self.legend.setToolTip("Loss terms per image (nats); KL is KL(q(z|x) ‖ N(0, σz² I))")
        self.legend.setWordWrap(True)
        # Each figure exports on its own: the curves (with their key, numbers as CSV) and
        # the reconstruction grid of the epoch shown.
        self.curves_export = _CurvesExportButton(self.plot, "loss-curves", table=self.loss_table,
                                                 settings=state.settings)
        self.recon_export = figures.ExportButton(lambda: self.history.grid, "reconstructions",
                                                 settings=state.settings)
        self.recon_export.setToolTip("Save the reconstructions of the epoch shown as PNG, SVG or PDF")
        for b in (self.curves_export, self.recon_export):
            b.exported.connect(lambda out: self.state.show_message(f"Exported {out}"))
            b.failed.connect(lambda msg: self.state.show_message(msg, 0))
        self.history.controls.addWidget(self.recon_export)
        legend_row = QtWidgets.QHBoxLayout()
        legend_row.addWidget(self.legend, 1)
        legend_row.addWidget(self.curves_export)
        plot_box = QtWidgets.QWidget()
        pl = QtWidgets.QVBoxLayout(plot_box)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.setSpacing(2)
        self.metrics_plot = MetricsPlot()  # reconstruction metrics beside the losses (issue 15)
        beside = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        beside.addWidget(self.plot)
        beside.addWidget(self.metrics_plot)
        beside.setSizes([560, 300])
        pl.addWidget(beside, 1)
        pl.addLayout(legend_row)
        plots = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(plot_box)
        plots.addWidget(self.history)
        plots.setSizes([320, 380])
        plots.setChildrenCollapsible(False)
        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.banner)
        rl.addLayout(controls)
        rl.addLayout(progress_row)
        rl.addWidget(plots, 1)
        split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(form_side)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([300, 800])
        split.setChildrenCollapsible(False)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(split)

        self.reset_defaults()
        for w in self.fields.values():
            sig = getattr(w, "valueChanged", None) or w.currentTextChanged
            sig.connect(self.validate)
            sig.connect(lambda *_: self.preset.sync(self._value))
        state.busyChanged.connect(lambda _: self._update_buttons())
        self._update_buttons()

    # -- form helpers
    def _int(self, form, key, label, lo, hi, tip):
        w = QtWidgets.QSpinBox()
        w.setRange(lo, hi)
        w.setToolTip(tip)
        self.fields[key] = w
        form.addRow(label, w)

    def _combo(self, form, key, label, items, tip):
        w = QtWidgets.QComboBox()
        w.addItems(items)
        w.setToolTip(tip)
        self.fields[key] = w
        form.addRow(label, w)

    def _float(self, form, key, label, lo, hi, decimals, step, tip):
        w = QtWidgets.QDoubleSpinBox()
        w.setRange(lo, hi)
        w.setDecimals(decimals)
        w.setSingleStep(step)
        w.setToolTip(tip)
        self.fields[key] = w
        form.addRow(label, w)

    def _button(self, text, icon, tip, slot):
        b = QtWidgets.QPushButton(self.style().standardIcon(icon), text)
        b.setToolTip(tip)
        b.clicked.connect(slot)
        return b

    def set_values(self, values: dict) -> None:
        for key, value in values.items():
            w = self.fields.get(key)
            if w is None:
                continue
            if isinstance(w, QtWidgets.QComboBox):
                w.setCurrentText(str(value))
            else:
                w.setValue(value)

    def reset_defaults(self) -> None:
        self.set_values({**MODEL_DEFAULTS, **TRAIN_DEFAULTS})
        self.validate()

    def _value(self, key):
        w = self.fields[key]
        return w.currentText() if isinstance(w, QtWidgets.QComboBox) else w.value()

    def configs(self):
        """(ModelConfig, TrainConfig) from the form and the workspace; raises ConfigError."""
        from training.config import ConfigError

        if not self._image_shape:
            raise ConfigError("No training data yet: drop DICOM folders on the window first")
        spatial = len(self._image_shape)
        model = self._ModelConfig(
            spatial_dims=spatial, input_size=int(self._image_shape[-1]), n_classes=self._n_classes,
            **{k: self._value(k) for k in MODEL_DEFAULTS})
        model.validate()
        if len(set(self._image_shape)) != 1:
            raise ConfigError(f"images are {' × '.join(map(str, self._image_shape))}: the model needs "
                             "square (2D) or cubic (3D) inputs; set crop/resize on the Data tab")
        tkeys = [k for k in TRAIN_DEFAULTS if k in self._TrainConfig.__dataclass_fields__]
        train = self._TrainConfig(**{**{k: self._value(k) for k in tkeys}, **self.extra_train})
        train.validate()
        return model, train

    def validate(self, *_) -> bool:
        try:
            self.configs()
        except Exception as exc:
            # without data the info line says so; the red line is for settings to fix
            self.error.setText(workers.readable_error(exc) if self._image_shape else "")
            self._valid = False
        else:
            self.error.setText("")
            self._valid = True
        self._update_buttons()
        return self._valid

    _valid = False

    # -- workspace and checkpoints
    def on_workspace_changed(self) -> None:
        self._image_shape, self._n_classes = (), 0
        text = NO_DATA
        if self.state.has_workspace_data():
            try:
                with self.state.open_workspace() as ws:
                    self._image_shape = tuple(ws.image_shape)
                    self._n_classes = ws.preprocess.n_classes
                    n_train = len(ws.index("train"))
                    n_test = len(ws.index("test"))
                    text = (f"Input {' × '.join(map(str, self._image_shape)) or '–'}"
                            f"{f', {self._n_classes} RT classes' if self._n_classes else ', CT only'}; "
                            f"{n_train} train / {n_test} test images.")
            except Exception as exc:
                text = f"Cannot read the workspace: {workers.readable_error(exc)}"
        self.info.setText(text)
        self.validate()
        self._check_interrupted()

    def on_checkpoint_changed(self, path: str) -> None:
        if self.worker is not None:
            return  # training: its checkpoints are this run's, already shown
        if not path:  # no model (another workspace opened): nothing of the last one stays
            self._set_continuable(None)
            self.last_checkpoint = None
            self._history_for = None
            self.plot.clear_curves()
            self.metrics_plot.clear_curves()
            self.history.clear()
            self._show_no_run()
            self.eta.setText("")
            return
        if Path(path) == self.last_checkpoint:
            return  # our own run's checkpoint: its curves are already shown
        try:
            ckpt = workers.check_checkpoint(Path(path))
        except Exception:
            self._set_continuable(None)
            return
        self._set_continuable(Path(path), ckpt)
        self.plot.clear_curves()
        self.metrics_plot.clear_curves()
        for row in ckpt.history:
            self.plot.add_epoch(int(row.get("epoch", 0)), workers.losses_of(row))
            self.metrics_plot.add_epoch(int(row.get("epoch", 0)), row.get("metrics"))
        self.history.clear()  # the run's own snapshots come from its folder, off the GUI thread
        self._history_for = Path(path)
        self.history_loader.submit(workers.load_recon_history, Path(path))
        self._show_configs(ckpt.model_config, ckpt.train_config)
        self._show_epochs(min(ckpt.epoch, ckpt.train_config.epochs), max(ckpt.train_config.epochs, 1))

    def _show_loaded_history(self, _rid: int, result) -> None:
        checkpoint, snapshots = result
        if checkpoint != self._history_for:
            return  # another checkpoint was chosen meanwhile
        if self.worker is not None and self.worker.resume != checkpoint:
            return  # a new run started meanwhile
        for epoch, rows in snapshots:
            # a continued run: only the snapshots up to the epoch it resumed from are its
            # (the trainer removes later ones, never checkpointed)
            if self.worker is None or epoch <= self._resume_epoch:
                self.history.add_snapshot(epoch, rows)

    def _set_continuable(self, path: Path | None, ckpt=None) -> None:
        """Offer "Continue" for `path` when it is the last.pt of a run of this workspace
        (a model loaded from elsewhere is not continued into its own folder)."""
        from training.vae.trainer import LAST

        self.continuable = None
        ws = self.state.workspace_path
        if path is not None and ws is not None and path.name == LAST \
                and runs_dir(ws).resolve() in path.resolve().parents:
            try:
                ckpt = ckpt or workers.check_checkpoint(path)
            except Exception:
                ckpt = None
            if ckpt is not None:
                self.continuable = (path, int(ckpt.epoch))
                left = int(ckpt.train_config.epochs) - int(ckpt.epoch)
                # a stopped run: the epochs it still had planned; a finished one: as many again
                self.more_epochs.setValue(left if left > 0 else max(int(ckpt.train_config.epochs), 1))
                self.resume_run_btn.setToolTip(
                    f"Continue {path.parent.name} from epoch {ckpt.epoch} with the same settings, "
                    "in the same run folder")
        self._update_buttons()

    def _show_configs(self, model, train) -> None:
        """Fill the form with a checkpoint's settings."""
        self.set_values({k: getattr(model, k) for k in MODEL_DEFAULTS})
        self.set_values({k: getattr(train, k) for k in TRAIN_DEFAULTS if hasattr(train, k)})

    def _check_interrupted(self) -> None:
        run = self.state.settings.interrupted_run()
        ws = self.state.workspace_path
        if run and ws and Path(run[0]) == Path(ws) and Path(run[1]).exists() and self.worker is None:
            try:
                ck = workers.check_checkpoint(Path(run[1]))
                done = f" after epoch {ck.epoch} of {ck.train_config.epochs}"
            except Exception:
                self.banner.hide()
                return
            self.banner_text.setText(f"Training was interrupted when the window closed{done}. "
                                     "Continue from its checkpoint?")
            self.banner.show()
            self.attentionRequested.emit()
        else:
            self.banner.hide()

    def _dismiss_banner(self) -> None:
        self.banner.hide()
        self.state.settings.set_interrupted_run(None, None)

    # -- commands
    def start(self, resume_from: Path | None = None, out_dir: Path | None = None,
              epochs: int | None = None) -> bool:
        """Start a new run (or resume from a checkpoint). Returns False when it cannot start.

        out_dir: where the run's last.pt/best.pt/history.json go (default: a new
        run-<time> folder in the workspace's runs folder); a resumed run keeps its folder.
        epochs: a resumed run's new total number of epochs (default: the checkpoint's).
        """
        if self.worker is not None:
            return False
        resume_epoch = 0
        try:
            if resume_from:
                import dataclasses

                ck = workers.check_checkpoint(Path(resume_from))
                model, train = ck.model_config, ck.train_config
                resume_epoch = int(ck.epoch)
                if epochs is not None or self.extra_train:
                    train = dataclasses.replace(train, **{**({"epochs": int(epochs)} if epochs else {}),
                                                          **self.extra_train})
                    train.validate()
                if train.epochs <= resume_epoch:
                    from training.config import ConfigError

                    raise ConfigError(f"the run has done {resume_epoch} of its {train.epochs} epochs: "
                                      "choose how many more to train beside Continue")
                self._show_configs(model, train)
            else:
                model, train = self.configs()
        except Exception as exc:
            self._show_error(workers.readable_error(exc))
            return False
        if self.state.busy:
            self._show_error("Wait for the ingest to finish before training")
            return False
        if resume_from:
            out_dir = Path(resume_from).parent
        elif out_dir is None:
            out_dir = new_run_folder(runs_dir(self.state.workspace_path), "run")
        self.plot.clear_curves()
        self.metrics_plot.clear_curves()
        self.history.clear()
        self.banner.hide()
        self.state.settings.set_interrupted_run(None, None)
        self.last_message = ""
        self.last_checkpoint = None
        self.eta.setText("")
        self._resume_epoch = resume_epoch
        self._show_epochs(resume_epoch, train.epochs)
        worker = workers.TrainingWorker(self.state.workspace_path, model, train, out_dir,
                                        resume=Path(resume_from) if resume_from else None, parent=self)
        worker.started_run.connect(self._on_started)
        worker.resumedHistory.connect(self._on_resumed_history)
        worker.epochEnded.connect(self._on_epoch)
        worker.reconstructions.connect(self._on_recon)
        worker.batchEnded.connect(self._on_batch)
        worker.checkpointSaved.connect(self._on_checkpoint)
        worker.finished_run.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.ended.connect(self._on_ended)
        self.worker = worker
        if resume_from:
            # the snapshots before the resumed epoch are on disk: read them off the GUI thread
            self._history_for = worker.resume
            self.history_loader.submit(workers.load_recon_history, worker.resume)
        self._set_state("running")
        worker.start()
        self.state.show_message("Training started…")
        return True

    def continue_interrupted(self) -> None:
        run = self.state.settings.interrupted_run()
        if run:
            try:  # a run that had reached its last epoch when the window closed: + more epochs
                ck = workers.check_checkpoint(Path(run[1]))
                more = ck.epoch + self.more_epochs.value() if ck.epoch >= ck.train_config.epochs else None
            except Exception:  # start() reports an unreadable checkpoint
                more = None
            self.start(resume_from=Path(run[1]), epochs=more)

    def continue_run(self) -> bool:
        """Continue the current run (stopped or finished) for `more_epochs` more epochs."""
        if self.continuable is None:
            return False
        path, epoch = self.continuable
        return self.start(resume_from=path, epochs=epoch + self.more_epochs.value())

    def toggle_pause(self) -> None:
        if self.worker is None:
            return
        if self.run_state == "paused":
            self.worker.resume_training()
            self._set_state("running")
            self.state.show_message("Training resumed")
        else:
            self.worker.pause()
            self._set_state("paused")
            self.state.show_message("Training paused", 0)

    def stop(self) -> None:
        if self.worker is not None and self.run_state != "stopping":
            self.worker.stop()
            self._set_state("stopping")
            self.state.show_message("Stopping at a checkpoint…")

    def is_training(self) -> bool:
        return self.worker is not None

    # -- worker signals
    def _on_started(self, start_epoch: int, epochs: int) -> None:
        self.plot.set_epoch_range(epochs)
        self.metrics_plot.set_epoch_range(epochs)
        self._show_epochs(start_epoch, epochs)
        self._start_time = time.monotonic()
        self._paused_s = 0.0  # time spent paused is not time per epoch
        self._start_epoch = start_epoch

    def _on_resumed_history(self, history: list) -> None:
        for row in history:
            self.plot.add_epoch(int(row.get("epoch", 0)), workers.losses_of(row))
            self.metrics_plot.add_epoch(int(row.get("epoch", 0)), row.get("metrics"))

    def _on_epoch(self, ev: dict) -> None:
        epoch, epochs = ev["epoch"], ev["epochs"]
        self.plot.add_epoch(epoch, {k: ev[k] for k in ("train", "test") if ev.get(k)})
        self.metrics_plot.add_epoch(epoch, ev.get("metrics"))
        self._show_epochs(epoch, epochs)
        elapsed = time.monotonic() - getattr(self, "_start_time", time.monotonic()) - self._paused_total()
        done = max(epoch - getattr(self, "_start_epoch", 0), 1)
        eta = elapsed / done * (epochs - epoch)
        rate = ev.get("images_per_s")
        self._eta_text = f"ETA {format_duration(eta)}" + (f" · {rate:.0f} img/s" if rate else "")
        if self.run_state != "paused":
            self.eta.setText(self._eta_text)
        total = (ev.get("train") or {}).get("total")
        if total is not None:
            self.state.show_message(f"Epoch {epoch}/{epochs}: train loss {total:.4g}", 0)

    def _on_recon(self, epoch: int, rows: list) -> None:
        # Drawn a moment after the epoch's curves, so the two redraws fall into separate
        # turns of the event loop instead of one long one.
        # The grid as context: the timer is dropped if the tab is destroyed before it fires.
        QTimer.singleShot(RECON_DELAY_MS, self.history, lambda: self.history.add_snapshot(epoch, rows))

    def _on_batch(self, batch: int, n_batches: int) -> None:
        self.batch_progress.setRange(0, max(n_batches, 1))
        self.batch_progress.setValue(batch)

    def _on_checkpoint(self, path: str) -> None:
        if self.worker is not None and Path(path) == self.worker.checkpoint_path:
            self.last_checkpoint = Path(path)  # last.pt; best.pt is written beside it
            # The explorer tabs follow training: each checkpoint becomes the current model
            # (hidden tabs only mark themselves stale; the visible one refreshes off-thread).
            self.state.set_checkpoint(self.last_checkpoint)

    def _on_finished(self, message: str) -> None:
        self.last_message = message
        self.state.show_message(message, 0)

    def _on_failed(self, message: str) -> None:
        self.last_message = message
        self._show_error(message)

    def _on_ended(self) -> None:
        worker, self.worker = self.worker, None
        self._resume_epoch = 0
        self._set_state("idle")
        self.eta.setText("")  # an ETA of a run that has ended would be stale
        self.batch_progress.setValue(0)
        if self.last_checkpoint is not None and self.last_checkpoint.exists():
            self._set_continuable(self.last_checkpoint)
            self.state.set_checkpoint(self.last_checkpoint)
        if worker is not None:
            worker.deleteLater()

    def _show_no_run(self) -> None:
        """No run started or shown: an empty bar saying so (not "epoch 0 / 100")."""
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("no run yet")

    def _show_epochs(self, epoch: int, epochs: int) -> None:
        self.progress.setRange(0, epochs)
        self.progress.setValue(epoch)
        self.progress.setFormat("epoch %v / %m · paused" if self.run_state == "paused" else "epoch %v / %m")

    def _show_error(self, message: str) -> None:
        self.error.setText(message)
        self.state.show_message(message, 0)

    def _paused_total(self) -> float:
        since = getattr(self, "_paused_since", None)
        return getattr(self, "_paused_s", 0.0) + (time.monotonic() - since if since is not None else 0.0)

    def _set_state(self, s: str) -> None:
        if s == "paused" and self.run_state != "paused":
            self._paused_since = time.monotonic()
            self.eta.setText("paused")
            self.progress.setFormat("epoch %v / %m · paused")
        elif s != "paused" and self.run_state == "paused":
            self._paused_s = self._paused_total()
            self._paused_since = None
            self.progress.setFormat("epoch %v / %m")
            self.eta.setText(getattr(self, "_eta_text", "") if s == "running" else "")
        self.run_state = s
        self.state.training = s != "idle"
        self.pause_btn.setText("Resume" if s == "paused" else "Pause")
        self.pause_btn.setIcon(self.style().standardIcon(
            QtWidgets.QStyle.StandardPixmap.SP_MediaPlay if s == "paused"
            else QtWidgets.QStyle.StandardPixmap.SP_MediaPause))
        self._update_buttons()
        self.trainingStateChanged.emit(s)

    def _update_buttons(self) -> None:
        idle = self.worker is None
        self.start_btn.setEnabled(idle and self._valid and not self.state.busy)
        can_continue = idle and self.continuable is not None and not self.state.busy
        self.resume_run_btn.setEnabled(can_continue)
        self.more_epochs.setEnabled(can_continue)
        self.pause_btn.setEnabled(not idle and self.run_state in ("running", "paused"))
        self.stop_btn.setEnabled(not idle and self.run_state != "stopping")
        for w in self.fields.values():
            w.setEnabled(idle)

    def loss_table(self) -> tuple[list[str], list[list]]:
        """The loss curves' numbers: one row per (epoch, split, term), in nats per image."""
        rows = [[int(x), split, term, float(y)]
                for (split, term), (xs, ys) in sorted(self.plot.data.items()) for x, y in zip(xs, ys)]
        return ["epoch", "split", "term", "loss_per_image"], rows

    def export(self, path: Path) -> Path:
        """The loss curves alone, with their key: .png/.svg/.pdf the figure, .csv its
        numbers (epoch, split, term, loss_per_image). The reconstruction grid has its own
        Export button (`recon_export`)."""
        import csv
        import io

        from training.atomic import atomic_write_text

        path = Path(path)
        if path.suffix.lower() != ".csv":
            return self.curves_export.export(path.suffix.lstrip(".").lower() or "png", path)
        text = io.StringIO()
        out = csv.writer(text)
        header, rows = self.loss_table()
        out.writerow(header)
        for epoch, split, term, value in rows:
            out.writerow([epoch, split, term, repr(value)])
        return atomic_write_text(path, text.getvalue())

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Window closing: stop at a checkpoint and remember it for the next start."""
        self.history_loader.shutdown()
        if self.worker is None:
            return
        worker = self.worker
        worker.stop()
        worker.wait(int(timeout_s * 1000))
        ckpt = worker.checkpoint_path if worker.checkpoint_path.exists() else None
        if ckpt is not None and self.state.workspace_path is not None:
            self.state.settings.set_interrupted_run(self.state.workspace_path, ckpt)


class _LineIfAny(QtWidgets.QLabel):
    """A label shown only while it has text (no empty gap above the form)."""

    def setText(self, text: str) -> None:  # noqa: N802 (Qt name)
        super().setText(text)
        self.setVisible(bool(text))


class _CurvesExportButton(figures.ExportButton):
    """The loss plot's Export button: the figure is drawn with a legend inside it (on
    screen the key sits below the plot, which an exported plot alone would lose)."""

    def export(self, fmt, path):
        with self.view().legend_shown():
            return super().export(fmt, path)

    def start_export(self, fmt, path):
        with self.view().legend_shown():  # drawn now, on the GUI thread; encoded in the job
            return super().start_export(fmt, path)

    def copy(self):
        with self.view().legend_shown():
            return super().copy()


PANEL = TrainerPanel
