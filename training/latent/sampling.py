"""Latent-space arithmetic without a model (thesis 4.4, 4.5; SPEC F18–F21).

Conventions: codes z have shape (..., J); the prior is N(0, σz² I) with σz² =
`prior_sigma2` (TrainConfig.prior_sigma2, a variance); posteriors are diagonal Gaussians
given by µ and log σ² arrays of shape (K, J). The aggregate posterior is the uniform
mixture p̃(z) = (1/K) Σ_k N(µ_k, diag σ_k²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtri


# ---------------------------------------------------------------- manifold grid (F18)

def grid_positions(n: int, prior_sigma2: float = 1.0) -> np.ndarray:
    """The n positions z_i = σz · Φ⁻¹((i + ½)/n), i = 0..n−1, ascending (float64).

    An equidistant grid on (0, 1) with half-cell margins, mapped through the prior's
    inverse CDF, so every position is finite and each cell holds 1/n of the prior mass.
    """
    if n < 1:
        raise ValueError(f"grid size must be ≥ 1, got {n}")
    return math.sqrt(prior_sigma2) * ndtri((np.arange(n) + 0.5) / n)


def grid_codes(
    n: int,
    dims: tuple[int, int],
    latent_dim: int,
    base=None,
    prior_sigma2: float = 1.0,
) -> np.ndarray:
    """Codes (n, n, J) for the manifold grid, float32.

    codes[r, c] has z[dims[0]] = positions[c] (columns: left → right ascending) and
    z[dims[1]] = positions[n − 1 − r] (rows: top → bottom descending, like a plot's y
    axis). The other dimensions are held at `base` (a (J,) code, e.g. a patient's µ) or 0.
    """
    d0, d1 = (int(d) for d in dims)
    if not (0 <= d0 < latent_dim and 0 <= d1 < latent_dim) or d0 == d1:
        raise ValueError(f"dims must be two different indices in [0, {latent_dim}), got {dims}")
    pos = grid_positions(n, prior_sigma2)
    z = np.zeros((n, n, latent_dim), dtype=np.float64)
    if base is not None:
        base = np.asarray(base, dtype=np.float64).reshape(-1)
        if base.shape != (latent_dim,):
            raise ValueError(f"base code must have shape ({latent_dim},), got {base.shape}")
        z[:] = base
    z[:, :, d0] = pos[None, :]
    z[:, :, d1] = pos[::-1, None]
    return z.astype(np.float32)


# ---------------------------------------------------------------- interpolation (F19)

def lerp(z0, z1, t) -> np.ndarray:
    """(1 − t) z0 + t z1 for every t: returns (len(t), J)."""
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    t = np.atleast_1d(np.asarray(t, np.float64))[:, None]
    return (1.0 - t) * z0 + t * z1


def slerp(z0, z1, t, eps: float = 1e-7) -> np.ndarray:
    """Spherical interpolation (Shoemake): returns (len(t), J).

    z(t) = sin((1−t)Ω)/sin Ω · z0 + sin(tΩ)/sin Ω · z1 with Ω the angle between z0 and z1;
    the endpoints are exact, and for equal-norm endpoints the norm stays constant.
    Parallel endpoints (Ω ≈ 0) fall back to lerp (the arc is a line). Antiparallel
    endpoints (Ω ≈ π: any great half-circle is a shortest arc) turn through a fixed
    perpendicular direction, with the norm interpolated linearly. A zero endpoint has no
    direction, so lerp is used.
    """
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    t = np.atleast_1d(np.asarray(t, np.float64))[:, None]
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 < eps or n1 < eps:
        return lerp(z0, z1, t[:, 0])
    u0, u1 = z0 / n0, z1 / n1
    cos = float(np.clip(u0 @ u1, -1.0, 1.0))
    omega = math.acos(cos)
    s = math.sin(omega)
    if s < 1e-6:
        if cos > 0:
            return lerp(z0, z1, t[:, 0])
        perp = _perpendicular(u0)
        r = (1.0 - t) * n0 + t * n1
        return r * (np.cos(math.pi * t) * u0 + np.sin(math.pi * t) * perp)
    return (np.sin((1.0 - t) * omega) / s) * z0 + (np.sin(t * omega) / s) * z1


def _perpendicular(u: np.ndarray) -> np.ndarray:
    """A unit vector ⟂ u: Gram–Schmidt on the basis vector least aligned with u."""
    e = np.zeros_like(u)
    e[int(np.argmin(np.abs(u)))] = 1.0
    p = e - (e @ u) * u
    return p / np.linalg.norm(p)


def interpolate(z0, z1, steps: int, method: str = "linear") -> np.ndarray:
    """`steps` evenly spaced codes from z0 to z1 inclusive, (steps, J) float32."""
    if steps < 2:
        raise ValueError("interpolation needs at least 2 steps")
    t = np.linspace(0.0, 1.0, steps)
    if method in ("linear", "lerp"):
        z = lerp(z0, z1, t)
    elif method in ("spherical", "slerp"):
        z = slerp(z0, z1, t)
    else:
        raise ValueError(f"method must be 'linear' or 'spherical', got {method!r}")
    return z.astype(np.float32)


# ---------------------------------------------------------------- sampling (F20)

def _generator(seed_or_gen, device="cpu") -> torch.Generator:
    """torch.Generator from a torch.Generator (used as is), an int seed, a numpy Generator
    (one 63-bit seed drawn from it) or None (fresh entropy)."""
    if isinstance(seed_or_gen, torch.Generator):
        return seed_or_gen
    if isinstance(seed_or_gen, np.random.Generator):
        seed_or_gen = int(seed_or_gen.integers(0, 2**63 - 1))
    g = torch.Generator(device=device)
    if seed_or_gen is None:
        g.seed()
    else:
        g.manual_seed(int(seed_or_gen))
    return g


def sample_prior(n: int, latent_dim: int, prior_sigma2: float = 1.0, seed=None) -> np.ndarray:
    """n draws from N(0, σz² I), float32 (n, J); `seed`: int, torch.Generator, numpy Generator or None."""
    g = _generator(seed)
    return (math.sqrt(prior_sigma2) * torch.randn(n, latent_dim, generator=g, dtype=torch.float64)).float().numpy()


def sample_aggregate_posterior(mu, logvar, n: int, generator=None):
    """n exact draws from p̃(z) = (1/K) Σ_k N(µ_k, diag σ_k²) (thesis Algorithm 2).

    A component k is picked uniformly for each draw, then z = µ_k + σ_k ⊙ ε, ε ~ N(0, I).
    The draw itself is the trainer's `training.vae.trainer.sample_aggregate_posterior` (one
    implementation for augmentation and analysis); this wrapper adds array and seed input.
    mu, logvar: (K, J) torch tensors (result: a tensor on their device, their dtype) or
    array-likes (result: float32 numpy). generator: torch.Generator, int seed, numpy
    Generator or None.
    """
    from training.vae.trainer import sample_aggregate_posterior as draw

    as_numpy = not isinstance(mu, torch.Tensor)
    mu_t = torch.as_tensor(np.asarray(mu, dtype=np.float64)) if as_numpy else mu
    lv_t = torch.as_tensor(np.asarray(logvar, dtype=np.float64)) if as_numpy else logvar
    gen = _generator(generator, device=mu_t.device)
    with torch.no_grad():
        z = draw(mu_t, lv_t, n, gen)
    return z.float().cpu().numpy() if as_numpy else z


def aggregate_moments(mu, logvar) -> tuple[np.ndarray, np.ndarray]:
    """Mean (J,) and covariance (J, J) of the uniform mixture (law of total covariance).

    E[z] = mean_k µ_k; Cov[z] = mean_k diag σ_k² + Cov_k(µ_k) (population covariance).
    """
    mu = np.asarray(mu, np.float64)
    var = np.exp(np.asarray(logvar, np.float64))
    m = mu.mean(0)
    c = mu - m
    return m, np.diag(var.mean(0)) + c.T @ c / len(mu)


# ---------------------------------------------------------------- density (F21)

@dataclass
class DensityGrid:
    """p̃ and the prior on a grid over two latent dimensions (their 2D marginals).

    density[r, c] and prior[r, c] are at (z[dims[0]], z[dims[1]]) = (x[c], y[r]); y and
    x ascend, so row 0 is the lowest y (flip for image display with y upward). Units:
    probability per unit area of latent space.
    """

    x: np.ndarray  # (nx,)
    y: np.ndarray  # (ny,)
    density: np.ndarray  # (ny, nx) aggregate posterior marginal
    prior: np.ndarray  # (ny, nx) N(0, σz² I) marginal
    dims: tuple[int, int]


def _normal_pdf(x: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(K, n) densities of N(mu_k, var_k) at x (n,)."""
    d = x[None, :] - mu[:, None]
    return np.exp(-0.5 * d * d / var[:, None]) / np.sqrt(2.0 * np.pi * var[:, None])


def aggregate_density(mu, logvar, dims: tuple[int, int], x, y) -> np.ndarray:
    """Marginal of p̃ over dims at the grid (y[r], x[c]): (ny, nx) float64.

    Each component is diagonal, so its 2D marginal factorises and the mixture is one
    matrix product: p̃(x, y) = (1/K) Σ_k N(y; µ_k1, σ_k1²) N(x; µ_k0, σ_k0²).
    """
    mu = np.asarray(mu, np.float64)
    var = np.exp(np.asarray(logvar, np.float64))
    d0, d1 = dims
    a = _normal_pdf(np.asarray(x, np.float64), mu[:, d0], var[:, d0])  # (K, nx)
    b = _normal_pdf(np.asarray(y, np.float64), mu[:, d1], var[:, d1])  # (K, ny)
    return b.T @ a / len(mu)


def prior_density(x, y, prior_sigma2: float = 1.0) -> np.ndarray:
    """N(0, σz² I) marginal over two dimensions at (y[r], x[c]): (ny, nx)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    px = np.exp(-0.5 * x * x / prior_sigma2) / math.sqrt(2 * math.pi * prior_sigma2)
    py = np.exp(-0.5 * y * y / prior_sigma2) / math.sqrt(2 * math.pi * prior_sigma2)
    return py[:, None] * px[None, :]


def density_grid(
    mu, logvar, dims: tuple[int, int] = (0, 1), n: int = 101, extent: float | None = None, prior_sigma2: float = 1.0
) -> DensityGrid:
    """p̃ and the prior on an n×n grid over [−extent, extent]² (default 4 σz)."""
    if extent is None:
        extent = 4.0 * math.sqrt(prior_sigma2)
    x = np.linspace(-extent, extent, n)
    y = x.copy()
    return DensityGrid(
        x=x, y=y, density=aggregate_density(mu, logvar, dims, x, y), prior=prior_density(x, y, prior_sigma2), dims=tuple(dims)
    )
