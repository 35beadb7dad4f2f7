"""Resampling onto a grid in millimetres: one axis at a time, linear or area-weighted.

Conventions: arrays (z, y, x); positions and spacings in mm; a source sample i stands for
the cell between the midpoints to its neighbours (the end cells extend half the end gap
outwards), so a series with uneven slice spacing is handled by its real positions.

One output sample at position p with spacing s (its cell is [p − s/2, p + s/2]):
- s ≤ the local source spacing (upsampling, or the same spacing): linear interpolation
  between the two source samples around p (np.interp on the real positions); a p inside
  an end cell but beyond the last sample takes that sample's value;
- s > the local source spacing (downsampling): the area-weighted mean of the source
  cells the output cell overlaps (a box filter, so no aliasing of fine noise/structure).
Outside every source cell the output takes `fill` (air, −1000 HU, for CT), and an
output cell partly outside mixes in `fill` by the part outside.

For a uniform grid the two rules meet at s = source spacing (a unit box overlapping unit
boxes is the linear "tent"), and they reduce to scipy.ndimage.map_coordinates(order=1)
and to block means for integer factors (tests/test_resample.py checks both).

Labels (exclusive uint8 maps, 0 = complement) are resampled as fractions: each class's
indicator goes through the same weights, and a voxel takes the ROI with the largest
fraction when that fraction is at least the complement's (ties: the ROI; among ROIs the
earlier, higher-priority class). For one ROI this is "fraction ≥ 0.5". Downsampled, the
fraction is the area (volume) fraction of the output cell covered by the ROI's source
voxels, so an ROI keeps its area to within the partial-volume error at its edge, where
nearest neighbour would pick one source voxel per output voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisWeights:
    """Output sample o = Σ_t weight[o, t] · source[index[o, t]] + fill_weight[o] · fill."""

    index: np.ndarray  # int64 (n_out, taps)
    weight: np.ndarray  # float32 (n_out, taps)
    fill_weight: np.ndarray  # float32 (n_out,)

    @property
    def n_out(self) -> int:
        return int(self.index.shape[0])

    def is_identity(self, n_src: int) -> bool:
        """Every output sample copies one source sample, in order, all of them."""
        if self.n_out != n_src or np.any(self.fill_weight):
            return False
        main = np.argmax(self.weight, axis=1)
        w = self.weight[np.arange(self.n_out), main]
        return bool(np.all(w == 1.0) and np.array_equal(self.index[np.arange(self.n_out), main],
                                                        np.arange(n_src)))


def _cells(src: np.ndarray, s: float) -> np.ndarray:
    """Cell boundaries (n + 1) of source samples at positions `src` (ascending)."""
    if len(src) == 1:
        return np.array([src[0] - s / 2, src[0] + s / 2])
    mid = (src[1:] + src[:-1]) / 2
    return np.concatenate([[src[0] - (src[1] - src[0]) / 2], mid, [src[-1] + (src[-1] - src[-2]) / 2]])


def axis_weights(src: np.ndarray, out: np.ndarray, spacing: float) -> AxisWeights:
    """Weights mapping source samples at positions `src` (mm, strictly ascending) onto
    output samples at `out` (mm) whose cells are `spacing` mm wide (module docstring)."""
    src = np.asarray(src, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    n = len(src)
    if n == 0:
        raise ValueError("resample: no source samples")
    if n > 1 and np.any(np.diff(src) <= 0):
        raise ValueError("resample: source positions must be strictly ascending")
    s = float(spacing)
    if not s > 0:
        raise ValueError(f"resample: spacing must be > 0, got {spacing}")
    b = _cells(src, s)
    m = len(out)
    # local source spacing at each output position (the gap that brackets it)
    if n == 1:
        local = np.full(m, s)  # one sample: its cell is one output cell wide
    else:
        k = np.clip(np.searchsorted(src, out) - 1, 0, n - 2)
        local = src[k + 1] - src[k]
    box = s > local * (1 + 1e-9)

    # linear rule (2 taps)
    inside = (out >= b[0] - 1e-9) & (out <= b[-1] + 1e-9)
    pc = np.clip(out, src[0], src[-1])
    if n == 1:
        li = np.zeros((m, 2), np.int64)
        lw = np.stack([np.ones(m), np.zeros(m)], axis=1)
    else:
        k0 = np.clip(np.searchsorted(src, pc, side="right") - 1, 0, n - 2)
        t = (pc - src[k0]) / (src[k0 + 1] - src[k0])
        li = np.stack([k0, k0 + 1], axis=1)
        lw = np.stack([1 - t, t], axis=1)
    lw = lw * inside[:, None]
    lfill = (~inside).astype(np.float64)

    taps = 2
    if box.any():
        lo, hi = out - s / 2, out + s / 2
        first = np.clip(np.searchsorted(b, lo, side="right") - 1, 0, n - 1)
        last = np.clip(np.searchsorted(b, hi, side="left") - 1, 0, n - 1)
        taps = max(2, int((last - first).max()) + 1)
        bi = first[:, None] + np.arange(taps)[None, :]
        valid = bi <= last[:, None]
        bi = np.minimum(bi, n - 1)
        ov = np.minimum(hi[:, None], b[bi + 1]) - np.maximum(lo[:, None], b[bi])
        bw = np.where(valid, np.clip(ov, 0, None), 0.0) / s
        bfill = np.clip(1 - bw.sum(axis=1), 0, 1)
        idx = np.zeros((m, taps), np.int64)
        w = np.zeros((m, taps))
        idx[:, :2], w[:, :2] = li, lw
        idx[box], w[box] = bi[box], bw[box]
        fill = np.where(box, bfill, lfill)
    else:
        idx, w, fill = li, lw, lfill
    w[np.abs(w) < 1e-12] = 0.0
    return AxisWeights(index=idx, weight=w.astype(np.float32), fill_weight=fill.astype(np.float32))


def trim(weights: dict[int, AxisWeights], shape: tuple[int, ...]
         ) -> tuple[tuple[slice, ...], dict[int, AxisWeights]]:
    """The part of the source the weights read (a slice per axis) and the weights
    re-indexed to it: resampling a 128 mm field of view of a 500 mm slice then touches
    only the rows and columns inside it."""
    sl = [slice(None)] * len(shape)
    out = {}
    for a, w in weights.items():
        used = w.index[w.weight != 0]
        lo, hi = (int(used.min()), int(used.max()) + 1) if used.size else (0, 1)
        sl[a] = slice(lo, hi)
        out[a] = AxisWeights(np.clip(w.index - lo, 0, hi - lo - 1), w.weight, w.fill_weight)
    return tuple(sl), out


def _apply_last_axis(vol: np.ndarray, aw: AxisWeights) -> np.ndarray:
    """The last axis as one sparse matrix product (a gather along the last axis costs
    ~10× more): out[..., o] = Σ_i W[o, i] · vol[..., i]."""
    from scipy import sparse

    n = vol.shape[-1]
    rows = np.repeat(np.arange(aw.n_out), aw.index.shape[1])
    w = sparse.csr_matrix((aw.weight.ravel(), (rows, aw.index.ravel())), shape=(aw.n_out, n),
                          dtype=np.float32)
    flat = vol.reshape(-1, n).astype(np.float32, copy=False)
    out = np.ascontiguousarray((w @ flat.T).T, dtype=np.float32)
    return out.reshape(vol.shape[:-1] + (aw.n_out,))


def apply_axis(vol: np.ndarray, axis: int, aw: AxisWeights, fill: float = 0.0) -> np.ndarray:
    """Resample one axis of `vol` with the weights (float32 result)."""
    vol = np.asarray(vol)
    if aw.is_identity(vol.shape[axis]):
        return vol.astype(np.float32, copy=False)
    shape = [1] * vol.ndim
    shape[axis] = aw.n_out
    if axis == vol.ndim - 1 and vol.ndim > 1:
        out = _apply_last_axis(vol, aw)
        if fill and aw.fill_weight.any():
            out += np.float32(fill) * aw.fill_weight.reshape(shape)
        return out
    out = None
    for t in range(aw.index.shape[1]):
        wt = aw.weight[:, t]
        if not wt.any():
            continue
        nz = wt != 0
        idx = np.where(nz, aw.index[:, t], aw.index[nz, t][0] if nz.any() else 0)
        term = np.take(vol, idx, axis=axis).astype(np.float32, copy=False)  # a new array
        if not np.all(wt == 1.0):
            term *= wt.reshape(shape)
        out = term if out is None else np.add(out, term, out=out)
    if out is None:
        out_shape = list(vol.shape)
        out_shape[axis] = aw.n_out
        out = np.zeros(out_shape, np.float32)
    if fill and aw.fill_weight.any():
        out += np.float32(fill) * aw.fill_weight.reshape(shape)
    return out


def resample(vol: np.ndarray, weights: dict[int, AxisWeights], fill: float = 0.0) -> np.ndarray:
    """Resample the axes named in `weights` (axis → AxisWeights); float32 result. The
    axis that shrinks the data most goes first."""
    vol = np.asarray(vol)
    order = sorted(weights, key=lambda a: weights[a].n_out / max(vol.shape[a], 1))
    out = vol
    for a in order:
        out = apply_axis(out, a, weights[a], 0.0)
    if fill:
        # fill enters each axis' outside part: 1 − Π(1 − outside) of the weight
        inside = np.ones([1] * vol.ndim, np.float32)
        for a in weights:
            shape = [1] * vol.ndim
            shape[a] = weights[a].n_out
            inside = inside * (1 - weights[a].fill_weight.reshape(shape))
        if np.any(inside < 1):
            out = out + np.float32(fill) * (1 - inside)
    return out.astype(np.float32, copy=False)


def _class_fraction(mask: np.ndarray, weights: dict[int, AxisWeights]
                    ) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """resample(mask) computed only over the class's bounding box (a ROI is usually a
    small part of the volume): (the output region, its fractions); zero elsewhere.
    None when the class reaches no output voxel."""
    src_sl, out_sl, sub = [], [], {}
    for a in range(mask.ndim):
        proj = mask.any(axis=tuple(b for b in range(mask.ndim) if b != a))
        nz = np.flatnonzero(proj)
        if nz.size == 0:
            return None
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        src_sl.append(slice(lo, hi))
        if a not in weights:
            out_sl.append(slice(lo, hi))
            continue
        w = weights[a]
        reads = (w.index >= lo) & (w.index < hi) & (w.weight != 0)
        rows = np.flatnonzero(reads.any(axis=1))
        if rows.size == 0:
            return None
        o0, o1 = int(rows[0]), int(rows[-1]) + 1
        out_sl.append(slice(o0, o1))
        # taps outside the box read voxels without the class: weight 0
        sub[a] = AxisWeights(np.clip(w.index[o0:o1] - lo, 0, hi - lo - 1),
                             np.where(reads[o0:o1], w.weight[o0:o1], 0).astype(np.float32),
                             np.zeros(o1 - o0, np.float32))
    return tuple(out_sl), resample(mask[tuple(src_sl)].astype(np.float32), sub, 0.0)


def resample_labels(labels: np.ndarray, weights: dict[int, AxisWeights]) -> np.ndarray:
    """Exclusive labels (uint8, 0 = complement) through the same weights, as fractions
    (module docstring): the ROI with the largest fraction wins when it is ≥ the
    complement's; outside the source everything is complement."""
    labels = np.asarray(labels, dtype=np.uint8)
    classes = np.flatnonzero(np.bincount(labels.ravel(), minlength=1)[1:]) + 1
    shape = tuple(weights[a].n_out if a in weights else labels.shape[a] for a in range(labels.ndim))
    out = np.zeros(shape, np.uint8)
    best = np.zeros(shape, np.float32)
    total = np.zeros(shape, np.float32)
    for c in classes:  # ascending, strict ">": of equal fractions the earlier class stays
        got = _class_fraction(labels == c, weights)
        if got is None:
            continue
        region, frac = got
        total[region] += frac
        win = frac > best[region]
        np.copyto(out[region], np.uint8(c), where=win)
        np.copyto(best[region], frac, where=win)
    # ties with the complement (0.5 / 0.5, up to float32 rounding) go to the ROI
    total -= np.float32(1.0)  # = −complement
    lose = best < -total - np.float32(1e-6)
    lose |= best <= np.float32(1e-6)
    np.copyto(out, np.uint8(0), where=lose)
    return out
