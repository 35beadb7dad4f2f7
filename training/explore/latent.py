"""What the explorer's latent panels need beyond training/latent/encode.py (SPEC F18–F21).

Headless (no Qt): the panels in explorer/panels/{manifold,interpolation,samples,density}.py
call these functions and display the results; scripts can call them too.

- `load_latent_model(path)`: model + decoder + the settings a view needs, cached per
  checkpoint file (path, size, mtime), thread-safe, so four panels share one model.
- `encode_patients(lm, workspace)`: per-image posteriors and per-patient aggregates
  (training.latent.encode), cached per (checkpoint, workspace file) version.
- `nearest_to_code(z, mu, logvar)`: patients ranked by −log q_i(z) (module text below).
- `sigma_ellipse`, `tile_side`, `code_at`, `display_slice`, `display_rgb`: geometry and
  display helpers.

Conventions as in training/latent/encode.py: codes (N, J) float32, posteriors diagonal
Gaussians N(µ, diag σ²) given by µ and log σ² (natural log); images [0, 1] windowed CT,
(y, x) rows anterior → posterior, columns patient right → left; 3-D images (z, y, x).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from training.latent import encode as latent
from training.latent import sampling


def _file_key(path) -> tuple[str, int, int]:
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


@dataclass
class LatentModel:
    """A checkpoint ready for the latent views.

    prior_sigma2: σz² of the prior N(0, σz² I) it was trained with (a variance).
    hu_window: (hu_min, hu_max) of its preprocessing (None if the checkpoint has none).
    roi_names: RT classes 1..n (class 0 = complement); () for a CT-only model.
    """

    model: object
    checkpoint: object
    decoder: latent.LatentDecoder
    prior_sigma2: float
    latent_dim: int
    n_classes: int
    spatial_dims: int
    roi_names: tuple[str, ...]
    hu_window: tuple[float, float] | None
    key: tuple

    @property
    def epoch(self) -> int:
        return int(getattr(self.checkpoint, "epoch", 0))

    def dim_names(self) -> list[str]:
        return [f"z{j}" for j in range(self.latent_dim)]


_lock = threading.RLock()
_models: dict[tuple, LatentModel] = {}
_encodings: dict[tuple, "WorkspaceLatents"] = {}
_CACHE_MODELS = 2
_CACHE_ENCODINGS = 4


def two_dims(latent_dim: int, dims: tuple[int, int], what: str) -> tuple[int, int]:
    """The two latent dimensions a 2-D view shows: `dims`, or (0, 1) when out of range;
    ValueError naming `what` for a model with J < 2 or two equal dimensions."""
    if latent_dim < 2:
        raise ValueError(f"{what} needs a model with at least 2 latent dimensions")
    d0, d1 = dims
    if not (0 <= d0 < latent_dim and 0 <= d1 < latent_dim):
        d0, d1 = 0, 1
    if d0 == d1:
        raise ValueError(f"choose two different latent dimensions (both are z{d0})")
    return d0, d1


def load_latent_model(path, device: str = "cpu") -> LatentModel:
    """The checkpoint at `path` as a LatentModel, cached while the file is unchanged."""
    from training.vae.checkpoint import load_model

    key = (*_file_key(path), str(device))
    with _lock:
        hit = _models.get(key)
        if hit is not None:
            return hit
    model, ckpt = load_model(path, device=device)
    cfg = model.cfg
    pre = getattr(ckpt, "preprocess_config", None)
    rois = tuple(getattr(ckpt, "roi_names", ()) or (tuple(pre.rois) if pre is not None else ()))
    lm = LatentModel(
        model=model, checkpoint=ckpt, decoder=latent.LatentDecoder(model),
        prior_sigma2=latent.prior_sigma2_of(ckpt), latent_dim=int(cfg.latent_dim),
        n_classes=int(cfg.n_classes), spatial_dims=int(cfg.spatial_dims), roi_names=rois,
        hu_window=(float(pre.hu_min), float(pre.hu_max)) if pre is not None else None, key=key)
    with _lock:
        _models[key] = lm
        while len(_models) > _CACHE_MODELS:
            _models.pop(next(iter(_models)))
    return lm


@dataclass
class WorkspaceLatents:
    """The encoded workspace: per-image posteriors and one aggregate posterior per patient."""

    encoded: latent.Encoded
    patients: latent.PatientPosteriors
    workspace: Path

    @property
    def names(self) -> list[str]:
        return list(self.patients.names)

    def patient_mu(self, name: str) -> np.ndarray:
        """µ (J,) float32 of the patient's aggregate posterior; KeyError if not encoded."""
        if name not in self.patients.names:
            raise KeyError(f"patient {name!r} was not encoded")
        return self.patients.mu[self.patients.names.index(name)].astype(np.float32)


def encode_patients(lm: LatentModel, workspace, aggregate: str = "mixture", batch_size: int = 64,
                    cancel: Callable[[], bool] | None = None) -> WorkspaceLatents:
    """Encode every image of the workspace file and aggregate per patient (cached).

    The cache key is the checkpoint's and the workspace file's (path, size, mtime), so a
    new checkpoint or a changed workspace encodes again. A cancelled encoding is not
    cached.
    """
    from training.store.workspace import Workspace

    key = (lm.key, _file_key(workspace), aggregate)
    with _lock:
        hit = _encodings.get(key)
        if hit is not None:
            return hit
    with Workspace.open(workspace) as ws:
        enc = latent.encode_workspace(lm.model, ws, batch_size=batch_size, cancel=cancel)
        complete = len(enc.rows) == len(ws.index(None))
    if not len(enc.mu):
        raise ValueError(f"{workspace}: no images to encode")
    out = WorkspaceLatents(enc, latent.aggregate_patients(enc, aggregate), Path(workspace))
    if complete:
        with _lock:
            _encodings[key] = out
            while len(_encodings) > _CACHE_ENCODINGS:
                _encodings.pop(next(iter(_encodings)))
    return out


def clear_caches() -> None:
    with _lock:
        _models.clear()
        _encodings.clear()


# ----------------------------------------------------------------------------- geometry

def nearest_to_code(z, mu, logvar, k: int = 5) -> list[tuple[int, float]]:
    """The k posteriors q_i = N(µ_i, diag σ_i²) under which the code z is most probable.

    Ranked by the negative log density −log q_i(z) in nats (ascending), over all J
    dimensions. This is the ranking of KL(N(z, ε² I) ‖ q_i) as ε → 0 (the KL of a point
    mass at z from q_i, up to the same constant for every i), so a manifold cell, which
    is a point in latent space, is compared with patients the way patients are compared
    with each other (training/latent/similarity.py), in the same direction.
    Returns [(i, −log q_i(z)), …].
    """
    z = np.asarray(z, np.float64).reshape(-1)
    mu = np.asarray(mu, np.float64)
    lv = np.asarray(logvar, np.float64)
    nll = 0.5 * (((z[None] - mu) ** 2) * np.exp(-lv) + lv + math.log(2 * math.pi)).sum(1)
    order = np.argsort(nll, kind="stable")[: max(0, min(k, len(nll)))]
    return [(int(i), float(nll[i])) for i in order]


def sigma_ellipse(mu2, sigma2, n_points: int = 49, scale: float = 1.0) -> np.ndarray:
    """The kσ ellipse of a diagonal Gaussian's 2-D marginal: (n_points, 2) closed polyline.

    mu2, sigma2: (µ_a, µ_b) and (σ_a, σ_b) (standard deviations) of the two shown dims;
    the marginal of a diagonal Gaussian is axis-aligned, so x = µ_a + kσ_a cos t,
    y = µ_b + kσ_b sin t.
    """
    t = np.linspace(0.0, 2 * math.pi, n_points)
    return np.stack([mu2[0] + scale * sigma2[0] * np.cos(t), mu2[1] + scale * sigma2[1] * np.sin(t)], 1)


def tile_side(positions) -> float:
    """Side (in z units) of the manifold's square tiles: the smallest gap between grid
    positions, so tiles placed at their z centres never overlap (they touch at the
    centre of the prior and spread out in its tails)."""
    p = np.sort(np.asarray(positions, np.float64))
    if len(p) < 2:
        return 1.0
    return float(np.min(np.diff(p)))


def quantile_coord(z, n: int, prior_sigma2: float = 1.0) -> np.ndarray:
    """u = n·Φ(z/σz): the manifold grid's "tiled" coordinate, in which grid position i
    (sampling.grid_positions) sits at u = i + ½ and every tile is 1 wide. Monotone, so
    points and curves in z map to the same places relative to the tiles."""
    from scipy.special import ndtr

    return n * ndtr(np.asarray(z, np.float64) / math.sqrt(prior_sigma2))


def quantile_to_z(u, n: int, prior_sigma2: float = 1.0) -> np.ndarray:
    """The inverse of quantile_coord: z = σz·Φ⁻¹(u/n) (±inf outside 0 < u < n)."""
    from scipy.special import ndtri

    return math.sqrt(prior_sigma2) * ndtri(np.asarray(u, np.float64) / n)


def code_at(z0, z1, t: float, method: str = "linear") -> np.ndarray:
    """One code (J,) float32 at t ∈ [0, 1] between z0 and z1 (linear or spherical)."""
    t = float(np.clip(t, 0.0, 1.0))
    f = sampling.lerp if method in ("linear", "lerp") else sampling.slerp
    if method not in ("linear", "lerp", "spherical", "slerp"):
        raise ValueError(f"method must be 'linear' or 'spherical', got {method!r}")
    return f(z0, z1, [t])[0].astype(np.float32)


def display_slice(a: np.ndarray | None, spatial_dims: int) -> np.ndarray | None:
    """The 2-D (y, x) image to show: the array itself (2-D models) or its middle z slice."""
    if a is None:
        return None
    a = np.asarray(a)
    if spatial_dims == 3 and a.ndim >= 3:
        return a[..., a.shape[-3] // 2, :, :]
    return a


def grey_uint8(ct) -> np.ndarray:
    """[0, 1] → uint8 grey, round(255·clip(ct)) in float32 (training.images.to_uint8 in
    float64 may differ by one level at exact half steps; this is for display only)."""
    a = np.clip(np.asarray(ct, np.float32), 0.0, 1.0) * np.float32(255.0)
    np.rint(a, out=a)
    return a.astype(np.uint8)


def display_rgb(ct, labels=None, n_classes: int = 0, alpha: float = 0.4) -> np.ndarray:
    """Grey CT (…, H, W) in [0, 1] with RT labels as a coloured overlay: uint8 (…, H, W, 3).

    training.images.overlay_labels' blend (each class k ≥ 1 as (1 − α)·grey + α·colour[k],
    roi_colour_table colours, class 0 not drawn) for a whole batch at once: every
    (class, grey) pair is blended once into a table and each pixel is one lookup (a
    15×15×128² manifold in tens of ms). Grey levels as grey_uint8.
    """
    from training.images import roi_colour_table

    grey = grey_uint8(ct)
    if labels is None:
        return np.repeat(grey[..., None], 3, axis=-1)
    lab = np.asarray(labels)
    if lab.shape != grey.shape:
        raise ValueError(f"labels {lab.shape} and CT {grey.shape} differ in shape")
    n = max(n_classes + 1, int(lab.max()) + 1 if lab.size else 1, 2)
    colours = roi_colour_table(n).astype(np.float64)
    g = np.arange(256, dtype=np.float64)[None, :, None]
    lut = np.zeros((n, 256, 4), np.uint8)  # RGBA rows so a pixel is one 32-bit lookup
    lut[..., :3] = np.round((1.0 - alpha) * g + alpha * colours[:, None, :])
    lut[0, :, :3] = np.arange(256, dtype=np.uint8)[:, None]
    idx = lab.astype(np.uint16)  # class·256 + grey, uint16 keeps the index arithmetic cheap
    idx <<= 8
    idx |= grey
    out = lut.reshape(-1).view(np.uint32)[idx]
    return out.view(np.uint8).reshape(*grey.shape, 4)[..., :3]  # a view: RGB of the RGBA rows


def roi_legend(lm: LatentModel) -> list[tuple[str, tuple[int, int, int]]]:
    """(ROI name, RGB colour) of each RT class as display_rgb draws it."""
    from training.images import roi_colour_table

    colours = roi_colour_table(max(lm.n_classes + 1, 2))
    return [(name, tuple(int(c) for c in colours[k])) for k, name in enumerate(lm.roi_names, start=1)
            if k < len(colours)]


def export_spacing(workspace) -> tuple[float, float, float]:
    """(dz, dy, dx) mm of the workspace's preprocessed images (median over patients),
    for DICOM exports of generated images; (1, 1, 1) when the file cannot be read."""
    from training.latent.export import workspace_spacing
    from training.store.workspace import Workspace

    try:
        with Workspace.open(workspace) as ws:
            return workspace_spacing(ws)
    except (OSError, ValueError, KeyError, TypeError):
        return (1.0, 1.0, 1.0)


def workspace_preprocess(lm: LatentModel, workspace=None):
    """The PreprocessConfig behind generated images: the workspace's, else the checkpoint's."""
    if workspace is not None and os.path.exists(workspace):
        from training.store.workspace import Workspace

        try:
            with Workspace.open(workspace) as ws:
                return ws.preprocess
        except Exception:  # unreadable workspace: fall back to the checkpoint's settings
            pass
    pre = getattr(lm.checkpoint, "preprocess_config", None)
    if pre is None:
        from training.config import PreprocessConfig

        pre = PreprocessConfig()
    return pre


__all__ = [
    "LatentModel", "WorkspaceLatents", "clear_caches", "code_at", "display_rgb", "display_slice", "grey_uint8",
    "encode_patients", "export_spacing", "load_latent_model", "nearest_to_code", "roi_legend",
    "quantile_coord", "quantile_to_z", "sigma_ellipse", "tile_side", "workspace_preprocess",
]
