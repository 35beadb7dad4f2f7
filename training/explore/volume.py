"""Stacks of slices for the explorer's Volume tab and for scripts (SPEC F22).

A `SliceStack` is what the Volume tab shows on one side: images (n, H, W) in [0, 1]
(the workspace's HU window) with axes (slice, y, x); slices ascend in z (inferior →
superior), rows run anterior → posterior and columns patient right → left (the ingest's
DICOM axial orientation), so displayed as stored the anterior is at the top and the
patient's left on the image's right. Labels are uint8 (0 = complement, k = rois[k-1]).

For a 3D workspace (preprocess mode "3d") a patient is one volume (D, H, W): its depth
slices are the stack, and the model encodes and decodes the whole volume. For a 2D
workspace a patient is its stack of preprocessed slices, each encoded and decoded on its
own (per-slice reconstructions); the stack is then not a volume the model knows as one.

HU: the window is undone for display, HU = hu_min + x·(hu_max − hu_min) (values the
decoder puts at 0 or 1 become the window limits: HU outside the window is lost).
Window/level follows the radiology convention: level L (centre) and width W in HU show
[L − W/2, L + W/2] from black to white.

Every function runs the model in eval mode under torch.inference_mode (deterministic:
codes are the posterior means µ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from training.latent import encode as latent
from training.latent import sampling
from training.latent.export import window_to_hu

SOURCES = ("reconstruction", "generated", "interpolated")


@dataclass
class SliceStack:
    """One stack of slices (see the module docstring for axes and units).

    images: float32 (n, H, W) in [0, 1]; labels: uint8 (n, H, W) or None (CT only);
    hu_window: (hu_min, hu_max) of the workspace; title: what the stack is;
    z_mm: each slice's z in mm (patient coordinates along the slice normal) where known.
    """

    images: np.ndarray
    labels: np.ndarray | None
    hu_window: tuple[float, float]
    title: str
    roi_names: tuple[str, ...] = ()
    z_mm: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_slices(self) -> int:
        return int(self.images.shape[0])

    def hu(self) -> np.ndarray:
        """float32 (n, H, W) in HU (window undone)."""
        return window_to_hu(self.images, *self.hu_window)


@dataclass
class VolumePair:
    """The two sides of the Volume tab: `left` (a patient's input) and `right` (its
    reconstruction, a generated or an interpolated stack), same slice count and shape.

    mode: "3d" (one volume per patient) or "2d" (per-slice reconstructions of a slice
    stack); note: a sentence for the user about what the right side is.
    """

    left: SliceStack
    right: SliceStack
    mode: str
    source: str
    note: str = ""
    codes: np.ndarray | None = field(default=None, repr=False)  # (n_codes, J) decoded


def window_level_range(level: float, width: float) -> tuple[float, float]:
    """Display range [L − W/2, L + W/2] in HU for level L and width W > 0 (HU)."""
    if not width > 0:
        raise ValueError(f"window width must be > 0 HU, got {width}")
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0


def level_width_of(hu_min: float, hu_max: float) -> tuple[float, float]:
    """(level, width) in HU of a window [hu_min, hu_max]."""
    return (float(hu_min) + float(hu_max)) / 2.0, float(hu_max) - float(hu_min)


def _stack(arr: np.ndarray | None, mode: str) -> np.ndarray | None:
    """(n, H, W) from a patient's (n, H, W) slices (2D) or its (1, D, H, W) volume (3D)."""
    if arr is None:
        return None
    arr = np.asarray(arr)
    return arr[0] if mode == "3d" else arr


_check = latent.check_model_fits


def _decoded_stack(dec: latent.DecodedArrays, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    ct = dec.ct[0] if mode == "3d" else dec.ct
    lab = None if dec.labels is None else (dec.labels[0] if mode == "3d" else dec.labels)
    return np.asarray(ct, np.float32), lab


def _patient_rows(ws, index: int) -> np.ndarray:
    n = ws.patients[index].n_images
    if n == 0:
        raise ValueError(f"{ws.patients[index].pseudonym} has no images for the current preprocessing")
    return np.stack([np.full(n, index), np.arange(n)], axis=1).astype(np.int64)


def patient_stack(ws, index: int) -> SliceStack:
    """A patient's preprocessed input as a stack (3D: its volume's depth slices)."""
    mode = ws.preprocess.mode
    images, labels = ws.read_patient(index)
    images = _stack(images, mode).astype(np.float32)
    return SliceStack(images, _stack(labels, mode),
                      (ws.preprocess.hu_min, ws.preprocess.hu_max),
                      f"{ws.patients[index].pseudonym} input", tuple(ws.roi_names),
                      slice_z_mm(ws, index, len(images)))


def slice_z_mm(ws, index: int, n: int) -> np.ndarray | None:
    """z in mm of the `n` stored slices of entry `index` (None where the workspace keeps
    no source geometry, e.g. an arrays-only workspace)."""
    from training.store.preprocess import output_positions

    try:
        geometry = ws.source_geometry(index)
        return None if geometry is None else output_positions(geometry, ws.preprocess, n)
    except (ValueError, KeyError, AttributeError):
        return None


def encode_patient(model, ws, index: int, batch_size: int = 16,
                   progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> latent.Encoded:
    """Posteriors of every image of one patient (n slices in 2D, one volume in 3D)."""
    _check(model, ws)
    return latent.encode_workspace(model, ws, rows=_patient_rows(ws, index), batch_size=batch_size,
                                   progress=progress, cancel=cancel)


def reconstruction_pair(model, ws, index: int, batch_size: int = 16,
                        progress: Callable[[int, int], None] | None = None,
                        cancel: Callable[[], bool] | None = None) -> VolumePair:
    """Input of patient `index` and its reconstruction decode(µ(x)) (per slice in 2D)."""
    mode = ws.preprocess.mode
    left = patient_stack(ws, index)
    enc = encode_patient(model, ws, index, batch_size, progress, cancel)
    if len(enc.mu) < ws.patients[index].n_images:
        raise InterruptedError("cancelled")
    ct, lab = _decoded_stack(latent.LatentDecoder(model, batch_size=batch_size).decode(enc.mu), mode)
    name = ws.patients[index].pseudonym
    note = ("3D model: the whole volume is encoded and decoded at once" if mode == "3d" else
            "2D model: each slice is encoded and decoded on its own (per-slice reconstructions)")
    right = SliceStack(ct, lab, left.hu_window, f"{name} reconstruction", left.roi_names, left.z_mm)
    return VolumePair(left, right, mode, "reconstruction", note, enc.mu)


def generated_pair(model, ws, index: int, seed: int = 0, prior_sigma2: float = 1.0) -> VolumePair:
    """Patient `index`'s input beside a draw from the prior N(0, σz² I), decoded.

    3D: one generated volume. 2D: one independent prior draw per slice of the patient
    (a stack of unrelated generated slices, not a volume).
    """
    _check(model, ws)
    mode = ws.preprocess.mode
    left = patient_stack(ws, index)
    n_codes = 1 if mode == "3d" else left.n_slices
    codes = sampling.sample_prior(n_codes, model.cfg.latent_dim, prior_sigma2, seed)
    ct, lab = _decoded_stack(latent.LatentDecoder(model).decode(codes), mode)
    note = (f"generated volume: z ~ N(0, {prior_sigma2:g} I), seed {seed}" if mode == "3d" else
            f"2D model: {n_codes} independent slices z ~ N(0, {prior_sigma2:g} I), seed {seed} "
            "(not one volume)")
    right = SliceStack(ct, lab, left.hu_window, f"generated (seed {seed})", left.roi_names)
    return VolumePair(left, right, mode, "generated", note, codes)


def matched_slices(n_from: int, n_to: int) -> np.ndarray:
    """Slice of a stack of n_to paired with each of n_from slices by relative position
    (k ↦ round(k·(n_to − 1)/(n_from − 1)); int64 (n_from,))."""
    if n_from <= 1:
        return np.zeros(max(n_from, 0), np.int64)
    return np.rint(np.arange(n_from) * (n_to - 1) / (n_from - 1)).astype(np.int64)


def interpolated_pair(model, ws, index: int, other: int, t: float = 0.5, method: str = "linear",
                      batch_size: int = 16) -> VolumePair:
    """Patient `index`'s input beside the decoded code (1 − t)·µ_index + t·µ_other.

    3D: the two volumes' µ. 2D: slice k of `index` with the slice of `other` at the same
    relative position (`matched_slices`), one interpolated slice each. method: "linear"
    or "spherical" (training.latent.sampling.interpolate at the single point t).
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    mode = ws.preprocess.mode
    left = patient_stack(ws, index)
    ea = encode_patient(model, ws, index, batch_size)
    eb = encode_patient(model, ws, other, batch_size)
    pair = matched_slices(len(ea.mu), len(eb.mu))
    interp = sampling.slerp if method in ("spherical", "slerp") else sampling.lerp
    codes = np.stack([interp(ea.mu[k], eb.mu[j], [t])[0] for k, j in enumerate(pair)]).astype(np.float32)
    ct, lab = _decoded_stack(latent.LatentDecoder(model, batch_size=batch_size).decode(codes), mode)
    a, b = ws.patients[index].pseudonym, ws.patients[other].pseudonym
    note = f"{method} interpolation at t = {t:g} from {a} (t = 0) to {b} (t = 1)" + (
        "" if mode == "3d" else ", slice by slice (matched by relative position)")
    right = SliceStack(ct, lab, left.hu_window, f"{a} → {b}, t = {t:g}", left.roi_names)
    return VolumePair(left, right, mode, "interpolated", note, codes)


def export_right(pair: VolumePair, ws, index: int, out_dir, formats=("png", "npy", "dicom"),
                 notes: list[str] | None = None) -> dict:
    """Export the right side of `pair` (training.latent.export.export_generated: PNG, .npy, DICOM
    CT + RTSTRUCT with a new pseudonymous patient and new UIDs).

    A 3D volume, and a 2D patient's reconstructed or interpolated stack, go out as one
    volume (z, y, x) with the patient's preprocessed spacing (`workspace_spacing`);
    2D generated slices (independent prior draws) as one image each. Returns
    {format: [paths]}; `notes` (a list) receives what the DICOM files' reader should know.
    """
    from training.latent.export import export_generated, workspace_spacing

    volume = pair.mode == "3d" or pair.source != "generated"
    images = pair.right.images[None] if volume else pair.right.images
    labels = pair.right.labels
    if labels is not None and volume:
        labels = labels[None]
    z = pair.right.z_mm if pair.right.z_mm is not None else pair.left.z_mm  # the stored images' z
    z = z if volume and z is not None and len(z) == len(pair.right.images) else None
    return export_generated(out_dir, images, labels, preprocess=ws.preprocess,
                            spacing=workspace_spacing(ws, index), roi_names=pair.right.roi_names,
                            formats=tuple(formats), prefix=pair.source, notes=notes, z_mm=z)


__all__ = [
    "export_right", "SOURCES", "SliceStack", "VolumePair", "window_level_range", "level_width_of", "patient_stack",
    "encode_patient", "reconstruction_pair", "generated_pair", "matched_slices", "interpolated_pair",
]
