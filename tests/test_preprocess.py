"""Preprocessing callables against hand computations and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import interpolate, ndimage

from training.config import WINDOW_PRESETS, ConfigError, PreprocessConfig
from training.store.preprocess import (
    center_crop,
    preprocess_volume,
    resize_inplane,
    select_slices,
    to_cube,
    window,
    window_preset,
)


def test_window_hand_values():
    hu = np.array([-2000, -800, -50, 700, 3000], dtype=np.int16)
    got = window(hu, -800, 700)
    np.testing.assert_allclose(got, [0.0, 0.0, 750 / 1500, 1.0, 1.0], atol=1e-7)
    assert got.dtype == np.float32
    assert window_preset("thorax") == WINDOW_PRESETS["thorax"] == (-800.0, 700.0)
    with pytest.raises(ConfigError):
        window_preset("nope")
    with pytest.raises(ValueError):
        window(hu, 10, 10)


def test_center_crop_and_pad():
    a = np.arange(6 * 8).reshape(1, 6, 8)
    c = center_crop(a, 4)
    np.testing.assert_array_equal(c[0], a[0, 1:5, 2:6])
    p = center_crop(np.ones((2, 3, 3), np.int16), 6, fill=-1000)
    assert p.shape == (2, 6, 6) and p.dtype == np.int16
    assert (p[:, 1:4, 1:4] == 1).all() and p.sum() == 2 * (9 - 1000 * 27)
    lab = center_crop(np.full((1, 2, 10), 3, np.uint8), 4, fill=0)  # pad y, crop x
    assert (lab[0, 1:3] == 3).all() and (lab[0, [0, 3]] == 0).all()


def test_resize_inplane_matches_scipy_and_labels_stay_classes():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 10, 14)).astype(np.float32)
    got = resize_inplane(v, 7, order=1)
    ref = ndimage.zoom(v, (1, 0.7, 0.5), order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # doubling a constant-per-pixel image by nearest neighbour repeats each pixel twice
    lab = rng.integers(0, 4, (2, 5, 5)).astype(np.uint8)
    up = resize_inplane(lab, 10, order=0)
    assert up.dtype == np.uint8
    np.testing.assert_array_equal(up, lab.repeat(2, axis=1).repeat(2, axis=2))


def test_select_slices():
    pos = np.arange(20) * 3.0 - 30.0  # -30 … 27 mm
    cfg = PreprocessConfig()
    np.testing.assert_array_equal(select_slices(pos, cfg), np.arange(20))
    c = cfg.replace(slices="around", slice_center=0.0, slice_count=5)
    np.testing.assert_array_equal(select_slices(pos, c), [8, 9, 10, 11, 12])  # 0 mm = index 10
    c = cfg.replace(slices="around", slice_center=-29.0, slice_count=4)
    np.testing.assert_array_equal(select_slices(pos, c), [0, 1, 2, 3])  # shifted inside
    c = cfg.replace(slices="around", slice_count=4)  # centre of the extent: -1.5 mm
    np.testing.assert_array_equal(select_slices(pos, c), [8, 9, 10, 11])
    c = cfg.replace(slices="around", slice_count=50)
    assert len(select_slices(pos, c)) == 20
    with pytest.raises(ValueError, match="outside"):
        select_slices(pos, cfg.replace(slices="around", slice_center=100.0))
    np.testing.assert_array_equal(select_slices(pos, cfg.replace(slices="range", slice_start=3, slice_stop=6)), [3, 4, 5])
    assert len(select_slices(pos, cfg.replace(slices="range", slice_start=15))) == 5
    with pytest.raises(ValueError):
        select_slices(pos, cfg.replace(slices="range", slice_start=25))


def test_to_cube_uneven_spacing_matches_scipy_interp1d():
    rng = np.random.default_rng(2)
    pos = np.array([0.0, 1.0, 3.0, 7.0, 8.0])  # uneven
    v = rng.normal(size=(5, 3, 4)).astype(np.float32)
    got = to_cube(v, pos, 9)
    ref = interpolate.interp1d(pos, v, axis=0)(np.linspace(0, 8, 9))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # hand value: target 4.0 mm lies 1/4 of the way from 3 mm to 7 mm
    np.testing.assert_allclose(got[4], 0.75 * v[2] + 0.25 * v[3], atol=1e-6)
    lab = np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    near = to_cube(lab, pos, 9, order=0)
    nearest_ref = interpolate.interp1d(pos, np.arange(5), kind="nearest")(np.linspace(0, 8, 9))
    np.testing.assert_array_equal(near[:, 0, 0], nearest_ref.astype(np.uint8))
    assert to_cube(v[:1], pos[:1], 4).shape == (4, 3, 4)


def test_preprocess_volume_2d_and_3d():
    z, y, x = 10, 40, 40
    hu = np.full((z, y, x), -1000, np.int16)
    hu[:, 15:25, 15:25] = 700
    lab = (hu == 700).astype(np.uint8)
    pos = np.arange(z) * 2.5
    cfg = PreprocessConfig(crop=20, size=None)
    im, lb = preprocess_volume(hu, lab, pos, cfg)
    assert im.shape == (10, 20, 20) and im.dtype == np.float32 and lb.dtype == np.uint8
    assert im.min() == 0.0 and im.max() == 1.0
    np.testing.assert_array_equal(lb, (im == 1.0).astype(np.uint8))
    cfg3 = PreprocessConfig(crop=20, size=8, mode="3d")
    im3, lb3 = preprocess_volume(hu, lab, pos, cfg3)
    assert im3.shape == (1, 8, 8, 8) and lb3.shape == (1, 8, 8, 8)
    assert set(np.unique(lb3)) <= {0, 1}
    im3d, _ = preprocess_volume(hu, None, pos, cfg3.replace(depth=5))
    assert im3d.shape == (1, 5, 8, 8)
    # "around" through preprocess_volume keeps the chosen slices
    hu2 = (np.arange(z)[:, None, None] * 100 - 800 + np.zeros((1, 4, 4))).astype(np.int16)
    im2, none = preprocess_volume(hu2, None, pos, PreprocessConfig(crop=None, slices="range", slice_start=2, slice_stop=4))
    assert none is None
    np.testing.assert_allclose(im2[:, 0, 0], [200 / 1500, 300 / 1500], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("crop", [None, 16, 48])
def test_preprocess_volume_leaves_its_inputs_alone(dtype, crop):
    """Slices are taken as views and windowing runs in place on the float copy: the
    source HU and labels must come out unchanged and the results must not alias them."""
    rng = np.random.default_rng(2)
    hu = rng.integers(-1200, 1500, (6, 32, 32)).astype(dtype)
    lab = rng.integers(0, 3, (6, 32, 32)).astype(np.uint8)
    hu0, lab0 = hu.copy(), lab.copy()
    pos = np.arange(6) * 2.0
    for cfg in (PreprocessConfig(crop=crop), PreprocessConfig(crop=crop, slices="range", slice_start=1,
                                                               slice_stop=4)):
        im, lb = preprocess_volume(hu, lab, pos, cfg)
        np.testing.assert_array_equal(hu, hu0)
        np.testing.assert_array_equal(lab, lab0)
        assert not np.may_share_memory(im, hu) and not np.may_share_memory(lb, lab)
        assert im.flags.c_contiguous and lb.flags.c_contiguous
        sl = slice(1, 4) if cfg.slices == "range" else slice(None)
        expected = center_crop(hu0[sl], crop) if crop else hu0[sl]
        np.testing.assert_allclose(im, window(expected, cfg.hu_min, cfg.hu_max), atol=1e-7)
        np.testing.assert_array_equal(lb, center_crop(lab0[sl], crop, 0) if crop else lab0[sl])
