"""Training engine benchmarks: the trainer vs a bare PyTorch loop, flat memory, 3D layout.

    python benchmarks/train.py speed   [--size 128 --filters 24 --batch 32 --images 192 --rounds 2]
    python benchmarks/train.py memory  [--budget-mib 64]
    python benchmarks/train.py layout3d [--size 32 --filters 8 --batch 4]

speed: the same model and settings trained (a) by training.vae.trainer.Trainer streaming
from an HDF5 workspace (prefetch thread, callbacks, loss bookkeeping, NaN guard) and
(b) by a bare loop over in-memory tensors (forward, vae_loss, backward, Adam step), in
alternating rounds; prints images/s of each and the ratio (first epoch of each round is
warm-up and not counted).

memory: builds (in a child process) a workspace 3× the budget, trains a small model on
it for one epoch and samples the resident set size (VmRSS) after every batch; prints the
growth over the RSS before training against the budget and the workspace size.

layout3d: one Adam step of a 3D model in NCDHW and channels_last_3d, alternating.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.vae.losses import vae_loss  # noqa: E402
from training.vae.model import VAE, channels_last_format  # noqa: E402
from training.vae.trainer import Callback, Trainer, autocast_context  # noqa: E402
from training.store.workspace import Workspace, write_arrays_workspace  # noqa: E402


def synthetic(n_patients: int, n_images: int, size: int, seed: int = 0, dims: int = 2):
    """Smooth blobs on noise, labels 1/2 by threshold (a CT-like, learnable toy)."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[(slice(0, size),) * dims].astype(np.float32)
    images, labels = {}, {}
    for p in range(n_patients):
        stack = np.empty((n_images,) + (size,) * dims, np.float32)
        for i in range(n_images):
            c = rng.uniform(size * 0.3, size * 0.7, dims).reshape((dims,) + (1,) * dims)
            r2 = rng.uniform(0.02, 0.08) * size * size
            stack[i] = 0.2 + 0.6 * np.exp(-((grid - c) ** 2).sum(0) / r2)
        stack += 0.05 * rng.random(stack.shape, dtype=np.float32)
        np.clip(stack, 0, 1, out=stack)
        images[f"P{p:03d}"] = stack
        labels[f"P{p:03d}"] = (stack > 0.45).astype(np.uint8) + (stack > 0.7).astype(np.uint8)
    return images, labels


class _Busy(Callback):
    """Stands in for a GUI/CLI observer: touches every event's data."""

    def __init__(self):
        self.n = 0

    def on_batch_end(self, p):
        self.n += int(p.terms["total"] > 0)

    def on_epoch_end(self, epoch, tr, te):
        self.n += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(x: torch.Tensor, labels: torch.Tensor | None, mc: ModelConfig, tc: TrainConfig,
              epochs: int, fmt, device: torch.device) -> tuple[float, int]:
    """images/s of a plain loop on in-memory tensors already on the device (epochs after
    the first; the GPU is synchronised at each epoch's ends, never inside)."""
    torch.manual_seed(tc.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = VAE(mc).to(device)
    x = x.to(device)
    labels = labels.to(device) if labels is not None else None
    if fmt is not None:
        model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    model.train()
    n = x.shape[0]
    seconds, images = 0.0, 0
    for epoch in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, tc.batch_size):
            idx = perm[i:i + tc.batch_size]
            xb = x[idx]
            if fmt is not None:
                xb = xb.contiguous(memory_format=fmt)
            lb = labels[idx] if labels is not None else None
            with autocast_context(device, tc.autocast):
                out = model(xb)
            loss = vae_loss(out, xb[:, :1], lb, tc)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
        _sync(device)
        if epoch:
            seconds += time.perf_counter() - t0
            images += n
    return images / seconds, images


def speed(args) -> None:
    torch.set_num_threads(args.threads)
    n_train_patients = max(1, args.images // 32)
    per = args.images // n_train_patients
    images, labels = synthetic(n_train_patients + 1, per, args.size)
    tmp = Path(tempfile.mkdtemp())
    test_fraction = 1.0 / (n_train_patients + 1) * 0.99
    ws_path = write_arrays_workspace(tmp / "speed.h5", images, labels, roi_names=("A", "B"),
                                     test_fraction=test_fraction)
    with Workspace.open(ws_path) as ws:
        rows = ws.index("train")
        x_img, x_lab = ws.read_images(rows), ws.read_labels(rows)
        n_test = len(ws.index("test"))
    mc = ModelConfig(input_size=args.size, n_classes=3, filters=args.filters, latent_dim=12,
                     n_blocks=4, fc_units=256, dropout=0.1)
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch, threads=args.threads, recon_every=1000,
                     checkpoint_every=1000, device=args.device, channels_last=not args.nchw,
                     autocast=args.autocast, metrics_images=args.metrics_images)
    x = torch.cat([torch.from_numpy(x_img)[:, None],
                   torch.nn.functional.one_hot(torch.from_numpy(x_lab).long(), 3).movedim(-1, 1).float()], 1)
    lab = torch.from_numpy(x_lab).long()
    fmt = None if args.nchw else channels_last_format(2)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"speed on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: 2D {args.size}², {args.filters} filters, batch {args.batch}, {len(rows)} train "
          f"+ {n_test} test images, {args.threads} threads, {'NCHW' if args.nchw else 'channels_last'}, "
          f"autocast {args.autocast}, "
          f"{args.epochs} epochs per round (first is warm-up)", flush=True)
    ours, bare, wall = [], [], []
    for r in range(args.rounds):
        b, _ = bare_loop(x, lab, mc, tc, args.epochs, fmt, device)
        bare.append(b)
        s = Trainer(ws_path, mc, tc, callbacks=[_Busy()]).run()
        assert s.status == "finished", s.message
        hist = s.history[1:]
        t_train = sum(h["images"] / h["train_images_per_s"] for h in hist)
        ours.append(sum(h["images"] for h in hist) / t_train)
        wall.append(sum(h["images"] for h in hist) / sum(h["seconds"] for h in hist))
        print(f"round {r + 1}: bare {b:.1f} img/s, trainer {ours[-1]:.1f} img/s (training phase), "
              f"{wall[-1]:.1f} img/s incl. test evaluation; ratio {ours[-1] / b:.3f}", flush=True)
    ratios = [o / b for o, b in zip(ours, bare)]
    print(f"median: bare {statistics.median(bare):.1f}, trainer {statistics.median(ours):.1f} img/s; "
          f"ratio trainer/bare median {statistics.median(ratios):.3f} (per round "
          f"{', '.join(f'{r:.3f}' for r in ratios)})")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _build_big(path: str, n_patients: int, per: int, size: int) -> None:
    images, labels = synthetic(n_patients, per, size, seed=1)
    write_arrays_workspace(path, images, labels, roi_names=("A", "B"), test_fraction=0.1)


def _train_and_sample(ws_path: Path, mc: ModelConfig, tc: TrainConfig) -> tuple[float, list[float], dict]:
    samples: list[float] = []

    class Sample(Callback):
        def on_batch_end(self, prog):
            samples.append(_rss_mib())

    base = _rss_mib()
    s = Trainer(ws_path, mc, tc, callbacks=[Sample()]).run()
    return base, samples, s.history[-1]


def memory(args) -> None:
    """RSS while training on workspaces of 1× and 3× a memory budget: the growth over
    the RSS before training is the working set (model, activations, the prefetch queue)
    and must not depend on the workspace's size."""
    torch.set_num_threads(args.threads)
    if args.chunk_cache_kib is not None:
        # h5py keeps a chunk cache per open dataset (8 MiB each here, so 2 per patient):
        # a workspace of many patients grows RSS by that much. Measure with a small cache.
        import functools

        import training.store.workspace as wsmod

        wsmod.h5py.File = functools.partial(wsmod.h5py.File, rdcc_nbytes=args.chunk_cache_kib * 1024)
        print(f"h5py chunk cache per dataset: {args.chunk_cache_kib} KiB")
    size = 128
    per_image = size * size * 5  # float32 image + uint8 labels
    mc = ModelConfig(input_size=size, n_classes=3, filters=4, latent_dim=2, n_blocks=4, fc_units=16, dropout=0.0)
    tc = TrainConfig(epochs=1, batch_size=8, threads=args.threads, recon_every=1000, checkpoint_every=1000)
    tmp = Path(tempfile.mkdtemp())
    n_patients = 8
    paths = {}
    for factor in (1, 3):
        n_images = int(factor * args.budget_mib * 2**20 / per_image) + 1
        per = -(-n_images // n_patients)
        paths[factor] = tmp / f"ws{factor}.h5"
        p = mp.get_context("spawn").Process(target=_build_big, args=(str(paths[factor]), n_patients, per, size))
        p.start()
        p.join()
    # warm-up so torch's one-off allocations (kernels, thread pools) are not counted
    Trainer(paths[1], mc, tc, callbacks=[]).run()
    for factor, path in paths.items():
        with Workspace.open(path) as ws:
            raw_mib = ws.n_images * per_image / 2**20
        base, samples, last = _train_and_sample(path, mc, tc)
        peak = max(samples)
        print(f"memory: workspace {factor}× the {args.budget_mib} MiB budget ({raw_mib:.0f} MiB of "
              f"images + labels, file {path.stat().st_size / 2**20:.0f} MiB); one epoch of "
              f"{last['images']} images in {len(samples)} batches of {tc.batch_size}: RSS before "
              f"{base:.0f} MiB, first/last batch {samples[0]:.0f}/{samples[-1]:.0f} MiB, peak "
              f"{peak:.0f} MiB, growth {peak - base:.1f} MiB", flush=True)


def layout3d(args) -> None:
    torch.set_num_threads(args.threads)
    mc = ModelConfig(spatial_dims=3, input_size=args.size, n_classes=3, filters=args.filters,
                     latent_dim=12, n_blocks=3, fc_units=64, dropout=0.1)
    tc = TrainConfig(batch_size=args.batch)
    x = torch.rand(args.batch, 4, *(args.size,) * 3)
    lab = torch.randint(0, 3, (args.batch, *(args.size,) * 3))
    res = {"NCDHW": [], "channels_last_3d": []}
    for r in range(args.rounds):
        for name, fmt in (("NCDHW", None), ("channels_last_3d", torch.channels_last_3d)):
            torch.manual_seed(0)
            model = VAE(mc)
            xb = x
            if fmt is not None:
                model.to(memory_format=fmt)
                xb = x.contiguous(memory_format=fmt)
            opt = torch.optim.Adam(model.parameters())
            times = []
            for step in range(args.steps + 1):
                t0 = time.perf_counter()
                loss = vae_loss(model(xb), xb[:, :1], lab, tc)
                opt.zero_grad()
                loss.total.backward()
                opt.step()
                if step:
                    times.append(time.perf_counter() - t0)
            res[name].append(args.batch / statistics.median(times))
    a, b = statistics.median(res["NCDHW"]), statistics.median(res["channels_last_3d"])
    print(f"layout3d: {args.size}³, {args.filters} filters, batch {args.batch}, {args.threads} threads: "
          f"NCDHW {a:.2f} img/s, channels_last_3d {b:.2f} img/s, ratio {b / a:.3f} "
          f"(rounds: {res})")


def devicecheck(args) -> None:
    """Train, stop, resume and reload on the GPU (the CUDA paths of the trainer)."""
    from training.vae.checkpoint import load_model

    images, labels = synthetic(4, 8, 32)
    tmp = Path(tempfile.mkdtemp())
    ws = write_arrays_workspace(tmp / "w.h5", images, labels, roi_names=("A", "B"), test_fraction=0.25)
    mc = ModelConfig(input_size=32, n_classes=3, filters=8, latent_dim=4, n_blocks=3, fc_units=32, dropout=0.1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tc = TrainConfig(epochs=4, batch_size=8, device=dev, augment_every=2, augment_count=6,
                     checkpoint_every=2, mc_samples=2)
    full = Trainer(ws, mc, tc).run()
    part = Trainer(ws, mc, tc.replace(epochs=2), out_dir=tmp / "run").run()
    rest = Trainer(ws, train_config=tc, out_dir=tmp / "run", resume=tmp / "run" / "last.pt").run()
    model, ck = load_model(tmp / "run" / "last.pt", device=dev)
    with torch.no_grad():
        out = model(torch.rand(2, 4, 32, 32, device=dev))
    diffs = [abs(a["train"]["total"] - b["train"]["total"]) / a["train"]["total"]
             for a, b in zip(full.history, rest.history)]
    print(f"devicecheck: device {full.device}; statuses {full.status}/{part.status}/{rest.status}; "
          f"epochs {ck.epoch}; finite output {bool(torch.isfinite(out.ct).all())}; "
          f"straight vs 2+2 resumed train loss rel. diff max {max(diffs):.2e} (GPU kernels are not "
          f"bit-deterministic); augmented {[h['augmented'] for h in rest.history]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("speed", "memory", "layout3d", "devicecheck"))
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--filters", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nchw", action="store_true")
    ap.add_argument("--autocast", choices=("none", "bf16"), default="none",
                    help="bf16 autocast on CUDA (both loops; ignored on the CPU)")
    ap.add_argument("--metrics-images", type=int, default=0,
                    help="per-epoch reconstruction metrics of the trainer (0 = off, as the bare loop)")
    ap.add_argument("--budget-mib", type=int, default=64)
    ap.add_argument("--chunk-cache-kib", type=int, default=None)
    args = ap.parse_args()
    if args.part == "speed":
        args.size, args.filters, args.batch = args.size or 128, args.filters or 24, args.batch or 32
        speed(args)
    elif args.part == "devicecheck":
        devicecheck(args)
    elif args.part == "memory":
        memory(args)
    else:
        args.size, args.filters, args.batch = args.size or 32, args.filters or 8, args.batch or 4
        layout3d(args)


if __name__ == "__main__":
    main()
