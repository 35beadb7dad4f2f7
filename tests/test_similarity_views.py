"""training.explore.similarity and training.explore.volume without Qt: KL against
torch.distributions, heat colours by hand, identification rows, 3D stacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_panel_similarity import _one_torch_thread, write_checkpoint, write_workspace  # noqa: F401


def test_patient_similarity_against_torch_distributions(tmp_path):
    from torch.distributions import Normal, kl_divergence

    from training.vae.checkpoint import load_model
    from training.explore.similarity import patient_similarity
    from training.store.workspace import Workspace

    ws = write_workspace(tmp_path / "ws.h5", rt=True)
    model, _ = load_model(write_checkpoint(tmp_path / "m.pt"))
    with Workspace.open(ws) as w:
        res = patient_similarity(model, w, "mixture")
        with pytest.raises(InterruptedError):
            patient_similarity(model, w, cancel=lambda: True)
    assert res.names == ["PAT-0001", "PAT-0002", "PAT-0003", "PAT-0004"]
    q = [Normal(torch.tensor(m), torch.tensor(np.exp(0.5 * lv))) for m, lv in zip(res.mu, res.logvar)]
    want = np.array([[kl_divergence(a, b).sum().item() for b in q] for a in q])
    np.testing.assert_allclose(res.kl, want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.matrix(True), 0.5 * (want + want.T), rtol=1e-6, atol=1e-9)
    near = res.nearest(0, 2)
    assert [j for j, _ in near] == list(np.argsort(np.where(np.arange(4) == 0, np.inf, want[0]))[:2])
    assert "KL(q_i || q_j)" in res.definition(False) and "0.5" in res.definition(True)


def test_identify_slices_rows_and_3d_refusal(tmp_path):
    from training.latent import encode as latent
    from training.latent import similarity
    from training.vae.checkpoint import load_model
    from training.explore.similarity import identify_slices, slice_rows
    from training.store.workspace import Workspace

    ws = write_workspace(tmp_path / "ws.h5", rt=False)
    model, _ = load_model(write_checkpoint(tmp_path / "m.pt", n_classes=0))
    with Workspace.open(ws) as w:
        pats, ra, rb = slice_rows(w, 1, -1)
        assert pats == [0, 1, 2, 3] and ra[:, 1].tolist() == [1] * 4 and rb[:, 1].tolist() == [4] * 4
        # a negative index beyond the stack (5 images) is out of range, not wrapped around
        assert slice_rows(w, 1, -6)[0] == [] and slice_rows(w, -5, 1)[1][:, 1].tolist() == [0] * 4
        calls = []
        res = identify_slices(model, w, 1, -1, symmetric=True, progress=lambda d, t: calls.append((d, t)))
        ea = latent.encode_workspace(model, w, rows=ra)
        eb = latent.encode_workspace(model, w, rows=rb)
    want = similarity.identify(ea.mu, ea.logvar, eb.mu, eb.logvar, names=res.names, symmetric=True)
    np.testing.assert_allclose(res.kl, want.kl)
    assert calls[-1] == (8, 8)
    ws3 = write_workspace(tmp_path / "ws3.h5", rt=False, depth=16)
    model3, _ = load_model(write_checkpoint(tmp_path / "m3.pt", n_classes=0, spatial_dims=3))
    with Workspace.open(ws3) as w, pytest.raises(ValueError, match="2D workspace"):
        identify_slices(model3, w, 0, 1)


def test_heat_colours_by_hand():
    from training.explore.similarity import heat_rgb, heat_scale, is_dark

    m = np.array([[0.0, 1.0, 3.0], [7.0, 0.0, 1.0], [3.0, 1.0, 0.0]])
    t = heat_scale(m)  # off-diagonal 1 … 7: log1p(v − 1) / log1p(6)
    np.testing.assert_allclose(t[0, 2], np.log1p(2.0) / np.log1p(6.0))
    assert t[1, 0] == 1.0 and t[0, 1] == 0.0 and t[0, 0] == 0.0  # the diagonal clips to 0
    rgb = heat_rgb(m)
    assert rgb.shape == (3, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == (8, 29, 88) and tuple(rgb[1, 0]) == (255, 255, 217)
    assert is_dark(rgb[0, 1]) and not is_dark(rgb[1, 0])
    assert np.all(np.isnan(heat_scale(np.array([np.nan]), 0.0, 1.0)))


def test_volume_views_3d_reconstruction_is_one_volume(tmp_path):
    from training.latent import encode as latent
    from training.explore import volume as vv
    from training.vae.checkpoint import load_model
    from training.store.workspace import Workspace

    ws = write_workspace(tmp_path / "ws3.h5", rt=True, depth=16)
    model, _ = load_model(write_checkpoint(tmp_path / "m3.pt", spatial_dims=3))
    with Workspace.open(ws) as w:
        pair = vv.reconstruction_pair(model, w, 1)
        vol, lab = w.read_patient(1)
        gen = vv.generated_pair(model, w, 1, seed=3)
    assert pair.mode == "3d" and pair.left.images.shape == (16, 16, 16) and pair.codes.shape == (1, 3)
    np.testing.assert_array_equal(pair.left.images, vol[0])
    np.testing.assert_array_equal(pair.left.labels, lab[0])
    mu, _ = latent.encode_arrays(model, vol, lab)
    dec = latent.decode(model, mu)
    np.testing.assert_allclose(pair.right.images, dec.ct[0], atol=1e-6)
    np.testing.assert_array_equal(pair.right.labels, dec.labels[0])
    assert gen.right.images.shape == (16, 16, 16) and "seed 3" in gen.note
