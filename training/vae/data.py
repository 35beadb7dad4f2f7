"""Batch streaming from a workspace for training.

The model input x is (B, 1 + n_classes, *spatial): channel 0 the windowed CT in [0, 1],
then the exclusive one-hot RT channels (class 0 = complement, class k = rois[k-1]);
spatial axes are (y, x) for 2D and (z, y, x) for 3D.

Batches are read from the HDF5 file by a background thread a few batches ahead of the
training loop (`Workspace.read_images` / `read_labels`), so only those batches are held
in memory: a workspace larger than memory trains with flat memory, and the reads are
hidden behind the model's compute (h5py and torch release the GIL while they work).

The order of examples follows torch's `DistributedSampler`: one permutation per epoch
from a generator seeded with `seed + epoch`, padded to a multiple of the number of
processes, process r taking positions r, r + W, r + 2W, ... . With a global batch of
B = b·W, the union of the W processes' i-th batches is the single process's i-th batch.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch


class BatchSource(Protocol):
    """What data.py needs from a workspace (training.store.workspace.Workspace provides it)."""

    def read_images(self, rows: np.ndarray) -> np.ndarray: ...

    def read_labels(self, rows: np.ndarray) -> np.ndarray | None: ...


def build_input(images: np.ndarray, labels: np.ndarray | None, n_classes: int) -> torch.Tensor:
    """CT (B, *S) float in [0, 1] and labels (B, *S) uint8 → x (B, 1 + n_classes, *S) float32."""
    images = np.asarray(images, dtype=np.float32)
    if n_classes == 0:
        return torch.from_numpy(np.ascontiguousarray(images)[:, None])
    if labels is None:
        raise ValueError(f"the model expects {n_classes} RT classes but the data has no labels")
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if top >= n_classes:
        raise ValueError(f"label value {top} is outside the {n_classes} RT classes")
    # comparisons into a preallocated array: ~50× faster than F.one_hot + movedim + cat
    x = np.empty((images.shape[0], 1 + n_classes, *images.shape[1:]), dtype=np.float32)
    x[:, 0] = images
    for k in range(n_classes):
        np.equal(labels, k, out=x[:, 1 + k], casting="unsafe")
    return torch.from_numpy(x)


def input_on_device(images: torch.Tensor, labels: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    """build_input for tensors already on the device (the GPU builds the one-hot channels,
    so only CT float32 and labels uint8 travel over PCIe)."""
    ct = images.unsqueeze(1).float()
    if n_classes == 0:
        return ct
    classes = torch.arange(n_classes, device=labels.device, dtype=labels.dtype)
    onehot = labels.unsqueeze(1) == classes.view(1, n_classes, *([1] * (labels.dim() - 1)))
    return torch.cat([ct, onehot.to(ct.dtype)], dim=1)


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    """n positions spread evenly over range(n_total) (fixed examples for reconstructions)."""
    n = min(n, n_total)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


class EpochSampler:
    """Seeded per-epoch order, sharded over processes like `torch.utils.data.DistributedSampler`.

    `set_epoch(e)` before each epoch; `indices()` gives this process's dataset positions.
    The dataset size may change between epochs (`set_size`, for augmentation draws).
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.size = int(size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_size(self, size: int) -> None:
        self.size = int(size)

    def __len__(self) -> int:
        w = self.num_replicas
        if self.drop_last:
            return self.size // w
        return -(-self.size // w)

    def indices(self) -> np.ndarray:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).numpy()
        else:
            order = np.arange(self.size)
        total = len(self) * self.num_replicas
        if self.drop_last:
            order = order[:total]
        elif total > self.size and self.size > 0:
            reps = -(-(total - self.size) // self.size)
            order = np.concatenate([order, np.tile(order, reps)[: total - self.size]])
        return order[self.rank:total:self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


@dataclass
class InMemoryItems:
    """Extra training items held in memory (the decoded augmentation draws).

    images float32 (A, *S) in [0, 1]; labels uint8 (A, *S) or None for CT only.
    """

    images: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


class BatchStream:
    """Batches of model inputs for one split, read ahead by a background thread.

    rows: (N, 2) workspace rows (patient index, image index) of the split.
    extra: items appended after the workspace rows (dataset positions N .. N + A - 1).
    batch_size: this process's batch (the global batch divided by the process count).
    `epoch(e)` yields (positions, x, labels), CPU tensors (pinned when pin_memory):
    - assemble=True: x float32 (B, 1 + n_classes, *S), the model input;
    - assemble=False: x float32 (B, *S), the CT alone (build the input on the device
      with `input_on_device`, so less travels to a GPU);
    labels: uint8 (B, *S) class indices, or None for CT only.
    workers > 0 reads in that many worker processes (torch DataLoader, fork) instead of
    one thread: h5py holds the GIL while it reads, which would stall a launch-bound GPU
    loop. The source must then have a `path` that `Workspace.open` accepts.
    """

    def __init__(self, source: BatchSource, rows: np.ndarray, *, n_classes: int, batch_size: int,
                 sampler: EpochSampler | None = None, extra: InMemoryItems | None = None,
                 prefetch: int = 3, pin_memory: bool = False, assemble: bool = True,
                 workers: int = 0):
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        self.n_classes = n_classes
        self.batch_size = int(batch_size)
        self.extra = extra
        self.sampler = sampler or EpochSampler(self.size, shuffle=False)
        self.sampler.set_size(self.size)
        self.prefetch = max(1, int(prefetch))
        self.pin_memory = pin_memory
        self.assemble = assemble
        self._workers = None
        self.workers = int(workers) if getattr(source, "path", None) is not None else 0

    @property
    def size(self) -> int:
        return len(self.rows) + (len(self.extra) if self.extra is not None else 0)

    def set_extra(self, extra: InMemoryItems | None) -> None:
        if extra is not self.extra:
            self.shutdown()  # worker processes hold a copy of the old items
        self.extra = extra
        self.sampler.set_size(self.size)

    def shutdown(self) -> None:
        """Stop worker processes (they are kept between epochs otherwise)."""
        loader = getattr(self, "_workers", None)
        self._workers = None
        if loader is not None:
            loader.shutdown()

    def n_batches(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def read(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(model input or CT, uint8 class-index labels or None) for dataset positions,
        in the order given (see the class docstring for `assemble`)."""
        positions = np.asarray(positions, dtype=np.int64)
        n_ws = len(self.rows)
        in_ws = positions < n_ws
        ws_pos = positions[in_ws]
        shape = None
        images = labels = None
        if len(ws_pos):
            ws_img = self.source.read_images(self.rows[ws_pos])
            ws_lab = self.source.read_labels(self.rows[ws_pos]) if self.n_classes else None
            shape = ws_img.shape[1:]
        if in_ws.all():
            images, labels = ws_img, ws_lab
        else:
            ex = self.extra
            ex_pos = positions[~in_ws] - n_ws
            shape = shape or ex.images.shape[1:]
            images = np.empty((len(positions), *shape), dtype=np.float32)
            images[~in_ws] = ex.images[ex_pos]
            if self.n_classes:
                labels = np.empty((len(positions), *shape), dtype=np.uint8)
                labels[~in_ws] = ex.labels[ex_pos]
            if len(ws_pos):
                images[in_ws] = ws_img
                if self.n_classes:
                    labels[in_ws] = ws_lab
        if self.assemble:
            x = build_input(images, labels, self.n_classes)
        else:
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        lab = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8)) if self.n_classes else None
        return x, lab

    def batches(self, epoch: int) -> list[np.ndarray]:
        self.sampler.set_epoch(epoch)
        order = self.sampler.indices()
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
        """Yield this process's batches for an epoch, read ahead in the background."""
        if self.workers > 0:
            if getattr(self, "_workers", None) is None:
                self._workers = _WorkerLoader(self)
            return self._workers.epoch(epoch)
        return _Prefetcher(self, self.batches(epoch))


class _BatchReader(torch.utils.data.Dataset):
    """Reads whole batches in DataLoader workers, each from its own workspace handle."""

    def __init__(self, stream: BatchStream):
        self.path = stream.source.path
        self.rows, self.n_classes, self.extra = stream.rows, stream.n_classes, stream.extra
        self.assemble = stream.assemble
        self._stream: BatchStream | None = None

    def __len__(self) -> int:
        return len(self.rows) + (len(self.extra) if self.extra is not None else 0)

    def __getitems__(self, positions):
        if self._stream is None:  # first call in this worker process: open our own handle
            from training.store.workspace import Workspace

            self._stream = BatchStream(Workspace.open(self.path), self.rows, n_classes=self.n_classes,
                                       batch_size=1, extra=self.extra, assemble=self.assemble)
        positions = np.asarray(positions, dtype=np.int64)
        x, lab = self._stream.read(positions)
        return positions, x, lab


class _EpochBatches(torch.utils.data.Sampler):
    """The current epoch's batches of a stream (the epoch is set before each pass)."""

    def __init__(self, stream: BatchStream):
        self.stream = stream
        self.epoch = 0

    def __iter__(self):
        return iter([b.tolist() for b in self.stream.batches(self.epoch)])

    def __len__(self) -> int:
        return self.stream.n_batches()


def _as_is(item):
    return item


class _WorkerLoader:
    """Persistent DataLoader workers (fork) kept across epochs; rebuilt when the data change."""

    def __init__(self, stream: BatchStream):
        import multiprocessing

        self.sampler = _EpochBatches(stream)
        self.loader = torch.utils.data.DataLoader(
            _BatchReader(stream), batch_sampler=self.sampler, num_workers=stream.workers,
            collate_fn=_as_is, pin_memory=stream.pin_memory, prefetch_factor=max(2, stream.prefetch),
            persistent_workers=True, multiprocessing_context=multiprocessing.get_context("fork"),
            timeout=600, generator=torch.Generator())  # its seed draw must not advance the global RNG

    def epoch(self, epoch: int):
        self.sampler.epoch = epoch
        return _LoaderPass(iter(self.loader))

    def shutdown(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None:
            it._shutdown_workers()
            self.loader._iterator = None


class _LoaderPass:
    """One epoch over a persistent loader; abandoning it leaves the workers for the next."""

    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self) -> None:
        pass


class _Prefetcher:
    """Iterator over batches filled by a daemon thread; closing it stops the thread."""

    _DONE = object()

    def __init__(self, stream: BatchStream, batches: Sequence[np.ndarray]):
        self._queue: queue.Queue = queue.Queue(maxsize=stream.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(stream, batches),
                                        name="ct-vae-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, stream: BatchStream, batches: Sequence[np.ndarray]) -> None:
        try:
            for positions in batches:
                if self._stop.is_set():
                    return
                x, lab = stream.read(positions)
                if stream.pin_memory:
                    x = x.pin_memory()
                    lab = lab.pin_memory() if lab is not None else None
                if not self._put((positions, x, lab)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(self._DONE)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is self._DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __del__(self):
        self._stop.set()
