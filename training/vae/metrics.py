"""Reconstruction quality in units a physicist reads: MAE in HU inside the body, PSNR and
SSIM on the windowed image, Dice per ROI for the RT head (issue 15).

Definitions (every figure is a mean over images unless said otherwise):

- Reconstruction: the decoder's output at z = µ (eval mode, no dropout), as in the Train
  tab's reconstructions.
- Body mask, found on the *windowed input image* (the workspace stores the windowed
  image; the un-windowed source is at native resolution before crop and resize):
  pixels above `BODY_THRESHOLD_HU` (−500 HU, between air and fat/soft tissue; with a
  window whose lower limit is above −500 HU, pixels above the window's lower limit), the
  largest connected component (face connectivity, 2D per slice or 3D per volume), then
  holes filled per axial slice (the lungs, inside the body, are part of it). Couch and
  clothing lines thinner than the body and not touching it are left out.
- MAE (HU): mean |x̂ − x| · (hu_max − hu_min) over the body pixels of each image, then
  the mean over images (an image whose mask is empty is left out). Both images are in the
  window, so HU outside [hu_min, hu_max] count as clipped: it is the error inside the
  window, not against the raw CT.
- PSNR (dB): 10 · log10(1 / MSE) per image on the windowed [0, 1] image (data range 1),
  over the whole image; mean over images. Equal to skimage.metrics.peak_signal_noise_ratio
  with data_range=1.
- SSIM: skimage.metrics.structural_similarity's defaults (7-pixel uniform window in each
  axis, K1 = 0.01, K2 = 0.03, sample covariance, data_range = 1, the mean over the window
  positions that lie fully inside the image), per image, mean over images; 3D volumes use
  a 7×7×7 window.
- Dice per ROI: 2|A ∩ B| / (|A| + |B|) with A the ROI's pixels in the input labels and B
  where the RT head's arg-max is that ROI, pooled over all pixels of the evaluated images
  (so slices without the ROI add nothing instead of undefined ratios); None when the ROI
  is absent from both.
- Baseline: the mean training image (the pixel-wise mean of the training images' windowed
  CT; for RT, the most frequent class per pixel) as the "reconstruction" of every image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

BODY_THRESHOLD_HU = -500.0
SSIM_WIN = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
METRIC_NAMES = ("mae_hu", "psnr_db", "ssim")
LABELS = {"mae_hu": "MAE (HU, body)", "psnr_db": "PSNR (dB)", "ssim": "SSIM"}


def body_mask(image: np.ndarray, hu_min: float, hu_max: float,
              threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """bool mask of the body in one windowed image ((H, W) or (D, H, W), values in [0, 1]).

    See the module docstring: threshold, largest connected component, holes filled per
    axial slice.
    """
    img = np.asarray(image, dtype=np.float32)
    t = (threshold_hu - hu_min) / (hu_max - hu_min)
    mask = img > max(t, 0.0)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask)
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def psnr(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of (B, *S) tensors in [0, 1] (data range 1); inf where equal."""
    mse = ((recon.double() - target.double()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def _box_valid(a: np.ndarray, w: int, axes) -> np.ndarray:
    """Mean over a w-wide window along each axis in `axes`, positions fully inside only
    (scipy's uniform filter, then the border where the window sticks out is cut off, as
    skimage does)."""
    size = [1] * a.ndim
    for ax in axes:
        size[ax] = w
    out = ndimage.uniform_filter(a, size=size, mode="reflect")
    pad = (w - 1) // 2
    cut = tuple(slice(pad, a.shape[ax] - pad) if ax in axes else slice(None) for ax in range(a.ndim))
    return out[cut]


def ssim(target, recon) -> torch.Tensor:
    """SSIM per image of (B, H, W) or (B, D, H, W) images in [0, 1] (tensors or arrays), as
    skimage's structural_similarity with its defaults and data_range=1 (module docstring)."""
    x = (target.double().cpu().numpy() if torch.is_tensor(target) else np.asarray(target, np.float64))
    y = (recon.double().cpu().numpy() if torch.is_tensor(recon) else np.asarray(recon, np.float64))
    axes = tuple(range(1, x.ndim))
    if min(x.shape[1:]) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN} pixels per side, got {x.shape[1:]}")
    n = SSIM_WIN ** len(axes)
    cov = n / (n - 1.0)  # sample covariance, as skimage's use_sample_covariance=True

    def box(v):
        return _box_valid(v, SSIM_WIN, axes)

    ux, uy = box(x), box(y)
    vx = cov * (box(x * x) - ux * ux)
    vy = cov * (box(y * y) - uy * uy)
    vxy = cov * (box(x * y) - ux * uy)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return torch.from_numpy(s.reshape(len(s), -1).mean(1))


def mae_hu(target: np.ndarray, recon: np.ndarray, masks: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Per image mean |recon − target| in HU over its mask (NaN where the mask is empty)."""
    err = np.abs(np.asarray(recon, np.float64) - np.asarray(target, np.float64)) * (hu_max - hu_min)
    m = np.asarray(masks, bool)
    count = m.reshape(len(m), -1).sum(1)
    total = np.where(m, err, 0.0).reshape(len(m), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass
class MetricSums:
    """Accumulates the figures batch by batch; `result()` gives the means.

    hu_min, hu_max: the workspace's window; roi_names: the ROIs of classes 1.. (class 0 is
    the complement).
    """

    hu_min: float
    hu_max: float
    roi_names: Sequence[str] = ()
    _mae: list[float] = field(default_factory=list)
    _psnr: list[float] = field(default_factory=list)
    _ssim: list[float] = field(default_factory=list)
    _inter: np.ndarray | None = None
    _sizes: np.ndarray | None = None
    n_images: int = 0

    def add(self, target, recon, labels=None, pred_labels=None) -> None:
        """target, recon: (B, *S) windowed CT in [0, 1] (tensors or arrays); labels,
        pred_labels: (B, *S) class indices (None for CT only)."""
        t = torch.from_numpy(np.array(target, np.float32)) if not torch.is_tensor(target) else target.float().cpu()
        r = torch.from_numpy(np.array(recon, np.float32)) if not torch.is_tensor(recon) else recon.float().cpu()
        if r.shape[0] == 1 and t.shape[0] > 1:
            r = r.expand_as(t)
        tn, rn = t.numpy(), r.numpy()
        masks = np.stack([body_mask(im, self.hu_min, self.hu_max) for im in tn])
        self._mae += [float(v) for v in mae_hu(tn, rn, masks, self.hu_min, self.hu_max)]
        self._psnr += [float(v) for v in psnr(t, r)]
        self._ssim += [float(v) for v in ssim(t, r)]
        self.n_images += len(tn)
        if labels is not None and pred_labels is not None and self.roi_names:
            lab = np.asarray(labels).astype(np.int64)
            pred = np.broadcast_to(np.asarray(pred_labels).astype(np.int64), lab.shape)
            k = len(self.roi_names) + 1
            inter = np.bincount(lab[lab == pred].ravel(), minlength=k)[:k]
            sizes = np.bincount(lab.ravel(), minlength=k)[:k] + np.bincount(pred.ravel(), minlength=k)[:k]
            self._inter = inter if self._inter is None else self._inter + inter
            self._sizes = sizes if self._sizes is None else self._sizes + sizes

    def result(self) -> dict[str, Any]:
        """{"n_images", "mae_hu", "psnr_db", "ssim", "dice": {roi: value}} with None for
        figures that are undefined (no images, empty body masks, absent ROI)."""
        def mean(values):
            v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
            return float(v.mean()) if v.size else None
        out: dict[str, Any] = {"n_images": self.n_images, "mae_hu": mean(self._mae),
                               "psnr_db": mean(self._psnr), "ssim": mean(self._ssim)}
        if self.roi_names:
            dice = {}
            for k, name in enumerate(self.roi_names, start=1):
                s = 0 if self._sizes is None else int(self._sizes[k])
                dice[name] = None if s == 0 else float(2.0 * self._inter[k] / s)
            out["dice"] = dice
        return out


@torch.no_grad()
def reconstruct(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(CT (B, *S), predicted labels (B, *S) or None) decoded from µ, in eval mode."""
    was = model.training
    model.eval()
    try:
        mu, _ = model.encode(x)
        dec = model.decode(mu)
    finally:
        model.train(was)
    pred = dec.rt_logits.argmax(1) if dec.rt_logits is not None else None
    return dec.ct[:, 0].float(), pred


def evaluate_rows(model, source, rows: np.ndarray, *, hu_min: float, hu_max: float,
                  roi_names: Sequence[str] = (), n_classes: int = 0, batch_size: int = 16,
                  device: torch.device | str = "cpu", memory_format=None,
                  cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The figures of the model's reconstructions of workspace rows (see MetricSums.result)."""
    from training.vae.data import build_input

    sums = MetricSums(hu_min, hu_max, tuple(roi_names) if n_classes else ())
    rows = np.asarray(rows).reshape(-1, 2)
    for i in range(0, len(rows), batch_size):
        if cancel is not None and cancel():
            raise InterruptedError("cancelled")
        part = rows[i:i + batch_size]
        images = source.read_images(part)
        labels = source.read_labels(part) if n_classes else None
        x = build_input(images, labels, n_classes).to(device)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        ct, pred = reconstruct(model, x)
        sums.add(images, ct.cpu(), labels, None if pred is None else pred.cpu().numpy())
    return sums.result()


def mean_image(source, rows: np.ndarray, n_classes: int = 0, batch_size: int = 64
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """The baseline: pixel-wise mean windowed CT of `rows` and, with RT, the most frequent
    class per pixel."""
    rows = np.asarray(rows).reshape(-1, 2)
    total, counts = None, None
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        im = np.asarray(source.read_images(part), np.float64).sum(0)
        total = im if total is None else total + im
        if n_classes:
            lab = np.asarray(source.read_labels(part))
            c = np.stack([(lab == k).sum(0) for k in range(n_classes)])
            counts = c if counts is None else counts + c
    mean = (total / max(len(rows), 1)).astype(np.float32)
    return mean, (counts.argmax(0).astype(np.uint8) if counts is not None else None)


def evaluate_baseline(source, rows: np.ndarray, mean: np.ndarray, mode_labels: np.ndarray | None, *,
                      hu_min: float, hu_max: float, roi_names: Sequence[str] = (),
                      batch_size: int = 32) -> dict[str, Any]:
    """The figures of the mean training image taken as every row's reconstruction."""
    with_rt = mode_labels is not None and bool(roi_names)
    sums = MetricSums(hu_min, hu_max, tuple(roi_names) if with_rt else ())
    rows = np.asarray(rows).reshape(-1, 2)
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        images = source.read_images(part)
        labels = source.read_labels(part) if with_rt else None
        sums.add(images, np.broadcast_to(mean, images.shape), labels,
                 None if labels is None else np.broadcast_to(mode_labels, labels.shape))
    return sums.result()


def format_metrics(m: dict[str, Any] | None, baseline: dict[str, Any] | None = None) -> str:
    """One line: "MAE 115.2 HU, PSNR 21.3 dB, SSIM 0.612, Dice Heart 0.71" (with the
    baseline in brackets where given)."""
    if not m:
        return "n/a"
    fmt = {"mae_hu": ("MAE", "{:.1f} HU"), "psnr_db": ("PSNR", "{:.2f} dB"), "ssim": ("SSIM", "{:.3f}")}
    parts = []
    for key, (name, f) in fmt.items():
        v = m.get(key)
        text = f"{name} " + ("n/a" if v is None else f.format(v))
        if baseline is not None:
            b = baseline.get(key)
            text += " (baseline " + ("n/a" if b is None else f.format(b)) + ")"
        parts.append(text)
    for roi, v in (m.get("dice") or {}).items():
        text = f"Dice {roi} " + ("n/a" if v is None else f"{v:.3f}")
        if baseline is not None:
            b = (baseline.get("dice") or {}).get(roi)
            text += " (baseline " + ("n/a" if b is None else f"{b:.3f}") + ")"
        parts.append(text)
    return ", ".join(parts)


def evaluate_workspace(model, ws, *, splits: Sequence[str] = ("test", "train"), max_images: int = 0,
                       batch_size: int = 16, device: torch.device | str = "cpu",
                       progress: Callable[[int, int], None] | None = None,
                       cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Model and baseline figures on each split of a workspace (issue 15, `ct-vae evaluate`).

    The baseline is the mean image of the workspace's train split. max_images > 0 takes
    that many evenly spaced images of each split. Returns {"window": [lo, hi],
    "baseline_from": n train images, split: {"model": {...}, "baseline": {...}}}.
    """
    from training.vae.data import build_input, evenly_spaced

    pre = ws.preprocess
    n_classes = model.cfg.n_classes
    train_rows = np.asarray(ws.index("train")).reshape(-1, 2)
    if not len(train_rows):
        raise ValueError(f"{ws.path}: no training images to form the mean-image baseline")
    mean, mode = mean_image(ws, train_rows, n_classes)
    out: dict[str, Any] = {"window": [pre.hu_min, pre.hu_max], "baseline_from": int(len(train_rows)),
                           "body_threshold_hu": BODY_THRESHOLD_HU}
    chosen = {}
    for split in splits:
        rows = np.asarray(ws.index(None if split == "all" else split)).reshape(-1, 2)
        if max_images and len(rows) > max_images:
            rows = rows[evenly_spaced(len(rows), max_images)]
        chosen[split] = rows
    total, done = sum(len(r) for r in chosen.values()), 0
    for split, rows in chosen.items():
        if not len(rows):
            out[split] = None
            continue
        model_sums = MetricSums(pre.hu_min, pre.hu_max, tuple(pre.rois) if n_classes else ())
        base_sums = MetricSums(pre.hu_min, pre.hu_max, tuple(pre.rois) if n_classes else ())
        for j in range(0, len(rows), batch_size):
            if cancel is not None and cancel():
                raise InterruptedError("cancelled")
            b = rows[j:j + batch_size]
            images = ws.read_images(b)
            labels = ws.read_labels(b) if n_classes else None
            ct, pred = reconstruct(model, build_input(images, labels, n_classes).to(device))
            model_sums.add(images, ct.cpu(), labels, None if pred is None else pred.cpu().numpy())
            base_sums.add(images, np.broadcast_to(mean, images.shape), labels,
                          None if labels is None else np.broadcast_to(mode, labels.shape))
            done += len(b)
            if progress is not None:
                progress(done, total)
        out[split] = {"model": model_sums.result(), "baseline": base_sums.result()}
    return out
