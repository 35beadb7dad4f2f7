"""The headless training engine (SPEC F13-F16), driven by plain callbacks.

A `Trainer` trains the VAE on a workspace's "train" split with Adam and evaluates the
"test" split after every epoch (the split is by patient, made when the workspace was
built). It fires `Callback` hooks, obeys a `TrainingControl` (pause, resume, stop from
any thread), writes checkpoints every `checkpoint_every` epochs and when it stops, and
stops with a clear message when a loss becomes NaN or exceeds `max_loss`, keeping the
weights of the last good epoch.

Conventions:
- Epoch numbers given to callbacks and stored in the history count completed epochs
  (1 = the first epoch has finished); `Checkpoint.epoch` is the same count.
- Loss terms are dicts {"total", "recon", "kl", "ce"} in nats per image (sums over the
  pixels and latent dimensions of one image, averaged over images; see training.vae.losses).
  KL is KL(q(z|x) ‖ N(0, σz² I)).
- `TrainConfig.batch_size` is the global batch (split over processes under torchrun).

Determinism: the weights are initialised from `seed`; epoch e visits the training images
in the permutation seeded by seed + e; the reparameterisation noise comes from generators
seeded by (seed, epoch), drawn for the whole global batch, so one process and W processes
draw the same codes; dropout uses torch's global generator, whose state is saved in the
checkpoint. On the CPU a seed gives the same run, and a resumed run continues the same
loss curve.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from training.vae import metrics as recon_metrics
from training.vae import recon_history
from training.vae.checkpoint import (Checkpoint, atomic_write_text, build_checked_model, load_checkpoint,
                                     save_checkpoint)
from training.config import ConfigError, ModelConfig, TrainConfig
from training.vae.data import BatchStream, EpochSampler, InMemoryItems, evenly_spaced, input_on_device
from training.vae.distributed import SingleProcess, physical_cores
from training.vae.losses import class_counts, inverse_frequency_weights, loss_per_image
from training.vae.model import VAE, VAEOutput, build_model, channels_last_format, model_config_for

log = logging.getLogger(__name__)

TERMS = ("total", "recon", "kl", "ce")
LAST = "last.pt"
BEST = "best.pt"
HISTORY = "history.json"

# channels_last for 3D: measured in benchmarks/train.py (see benchmarks/README.md).
# 32³, 24 filters, batch 4, 4 threads: 59 vs 31 images/s on CPU; on an H200 channels_last_3d
# was also ahead (benchmarks/README.md "Model"), so 3D uses it too.
CHANNELS_LAST_3D = True


# -- augmentation by the approximate prior (thesis 4.5.2, Algorithm 2) -----------------------


def sample_aggregate_posterior(mu: torch.Tensor, logvar: torch.Tensor, n: int,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """n exact draws from p̃(z) = (1/K) Σ_k N(µ_k, diag σ_k²) (thesis Algorithm 2).

    mu, logvar: (K, J) posterior parameters of the K training images (log σ², natural
    log). For each draw an index k is picked uniformly, then z ~ N(µ_k, σ_k²). Returns
    (n, J) on mu's device. The generator must live on mu's device.
    """
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must both be (K, J), got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if mu.shape[0] == 0:
        raise ValueError("the aggregate posterior needs at least one encoded image")
    k = torch.randint(mu.shape[0], (n,), generator=generator, device=mu.device)
    eps = torch.randn((n, mu.shape[1]), generator=generator, device=mu.device, dtype=mu.dtype)
    return mu[k] + torch.exp(0.5 * logvar[k]) * eps


# -- events and control ----------------------------------------------------------------------


@dataclass
class BatchProgress:
    """Where the run is, after each batch (for progress bars).

    epoch: the epoch in progress, 1-based, of `epochs`; batch: batches done in it, of
    `n_batches`; terms: running per-image means over the epoch so far (global over
    processes); images_per_s: training throughput of this epoch so far; eta_s: estimated
    seconds until the last epoch ends (training batches only).
    """

    epoch: int
    epochs: int
    batch: int
    n_batches: int
    images: int
    terms: dict[str, float]
    images_per_s: float
    elapsed_s: float
    eta_s: float


@dataclass
class TrainSummary:
    """How a run ended.

    status: "finished", "stopped" (TrainingControl.stop), "early_stopped" (test loss did
    not improve for `early_stopping_patience` epochs) or "failed" (message says why).
    train_images_per_s: training images per second of the training phase (batches,
    reads, callbacks and bookkeeping; test evaluation and checkpoint writing excluded);
    images_per_s: training images per second of wall time over the whole run.
    """

    status: str
    message: str
    epochs_completed: int
    epochs: int
    final_train: dict[str, float] | None
    final_test: dict[str, float] | None
    best_epoch: int | None
    best_test: float | None
    seconds: float
    train_images_per_s: float
    images_per_s: float
    last_checkpoint: str | None
    best_checkpoint: str | None
    device: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return d


class Callback:
    """Hooks the trainer calls on the main process; override the ones you need.

    They run on the training thread: a GUI adapter should only emit signals here.
    inputs/recons in on_reconstructions are dicts {"train": array, "test": array} of
    float32 (n, 1 + n_classes, *spatial): channel 0 CT in [0, 1], then the one-hot RT
    (inputs) or the RT softmax probabilities (recons); the recons decode z = µ.
    """

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_batch_end(self, progress: BatchProgress) -> None: ...

    def on_epoch_end(self, epoch: int, train_terms: dict[str, float],
                     test_terms: dict[str, float] | None) -> None: ...

    def on_reconstructions(self, epoch: int, inputs: dict[str, np.ndarray],
                           recons: dict[str, np.ndarray]) -> None: ...

    def on_checkpoint(self, path: Path, epoch: int) -> None: ...

    def on_finished(self, summary: TrainSummary) -> None: ...

    def on_failed(self, message: str) -> None: ...


class TrainingControl:
    """Pause, resume and stop a run from another thread (checked between batches).

    stop() also ends a pause. A stopped run saves the state of its last completed epoch.
    """

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_if_paused(self) -> None:
        while not self._running.wait(timeout=0.2):
            pass


class TrainingFailed(RuntimeError):
    """A NaN or exploding loss ended the run; the message says where and which term."""


# -- the step the processes run (DDP must see every forward through its wrapper) -------------


class _ElboStep(nn.Module):
    """Encode, draw z = µ + σ ⊙ ε with the given ε, decode (U draws per input, sample-major)."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> VAEOutput:
        mu, logvar = self.vae.encode(x)
        u = eps.shape[0] // mu.shape[0]
        m, lv = (mu, logvar) if u == 1 else (mu.repeat(u, 1), logvar.repeat(u, 1))
        z = m + torch.exp(0.5 * lv) * eps
        ct, rt = self.vae.decode(z)
        return VAEOutput(ct, rt, mu, logvar, z, u)


def autocast_context(device: torch.device, mode: str, allow_cpu: bool = False):
    """The forward pass's autocast: bfloat16 for mode "bf16" on a CUDA device (TrainConfig.
    autocast); a no-op otherwise. On the CPU bf16 autocast is slower than float32, so the
    trainer never uses it there (allow_cpu exists for tests of the code path)."""
    if mode == "bf16" and (device.type == "cuda" or allow_cpu):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_for(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


# -- the engine ------------------------------------------------------------------------------


def _plain_failure(exc: BaseException) -> str | None:
    """The one-line message for a failure that is not a bug: stored data failing its
    checksum (WorkspaceError names the entry), or a write refused for want of room."""
    from training.store.workspace import WorkspaceError, storage_error

    if isinstance(exc, WorkspaceError) or "WorkspaceError" in type(exc).__name__:
        lines = [x for x in str(exc).splitlines() if x.strip()]
        # a DataLoader worker re-raises with its traceback in the text: keep the cause
        last = lines[-1] if lines else ""
        if last.startswith(("training.store.workspace.WorkspaceError: ", "WorkspaceError: ")):
            last = last.split(": ", 1)[1]
        return f"training stopped: {last}"
    cause = storage_error(exc)
    if cause is not None:
        where = getattr(exc, "path", None) or getattr(exc, "filename", None) or "a file"
        return (f"training stopped: {cause} while writing {where}; the checkpoints written "
                "before are intact")
    return None


class Trainer:
    """Train a VAE on a workspace.

    workspace: a path to the HDF5 workspace, or an open workspace object.
    model_config: None derives it from the workspace (training.vae.model.model_config_for);
    given, its spatial_dims / input_size / n_classes must fit the workspace.
    resume: a checkpoint path or Checkpoint to continue from (its ModelConfig is used;
    train_config, when given, may change e.g. epochs; the data hash must match).
    out_dir: where last.pt, best.pt, history.json and the reconstruction snapshots
    (reconstructions/epoch_NNNNN.npz, training.vae.recon_history) go (None: nothing is written).
    strategy: training.vae.distributed.SingleProcess (default) or DDPStrategy.
    data_workers: processes reading training batches (None: up to 4 on a GPU, 0 on the
    CPU, where one background thread keeps up and adds no process start-up per epoch).
    """

    def __init__(self, workspace, model_config: ModelConfig | None = None,
                 train_config: TrainConfig | None = None, *, out_dir: str | os.PathLike | None = None,
                 callbacks: Sequence[Callback] = (), control: TrainingControl | None = None,
                 strategy: SingleProcess | None = None,
                 resume: str | os.PathLike | Checkpoint | None = None,
                 data_workers: int | None = None):
        self._owns_workspace = isinstance(workspace, (str, os.PathLike))
        if self._owns_workspace:
            from training.store.workspace import Workspace

            workspace = Workspace.open(workspace)
        self.workspace = workspace
        self.callbacks = list(callbacks)
        self.control = control or TrainingControl()
        self.strategy = strategy or SingleProcess()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.data_workers = data_workers
        self.resume_from: Checkpoint | None = None
        if resume is not None:
            self.resume_from = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume)
            ck = self.resume_from
            build_checked_model(ck, optimizer=True)  # CheckpointError (one line) before anything runs
            if ck.data_hash and ck.data_hash != workspace.data_hash:
                raise ConfigError(
                    f"{ck.path}: the checkpoint was trained on other data "
                    f"(data hash {ck.data_hash[:12]}…, this workspace {workspace.data_hash[:12]}…)")
            model_config = ck.model_config
            train_config = train_config or ck.train_config
        self.preprocess = workspace.preprocess
        self.model_config = model_config or model_config_for(self.preprocess)
        self.train_config = train_config or TrainConfig()
        self.train_config.validate()
        self._check_fit()
        self.history: list[dict[str, Any]] = []
        self.model: VAE | None = None
        self.device: torch.device | None = None

    # -- public ------------------------------------------------------------------------

    def run(self) -> TrainSummary:
        """Train until the last epoch, a stop, early stopping or a failure. Never raises
        for a training failure: on_failed fires and the summary says "failed"."""
        t0 = time.perf_counter()
        self._train_time = 0.0
        self._train_images = 0
        self._status, self._message = "finished", ""
        self._failed_alone = False
        self._good = None
        self._next_iter = None
        try:
            self._setup()
            self._emit("on_train_start", self)
            self._loop()
        except TrainingFailed as exc:
            self._status, self._message = "failed", str(exc)
        except Exception as exc:  # any other error: report it, keep the last good state
            plain = _plain_failure(exc)  # damaged workspace data, a full disk: one line
            if plain is None:
                log.exception("training failed")
            self._failed_alone = True  # an error of this process only: peers are not in step
            self._status = "failed"
            self._message = plain or f"training failed: {type(exc).__name__}: {exc}"
            try:
                if self.model is not None and self._good is not None:
                    self._restore(self._good)
                    self._save_last()
            except Exception as again:  # noqa: BLE001 - the first error is the one to report
                if _plain_failure(again) is None:
                    log.exception("could not save the last good state")
                else:
                    log.warning("could not save the last good state: %s", again)
            self._debug_traceback = traceback.format_exc()
        finally:
            self._close()
        seconds = time.perf_counter() - t0
        summary = self._summary(seconds)
        if summary.status == "failed":
            self._emit("on_failed", summary.message)
        else:
            self._emit("on_finished", summary)
        return summary

    # -- setup -------------------------------------------------------------------------

    def _check_fit(self) -> None:
        mc, ws = self.model_config, self.workspace
        shape = tuple(ws.image_shape)
        want_dims = len(shape)
        problems = []
        if mc.spatial_dims != want_dims:
            problems.append(f"spatial_dims {mc.spatial_dims} but the workspace holds {want_dims}D images")
        if any(s != mc.input_size for s in shape):
            problems.append(f"input_size {mc.input_size} but the workspace images are {shape}")
        if mc.n_classes != self.preprocess.n_classes:
            problems.append(f"n_classes {mc.n_classes} but the workspace has {self.preprocess.n_classes} RT classes")
        if problems:
            raise ConfigError("ModelConfig does not fit the workspace: " + "; ".join(problems))
        w = self.strategy.world_size
        if self.train_config.batch_size % w:
            raise ConfigError(f"batch_size {self.train_config.batch_size} must be divisible by the "
                              f"number of processes ({w})")

    def _setup(self) -> None:
        tc, mc, st = self.train_config, self.model_config, self.strategy
        threads = tc.threads or max(1, physical_cores() // getattr(st, "local_world_size", 1))
        torch.set_num_threads(threads)
        self.device = st.device(tc.device)
        self._is_main = st.is_main
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
        torch.manual_seed(tc.seed)
        self.model = build_model(mc).to(self.device)
        fmt = self._memory_format()
        if fmt is not None:
            self.model.to(memory_format=fmt)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr)
        self._step_module = _ElboStep(self.model)
        self._ddp_step = st.wrap(self._step_module)

        ws = self.workspace
        self._train_rows = np.asarray(ws.index("train")).reshape(-1, 2)
        self._test_rows = np.asarray(ws.index("test")).reshape(-1, 2)
        if len(self._train_rows) == 0:
            raise ConfigError("the workspace has no training images")
        n_cls = mc.n_classes
        gpu = self.device.type == "cuda"
        self._local_batch = tc.batch_size // st.world_size
        # On a GPU the one-hot channels are built there, and reads run in worker processes
        # (a launch-bound GPU loop must not wait for the GIL that h5py holds while reading).
        workers = self.data_workers
        if workers is None:
            per_process = physical_cores() // max(1, getattr(st, "local_world_size", 1))
            workers = max(1, min(4, per_process - 1)) if gpu else 0
        self._train = BatchStream(
            ws, self._train_rows, n_classes=n_cls, batch_size=self._local_batch,
            sampler=EpochSampler(len(self._train_rows), seed=tc.seed, num_replicas=st.world_size,
                                 rank=st.rank), pin_memory=gpu, assemble=not gpu, workers=workers)
        # test: every process evaluates its own stripe, no padding; sums are all-reduced
        self._test_local = np.arange(st.rank, len(self._test_rows), st.world_size)
        self._test = BatchStream(ws, self._test_rows[self._test_local], n_classes=n_cls,
                                 batch_size=self._local_batch, pin_memory=gpu, assemble=not gpu)

        self._class_weights = None
        if n_cls and tc.ce_weighting == "inverse_frequency":
            counts = torch.zeros(n_cls, dtype=torch.int64)
            for i in range(0, len(self._train_rows), 256):
                lab = ws.read_labels(self._train_rows[i:i + 256])
                counts += class_counts(torch.from_numpy(np.asarray(lab)), n_cls)
            self._class_weights = inverse_frequency_weights(counts).to(self.device)

        self._examples = {}
        n_ex = tc.n_recon_examples
        for split, rows in (("train", self._train_rows), ("test", self._test_rows)):
            if len(rows):
                pos = evenly_spaced(len(rows), n_ex)
                src = BatchStream(ws, rows, n_classes=n_cls, batch_size=max(1, len(pos)))
                self._examples[split] = src.read(pos)[0]

        # fixed subsets for the per-epoch reconstruction metrics (training.vae.metrics)
        self._metric_rows = {}
        if tc.metrics_images and self._is_main:
            for split, rows in (("test", self._test_rows), ("train", self._train_rows)):
                if len(rows):
                    self._metric_rows[split] = rows[evenly_spaced(len(rows), tc.metrics_images)]

        self._start_epoch = 0
        self._best_test = math.inf
        self._best_epoch: int | None = None
        self._since_best = 0
        self._best_state = None
        self._best_written = True
        self._last_path: Path | None = None
        self._best_path: Path | None = None
        if self.out_dir is not None and self._is_main:
            # temp files of a writer that was killed mid-write (their content is incomplete)
            for name in (LAST, BEST, HISTORY):
                for stale in self.out_dir.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
        if self.resume_from is not None:
            self._load_resume(self.resume_from)
        if self.out_dir is not None and self._is_main:
            # snapshots of an earlier run here, or of epochs after the one resumed from
            recon_history.remove_snapshots(self.out_dir, after=self._start_epoch if self.resume_from else -1)
        self._good = self._snapshot()

    def _memory_format(self) -> torch.memory_format | None:
        if not self.train_config.channels_last:
            return None
        if self.model_config.spatial_dims == 3 and not CHANNELS_LAST_3D:
            return None
        return channels_last_format(self.model_config.spatial_dims)

    def _load_resume(self, ck: Checkpoint) -> None:
        self.model.load_state_dict(ck.model_state)
        fmt = self._memory_format()
        if fmt is not None:
            self.model.to(memory_format=fmt)
        if ck.optimizer_state:
            self.optimizer.load_state_dict(ck.optimizer_state)
            for group in self.optimizer.param_groups:  # a changed lr in the new TrainConfig wins
                group["lr"] = self.train_config.lr
        self.history = list(ck.history)
        self._start_epoch = ck.epoch
        if "torch" in ck.rng_state:
            torch.set_rng_state(ck.rng_state["torch"])
        if "cuda" in ck.rng_state and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck.rng_state["cuda"], self.device)
        ts = ck.trainer_state
        self._best_test = float(ts.get("best_test", math.inf))
        self._best_epoch = ts.get("best_epoch")
        self._since_best = int(ts.get("since_best", 0))
        if "aug_images" in ts:
            labels = ts.get("aug_labels")
            self._train.set_extra(InMemoryItems(ts["aug_images"].numpy(),
                                                labels.numpy() if labels is not None else None))
        if self.out_dir is not None:
            if (self.out_dir / LAST).exists():
                self._last_path = self.out_dir / LAST
            if (self.out_dir / BEST).exists():
                self._best_path = self.out_dir / BEST

    # -- the loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        tc = self.train_config
        self._n_batches_done = 0
        for epoch_index in range(self._start_epoch, tc.epochs):
            number = epoch_index + 1
            if self._stop_agreed():
                self._status = "stopped"
                break
            if self._augments_at(epoch_index):
                self._augment(epoch_index)
            t_epoch = time.perf_counter()
            train_terms, n_images, t_train = self._train_epoch(epoch_index)
            if train_terms is None:  # stopped mid-epoch: keep the last completed epoch
                self._status = "stopped"
                self._restore(self._good)
                break
            self._train_time += t_train
            self._train_images += n_images
            if number < tc.epochs and not self._augments_at(number):
                # the next epoch's first batches load while the test set is evaluated
                self._next_iter = self._train.epoch(number)
            test_terms = self._evaluate(epoch_index)
            if test_terms is not None and not all(math.isfinite(v) for v in test_terms.values()):
                # weights that give NaN/inf on the test set are not good: keep the last epoch
                bad = next(k for k in TERMS if not math.isfinite(test_terms[k]))
                self._restore(self._good)
                path = self._save_last()
                kept = f"the weights of the last good epoch ({self._completed()})"
                kept += f" are kept in {path}" if path is not None else " are kept in memory"
                raise TrainingFailed(f"training stopped after epoch {number}: the test {bad} loss is "
                                     f"{test_terms[bad]}; {kept}")
            entry = {
                "epoch": number,
                "train": train_terms,
                "test": test_terms,
                "seconds": time.perf_counter() - t_epoch,
                "train_images_per_s": n_images / t_train if t_train > 0 else 0.0,
                "images": n_images,
                "augmented": len(self._train.extra) if self._train.extra is not None else 0,
            }
            if self._metric_rows:
                entry["metrics"] = self._metrics()
            self.history.append(entry)
            improved = self._track_best(number, test_terms)
            self._good = self._snapshot()
            if improved:
                self._best_state = self._good
                self._best_written = False
            self._emit("on_epoch_end", number, train_terms, test_terms)
            if number % tc.recon_every == 0 or number == tc.epochs:
                self._reconstructions(number)
            self._write_history()
            early = (tc.early_stopping_patience and test_terms is not None
                     and self._since_best >= tc.early_stopping_patience)
            if number % tc.checkpoint_every == 0 or number == tc.epochs or early:
                self._save_last()
            if early:
                self._status = "early_stopped"
                self._message = (f"test loss did not improve for {self._since_best} epochs "
                                 f"(best {self._best_test:.6g} at epoch {self._best_epoch})")
                break
        if self._status == "stopped":
            self._message = f"stopped by request after {self._completed()} epochs"
            self._save_last()

    def _stop_agreed(self) -> bool:
        """True when a stop was asked for on any process (all-reduced under DDP): a rank
        that left the loop on its own would leave its peers waiting in the next collective
        until the process-group timeout (a signal may reach one rank only)."""
        if self.strategy.world_size == 1:
            return self.control.stop_requested
        flag = torch.tensor([1.0 if self.control.stop_requested else 0.0], dtype=torch.float64,
                            device=self.device)
        return self.strategy.all_reduce_sum(flag).item() > 0

    def _augments_at(self, epoch_index: int) -> bool:
        tc = self.train_config
        return bool(tc.augment_every and tc.augment_count and epoch_index > 0
                    and epoch_index % tc.augment_every == 0)

    def _train_epoch(self, epoch_index: int):
        """One pass over the training data. Returns (terms, images, seconds) or
        (None, ..) when a stop was requested mid-epoch.

        A batch's loss values are read back one batch late (copied without blocking), so
        the GPU never waits for the host: a NaN found then has already been stepped on,
        which does not matter because failing restores the last good epoch anyway.
        """
        tc, st = self.train_config, self.strategy
        self.model.train()
        n_batches = self._train.n_batches()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_seed_for(tc.seed, epoch_index, 1))
        fmt = self._memory_format()
        u, latent, w = tc.mc_samples, self.model_config.latent_dim, st.world_size
        cuda = self.device.type == "cuda"
        host = [torch.zeros(6, dtype=torch.float64, pin_memory=cuda) for _ in range(2)]
        self._sums = [0.0] * 5
        self._images = 0
        t0 = time.perf_counter()
        it = self._next_iter if self._next_iter is not None else self._train.epoch(epoch_index)
        self._next_iter = None
        pending = None
        try:
            for b, (positions, x, labels) in enumerate(it):
                self.control.wait_if_paused()
                x, labels = self._to_device(self._train, x, labels, fmt)
                n = x.shape[0]
                # ε for the whole global batch; this process takes its stripe r, r+W, ...
                eps = torch.randn((u, n * w, latent), generator=gen, device=self.device)
                eps = eps[:, st.rank::w].reshape(u * n, latent)
                with autocast_context(self.device, tc.autocast):
                    out = self._ddp_step(x, eps)
                t = loss_per_image(out, x[:, :1], labels, tc, self._class_weights)
                flag = 1.0 if self.control.stop_requested else 0.0
                stats = torch.stack([t.total.sum(), t.recon.sum(), t.kl.sum(), t.ce.sum(),
                                     t.total.new_full((), float(n)), t.total.new_full((), flag)])
                stats = stats.detach().double()
                stats = st.all_reduce_sum(stats) if w > 1 else stats
                buf = host[b % 2]
                buf.copy_(stats, non_blocking=cuda)
                event = None
                if cuda:
                    event = torch.cuda.Event()
                    event.record()
                self.optimizer.zero_grad(set_to_none=True)
                t.total.mean().backward()
                self.optimizer.step()
                if pending is not None and self._account(epoch_index, n_batches, t0, *pending):
                    return None, self._images, time.perf_counter() - t0
                pending = (b, buf, event)
            if pending is not None and self._account(epoch_index, n_batches, t0, *pending):
                return None, self._images, time.perf_counter() - t0
        finally:
            it.close()
        seconds = time.perf_counter() - t0
        totals = self._sums
        return {k: totals[i] / totals[4] for i, k in enumerate(TERMS)}, self._images, seconds

    def _account(self, epoch_index, n_batches, t0, b, buf, event) -> bool:
        """Check and add up one batch's loss sums; True when a stop was requested."""
        if event is not None:
            event.synchronize()
        values = buf.tolist()
        self._check_finite(epoch_index, b, n_batches, values)
        for i in range(5):
            self._sums[i] += values[i]
        self._images += int(values[4])
        if self._is_main and self.callbacks:
            self._progress(epoch_index, b + 1, n_batches, self._sums, self._images, t0)
        return values[5] > 0

    def _to_device(self, stream: BatchStream, x, labels, fmt):
        """Move a batch to the device as the model's input (+ labels), in the model's layout."""
        x = x.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True) if labels is not None else None
        if not stream.assemble:
            x = input_on_device(x, labels, self.model_config.n_classes)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        return x, labels

    def _check_finite(self, epoch_index: int, b: int, n_batches: int, values: list[float]) -> None:
        count = values[4]
        means = {k: values[i] / count for i, k in enumerate(TERMS)}
        bad = None
        for k in ("recon", "kl", "ce", "total"):
            if not math.isfinite(means[k]):
                bad = f"the {k} loss is {means[k]}"
                break
        if bad is None and means["total"] > self.train_config.max_loss:
            bad = f"the total loss {means['total']:.4g} exceeds max_loss {self.train_config.max_loss:.4g}"
        if bad is None:
            return
        self._restore(self._good)
        where = f"epoch {epoch_index + 1}, batch {b + 1} of {n_batches}"
        path = self._save_last()
        kept = f"the weights of the last good epoch ({self._completed()})"
        kept += f" are kept in {path}" if path is not None else " are kept in memory"
        raise TrainingFailed(f"training stopped at {where}: {bad}; {kept}")

    def _progress(self, epoch_index, batch, n_batches, sums, images, t0) -> None:
        tc = self.train_config
        elapsed = time.perf_counter() - t0
        totals = sums
        count = max(totals[4], 1.0)
        per_batch = elapsed / batch
        remaining = (n_batches - batch) + (tc.epochs - epoch_index - 1) * n_batches
        self._emit("on_batch_end", BatchProgress(
            epoch=epoch_index + 1, epochs=tc.epochs, batch=batch, n_batches=n_batches,
            images=images, terms={k: totals[i] / count for i, k in enumerate(TERMS)},
            images_per_s=images / elapsed if elapsed > 0 else 0.0, elapsed_s=elapsed,
            eta_s=remaining * per_batch))

    @torch.no_grad()
    def _evaluate(self, epoch_index: int) -> dict[str, float] | None:
        """Test-set loss terms (eval mode, no dropout; z drawn with a seeded ε per image)."""
        if len(self._test_rows) == 0:
            return None
        tc, st = self.train_config, self.strategy
        self.model.eval()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_seed_for(tc.seed, epoch_index, 2))
        u, latent = tc.mc_samples, self.model_config.latent_dim
        eps_all = torch.randn((u, len(self._test_rows), latent), generator=gen, device=self.device)
        fmt = self._memory_format()
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        for positions, x, labels in self._test.epoch(0):
            x, labels = self._to_device(self._test, x, labels, fmt)
            idx = torch.as_tensor(self._test_local[positions], device=self.device)
            eps = eps_all[:, idx].reshape(-1, latent)
            with autocast_context(self.device, tc.autocast):
                out = self._step_module(x, eps)
            t = loss_per_image(out, x[:, :1], labels, tc, self._class_weights)
            sums += torch.stack([t.total.sum(), t.recon.sum(), t.kl.sum(), t.ce.sum(),
                                 t.total.new_full((), float(x.shape[0]))]).double()
        sums = st.all_reduce_sum(sums) if st.world_size > 1 else sums
        totals = sums.tolist()
        return {k: totals[i] / totals[4] for i, k in enumerate(TERMS)}

    @torch.no_grad()
    def _metrics(self) -> dict[str, dict[str, Any]]:
        """Reconstruction metrics of the fixed test and train subsets (main process only)."""
        pre = self.preprocess
        return {split: recon_metrics.evaluate_rows(
                    self.model, self.workspace, rows, hu_min=pre.hu_min, hu_max=pre.hu_max,
                    roi_names=pre.rois, n_classes=self.model_config.n_classes,
                    batch_size=self._local_batch, device=self.device,
                    memory_format=self._memory_format())
                for split, rows in self._metric_rows.items()}

    @torch.no_grad()
    def _reconstructions(self, number: int) -> None:
        """Reconstruct the fixed examples: to the callbacks, and into the run folder
        (training.vae.recon_history) when there is one."""
        if not (self._is_main and (self.callbacks or self.out_dir is not None) and self._examples):
            return
        self.model.eval()
        fmt = self._memory_format()
        inputs, recons = {}, {}
        for split, x in self._examples.items():
            xd = x.to(self.device)
            if fmt is not None:
                xd = xd.contiguous(memory_format=fmt)
            mu, _ = self.model.encode(xd)
            dec = self.model.decode(mu)
            parts = [dec.ct] + ([dec.rt_probs()] if dec.rt_logits is not None else [])
            recons[split] = torch.cat(parts, 1).float().cpu().contiguous().numpy()
            inputs[split] = x.numpy()
        if self.out_dir is not None:
            try:
                recon_history.save_snapshot(self.out_dir, number, inputs, recons)
            except OSError as exc:  # a full disk shows at the next checkpoint; go on
                log.warning("reconstruction snapshot of epoch %d not written: %s", number, exc)
        self._emit("on_reconstructions", number, inputs, recons)

    @torch.no_grad()
    def _augment(self, epoch_index: int) -> None:
        """Replace the augmentation draws: encode the training images, draw
        augment_count codes from their aggregate posterior, decode them (thesis 4.5.2)."""
        tc = self.train_config
        self.model.eval()
        fmt = self._memory_format()
        plain = BatchStream(self.workspace, self._train_rows, n_classes=self.model_config.n_classes,
                            batch_size=self._local_batch)
        mus, logvars = [], []
        for _, x, _ in plain.epoch(0):
            x = x.to(self.device)
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            mu, logvar = self.model.encode(x)
            mus.append(mu)
            logvars.append(logvar)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_seed_for(tc.seed, epoch_index, 3))
        z = sample_aggregate_posterior(torch.cat(mus), torch.cat(logvars), tc.augment_count, gen)
        images, labels = [], []
        for i in range(0, len(z), self._local_batch):
            dec = self.model.decode(z[i:i + self._local_batch])
            images.append(dec.ct[:, 0].float().cpu())
            if dec.rt_logits is not None:
                labels.append(dec.rt_logits.argmax(1).to(torch.uint8).cpu())
        extra = InMemoryItems(torch.cat(images).numpy(), torch.cat(labels).numpy() if labels else None)
        self._train.set_extra(extra)

    # -- state, checkpoints ------------------------------------------------------------

    def _completed(self) -> int:
        return len(self.history)

    def _snapshot(self) -> dict[str, Any]:
        """A CPU copy of everything a checkpoint needs at the end of an epoch."""
        state = {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "optimizer": _cpu_copy(self.optimizer.state_dict()),
            "history": copy.deepcopy(self.history),
            "rng": {"torch": torch.get_rng_state()},
            "extra": self._train.extra,
            "best": (self._best_test, self._best_epoch, self._since_best),
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = copy.deepcopy(state["history"])
        self._train.set_extra(state["extra"])
        self._best_test, self._best_epoch, self._since_best = state["best"]

    def _track_best(self, number: int, test_terms) -> bool:
        if test_terms is None:
            return False
        if test_terms["total"] < self._best_test:
            self._best_test, self._best_epoch, self._since_best = test_terms["total"], number, 0
            return True
        self._since_best += 1
        return False

    def _save(self, path: Path, state: dict[str, Any]) -> Path:
        extra = state["extra"]
        best_test, best_epoch, since_best = state["best"]
        trainer_state: dict[str, Any] = {"best_test": best_test, "best_epoch": best_epoch,
                                         "since_best": since_best}
        if extra is not None:
            trainer_state["aug_images"] = torch.from_numpy(np.ascontiguousarray(extra.images))
            if extra.labels is not None:
                trainer_state["aug_labels"] = torch.from_numpy(np.ascontiguousarray(extra.labels))
        save_checkpoint(
            path, model_config=self.model_config, train_config=self.train_config,
            preprocess_config=self.preprocess, model_state=state["model"],
            optimizer_state=state["optimizer"], epoch=len(state["history"]),
            history=state["history"], data_hash=self.workspace.data_hash,
            roi_names=tuple(self.preprocess.rois), rng_state=state["rng"], trainer_state=trainer_state)
        self._emit("on_checkpoint", path, len(state["history"]))
        return path

    def _save_last(self) -> Path | None:
        """Write last.pt from the last good state (and best.pt when it changed)."""
        if self.out_dir is None or not self._is_main:
            return None
        self._last_path = self._save(self.out_dir / LAST, self._good)
        if self._best_state is not None and not self._best_written:
            self._best_path = self._save(self.out_dir / BEST, self._best_state)
            self._best_written = True
        return self._last_path

    def _write_history(self) -> None:
        if self.out_dir is None or not self._is_main:
            return
        import json

        doc = {
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "preprocess_config": self.preprocess.to_dict(),
            "data_hash": self.workspace.data_hash,
            "history": self.history,
        }
        atomic_write_text(self.out_dir / HISTORY, json.dumps(doc, indent=1))

    # -- helpers -------------------------------------------------------------------------

    def _emit(self, hook: str, *args) -> None:
        if not getattr(self, "_is_main", self.strategy.is_main):
            return
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def _summary(self, seconds: float) -> TrainSummary:
        last = self.history[-1] if self.history else None
        run_images = getattr(self, "_train_images", 0)
        return TrainSummary(
            status=self._status, message=self._message, epochs_completed=len(self.history),
            epochs=self.train_config.epochs,
            final_train=last["train"] if last else None, final_test=last["test"] if last else None,
            best_epoch=getattr(self, "_best_epoch", None),
            best_test=None if getattr(self, "_best_test", math.inf) == math.inf else self._best_test,
            seconds=seconds,
            train_images_per_s=run_images / self._train_time if getattr(self, "_train_time", 0) else 0.0,
            images_per_s=run_images / seconds if seconds > 0 else 0.0,
            last_checkpoint=str(self._last_path) if getattr(self, "_last_path", None) else None,
            best_checkpoint=str(self._best_path) if getattr(self, "_best_path", None) else None,
            device=str(self.device), history=list(self.history))

    def _close(self) -> None:
        if self._next_iter is not None:
            self._next_iter.close()
            self._next_iter = None
        if getattr(self, "_train", None) is not None:
            self._train.shutdown()
        try:
            self.strategy.close(wait=not getattr(self, "_failed_alone", False))
        finally:
            if self._owns_workspace:
                close = getattr(self.workspace, "close", None)
                if close:
                    close()


def _cpu_copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_copy(v) for v in obj]
    return copy.copy(obj)
