"""KL matrix, symmetric option, nearest patients and identification (thesis 4.6, 7.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from training.latent import similarity as sim

torch.set_num_threads(1)


def _posteriors(n, j=12, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 2, (n, j))
    logvar = rng.normal(-1.0, 1.0, (n, j))  # σ ≠ 1, varies per dimension
    return mu, logvar


def _torch_kl(mu_p, lv_p, mu_q, lv_q):
    p = Independent(Normal(torch.tensor(mu_p)[:, None], torch.tensor(np.exp(0.5 * lv_p))[:, None]), 1)
    q = Independent(Normal(torch.tensor(mu_q)[None], torch.tensor(np.exp(0.5 * lv_q))[None]), 1)
    return kl_divergence(p, q).numpy()  # broadcast (N, M)


def test_directed_kl_matches_torch_distributions():
    mu, lv = _posteriors(9)
    mu2, lv2 = _posteriors(7, seed=1)
    ref = _torch_kl(mu, lv, mu, lv)
    got = sim.kl_matrix(mu, lv)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    assert not np.allclose(got, got.T), "KL must be asymmetric for unequal variances"
    np.testing.assert_allclose(sim.kl_matrix(mu, lv, mu2, lv2), _torch_kl(mu, lv, mu2, lv2), rtol=1e-10, atol=1e-10)
    assert np.all(np.diag(got) == 0.0)


def test_symmetric_is_half_sum_of_both_directions():
    mu, lv = _posteriors(6)
    ref = _torch_kl(mu, lv, mu, lv)
    s = sim.similarity_matrix(mu, lv, symmetric=True)
    np.testing.assert_allclose(s, 0.5 * (ref + ref.T), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(s, s.T)


def test_direction_is_stated_in_csv(tmp_path):
    mu, lv = _posteriors(3)
    path = tmp_path / "kl.csv"
    sim.write_matrix_csv(path, sim.kl_matrix(mu, lv), ["a", "b", "c"], symmetric=False)
    first = path.read_text().splitlines()[0]
    # a plain header row (no '#' comment line) whose first cell states the direction
    assert not first.startswith("#") and "KL(q_i || q_j)" in first and "row i" in first
    import csv

    header = next(csv.reader([first]))
    assert header[1:] == ["a", "b", "c"] and header[0].startswith("series \\ KL")
    rows = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2, 3))
    np.testing.assert_allclose(rows, sim.kl_matrix(mu, lv), rtol=1e-15)


def test_nearest_ranks_by_row():
    kl = np.array([[0, 3, 1, 2], [5, 0, 4, 6], [1, 1, 0, 9], [7, 8, 2, 0]], float)
    assert sim.nearest(kl, 0, k=2) == [(2, 1.0), (3, 2.0)]
    assert [j for j, _ in sim.nearest(kl, 0, k=10)] == [2, 3, 1]
    idx, vals = sim.nearest_all(kl, k=2)
    np.testing.assert_array_equal(idx, [[2, 3], [2, 0], [0, 1], [2, 0]])
    np.testing.assert_array_equal(vals[:, 0], [1, 4, 1, 2])


def test_identification_toy_case_with_known_answer():
    # Patients 0..4 far apart on dimension 0; slice b is a small shift of slice a, except
    # patient 3's slice b lies right on patient 4's slice a.
    mu_a = np.zeros((5, 3))
    mu_a[:, 0] = np.arange(5) * 10.0
    mu_b = mu_a + 0.5
    mu_b[3] = mu_a[4]
    lv = np.zeros((5, 3))
    res = sim.identify(mu_a, lv, mu_b, lv, names=list("ABCDE"))
    assert res.n_identified == 4 and res.n_patients == 5
    assert res.nearest.tolist() == [0, 1, 2, 4, 4]
    assert res.rank_of_self.tolist() == [0, 0, 0, 1, 0]
    assert [(i, j) for i, j, _, _ in res.confusions] == [(3, 4)]
    # σ = 1: KL = ½‖Δµ‖²; same-patient pairs shifted by 0.5 in 3 dims, patient 3 by 10.
    same = (4 * 0.5 * 3 * 0.25 + 0.5 * 100) / 5
    assert res.mean_same == pytest.approx(same)
    assert res.mean_different == pytest.approx(res.kl[~np.eye(5, dtype=bool)].mean())
    text = res.summary()
    assert "4 of 5" in text and "D nearest to E" in text and "KL(q_b,i || q_a,j)" in text


def test_identification_symmetric_option():
    mu_a, lv_a = _posteriors(4)
    mu_b, lv_b = mu_a + 0.1, lv_a + 0.2
    res = sim.identify(mu_a, lv_a, mu_b, lv_b, symmetric=True)
    ref = 0.5 * (_torch_kl(mu_b, lv_b, mu_a, lv_a) + _torch_kl(mu_a, lv_a, mu_b, lv_b).T)
    np.testing.assert_allclose(res.kl, ref, rtol=1e-10, atol=1e-10)
    assert res.n_identified == 4
