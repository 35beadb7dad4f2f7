"""Export generated images and volumes: PNG, .npy, DICOM CT + RTSTRUCT (SPEC F24).

Generated CT is windowed [0, 1]; the window is undone for DICOM: HU = hu_min + x·(hu_max −
hu_min) with the workspace's PreprocessConfig window (values the decoder puts at 0 or 1
become the window limits — the clipped HU outside the window cannot be recovered).

Geometry: arrays are (z, y, x) as DICOM axial slices, rows anterior → posterior and
columns patient right → left (ImageOrientationPatient 1,0,0,0,1,0, the same orientation
the ingest stores), slices ascending in z (inferior → superior). Voxel spacing comes from
the preprocessing (`output_spacing`): cropping keeps the source pixel spacing, resizing
scales it, 3D depth interpolation stretches the slice spacing.

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
                   image_shape: Sequence[int] | None = None) -> tuple[float, float, float]:
    """(dz, dy, dx) in mm of a preprocessed image, from the source spacing and the settings.

    In-plane: crop keeps the spacing; `size` resamples crop (or the source extent) to size
    pixels, so spacing × extent / size. Depth (3D): the chosen slices (slice_count for
    "around", the range length for "range", all source slices for "all") interpolated to
    the volume's depth D from the first chosen slice's centre to the last's
    (`training.store.preprocess.to_cube`), so dz × (n_chosen − 1) / (D − 1). 2D slices keep the
    source dz.
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
    if preprocess.mode == "3d" and image_shape is not None and len(image_shape) == 3:
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


def workspace_spacing(workspace, patient: int | None = None) -> tuple[float, float, float]:
    """Spacing of the preprocessed arrays of `patient` (default: the median over patients)."""
    pats = workspace.patients if patient is None else [workspace.patients[patient]]
    sp = [output_spacing(workspace.preprocess, p.spacing, p.source_shape, workspace.image_shape) for p in pats]
    return tuple(float(v) for v in np.median(np.asarray(sp, dtype=np.float64), axis=0)) if sp else (1.0, 1.0, 1.0)


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
) -> DicomExport:
    """Write a generated image (y, x) or volume (z, y, x) in [0, 1] as a DICOM CT series.

    hu_window: (hu_min, hu_max) of the preprocessing window; spacing: (dz, dy, dx) mm
    (`output_spacing` / `workspace_spacing`); labels: uint8 like ct (0 = complement,
    k = roi_names[k-1]) written as an RTSTRUCT (`rtstruct=True`, classes without any
    voxel are left out; with no voxel of any ROI no RTSTRUCT is written and `notes` says
    so) and always as a label array beside the series folder (`labels_path_for`). Files:
    out_dir/CT_0001.dcm …, out_dir/RS.dcm, and <out_dir>_labels.npy next to out_dir.
    `notes` also states that HU outside the training window cannot be restored.
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
    hu = np.rint(window_to_hu(ct, *hu_window))
    series = write_ct_series(
        hu,
        None,
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
    notes = [window_note(hu_window)]
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
) -> dict[str, list[Path]]:
    """Export N generated images (N, H, W) or volumes (N, D, H, W) in every format asked.

    DICOM: each generated image or volume is its own synthetic patient (one series each,
    in out_dir/dicom/{prefix}_{i:03d}), because neighbouring samples are not neighbouring
    slices of one body. PNG: one file per image (the middle
    slice of a volume) and a grid; npy: {prefix}_ct.npy (and _labels.npy) of all.
    notes: a list that receives what the DICOM files' reader should know (each once).
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
    "GENERATED_DESCRIPTION",
]
