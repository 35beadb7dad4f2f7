"""Write CT image series and RT Structure Sets as DICOM files (pydicom).

Used by the synthetic cohort (training/dicom/phantom.py) and by the export of generated images.

Conventions:
- arrays are (z, y, x) = (slice k, row i, column j), in Hounsfield units (HU);
- geometry is a `VolumeGeometry` in DICOM patient coordinates (LPS, mm); slice k of the
  array is written at `geometry.ipp[k]`, InstanceNumber k + 1;
- pixel storage: uncompressed, Explicit VR Little Endian, signed int16
  (PixelRepresentation 1), RescaleSlope 1, RescaleIntercept -1024, so
  stored = round(HU) + 1024 and HU = stored - 1024 (quantisation step 1 HU; HU outside
  [-33792, 31743] is clipped);
- RTSTRUCT contours are given as fractional (row, col) pixel coordinates on slice k and
  written in patient mm via `geometry.voxel_to_patient`.

Every file is written atomically: a temporary file in the target folder, flushed and
fsynced, then `os.replace`d onto its name.

Privacy: patient name / ID / birth date are written only into the DICOM files asked
for; nothing here logs them.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    generate_uid,
)
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from training.atomic import atomic_write
from training.dicom.geometry import VolumeGeometry

RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
HU_MIN = -32768 + RESCALE_INTERCEPT  # smallest HU representable (-33792)
HU_MAX = 32767 + RESCALE_INTERCEPT  # largest HU representable (31743)

# Study Component Management SOP Class: the customary ReferencedSOPClassUID of an
# RTReferencedStudySequence item (the study itself is referenced by its StudyInstanceUID).
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
IMPLEMENTATION_VERSION = "CTVAE_010"
MANUFACTURER = "ct-vae-explorer"

# Contour of one ROI on one slice: (slice index k, (n, 2) array of (row, col) pixels).
Contour = tuple[int, np.ndarray]

DEFAULT_COLOURS: dict[str, tuple[int, int, int]] = {
    "body": (128, 174, 128),
    "external": (128, 174, 128),
    "lung-left": (0, 151, 206),
    "lung-right": (0, 110, 200),
    "heart": (206, 110, 84),
    "spinal-cord": (255, 255, 0),
    "spine": (241, 214, 145),
}
_FALLBACK_COLOURS = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
]


def new_uid() -> str:
    """A fresh, globally unique DICOM UID (pydicom's root)."""
    return generate_uid()


@dataclass(frozen=True)
class WrittenSeries:
    """What `write_ct_series` wrote; enough to reference it from an RTSTRUCT.

    `paths[k]` holds slice k of the array, at `geometry.ipp[k]` with SOPInstanceUID
    `geometry.sop_uids[k]`. The patient fields are kept in memory only so that an
    RTSTRUCT written for the series carries the same patient module; never log them.
    """

    paths: list[Path]
    geometry: VolumeGeometry
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    patient_name: str = "Anonymous"
    patient_id: str = "ANON"
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    accession_number: str = ""

    @property
    def out_dir(self) -> Path:
        return self.paths[0].parent if self.paths else Path(".")


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    v = float(value)
    if v == 0.0:
        return "0"
    return format_number_as_ds(v)


def _ds_list(values: Iterable[float]) -> list[str]:
    return [_ds(v) for v in values]


_CONTOUR_DATA = Tag(0x3006, 0x0050)


def _raw_ds_element(tag: Tag, values: np.ndarray) -> RawDataElement:
    """A DS multi-value as an already-encoded element.

    pydicom converts and validates each DS value on assignment (~20 µs a number), which
    made ContourData the bulk of the phantom's run time; encoding it ourselves (fixed
    6 decimals, <= 16 characters for |v| < 1e8 mm) and keeping it raw is ~10x faster.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size and np.all(np.isfinite(v)) and np.abs(v).max() < 1e8:
        data = ("\\".join(["%.6f"] * v.size) % tuple(v.tolist())).encode("ascii")
    else:
        data = "\\".join(format_number_as_ds(float(x)) for x in v).encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(tag, "DS", len(data), data, 0, False, True)


def _keep_raw(ds: Dataset) -> None:
    """Declare every dataset in the tree as already Explicit VR Little Endian so that
    pydicom writes raw elements as they are instead of decoding them again."""
    ds.set_original_encoding(False, True, getattr(ds, "_character_set", "iso8859"))
    for elem in ds.values():
        if getattr(elem, "VR", None) == "SQ" and not elem.is_raw:
            for item in elem.value:
                _keep_raw(item)


def _atomic_save(ds: FileDataset, path: Path, fsync: bool = True) -> None:
    atomic_write(path, lambda f: ds.save_as(f, enforce_file_format=True), fsync=fsync)


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _new_file_dataset(path: Path, sop_class: str, sop_uid: str) -> FileDataset:
    ds = FileDataset(str(path), {}, file_meta=_file_meta(sop_class, sop_uid), preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def default_geometry(
    shape: tuple[int, int, int],
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_spacing: float = 1.0,
    origin: Sequence[float] | None = None,
) -> VolumeGeometry:
    """Standard axial geometry (IOP 1,0,0,0,1,0; head-first supine), slices ascending in z.

    `origin` is the ImagePositionPatient of slice 0 (mm); by default the in-plane centre
    of the image sits at x = y = 0 and slice 0 at z = 0.
    """
    nz, ny, nx = (int(s) for s in shape)
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    if origin is None:
        origin = (-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, 0.0)
    o = np.asarray(origin, dtype=np.float64)
    ipp = o + np.outer(np.arange(nz) * float(slice_spacing), [0.0, 0.0, 1.0])
    return VolumeGeometry(
        ipp=ipp,
        row_dir=np.array([1.0, 0.0, 0.0]),
        col_dir=np.array([0.0, 1.0, 0.0]),
        pixel_spacing=(dy, dx),
        shape=(nz, ny, nx),
    )


def hu_to_stored(hu: np.ndarray) -> np.ndarray:
    """HU -> stored int16 values: round, NaN -> -1000 (air), clip to [HU_MIN, HU_MAX]."""
    a = np.asarray(hu)
    if not np.issubdtype(a.dtype, np.integer):
        a = np.rint(np.nan_to_num(a.astype(np.float64), nan=-1000.0))
    a = np.clip(a, HU_MIN, HU_MAX)
    return (a - RESCALE_INTERCEPT).astype(np.int16)


def write_ct_series(
    hu: np.ndarray,
    geometry: VolumeGeometry | None,
    out_dir: str | os.PathLike,
    *,
    patient_name: str = "Anonymous",
    patient_id: str = "ANON",
    patient_birth_date: str = "",
    patient_sex: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "",
    study_description: str = "",
    series_number: int = 1,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_spacing: float = 1.0,
    slice_thickness: float | None = None,
    window: tuple[float, float] = (40.0, 400.0),
    image_type: Sequence[str] = ("DERIVED", "SECONDARY", "AXIAL"),
    file_prefix: str = "CT",
    extra: Mapping[str, Any] | None = None,
    fsync: bool = True,
) -> WrittenSeries:
    """Write `hu` (z, y, x), in HU, as one CT Image Storage file per slice in `out_dir`.

    geometry: where each slice lies (LPS, mm); its shape must equal `hu.shape`. With None,
        `default_geometry(hu.shape, pixel_spacing, slice_spacing)` is used.
    UIDs: study / series / frame-of-reference UIDs are new unless given (the geometry's
        own frame_of_reference_uid is NOT reused, so exports never link to a source
        patient by accident); SOP Instance UIDs are always new.
    slice_thickness: SliceThickness in mm; default the geometry's slice spacing.
    window: (WindowCenter, WindowWidth) in HU.
    extra: further attributes by keyword (e.g. {"PatientSex": "O"}), set on every slice
        after the standard ones.
    Files are named f"{file_prefix}_{k + 1:04d}.dcm"; k follows the geometry's order.

    Returns a `WrittenSeries` whose geometry has the UIDs filled in.
    """
    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3:
        raise ValueError(f"write_ct_series: expected a (z, y, x) array, got shape {hu.shape}")
    if geometry is None:
        geometry = default_geometry(hu.shape, pixel_spacing, slice_spacing)  # type: ignore[arg-type]
    if tuple(geometry.shape) != tuple(hu.shape):
        raise ValueError(f"write_ct_series: array shape {hu.shape} differs from geometry shape {geometry.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    for_uid = frame_of_reference_uid or new_uid()
    nz, ny, nx = hu.shape
    sop_uids = tuple(new_uid() for _ in range(nz))
    spacing_between = geometry.slice_spacing if nz > 1 else (slice_thickness or slice_spacing)
    thickness = float(slice_thickness) if slice_thickness is not None else float(spacing_between)
    normal = geometry.normal
    stored = hu_to_stored(hu)

    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    iop = _ds_list(list(geometry.row_dir) + list(geometry.col_dir))
    ps = _ds_list(geometry.pixel_spacing)

    paths: list[Path] = []
    for k in range(nz):
        path = out / f"{file_prefix}_{k + 1:04d}.dcm"
        ds = _new_file_dataset(path, CTImageStorage, sop_uids[k])
        ds.ImageType = list(image_type)
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        # patient
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = patient_birth_date
        ds.PatientSex = patient_sex
        # study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = date, time
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.StudyDescription = study_description
        # series / equipment
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(series_number)
        ds.SeriesDescription = series_description
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.PatientPosition = "HFS"
        ds.Manufacturer = MANUFACTURER
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        # image plane
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = _ds_list(geometry.ipp[k])
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = ps
        ds.SliceThickness = _ds(thickness)
        ds.SpacingBetweenSlices = _ds(spacing_between)
        ds.SliceLocation = _ds(float(geometry.ipp[k] @ normal))
        ds.KVP = "120"
        # image pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(ny), int(nx)
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
        ds.RescaleSlope = _ds(RESCALE_SLOPE)
        ds.RescaleType = "HU"
        ds.WindowCenter = _ds(window[0])
        ds.WindowWidth = _ds(window[1])
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        _atomic_save(ds, path, fsync=fsync)
        paths.append(path)

    used = replace(geometry, frame_of_reference_uid=for_uid, sop_uids=sop_uids)
    return WrittenSeries(
        paths=paths,
        geometry=used,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=for_uid,
        patient_name=patient_name,
        patient_id=patient_id,
        patient_birth_date=patient_birth_date,
        patient_sex=patient_sex,
        study_date=date,
        study_time=time,
        study_id="1",
    )


def masks_to_contours(mask_2d: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """Closed contours of a boolean (y, x) mask as (n, 2) arrays of (row, col) pixels.

    Contours follow the 0.5 iso-line between voxel centres (skimage.measure.find_contours
    on the zero-padded mask), so every voxel centre inside the mask lies inside a contour
    and every centre outside lies outside; holes come back as separate contours (combine
    by even-odd parity). The repeated closing point is dropped. `tolerance` > 0 (pixels)
    simplifies with skimage.measure.approximate_polygon.
    """
    # Not `from skimage.measure import ...approximate_polygon`: it pulls in scipy.signal
    # (seconds of import time) and is only needed when simplifying.
    from skimage.measure import find_contours

    m = np.asarray(mask_2d, dtype=bool)
    if not m.any():
        return []
    # Crop to the mask's bounding box (+1 px of background) so small ROIs are cheap.
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    r0, c0 = rows[0], cols[0]
    padded = np.pad(m[r0 : rows[-1] + 1, c0 : cols[-1] + 1], 1).astype(np.float32)
    out = []
    for c in find_contours(padded, 0.5):
        c = c + np.array([r0 - 1.0, c0 - 1.0])  # back to the full image's pixels
        if tolerance > 0:
            from skimage.measure import approximate_polygon

            c = approximate_polygon(c, tolerance)
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            out.append(np.ascontiguousarray(c, dtype=np.float64))
    return out


def masks_to_rois(masks: Mapping[str, np.ndarray], tolerance: float = 0.0) -> dict[str, list[Contour]]:
    """Boolean (z, y, x) masks -> ROI contours {name: [(k, (n, 2) (row, col)), ...]}."""
    rois: dict[str, list[Contour]] = {}
    for name, mask in masks.items():
        m = np.asarray(mask, dtype=bool)
        if m.ndim == 2:
            m = m[None]
        rois[name] = [(k, c) for k in range(m.shape[0]) for c in masks_to_contours(m[k], tolerance)]
    return rois


def _colour(name: str, index: int, colours: Mapping[str, Sequence[int]] | None) -> list[int]:
    if colours and name in colours:
        return [int(v) for v in colours[name]]
    key = name.lower()
    if key in DEFAULT_COLOURS:
        return list(DEFAULT_COLOURS[key])
    return list(_FALLBACK_COLOURS[index % len(_FALLBACK_COLOURS)])


def _interpreted_type(name: str, types: Mapping[str, str] | None) -> str:
    if types and name in types:
        return types[name]
    return "EXTERNAL" if name.lower() in ("body", "external", "outline") else "ORGAN"


def _image_ref(sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def write_rtstruct(
    path: str | os.PathLike,
    series: WrittenSeries,
    rois: Mapping[str, Sequence[Contour]],
    *,
    colours: Mapping[str, Sequence[int]] | None = None,
    interpreted_types: Mapping[str, str] | None = None,
    label: str = "ct-vae",
    series_description: str = "",
    series_number: int = 2,
    series_uid: str | None = None,
    generation_algorithm: str = "AUTOMATIC",
    fsync: bool = True,
) -> Path:
    """Write an RT Structure Set for a CT series written by `write_ct_series`.

    rois: {ROI name: [(k, points), ...]} where points is an (n >= 3, 2) array of
        fractional (row, col) pixel coordinates on slice k of `series.geometry`; each
        becomes a CLOSED_PLANAR contour in patient mm (LPS) referencing slice k's SOP
        Instance UID. ROI numbers are 1, 2, ... in the order of `rois`.
    colours: ROIDisplayColor per name (RGB 0..255); defaults by name, else a palette.
    interpreted_types: RTROIInterpretedType per name; default EXTERNAL for Body, else ORGAN.

    Returns the path written (atomically).
    """
    path = Path(path)
    g = series.geometry
    if len(g.sop_uids) != g.shape[0]:
        raise ValueError("write_rtstruct: the series geometry has no SOP Instance UIDs per slice")
    sop_uid = new_uid()
    ds = _new_file_dataset(path, RTStructureSetStorage, sop_uid)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.PatientName = series.patient_name
    ds.PatientID = series.patient_id
    ds.PatientBirthDate = series.patient_birth_date
    ds.PatientSex = series.patient_sex
    ds.StudyInstanceUID = series.study_uid
    ds.StudyDate, ds.StudyTime = series.study_date or date, series.study_time or time
    ds.ReferringPhysicianName = ""
    ds.StudyID = series.study_id
    ds.AccessionNumber = series.accession_number
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description
    ds.Manufacturer = MANUFACTURER
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time

    # Frame of reference -> study -> series -> every CT image of the series.
    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_uid
    rt_series.ContourImageSequence = DicomSequence([_image_ref(u) for u in g.sop_uids])
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    rt_study.ReferencedSOPInstanceUID = series.study_uid
    rt_study.RTReferencedSeriesSequence = DicomSequence([rt_series])
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = series.frame_of_reference_uid
    ref_for.RTReferencedStudySequence = DicomSequence([rt_study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref_for])

    ss_rois, roi_contours, observations = [], [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        item.ROIName = name
        item.ROIGenerationAlgorithm = generation_algorithm
        ss_rois.append(item)

        rc = Dataset()
        rc.ROIDisplayColor = _colour(name, number - 1, colours)
        rc.ReferencedROINumber = number
        seq = []
        for n_contour, (k, pts) in enumerate(contours, start=1):
            pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
            k = int(k)
            if not 0 <= k < g.shape[0]:
                raise ValueError(
                    f"write_rtstruct: ROI {name!r} has a contour on slice {k}, outside 0..{g.shape[0] - 1}"
                )
            if len(pts) < 3:
                continue
            kij = np.column_stack([np.full(len(pts), float(k)), pts[:, 0], pts[:, 1]])
            xyz = g.voxel_to_patient(kij)
            c = Dataset()
            c.ContourImageSequence = DicomSequence([_image_ref(g.sop_uids[k])])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourNumber = n_contour
            c[_CONTOUR_DATA] = _raw_ds_element(_CONTOUR_DATA, xyz)
            seq.append(c)
        if seq:
            rc.ContourSequence = DicomSequence(seq)
        roi_contours.append(rc)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = name[:16]
        obs.RTROIInterpretedType = _interpreted_type(name, interpreted_types)
        obs.ROIInterpreter = ""
        observations.append(obs)

    ds.StructureSetROISequence = DicomSequence(ss_rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    _keep_raw(ds)
    _atomic_save(ds, path, fsync=fsync)
    return path
