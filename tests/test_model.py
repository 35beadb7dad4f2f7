"""The VAE network (training/vae/model.py): shapes, sampling, memory formats, determinism."""

from __future__ import annotations

import pytest
import torch

from training.config import ConfigError, ModelConfig, PreprocessConfig
from training.vae.model import (
    VAE,
    Decoded,
    VAEOutput,
    assemble_input,
    build_model,
    channels_last_format,
    model_config_for,
)

torch.set_num_threads(1)


def tiny(**kw) -> ModelConfig:
    base = dict(input_size=16, filters=4, n_blocks=2, fc_units=16, latent_dim=3, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def make_input(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spatial = [cfg.input_size] * cfg.spatial_dims
    ct = torch.rand(batch, *spatial, generator=g)
    labels = (
        torch.randint(0, cfg.n_classes, (batch, *spatial), generator=g) if cfg.n_classes else None
    )
    return assemble_input(ct, labels, cfg.n_classes)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("n_classes", [0, 3])
@pytest.mark.parametrize("size,n_blocks,split_at", [(16, 2, None), (32, 3, None), (32, 3, 4), (32, 3, 8)])
def test_shapes(dims, n_classes, size, n_blocks, split_at):
    if dims == 3 and size == 32 and split_at == 8:
        pytest.skip("covered by the 2D case; keeps 3D cheap")
    cfg = tiny(spatial_dims=dims, n_classes=n_classes, input_size=size, n_blocks=n_blocks,
               split_at=split_at)
    model = build_model(cfg).eval()
    x = make_input(cfg, batch=2)
    spatial = (size,) * dims
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 3)
    dec = model.decode(mu)
    assert isinstance(dec, Decoded)
    assert dec.ct.shape == (2, 1, *spatial)
    assert ((dec.ct > 0) & (dec.ct < 1)).all()
    out = model(x)
    assert isinstance(out, VAEOutput) and out.mc_samples == 1
    assert out.ct.shape == (2, 1, *spatial) and out.z.shape == (2, 3)
    if n_classes:
        assert dec.rt_logits.shape == (2, n_classes, *spatial)
        assert out.rt_logits.shape == (2, n_classes, *spatial)
    else:
        assert dec.rt_logits is None and out.rt_logits is None and dec.rt_probs() is None


def test_filters_constant_across_blocks_as_in_thesis():
    model = build_model(tiny(input_size=32, n_blocks=3, filters=5))
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    inner = [m for m in convs if m.in_channels != 1 and m.out_channels != 1]
    assert inner and all(m.in_channels == m.out_channels == 5 for m in inner)
    # encoder: n_blocks × convs_per_block convs; decoder: (n_blocks-1) × (convs_per_block+1) + 1
    assert sum(isinstance(m, torch.nn.Conv2d) for m in convs) == 3 * 2
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in convs) == 2 * 3 + 1


def test_split_makes_separate_rt_branch():
    cfg = tiny(input_size=32, n_blocks=3, n_classes=3)
    late = build_model(cfg)
    early = build_model(cfg.replace(split_at=4))
    assert len(late.dec_shared) == 2 and len(early.dec_shared) == 0
    assert early.num_parameters() > late.num_parameters()
    with pytest.raises(ConfigError, match="split_at"):
        build_model(cfg.replace(split_at=32))


def test_mc_samples_shape_convention_sample_major():
    cfg = tiny(n_classes=3)
    model = build_model(cfg).train()
    x = make_input(cfg, batch=2)
    torch.manual_seed(0)
    out = model(x, mc_samples=4)
    assert out.mc_samples == 4
    assert out.mu.shape == (2, 3) and out.z.shape == (8, 3)
    assert out.ct.shape == (8, 1, 16, 16) and out.rt_logits.shape == (8, 3, 16, 16)
    # row u·B + b belongs to input b: decoding z.view(U, B, J)[u, b] alone gives that row
    model.eval()
    dec = model.decode(out.z.view(4, 2, 3)[2, 1:2])
    zz = model.decode(out.z)
    torch.testing.assert_close(dec.ct[0], zz.ct[2 * 2 + 1])
    out_eval = model(x, mc_samples=3)
    torch.testing.assert_close(out_eval.z.view(3, 2, 3), out_eval.mu.expand(3, 2, 3))


@pytest.mark.parametrize("dims", [2, 3])
def test_eval_sample_is_mu(dims):
    cfg = tiny(spatial_dims=dims, dropout=0.3)
    model = build_model(cfg).eval()
    out = model(make_input(cfg))
    assert torch.equal(out.z, out.mu)
    out2 = model(make_input(cfg))
    torch.testing.assert_close(out.ct, out2.ct, rtol=0, atol=0)


def test_train_sampling_distribution_matches_posterior():
    """z over many draws of one input has mean µ and variance σ² = exp(logvar)."""
    cfg = tiny(dropout=0.0)
    model = build_model(cfg).train()
    x = make_input(cfg, batch=1)
    torch.manual_seed(1)
    u = 4000
    out = model(x, mc_samples=u)
    z = out.z.detach().view(u, 1, 3)[:, 0]
    mu, var = out.mu.detach()[0], out.logvar.detach()[0].exp()
    # standard errors: sqrt(var/u) for the mean, var·sqrt(2/(u-1)) for the variance
    assert ((z.mean(0) - mu).abs() < 5 * (var / u).sqrt()).all()
    assert ((z.var(0) - var).abs() < 5 * var * (2 / (u - 1)) ** 0.5).all()

    # a chosen (µ, log σ²) is reproduced too
    mu0 = torch.tensor([[0.5, -2.0, 3.0]]).expand(u, 3)
    lv0 = torch.tensor([[0.0, -2.0, 1.0]]).expand(u, 3)
    z0 = model.sample(mu0, lv0, generator=torch.Generator().manual_seed(2))
    var0 = lv0[0].exp()
    assert ((z0.mean(0) - mu0[0]).abs() < 5 * (var0 / u).sqrt()).all()
    assert ((z0.var(0) - var0).abs() < 5 * var0 * (2 / (u - 1)) ** 0.5).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_rt_softmax_sums_to_one(dims):
    cfg = tiny(spatial_dims=dims, n_classes=4)
    model = build_model(cfg).eval()
    out = model(make_input(cfg))
    probs = out.rt_probs()
    assert probs.shape == out.rt_logits.shape
    torch.testing.assert_close(probs.sum(1), torch.ones_like(probs[:, 0]))
    torch.testing.assert_close(model.decode(out.z).rt_probs(), probs)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("n_classes", [0, 3])
def test_channels_last_gives_same_output(dims, n_classes):
    cfg = tiny(spatial_dims=dims, n_classes=n_classes, input_size=16 if dims == 3 else 32,
               n_blocks=2)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = make_input(cfg, batch=3)
    ref = model(x)
    fmt = channels_last_format(dims)
    model_cl = model.to(memory_format=fmt)
    assert model_cl._memory_format() == fmt
    x_cl = x.contiguous(memory_format=fmt)
    got = model_cl(x_cl)
    assert got.ct.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(got.mu, ref.mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.ct, ref.ct, rtol=1e-4, atol=1e-5)
    if n_classes:
        torch.testing.assert_close(got.rt_logits, ref.rt_logits, rtol=1e-4, atol=1e-5)


def test_config_round_trip_builds_identical_architecture():
    cfg = tiny(n_classes=3, input_size=32, n_blocks=3, split_at=8, dropout=0.2)
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    a, b = build_model(cfg), build_model(again)
    assert str(a) == str(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape for k in sa)
    b.load_state_dict(sa)  # strict: same keys and shapes


def test_determinism_with_seed():
    cfg = tiny(n_classes=3, dropout=0.3)
    x = make_input(cfg)

    def run():
        torch.manual_seed(123)
        model = build_model(cfg).train()
        out = model(x, mc_samples=2)
        return [t.detach() for t in (out.ct, out.rt_logits, out.mu, out.logvar, out.z)]

    for r1, r2 in zip(run(), run()):
        assert torch.equal(r1, r2)


@pytest.mark.parametrize("dims,n_classes,split_at", [(2, 0, None), (2, 3, 4), (3, 3, None)])
def test_gradient_reaches_every_parameter(dims, n_classes, split_at):
    cfg = tiny(spatial_dims=dims, n_classes=n_classes, split_at=split_at)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = make_input(cfg, batch=2)
    out = model(x)
    loss = out.ct.sum() + out.mu.pow(2).sum() + out.logvar.exp().sum()
    if n_classes:
        loss = loss + out.rt_logits.pow(2).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_num_parameters_counts_trainable():
    model = build_model(tiny())
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    model.fc_mu.weight.requires_grad_(False)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) - model.fc_mu.weight.numel()
    assert model.num_parameters(trainable_only=False) == sum(p.numel() for p in model.parameters())


def test_wrong_input_shape_is_named():
    model = build_model(tiny(n_classes=3))
    with pytest.raises(ValueError, match=r"\(B, 4, 16, 16\)"):
        model(torch.rand(2, 1, 16, 16))


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError, match="filters"):
        VAE(tiny(filters=0))
    with pytest.raises(ConfigError, match="divisible"):
        VAE(tiny(input_size=20, n_blocks=3))


def test_model_config_for_preprocess():
    pre = PreprocessConfig(crop=64, size=32, mode="3d", rois=("Lung", "Heart"))
    cfg = model_config_for(pre, filters=4, n_blocks=3)
    assert (cfg.input_size, cfg.spatial_dims, cfg.n_classes, cfg.in_channels) == (32, 3, 3, 4)
    assert cfg.filters == 4 and cfg.n_blocks == 3
    assert model_config_for(PreprocessConfig(crop=128)).input_size == 128
    assert model_config_for(PreprocessConfig(crop=128)).n_classes == 0
    with pytest.raises(ConfigError, match="input_size"):
        model_config_for(PreprocessConfig(crop=None, size=None))
    assert model_config_for(PreprocessConfig(crop=None), input_size=64).input_size == 64
    with pytest.raises(ConfigError, match="cubic"):
        model_config_for(PreprocessConfig(crop=32, mode="3d", depth=16))


def test_assemble_input_one_hot():
    ct = torch.rand(2, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.uint8)
    labels[0, 1, 2] = 2
    x = assemble_input(ct, labels, 3)
    assert x.shape == (2, 4, 4, 4)
    assert torch.equal(x[:, 0], ct)
    assert x[0, 3, 1, 2] == 1 and x[0, 1, 1, 2] == 0
    torch.testing.assert_close(x[:, 1:].sum(1), torch.ones(2, 4, 4))
    assert assemble_input(ct, None, 0).shape == (2, 1, 4, 4)


def test_codes_depend_on_the_input_at_initialisation():
    """Regression: with PyTorch's default init the thesis network's µ was constant over
    inputs (biases dominated after eight convolutions) and training stalled on the mean
    image. The initial codes and reconstructions must vary with the input."""
    torch.manual_seed(0)
    cfg = ModelConfig(input_size=64, filters=16, n_blocks=4, dropout=0.0)
    model = VAE(cfg).eval()
    x = torch.rand(8, 1, 64, 64)
    mu, _ = model.encode(x)
    assert mu.std(0).mean() > 1e-2 * mu.abs().mean().clamp_min(1e-6) and mu.std(0).mean() > 1e-3
    assert model.decode(mu).ct.std(0).mean() > 1e-5
