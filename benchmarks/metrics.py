"""Cost of the per-epoch reconstruction metrics (training.vae.metrics, issue 15).

    PYTHONPATH=. python benchmarks/metrics.py [--images 32 --size 128 --threads 1 --repeats 3]

(a) The figures of `--images` image pairs: MetricSums (torch SSIM/PSNR, scipy body mask)
against a bare reference (skimage.metrics.structural_similarity and
peak_signal_noise_ratio per image, the same body mask), side by side; prints ms and the
ratio, and the largest difference of the values.
(b) The whole per-epoch hook on the thesis 2D net (encode + decode of `--images` images
and (a)) against one Adam step on a batch of 32 of the same net: how many training steps
the metrics cost per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.vae import metrics  # noqa: E402
from training.vae.losses import vae_loss  # noqa: E402
from training.vae.model import VAE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    n, s = args.images, args.size
    yy, xx = np.mgrid[:s, :s]
    body = (((yy - s / 2) / (s * 0.35)) ** 2 + ((xx - s / 2) / (s * 0.45)) ** 2) < 1
    a = np.where(body, 0.5, 0.0)[None] + 0.2 * rng.random((n, s, s))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    a, b = a.astype(np.float32), b.astype(np.float32)

    def ours():
        m = metrics.MetricSums(-800.0, 700.0)
        m.add(a, b)
        return m.result()

    def bare():
        ss = [structural_similarity(a[i].astype(np.float64), b[i].astype(np.float64), data_range=1.0) for i in range(n)]
        ps = [peak_signal_noise_ratio(a[i].astype(np.float64), b[i].astype(np.float64), data_range=1.0) for i in range(n)]
        mk = [metrics.body_mask(a[i], -800.0, 700.0) for i in range(n)]
        mae = [np.abs(b[i] - a[i])[mk[i]].mean() * 1500.0 for i in range(n)]
        return {"ssim": float(np.mean(ss)), "psnr_db": float(np.mean(ps)), "mae_hu": float(np.mean(mae))}

    t_ours, t_bare = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); r1 = ours(); t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); r2 = bare(); t_bare.append(time.perf_counter() - t0)
    diff = max(abs(r1[k] - r2[k]) for k in ("ssim", "psnr_db", "mae_hu"))
    mo, mb = statistics.median(t_ours) * 1e3, statistics.median(t_bare) * 1e3
    print(f"(a) {n} pairs {s}²: MetricSums {mo:.1f} ms, skimage loop {mb:.1f} ms, bare/ours {mb / mo:.2f}; "
          f"max |difference| {diff:.2e}")

    mc = ModelConfig(input_size=s, filters=24, n_blocks=4, latent_dim=12, fc_units=256, dropout=0.3)
    model = VAE(mc)

    class Src:
        def read_images(self, rows):
            return a[rows[:, 1]]

        def read_labels(self, rows):
            return None

    rows = np.stack([np.zeros(n, np.int64), np.arange(n)], 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(a[:32 if n >= 32 else n])[:, None]
    tc = TrainConfig()
    t_hook, t_step = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        metrics.evaluate_rows(model, Src(), rows, hu_min=-800.0, hu_max=700.0, batch_size=32)
        t_hook.append(time.perf_counter() - t0)
        model.train()
        t0 = time.perf_counter()
        loss = vae_loss(model(x), x, None, tc)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        t_step.append(time.perf_counter() - t0)
    h, st = statistics.median(t_hook) * 1e3, statistics.median(t_step) * 1e3
    print(f"(b) per-epoch hook on {n} images, thesis net {s}², {args.threads} thread(s): {h:.0f} ms; one Adam step "
          f"(batch {x.shape[0]}): {st:.0f} ms; the hook costs {h / st:.1f} training steps per epoch")


if __name__ == "__main__":
    main()
