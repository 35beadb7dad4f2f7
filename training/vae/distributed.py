"""How training spreads over processes, injected into the trainer (not woven through it).

`SingleProcess` is the default. `DDPStrategy` runs under `torchrun` (one process per
device): DistributedDataParallel, gloo on CPU and nccl on GPU. The trainer only calls:

- `device(requested)` - the torch device of this process;
- `wrap(module)` - the module whose forward/backward synchronises gradients;
- `all_reduce_sum(tensor)` - sums over processes (losses travel as sums and counts);
- `rank`, `world_size`, `is_main` - shard the data; only the main process writes
  checkpoints and logs and fires callbacks;
- `close()`.

`TrainConfig.batch_size` is the global batch: each of the W processes takes batch_size / W
examples, so W processes give the same model as one process up to floating-point noise.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


def resolve_device(requested: str) -> torch.device:
    """"auto" → the first GPU when one is present, else the CPU; otherwise as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but no CUDA GPU is available")
    return device


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads not counted); os.cpu_count() when unknown."""
    try:
        cores = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
        n = len(cores)
    except OSError:
        n = 0
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    return max(1, min(n, affinity) if n else affinity)


class SingleProcess:
    """One process, one device: nothing to synchronise."""

    rank = 0
    world_size = 1
    local_rank = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        return resolve_device(requested)

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        pass

    def close(self, wait: bool = True) -> None:
        pass

    def describe(self) -> str:
        return "single process"


class DDPStrategy(SingleProcess):
    """DistributedDataParallel over the processes torchrun started (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT in the environment). gloo on CPU, nccl on GPU."""

    def __init__(self, backend: str | None = None, timeout_s: float = 1800.0):
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self._backend = backend
        self._timeout = timedelta(seconds=timeout_s)
        self._device: torch.device | None = None
        self._owns_group = False
        if "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_RESTART_COUNT" in os.environ:
            # A rank ends with its torchrun launcher (SIGKILL of torchrun, a closed
            # terminal): never left training, or waiting on a dead rendezvous, orphaned.
            from training.store.lock import die_with_parent

            die_with_parent()

    def device(self, requested: str) -> torch.device:
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {requested!r} was asked for but no CUDA GPU is available")
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        self._device = device
        if not dist.is_initialized():
            backend = self._backend or ("nccl" if device.type == "cuda" else "gloo")
            dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                    timeout=self._timeout)
            self._owns_group = True
        return device

    def wrap(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if self._device is not None and self._device.type == "cuda":
            return DistributedDataParallel(module, device_ids=[self._device.index])
        return DistributedDataParallel(module)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the process group. wait=False when this rank failed on its own (its
        peers are still inside a collective and would never reach the barrier: waiting
        would hang both until the group timeout; exiting lets torchrun stop the job)."""
        if self._owns_group and dist.is_initialized():
            # Leave together: a rank that tears gloo down while rank 0 still writes its
            # last checkpoints was seen aborting ("terminate called without an active
            # exception", SIGABRT) and failing the torchrun.
            if wait:
                try:
                    dist.barrier()
                except Exception:  # a peer already failed: nothing to wait for
                    pass
            dist.destroy_process_group()
            self._owns_group = False

    def describe(self) -> str:
        return f"DistributedDataParallel, rank {self.rank} of {self.world_size}"


def strategy_from_env() -> SingleProcess:
    """DDPStrategy when started by torchrun with more than one process, else SingleProcess."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return DDPStrategy()
    return SingleProcess()
