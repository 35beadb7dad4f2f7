"""Export of generated images: PNG, .npy and DICOM round trips (SPEC F24)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from training import images
from training.latent import export
from training.config import PreprocessConfig


def test_window_undone():
    np.testing.assert_allclose(export.window_to_hu([0.0, 0.5, 1.0, 1.2], -800, 700), [-800, -50, 700, 700])


def test_output_spacing_from_preprocessing():
    p = PreprocessConfig(crop=128, size=64)
    assert export.output_spacing(p, (3.0, 0.8, 0.9)) == pytest.approx((3.0, 1.6, 1.8))
    p = PreprocessConfig(crop=None, size=None)
    assert export.output_spacing(p, (3.0, 0.8, 0.9)) == (3.0, 0.8, 0.9)
    p = PreprocessConfig(crop=None, size=32, mode="3d", slices="around", slice_count=10)
    sp = export.output_spacing(p, (3.0, 1.0, 1.0), source_shape=(40, 64, 128), image_shape=(32, 32, 32))
    # 10 slices, 3 mm apart, span 27 mm between the first and last centres; the cube's 32
    # slices span the same 27 mm (training.store.preprocess.to_cube), so 31 gaps of 27/31 mm
    assert sp == pytest.approx((3.0 * 9 / 31, 2.0, 4.0))


def test_output_spacing_of_3d_depth_matches_what_preprocessing_does():
    from training.store.preprocess import preprocess_volume

    # HU = the slice position in mm: after preprocessing, neighbouring slices of the cube
    # differ by exactly their spacing in HU (linear interpolation keeps a linear ramp)
    dz, n_src = 2.5, 40
    z_mm = np.arange(n_src) * dz
    hu = np.broadcast_to(z_mm[:, None, None], (n_src, 16, 16)).astype(np.float32)
    for slices, count in (("around", 8), ("around", 16), ("all", 0)):
        p = PreprocessConfig(crop=16, mode="3d", slices=slices, slice_count=max(count, 1), depth=32,
                             hu_min=-1000.0, hu_max=1000.0)
        img, _ = preprocess_volume(hu, None, z_mm, p)
        cube_hu = export.window_to_hu(img[0], p.hu_min, p.hu_max).astype(np.float64)
        measured = np.diff(cube_hu[:, 8, 8]).mean()
        sp = export.output_spacing(p, (dz, 1.0, 1.0), source_shape=(n_src, 16, 16), image_shape=img.shape[1:])
        assert sp[0] == pytest.approx(measured, rel=1e-4), (slices, count)


def test_dicom_round_trip_hu_geometry_and_pseudonym(tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.random((3, 24, 20)).astype(np.float32)
    lab = np.zeros((3, 24, 20), np.uint8)
    lab[:, 5:15, 4:12] = 1
    lab[1, 16:22, 10:18] = 2
    res = export.export_dicom(
        tmp_path / "gen", ct, hu_window=(-800.0, 700.0), spacing=(2.5, 0.75, 0.8), labels=lab, roi_names=("GTV", "Cord")
    )
    assert len(res.ct_paths) == 3 and res.rtstruct_path is not None
    dss = [pydicom.dcmread(p) for p in res.ct_paths]
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    expected = -800.0 + ct.astype(np.float64) * 1500.0
    assert np.abs(hu - expected).max() <= 0.5 + 1e-6  # quantisation step 1 HU
    for k, d in enumerate(dss):
        assert [float(v) for v in d.PixelSpacing] == [0.75, 0.8]
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(d.ImagePositionPatient[2]) - float(dss[0].ImagePositionPatient[2]) == pytest.approx(2.5 * k)
        assert float(d.SliceThickness) == pytest.approx(2.5)
        assert str(d.PatientName) == res.pseudonym and d.PatientID == res.pseudonym and not d.PatientBirthDate
    assert len({d.SOPInstanceUID for d in dss}) == 3 and len({d.SeriesInstanceUID for d in dss}) == 1
    rs = pydicom.dcmread(res.rtstruct_path)
    assert [r.ROIName for r in rs.StructureSetROISequence] == ["GTV", "Cord"]
    np.testing.assert_array_equal(np.load(res.labels_path), lab)
    # a second export never reuses UIDs or the pseudonym
    res2 = export.export_dicom(tmp_path / "gen2", ct[0], hu_window=(-800.0, 700.0))
    d2 = pydicom.dcmread(res2.ct_paths[0])
    assert d2.StudyInstanceUID != dss[0].StudyInstanceUID and res2.pseudonym != res.pseudonym


def test_dicom_reads_back_through_ingest_geometry(tmp_path):
    ct = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    res = export.export_dicom(tmp_path, ct, hu_window=(-1000.0, 1000.0), spacing=(3.0, 1.5, 1.5))
    d = pydicom.dcmread(res.ct_paths[0])
    # row 0 / column 0 of the array is the first stored pixel: anterior-right corner
    hu = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
    assert hu[0, 0] == pytest.approx(-1000.0) and hu[-1, -1] == pytest.approx(round(-1000 + 2000 * ct[0, -1, -1]))


def test_png_and_npy_exports(tmp_path):
    import imageio.v3 as iio

    ims = np.random.default_rng(1).random((4, 16, 16)).astype(np.float32)
    lab = (ims > 0.8).astype(np.uint8)
    pre = PreprocessConfig()
    out = export.export_generated(tmp_path, ims, lab, preprocess=pre, spacing=(2.0, 1.0, 1.0), roi_names=("A",))
    assert len(out["png"]) == 4 and len(out["npy"]) == 2
    assert len(out["dicom"]) == 4 * 2  # one CT slice + one RTSTRUCT per synthetic patient
    np.testing.assert_array_equal(np.load(out["npy"][0]), ims)
    png = iio.imread(out["png"][0])
    assert png.shape == (16, 16, 3) and png.dtype == np.uint8
    grid = tmp_path / "grid.png"
    export.export_grid_png(grid, ims.reshape(2, 2, 16, 16), pad=2)
    g = iio.imread(grid)
    assert g.shape == (34, 34)
    np.testing.assert_array_equal(g[:16, :16], images.to_uint8(ims[0]))
    assert export.filmstrip(ims, pad=1).shape == (16, 4 * 16 + 3)


def test_display_helpers():
    a = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    g = images.compose_grid(a)
    assert g.shape == (4, 6)
    np.testing.assert_array_equal(g[2:4, 4:6], a[1, 2])
    ct = np.full((4, 4), 0.5)
    lab = np.zeros((4, 4), np.uint8)
    lab[0, 0] = 1
    rgb = images.overlay_labels(ct, lab, alpha=1.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    np.testing.assert_array_equal(rgb[0, 0], images.roi_colour_table(2)[1])
    np.testing.assert_array_equal(rgb[1, 1], [128, 128, 128])
    t = images.roi_colour_table(20)
    assert t.shape == (20, 3) and (t[0] == 0).all() and (t[1:] != 0).any(axis=1).all()


def test_dicom_export_reads_back_through_the_project_loader(tmp_path):
    from training.dicom import load_ct_series, scan
    from training.dicom.rtstruct import rasterise, read_rtstruct

    ct = np.random.default_rng(3).random((4, 20, 20)).astype(np.float32)
    lab = np.zeros(ct.shape, np.uint8)
    lab[1:3, 6:14, 5:12] = 1
    res = export.export_dicom(tmp_path, ct, hu_window=(-800.0, 700.0), spacing=(2.0, 0.9, 0.7), labels=lab, roi_names=("GTV",))
    found = scan([tmp_path])
    assert len(found.series) == 1 and len(found.structs) == 1
    vol = load_ct_series(found.series[0])
    assert vol.hu.shape == ct.shape
    np.testing.assert_allclose(vol.hu, -800.0 + 1500.0 * ct, atol=0.5 + 1e-4)
    assert vol.geometry.spacing == pytest.approx((2.0, 0.9, 0.7))
    masks = rasterise(read_rtstruct(found.structs[0].path), vol.geometry).masks
    np.testing.assert_array_equal(masks["GTV"], lab == 1)


def test_dicom_series_folder_holds_dicom_only_and_notes_say_what_is_lost(tmp_path):
    ct = np.full((2, 8, 8), 0.0, np.float32)  # the window floor: "air"
    lab = np.zeros((2, 8, 8), np.uint8)  # the model predicted no ROI voxel
    res = export.export_dicom(tmp_path / "series", ct, hu_window=(-800.0, 700.0), labels=lab, roi_names=("GTV",))
    inside = sorted(p.name for p in (tmp_path / "series").iterdir())
    assert inside == ["CT_0001.dcm", "CT_0002.dcm"], inside  # no labels.npy, no RS.dcm
    assert res.labels_path == tmp_path / "series_labels.npy" and res.labels_path.exists()
    assert res.rtstruct_path is None
    assert any("no RTSTRUCT" in n for n in res.notes)
    assert any("[-800, 700]" in n and "-800 HU" in n for n in res.notes)
    notes: list[str] = []
    from training.config import PreprocessConfig

    export.export_generated(tmp_path / "gen", ct[None], lab[None], preprocess=PreprocessConfig(hu_min=-800.0, hu_max=700.0),
                            spacing=(2.0, 1.0, 1.0), roi_names=("GTV",), formats=("dicom",), notes=notes)
    assert len(notes) == 2 and not list((tmp_path / "gen" / "dicom" / "generated_000").glob("*.npy"))
