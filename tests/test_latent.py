"""Encoding a workspace, patient aggregates, and decoding grids/paths/samples (tiny VAE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.latent import encode as latent
from training.latent import sampling
from training.config import ModelConfig, PreprocessConfig
from training.vae.model import VAE

torch.set_num_threads(1)
SIZE = 16


def tiny_model(n_classes=0, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(input_size=SIZE, n_blocks=2, filters=4, fc_units=16, latent_dim=4, n_classes=n_classes)
    return VAE(cfg).eval()


@pytest.fixture
def workspace(tmp_path):
    from training.store.workspace import Workspace, as_stored, write_arrays_workspace

    rng = np.random.default_rng(0)
    # as_stored: the values a read returns (images are stored as uint16)
    imgs = {f"PAT-{i:04d}": as_stored(rng.random((3 + i, SIZE, SIZE))) for i in range(1, 4)}
    labs = {k: (v > 0.7).astype(np.uint8) + (v > 0.9) for k, v in imgs.items()}
    pre = PreprocessConfig(crop=None, rois=("A", "B"))
    path = write_arrays_workspace(tmp_path / "ws.h5", imgs, labs, preprocess=pre, roi_names=("A", "B"))
    with Workspace.open(path) as ws:
        yield ws, imgs, labs


def test_encode_workspace_matches_direct_encoding(workspace):
    ws, imgs, labs = workspace
    model = tiny_model(n_classes=3)
    calls = []
    enc = latent.encode_workspace(model, ws, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert enc.mu.shape == (4 + 5 + 6, 4) and enc.logvar.shape == enc.mu.shape
    assert enc.names == [p.pseudonym for p in ws.patients] and calls[-1] == (15, 15)
    p = ws.patient_index("PAT-0002")
    r = enc.image(p, 3)
    mu, lv = latent.encode_arrays(model, imgs["PAT-0002"][3:4], labs["PAT-0002"][3:4])
    np.testing.assert_allclose(enc.mu[r], mu[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.sigma[r], np.exp(0.5 * lv[0]), rtol=1e-5)
    assert enc.labels[r] == "PAT-0002:3"
    # cancel after the first batch keeps what was done
    part = latent.encode_workspace(model, ws, batch_size=4, cancel=iter([False, True]).__next__)
    assert len(part.mu) == 4 and len(part.rows) == 4
    with pytest.raises(ValueError, match="RT classes"):
        latent.encode_workspace(tiny_model(0), ws)


def test_patient_aggregates_by_hand():
    mu = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0], [10.0, 10.0]], np.float32)
    lv = np.log(np.array([[1.0, 4.0], [1.0, 1.0], [4.0, 1.0], [0.25, 0.25]], np.float32))
    rows = np.array([[0, 0], [0, 1], [0, 2], [1, 0]])
    enc = latent.Encoded(mu, lv, rows, ["P0", "P1"])
    m = latent.aggregate_patients(enc, "mixture")
    np.testing.assert_allclose(m.mu[0], [2.0, 1.0])
    np.testing.assert_allclose(np.exp(m.logvar[0]), [6 / 3 + 8 / 3, 6 / 3 + 8 / 3], rtol=1e-6)
    # the mixture's variance equals that of samples from it (law of total variance)
    mean, cov = sampling.aggregate_moments(mu[:3], lv[:3])
    np.testing.assert_allclose(np.exp(m.logvar[0]), np.diag(cov), rtol=1e-6)
    pr = latent.aggregate_patients(enc, "product")
    prec = 1 / np.exp(lv[:3].astype(float))
    np.testing.assert_allclose(np.exp(pr.logvar[0]), 1 / prec.sum(0), rtol=1e-6)
    np.testing.assert_allclose(pr.mu[0], (mu[:3] * prec).sum(0) / prec.sum(0), rtol=1e-6)
    mid = latent.aggregate_patients(enc, "middle")
    np.testing.assert_allclose(mid.mu[0], mu[1])
    for a in (m, pr, mid):  # a one-image patient is its image
        np.testing.assert_allclose(a.mu[1], mu[3])
        np.testing.assert_allclose(a.logvar[1], lv[3], rtol=1e-6)
        assert a.names == ["P0", "P1"] and a.n_images.tolist() == [3, 1]


def test_manifold_batch_equals_one_by_one_and_layout():
    model = tiny_model(n_classes=3)
    mf = latent.manifold(model, n=3, dims=(2, 0), base=np.full(4, 0.5), prior_sigma2=2.0)
    assert mf.images.shape == (3, 3, SIZE, SIZE) and mf.labels.shape == (3, 3, SIZE, SIZE)
    np.testing.assert_allclose(mf.positions, np.sqrt(2.0) * np.array([-0.96742157, 0.0, 0.96742157]), rtol=1e-6)
    assert mf.codes[0, 2, 2] == pytest.approx(mf.positions[2]) and mf.codes[0, 2, 0] == pytest.approx(mf.positions[2])
    assert mf.codes[1, 1, 1] == pytest.approx(0.5)
    plain = latent.LatentDecoder(model, channels_last=False)
    for r, c in [(0, 0), (2, 1)]:
        one = plain.decode(mf.codes[r, c])
        np.testing.assert_allclose(one.ct[0], mf.images[r, c], atol=1e-5)
        np.testing.assert_array_equal(one.labels[0], mf.labels[r, c])


def test_decoder_is_deterministic_and_memory_format_neutral():
    model = tiny_model()
    z = sampling.sample_prior(5, 4, seed=1)
    a = latent.LatentDecoder(model, channels_last=False).decode(z)
    b = latent.LatentDecoder(model, channels_last=True).decode(z)
    assert a.labels is None and a.ct.shape == (5, SIZE, SIZE)
    np.testing.assert_allclose(a.ct, b.ct, atol=1e-5)
    model.train()  # the decoder switches it back to eval: dropout off
    np.testing.assert_array_equal(latent.decode(model, z).ct, latent.decode(model, z).ct)


def test_interpolation_and_generation():
    model = tiny_model(n_classes=2)
    z0, z1 = np.ones(4), -np.ones(4) * 0.5
    it = latent.interpolation(model, z0, z1, steps=5, method="spherical")
    assert it.images.shape == (5, SIZE, SIZE) and it.labels.shape == (5, SIZE, SIZE)
    np.testing.assert_allclose(it.images[0], latent.decode(model, z0).ct[0], atol=1e-5)
    np.testing.assert_allclose(it.images[-1], latent.decode(model, z1).ct[0], atol=1e-5)
    mu, lv = np.zeros((3, 4)), np.full((3, 4), -2.0)
    s1 = latent.generate(model, 6, "aggregate", seed=4, posteriors=(mu, lv))
    s2 = latent.generate(model, 6, "aggregate", seed=4, posteriors=(mu, lv))
    np.testing.assert_array_equal(s1.codes, s2.codes)
    assert s1.images.shape == (6, SIZE, SIZE)
    p = latent.generate(model, 2, "prior", seed=0, prior_sigma2=4.0)
    np.testing.assert_allclose(p.codes, sampling.sample_prior(2, 4, 4.0, 0))
    with pytest.raises(ValueError):
        latent.generate(model, 2, "aggregate")


def test_volumes_3d_decode_and_export(tmp_path):
    import pydicom

    from training.latent import export

    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=3, input_size=8, n_blocks=2, filters=2, fc_units=8, latent_dim=3, n_classes=2)
    model = VAE(cfg).eval()
    vols = np.random.default_rng(0).random((2, 8, 8, 8)).astype(np.float32)
    labs = (vols > 0.5).astype(np.uint8)
    mu, lv = latent.encode_arrays(model, vols, labs)
    assert mu.shape == (2, 3)
    mf = latent.manifold(model, n=2, dims=(0, 1))
    assert mf.images.shape == (2, 2, 8, 8, 8) and mf.labels.shape == (2, 2, 8, 8, 8)
    s = latent.generate(model, 1, "aggregate", seed=0, posteriors=(mu, lv))
    res = export.export_dicom(tmp_path, s.images[0], hu_window=(-1000.0, 1000.0), spacing=(1.5, 2.0, 2.0),
                              labels=s.labels[0], roi_names=("A",))
    assert len(res.ct_paths) == 8
    d = pydicom.dcmread(res.ct_paths[3])
    hu = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
    np.testing.assert_allclose(hu, -1000 + 2000 * s.images[0, 3].astype(np.float64), atol=0.5 + 1e-4)
