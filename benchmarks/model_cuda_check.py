"""CUDA check of the VAE and its loss, and GPU training throughput (needs a GPU).

Checks on the GPU: 2D/3D × CT/CT+RT forward (U = 2) + loss + backward with finite
gradients; eval z == µ; channels_last equal to NCHW; CUDA output equal to CPU output for
the same weights (TF32 off); bf16 autocast step finite. Then images/s for one Adam step
of the thesis 2D net (128×128, 24 filters, batch 32) and a 3D net (64³, batch 8) in
NCHW / channels_last, fp32 / bf16 autocast (the CPU script model_throughput.py holds
the bare-reference comparison; this one is a correctness check with GPU figures).

    python benchmarks/model_cuda_check.py   (PYTHONPATH=. where the project isn't installed)
"""

from __future__ import annotations

import time

import torch

from training.config import ModelConfig, TrainConfig
from training.vae.losses import vae_loss
from training.vae.model import assemble_input, build_model, channels_last_format


def batch(cfg: ModelConfig, b: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    sp = [cfg.input_size] * cfg.spatial_dims
    ct = torch.rand(b, *sp, generator=g)
    lab = torch.randint(0, cfg.n_classes, (b, *sp), generator=g) if cfg.n_classes else None
    x = assemble_input(ct, lab, cfg.n_classes)
    return x.to(device), ct.to(device), None if lab is None else lab.to(device)


def checks(dev) -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    tcfg = TrainConfig()
    for dims in (2, 3):
        for n in (0, 3):
            cfg = ModelConfig(spatial_dims=dims, input_size=32, n_classes=n, filters=8, n_blocks=3,
                              fc_units=32, split_at=8 if n else None)
            torch.manual_seed(0)
            cpu_model = build_model(cfg)
            model = build_model(cfg).to(dev)
            model.load_state_dict(cpu_model.state_dict())
            x, ct, lab = batch(cfg, 4, dev)
            model.train()
            out = model(x, mc_samples=2)
            t = vae_loss(out, ct, lab, tcfg)
            t.total.backward()
            ok_grad = all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
            model.eval()
            cpu_model.eval()
            with torch.no_grad():
                ref = model(x)
                cpu = cpu_model(x.cpu())
                fmt = channels_last_format(dims)
                model.to(memory_format=fmt)
                cl = model(x.contiguous(memory_format=fmt))
                model.to(memory_format=torch.contiguous_format)
            d_cl = (cl.ct - ref.ct).abs().max().item()
            d_cpu = (ref.ct.cpu() - cpu.ct).abs().max().item()
            d_mu = (ref.mu.cpu() - cpu.mu).abs().max().item()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model.train()
                ob = model(x, mc_samples=2)
                tb = vae_loss(ob, ct, lab, tcfg)
            tb.total.backward()
            print(f"{dims}D n_classes={n}: loss {t.total.item():.1f} grads finite {ok_grad}; "
                  f"eval z==mu {torch.equal(ref.z, ref.mu)}; |cl-nchw| {d_cl:.2e}; "
                  f"|cuda-cpu| ct {d_cpu:.2e} mu {d_mu:.2e}; bf16 loss {tb.total.item():.1f} "
                  f"finite {torch.isfinite(tb.total).item()}")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


def throughput(dev, cfg: ModelConfig, b: int, steps: int = 20) -> None:
    tcfg = TrainConfig()
    for fmt_name in ("NCHW", "channels_last"):
        for amp in (False, True):
            torch.manual_seed(0)
            model = build_model(cfg).to(dev).train()
            x, ct, _ = batch(cfg, b, dev)
            if fmt_name != "NCHW":
                fmt = channels_last_format(cfg.spatial_dims)
                model = model.to(memory_format=fmt)
                x = x.contiguous(memory_format=fmt)
            opt = torch.optim.Adam(model.parameters(), 1e-3)

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    out = model(x)
                    loss = vae_loss(out, ct, None, tcfg).total
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / steps
            print(f"  {cfg.spatial_dims}D {cfg.input_size} f{cfg.filters} b{b} {fmt_name:13s} "
                  f"{'bf16' if amp else 'fp32'}: {b / dt:8.0f} images/s ({dt * 1e3:.1f} ms/step)")


def main() -> None:
    dev = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name(0))
    checks(dev)
    torch.backends.cudnn.benchmark = True
    throughput(dev, ModelConfig(input_size=128, filters=24), 32)
    throughput(dev, ModelConfig(spatial_dims=3, input_size=64, filters=24), 8, steps=10)
    throughput(dev, ModelConfig(spatial_dims=3, input_size=128, filters=24), 4, steps=5)
    print("max memory allocated", torch.cuda.max_memory_allocated() / 2**30, "GiB")


if __name__ == "__main__":
    main()
