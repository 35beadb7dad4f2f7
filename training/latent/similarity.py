"""Similarity of patients in latent space (thesis 4.6, 7.5; SPEC F23).

Every posterior is a diagonal Gaussian q_i = N(µ_i, diag σ_i²) given by (µ_i, log σ_i²),
arrays of shape (N, J). The matrix here is always

    D[i, j] = KL(q_i ‖ q_j) = ½ Σ_d [ log σ_jd² − log σ_id² + (σ_id² + (µ_id − µ_jd)²) / σ_jd² − 1 ]

in nats: row i is the distribution the expectation is taken under ("from"), column j the
reference ("to"). KL is asymmetric; the symmetric option used throughout the project is
the mean of both directions, S[i, j] = ½ (KL(q_i ‖ q_j) + KL(q_j ‖ q_i)) (half of
Jeffreys' divergence), so S has the same units and scale as one directed KL.

The matrix is built from three matrix products instead of an (N, M, J) broadcast, so its
cost is O(N·M·J) flops with O(N·M) memory and no Python loop over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KL_DIRECTION = "KL(q_i || q_j): row i = posterior the expectation is under, column j = reference; nats"
SYMMETRIC_DEFINITION = "0.5 * (KL(q_i || q_j) + KL(q_j || q_i)); nats"


def _as2d(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, J), got {arr.shape}")
    return arr


def kl_matrix(mu_p, logvar_p, mu_q=None, logvar_q=None) -> np.ndarray:
    """D[i, j] = KL(p_i ‖ q_j) between diagonal Gaussians, float64 (N, M), nats.

    p_i = N(mu_p[i], exp(logvar_p[i])), q_j likewise; with mu_q/logvar_q omitted q = p and
    the diagonal is exactly 0. Inputs are (N, J) and (M, J) arrays (log-variances, not σ).
    Negative round-off is clipped to 0.
    """
    mu_p = _as2d(mu_p, "mu_p")
    lv_p = _as2d(logvar_p, "logvar_p")
    same = mu_q is None and logvar_q is None
    mu_q = mu_p if mu_q is None else _as2d(mu_q, "mu_q")
    lv_q = lv_p if logvar_q is None else _as2d(logvar_q, "logvar_q")
    if mu_p.shape != lv_p.shape or mu_q.shape != lv_q.shape or mu_p.shape[1] != mu_q.shape[1]:
        raise ValueError(
            f"shapes disagree: mu_p {mu_p.shape}, logvar_p {lv_p.shape}, mu_q {mu_q.shape}, logvar_q {lv_q.shape}"
        )
    var_p = np.exp(lv_p)
    prec_q = np.exp(-lv_q)  # 1 / σ_q²
    # Σ_d (σ_p² + µ_p²)/σ_q² − 2 µ_p µ_q/σ_q² + µ_q²/σ_q²  expands the quadratic term.
    d = (var_p + mu_p * mu_p) @ prec_q.T
    d -= 2.0 * (mu_p @ (mu_q * prec_q).T)
    d += (mu_q * mu_q * prec_q).sum(1)[None, :]
    d += lv_q.sum(1)[None, :] - lv_p.sum(1)[:, None]
    d -= mu_p.shape[1]
    d *= 0.5
    np.maximum(d, 0.0, out=d)
    if same:
        np.fill_diagonal(d, 0.0)
    return d


def symmetrise(kl: np.ndarray) -> np.ndarray:
    """S = ½ (D + Dᵀ) for a square directed KL matrix D (see SYMMETRIC_DEFINITION)."""
    kl = np.asarray(kl, dtype=np.float64)
    if kl.ndim != 2 or kl.shape[0] != kl.shape[1]:
        raise ValueError(f"symmetrise needs a square matrix, got {kl.shape}")
    return 0.5 * (kl + kl.T)


def similarity_matrix(mu, logvar, symmetric: bool = False) -> np.ndarray:
    """KL(q_i ‖ q_j) for all pairs of one set, or its symmetric mean when `symmetric`."""
    d = kl_matrix(mu, logvar)
    return symmetrise(d) if symmetric else d


def nearest(kl: np.ndarray, i: int, k: int = 5, exclude_self: bool = True) -> list[tuple[int, float]]:
    """The k columns j with the smallest kl[i, j], ascending: [(j, value), ...].

    For a directed matrix this ranks references j by KL(q_i ‖ q_j).
    """
    row = np.asarray(kl, dtype=np.float64)[i].copy()
    if exclude_self and kl.shape[0] == kl.shape[1]:
        row[i] = np.inf
    k = max(0, min(k, int(np.isfinite(row).sum())))
    order = np.argsort(row, kind="stable")[:k]
    return [(int(j), float(row[j])) for j in order]


def nearest_all(kl: np.ndarray, k: int = 5, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N, k) and values (N, k) of each row's k smallest entries, ascending."""
    d = np.array(kl, dtype=np.float64)
    if exclude_self and d.shape[0] == d.shape[1]:
        np.fill_diagonal(d, np.inf)
    k = min(k, d.shape[1] - (1 if exclude_self and d.shape[0] == d.shape[1] else 0))
    part = np.argpartition(d, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(d), 0), int)
    vals = np.take_along_axis(d, part, 1)
    order = np.argsort(vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)


LEVELS = ("patient", "series")


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"level must be 'patient' or 'series', got {level!r}")
    return level


def patient_ranks(rank_of_self, patients) -> tuple[list[str], np.ndarray]:
    """(patients in first-seen order, each patient's worst rank over its query series).

    A patient counts as identified (rank 0) only when the query of every one of its series
    is nearest one of its own references; top-3 likewise; the rank is the worst of its
    series' ranks, so a patient with two series cannot score twice.
    """
    keys = [str(p) for p in patients]
    order = list(dict.fromkeys(keys))
    index = {k: i for i, k in enumerate(order)}
    worst = np.zeros(len(order), np.int64)
    np.maximum.at(worst, np.array([index[k] for k in keys], np.int64), np.asarray(rank_of_self, np.int64))
    return order, worst


def unit_stats(rank_of_self, patients=None, level: str = "series") -> dict:
    """Counts of an identification in the unit its level names.

    level "series": one count per query row (a CT series, a workspace entry); level
    "patient": one per patient (patient_ranks), the rows' `patients` grouping them.
    {"unit", "n", "n_identified", "n_top3", "mean_rank"} (mean rank: 1 = nearest).
    """
    rank = np.asarray(rank_of_self, np.int64)
    if _check_level(level) == "patient" and patients is not None:
        rank = patient_ranks(rank, patients)[1]
    n = len(rank)
    return {"unit": level, "n": n, "n_identified": int((rank == 0).sum()), "n_top3": int((rank < 3).sum()),
            "mean_rank": float(np.mean(rank + 1)) if n else float("nan")}


def count_text(k: int, n: int, unit: str) -> str:
    """'4 of 4 patients', '3 of 5 series', '1 of 1 patient'."""
    many = "series" if unit == "series" else unit + "s"
    return f"{k} of {n} {unit if n == 1 else many}"


class _SeriesOfPatients:
    """Counts of rows (CT series, `names`) and of the patients among them (`patients`)."""

    names: list[str]
    patients: list[str] | None

    @property
    def n_series(self) -> int:
        return len(self.names)

    @property
    def n_patients(self) -> int:
        """Distinct patients among the rows (not the number of rows: see n_series)."""
        return len(set(self.patients))


@dataclass
class Identification(_SeriesOfPatients):
    """Result of the identification experiment of thesis 7.5.

    Rows are CT series (workspace entries; names PAT-0001, PAT-0001-2, ...), `patients`
    the patient of each row. kl[i, j] = KL(q_b,i ‖ q_a,j): query i (series i's slice b)
    against reference j (series j's slice a), or the symmetric mean when `symmetric`.
    A query is identified when a reference of its own has the smallest value in its row
    (its own series at level "series"; any series of its patient at level "patient";
    ties count as not identified unless the own reference is the first in order).

    Counts are in the level's unit: `n`, `n_identified` count series at level "series"
    and patients at level "patient" (a patient is identified when the query of every one
    of its series is; see patient_ranks). `n_series`, `n_series_identified` always count
    rows.
    """

    kl: np.ndarray  # (N, N)
    names: list[str]
    symmetric: bool
    nearest: np.ndarray  # (N,) column of the smallest value per row
    rank_of_self: np.ndarray  # (N,) 0 = own reference nearest
    mean_same: float  # mean of the diagonal (a series' slice b against its own slice a)
    mean_different: float  # mean of the off-diagonal entries (any two different series)
    confusions: list[tuple[int, int, float, float]] = field(default_factory=list)
    # (row i, nearest j not its own, kl[i, j], kl[i, i]) for every query not identified
    patients: list[str] | None = None  # patient of each row; None: each row its own patient
    level: str = "series"

    def __post_init__(self) -> None:
        _check_level(self.level)
        if self.patients is None:
            self.patients = list(self.names)

    @property
    def unit(self) -> str:
        return self.level

    @property
    def n_series_identified(self) -> int:
        return int((self.rank_of_self == 0).sum())

    def stats(self) -> dict:
        return unit_stats(self.rank_of_self, self.patients, self.level)

    @property
    def n(self) -> int:
        return self.n_patients if self.level == "patient" else self.n_series

    @property
    def n_identified(self) -> int:
        return self.stats()["n_identified"]

    def score_text(self) -> str:
        """'4 of 4 patients identified', '3 of 5 series identified'."""
        return f"{count_text(self.n_identified, self.n, self.unit)} identified"

    def rule_text(self) -> str:
        from training.store.units import plural, series_of_patients

        if self.level == "patient":
            return ("counted per patient: a patient counts when the query (slice b) of each of its "
                    "series is nearest a slice a of one of its own series; "
                    f"{plural(self.n_series, 'series', 'series')} queried, {self.n_series_identified} "
                    "of them nearest their own patient")
        return ("counted per series: own slice a nearest to own slice b; "
                f"{series_of_patients(self.n_series, self.n_patients)}")

    def means_text(self, fmt: str = ".6g", unit: str = "") -> str:
        several = self.n_patients < self.n_series
        return (f"mean divergence, same series (diagonal): {self.mean_same:{fmt}}{unit}; different series: "
                f"{self.mean_different:{fmt}}{unit}"
                + (" (other series of the same patient included)" if several else ""))

    @property
    def direction(self) -> str:
        return (
            "0.5*(KL(q_b,i || q_a,j) + KL(q_a,j || q_b,i))" if self.symmetric else "KL(q_b,i || q_a,j)"
        ) + ": i = query (slice b), j = reference (slice a); nats"

    def summary(self) -> str:
        lines = [
            f"identified {count_text(self.n_identified, self.n, self.unit)} "
            f"({self.rule_text()}); divergence {self.direction}",
            self.means_text(),
        ]
        for i, j, v, own in self.confusions:
            lines.append(
                f"  confused: {self.names[i]} nearest to {self.names[j]} ({v:.6g}) rather than "
                + ("its own series" if self.level == "series" else "a series of its own patient")
                + f" ({own:.6g})"
            )
        return "\n".join(lines)


def identify(mu_a, logvar_a, mu_b, logvar_b, names=None, symmetric: bool = False,
             groups=None, patients=None) -> Identification:
    """Identification (thesis 7.5): is each series' slice b nearest its own slice a?

    Row i of each array belongs to entry (CT series) i in both sets (shape (N, J)).
    groups: None (series level: only row i's own reference counts, counts per series) or
    one patient key per row (patient level: any reference of the same patient counts as
    found, so a match to another series of the same patient is not a confusion;
    rank_of_self is then the position of the first reference of the own patient, and the
    counts are per patient). patients: the patient of each row at series level (for the
    counts' wording; default: groups, else each row its own patient).
    """
    mu_a, lv_a, mu_b, lv_b = (_as2d(v, n) for v, n in ((mu_a, "mu_a"), (logvar_a, "logvar_a"), (mu_b, "mu_b"), (logvar_b, "logvar_b")))
    n = len(mu_a)
    if len(mu_b) != n:
        raise ValueError(f"slice a has {n} rows and slice b {len(mu_b)}; they must match row by row")
    names = [str(v) for v in (names if names is not None else range(n))]
    owners = groups if groups is not None else patients
    owners = [str(v) for v in owners] if owners is not None else None
    if owners is not None and len(owners) != n:
        raise ValueError(f"{len(owners)} patients for {n} rows")
    d = kl_matrix(mu_b, lv_b, mu_a, lv_a)
    if symmetric:
        d = 0.5 * (d + kl_matrix(mu_a, lv_a, mu_b, lv_b).T)
    order = np.argsort(d, axis=1, kind="stable")
    own = _own_mask(n, groups)
    rank = np.argmax(np.take_along_axis(own, order, 1), axis=1)
    nearest_j = order[:, 0]
    off = ~np.eye(n, dtype=bool)
    confusions = []
    for i in np.flatnonzero(rank != 0):
        j = int(order[i, np.flatnonzero(~own[i, order[i]])[0]])
        confusions.append((int(i), j, float(d[i, j]), float(d[i, i])))
    return Identification(
        kl=d,
        names=names,
        symmetric=symmetric,
        nearest=nearest_j,
        rank_of_self=rank,
        mean_same=float(np.mean(np.diag(d))),
        mean_different=float(d[off].mean()) if n > 1 else float("nan"),
        confusions=confusions,
        patients=owners,
        level="patient" if groups is not None else "series",
    )


def _own_mask(n: int, groups=None) -> np.ndarray:
    """own[i, j]: reference j counts as patient i's own (the diagonal, or the same group)."""
    if groups is None:
        return np.eye(n, dtype=bool)
    g = np.asarray([str(v) for v in groups])
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries for {n} rows")
    return g[:, None] == g[None, :]


# -- baselines beside the KL identification (issue 15) ------------------------------------------

METHODS = {
    "kl_directed": "KL(q_b,i ‖ q_a,j), directed",
    "kl_symmetric": "½(KL(q_b,i ‖ q_a,j) + KL(q_a,j ‖ q_b,i))",
    "euclidean_mu": "Euclidean ‖µ_b,i − µ_a,j‖ between posterior means",
    "pixel_l2": "pixel L2 ‖x_b,i − x_a,j‖ between preprocessed images (windowed CT)",
    "recon_l2": "pixel L2 between reconstructions decode(µ) (CT channel)",
}


def pairwise_l2(query, reference) -> np.ndarray:
    """d[i, j] = ‖query_i − reference_j‖₂ over all trailing axes, float64 (N, M)."""
    q = np.asarray(query, np.float64).reshape(len(query), -1)
    r = np.asarray(reference, np.float64).reshape(len(reference), -1)
    d2 = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * (q @ r.T)
    return np.sqrt(np.maximum(d2, 0.0))


@dataclass
class MethodScore:
    """One method's identification: distance[i, j] between query i (slice b of series i)
    and reference j (slice a of series j); rank_of_self[i] = 0 when a reference of i's own
    (series, or patient at level "patient") is the nearest. Ties count against
    identification: rank = number of other references with a distance ≤ the nearest own
    reference's.

    n, n_identified, n_top3, mean_rank count query rows (CT series) at either level;
    stats() counts in the level's unit (per patient at level "patient", unit_stats)."""

    method: str
    distance: np.ndarray
    rank_of_self: np.ndarray
    patients: list[str] | None = None  # patient of each row (level "patient")
    level: str = "series"

    @property
    def title(self) -> str:
        return METHODS.get(self.method, self.method)

    @property
    def n(self) -> int:
        return len(self.rank_of_self)

    @property
    def n_identified(self) -> int:
        return int((self.rank_of_self == 0).sum())

    @property
    def n_top3(self) -> int:
        return int((self.rank_of_self < 3).sum())

    @property
    def mean_rank(self) -> float:
        """Mean rank of the own reference, 1 = nearest."""
        return float(np.mean(self.rank_of_self + 1)) if self.n else float("nan")

    def stats(self) -> dict:
        """The counts in the level's unit: {"unit", "n", "n_identified", "n_top3", "mean_rank"}."""
        return unit_stats(self.rank_of_self, self.patients, self.level)

    def to_dict(self) -> dict:
        """n, n_identified, n_top3, mean_rank per query series ("unit": "series"); at level
        "patient" also "per_patient" with the same keys counted per patient."""
        d = {"method": self.method, "definition": self.title, "unit": "series", "n": self.n,
             "n_identified": self.n_identified, "n_top3": self.n_top3, "mean_rank": self.mean_rank}
        if self.level == "patient" and self.patients is not None:
            d["per_patient"] = {k: v for k, v in self.stats().items() if k != "unit"}
        return d


def score(method: str, distance, groups=None) -> MethodScore:
    """Ranks of the own reference in each row of a query × reference distance matrix;
    groups (one patient per row): level "patient", see _own_mask."""
    d = np.asarray(distance, np.float64)
    n = len(d)
    own = _own_mask(n, groups)
    best_own = np.where(own, d, np.inf).min(1)
    rank = (np.where(own, np.inf, d) <= best_own[:, None]).sum(1)
    return MethodScore(method, d, rank.astype(np.int64),
                       None if groups is None else [str(g) for g in groups],
                       "series" if groups is None else "patient")


@dataclass
class Comparison(_SeriesOfPatients):
    """Identification by every method of METHODS on the same queries and references.

    names: entry labels (rows, CT series); patients: the patient of each row; level:
    "patient" or "series" (see identify's groups). table() counts in the level's unit."""

    names: list[str]
    patients: list[str]
    level: str
    scores: dict[str, MethodScore]

    @property
    def n(self) -> int:
        """Count of the level's unit: patients at level "patient", series at "series"."""
        return self.n_patients if self.level == "patient" else self.n_series

    def table(self) -> str:
        from training.store.units import series_of_patients

        unit = self.level
        lines = [f"{'method':<14} {'nearest to self':>20} {'top-3':>20} {'mean rank':>10}   definition"]
        for m, sc in self.scores.items():
            st = sc.stats()
            lines.append(f"{m:<14} {count_text(st['n_identified'], st['n'], unit):>20} "
                         f"{count_text(st['n_top3'], st['n'], unit):>20} {st['mean_rank']:>10.2f}   {sc.title}")
        queries = series_of_patients(self.n_series, self.n_patients)
        if unit == "patient":
            lines.append(f"(counted per patient, {queries} queried; level: patient — a match to another series "
                         "of the same patient counts as found; a patient counts as identified when the query "
                         "of each of its series is, its rank is the worst of its series')")
        else:
            lines.append(f"(counted per series, {queries}; level: series — only the query's own series counts)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """"n" and every method's n_* count query series; "n_patients" the patients among
        them; at level "patient" each method also has "per_patient" counts."""
        return {"level": self.level, "n": self.n_series, "n_series": self.n_series,
                "n_patients": self.n_patients,
                "methods": {m: sc.to_dict() for m, sc in self.scores.items()}}


def compare(mu_a, logvar_a, mu_b, logvar_b, images_a=None, images_b=None, recon_a=None, recon_b=None,
            names=None, patients=None, level: str = "patient") -> Comparison:
    """Identification by KL (directed, symmetric), Euclidean between means and, where the
    arrays are given, pixel L2 between images and between reconstructions. Row i of every
    array belongs to the same entry."""
    _check_level(level)
    mu_a, lv_a, mu_b, lv_b = (_as2d(v, k) for v, k in ((mu_a, "mu_a"), (logvar_a, "logvar_a"),
                                                        (mu_b, "mu_b"), (logvar_b, "logvar_b")))
    n = len(mu_a)
    names = [str(v) for v in (names if names is not None else range(n))]
    patients = [str(v) for v in (patients if patients is not None else names)]
    groups = patients if level == "patient" else None
    d = kl_matrix(mu_b, lv_b, mu_a, lv_a)
    dists = {"kl_directed": d, "kl_symmetric": 0.5 * (d + kl_matrix(mu_a, lv_a, mu_b, lv_b).T),
             "euclidean_mu": pairwise_l2(mu_b, mu_a)}
    if images_a is not None and images_b is not None:
        dists["pixel_l2"] = pairwise_l2(images_b, images_a)
    if recon_a is not None and recon_b is not None:
        dists["recon_l2"] = pairwise_l2(recon_b, recon_a)
    return Comparison(names, patients, level, {m: score(m, v, groups) for m, v in dists.items()})


ROW_UNITS = ("series", "patient", "image")


def write_matrix_csv(path, matrix: np.ndarray, names: list[str], symmetric: bool,
                     definition: str | None = None, patients: list[str] | None = None,
                     unit: str = "series") -> None:
    """Write a square KL matrix as CSV: one plain header row whose first cell names the
    rows' unit and states the direction (no comment line: spreadsheets and naive readers
    trip on a leading '#'), then one row per row i.

    unit: what a row is — "series" (a workspace entry, one CT series; labels PAT-0001,
    PAT-0001-2), "patient" or "image" ("PAT-0001:3"). With `patients` (the patient
    pseudonym of each row, never a real name or ID) a second column "patient" says which
    rows belong to one patient; the matrix follows from the next column on:

        series \\ KL(...),patient,PAT-0001,PAT-0001-2,…
        PAT-0001,PAT-0001,0.0,…
        PAT-0001-2,PAT-0001,…
    """
    import csv
    import io

    from training.atomic import atomic_write_text

    if unit not in ROW_UNITS:
        raise ValueError(f"unit must be one of {ROW_UNITS}, got {unit!r}")
    names = [str(n) for n in names]
    if patients is not None and len(patients) != len(names):
        raise ValueError(f"{len(patients)} patients for {len(names)} rows")
    buf = io.StringIO()
    definition = definition or (SYMMETRIC_DEFINITION if symmetric else KL_DIRECTION)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([f"{unit} \\ {definition}"] + (["patient"] if patients is not None else []) + names)
    for k, (name, row) in enumerate(zip(names, np.asarray(matrix))):
        w.writerow([name] + ([str(patients[k])] if patients is not None else [])
                   + [repr(float(v)) for v in row])
    atomic_write_text(path, buf.getvalue())
