"""The VAE loss (training/vae/losses.py) against independent implementations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence as td_kl

from training.config import ModelConfig, TrainConfig
from training.vae.losses import (
    LossTerms,
    class_counts,
    cross_entropy,
    gaussian_nll,
    inverse_frequency_weights,
    kl_divergence,
    kl_per_dim,
    loss_per_image,
    loss_sums,
    vae_loss,
)
from training.vae.model import VAEOutput, assemble_input, build_model

torch.set_num_threads(1)
D = torch.float64


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("sigma2", [0.01, 1.0, 3.0])
def test_gaussian_term_matches_normal_log_prob(sigma2):
    x, x_hat = rand(3, 1, 5, 6, seed=1), rand(3, 1, 5, 6, seed=2)
    ref = -Normal(x_hat, math.sqrt(sigma2)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(x, x_hat, sigma2, include_constant=True), ref)
    # the default drops exactly the constant (N/2)·log(2πσ²), N = 30 pixels
    const = 0.5 * 30 * math.log(2 * math.pi * sigma2)
    torch.testing.assert_close(gaussian_nll(x, x_hat, sigma2), ref - const)


@pytest.mark.parametrize("prior_sigma2", [1.0, 0.25, 4.0])
def test_kl_matches_torch_distributions(prior_sigma2):
    mu, logvar = randn(4, 5, seed=3) * 2, randn(4, 5, seed=4)
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.full_like(mu, math.sqrt(prior_sigma2))), 1)
    ref = td_kl(q, p)  # KL(q(z|x) ‖ prior), per image
    torch.testing.assert_close(kl_divergence(mu, logvar, prior_sigma2), ref, rtol=1e-12, atol=1e-12)
    per_dim_ref = td_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, math.sqrt(prior_sigma2)))
    torch.testing.assert_close(kl_per_dim(mu, logvar, prior_sigma2), per_dim_ref)
    assert kl_per_dim(torch.zeros(1, 2, dtype=D), torch.full((1, 2), math.log(prior_sigma2), dtype=D),
                      prior_sigma2).abs().max() < 1e-12


def test_cross_entropy_by_hand():
    logits = randn(2, 3, 4, 4, seed=5)
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(6))
    logp = logits - logits.exp().sum(1, keepdim=True).log()
    picked = logp.gather(1, labels.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(cross_entropy(logits, labels), -picked.flatten(1).sum(1))
    w = torch.tensor([0.5, 2.0, 1.0], dtype=D)
    torch.testing.assert_close(
        cross_entropy(logits, labels, w), -(w[labels] * picked).flatten(1).sum(1)
    )
    # uint8 label maps (the workspace's type) are accepted
    torch.testing.assert_close(cross_entropy(logits, labels.to(torch.uint8)), cross_entropy(logits, labels))


def test_inverse_frequency_weights_by_hand():
    # 1/count = (1/900, 1/90, 1/10) ∝ (1, 10, 90); sum 101; mean 1 ⇒ ×3/101
    w = inverse_frequency_weights([900, 90, 10])
    torch.testing.assert_close(w, torch.tensor([3 / 101, 30 / 101, 270 / 101]))
    assert w.mean().item() == pytest.approx(1.0)
    # an absent class gets weight 0; the others average 1
    w = inverse_frequency_weights(torch.tensor([300, 0, 100]))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.0, 1.5]))
    torch.testing.assert_close(inverse_frequency_weights([5, 5]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError):
        inverse_frequency_weights([0, 0])
    with pytest.raises(ValueError):
        inverse_frequency_weights([3, -1])


def test_class_counts():
    labels = torch.tensor([[0, 2, 2], [2, 0, 1]], dtype=torch.uint8)
    assert class_counts(labels, 4).tolist() == [2, 1, 3, 0]


def fake_output(b=3, u=1, n_classes=3, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ct = torch.rand(u * b, 1, size, size, generator=g, dtype=D)
    rt = torch.randn(u * b, n_classes, size, size, generator=g, dtype=D) if n_classes else None
    mu = torch.randn(b, 2, generator=g, dtype=D)
    logvar = torch.randn(b, 2, generator=g, dtype=D)
    z = mu.repeat(u, 1)
    return VAEOutput(ct, rt, mu, logvar, z, u)


def test_vae_loss_composition_and_reduction():
    cfg = TrainConfig(recon_sigma2=0.05, prior_sigma2=2.0, ce_weight=0.3)
    out = fake_output()
    x_ct = rand(3, 1, 4, 4, seed=9)
    labels = torch.randint(0, 3, (3, 4, 4), generator=torch.Generator().manual_seed(8))
    w = torch.tensor([0.2, 1.0, 1.8])
    t = vae_loss(out, x_ct, labels, cfg, w)
    assert isinstance(t, LossTerms) and all(v.dim() == 0 for v in t)
    recon = (-Normal(out.ct, math.sqrt(0.05)).log_prob(x_ct).flatten(1).sum(1)
             - 0.5 * 16 * math.log(2 * math.pi * 0.05))
    kl = kl_divergence(out.mu, out.logvar, 2.0)
    ce = 0.3 * cross_entropy(out.rt_logits, labels, w.to(D))
    torch.testing.assert_close(t.recon, recon.mean())
    torch.testing.assert_close(t.kl, kl.mean())
    torch.testing.assert_close(t.ce, ce.mean())
    torch.testing.assert_close(t.total, t.recon + t.kl + t.ce)
    # (B, *spatial) CT targets are accepted too
    torch.testing.assert_close(vae_loss(out, x_ct[:, 0], labels, cfg, w).total, t.total)


def test_ct_only_has_zero_ce_and_rt_needs_labels():
    cfg = TrainConfig()
    t = vae_loss(fake_output(n_classes=0), rand(3, 1, 4, 4), None, cfg)
    assert t.ce.item() == 0.0
    with pytest.raises(ValueError, match="labels"):
        vae_loss(fake_output(), rand(3, 1, 4, 4), None, cfg)


def test_monte_carlo_terms_average_over_draws():
    cfg = TrainConfig(mc_samples=4)
    b, u = 3, 4
    out = fake_output(b=b, u=u)
    x_ct = rand(b, 1, 4, 4, seed=11)
    labels = torch.randint(0, 3, (b, 4, 4), generator=torch.Generator().manual_seed(12))
    per = loss_per_image(out, x_ct, labels, cfg)
    assert per.recon.shape == (b,)
    ct_u = out.ct.view(u, b, 1, 4, 4)
    rt_u = out.rt_logits.view(u, b, 3, 4, 4)
    recon = torch.stack([gaussian_nll(x_ct, ct_u[i], cfg.recon_sigma2) for i in range(u)]).mean(0)
    ce = torch.stack([cross_entropy(rt_u[i], labels) for i in range(u)]).mean(0)
    torch.testing.assert_close(per.recon, recon)
    torch.testing.assert_close(per.ce, ce)
    torch.testing.assert_close(per.kl, kl_divergence(out.mu, out.logvar))


def test_loss_sums_recombine_across_shards():
    """Sums and counts from two shards (as two DDP ranks would) give the full-batch mean."""
    cfg = TrainConfig(ce_weight=2.0)
    out = fake_output(b=5)
    x_ct = rand(5, 1, 4, 4, seed=13)
    labels = torch.randint(0, 3, (5, 4, 4), generator=torch.Generator().manual_seed(14))
    full = vae_loss(out, x_ct, labels, cfg)

    def shard(sl):
        o = VAEOutput(out.ct[sl], out.rt_logits[sl], out.mu[sl], out.logvar[sl], out.z[sl], 1)
        return loss_sums(o, x_ct[sl], labels[sl], cfg)

    a, b = shard(slice(0, 2)), shard(slice(2, 5))
    assert a["count"].item() == 2 and b["count"].item() == 3
    for name in ("total", "recon", "kl", "ce"):
        assert not a[name].requires_grad and a[name].dtype == torch.float64
        torch.testing.assert_close((a[name] + b[name]) / (a["count"] + b["count"]), full._asdict()[name])


def test_loss_backpropagates_through_model():
    torch.manual_seed(0)
    mcfg = ModelConfig(input_size=16, filters=4, n_blocks=2, fc_units=8, latent_dim=2, n_classes=3)
    model = build_model(mcfg).train()
    ct = torch.rand(2, 16, 16)
    labels = torch.randint(0, 3, (2, 16, 16))
    out = model(assemble_input(ct, labels, 3), mc_samples=2)
    t = vae_loss(out, ct, labels, TrainConfig(), inverse_frequency_weights(class_counts(labels, 3)))
    assert torch.isfinite(t.total)
    t.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_half_precision_outputs_are_summed_in_float32():
    out = fake_output(b=2)
    half = VAEOutput(*(t.to(torch.bfloat16) for t in out[:5]), 1)
    x_ct = rand(2, 1, 4, 4, seed=15).to(torch.bfloat16)
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(16))
    t = vae_loss(half, x_ct, labels, TrainConfig())
    assert all(v.dtype == torch.float32 for v in t)
