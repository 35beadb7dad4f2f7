"""Ingest of real DICOM: LUNG1-001 (thorax CT + Varian RTSTRUCT) and the STS cohort
(cropped CT whose RTSTRUCT references absent slices: contours placed by z)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from training.config import PreprocessConfig
from training.store.ingest import ingest
from training.store.workspace import Workspace



def _identifiers(folder):
    f = next(p for p in sorted(folder.iterdir()) if p.is_file())
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    return [str(ds.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate")]


def test_lung1_ingest(test_data, tmp_path):
    image = test_data("dicom/lung1-001/image")
    mask = test_data("dicom/lung1-001/mask_rtstruct")
    cfg = PreprocessConfig(crop=128, size=64, rois=("Lung-Left", "Lung-Right", "Spinal-Cord"))
    ws_path = tmp_path / "w.h5"
    rep = ingest([image, mask], ws_path, cfg, workers=2)
    assert rep.added == ["PAT-0001"] and not rep.skipped and not rep.rois_missing
    with Workspace.open(ws_path) as ws:
        (p,) = ws.patients
        assert p.n_images == 134 and p.source_shape == (134, 512, 512)
        np.testing.assert_allclose(p.spacing, (3.0, 0.977, 0.977), atol=0.01)
        assert {"GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"} <= set(p.rois)
        images, labels = ws.read_patient(0)
        assert images.shape == (134, 64, 64) and 0 <= images.min() and images.max() <= 1
        counts = np.bincount(labels.ravel(), minlength=4)
        assert counts[1] > 0 and counts[2] > 0 and counts[3] > 0
        # the HU of air outside the body windowed to 0, lungs dark, cord present
        hu, masks, geo = ws.read_source(0)
        lung_hu = np.median(hu[masks["Lung-Left"]])
        assert -950 < lung_hu < -600
    raw = ws_path.read_bytes()
    for value in _identifiers(image):
        if len(value) >= 3:
            assert value.encode() not in raw, value


def test_sts_cohort_contours_placed_by_z(test_data, tmp_path):
    sts = test_data("dicom/sts")
    cfg = PreprocessConfig(crop=128, rois=("GTV_Mass_CT",))
    ws_path = tmp_path / "w.h5"
    rep = ingest([sts], ws_path, cfg, workers=2)
    assert sorted(rep.added) == ["PAT-0001", "PAT-0002", "PAT-0003"]
    assert not rep.rois_missing
    assert [p for p, _ in rep.skipped] == ["SOURCE-README.md"]  # listed, not fatal
    with Workspace.open(ws_path) as ws:
        assert ws.image_shape == (128, 128)
        for i, p in enumerate(ws.patients):
            np.testing.assert_allclose(p.spacing[0], 3.27, atol=0.05)
            _, labels = ws.read_patient(i)
            assert (labels == 1).sum() > 100, p.pseudonym  # the tumour is there
        assert len({p.split for p in ws.patients}) == 2
