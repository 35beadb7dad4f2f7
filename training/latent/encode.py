"""Encoding and decoding with a trained VAE (thesis 4.3–4.5, 7.5; SPEC F18–F21, F23).

Everything returns arrays or dataclasses; the `ct-vae` commands and the GUI panels both
call these functions. Conventions: codes z are (N, J) float32; posteriors are diagonal
Gaussians q(z|x) = N(µ, diag σ²) stored as µ and log σ² (natural log); decoded images
are [0, 1] (windowed CT) with axes (y, x) in 2D or (z, y, x) in 3D; decoded RT is the
label map argmax_c softmax(rt_logits) (0 = complement, k = rois[k-1]) and optionally the
per-class probabilities. Models run in eval mode under torch.inference_mode, so the
encoder and decoder are deterministic (dropout off; `VAE.sample` returns µ).

A patient's posterior from 2D slices. The per-image posteriors are always kept. The
per-patient aggregate (`aggregate_patients`) is, by default, "mixture": the diagonal
Gaussian with the mean and per-dimension variance of the patient's own aggregate
posterior (1/n) Σ_s q(z|x_s) over its n slices (moment matching, law of total variance:
µ_P = mean_s µ_s, σ_P² = mean_s σ_s² + var_s µ_s). It is the best diagonal Gaussian fit
to the mixture (it minimises KL(mixture ‖ Gaussian)), it does not shrink with the number
of slices and it widens when the slices disagree. The alternatives: "product" (product of
Gaussian experts, precision-weighted, σ_P² = 1/Σ_s σ_s⁻², the posterior of one z if the
slices were independent views of it; it narrows as n grows, which inflates KL between
patients with many slices) and "middle" (the slice in the middle of the patient's stack,
the closest to the thesis' single-slice experiment, 7.5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from training.latent import sampling

AGGREGATES = ("mixture", "product", "middle")


# ----------------------------------------------------------------------------- encoding

@dataclass
class Encoded:
    """Per-image posteriors: row r is image `rows[r]` = (patient index, image index).

    mu, logvar: float32 (N, J). names: the workspace's patient pseudonyms (index by
    rows[:, 0]); splits likewise ("train"/"test").
    """

    mu: np.ndarray
    logvar: np.ndarray
    rows: np.ndarray  # int64 (N, 2)
    names: list[str]
    splits: list[str] = field(default_factory=list)

    @property
    def sigma(self) -> np.ndarray:
        return np.exp(0.5 * self.logvar)

    @property
    def labels(self) -> list[str]:
        """One label per row: "PSEUDONYM:image"."""
        return [f"{self.names[p]}:{i}" for p, i in self.rows]

    def select(self, mask) -> "Encoded":
        mask = np.asarray(mask)
        return Encoded(self.mu[mask], self.logvar[mask], self.rows[mask], self.names, self.splits)

    def image(self, patient: int, image: int) -> int:
        """Row number of (patient, image); KeyError when it was not encoded."""
        hit = np.flatnonzero((self.rows[:, 0] == patient) & (self.rows[:, 1] == image))
        if not len(hit):
            raise KeyError(f"image {image} of patient {self.names[patient]} was not encoded")
        return int(hit[0])


@dataclass
class PatientPosteriors:
    """One diagonal Gaussian per patient (see the module docstring for `method`)."""

    mu: np.ndarray  # float64 (P, J)
    logvar: np.ndarray  # float64 (P, J)
    names: list[str]
    patient_index: np.ndarray  # (P,) workspace patient index of each row
    n_images: np.ndarray  # (P,) slices that went into each row
    method: str

    @property
    def sigma(self) -> np.ndarray:
        return np.exp(0.5 * self.logvar)


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _memory_format(model) -> torch.memory_format:
    fmt = getattr(model, "_memory_format", lambda: None)()
    return fmt if fmt is not None else torch.contiguous_format


def check_model_fits(model, ws) -> None:
    """ValueError naming the workspace when `model` cannot encode its images (RT classes or
    image shape differ)."""
    if ws.preprocess.n_classes != model.cfg.n_classes:
        raise ValueError(
            f"{ws.path}: the workspace has {ws.preprocess.n_classes} RT classes, the model expects "
            f"{model.cfg.n_classes}")
    want = (model.cfg.input_size,) * model.cfg.spatial_dims
    if tuple(ws.image_shape) != want:
        raise ValueError(f"{ws.path}: images are {tuple(ws.image_shape)}, the model expects {want}")


def encode_arrays(model, images, labels=None, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """µ and log σ² (float32 (N, J)) of images (N, *spatial) in [0, 1] (+ labels (N, *spatial)).

    The model is put in eval mode; batches run under torch.inference_mode.
    """
    from training.vae.model import assemble_input

    model.eval()
    dev, fmt = _device_of(model), _memory_format(model)
    n_classes = model.cfg.n_classes
    images = np.asarray(images, dtype=np.float32)
    mus, lvs = [], []
    with torch.inference_mode():
        for b in range(0, len(images), batch_size):
            ct = torch.from_numpy(images[b : b + batch_size]).to(dev)
            lab = None if labels is None or not n_classes else torch.from_numpy(np.asarray(labels[b : b + batch_size])).to(dev)
            x = assemble_input(ct, lab, n_classes).contiguous(memory_format=fmt)
            mu, lv = model.encode(x)
            mus.append(mu.float().cpu().numpy())
            lvs.append(lv.float().cpu().numpy())
    if not mus:
        j = model.cfg.latent_dim
        return np.zeros((0, j), np.float32), np.zeros((0, j), np.float32)
    return np.concatenate(mus), np.concatenate(lvs)


def encode_workspace(
    model,
    workspace,
    split: str | None = None,
    rows=None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Encoded:
    """Encode images of an open `Workspace` (all, a split, or the given (patient, image) rows).

    progress(done, total) is called after each batch; cancel() → True stops early and
    returns what was encoded so far.
    """
    if rows is None:
        rows = workspace.index(split)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    if workspace.preprocess.n_classes != model.cfg.n_classes:
        raise ValueError(
            f"{workspace.path}: the workspace has {workspace.preprocess.n_classes} RT classes, "
            f"the model expects {model.cfg.n_classes}"
        )
    mus, lvs, done = [], [], 0
    for b in range(0, len(rows), batch_size):
        if cancel is not None and cancel():
            break
        r = rows[b : b + batch_size]
        mu, lv = encode_arrays(model, workspace.read_images(r), workspace.read_labels(r), batch_size)
        mus.append(mu)
        lvs.append(lv)
        done += len(r)
        if progress is not None:
            progress(done, len(rows))
    j = model.cfg.latent_dim
    mu = np.concatenate(mus) if mus else np.zeros((0, j), np.float32)
    lv = np.concatenate(lvs) if lvs else np.zeros((0, j), np.float32)
    return Encoded(
        mu=mu,
        logvar=lv,
        rows=rows[:done],
        names=[p.pseudonym for p in workspace.patients],
        splits=[p.split for p in workspace.patients],
    )


def aggregate_patients(encoded: Encoded, method: str = "mixture") -> PatientPosteriors:
    """One posterior per patient from its images' posteriors (module docstring).

    For 3D workspaces (one volume per patient) every method returns that volume's
    posterior.
    """
    if method not in AGGREGATES:
        raise ValueError(f"method must be one of {AGGREGATES}, got {method!r}")
    pats = np.unique(encoded.rows[:, 0])
    mu = encoded.mu.astype(np.float64)
    var = np.exp(encoded.logvar.astype(np.float64))
    out_mu, out_lv, counts = [], [], []
    for p in pats:
        sel = np.flatnonzero(encoded.rows[:, 0] == p)
        m, v = mu[sel], var[sel]
        if method == "mixture":
            pm = m.mean(0)
            pv = v.mean(0) + m.var(0)
        elif method == "product":
            prec = (1.0 / v).sum(0)
            pv = 1.0 / prec
            pm = pv * (m / v).sum(0)
        else:
            order = sel[np.argsort(encoded.rows[sel, 1], kind="stable")]
            mid = order[(len(order) - 1) // 2]
            pm, pv = mu[mid], var[mid]
        out_mu.append(pm)
        out_lv.append(np.log(pv))
        counts.append(len(sel))
    j = encoded.mu.shape[1] if encoded.mu.ndim == 2 else 0
    return PatientPosteriors(
        mu=np.array(out_mu).reshape(-1, j),
        logvar=np.array(out_lv).reshape(-1, j),
        names=[encoded.names[p] for p in pats],
        patient_index=pats.astype(np.int64),
        n_images=np.array(counts, dtype=np.int64),
        method=method,
    )


def load_encoded(path) -> tuple[Encoded, PatientPosteriors]:
    """Read back the NPZ written by `ct-vae encode` (no pickles: allow_pickle=False)."""
    with np.load(path, allow_pickle=False) as z:
        enc = Encoded(
            mu=z["mu"], logvar=z["logvar"], rows=z["rows"].astype(np.int64),
            names=[str(v) for v in z["names"]], splits=[str(v) for v in z["splits"]],
        )
        pp = PatientPosteriors(
            mu=z["patient_mu"], logvar=z["patient_logvar"], names=[str(v) for v in z["patient_names"]],
            patient_index=np.unique(enc.rows[:, 0]), n_images=z["patient_n_images"], method=str(z["aggregate"]),
        )
    return enc, pp


# ----------------------------------------------------------------------------- decoding

@dataclass
class DecodedArrays:
    """Decoded images: ct float32 (N, *spatial) in [0, 1]; labels uint8 (N, *spatial)
    (argmax class) and probs float32 (N, n_classes, *spatial), both None for CT only."""

    ct: np.ndarray
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None

    def reshape(self, *lead: int) -> "DecodedArrays":
        """Reshape the leading N into `lead` (e.g. (n, n) for a manifold grid)."""
        r = lambda a, k: None if a is None else a.reshape(*lead, *a.shape[k:])  # noqa: E731
        return DecodedArrays(r(self.ct, 1), r(self.labels, 1), r(self.probs, 1))


class LatentDecoder:
    """The decoder prepared for repeated interactive use (sliders, grids).

    Holds the model in eval mode in the given memory format (channels_last is what the
    benchmark found fastest for the 2D net on CPU; see benchmarks/README.md) and decodes
    under torch.inference_mode. `decode(z)` takes (N, J) or (J,) codes.
    The model is switched to eval mode and converted in place (memory format), so share it
    only with other latent tools (encode_arrays follows whatever format the model has).
    """

    def __init__(self, model, channels_last: bool = True, batch_size: int = 256, keep_probs: bool = False):
        from training.vae.model import channels_last_format

        self.model = model.eval()
        self.device = _device_of(model)
        if channels_last:
            self.model.to(memory_format=channels_last_format(model.cfg.spatial_dims))
        self.batch_size = batch_size
        self.keep_probs = keep_probs
        self.latent_dim = model.cfg.latent_dim

    def decode(self, z) -> DecodedArrays:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"codes must be (N, {self.latent_dim}), got {z.shape}")
        cts, labs, probs = [], [], []
        with torch.inference_mode():
            for b in range(0, len(z), self.batch_size):
                out = self.model.decode(torch.from_numpy(z[b : b + self.batch_size]).to(self.device))
                cts.append(out.ct[:, 0].float().cpu().numpy())
                if out.rt_logits is not None:
                    labs.append(out.rt_logits.argmax(1).to(torch.uint8).cpu().numpy())
                    if self.keep_probs:
                        probs.append(torch.softmax(out.rt_logits.float(), 1).cpu().numpy())
        return DecodedArrays(
            ct=np.concatenate(cts) if cts else np.zeros((0,), np.float32),
            labels=np.concatenate(labs) if labs else None,
            probs=np.concatenate(probs) if probs else None,
        )


def decode(model, z, batch_size: int = 256, keep_probs: bool = False, channels_last: bool = True) -> DecodedArrays:
    """Decode codes (N, J) in one go (see LatentDecoder)."""
    return LatentDecoder(model, channels_last=channels_last, batch_size=batch_size, keep_probs=keep_probs).decode(z)


# ----------------------------------------------------------------------------- manifold (F18)

@dataclass
class Manifold:
    """An n×n decoded grid over latent dims (dims[0] along columns, dims[1] along rows,
    top row = largest value; see sampling.grid_codes)."""

    codes: np.ndarray  # float32 (n, n, J)
    positions: np.ndarray  # (n,) σz Φ⁻¹((i + ½)/n), ascending
    dims: tuple[int, int]
    images: np.ndarray  # float32 (n, n, *spatial)
    labels: np.ndarray | None  # uint8 (n, n, *spatial)


def manifold(
    model, n: int = 15, dims: tuple[int, int] = (0, 1), base=None, prior_sigma2: float = 1.0, decoder: LatentDecoder | None = None
) -> Manifold:
    """Decode the manifold grid as one batch (thesis 4.4). base: the code the other
    dimensions are held at (e.g. a patient's µ); None = 0."""
    codes = sampling.grid_codes(n, dims, model.cfg.latent_dim, base=base, prior_sigma2=prior_sigma2)
    dec = decoder or LatentDecoder(model, batch_size=max(n * n, 1))
    out = dec.decode(codes.reshape(n * n, -1)).reshape(n, n)
    return Manifold(codes, sampling.grid_positions(n, prior_sigma2), tuple(dims), out.ct, out.labels)


# ----------------------------------------------------------------------------- interpolation (F19)

@dataclass
class Interpolation:
    codes: np.ndarray  # float32 (steps, J)
    t: np.ndarray  # (steps,) in [0, 1]
    method: str
    images: np.ndarray  # float32 (steps, *spatial)
    labels: np.ndarray | None


def interpolation(model, z0, z1, steps: int = 8, method: str = "linear", decoder: LatentDecoder | None = None) -> Interpolation:
    """Decode `steps` evenly spaced codes from z0 to z1 (linear or spherical) as one batch."""
    codes = sampling.interpolate(z0, z1, steps, method)
    out = (decoder or LatentDecoder(model)).decode(codes)
    return Interpolation(codes, np.linspace(0.0, 1.0, steps), method, out.ct, out.labels)


# ----------------------------------------------------------------------------- sampling (F20)

@dataclass
class Samples:
    codes: np.ndarray  # float32 (n, J)
    source: str  # "prior" or "aggregate"
    seed: int | None
    images: np.ndarray
    labels: np.ndarray | None


def generate(
    model,
    n: int,
    source: str = "prior",
    seed: int | None = 0,
    prior_sigma2: float = 1.0,
    posteriors: tuple[np.ndarray, np.ndarray] | None = None,
    decoder: LatentDecoder | None = None,
) -> Samples:
    """Draw n codes from the prior N(0, σz² I) or the aggregate posterior (posteriors =
    (µ, log σ²) of the encoded images) and decode them."""
    if source == "prior":
        codes = sampling.sample_prior(n, model.cfg.latent_dim, prior_sigma2, seed)
    elif source == "aggregate":
        if posteriors is None:
            raise ValueError("sampling the aggregate posterior needs the encoded (µ, log σ²)")
        codes = sampling.sample_aggregate_posterior(posteriors[0], posteriors[1], n, seed)
    else:
        raise ValueError(f"source must be 'prior' or 'aggregate', got {source!r}")
    out = (decoder or LatentDecoder(model)).decode(codes)
    return Samples(codes, source, seed, out.ct, out.labels)


# ----------------------------------------------------------------------------- timing helper

def time_calls(fn: Callable[[], object], repeats: int = 50, warmup: int = 5) -> np.ndarray:
    """Wall times in ms of `repeats` calls after `warmup` (benchmarks and the GUI's status)."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1000.0
    return out


def prior_sigma2_of(checkpoint) -> float:
    """σz² the model was trained with (TrainConfig.prior_sigma2), 1.0 when unknown."""
    try:
        return float(checkpoint.train_config.prior_sigma2)
    except AttributeError:
        return 1.0


__all__ = [
    "AGGREGATES",
    "Encoded",
    "PatientPosteriors",
    "encode_arrays",
    "encode_workspace",
    "aggregate_patients",
    "load_encoded",
    "DecodedArrays",
    "LatentDecoder",
    "decode",
    "Manifold",
    "manifold",
    "Interpolation",
    "interpolation",
    "Samples",
    "generate",
    "time_calls",
    "prior_sigma2_of",
]
