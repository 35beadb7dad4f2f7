"""Ranking earlier patients for a new one (issue 16; thesis 4.6, 7.5).

A query patient's posterior q = N(µ_q, diag σ_q²) is compared with each stored patient's
posterior q_j = N(µ_j, diag σ_j²) (all diagonal Gaussians given by µ and log σ²). The
ranking divergence is, by default,

    D_j = KL(q ‖ q_j) = ½ Σ_d [ log σ_jd² − log σ_qd² + (σ_qd² + (µ_qd − µ_jd)²) / σ_jd² − 1 ]

in nats: the expectation is under the QUERY's posterior and the earlier patient is the
reference. Why this direction: it is the direction of the thesis' identification
experiment (7.5: the image encoded afterwards, slice b, against the fitted references,
slice a; training.latent.similarity.identify), so a query ranks earlier patients exactly as
that experiment ranks references; and it reads as the information lost when an earlier
patient's posterior stands in for the new patient's (codes the new patient makes likely
but the earlier one does not are penalised). "reverse" (KL(q_j ‖ q)) and "symmetric"
(½ (KL(q ‖ q_j) + KL(q_j ‖ q)), the project's symmetric convention) are available.

Baselines beside it, as a check that the KL ranking is not an artefact: the Euclidean
distance between the posterior means ‖µ_q − µ_j‖₂ (ignores σ), and a pixel distance (see
training.explore.query). Everything is vectorised over the stored patients: O(N·J) time and
O(N) extra memory beyond one (N, J) temporary, no Python loop over patients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIRECTIONS = ("query", "reverse", "symmetric")
DIRECTION_TEXT = {
    "query": "KL(q_query || q_j): expectation under the query's posterior, earlier patient j the "
             "reference (the direction ct-vae identify uses: thesis 4.6's D_KL(q1 || q2) with the query as q1; the "
             "thesis leaves the direction open); nats",
    "reverse": "KL(q_j || q_query): expectation under earlier patient j's posterior; nats",
    "symmetric": "0.5 * (KL(q_query || q_j) + KL(q_j || q_query)); nats",
}


def _vec(a, name: str) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64)
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1:
        raise ValueError(f"{name} must have shape (J,), got {v.shape}")
    return v


def _mat(a, name: str) -> np.ndarray:
    m = np.asarray(a)
    if m.dtype not in (np.float32, np.float64):
        m = m.astype(np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must have shape (N, J), got {m.shape}")
    return m


def kl_query_to_many(mu_q, logvar_q, mu, logvar) -> np.ndarray:
    """KL(q ‖ q_j) for every row j: float64 (N,), nats (module docstring)."""
    mu_q, lv_q = _vec(mu_q, "mu_q"), _vec(logvar_q, "logvar_q")
    mu, lv = _mat(mu, "mu"), _mat(logvar, "logvar")
    if mu.shape != lv.shape or mu.shape[1:] != mu_q.shape or lv_q.shape != mu_q.shape:
        raise ValueError(f"shapes disagree: mu_q {mu_q.shape}, logvar_q {lv_q.shape}, mu {mu.shape}, "
                         f"logvar {lv.shape}")
    # Σ_d [ (σ_q² + (µ_q − µ_j)²) e^{−lv_j} + lv_j ] − Σ_d lv_q − J, as one (N, J) pass
    d = mu - mu_q  # float64 (mu_q is)
    np.square(d, out=d)
    d += np.exp(lv_q)
    d *= np.exp(-lv.astype(np.float64))
    out = d.sum(1)
    out += lv.sum(1, dtype=np.float64)
    out -= lv_q.sum() + mu_q.size
    out *= 0.5
    return np.maximum(out, 0.0, out=out)


def kl_many_to_query(mu, logvar, mu_q, logvar_q) -> np.ndarray:
    """KL(q_j ‖ q) for every row j: float64 (N,), nats."""
    mu_q, lv_q = _vec(mu_q, "mu_q"), _vec(logvar_q, "logvar_q")
    mu, lv = _mat(mu, "mu"), _mat(logvar, "logvar")
    if mu.shape != lv.shape or mu.shape[1:] != mu_q.shape or lv_q.shape != mu_q.shape:
        raise ValueError(f"shapes disagree: mu_q {mu_q.shape}, logvar_q {lv_q.shape}, mu {mu.shape}, "
                         f"logvar {lv.shape}")
    prec_q = np.exp(-lv_q)
    d = mu - mu_q  # float64 (mu_q is)
    np.square(d, out=d)
    d += np.exp(lv.astype(np.float64))
    out = np.einsum("ij,j->i", d, prec_q)
    out -= lv.sum(1, dtype=np.float64)
    out += lv_q.sum() - mu_q.size
    out *= 0.5
    return np.maximum(out, 0.0, out=out)


def divergence(mu_q, logvar_q, mu, logvar, direction: str = "query") -> np.ndarray:
    """The ranking divergence of each stored patient for `direction` (DIRECTIONS)."""
    if direction == "query":
        return kl_query_to_many(mu_q, logvar_q, mu, logvar)
    if direction == "reverse":
        return kl_many_to_query(mu, logvar, mu_q, logvar_q)
    if direction == "symmetric":
        return 0.5 * (kl_query_to_many(mu_q, logvar_q, mu, logvar) + kl_many_to_query(mu, logvar, mu_q, logvar_q))
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def euclidean_to_many(mu_q, mu) -> np.ndarray:
    """‖µ_q − µ_j‖₂ for every row j: float64 (N,) (the baseline that ignores σ)."""
    mu_q = _vec(mu_q, "mu_q")
    d = _mat(mu, "mu") - mu_q
    np.square(d, out=d)
    return np.sqrt(d.sum(1))


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based rank of each value among all (1 = smallest; ties keep index order)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    r = np.empty(len(values), dtype=np.int64)
    r[order] = np.arange(1, len(values) + 1)
    return r


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest values, ascending (argpartition, then a sort of k)."""
    values = np.asarray(values)
    n = len(values)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(values, k - 1)[:k]
    else:
        part = np.arange(n)
    # stable on ties: sort by (value, index)
    return part[np.lexsort((part, values[part]))].astype(np.int64)


@dataclass
class Ranking:
    """Every stored patient against one query. Arrays are (N,) in the order of `names`.

    divergence: the ranking divergence (`direction`, DIRECTION_TEXT); rank: 1-based rank
    by it; kl_query, kl_reverse: both directed KLs; euclid (+ euclid_rank): the baseline
    between means. order: indices sorted by divergence (best first).
    """

    names: list[str]
    direction: str
    divergence: np.ndarray
    rank: np.ndarray
    kl_query: np.ndarray
    kl_reverse: np.ndarray
    euclid: np.ndarray
    euclid_rank: np.ndarray
    order: np.ndarray

    @property
    def definition(self) -> str:
        return DIRECTION_TEXT[self.direction]


class PosteriorIndex:
    """Stored posteriors prepared once for many queries: µ (float64), σ² = e^{log σ²},
    1/σ² and Σ_d log σ² per patient, so a query costs one (N, J) difference and a few
    matrix-vector products (no exponentials over N·J)."""

    def __init__(self, mu, logvar):
        mu, lv = _mat(mu, "mu"), _mat(logvar, "logvar")
        if mu.shape != lv.shape:
            raise ValueError(f"shapes disagree: mu {mu.shape}, logvar {lv.shape}")
        self.mu = np.ascontiguousarray(mu, dtype=np.float64)
        lv = np.asarray(lv, dtype=np.float64)
        self.var = np.exp(lv)
        self.prec = np.exp(-lv)
        self.lv_sum = lv.sum(1)

    def __len__(self) -> int:
        return len(self.mu)

    def divergences(self, mu_q, logvar_q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(KL(q ‖ q_j), KL(q_j ‖ q), ‖µ_q − µ_j‖₂), each float64 (N,)."""
        mu_q, lv_q = _vec(mu_q, "mu_q"), _vec(logvar_q, "logvar_q")
        if mu_q.shape != self.mu.shape[1:] or lv_q.shape != mu_q.shape:
            raise ValueError(f"query posterior {mu_q.shape}/{lv_q.shape} does not fit stored J = {self.mu.shape[1]}")
        # einsum, not `@`: a matrix-vector product this small gains nothing from BLAS
        # threads, and on a loaded machine waking them cost 20-30 ms in one measurement
        j = mu_q.size
        var_q, prec_q = np.exp(lv_q), np.exp(-lv_q)
        d2 = self.mu - mu_q
        d2 *= d2
        # KL(q‖q_j) = ½ [Σ σ_q²/σ_j² + Σ (µ_q−µ_j)²/σ_j² + Σ log σ_j² − Σ log σ_q² − J]
        kq = np.einsum("ij,j->i", self.prec, var_q)
        kq += np.einsum("ij,ij->i", d2, self.prec)
        kq += self.lv_sum - (lv_q.sum() + j)
        kq *= 0.5
        # KL(q_j‖q) = ½ [Σ σ_j²/σ_q² + Σ (µ_q−µ_j)²/σ_q² + Σ log σ_q² − Σ log σ_j² − J]
        kr = np.einsum("ij,j->i", self.var, prec_q)
        kr += np.einsum("ij,j->i", d2, prec_q)
        kr += (lv_q.sum() - j) - self.lv_sum
        kr *= 0.5
        eu = np.sqrt(d2.sum(1))
        return np.maximum(kq, 0.0, out=kq), np.maximum(kr, 0.0, out=kr), eu


def make_ranking(names, direction: str, kl_q, kl_r, euclid) -> Ranking:
    """A Ranking from both directed KLs and the Euclidean baseline (arrays (N,))."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    kq, kr, eu = (np.asarray(v, dtype=np.float64) for v in (kl_q, kl_r, euclid))
    div = kq if direction == "query" else kr if direction == "reverse" else 0.5 * (kq + kr)
    order = np.argsort(div, kind="stable")
    rank = np.empty(len(div), dtype=np.int64)
    rank[order] = np.arange(1, len(div) + 1)
    return Ranking(names=[str(n) for n in names], direction=direction, divergence=div, rank=rank,
                   kl_query=kq, kl_reverse=kr, euclid=eu, euclid_rank=ranks(eu), order=order)


def rank_patients(mu_q, logvar_q, mu, logvar, names, direction: str = "query",
                  index: PosteriorIndex | None = None) -> Ranking:
    """Rank the stored posteriors (mu, logvar: (N, J); or a prepared `index`) for the
    query's (J,) posterior."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    index = index if index is not None else PosteriorIndex(mu, logvar)
    return make_ranking(names, direction, *index.divergences(mu_q, logvar_q))
