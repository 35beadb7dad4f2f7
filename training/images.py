"""Display helpers shared by the GUI panels and the exports (pure numpy).

Images are [0, 1] floats (windowed CT) with axes (y, x) = (row, column); for axial CT
rows run anterior → posterior and columns patient right → left (DICOM axial display).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# One colour per class as RGB uint8; index 0 is the complement (never drawn), k = rois[k-1].
ROI_COLOURS: np.ndarray = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),  # red
        (60, 180, 75),  # green
        (0, 130, 200),  # blue
        (255, 225, 25),  # yellow
        (245, 130, 48),  # orange
        (145, 30, 180),  # purple
        (70, 240, 240),  # cyan
        (240, 50, 230),  # magenta
        (210, 245, 60),  # lime
        (250, 190, 212),  # pink
        (0, 128, 128),  # teal
        (170, 110, 40),  # brown
    ],
    dtype=np.uint8,
)


def roi_colour_table(n_classes: int) -> np.ndarray:
    """(n_classes, 3) uint8 RGB: row 0 = complement (black), row k = ROI k (cycled)."""
    if n_classes < 1:
        return np.zeros((0, 3), np.uint8)
    idx = np.r_[0, (np.arange(1, n_classes) - 1) % (len(ROI_COLOURS) - 1) + 1]
    return ROI_COLOURS[idx]


def to_uint8(image, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Scale [vmin, vmax] → [0, 255] with clipping, rounding to nearest."""
    a = (np.asarray(image, np.float64) - vmin) / (vmax - vmin)
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def compose_grid(images, pad: int = 0, pad_value: float = 0.0) -> np.ndarray:
    """Tile images (n, m, H, W) (or (n, m, H, W, C)) into one (n·H + (n−1)·pad, m·W + …) array.

    Cell [r, c] lands at rows r·(H+pad) … and columns c·(W+pad) …, so a manifold grid
    from `sampling.grid_codes` keeps its orientation.
    """
    a = np.asarray(images)
    if a.ndim not in (4, 5):
        raise ValueError(f"compose_grid needs (n, m, H, W[, C]) images, got shape {a.shape}")
    n, m, h, w = a.shape[:4]
    tail = a.shape[4:]
    out = np.full((n * h + (n - 1) * pad, m * w + (m - 1) * pad) + tail, pad_value, dtype=a.dtype)
    for r in range(n):
        for c in range(m):
            out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = a[r, c]
    return out


def overlay_labels(ct, labels, colours=None, alpha: float = 0.4, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """RGB uint8 (H, W, 3): grey CT with each class k ≥ 1 blended in colours[k].

    ct: (H, W) float in [vmin, vmax]; labels: (H, W) integer classes (0 = complement, not
    drawn) or None; colours: (n_classes, 3) uint8, default `roi_colour_table`.
    """
    grey = to_uint8(ct, vmin, vmax)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != grey.shape:
            raise ValueError(f"labels {labels.shape} and CT {grey.shape} differ in shape")
        n = int(labels.max()) + 1 if labels.size else 1
        colours = roi_colour_table(max(n, 2)) if colours is None else np.asarray(colours, np.uint8)
        if len(colours) < n:
            raise ValueError(f"{len(colours)} colours for labels up to {n - 1}")
        drawn = labels > 0
        rgb[drawn] = (1.0 - alpha) * rgb[drawn] + alpha * colours[labels[drawn]].astype(np.float64)
    return np.round(rgb).astype(np.uint8)


def png_bytes(image) -> bytes:
    """Encode a (H, W) or (H, W, 3|4) uint8 array (or [0, 1] float, scaled) as PNG."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = to_uint8(a)
    try:  # imageio comes with scikit-image, a project dependency
        import imageio.v3 as iio
    except ImportError:
        return _png_zlib(a)
    buf = io.BytesIO()
    iio.imwrite(buf, a, extension=".png")
    return buf.getvalue()


def _png_zlib(a: np.ndarray) -> bytes:
    """Minimal 8-bit PNG encoder (grey, RGB or RGBA), no filtering."""
    import struct
    import zlib

    if a.ndim == 2:
        a = a[..., None]
    h, w, c = a.shape
    colour_type = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_png(path, image) -> Path:
    """Atomically write a PNG (see png_bytes)."""
    from training.atomic import atomic_write_bytes

    return atomic_write_bytes(path, png_bytes(image))
