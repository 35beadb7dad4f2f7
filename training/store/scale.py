"""Physical scale: the output grid (mm) a PreprocessConfig asks for, and what it means
for each series (field of view in mm, a warning for a cohort of mixed spacings).

In-plane (PreprocessConfig.spacing / fov / crop / size), for a series of pixel spacing
(dy, dx) mm and H × W pixels:
- output pixel spacing s: `spacing`; else fov / size when both are set; else the series'
  own (dy, dx) (no resampling);
- output pixels N: round(fov / s) with `fov`; else `crop` (pixels of the output grid);
  else the whole slice, round(H·dy / s) × round(W·dx / s);
- the output grid is centred on the slice's centre ((H − 1)/2, (W − 1)/2 in pixels, the
  centre crop's centre), and a `size` different from N resizes afterwards (as before).
A config with neither `spacing` nor `fov` keeps the pixel chain (centre crop, then
resize) exactly as it was.

Along z (PreprocessConfig.z_spacing): a uniform grid of that spacing centred on the
series' extent, from its real slice positions; slice selection ("around", "range")
then counts slices of that grid. 3D takes `depth` (else the in-plane edge) samples
centred on the selected slices: every cube is depth × z_spacing mm tall.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.config import PreprocessConfig


@dataclass(frozen=True)
class InplaneGrid:
    """The output grid before any `size` resize: pixel spacing (sy, sx) mm, (ny, nx) pixels."""

    spacing: tuple[float, float]
    shape: tuple[int, int]

    @property
    def fov(self) -> tuple[float, float]:
        return (self.shape[0] * self.spacing[0], self.shape[1] * self.spacing[1])


def inplane_grid(cfg: PreprocessConfig, pixel_spacing: Sequence[float],
                 shape_yx: Sequence[int]) -> InplaneGrid | None:
    """The resampling grid of a config in mm; None for a pixel-based config (no spacing,
    no fov), whose chain is the centre crop and resize."""
    if cfg.spacing is None and cfg.fov is None:
        return None
    dy, dx = (float(v) for v in pixel_spacing)
    h, w = (int(v) for v in shape_yx)
    if cfg.spacing is not None:
        sy = sx = float(cfg.spacing)
    elif cfg.fov is not None and cfg.size:
        sy = sx = float(cfg.fov) / cfg.size
    else:
        sy, sx = dy, dx
    if cfg.fov is not None:
        ny, nx = max(1, round(cfg.fov / sy)), max(1, round(cfg.fov / sx))
    elif cfg.crop:
        ny = nx = int(cfg.crop)
    else:
        ny, nx = max(1, round(h * dy / sy)), max(1, round(w * dx / sx))
    return InplaneGrid((sy, sx), (ny, nx))


def inplane_positions(grid: InplaneGrid, pixel_spacing: Sequence[float], shape_yx: Sequence[int]
                      ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((source y, output y), (source x, output x)) sample positions in mm, measured from
    the first source pixel's centre; the output grid is centred on the slice's centre."""
    out = []
    for n, d, m, s in zip(shape_yx, pixel_spacing, grid.shape, grid.spacing):
        src = np.arange(int(n), dtype=np.float64) * float(d)
        centre = (int(n) - 1) * float(d) / 2
        out.append((src, centre + (np.arange(int(m)) - (int(m) - 1) / 2) * float(s)))
    return out[0], out[1]


def z_grid(positions: np.ndarray, z_spacing: float) -> np.ndarray:
    """A uniform grid (mm) of `z_spacing`, centred on the series' extent, no wider than it."""
    p = np.asarray(positions, dtype=np.float64)
    if len(p) == 0:
        raise ValueError("no slices")
    extent = float(p[-1] - p[0])
    n = int(math.floor(extent / z_spacing + 1e-6)) + 1
    centre = (p[0] + p[-1]) / 2
    return centre + (np.arange(n) - (n - 1) / 2) * z_spacing


def output_spacing(cfg: PreprocessConfig, spacing: Sequence[float],
                   shape: Sequence[int] | None) -> dict:
    """What a series of source spacing (dz, dy, dx) mm and shape (z, y, x) becomes:
    {"pixel_mm": (sy, sx), "pixels": (ny, nx), "fov_mm": (fy, fx), "z_mm": dz or None}.
    z_mm is None where slices keep their acquired positions (2D without z_spacing) and,
    in 3D without z_spacing, the mean spacing after stretching the extent to the cube."""
    dz, dy, dx = (float(v) for v in spacing)
    h, w = (int(shape[1]), int(shape[2])) if shape else (0, 0)
    grid = inplane_grid(cfg, (dy, dx), (h, w))
    if grid is None:
        n = (cfg.crop, cfg.crop) if cfg.crop else (h, w)
        grid = InplaneGrid((dy, dx), (int(n[0]), int(n[1])))
    fov = grid.fov
    px, pix = grid.spacing, grid.shape
    if cfg.size and pix != (cfg.size, cfg.size):
        pix = (cfg.size, cfg.size)
        px = (fov[0] / cfg.size, fov[1] / cfg.size)
    z_mm: float | None = None
    if cfg.z_spacing is not None:
        z_mm = float(cfg.z_spacing)
    elif cfg.mode == "3d" and shape:
        depth = int(cfg.depth or cfg.size or pix[1])
        # the cube spans the selected slices; with all slices that is the whole extent
        z_mm = dz * (int(shape[0]) - 1) / max(depth - 1, 1) if cfg.slices == "all" else None
    return {"pixel_mm": px, "pixels": pix, "fov_mm": fov, "z_mm": z_mm}


def source_fov(spacing: Sequence[float], shape: Sequence[int] | None) -> tuple[float, float] | None:
    """A series' own field of view (rows × dy, columns × dx), mm."""
    if not shape or len(shape) < 3:
        return None
    return (int(shape[1]) * float(spacing[1]), int(shape[2]) * float(spacing[2]))


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3g} mm" if math.isclose(lo, hi, rel_tol=1e-3) else f"{lo:.3g}–{hi:.3g} mm"


def scale_warnings(cfg: PreprocessConfig, patients: Sequence) -> list[str]:
    """Warnings for a workspace whose series do not share one physical scale.

    patients: objects with .spacing (dz, dy, dx) mm and .source_shape (workspace
    PatientInfo). In-plane: mixed pixel spacings without `spacing` (or fov with size);
    3D: mixed slice spacings or extents without `z_spacing`."""
    out = []
    rows = [p for p in patients if getattr(p, "spacing", None)]
    inplane = {round(float(p.spacing[k]), 3) for p in rows for k in (1, 2)}
    common = cfg.spacing is not None or (cfg.fov is not None and cfg.size)
    if len(inplane) > 1 and not common:
        fovs = [output_spacing(cfg, p.spacing, p.source_shape)["fov_mm"][1] for p in rows
                if p.source_shape]
        what = f"; the images cover {_span(fovs)} across" if fovs else ""
        out.append(f"the workspace mixes pixel spacings ({_span(sorted(inplane))}) without "
                   f"resampling{what}: the model would learn scale differences. Set a pixel "
                   f"spacing (mm), e.g. 1.0, and a field of view in mm.")
    if cfg.mode == "3d" and cfg.z_spacing is None and len(rows) > 1:
        zs = [output_spacing(cfg, p.spacing, p.source_shape)["z_mm"] for p in rows]
        zs = [z for z in zs if z]
        if zs and not math.isclose(min(zs), max(zs), rel_tol=0.02):
            out.append(f"3D cubes stretch each series along z by a different factor (voxels "
                       f"{_span(zs)} tall); set a z spacing (mm) for one physical scale.")
    return out


def scale_summary(cfg: PreprocessConfig, patients: Sequence) -> dict:
    """Per series: its own pixel spacing and field of view, and the training images'
    pixel spacing and field of view under `cfg` (mm); plus scale_warnings. Plain data for
    `ct-vae info` (--json) and the Data tab."""
    rows = []
    for p in patients:
        sp = tuple(float(v) for v in p.spacing)
        shape = tuple(p.source_shape) if p.source_shape else None
        out = output_spacing(cfg, sp, shape)
        src = source_fov(sp, shape)
        rows.append({
            "series": p.pseudonym,
            "pixel_mm": [sp[1], sp[2]],
            "slice_mm": sp[0],
            "fov_mm": list(src) if src else None,
            "image_pixel_mm": [round(v, 4) for v in out["pixel_mm"]],
            "image_fov_mm": [round(v, 2) for v in out["fov_mm"]] if shape or cfg.fov else None,
            "image_z_mm": None if out["z_mm"] is None else round(out["z_mm"], 4),
        })
    return {"series": rows, "warnings": scale_warnings(cfg, patients)}


def describe_settings(cfg: PreprocessConfig) -> str:
    """The in-plane and z settings in words, e.g. "1 mm pixels, 128 mm field of view"."""
    parts = []
    if cfg.spacing is not None:
        parts.append(f"{cfg.spacing:g} mm pixels")
    elif cfg.fov is not None and cfg.size:
        parts.append(f"{cfg.fov / cfg.size:.3g} mm pixels")
    else:
        parts.append("each series' own pixels")
    if cfg.fov is not None:
        parts.append(f"{cfg.fov:g} mm field of view")
    elif cfg.crop:
        parts.append(f"{cfg.crop} px crop")
    else:
        parts.append("whole slice")
    if cfg.size:
        parts.append(f"resized to {cfg.size} px")
    if cfg.z_spacing is not None:
        parts.append(f"z resampled to {cfg.z_spacing:g} mm")
    return ", ".join(parts)
