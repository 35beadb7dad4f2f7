"""Export generated images and volumes: PNG, .npy, DICOM CT + RTSTRUCT (SPEC F24).

Generated CT is windowed [0, 1]; the window is undone for DICOM: HU = hu_min + x·(hu_max −
hu_min) with the workspace's PreprocessConfig window (values the decoder puts at 0 or 1
become the window limits — the clipped HU outside the window cannot be recovered).

Geometry: arrays are (z, y, x) as DICOM axial slices, rows anterior → posterior and
columns patient right → left (ImageOrientationPatient 1,0,0,0,1,0, the same orientation
the ingest stores), slices ascending in z (inferior → superior). Voxel spacing comes from
the preprocessing (`output_spacing`): cropping keeps the source pixel spacing, resizing
scales it; along z the step of the stored images' real positions
(training.store.scale.z_step): a 3D cube's planes evenly span the first selected source
slice to the last, (z_last − z_first)/(D − 1), whatever the source gaps. A stack whose
slices are not evenly spaced (a 2D patient stack of an unevenly acquired series) is
written with each slice's own z (`export_dicom`'s z_mm), relative to its first slice.

Privacy: exports carry a pseudonymous patient ("CTVAE-GEN-" + random hex by default),
brand-new Study/Series/Frame-of-Reference/SOP UIDs and no birth date; nothing links them to
a source patient.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from training.atomic import atomic_save_npy
from training.images import compose_grid, overlay_labels, write_png

GENERATED_DESCRIPTION = "ct-vae generated (synthetic, not a patient)"


def window_to_hu(x, hu_min: float, hu_max: float) -> np.ndarray:
    """Undo the HU window: [0, 1] → HU = hu_min + x·(hu_max − hu_min), float32 (x clipped to [0, 1])."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return (hu_min + x * (hu_max - hu_min)).astype(np.float32)


def new_pseudonym() -> str:
    """A random pseudonymous patient name/ID for a generated export."""
    return "CTVAE-GEN-" + secrets.token_hex(4).upper()


def output_spacing(preprocess, source_spacing: Sequence[float], source_shape: Sequence[int] | None = None,
                   image_shape: Sequence[int] | None = None, positions=None) -> tuple[float, float, float]:
    """(dz, dy, dx) in mm of a preprocessed image, from the source spacing and the settings.

    In-plane: crop keeps the spacing; `size` resamples crop (or the source extent) to size
    pixels, so spacing × extent / size. Along z, with `positions` (the source series'
    slice positions in mm, ascending, or its VolumeGeometry): the step of the stored
    images' real z (training.store.scale.z_step of image_z): 3D the cube's D planes evenly
    from the first chosen slice to the last (`training.store.preprocess.to_cube`), so
    (z_last − z_first)/(D − 1); 2D the chosen slices' step, or for unevenly spaced slices
    their median gap (no single spacing exists: export such a stack with its real z,
    `export_dicom(z_mm=...)`); z_spacing: z_spacing. Without positions (no source
    geometry) the estimate from the median source spacing dz: 3D dz × (n_chosen − 1)/(D − 1)
    (exact only for evenly spaced slices), 2D dz.
    """
    dz, dy, dx = (float(v) for v in source_spacing)
    if getattr(preprocess, "physical", False):  # settings in mm: training/store/scale.py
        from training.store.scale import output_spacing as grid_spacing

        dy, dx = grid_spacing(preprocess, source_spacing, source_shape)["pixel_mm"]
        if preprocess.z_spacing is not None:  # a uniform z grid, 2D and 3D
            return (float(preprocess.z_spacing), dy, dx)
    elif preprocess.size:
        if preprocess.crop:
            ey = ex = preprocess.crop
        elif source_shape is not None:
            ey, ex = source_shape[-2], source_shape[-1]
        else:
            ey = ex = preprocess.size
        dy *= ey / preprocess.size
        dx *= ex / preprocess.size
    cube = preprocess.mode == "3d" and image_shape is not None and len(image_shape) == 3
    if positions is not None and (cube or preprocess.mode != "3d"):
        from training.store import scale

        try:
            step = scale.z_step(scale.image_z(preprocess, positions, image_shape[0] if cube else 0))["z_mm"]
        except ValueError:  # the settings select nothing of these positions
            step = None
        if step is not None:
            return (step, dy, dx)
    if cube:
        depth = image_shape[0]
        n_src = source_shape[0] if source_shape is not None else depth
        if preprocess.slices == "around":
            n = min(preprocess.slice_count, n_src)
        elif preprocess.slices == "range":
            stop = preprocess.slice_stop if preprocess.slice_stop is not None else n_src
            n = max(1, min(stop, n_src) - preprocess.slice_start)
        else:
            n = n_src
        # to_cube places the D slices evenly from the first chosen slice's centre to the
        # last's: n − 1 source gaps become D − 1 (a single slice is repeated D times)
        dz *= (n - 1) / (depth - 1) if n > 1 and depth > 1 else n / depth
    return (dz, dy, dx)


def _source_positions(workspace, index: int):
    """Entry `index`'s source slice positions (VolumeGeometry), None where not stored."""
    try:
        return workspace.source_geometry(index)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def workspace_spacing(workspace, patient: int | None = None) -> tuple[float, float, float]:
    """Spacing of the preprocessed arrays of `patient` (default: the median over patients),
    z from each entry's real slice positions where the workspace keeps its source
    geometry (`output_spacing`)."""
    idx = range(len(workspace.patients)) if patient is None else [patient]
    sp = [output_spacing(workspace.preprocess, workspace.patients[i].spacing, workspace.patients[i].source_shape,
                         workspace.image_shape, positions=_source_positions(workspace, i)) for i in idx]
    return tuple(float(v) for v in np.median(np.asarray(sp, dtype=np.float64), axis=0)) if sp else (1.0, 1.0, 1.0)


def uneven_note(z_mm) -> str | None:
    """What a reader of a series with unevenly spaced slices at z_mm should know; None when
    the slices are evenly spaced."""
    from training.store.scale import z_step

    st = z_step(z_mm)
    if st["z_even"] is not False:
        return None
    lo, hi = st["z_range_mm"]
    return (f"slices unevenly spaced ({lo:.3g}–{hi:.3g} mm apart): ImagePositionPatient and "
            f"SliceLocation give each slice's real z; SpacingBetweenSlices and SliceThickness "
            f"hold the median gap ({st['z_mm']:.3g} mm)")


# ----------------------------------------------------------------------------- PNG / npy

def export_png(path, image, labels=None, colours=None) -> Path:
    """One [0, 1] image (H, W) as grey PNG, or with `labels` (H, W) as an RGB overlay."""
    img = np.asarray(image)
    return write_png(path, overlay_labels(img, labels, colours) if labels is not None else img)


def export_grid_png(path, images, labels=None, pad: int = 2, colours=None) -> Path:
    """A grid (n, m, H, W) of [0, 1] images (with optional labels (n, m, H, W)) as one PNG."""
    images = np.asarray(images)
    if labels is None:
        return write_png(path, compose_grid(images, pad=pad, pad_value=1.0))
    labels = np.asarray(labels)
    rgb = np.stack(
        [np.stack([overlay_labels(images[r, c], labels[r, c], colours) for c in range(images.shape[1])]) for r in range(images.shape[0])]
    )
    return write_png(path, compose_grid(rgb, pad=pad, pad_value=255))


def filmstrip(images, labels=None, pad: int = 2, colours=None) -> np.ndarray:
    """(steps, H, W) images as one row: (H, steps·W + pads) float, or RGB uint8 with labels."""
    images = np.asarray(images)
    if labels is None:
        return compose_grid(images[None], pad=pad, pad_value=1.0)
    rgb = np.stack([overlay_labels(im, lab, colours) for im, lab in zip(images, np.asarray(labels))])
    return compose_grid(rgb[None], pad=pad, pad_value=255)


def export_npy(path, array) -> Path:
    """Atomically save one array as .npy (no pickling)."""
    return atomic_save_npy(path, array)


# ----------------------------------------------------------------------------- DICOM

@dataclass
class DicomExport:
    """What `export_dicom` wrote. hu: the int-rounded HU volume (z, y, x) that went in."""

    ct_paths: list[Path]
    rtstruct_path: Path | None
    labels_path: Path | None
    series: object  # dicom_write.WrittenSeries
    hu: np.ndarray
    spacing: tuple[float, float, float]
    pseudonym: str
    notes: list[str] = field(default_factory=list)  # what a reader of the files should know


def window_note(hu_window: tuple[float, float]) -> str:
    """Why generated HU are not the patient's: the model only ever saw the window."""
    lo, hi = (float(v) for v in hu_window)
    return (f"HU outside the training window [{lo:g}, {hi:g}] cannot be restored: the model saw values "
            f"clipped to it, so air comes back at {lo:g} HU and dense bone at most {hi:g} HU")


NO_ROI_NOTE = "no RTSTRUCT written: the model predicted no voxel of any ROI (labels .npy still written)"


def labels_path_for(series_dir) -> Path:
    """Where export_dicom puts the label array: beside the series folder, not inside it
    (a DICOM importer given the folder should find DICOM files only)."""
    d = Path(series_dir)
    return d.parent / f"{d.name}_labels.npy"


def export_dicom(
    out_dir,
    ct,
    *,
    hu_window: tuple[float, float],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    labels=None,
    roi_names: Sequence[str] = (),
    rtstruct: bool = True,
    pseudonym: str | None = None,
    description: str = GENERATED_DESCRIPTION,
    z_mm: Sequence[float] | None = None,
) -> DicomExport:
    """Write a generated image (y, x) or volume (z, y, x) in [0, 1] as a DICOM CT series.

    hu_window: (hu_min, hu_max) of the preprocessing window; spacing: (dz, dy, dx) mm
    (`output_spacing` / `workspace_spacing`); labels: uint8 like ct (0 = complement,
    k = roi_names[k-1]) written as an RTSTRUCT (`rtstruct=True`, classes without any
    voxel are left out; with no voxel of any ROI no RTSTRUCT is written and `notes` says
    so) and always as a label array beside the series folder (`labels_path_for`). Files:
    out_dir/CT_0001.dcm …, out_dir/RS.dcm, and <out_dir>_labels.npy next to out_dir.
    `notes` also states that HU outside the training window cannot be restored.
    z_mm: each slice's z in mm (strictly ascending; e.g. the stored images' positions,
    training.store.preprocess.output_positions), written relative to the first slice
    (ImagePositionPatient z and SliceLocation = z − z_mm[0], no source table position);
    `spacing`'s dz is then ignored and the result's dz is the step of z_mm
    (training.store.scale.z_step: the median gap for uneven slices, noted in `notes`).
    Without z_mm slice k lies at k·dz.
    """
    from training.dicom.write import masks_to_rois, write_ct_series, write_rtstruct

    ct = np.asarray(ct)
    if ct.ndim == 2:
        ct = ct[None]
    if ct.ndim != 3:
        raise ValueError(f"export_dicom: expected (y, x) or (z, y, x), got {ct.shape}")
    out = Path(out_dir)
    pseudonym = pseudonym or new_pseudonym()
    dz, dy, dx = (float(v) for v in spacing)
    geometry, uneven = None, None
    if z_mm is not None:
        from training.dicom.write import default_geometry
        from training.store.scale import z_step

        z = np.asarray(z_mm, dtype=np.float64).ravel()
        if len(z) != ct.shape[0]:
            raise ValueError(f"export_dicom: {len(z)} z positions for {ct.shape[0]} slices")
        if len(z) > 1 and np.any(np.diff(z) <= 0):
            raise ValueError("export_dicom: z positions must be strictly ascending")
        step = z_step(z)["z_mm"]
        dz = step if step is not None else dz
        geometry = default_geometry(ct.shape, (dy, dx), dz if dz > 0 else 1.0)
        geometry.ipp[:, 2] = z - z[0]  # relative: nothing ties the export to the source table
        uneven = uneven_note(z)
    hu = np.rint(window_to_hu(ct, *hu_window))
    series = write_ct_series(
        hu,
        geometry,
        out,
        patient_name=pseudonym,
        patient_id=pseudonym,
        series_description=description,
        study_description=description,
        pixel_spacing=(dy, dx),
        slice_spacing=dz if dz > 0 else 1.0,
        window=(0.5 * (hu_window[0] + hu_window[1]), hu_window[1] - hu_window[0]),
    )
    rs_path = lab_path = None
    notes = [window_note(hu_window)] + ([uneven] if uneven else [])
    if labels is not None:
        lab = np.asarray(labels, dtype=np.uint8)
        if lab.ndim == 2:
            lab = lab[None]
        if lab.shape != ct.shape:
            raise ValueError(f"export_dicom: labels {lab.shape} and CT {ct.shape} differ in shape")
        lab_path = export_npy(labels_path_for(out), lab)
        if rtstruct:
            names = list(roi_names) or [f"class-{k}" for k in range(1, int(lab.max()) + 1)]
            masks = {name: lab == k for k, name in enumerate(names, start=1) if (lab == k).any()}
            if masks:
                rs_path = write_rtstruct(out / "RS.dcm", series, masks_to_rois(masks), series_description=description)
            else:
                notes.append(NO_ROI_NOTE)
    return DicomExport(list(series.paths), rs_path, lab_path, series, hu.astype(np.float32), (dz, dy, dx),
                       pseudonym, notes)


def export_generated(
    out_dir,
    images,
    labels=None,
    *,
    preprocess,
    spacing: Sequence[float],
    roi_names: Sequence[str] = (),
    formats: Sequence[str] = ("png", "npy", "dicom"),
    prefix: str = "generated",
    notes: list[str] | None = None,
    z_mm: Sequence[float] | None = None,
) -> dict[str, list[Path]]:
    """Export N generated images (N, H, W) or volumes (N, D, H, W) in every format asked.

    DICOM: each generated image or volume is its own synthetic patient (one series each,
    in out_dir/dicom/{prefix}_{i:03d}), because neighbouring samples are not neighbouring
    slices of one body. PNG: one file per image (the middle
    slice of a volume) and a grid; npy: {prefix}_ct.npy (and _labels.npy) of all.
    notes: a list that receives what the DICOM files' reader should know (each once).
    z_mm: for volumes (N, D, H, W), each of the D slices' z in mm (`export_dicom`), e.g.
    a patient stack's real positions; ignored for single images.
    """
    images = np.asarray(images)
    out = Path(out_dir)
    written: dict[str, list[Path]] = {f: [] for f in formats}
    volumetric = images.ndim == 4
    if "npy" in formats:
        written["npy"].append(export_npy(out / f"{prefix}_ct.npy", images))
        if labels is not None:
            written["npy"].append(export_npy(out / f"{prefix}_labels.npy", np.asarray(labels, np.uint8)))
    if "png" in formats:
        for i, im in enumerate(images):
            lab = None if labels is None else np.asarray(labels[i])
            if volumetric:
                mid = im.shape[0] // 2
                im, lab = im[mid], None if lab is None else lab[mid]
            written["png"].append(export_png(out / f"{prefix}_{i:03d}.png", im, lab))
    if "dicom" in formats:
        for i, im in enumerate(images):
            res = export_dicom(
                out / "dicom" / f"{prefix}_{i:03d}",
                im,
                hu_window=(preprocess.hu_min, preprocess.hu_max),
                spacing=spacing,
                labels=None if labels is None else labels[i],
                roi_names=roi_names,
                z_mm=z_mm if volumetric else None,
            )
            written["dicom"] += res.ct_paths + ([res.rtstruct_path] if res.rtstruct_path else [])
            if notes is not None:
                notes.extend(n for n in res.notes if n not in notes)
    return written


__all__ = [
    "window_to_hu",
    "new_pseudonym",
    "output_spacing",
    "workspace_spacing",
    "export_png",
    "export_grid_png",
    "filmstrip",
    "export_npy",
    "DicomExport",
    "export_dicom",
    "export_generated",
    "labels_path_for",
    "window_note",
    "uneven_note",
    "GENERATED_DESCRIPTION",
]
