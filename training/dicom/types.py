"""Value types of DICOM discovery and CT loading (public through training.dicom).

Everything here is a plain frozen dataclass of str/int/float/tuple so that references
cross process boundaries (pickle, e.g. a ProcessPoolExecutor worker) and hold no open
file. Patient identifiers (PatientID, PatientName, PatientBirthDate) are kept in memory
only for the pseudonym: they (and the free-text SeriesDescription and StructureSetLabel,
where users type names too) are excluded from repr() so logging a reference does not
leak them, and nothing in this module writes them anywhere.

Conventions: lengths in mm, patient coordinates LPS, arrays (z, y, x), intensities HU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.dicom.geometry import VolumeGeometry


class DicomError(Exception):
    """An unusable file or series: str() is "<path>: <reason>"."""

    def __init__(self, path: str, reason: str):
        super().__init__(str(path), reason)  # args keep it picklable
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class Cancelled(Exception):
    """scan() or load_ct_series() stopped because cancel.is_set() became true."""


@dataclass(frozen=True)
class Skipped:
    """A file left out of the result, with the reason in words."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class SliceHeader:
    """What the header scan learnt about one CT image file.

    ipp: ImagePositionPatient (mm, LPS); iop: ImageOrientationPatient (row direction then
    column direction); pixel_spacing: (dy, dx) mm = (between rows, between columns).
    pixel_value_offset/pixel_length: byte offset and length of the PixelData value for
    native (uncompressed) little-endian files, -1 where unknown; they are only trusted
    while the file's size and mtime_ns still match.
    """

    path: str
    size: int
    mtime_ns: int
    sop_instance_uid: str
    instance_number: int | None
    ipp: tuple[float, float, float]
    iop: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    slice_thickness: float | None
    transfer_syntax: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    pixel_value_offset: int = -1
    pixel_length: int = -1
    lossy: bool = False  # LossyImageCompression "01" or a lossy transfer syntax


@dataclass(frozen=True)
class SeriesRef:
    """One CT image series found by scan(): its files and the UIDs that identify it."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    series_description: str = field(repr=False)  # free text: may name the patient
    series_number: int | None
    slices: tuple[SliceHeader, ...] = field(repr=False)  # in file-scan order, not sorted
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    birth_date: str = field(default="", repr=False)
    # Other files with the SOPInstanceUID of one of `slices` (a lossy and a lossless
    # export of one slice, or two lossless ones). scan() lists them in its skipped list
    # and keeps the preferred file (scan.copy_key) in `slices`; load_ct_series reads a
    # copy in its place when that file cannot be decoded. Not in files/identity/len.
    copies: tuple[SliceHeader, ...] = field(default=(), repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(s.path for s in self.slices)

    @property
    def identity(self) -> tuple[tuple[str, int, int], ...]:
        """(path, size, mtime_ns) of every file: changes when a file is replaced."""
        return tuple((s.path, s.size, s.mtime_ns) for s in self.slices)

    def __len__(self) -> int:
        return len(self.slices)


@dataclass(frozen=True)
class StructRef:
    """One RTSTRUCT file found by scan() (its contours are read by training.dicom.rtstruct)."""

    path: str
    size: int
    mtime_ns: int
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str  # the referenced frame of reference ("" if absent)
    referenced_series_uids: tuple[str, ...]  # CT series the contours were drawn on
    label: str = field(repr=False)  # StructureSetLabel, free text: may name the patient
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    birth_date: str = field(default="", repr=False)


@dataclass
class ScanResult:
    series: list[SeriesRef] = field(default_factory=list)
    structs: list[StructRef] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # identifying values of every header read (training/dicom/identity.py), one dict per
    # distinct patient identity, whatever the file's modality
    identities: list[dict[str, str]] = field(default_factory=list, repr=False)


@dataclass
class CTVolume:
    """A CT series as HU (float32, axes (z, y, x)) on geometry (slices ascending along
    the normal row_dir × col_dir), with the warnings raised while loading it."""

    hu: np.ndarray
    geometry: VolumeGeometry
    warnings: list[str] = field(default_factory=list)
    # files of the series left out of hu, each with the reason and what it means for the
    # series (the ingest lists them with the drop's unusable files)
    skipped: list[Skipped] = field(default_factory=list)
    # the file each slice of hu was read from (a copy of SeriesRef.copies where the file
    # in SeriesRef.slices could not be decoded)
    sources: tuple[str, ...] = ()
