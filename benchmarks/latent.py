"""Latent-analysis speed: KL matrix, interactive decode, manifold grid (benchmarks/README.md).

Runs the project's code and a bare reference side by side in one run and prints ratios:

1. KL(q_i ‖ q_j) for N patients, J = 12: `similarity.kl_matrix` (three matrix products)
   vs a bare numpy broadcast over (N, N, J); N = 250 … 2000 to show the O(N²J) growth.
2. One decode of the thesis 2D net (128×128, 24 filters, J = 12) for a slider:
   `latent.LatentDecoder` (eval, inference_mode) in NCHW and channels_last vs the naive
   call (train mode, autograd on); median and p95 ms.
3. A 15×15 manifold grid: `latent.manifold` (one batch) vs decoding one code at a time.

    python benchmarks/latent.py --threads 2 [--device cpu|cuda] [--repeats 100]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from training.latent import encode as latent
from training.latent import sampling
from training.latent import similarity
from training.config import ModelConfig
from training.vae.model import VAE


def bare_kl(mu, logvar):
    """Reference: the textbook formula broadcast over all pairs, (N, N, J) memory."""
    var = np.exp(logvar)
    d = mu[:, None, :] - mu[None, :, :]
    t = logvar[None, :, :] - logvar[:, None, :] + (var[:, None, :] + d * d) / var[None, :, :] - 1.0
    return 0.5 * t.sum(-1)


def timed(fn, repeats, warmup=2, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out[i] = (time.perf_counter() - t0) * 1000.0
    return out


def bench_kl(repeats: int) -> None:
    print("## KL matrix, J = 12 (ms, median of repeats)")
    print("| N | project kl_matrix | bare broadcast | bare / project | max |diff| |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in (250, 500, 1000, 2000):
        mu = rng.normal(0, 2, (n, 12))
        lv = rng.normal(-1, 1, (n, 12))
        r = max(3, repeats // (n // 250))
        tp = np.median(timed(lambda: similarity.kl_matrix(mu, lv), r))
        tb = np.median(timed(lambda: bare_kl(mu, lv), max(3, r // 4)))
        diff = np.abs(similarity.kl_matrix(mu, lv) - np.maximum(bare_kl(mu, lv), 0)).max()
        print(f"| {n} | {tp:.1f} | {tb:.1f} | {tb / tp:.1f} | {diff:.1e} |")


def bench_decode(model, device, repeats: int) -> None:
    j = model.cfg.latent_dim
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    z = sampling.sample_prior(1, j, seed=0)
    zt = torch.from_numpy(z).to(device)

    def naive():
        model.train()  # dropout on, autograd on: what a panel gets without care
        return model.decode(zt).ct.detach().cpu().numpy()

    rows = []
    times_naive = timed(naive, repeats, 5, sync)
    model.eval()
    dec_plain = latent.LatentDecoder(model, channels_last=False)
    times_plain = timed(lambda: dec_plain.decode(z), repeats, 5, sync)
    dec_cl = latent.LatentDecoder(model, channels_last=True)
    times_cl = timed(lambda: dec_cl.decode(z), repeats, 5, sync)
    model.to(memory_format=torch.contiguous_format)
    for name, t in (("naive (train mode, autograd)", times_naive), ("LatentDecoder NCHW", times_plain), ("LatentDecoder channels_last", times_cl)):
        rows.append((name, np.median(t), np.percentile(t, 95)))
    print("\n## One decode, 128×128, thesis 2D net (ms)")
    print("| variant | median | p95 | naive p95 / p95 |")
    print("|---|---|---|---|")
    for name, med, p95 in rows:
        print(f"| {name} | {med:.2f} | {p95:.2f} | {rows[0][2] / p95:.2f} |")


def bench_grid(model, device, repeats: int) -> None:
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    results = {}
    for cl in (False, True):
        model.to(memory_format=torch.contiguous_format)
        dec = latent.LatentDecoder(model, channels_last=cl, batch_size=225)
        results[f"one batch ({'channels_last' if cl else 'NCHW'})"] = timed(lambda: latent.manifold(model, 15, (0, 1), decoder=dec), repeats, 1, sync)
    model.to(memory_format=torch.contiguous_format)
    dec = latent.LatentDecoder(model, channels_last=True)
    codes = sampling.grid_codes(15, (0, 1), model.cfg.latent_dim).reshape(225, -1)
    results["one by one (channels_last, eval)"] = timed(lambda: [dec.decode(c) for c in codes], max(1, repeats // 3), 1, sync)
    print("\n## 15×15 manifold grid (ms, median)")
    print("| variant | median | one-by-one / variant |")
    print("|---|---|---|")
    ref = np.median(results["one by one (channels_last, eval)"])
    for name, t in results.items():
        print(f"| {name} | {np.median(t):.0f} | {ref / np.median(t):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--skip-kl", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, numpy {np.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    if not args.skip_kl:
        bench_kl(args.repeats)
    torch.manual_seed(0)
    model = VAE(ModelConfig()).to(device)  # thesis defaults: 2D, 128×128, 24 filters, J = 12
    bench_decode(model, device, args.repeats * 2)
    bench_grid(model, device, max(3, args.repeats // 10))


if __name__ == "__main__":
    main()
