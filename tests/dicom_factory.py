"""Hand-built CT slices with chosen geometry and tags, for tests.

    write_ct_slice(path, pixels, ipp=(x, y, z), ...)        one file
    write_ct_series(folder, stored, origin=..., ...)        a stack; returns SeriesSpec

Geometry follows DICOM: pixel (i, j) of a slice lies at ipp + j·dx·row_dir + i·dy·col_dir
(mm, LPS); iop = row_dir + col_dir; pixel_spacing = (dy, dx). Stored values are int16
(PixelRepresentation 1) unless the array is uint16; HU = stored × slope + intercept.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_ct_slice(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    ipp=(0.0, 0.0, 0.0),
    iop=AXIAL,
    pixel_spacing=(1.0, 1.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_uid: str = "1.2.826.0.1.3680043.8.498.2",
    for_uid: str = "1.2.826.0.1.3680043.8.498.3",
    sop_uid: str | None = None,
    sop_class: str = CTImageStorage,
    modality: str = "CT",
    instance_number: int | None = None,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    birth_date: str = "19700101",
    series_description: str = "test series",
    slice_thickness: float | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    preamble: bool = True,
    with_pixels: bool = True,
    extra: dict | None = None,
) -> Path:
    """Write one CT image file; returns its path. extra: {keyword: value} set last."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.SeriesDescription = series_description
    ds.SeriesNumber = 1
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = f"{slice_thickness:g}"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0 if pixels.dtype == np.uint16 else 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    stored = pixels.astype(np.uint16 if ds.PixelRepresentation == 0 else np.int16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if transfer_syntax == RLELossless else transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if with_pixels:
        ds.PixelData = stored.tobytes()
        if transfer_syntax == RLELossless:
            ds.compress(RLELossless, stored)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.preamble = b"\0" * 128
        ds.save_as(path, enforce_file_format=True)
    else:
        # A bare data set: no preamble, no file meta, implicit VR little endian.
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


@dataclass
class SeriesSpec:
    """What write_ct_series wrote: files in slice order (ascending along the normal)."""

    paths: list[Path]
    ipp: np.ndarray  # (nz, 3) mm
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_spacing: tuple[float, float]
    stored: np.ndarray  # (nz, ny, nx) as written
    hu: np.ndarray  # float64, stored × slope + intercept
    series_uid: str = ""
    sop_uids: list[str] = field(default_factory=list)


def write_ct_series(
    folder: str | os.PathLike,
    stored: np.ndarray,
    *,
    origin=(-10.0, -20.0, 30.0),
    iop=AXIAL,
    pixel_spacing=(0.8, 0.6),
    slice_spacing: float | None = 2.5,
    positions: list[float] | None = None,
    stack_dir=None,
    names: list[str] | None = None,
    shuffle_names: bool = False,
    reverse_instance_numbers: bool = False,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    seed: int = 0,
    **kw,
) -> SeriesSpec:
    """Write stored (nz, ny, nx) as a series; slice k at origin + positions[k]·stack_dir.

    stack_dir defaults to the normal row_dir × col_dir (tilt it for a gantry tilt);
    positions default to k·slice_spacing. names: file names in slice order (default
    "slice_###.dcm"); shuffle_names permutes them so names do not follow the slices.
    """
    stored = np.asarray(stored)
    nz = stored.shape[0]
    row_dir = np.asarray(iop[:3], dtype=float)
    col_dir = np.asarray(iop[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    d = normal if stack_dir is None else np.asarray(stack_dir, dtype=float)
    pos = np.arange(nz) * slice_spacing if positions is None else np.asarray(positions, float)
    ipp = np.asarray(origin, dtype=float) + np.outer(pos, d)
    names = list(names or [f"slice_{k:03d}.dcm" for k in range(nz)])
    if shuffle_names:
        random.Random(seed).shuffle(names)
    series_uid = series_uid or generate_uid()
    paths, sops = [], []
    for k in range(nz):
        number = nz - k if reverse_instance_numbers else k + 1
        sop = generate_uid()
        p = write_ct_slice(
            Path(folder) / names[k], stored[k], ipp=tuple(ipp[k]), iop=iop,
            pixel_spacing=pixel_spacing, slope=slope, intercept=intercept,
            series_uid=series_uid, sop_uid=sop, instance_number=number, **kw,
        )
        paths.append(p)
        sops.append(sop)
    return SeriesSpec(
        paths=paths, ipp=ipp, row_dir=row_dir, col_dir=col_dir,
        pixel_spacing=tuple(pixel_spacing), stored=stored,
        hu=stored.astype(np.float64) * slope + intercept, series_uid=series_uid, sop_uids=sops,
    )


def ramp_volume(nz: int = 5, ny: int = 12, nx: int = 16, seed: int = 0) -> np.ndarray:
    """Distinct int16 slices (slice k offset by 100·k) so order errors show."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 50, size=(nz, ny, nx))
    return (base + 100 * np.arange(nz)[:, None, None]).astype(np.int16)
