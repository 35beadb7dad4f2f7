"""The VAE loss (thesis 4.2.3, 6.1.1; SPEC F12): the negative ELBO plus RT cross-entropy.

Per image k, with U Monte-Carlo codes z(k,u) ~ q(z|x_k):

    recon_k = (1/U) Σ_u −log N(x_k | x̂(z(k,u)), σ² I)   [constant term omitted, see below]
    kl_k    = KL( q(z|x_k) ‖ p(z) ),  q = N(µ_k, diag σ_k²),  p = N(0, σz² I)
    ce_k    = ce_weight · (1/U) Σ_u Σ_pixels −w_{y} log softmax(rt_logits)_{y}
    total_k = recon_k + kl_k + ce_k

Reduction: every term is summed over pixels (and latent dimensions) of one image and then
averaged over the batch, so a reported loss is "per image" whatever the batch size; the
KL direction is q(z|x) ‖ prior.

The Gaussian term omits the constant (N/2)·log(2πσ²) (N = pixels of the CT channel), as
the thesis does (4.2.3: "∝ −1/(2σ²) ‖x − x̂‖²"): it has no gradient, and leaving it out
keeps the loss positive and comparable with the thesis' figures. ``gaussian_nll(...,
include_constant=True)`` gives the exact −log N when a true likelihood bound is wanted.

``ce`` in :class:`LossTerms` is the term as added to ``total`` (already multiplied by
``ce_weight``), so total = recon + kl + ce exactly; it is 0 for a CT-only model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.vae.model import VAEOutput

__all__ = [
    "LossTerms",
    "vae_loss",
    "loss_per_image",
    "loss_sums",
    "gaussian_nll",
    "kl_divergence",
    "kl_per_dim",
    "cross_entropy",
    "inverse_frequency_weights",
    "class_counts",
]


class LossTerms(NamedTuple):
    """Loss terms; 0-d tensors (batch means) from :func:`vae_loss`, (B,) tensors from
    :func:`loss_per_image`. total = recon + kl + ce."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def gaussian_nll(
    x: torch.Tensor, x_hat: torch.Tensor, sigma2: float, include_constant: bool = False
) -> torch.Tensor:
    """−log N(x | x̂, σ² I) per image, summed over all non-batch axes → (B,).

    Without the constant: ‖x − x̂‖² / (2σ²); with it, + (N/2)·log(2πσ²).
    """
    sq = (x - x_hat).pow(2).flatten(1).sum(1)
    nll = sq / (2.0 * sigma2)
    if include_constant:
        n = x[0].numel()
        nll = nll + 0.5 * n * math.log(2.0 * math.pi * sigma2)
    return nll


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor, prior_sigma2: float = 1.0) -> torch.Tensor:
    """KL( N(µ_j, σ_j²) ‖ N(0, σz²) ) for every latent dimension → same shape as µ (B, J).

    = ½ [ (σ_j² + µ_j²)/σz² − 1 − log σ_j² + log σz² ]  (nats; log σ² given as ``logvar``).
    """
    return 0.5 * (
        (logvar.exp() + mu.pow(2)) / prior_sigma2 - 1.0 - logvar + math.log(prior_sigma2)
    )


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, prior_sigma2: float = 1.0) -> torch.Tensor:
    """KL( q(z|x) ‖ N(0, σz² I) ) per image (summed over J) → (B,)."""
    return kl_per_dim(mu, logvar, prior_sigma2).sum(1)


def cross_entropy(
    rt_logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_pixels −w_y log softmax(logits)_y per image → (N,).

    rt_logits (N, C, *spatial); labels (N, *spatial) class indices (0 = complement). With
    weights the sum is weighted but not renormalised (unlike PyTorch's weighted mean).
    """
    w = None if class_weights is None else class_weights.to(rt_logits.device, rt_logits.dtype)
    per_pixel = F.cross_entropy(rt_logits, labels.long(), weight=w, reduction="none")
    return per_pixel.flatten(1).sum(1)


def inverse_frequency_weights(label_counts) -> torch.Tensor:
    """Class weights ∝ 1 / count, scaled so they average 1 over the classes present.

    label_counts: pixel count per class (length C, class 0 = complement). A class with
    count 0 never occurs as a target, so its weight (set to 0) has no effect.
    Example: counts (900, 90, 10) → 1/count ∝ (1, 10, 90) → weights (3/101)·(1, 10, 90).
    """
    counts = torch.as_tensor(label_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or (counts < 0).any():
        raise ValueError(f"label_counts must be non-negative and non-empty, got {label_counts!r}")
    present = counts > 0
    if not present.any():
        raise ValueError("label_counts are all zero: no labelled pixel to weight")
    inv = torch.zeros_like(counts)
    inv[present] = 1.0 / counts[present]
    weights = inv * present.sum() / inv.sum()
    return weights.to(torch.float32)


def class_counts(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Pixel count per class of a label map (any shape) → int64 (n_classes,)."""
    return torch.bincount(labels.reshape(-1).long(), minlength=n_classes)[:n_classes]


def _per_sample_mean(t: torch.Tensor, u: int) -> torch.Tensor:
    """(U·B,) sample-major → (B,) mean over the U draws."""
    return t.view(u, -1).mean(0)


def loss_per_image(
    out: VAEOutput,
    x_ct: torch.Tensor,
    labels: torch.Tensor | None,
    train_cfg: TrainConfig,
    class_weights: torch.Tensor | None = None,
) -> LossTerms:
    """The loss terms of every image → LossTerms of (B,) tensors.

    x_ct: (B, 1, *spatial) CT target in [0, 1] (a (B, *spatial) tensor is accepted);
    labels: (B, *spatial) class indices or None for CT-only; ``out`` may hold U > 1 draws
    per image (sample-major, see :class:`~training.vae.model.VAEOutput`).
    """
    u = out.mc_samples
    if x_ct.dim() == out.ct.dim() - 1:
        x_ct = x_ct.unsqueeze(1)
    # sums over ~10⁴–10⁶ pixels lose too much in half precision (autocast), so ≥ float32
    dtype = torch.promote_types(out.ct.dtype, torch.float32)
    target = x_ct.to(dtype)
    if u > 1:
        target = target.repeat(u, *([1] * (target.dim() - 1)))
    recon = _per_sample_mean(gaussian_nll(target, out.ct.to(dtype), train_cfg.recon_sigma2), u)
    kl = kl_divergence(out.mu.to(dtype), out.logvar.to(dtype), train_cfg.prior_sigma2)
    if out.rt_logits is not None:
        if labels is None:
            raise ValueError("the model predicts RT classes; labels are required for the loss")
        lab = labels.repeat(u, *([1] * (labels.dim() - 1))) if u > 1 else labels
        ce = train_cfg.ce_weight * _per_sample_mean(
            cross_entropy(out.rt_logits.to(dtype), lab, class_weights), u
        )
    else:
        ce = torch.zeros_like(kl)
    return LossTerms(recon + kl + ce, recon, kl, ce)


def vae_loss(
    out: VAEOutput,
    x_ct: torch.Tensor,
    labels: torch.Tensor | None,
    train_cfg: TrainConfig,
    class_weights: torch.Tensor | None = None,
) -> LossTerms:
    """Batch-mean loss terms (0-d tensors; ``total`` is what to backpropagate)."""
    t = loss_per_image(out, x_ct, labels, train_cfg, class_weights)
    return LossTerms(*(v.mean() for v in t))


def loss_sums(
    out: VAEOutput,
    x_ct: torch.Tensor,
    labels: torch.Tensor | None,
    train_cfg: TrainConfig,
    class_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Summed terms for exact means across batches and processes.

    Returns {"total", "recon", "kl", "ce", "count"}: detached float64 0-d tensors on the
    output's device; "count" is the number of images. Stack them, all-reduce with SUM,
    and divide each term by count to get the per-image mean over the whole test set.
    """
    t = loss_per_image(out, x_ct, labels, train_cfg, class_weights)
    sums = {k: v.detach().double().sum() for k, v in t._asdict().items()}
    sums["count"] = torch.tensor(float(out.mu.shape[0]), dtype=torch.float64, device=out.mu.device)
    return sums
