"""Preprocessing: small callables from source HU + labels to training arrays (SPEC F3, F4).

Conventions: arrays are (z, y, x); HU before windowing, float32 in [0, 1] after; slice
positions are mm along the slice normal, ascending (VolumeGeometry.positions). Labels
are exclusive uint8 maps (0 = complement, k = rois[k-1]) and are only ever resampled by
nearest neighbour, so no new classes appear.

The chain, as `preprocess_volume` runs it: select_slices → center_crop → resize_inplane
→ (3D) to_cube → window. Interpolation happens on HU, windowing last, so clipping is
applied to physically interpolated values. A config with settings in mm (spacing, fov,
z_spacing) takes `preprocess_physical` instead: the grid of training/store/scale.py,
resampled by training/store/resample.py (labels there by area fraction, not nearest).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from training.config import WINDOW_PRESETS, ConfigError, PreprocessConfig

AIR_HU = -1000.0


def window(hu: np.ndarray, lo: float, hi: float, *, in_place: bool = False) -> np.ndarray:
    """Clip HU to [lo, hi] and scale linearly to float32 [0, 1] (lo → 0, hi → 1).

    in_place: `hu` is a float32 array the caller owns and no longer needs; it is
    overwritten and returned (no second full-size array)."""
    if not hi > lo:
        raise ValueError(f"window: upper limit {hi} must exceed lower limit {lo}")
    if in_place and isinstance(hu, np.ndarray) and hu.dtype == np.float32 and hu.flags.writeable:
        out = np.subtract(hu, np.float32(lo), out=hu)
        out *= np.float32(1.0 / (hi - lo))
    else:
        out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def window_preset(name: str) -> tuple[float, float]:
    """(lo, hi) HU of a named preset in training.config.WINDOW_PRESETS."""
    try:
        return WINDOW_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown window preset {name!r}; known: {', '.join(WINDOW_PRESETS)}") from None


def center_crop(vol: np.ndarray, size: int, fill: float = AIR_HU) -> np.ndarray:
    """Central size × size pixels of the last two axes (y, x).

    An axis longer than `size` loses (n - size) // 2 pixels at its start; a shorter one
    is padded with `fill` (air, −1000 HU, for CT; 0 for labels), (size - n) // 2 before.
    When both axes are at least `size` long the result is a view of `vol`.
    """
    vol = np.asarray(vol)
    if min(vol.shape[-2:]) >= size:  # cropping only: a view, no copy
        s0, s1 = ((n - size) // 2 for n in vol.shape[-2:])
        return vol[..., s0:s0 + size, s1:s1 + size]
    out = np.full(vol.shape[:-2] + (size, size), fill, dtype=vol.dtype)
    src, dst = [], []
    for n in vol.shape[-2:]:
        if n >= size:
            s = (n - size) // 2
            src.append(slice(s, s + size))
            dst.append(slice(0, size))
        else:
            d = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(d, d + n))
    out[(..., *dst)] = vol[(..., *src)]
    return out


def resize_inplane(vol: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Resample the last two axes to size × size (scipy.ndimage.zoom, grid_mode).

    grid_mode=True maps pixel edges onto pixel edges (the field of view is kept, pixel
    centres shift by half a new pixel); order=0 for labels, 1 (linear) or 3 for CT.
    """
    vol = np.asarray(vol)
    h, w = vol.shape[-2:]
    if (h, w) == (size, size):
        return vol.copy()
    zoom = (1.0,) * (vol.ndim - 2) + (size / h, size / w)
    data = vol if order == 0 else vol.astype(np.float32, copy=False)
    out = ndimage.zoom(data, zoom, order=order, mode="nearest", grid_mode=True)
    return out.astype(vol.dtype, copy=False) if order == 0 else out


def select_slices(positions: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Indices of the slices to keep, ascending (positions in mm, ascending).

    - "all": every slice;
    - "around": cfg.slice_count slices centred on the slice nearest cfg.slice_center mm
      (None: the middle of the series' extent), shifted to stay inside the series;
      fewer only when the series is shorter;
    - "range": indices [slice_start, slice_stop) (stop None = the end), clipped.
    Raises ValueError when nothing is left (the caller names the series).
    """
    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    if cfg.slices == "all":
        idx = np.arange(n)
    elif cfg.slices == "around":
        centre = (pos[0] + pos[-1]) / 2 if cfg.slice_center is None else cfg.slice_center
        if n and not (pos[0] - 1e-6 <= centre <= pos[-1] + 1e-6) and cfg.slice_center is not None:
            raise ValueError(
                f"slice centre {centre:.1f} mm lies outside the series ({pos[0]:.1f}…{pos[-1]:.1f} mm)")
        k = int(np.argmin(np.abs(pos - centre))) if n else 0
        count = min(cfg.slice_count, n)
        start = min(max(k - (count - 1) // 2, 0), n - count)
        idx = np.arange(start, start + count)
    elif cfg.slices == "range":
        stop = n if cfg.slice_stop is None else min(cfg.slice_stop, n)
        idx = np.arange(max(cfg.slice_start, 0), max(stop, 0))
    else:
        raise ConfigError(f"unknown slice selection {cfg.slices!r}")
    if len(idx) == 0:
        raise ValueError(f"slice selection {cfg.slices!r} leaves no slice of {n}")
    return idx


def to_cube(vol: np.ndarray, positions: np.ndarray, depth: int, order: int = 1) -> np.ndarray:
    """Resample axis 0 to `depth` slices evenly spaced from the first to the last position.

    Interpolation follows the measured positions (mm), so uneven spacing is honoured:
    linear between the two neighbouring source slices (order=1) or the nearest one in
    mm (order=0, for labels). A single slice is repeated.
    """
    vol = np.asarray(vol)
    pos = np.asarray(positions, dtype=np.float64)
    n = vol.shape[0]
    if len(pos) != n:
        raise ValueError(f"to_cube: {len(pos)} positions for {n} slices")
    if n == 1:
        return np.repeat(vol, depth, axis=0)
    if np.any(np.diff(pos) <= 0):
        raise ValueError("to_cube: slice positions must be strictly ascending")
    target = np.linspace(pos[0], pos[-1], depth)
    k = np.interp(target, pos, np.arange(n, dtype=np.float64))
    k0 = np.minimum(np.floor(k).astype(np.int64), n - 2)
    w = (k - k0).astype(np.float32)
    if order == 0:
        return vol[np.where(w > 0.5, k0 + 1, k0)]  # ties go to the lower slice, like scipy
    w = w.reshape((-1,) + (1,) * (vol.ndim - 1))
    a = vol[k0].astype(np.float32, copy=False)
    b = vol[k0 + 1].astype(np.float32, copy=False)
    return a * (1 - w) + b * w


def output_depth(cfg: PreprocessConfig, h: int) -> int:
    """Edge of the 3D cube: cfg.depth, else size, else crop, else the in-plane size."""
    return int(cfg.depth or cfg.size or cfg.crop or h)


def preprocess_volume(hu: np.ndarray, labels: np.ndarray | None, positions: np.ndarray,
                      cfg: PreprocessConfig, pixel_spacing: tuple[float, float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Source HU (z, y, x) + exclusive labels → training arrays.

    positions: slice positions in mm (VolumeGeometry.positions) or a VolumeGeometry
    (which also gives the pixel spacing). pixel_spacing (dy, dx) mm: needed when cfg has
    settings in mm (spacing, fov; see preprocess_physical).
    Returns float32 images in [0, 1] and uint8 labels (or None):
    2D: (n_selected, H, W); 3D: (1, D, H, W).
    """
    if hasattr(positions, "positions"):
        if pixel_spacing is None:
            pixel_spacing = tuple(positions.pixel_spacing)
        positions = positions.positions
    positions = np.asarray(positions, dtype=np.float64)
    if cfg.physical:
        return preprocess_physical(hu, labels, positions, cfg, pixel_spacing)
    idx = select_slices(positions, cfg)
    # select_slices gives a run of consecutive slices: a view, copied once below
    sel = slice(int(idx[0]), int(idx[-1]) + 1) if np.all(np.diff(idx) == 1) else idx
    vol = np.asarray(hu)[sel]
    lab = None if labels is None else np.asarray(labels, dtype=np.uint8)[sel]
    pos = positions[idx]
    if cfg.crop:  # before the float conversion: a 512² → 128² crop converts 16× fewer pixels
        vol = center_crop(vol, cfg.crop, AIR_HU)
        lab = None if lab is None else center_crop(lab, cfg.crop, 0)
    vol = vol.astype(np.float32)  # always a new array (hu may be float32): windowed in place
    if cfg.size:
        vol = resize_inplane(vol, cfg.size, order=1)
        lab = None if lab is None else resize_inplane(lab, cfg.size, order=0)
    if cfg.mode == "3d":
        d = output_depth(cfg, vol.shape[-1])
        vol = to_cube(vol, pos, d, order=1)[None]
        lab = None if lab is None else to_cube(lab, pos, d, order=0)[None]
    if lab is not None:  # own, contiguous labels (not a view of the caller's array)
        lab = np.ascontiguousarray(lab)
        if np.may_share_memory(lab, labels):
            lab = lab.copy()
    return window(vol, cfg.hu_min, cfg.hu_max, in_place=True), lab


def preprocess_physical(hu: np.ndarray, labels: np.ndarray | None, positions: np.ndarray,
                        cfg: PreprocessConfig, pixel_spacing: tuple[float, float] | None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """preprocess_volume for a config in mm (training/store/scale.py says which grid):

    z (z_spacing set): slices selected on a uniform z grid, resampled from the real slice
    positions; else select_slices on the acquired slices (and to_cube in 3D, as before).
    In-plane (spacing or fov set): one resampling onto the output grid (it crops and pads
    too; outside the slice is air); else centre crop. Then `size`, window.
    """
    from training.store import resample as rs
    from training.store import scale

    hu = np.asarray(hu)
    nz, h, w = hu.shape
    grid = None
    if cfg.spacing is not None or cfg.fov is not None:
        if pixel_spacing is None:
            raise ValueError("the pixel spacing is unknown, so a spacing or field of view in mm "
                             "cannot be applied")
        grid = scale.inplane_grid(cfg, pixel_spacing, (h, w))
    weights: dict[int, rs.AxisWeights] = {}
    if grid is not None:
        (ys, yo), (xs, xo) = scale.inplane_positions(grid, pixel_spacing, (h, w))
        weights[1] = rs.axis_weights(ys, yo, grid.spacing[0])
        weights[2] = rs.axis_weights(xs, xo, grid.spacing[1])
    cube_positions = None
    if cfg.z_spacing is not None:
        if nz > 1 and np.any(np.diff(positions) <= 0):
            raise ValueError("slice positions must be strictly ascending to resample along z")
        g = scale.z_grid(positions, cfg.z_spacing)
        idx = select_slices(g, cfg)
        zout = g[idx]
        if cfg.mode == "3d":
            edge = grid.shape[1] if grid is not None else (cfg.crop or w)
            d = output_depth(cfg, int(edge))
            centre = (zout[0] + zout[-1]) / 2
            zout = centre + (np.arange(d) - (d - 1) / 2) * cfg.z_spacing
        weights[0] = rs.axis_weights(positions, zout, cfg.z_spacing)
        vol, lab = hu, (None if labels is None else np.asarray(labels, np.uint8))
    else:
        idx = select_slices(positions, cfg)
        sel = slice(int(idx[0]), int(idx[-1]) + 1)
        vol, lab = hu[sel], (None if labels is None else np.asarray(labels, np.uint8)[sel])
        cube_positions = positions[idx]
    if grid is None and cfg.crop:
        vol = center_crop(vol, cfg.crop, AIR_HU)
        lab = None if lab is None else center_crop(lab, cfg.crop, 0)
    if weights:  # only the part of the source the grid reads (slices, rows, columns)
        part, weights = rs.trim(weights, vol.shape)
        vol = vol[part]
        lab = None if lab is None else lab[part]
    out = rs.resample(vol, weights, fill=AIR_HU) if weights else vol.astype(np.float32)
    if np.may_share_memory(out, hu):
        out = out.copy()  # windowed in place below
    if lab is not None:
        lab = rs.resample_labels(lab, weights) if weights else np.array(lab, dtype=np.uint8)
    if cfg.size and out.shape[-2:] != (cfg.size, cfg.size):
        out = resize_inplane(out, cfg.size, order=1)
        lab = None if lab is None else resize_inplane(lab, cfg.size, order=0)
    if cfg.mode == "3d":
        if cube_positions is not None:  # no z_spacing: the cube spans the selected slices
            d = output_depth(cfg, out.shape[-1])
            out = to_cube(out, cube_positions, d, order=1)
            lab = None if lab is None else to_cube(lab, cube_positions, d, order=0)
        out = out[None]
        lab = None if lab is None else lab[None]
    if lab is not None:
        lab = np.ascontiguousarray(lab)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return window(out, cfg.hu_min, cfg.hu_max, in_place=True), lab


def output_positions(positions: Any, cfg: PreprocessConfig, n_out: int) -> np.ndarray:
    """z in mm (patient coordinates, along the slice normal) of each image that
    preprocess_volume makes from a series with these slice positions: the selected
    slices' positions in 2D; in 3D the `n_out` depth planes of the cube, evenly spaced
    from the first selected slice to the last (to_cube). With cfg.z_spacing (the slices
    resampled onto a uniform z grid, preprocess_physical) the grid's positions. float64
    (n_out,)."""
    if hasattr(positions, "positions"):
        positions = positions.positions
    pos = np.asarray(positions, dtype=np.float64)
    z_spacing = getattr(cfg, "z_spacing", None)
    if z_spacing is not None:  # preprocess_physical: slices on a uniform z grid
        from training.store import scale

        grid = scale.z_grid(pos, z_spacing)
        sel = grid[select_slices(grid, cfg)]
        if cfg.mode == "3d":  # the cube's planes, centred on the selection, z_spacing apart
            centre = (sel[0] + sel[-1]) / 2
            return centre + (np.arange(int(n_out)) - (int(n_out) - 1) / 2) * z_spacing
    else:
        sel = pos[select_slices(pos, cfg)]
    if cfg.mode == "3d":
        return np.linspace(sel[0], sel[-1], int(n_out))
    if len(sel) != n_out:
        raise ValueError(f"{len(sel)} selected slices for {n_out} stored images")
    return sel
