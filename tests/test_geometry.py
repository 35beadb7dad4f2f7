import numpy as np

from training.dicom.geometry import VolumeGeometry


def _oblique():
    row = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    col = np.array([-np.sin(0.3) * 0.8, np.cos(0.3) * 0.8, 0.6])
    col /= np.linalg.norm(col)
    n = np.cross(row, col)
    ipp = np.array([10.0, -5.0, 2.0]) + np.outer([0, 2.5, 5.0, 7.5], n)
    return VolumeGeometry(ipp, row, col, (0.7, 0.9), (4, 16, 20), "1.2.3", ("a", "b", "c", "d"))


def test_round_trip_voxel_patient():
    g = _oblique()
    kij = np.array([[0, 0, 0], [1.5, 3.25, 7.0], [3, 15, 19]], dtype=float)
    assert np.allclose(g.patient_to_voxel(g.voxel_to_patient(kij)), kij)


def test_spacing_and_serialisation():
    g = _oblique()
    assert np.isclose(g.slice_spacing, 2.5)
    assert g.spacing == (g.slice_spacing, 0.7, 0.9)
    g2 = VolumeGeometry.from_dict(g.to_dict())
    assert np.allclose(g2.ipp, g.ipp) and g2.sop_uids == g.sop_uids and g2.shape == g.shape


def test_in_plane_shift_per_slice_is_followed():
    # Gantry-tilt-like stack: each slice's origin shifts along col_dir by 1 mm.
    row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    ipp = np.array([[0.0, float(k), 3.0 * k] for k in range(4)])
    g = VolumeGeometry(ipp, row, col, (0.5, 0.5), (4, 8, 8))
    p = g.voxel_to_patient(np.array([[2, 4, 6]]))
    assert np.allclose(p, [[3.0, 2.0 + 2.0, 6.0]])
    assert np.allclose(g.patient_to_voxel(p), [[2, 4, 6]])
