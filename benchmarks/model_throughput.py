"""Training throughput of the thesis 2D VAE: images/s for forward + loss + backward.

Runs training.vae.model.VAE with training.vae.losses.vae_loss, and a bare reference (the same
layers as a plain nn.Sequential with an inline loss, no project code), each in the default
(NCHW) and channels_last memory formats, in one process, interleaved round by round so
load from other users of the machine hits all variants alike. Prints images/s (median
over rounds) and the ratios.

    python benchmarks/model_throughput.py [--threads 2] [--rounds 4] [--size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from training.config import ModelConfig, TrainConfig
from training.vae.losses import vae_loss
from training.vae.model import build_model


def bare_reference(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """The same architecture written out directly (encoder, decoder) for 2D CT-only."""
    f, s = cfg.filters, cfg.input_size // 2**cfg.n_blocks
    enc: list[nn.Module] = []
    ch = 1
    for _ in range(cfg.n_blocks):
        for _ in range(cfg.convs_per_block):
            enc += [nn.Conv2d(ch, f, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            ch = f
        enc += [nn.MaxPool2d(2), nn.Dropout(cfg.dropout)]
    enc += [nn.Flatten(), nn.Linear(f * s * s, cfg.fc_units), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(cfg.fc_units, 2 * cfg.latent_dim)]
    dec: list[nn.Module] = [nn.Linear(cfg.latent_dim, cfg.fc_units), nn.LeakyReLU(0.2, inplace=True),
                            nn.Linear(cfg.fc_units, f * s * s), nn.LeakyReLU(0.2, inplace=True),
                            nn.Unflatten(1, (f, s, s))]
    for _ in range(cfg.n_blocks - 1):
        for _ in range(cfg.convs_per_block):
            dec += [nn.ConvTranspose2d(f, f, 3, padding=1), nn.ReLU(inplace=True)]
        dec += [nn.Dropout(cfg.dropout),
                nn.ConvTranspose2d(f, f, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True)]
    dec += [nn.ConvTranspose2d(f, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid()]
    return nn.Sequential(*enc), nn.Sequential(*dec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--filters", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(input_size=args.size, filters=args.filters)
    tcfg = TrainConfig()
    x = torch.rand(args.batch, 1, args.size, args.size)
    cl = torch.channels_last

    def project(fmt):
        model = build_model(cfg).train().to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        xx = x.contiguous(memory_format=fmt)

        def step():
            opt.zero_grad(set_to_none=True)
            out = model(xx)
            vae_loss(out, xx, None, tcfg).total.backward()
            opt.step()
        return step

    def bare(fmt):
        enc, dec = bare_reference(cfg)
        enc, dec = enc.train().to(memory_format=fmt), dec.train().to(memory_format=fmt)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 1e-3)
        xx = x.contiguous(memory_format=fmt)
        j = cfg.latent_dim

        def step():
            opt.zero_grad(set_to_none=True)
            h = enc(xx)
            mu, logvar = h[:, :j], h[:, j:]
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            y = dec(z)
            recon = ((xx - y) ** 2).flatten(1).sum(1) / (2 * tcfg.recon_sigma2)
            kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
            (recon + kl).mean().backward()
            opt.step()
        return step

    variants = {
        "project NCHW": project(torch.contiguous_format),
        "project channels_last": project(cl),
        "bare NCHW": bare(torch.contiguous_format),
        "bare channels_last": bare(cl),
    }
    for step in variants.values():  # warm-up (allocator, oneDNN primitive caches)
        step()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.size}x{args.size}, filters {args.filters}, {args.rounds} rounds (median)")
    for k, v in ips.items():
        spread = f"{args.batch / max(times[k]):.1f}-{args.batch / min(times[k]):.1f}"
        print(f"  {k:24s} {v:7.1f} images/s  (range {spread})")
    print(f"  channels_last / NCHW (project): {ips['project channels_last'] / ips['project NCHW']:.2f}")
    print(f"  channels_last / NCHW (bare):    {ips['bare channels_last'] / ips['bare NCHW']:.2f}")
    print(f"  project / bare (NCHW):          {ips['project NCHW'] / ips['bare NCHW']:.2f}")
    print(f"  project / bare (channels_last): {ips['project channels_last'] / ips['bare channels_last']:.2f}")


if __name__ == "__main__":
    main()
