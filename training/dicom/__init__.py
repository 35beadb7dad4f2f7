"""Layer 1, DICOM: discovery, headers, CT series, RTSTRUCT, geometry, writers, phantom.

This module is the public entry (SPEC F1, F2); its siblings are `scan`, `header`, `load`,
`types`, `write`, `rtstruct`, `rtstruct_raw` (the ROIContourSequence from the raw bytes),
`contour_rule` (duplicates, holes, XOR, overlaps of one ROI's outlines), `fidelity` (the
per-ROI rasterisation report), `identity` (identifiers learnt from every header),
`deflate` (deflated transfer syntax), `geometry`, `phantom`.

    result = scan(["/drop/folder"], progress=None, cancel=None)
    for ref in result.series:            # CT image series (SeriesRef)
        vol = load_ct_series(ref)        # CTVolume: hu float32 (z, y, x), geometry, warnings
    result.structs                       # RTSTRUCT files (StructRef)
    result.skipped                       # Skipped(path, reason) for every file not used

Conventions: axes (z, y, x); mm; patient coordinates LPS; HU = stored × RescaleSlope +
RescaleIntercept. Patient identifiers travel in SeriesRef/StructRef in memory only (not
in repr) for the pseudonym and must never be written. SeriesRef and CTVolume pickle, so
load_ct_series runs in worker processes.
"""

from training.dicom.load import load_ct_series, plugin_hint
from training.dicom.scan import scan
from training.dicom.types import (
    Cancelled,
    CTVolume,
    DicomError,
    ScanResult,
    SeriesRef,
    Skipped,
    SliceHeader,
    StructRef,
)

__all__ = [
    "Cancelled",
    "CTVolume",
    "DicomError",
    "ScanResult",
    "SeriesRef",
    "Skipped",
    "SliceHeader",
    "StructRef",
    "load_ct_series",
    "plugin_hint",
    "scan",
]
