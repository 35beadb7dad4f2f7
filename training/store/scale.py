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

The z step reported for the stored images (`output_spacing`'s z_mm, `z_step`) comes from
where those images really lie (training.store.preprocess.output_positions of the
series' slice positions), never from the series' one median slice spacing:
- z_spacing set: z_spacing (a uniform grid, 2D and 3D);
- 3D without z_spacing: the cube's D planes evenly span the first selected slice to the
  last, so (z_last − z_first)/(D − 1): with uneven source gaps this is not the median gap
  times anything (a head CT with 1.08–7.0 mm gaps, 144.1 mm over 28 slices, cut to a
  16-deep cube: 144.1/15 = 9.61 mm, where the median gap gave 7.20);
- 2D without z_spacing: the selected slices at their acquired positions. Evenly spaced
  (all gaps within max(0.01 mm, 1 % of the median), the ingest's test for "uneven slice
  spacing"): the step (z_last − z_first)/(n − 1). Uneven: there is no single spacing;
  z_mm is the median gap, flagged z_even False with the smallest and largest gap in
  z_range_mm, and each image's own z (output_positions) is what distances and DICOM
  exports use.
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


def z_step(z) -> dict:
    """The step between stored images at z (mm, ascending; `output_positions`):
    {"z_mm": step or None, "z_range_mm": (smallest gap, largest gap) or None,
    "z_even": bool or None}.

    Evenly spaced (every gap within max(0.01 mm, 1 % of the median gap) of the others, as
    the ingest's "uneven slice spacing" warning decides): z_mm = (z_last − z_first)/(n − 1).
    Uneven (a 2D stack of unevenly acquired slices): no single spacing exists; z_mm is the
    median gap and z_even False, z_range_mm says how far the gaps spread. Fewer than two
    images, or images all at one z (one source slice repeated through a cube): all None."""
    z = np.asarray(z, dtype=np.float64).ravel()
    if len(z) < 2 or not z[-1] - z[0] > 0:
        return {"z_mm": None, "z_range_mm": None, "z_even": None}
    gaps = np.diff(z)
    med = float(np.median(gaps))
    lo, hi = float(gaps.min()), float(gaps.max())
    even = hi - lo <= max(0.01, 0.01 * abs(med))
    step = float(z[-1] - z[0]) / (len(z) - 1) if even else med
    return {"z_mm": step, "z_range_mm": (lo, hi), "z_even": bool(even)}


def image_z(cfg: PreprocessConfig, positions, depth: int) -> np.ndarray:
    """z (mm) of each image preprocessing stores from a series with these slice positions
    (ascending mm, or a VolumeGeometry): 3D the `depth` cube planes, 2D every selected
    slice (on the z grid with z_spacing). training.store.preprocess.output_positions,
    with the 2D image count worked out here."""
    from training.store.preprocess import output_positions, select_slices

    if hasattr(positions, "positions"):
        positions = positions.positions
    pos = np.asarray(positions, dtype=np.float64)
    if cfg.mode == "3d":
        n = int(depth)
    else:
        base = z_grid(pos, cfg.z_spacing) if cfg.z_spacing is not None else pos
        n = len(select_slices(base, cfg))
    return output_positions(pos, cfg, n)


def output_spacing(cfg: PreprocessConfig, spacing: Sequence[float],
                   shape: Sequence[int] | None, positions=None) -> dict:
    """What a series of source spacing (dz, dy, dx) mm and shape (z, y, x) becomes:
    {"pixel_mm": (sy, sx), "pixels": (ny, nx), "fov_mm": (fy, fx), "z_mm": step or None,
    "z_range_mm": (smallest, largest gap) or None, "z_even": bool or None}.

    positions: the series' slice positions (mm along the normal, ascending) or its
    VolumeGeometry. With them the z step is that of the images really stored (`z_step`
    of `image_z`; module docstring): 3D (z_last − z_first)/(D − 1) of the cube's planes,
    2D the acquired step, or for uneven slices the median gap with z_even False.
    Without them (no source geometry) the old estimate from the median spacing dz: 3D
    with all slices dz·(nz − 1)/(D − 1), which is exact only for evenly spaced slices,
    else None; z_even and z_range_mm are None (not known). With z_spacing: z_spacing."""
    dz, dy, dx = (float(v) for v in spacing)
    h, w = (int(shape[1]), int(shape[2])) if shape else (0, 0)
    grid = inplane_grid(cfg, (dy, dx), (h, w))
    if grid is None:
        n = (cfg.crop, cfg.crop) if cfg.crop else (h, w)
        grid = InplaneGrid((dy, dx), (int(n[0]), int(n[1])))
    fov = grid.fov
    px, pix = grid.spacing, grid.shape
    depth = int(cfg.depth or cfg.size or pix[1])  # preprocess.output_depth of this grid
    if cfg.size and pix != (cfg.size, cfg.size):
        pix = (cfg.size, cfg.size)
        px = (fov[0] / cfg.size, fov[1] / cfg.size)
    z: dict = {"z_mm": None, "z_range_mm": None, "z_even": None}
    if cfg.z_spacing is not None:
        z_mm = float(cfg.z_spacing)
        z = {"z_mm": z_mm, "z_range_mm": (z_mm, z_mm), "z_even": True}
    elif positions is not None:
        try:
            z = z_step(image_z(cfg, positions, depth))
        except ValueError:  # nothing selected: no stored images to measure
            pass
    elif cfg.mode == "3d" and shape and cfg.slices == "all":
        # no positions: the cube spans the whole extent, estimated from the median dz
        z["z_mm"] = dz * (int(shape[0]) - 1) / max(depth - 1, 1)
    return {"pixel_mm": px, "pixels": pix, "fov_mm": fov, **z}


class _WithPositions:
    """A workspace entry (PatientInfo) that also carries its source slice positions."""

    __slots__ = ("_info", "positions")

    def __init__(self, info, positions) -> None:
        self._info = info
        self.positions = positions

    def __getattr__(self, name):
        if name == "_info":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._info, name)


def series_with_positions(ws) -> list:
    """The workspace's entries (PatientInfo, every attribute kept) each with
    `.positions`: its source series' slice positions in mm (None where the workspace keeps
    no source geometry), for scale_summary / scale_warnings to report the real z step."""
    out = []
    for i, p in enumerate(ws.patients):
        try:
            geometry = ws.source_geometry(i)
            pos = None if geometry is None else np.asarray(geometry.positions, np.float64)
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            pos = None
        out.append(_WithPositions(p, pos))
    return out


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
    PatientInfo), and optionally .positions (source slice positions in mm,
    `series_with_positions`) for the real z step. In-plane: mixed pixel spacings without
    `spacing` (or fov with size); 3D: mixed cube plane steps without `z_spacing`."""
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
        zs = [output_spacing(cfg, p.spacing, p.source_shape, getattr(p, "positions", None))["z_mm"]
              for p in rows]
        zs = [z for z in zs if z]
        if zs and not math.isclose(min(zs), max(zs), rel_tol=0.02):
            out.append(f"3D cubes stretch each series along z by a different factor (voxels "
                       f"{_span(zs)} tall); set a z spacing (mm) for one physical scale.")
    return out


def scale_summary(cfg: PreprocessConfig, patients: Sequence) -> dict:
    """Per series: its own pixel spacing and field of view, and the training images'
    pixel spacing, field of view and z step under `cfg` (mm); plus scale_warnings. Plain
    data for `ct-vae info` (--json) and the Data tab.

    patients as scale_warnings (give .positions, `series_with_positions`, for the z step
    of the images really stored). image_z_mm: the step between stored images
    (`output_spacing`); image_z_even: False for a 2D stack of unevenly spaced slices
    (then image_z_mm is the median gap and image_z_range_mm the smallest and largest),
    None where the positions are not known; slice_mm: the source's median gap."""
    rows = []
    for p in patients:
        sp = tuple(float(v) for v in p.spacing)
        shape = tuple(p.source_shape) if p.source_shape else None
        out = output_spacing(cfg, sp, shape, getattr(p, "positions", None))
        src = source_fov(sp, shape)
        zr = out["z_range_mm"]
        rows.append({
            "series": p.pseudonym,
            "pixel_mm": [sp[1], sp[2]],
            "slice_mm": sp[0],
            "fov_mm": list(src) if src else None,
            "image_pixel_mm": [round(v, 4) for v in out["pixel_mm"]],
            "image_fov_mm": [round(v, 2) for v in out["fov_mm"]] if shape or cfg.fov else None,
            "image_z_mm": None if out["z_mm"] is None else round(out["z_mm"], 4),
            "image_z_range_mm": None if zr is None else [round(v, 4) for v in zr],
            "image_z_even": out["z_even"],
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
