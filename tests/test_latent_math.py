"""Manifold grid, interpolation, sampling and density without a model (F18–F21)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from training.latent import sampling

torch.set_num_threads(1)


@pytest.mark.parametrize("n,s2", [(1, 1.0), (7, 1.0), (15, 2.5)])
def test_grid_positions_are_prior_quantiles(n, s2):
    ref = norm.ppf((np.arange(n) + 0.5) / n, scale=math.sqrt(s2))
    np.testing.assert_allclose(sampling.grid_positions(n, s2), ref, rtol=1e-12, atol=1e-12)


def test_grid_codes_layout_and_base():
    base = np.arange(5, dtype=float)
    z = sampling.grid_codes(4, (1, 3), 5, base=base, prior_sigma2=1.0)
    pos = sampling.grid_positions(4)
    assert z.shape == (4, 4, 5)
    np.testing.assert_allclose(z[0, :, 1], pos, rtol=1e-6)  # columns ascend in dims[0]
    np.testing.assert_allclose(z[:, 0, 3], pos[::-1], rtol=1e-6)  # rows descend in dims[1]
    np.testing.assert_array_equal(z[..., [0, 2, 4]], np.broadcast_to(base[[0, 2, 4]], (4, 4, 3)))
    z0 = sampling.grid_codes(3, (0, 1), 4)
    assert np.all(z0[..., 2:] == 0)
    with pytest.raises(ValueError):
        sampling.grid_codes(3, (1, 1), 4)


def test_slerp_endpoints_and_constant_norm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    t = np.linspace(0, 1, 11)
    z = sampling.slerp(a, b, t)
    np.testing.assert_allclose(z[0], a, atol=1e-12)
    np.testing.assert_allclose(z[-1], b, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.linalg.norm(a), rtol=1e-12)
    # the path stays in the plane of a and b: angles to a grow linearly
    ang = np.arccos(np.clip(z @ a / np.linalg.norm(z, axis=1) / np.linalg.norm(a), -1, 1))
    np.testing.assert_allclose(ang, t * ang[-1], atol=1e-9)


def test_slerp_parallel_antiparallel_and_zero():
    a = np.array([1.0, 2.0, 2.0])
    z = sampling.slerp(a, 3 * a, [0, 0.5, 1])  # parallel: a line
    np.testing.assert_allclose(z, sampling.lerp(a, 3 * a, [0, 0.5, 1]))
    z = sampling.slerp(a, -a, np.linspace(0, 1, 9))  # antiparallel: a half circle
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z[0], a, atol=1e-12)
    np.testing.assert_allclose(z[-1], -a, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 3.0, rtol=1e-12)
    z = sampling.slerp(np.zeros(3), a, [0, 1])
    np.testing.assert_allclose(z, [np.zeros(3), a])


def test_interpolate_steps_and_methods():
    a, b = np.ones(4), -np.arange(4.0)
    lin = sampling.interpolate(a, b, 5, "linear")
    assert lin.shape == (5, 4) and lin.dtype == np.float32
    np.testing.assert_allclose(lin[2], (a + b) / 2, rtol=1e-6)
    sph = sampling.interpolate(a, b, 5, "spherical")
    np.testing.assert_allclose(sph[[0, -1]], [a, b], atol=1e-6)
    with pytest.raises(ValueError):
        sampling.interpolate(a, b, 5, "cubic")


def test_prior_samples_seeded_and_scaled():
    z1 = sampling.sample_prior(20000, 3, prior_sigma2=4.0, seed=5)
    z2 = sampling.sample_prior(20000, 3, prior_sigma2=4.0, seed=5)
    np.testing.assert_array_equal(z1, z2)
    a = sampling.sample_prior(3, 2, seed=np.random.default_rng(9))
    np.testing.assert_array_equal(a, sampling.sample_prior(3, 2, seed=np.random.default_rng(9)))
    assert np.allclose(z1.std(0), 2.0, rtol=0.03) and np.allclose(z1.mean(0), 0.0, atol=0.05)


def test_aggregate_posterior_samples_match_mixture_moments():
    rng = np.random.default_rng(1)
    k, j, n = 6, 4, 200_000
    mu = rng.normal(0, 2, (k, j))
    logvar = rng.normal(-1, 0.5, (k, j))
    mean, cov = sampling.aggregate_moments(mu, logvar)
    # law of total covariance by hand: E[Var] + Var[E]
    np.testing.assert_allclose(cov, np.diag(np.exp(logvar).mean(0)) + np.cov(mu.T, bias=True), rtol=1e-12)
    z = sampling.sample_aggregate_posterior(mu, logvar, n, generator=3)
    assert z.shape == (n, j) and z.dtype == np.float32
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(z.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(z.T.astype(np.float64)), cov, atol=0.05 * np.abs(cov).max())
    np.testing.assert_array_equal(z, sampling.sample_aggregate_posterior(mu, logvar, n, generator=3))
    # tensors in, tensor out (the trainer's use), same stream for the same seed
    zt = sampling.sample_aggregate_posterior(torch.tensor(mu), torch.tensor(logvar), 5, torch.Generator().manual_seed(3))
    assert isinstance(zt, torch.Tensor) and zt.dtype == torch.float64
    np.testing.assert_allclose(zt.numpy(), sampling.sample_aggregate_posterior(mu, logvar, 5, 3), rtol=1e-6)


def test_density_integrates_to_one_and_matches_scipy_mixture():
    rng = np.random.default_rng(2)
    k, j = 5, 6
    mu = rng.normal(0, 1, (k, j))
    logvar = rng.normal(-1.5, 0.3, (k, j))
    dims = (4, 1)
    g = sampling.density_grid(mu, logvar, dims=dims, n=401, extent=8.0)
    cell = (g.x[1] - g.x[0]) * (g.y[1] - g.y[0])
    assert g.density.sum() * cell == pytest.approx(1.0, abs=1e-6)
    assert g.prior.sum() * cell == pytest.approx(1.0, abs=1e-6)
    xx, yy = np.meshgrid(g.x[::40], g.y[::40])
    pts = np.stack([xx, yy], -1)
    ref = np.mean(
        [multivariate_normal(mu[c, list(dims)], np.diag(np.exp(logvar[c, list(dims)]))).pdf(pts) for c in range(k)], 0
    )
    np.testing.assert_allclose(g.density[::40, ::40], ref, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(g.prior[::40, ::40], multivariate_normal(np.zeros(2), np.eye(2)).pdf(pts), rtol=1e-12)
