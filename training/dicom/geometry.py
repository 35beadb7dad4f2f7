"""Geometry of a CT volume in DICOM patient coordinates (LPS, mm).

Array axes are (z, y, x) = (slice k, row i, column j). DICOM conventions:
- ImageOrientationPatient = row_dir (direction of increasing column index j) followed by
  col_dir (direction of increasing row index i);
- PixelSpacing = (spacing between rows, spacing between columns) = (dy, dx) in mm;
- the slice normal is row_dir × col_dir; slices are sorted by ImagePositionPatient · normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VolumeGeometry:
    ipp: np.ndarray  # (nz, 3) ImagePositionPatient of each slice, sorted along the normal, mm
    row_dir: np.ndarray  # (3,) unit vector of increasing column index j
    col_dir: np.ndarray  # (3,) unit vector of increasing row index i
    pixel_spacing: tuple[float, float]  # (dy, dx) mm
    shape: tuple[int, int, int]  # (nz, ny, nx)
    frame_of_reference_uid: str = ""
    sop_uids: tuple[str, ...] = ()  # SOPInstanceUID of each slice, same order as ipp

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n)

    @property
    def positions(self) -> np.ndarray:
        """Slice positions along the normal, mm (ascending)."""
        return self.ipp @ self.normal

    @property
    def slice_spacing(self) -> float:
        """Median distance between neighbouring slices along the normal, mm (0 for one slice)."""
        p = self.positions
        return float(np.median(np.diff(p))) if len(p) > 1 else 0.0

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(dz, dy, dx) in mm."""
        return (self.slice_spacing, float(self.pixel_spacing[0]), float(self.pixel_spacing[1]))

    def patient_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Map (n, 3) patient coordinates (mm) to fractional (k, i, j) indices.

        k interpolates linearly between measured slice positions along the normal (and
        extrapolates with the end spacing); in-plane indices are measured from the
        ImagePositionPatient interpolated at k, so slices whose origins shift in-plane
        (gantry tilt) map correctly.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        s = pts @ self.normal
        pos = self.positions
        idx = np.arange(len(pos), dtype=np.float64)
        if len(pos) == 1:
            k = np.zeros(len(pts))
        else:
            k = np.interp(s, pos, idx)
            lo, hi = s < pos[0], s > pos[-1]
            k[lo] = (s[lo] - pos[0]) / (pos[1] - pos[0])
            k[hi] = len(pos) - 1 + (s[hi] - pos[-1]) / (pos[-1] - pos[-2])
        base = np.stack([np.interp(k, idx, self.ipp[:, a]) for a in range(3)], axis=1)
        d = pts - base
        j = d @ self.row_dir / self.pixel_spacing[1]
        i = d @ self.col_dir / self.pixel_spacing[0]
        return np.stack([k, i, j], axis=1)

    def voxel_to_patient(self, kij: np.ndarray) -> np.ndarray:
        """Inverse of patient_to_voxel for integer or fractional (k, i, j), mm."""
        kij = np.asarray(kij, dtype=np.float64).reshape(-1, 3)
        k = kij[:, 0]
        idx = np.arange(len(self.ipp), dtype=np.float64)
        base = np.stack([np.interp(k, idx, self.ipp[:, a]) for a in range(3)], axis=1)
        return (
            base
            + kij[:, 2:3] * self.pixel_spacing[1] * self.row_dir
            + kij[:, 1:2] * self.pixel_spacing[0] * self.col_dir
        )

    def to_dict(self) -> dict:
        return {
            "ipp": self.ipp.tolist(),
            "row_dir": self.row_dir.tolist(),
            "col_dir": self.col_dir.tolist(),
            "pixel_spacing": list(self.pixel_spacing),
            "shape": list(self.shape),
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "sop_uids": list(self.sop_uids),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "VolumeGeometry":
        return cls(
            ipp=np.asarray(d["ipp"], dtype=np.float64).reshape(-1, 3),
            row_dir=np.asarray(d["row_dir"], dtype=np.float64),
            col_dir=np.asarray(d["col_dir"], dtype=np.float64),
            pixel_spacing=(float(d["pixel_spacing"][0]), float(d["pixel_spacing"][1])),
            shape=tuple(int(v) for v in d["shape"]),  # type: ignore[arg-type]
            frame_of_reference_uid=d.get("frame_of_reference_uid", ""),
            sop_uids=tuple(d.get("sop_uids", ())),
        )
