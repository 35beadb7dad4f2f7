"""Thin adapters running the headless core in worker threads and speaking Qt signals.

Nothing here computes: `run_ingest` calls training.store.ingest.ingest, `run_rederive` calls
training.store.ingest.rederive, TrainingWorker drives training.vae.trainer. Core callbacks run on
the worker thread and only emit signals (queued to the GUI thread); widgets are never
touched from a worker. Progress signals are throttled so a fast callback cannot flood
the GUI's event loop.
"""

from __future__ import annotations

import atexit
import errno
import functools
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from explorer.qt import QObject, QThread, Signal
from explorer.widgets.patient_list import PatientRow

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.05


class CancelFlag(threading.Event):
    """A threading.Event that is also a zero-argument callable returning whether it is set."""

    def __call__(self) -> bool:
        return self.is_set()


def readable_error(exc: BaseException) -> str:
    """One line for the user: what went wrong and where, no traceback."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"The disk is full{f' ({exc.filename})' if exc.filename else ''}: free some space and try again."
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"Permission denied: {exc.filename or exc}"
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        return f"The disk is full: {exc}"
    text = str(exc).strip() or type(exc).__name__
    name = type(exc).__name__
    if name in ("ConfigError", "CheckpointError", "WorkspaceError", "DicomError", "IngestError",
                "TrainingError", "TrainingFailed", "FileNotFoundError"):
        return text
    return f"{name}: {text}"


def patient_row(info: Any, thumbnail: np.ndarray | None = None) -> PatientRow:
    """PatientRow from a training.store.workspace.PatientInfo (or anything with its attributes)."""
    if isinstance(info, PatientRow):
        return info
    get = (lambda k, d=None: info.get(k, d)) if isinstance(info, dict) else \
          (lambda k, d=None: getattr(info, k, d))
    spacing = get("spacing")
    return PatientRow(
        pseudonym=str(get("pseudonym", "?")),
        n_images=int(get("n_images", 0) or 0),
        spacing=tuple(float(s) for s in spacing) if spacing is not None else None,
        rois=tuple(get("rois", ()) or ()),
        split=str(get("split", "") or ""),
        thumbnail=thumbnail if thumbnail is not None else get("thumbnail"),
    )


PHASES = {"discover": "Listing files", "scan": "Reading DICOM headers", "ingest": "Ingesting",
          "rederive": "Re-deriving", "merge": "Writing the workspace", "generate": "Generating"}


def _parse_progress(args: tuple, kwargs: dict) -> tuple[int, int, str]:
    """(done, total, text) from the core's progress(phase, done, total, message),
    progress(done, total[, text]) or progress(event)."""
    if args and isinstance(args[0], str):  # training.store.ingest: (phase, done, total, message)
        phase = PHASES.get(args[0], args[0].capitalize())
        done = int(args[1]) if len(args) > 1 else 0
        total = int(args[2]) if len(args) > 2 else 0
        msg = str(args[3]) if len(args) > 3 and args[3] else ""
        return done, total, f"{phase}: {msg}" if msg else phase
    if len(args) == 1 and not isinstance(args[0], (int, float)):
        ev = args[0]
        get = ev.get if isinstance(ev, dict) else (lambda k, d=None: getattr(ev, k, d))
        done = get("done", get("current", 0))
        total = get("total", 0)
        text = get("message", get("text", get("stage", ""))) or ""
        return int(done or 0), int(total or 0), str(text)
    done = int(args[0]) if len(args) > 0 else int(kwargs.get("done", 0))
    total = int(args[1]) if len(args) > 1 else int(kwargs.get("total", 0))
    text = str(args[2]) if len(args) > 2 and isinstance(args[2], str) else str(kwargs.get("message", ""))
    return done, total, text


def describe_result(result: Any) -> str:
    if result is None:
        return "Done"
    if isinstance(result, str):
        return result
    parts = []
    # entries are CT series (a patient may have several): the count says so
    for key, word in (("added", "series added"), ("unchanged", "unchanged"), ("rederived", "re-derived")):
        v = getattr(result, key, None)
        if v is not None:
            n = len(v) if hasattr(v, "__len__") else int(v)
            parts.append(f"{n} {word}")
    skipped = getattr(result, "skipped", None)
    if skipped is not None:
        parts.append(f"{len(skipped)} file(s) skipped")
    missing = getattr(result, "rois_missing", None)
    if missing:
        if isinstance(missing, dict):
            miss = ", ".join(f"{k} in {len(v)} series" for k, v in missing.items())
        else:
            miss = ", ".join(map(str, missing))
        parts.append(f"ROIs missing: {miss}")
    cancelled = bool(getattr(result, "cancelled", False))
    notes = getattr(result, "notes", None)  # e.g. a one-time pseudonym key migration
    if notes and isinstance(notes, list):
        log.info("ingest notes: %s", "; ".join(map(str, notes)))
        parts.append(str(notes[0]))
    if cancelled:  # what was committed before the cancel is kept
        return "Ingest cancelled: " + (", ".join(parts) if parts else "nothing stored")
    return "Ingest finished: " + ", ".join(parts) if parts else "Done"


class JobContext:
    """What a job function gets: progress, patient and skipped reporting, and the cancel flag."""

    def __init__(self, job: "Job") -> None:
        self._job = job
        self.cancel = job.cancel_flag
        self._last = 0.0
        self._phase = None

    def progress(self, *args, **kwargs) -> None:
        done, total, text = _parse_progress(args, kwargs)
        now = time.monotonic()
        if (now - self._last >= PROGRESS_INTERVAL_S or (total and done >= total)
                or (args and args[0] != self._phase)):
            self._last = now
            self._phase = args[0] if args else None
            self._job._emit(self._job.progress, done, total, text)

    def patient(self, info: Any, thumbnail: np.ndarray | None = None) -> None:
        self._job._emit(self._job.patientCommitted, patient_row(info, thumbnail))

    def skipped(self, path: Any, reason: Any) -> None:
        self._job._emit(self._job.skipped, str(path), str(reason))

    def switch_workspace(self, path: Path) -> None:
        """After the job, the window opens `path` (the demo's workspace)."""
        self._job.workspace_switch = Path(path)


class _Runner(QThread):
    def __init__(self, job: "Job") -> None:
        super().__init__()
        self._job = job

    def run(self) -> None:
        self._job._run()


# Runners of jobs whose QObject was destroyed (their parent widget closed) while they ran:
# kept referenced until they finish, since a QThread destroyed while running aborts the
# process. Waited for when the application quits and when Python exits.
_ORPHANED: set[_Runner] = set()


def _orphan(attrs: dict) -> None:
    """A Job was destroyed: cancel it, stop its signals, keep its runner until it ends."""
    attrs["_orphaned"] = True
    attrs["cancel_flag"].set()
    runner = attrs.get("_thread")
    try:
        running = runner is not None and not runner.isFinished()
    except RuntimeError:  # its C++ side is gone already (interpreter shutdown): nothing runs
        return
    if running:
        _ORPHANED.add(runner)
        runner.finished.connect(lambda r=runner: _ORPHANED.discard(r))


def wait_orphaned(timeout_ms: int = 30_000) -> bool:
    """Wait for cancelled jobs of destroyed owners to end; whether all did."""
    deadline = time.monotonic() + timeout_ms / 1000
    for runner in list(_ORPHANED):
        runner.wait(max(0, int((deadline - time.monotonic()) * 1000)))
        if runner.isFinished():
            _ORPHANED.discard(runner)
    return not _ORPHANED


atexit.register(wait_orphaned)


class _OwnsThread:
    """wait / is_running for a worker object whose QThread is `self._thread`."""

    _thread: QThread

    def wait(self, ms: int = -1) -> bool:
        return self._thread.wait(ms) if ms >= 0 else self._thread.wait()

    def is_running(self) -> bool:
        return self._thread.isRunning()


class Job(_OwnsThread, QObject):
    """Runs `fn(ctx, *args, **kwargs)` on a QThread; its return value arrives in `done`.

    Signals (received on the GUI thread): progress(done, total, text),
    patientCommitted(PatientRow), skipped(path, reason), done(result), failed(message),
    ended() — always last.
    """

    progress = Signal(int, int, str)
    patientCommitted = Signal(object)
    skipped = Signal(str, str)
    done = Signal(object)
    failed = Signal(str)
    ended = Signal()

    def __init__(self, fn: Callable, *args, parent: QObject | None = None, **kwargs) -> None:
        super().__init__(parent)
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.cancel_flag = CancelFlag()
        self.workspace_switch: Path | None = None
        self.result: Any = None
        self.error: str | None = None
        self._orphaned = False  # set when this QObject is destroyed while the job runs
        self._thread = _Runner(self)
        self._thread.finished.connect(self.ended)
        self.destroyed.connect(functools.partial(_orphan, self.__dict__))
        from explorer.qt import QtCore

        app = QtCore.QCoreApplication.instance()
        if app is not None and not getattr(app, "_ct_vae_waits_orphans", False):
            app._ct_vae_waits_orphans = True
            app.aboutToQuit.connect(wait_orphaned)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self.cancel_flag.set()

    def _run(self) -> None:
        try:
            self.result = self._fn(JobContext(self), *self._args, **self._kwargs)
            self._emit(self.done, self.result)
        except BaseException as exc:  # shown to the user as one line; the log keeps the traceback
            log.exception("background job failed")
            self.error = readable_error(exc)
            self._emit(self.failed, self.error)

    def _emit(self, signal, *args) -> None:
        """Emit from the worker thread unless the Job's QObject is gone (its owner closed)."""
        if self._orphaned:
            return
        try:
            signal.emit(*args)
        except RuntimeError:  # destroyed between the check and the emit
            pass


# -- job functions (run on the worker thread) ---------------------------------------------


def committed_thumbnail(workspace: Path, pseudonym: str) -> np.ndarray | None:
    """Middle image of a just-committed entry (Workspace.open includes staged entries)."""
    from training.store.workspace import Workspace

    try:
        with Workspace.open(workspace) as ws:
            i = ws.patient_index(pseudonym)
            n = ws.patients[i].n_images
            if not n:
                return None
            image = ws.read_images(np.array([[i, n // 2]]))[0]
    except Exception:  # a thumbnail is a nicety; the list shows the row without one
        return None
    from explorer.widgets.image_grid import as_slice

    return as_slice(image)


def read_thumbnails(workspace: Path, pseudonyms: list[str]) -> tuple[Path, dict[str, np.ndarray]]:
    """(workspace, {pseudonym: middle image as a display slice}) for the list's icons.

    Runs on a worker thread: a large workspace's thumbnails take 1 ms or more each
    (~25 ms for 30 patients of 24 slices, so seconds for a few thousand)."""
    from training.store.workspace import Workspace

    from explorer.widgets.image_grid import as_slice

    out: dict[str, np.ndarray] = {}
    with Workspace.open(workspace) as ws:
        for pseudonym in pseudonyms:
            try:
                i = ws.patient_index(pseudonym)
                n = ws.patients[i].n_images
                if n:
                    out[pseudonym] = as_slice(ws.read_images(np.array([[i, n // 2]]))[0])
            except Exception:  # one unreadable entry: its row stays without a thumbnail
                log.warning("no thumbnail for %s", pseudonym, exc_info=True)
    return Path(workspace), out


def run_ingest(ctx: JobContext, paths: list[Path], workspace: Path, preprocess, workers: int = 2):
    """training.store.ingest.ingest with its progress, patients and skipped files forwarded."""
    from training.store.ingest import ingest

    def on_patient(info) -> None:
        ctx.patient(info, committed_thumbnail(Path(workspace), info.pseudonym))

    # Skipped files are listed as they are found (most during the header scan).
    return ingest([Path(p) for p in paths], Path(workspace), preprocess,
                  progress=ctx.progress, on_patient=on_patient, on_skipped=ctx.skipped,
                  cancel=ctx.cancel, workers=workers)


def run_rederive(ctx: JobContext, workspace: Path, cfg):
    """training.store.ingest.rederive: recompute the workspace's arrays for new settings."""
    from training.store.ingest import rederive

    return rederive(Path(workspace), cfg, progress=ctx.progress, cancel=ctx.cancel)


# -- checkpoints -------------------------------------------------------------------------


def check_checkpoint(path: Path):
    """Read a checkpoint safely (weights_only) to validate it; returns the Checkpoint."""
    from training.vae.checkpoint import load_checkpoint

    return load_checkpoint(path)


def check_model(path: Path):
    """check_checkpoint, and its weights must build its network (what "Load model" needs
    before it says the model is loaded); CheckpointError in one line otherwise."""
    from training.vae.checkpoint import build_checked_model

    ck = check_checkpoint(path)
    build_checked_model(ck)
    return ck


def latest_checkpoint(workspace: Path) -> Path | None:
    """The newest last.pt in the workspace's runs folder whose data hash matches the
    workspace as it is now (a re-derive or new patients make older models stale)."""
    from explorer.settings import runs_dir
    from training.store.workspace import Workspace

    folder = runs_dir(workspace)
    if not Path(workspace).exists() or not folder.is_dir():
        return None
    candidates = sorted(folder.glob("*/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        return None
    from training.vae.checkpoint import CheckpointError, load_checkpoint

    try:
        with Workspace.open(workspace) as ws:
            data_hash = ws.data_hash
    except Exception:  # an unreadable workspace: open without a model
        log.exception("looking for the latest checkpoint")
        return None
    for path in candidates[:5]:  # mapped, not read: only the data hash is looked at
        try:
            if load_checkpoint(path, mmap=True).data_hash == data_hash:
                return path
        except CheckpointError as exc:  # a damaged run: the next one may do
            log.warning("%s", exc)
    return None


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """Copy a checkpoint atomically (temp file in the target folder, fsync, os.replace)."""
    from training.vae.checkpoint import atomic_write

    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    return atomic_write(dst, write)



# -- preview --------------------------------------------------------------------------


def preview_patient(ctx, workspace: Path, pseudonym: str, cfg) -> dict:
    """The chosen entry preprocessed with `cfg` (not stored): images, labels, roi names, note.

    Runs the ingest's derivation on the stored source (HU and ROI masks); entries without
    stored source data show their stored images instead.
    """
    from training.store.workspace import Workspace

    with Workspace.open(workspace) as ws:
        index = ws.patient_index(pseudonym)
        info = ws.patients[index]
        if info.has_source:
            # The ingest's own derivation (labels, then preprocess_volume), so the preview
            # is exactly what "Apply" would store.
            from training.store.ingest import derive

            hu, masks, geometry = ws.read_source(index)
            positions = geometry if geometry is not None else np.arange(hu.shape[0], dtype=float)
            images, labels, missing = derive(hu, masks, positions, cfg)
            note = f" — {', '.join(missing)} missing in this patient" if missing else ""
            z_mm = _preview_z(positions, cfg, images)
        else:
            images, labels = ws.read_patient(index)
            note = " (no source stored: the workspace's images)"
            cfg = ws.preprocess
            z_mm = None
    images = np.asarray(images)
    if images.ndim == 4:  # 3D: one cube (1, D, H, W) → its depth slices
        images = images[0]
        labels = None if labels is None else np.asarray(labels)[0]
    return {"images": images, "labels": labels, "rois": tuple(cfg.rois), "note": note,
            "pseudonym": pseudonym, "z_mm": z_mm}


def _preview_z(positions, cfg, images) -> np.ndarray | None:
    """z in mm of the preview's slices (training.store.preprocess.output_positions)."""
    from training.store.preprocess import output_positions

    a = np.asarray(images)
    n = a.shape[1] if a.ndim == 4 else a.shape[0]  # 3D: (1, D, H, W)
    try:
        return output_positions(positions, cfg, n)
    except ValueError:
        return None


# -- training -----------------------------------------------------------------------------


def losses_of(row: dict) -> dict[str, dict[str, float]]:
    """{"train": terms, "test": terms} of one history row (test may be missing)."""
    return {k: row[k] for k in ("train", "test") if row.get(k)}


def recon_rows(inputs: dict, recons: dict) -> list[tuple[str, np.ndarray]]:
    """Rows for ReconstructionHistory: each split's CT inputs over their reconstructions.

    inputs/recons: {"train": (n, C, *spatial), "test": …}; channel 0 is the CT in [0, 1].
    """
    rows = []
    for split in ("train", "test"):
        if split in inputs and split in recons:
            rows.append((f"{split} input", np.array(inputs[split][:, 0], dtype=np.float32)))
            rows.append((f"{split} recon.", np.array(recons[split][:, 0], dtype=np.float32)))
    return rows


def load_recon_history(checkpoint: Path) -> tuple[Path, list[tuple[int, list[tuple[str, np.ndarray]]]]]:
    """The reconstruction snapshots kept beside a checkpoint (training.vae.recon_history), as
    (checkpoint, [(epoch, rows for ReconstructionHistory)]). Off the GUI thread."""
    from training.vae import recon_history

    out = []
    for epoch, arrays in recon_history.load_snapshots(Path(checkpoint).parent):
        rows = []
        for split in recon_history.SPLITS:
            if f"{split}_input" in arrays and f"{split}_recon" in arrays:
                rows.append((f"{split} input", arrays[f"{split}_input"]))
                rows.append((f"{split} recon.", arrays[f"{split}_recon"]))
        if rows:
            out.append((epoch, rows))
    return Path(checkpoint), out


class _TrainerCallback:
    """training.vae.trainer.Callback → TrainingWorker signals (runs on the training thread)."""

    def __init__(self, worker: "TrainingWorker") -> None:
        self.w = worker
        self.trainer = None
        self._last_batch = 0.0

    def on_train_start(self, trainer) -> None:
        self.trainer = trainer
        history = list(trainer.history)
        self.w.started_run.emit(len(history), trainer.train_config.epochs)
        if history:
            self.w.resumedHistory.emit(history)

    def on_batch_end(self, p) -> None:
        now = time.monotonic()
        if now - self._last_batch >= 0.1 or p.batch == p.n_batches:
            self._last_batch = now
            self.w.batchEnded.emit(int(p.batch), int(p.n_batches))

    def on_epoch_end(self, epoch, train_terms, test_terms) -> None:
        row = self.trainer.history[-1] if self.trainer and self.trainer.history else {}
        self.w.epochEnded.emit({
            "epoch": int(epoch), "epochs": int(self.trainer.train_config.epochs) if self.trainer else int(epoch),
            "train": dict(train_terms or {}), "test": dict(test_terms) if test_terms else None,
            "images_per_s": row.get("train_images_per_s"), "seconds": row.get("seconds"),
            "metrics": row.get("metrics")})

    def on_reconstructions(self, epoch, inputs, recons) -> None:
        self.w.reconstructions.emit(int(epoch), recon_rows(inputs, recons))

    def on_checkpoint(self, path, epoch) -> None:
        self.w.checkpointSaved.emit(str(path))

    def on_finished(self, summary) -> None:
        self.w.summary = summary
        if summary.status == "finished":
            msg = f"Training finished: {summary.epochs_completed} epochs"
        elif summary.status == "stopped":
            msg = f"Training stopped after epoch {summary.epochs_completed}; checkpoint saved"
        elif summary.status == "early_stopped":
            msg = f"Early stop: {summary.message}"
        else:
            msg = summary.message or summary.status
        if summary.train_images_per_s:
            msg += f" ({summary.train_images_per_s:.0f} images/s)"
        self.w.finished_run.emit(msg)

    def on_failed(self, message) -> None:
        self.w.failed.emit(_humanise_training_error(str(message)))


def _humanise_training_error(message: str) -> str:
    if "No space left" in message or "Errno 28" in message:
        return "The disk is full: the checkpoint could not be written. Free some space and try again."
    return message[:1].upper() + message[1:] if message else "Training failed"


class _TrainThread(QThread):
    def __init__(self, worker: "TrainingWorker") -> None:
        super().__init__()
        self.w = worker

    def run(self) -> None:
        self.w._run()


class TrainingWorker(_OwnsThread, QObject):
    """Runs training.vae.trainer.Trainer on a QThread; checkpoints go to out_dir/last.pt.

    Signals (GUI thread): started_run(start_epoch, epochs), resumedHistory(list of
    history rows), epochEnded(dict: epoch, epochs, train, test, images_per_s, seconds),
    reconstructions(epoch, rows), batchEnded(batch, n_batches), checkpointSaved(path),
    finished_run(message), failed(message), ended() — always last.
    """

    started_run = Signal(int, int)
    resumedHistory = Signal(object)
    epochEnded = Signal(object)
    reconstructions = Signal(int, object)
    batchEnded = Signal(int, int)
    checkpointSaved = Signal(str)
    finished_run = Signal(str)
    failed = Signal(str)
    ended = Signal()

    def __init__(self, workspace: Path, model_config, train_config, out_dir: Path, *,
                 resume: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        from training.vae.trainer import LAST, TrainingControl

        self.workspace = Path(workspace)
        self.model_config, self.train_config = model_config, train_config
        self.out_dir = Path(out_dir)
        self.resume = Path(resume) if resume else None
        self.checkpoint_path = self.out_dir / LAST
        self.control = TrainingControl()
        self.summary = None
        self._thread = _TrainThread(self)
        self._thread.finished.connect(self.ended)

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        self.control.pause()

    def resume_training(self) -> None:
        self.control.resume()

    def stop(self) -> None:
        self.control.stop()

    def _run(self) -> None:
        try:
            from training.vae.trainer import Trainer

            trainer = Trainer(self.workspace, self.model_config, self.train_config,
                              out_dir=self.out_dir, callbacks=[_TrainerCallback(self)],
                              control=self.control, resume=self.resume)
            trainer.run()  # failures arrive through on_failed
        except BaseException as exc:
            log.exception("training could not start")
            self.failed.emit(readable_error(exc))
