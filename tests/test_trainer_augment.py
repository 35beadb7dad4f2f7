"""Augmentation by the approximate prior (thesis 4.5.2, Algorithm 2; SPEC F15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import training.vae.trainer as trainer_mod
from training.config import ModelConfig, TrainConfig
from training.vae.model import VAE
from training.vae.trainer import Callback, Trainer, sample_aggregate_posterior
from training.store.workspace import write_arrays_workspace

torch.set_num_threads(1)

MU = torch.tensor([[-2.0, 0.5], [1.0, 3.0], [4.0, -1.0]], dtype=torch.float64)
LOGVAR = torch.log(torch.tensor([[0.25, 1.0], [0.5, 0.1], [2.0, 0.3]], dtype=torch.float64))


def test_draws_have_the_mixture_mean_and_covariance():
    n = 400_000
    z = sample_aggregate_posterior(MU, LOGVAR, n, torch.Generator().manual_seed(0)).numpy()
    mu, var = MU.numpy(), LOGVAR.exp().numpy()
    mean = mu.mean(0)
    # law of total covariance: E[Cov(z|k)] + Cov(E[z|k]), k uniform over K
    cov = np.diag(var.mean(0)) + (mu - mean).T @ (mu - mean) / len(mu)
    assert z.shape == (n, 2)
    np.testing.assert_allclose(z.mean(0), mean, atol=4 * np.sqrt(np.diag(cov) / n).max())
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.03)


def test_marginals_follow_the_mixture_cdf():
    z = sample_aggregate_posterior(MU, LOGVAR, 20_000, torch.Generator().manual_seed(1)).numpy()
    sd = np.sqrt(LOGVAR.exp().numpy())
    for j in range(2):
        cdf = lambda t, j=j: np.mean([stats.norm.cdf(t, MU[k, j].item(), sd[k, j]) for k in range(3)], axis=0)
        assert stats.kstest(z[:, j], cdf).pvalue > 1e-3
    # not a single fitted Gaussian: the first coordinate is clearly multi-modal
    assert stats.kstest(z[:, 0], "norm", args=(z[:, 0].mean(), z[:, 0].std())).pvalue < 1e-6


def test_seeded_and_validated():
    g = lambda: torch.Generator().manual_seed(7)
    assert torch.equal(sample_aggregate_posterior(MU, LOGVAR, 5, g()), sample_aggregate_posterior(MU, LOGVAR, 5, g()))
    with pytest.raises(ValueError):
        sample_aggregate_posterior(MU[:0], LOGVAR[:0], 5, g())
    with pytest.raises(ValueError):
        sample_aggregate_posterior(MU, LOGVAR[:, :1], 5, g())


def test_trainer_trains_on_data_plus_decoded_draws_replacing_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = {f"P{p}": rng.random((4, 16, 16), dtype=np.float32) for p in range(4)}
    labels = {k: (v > 0.5).astype(np.uint8) * 2 + (v > 0.8).astype(np.uint8) * 0 for k, v in images.items()}
    ws = write_arrays_workspace(tmp_path / "w.h5", images, labels, roi_names=("A", "B"), test_fraction=0.25)
    mc = ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=3, fc_units=16, n_classes=3, dropout=0.0)
    cfg = TrainConfig(epochs=3, batch_size=4, threads=1, augment_every=1, augment_count=5)

    drawn = []
    real = trainer_mod.sample_aggregate_posterior

    def spy(mu, logvar, n, generator):
        drawn.append((mu.clone(), real(mu, logvar, n, generator)))
        return drawn[-1][1]

    monkeypatch.setattr(trainer_mod, "sample_aggregate_posterior", spy)
    seen = {}

    class Watch(Callback):
        def on_train_start(self, t):
            seen["t"] = t

        def on_epoch_end(self, epoch, tr, te):
            t = seen["t"]
            seen[epoch] = ({k: v.clone() for k, v in t.model.state_dict().items()}, t._train.extra)

    s = Trainer(ws, mc, cfg, callbacks=[Watch()]).run()
    assert s.status == "finished", s.message
    assert [h["augmented"] for h in s.history] == [0, 5, 5]
    assert [h["images"] for h in s.history] == [12, 17, 17]
    assert len(drawn) == 2 and drawn[0][0].shape == (12, 3)  # encoded: the 12 training images only
    extra2, extra3 = seen[2][1], seen[3][1]
    assert extra2 is not extra3 and len(extra3) == 5  # replaced, not accumulated
    # the draws at epoch index 2 are decoded by the weights after epoch 2
    model = VAE(mc)
    model.load_state_dict(seen[2][0])
    model.eval()
    with torch.no_grad():
        dec = model.decode(drawn[1][1])
    np.testing.assert_allclose(extra3.images, dec.ct[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(extra3.labels, dec.rt_probs().argmax(1).numpy())
