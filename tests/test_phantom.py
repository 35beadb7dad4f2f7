"""Synthetic cohort: anatomy placement, determinism, similarity, DICOM round trip, CLI."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pydicom
import pytest

from training.cli import main
from training.dicom.write import masks_to_rois
from training.dicom.phantom import ROI_NAMES, generate_cohort, patient_identity, phantom_patient

SMALL = dict(slices=8, size=48)


def _centroid(mask):
    return np.argwhere(mask).mean(axis=0)  # (k, i, j)


def _inside(poly_ij, shape):
    """Voxel centres inside a polygon of (row, col) points, even-odd rule, vectorised by hand."""
    ii, jj = np.mgrid[: shape[0], : shape[1]]
    inside = np.zeros(shape, bool)
    n = len(poly_ij)
    for a in range(n):
        (i1, j1), (i2, j2) = poly_ij[a], poly_ij[(a + 1) % n]
        crosses = (i1 > ii) != (i2 > ii)
        with np.errstate(divide="ignore", invalid="ignore"):
            jc = j1 + (ii - i1) * (j2 - j1) / (i2 - i1)
        inside ^= crosses & (jj < jc)
    return inside


def test_anatomy_values_and_masks():
    hu, masks, geom = phantom_patient(0, 0, **SMALL)
    assert hu.dtype == np.float32 and hu.shape == (8, 48, 48) == geom.shape
    assert set(masks) == set(ROI_NAMES)
    assert all(m.dtype == bool and m.shape == hu.shape and m.any() for m in masks.values())
    body = masks["Body"]
    for name in ROI_NAMES[1:]:
        assert not (masks[name] & ~body).any(), name
    assert not (masks["Spine"] & masks["Spinal-Cord"]).any()
    assert not ((masks["Lung-Left"] | masks["Lung-Right"]) & masks["Heart"]).any()
    lungs = masks["Lung-Left"] | masks["Lung-Right"]
    assert -950 < hu[lungs].mean() < -700
    assert 300 < hu[masks["Spine"]].mean()
    assert -1050 < hu[~body].mean() < -950
    core = masks["Heart"] & ~np.roll(~masks["Heart"], 1, axis=2) & ~np.roll(~masks["Heart"], -1, axis=2)
    assert 0 < np.median(hu[core]) < 80
    assert np.allclose(geom.row_dir, [1, 0, 0]) and np.allclose(geom.col_dir, [0, 1, 0])
    assert geom.spacing == pytest.approx((3.0, 1.5, 1.5))


@pytest.mark.parametrize("i", [0, 1, 2, 3])
def test_left_right_and_posterior(i):
    _, masks, geom = phantom_patient(i, 5, **SMALL)
    body, heart, spine = (_centroid(masks[n]) for n in ("Body", "Heart", "Spine"))
    left, right = _centroid(masks["Lung-Left"]), _centroid(masks["Lung-Right"])
    # Voxel indices: column j toward the patient's left, row i toward posterior.
    assert heart[2] > body[2] and left[2] > body[2] > right[2]
    assert spine[1] > body[1] and spine[1] > heart[1]
    assert abs(spine[2] - body[2]) < 2
    # Same in patient coordinates (LPS): +x is left, +y is posterior.
    x_body, x_heart = geom.voxel_to_patient(np.array([body, heart]))[:, 0]
    y_body, y_spine = geom.voxel_to_patient(np.array([body, spine]))[:, 1]
    assert x_heart > x_body and y_spine > y_body


def test_determinism_and_variation():
    a = phantom_patient(3, 7, **SMALL)
    b = phantom_patient(3, 7, **SMALL)
    assert np.array_equal(a.hu, b.hu) and all(np.array_equal(a.masks[n], b.masks[n]) for n in ROI_NAMES)
    assert np.allclose(a.geometry.ipp, b.geometry.ipp)
    assert not np.array_equal(a.hu, phantom_patient(3, 8, **SMALL).hu)
    assert not np.array_equal(a.hu, phantom_patient(4, 7, **SMALL).hu)
    sizes = [phantom_patient(i, 7, **SMALL).masks["Body"].sum() for i in range(5)]
    assert len(set(sizes)) == 5


def test_slices_alike_within_patient_more_than_between():
    vols = [phantom_patient(i, 0, slices=12, size=48).hu for i in range(6)]
    central = [np.clip(v[4:8], -1000, 1000) for v in vols]
    within = np.mean([np.mean((c[a] - c[b]) ** 2) for c in central for a, b in combinations(range(4), 2)])
    between = np.mean([
        np.mean((central[p][a] - central[q][b]) ** 2)
        for p, q in combinations(range(6), 2) for a in range(4) for b in range(4)
    ])
    assert within < 0.5 * between


def _read_ct(folder):
    dss = [pydicom.dcmread(p) for p in sorted((folder / "CT").glob("*.dcm"))]
    normal = np.cross(*np.array(dss[0].ImageOrientationPatient, float).reshape(2, 3))
    dss.sort(key=lambda d: float(np.array(d.ImagePositionPatient, float) @ normal))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    return dss, hu


def test_cohort_round_trip(tmp_path):
    calls = []
    infos = generate_cohort(tmp_path, 2, seed=3, progress=lambda d, t, info: calls.append((d, t)), **SMALL)
    assert calls == [(1, 2), (2, 2)] and [i.index for i in infos] == [0, 1]
    for info in infos:
        name, pid, birth = patient_identity(info.index, 3)
        assert (info.patient_name, info.patient_id) == (name, pid)
        assert pid not in str(info.folder) and "PHANTOM" not in str(info.folder)
        hu_ref, masks, geom = phantom_patient(info.index, 3, **SMALL)
        dss, hu = _read_ct(info.folder)
        assert np.max(np.abs(hu - hu_ref)) <= 0.5 + 1e-4
        assert np.allclose([np.array(d.ImagePositionPatient, float) for d in dss], geom.ipp, atol=1e-4)
        assert str(dss[0].PatientName) == name and dss[0].PatientID == pid and dss[0].PatientBirthDate == birth
        assert len({d.SOPInstanceUID for d in dss}) == len(dss) == 8
        assert len({d.SeriesInstanceUID for d in dss}) == 1
        by_uid = {d.SOPInstanceUID: k for k, d in enumerate(dss)}

        rs = pydicom.dcmread(info.rtstruct)
        assert rs.Modality == "RTSTRUCT" and rs.StudyInstanceUID == dss[0].StudyInstanceUID
        assert rs.PatientID == pid
        names = {r.ROINumber: r.ROIName for r in rs.StructureSetROISequence}
        assert sorted(names.values()) == sorted(ROI_NAMES)
        ref_for = rs.ReferencedFrameOfReferenceSequence[0]
        assert ref_for.FrameOfReferenceUID == dss[0].FrameOfReferenceUID
        series_ref = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert series_ref.SeriesInstanceUID == dss[0].SeriesInstanceUID
        assert {c.ReferencedSOPInstanceUID for c in series_ref.ContourImageSequence} == set(by_uid)
        expected = masks_to_rois(masks)
        for rc in rs.ROIContourSequence:
            name_r = names[rc.ReferencedROINumber]
            assert len(rc.ContourSequence) == len(expected[name_r])
            # Rasterise this ROI by hand from the file and compare with the phantom's mask.
            raster = np.zeros(hu.shape, bool)
            for c in rc.ContourSequence:
                k = by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
                d = np.array(c.ContourData, float).reshape(-1, 3) - np.array(dss[k].ImagePositionPatient, float)
                assert np.allclose(d[:, 2], 0, atol=1e-4)  # in the referenced slice's plane
                dy, dx = (float(v) for v in dss[k].PixelSpacing)
                ij = np.column_stack([d[:, 1] / dy, d[:, 0] / dx])
                raster[k] ^= _inside(ij, hu.shape[1:])
            assert np.array_equal(raster, masks[name_r]), name_r


def test_same_patient_whatever_n(tmp_path):
    generate_cohort(tmp_path / "one", 1, seed=2, slices=4, size=32)
    generate_cohort(tmp_path / "three", 3, seed=2, slices=4, size=32)
    _, a = _read_ct(tmp_path / "one" / "patient_000")
    _, b = _read_ct(tmp_path / "three" / "patient_000")
    assert np.array_equal(a, b)


def test_cancel_stops_between_patients(tmp_path):
    infos = generate_cohort(tmp_path, 5, slices=2, size=32, cancel=lambda: len(list(tmp_path.iterdir())) >= 2)
    assert len(infos) == 2


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["phantom", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    flags = ("--patients", "--out", "--slices", "--size", "--seed", "--pixel-spacing", "--slice-thickness", "--json")
    for flag in flags:
        assert flag in out


def test_cli_run(tmp_path, capsys):
    assert main(["phantom", "--patients", "2", "--out", str(tmp_path / "c"), "--slices", "3", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "[2/2]" in out and "PH0" not in out and "PHANTOM" not in out
    for p in ("patient_000", "patient_001"):
        assert len(list((tmp_path / "c" / p / "CT").glob("*.dcm"))) == 3
        assert (tmp_path / "c" / p / "RTSTRUCT" / "rs.dcm").is_file()
    assert main(["phantom", "--patients", "1", "--out", str(tmp_path / "j"), "--slices", "2", "--size", "32",
                 "--pixel-spacing", "0.8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patients"][0]["spacing_mm"] == pytest.approx([3.0, 0.8, 0.8])
    assert main(["phantom", "--patients", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--patients" in capsys.readouterr().err
