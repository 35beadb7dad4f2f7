"""What the explorer's Similarity tab shows, computed headless (thesis 4.6, 7.5; SPEC F23).

- `patient_similarity`: encode a workspace, one posterior per entry (CT series;
  latent.aggregate_patients aggregates a series' slices; `patients` names each row's
  patient), and the directed matrix D[i, j] = KL(q_i ‖ q_j) in nats
  (row i = the posterior the expectation is under, column j = the reference;
  training.latent.similarity). `PatientSimilarity.matrix(symmetric=True)` is ½ (D + Dᵀ).
- `identify_slices`: the identification experiment of thesis 7.5 on slice indices a and
  b (training.latent.similarity.identify; query i = series i's slice b, reference j = series
  j's slice a, KL(q_b,i ‖ q_a,j); level "patient" counts per patient, "series" per series).
- `heat_rgb`: the table's heat-map colours (low divergence = dark), on a log scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from training.latent import encode as latent
from training.latent import similarity


@dataclass
class PatientSimilarity:
    """Patients' aggregate posteriors and the directed KL matrix between them.

    names: entry pseudonyms (rows and columns); mu, logvar: float64 (P, J); kl: float64
    (P, P), kl[i, j] = KL(q_i ‖ q_j) in nats; aggregate: latent.AGGREGATES method.
    """

    names: list[str]
    mu: np.ndarray
    logvar: np.ndarray
    kl: np.ndarray
    aggregate: str
    n_images: np.ndarray
    patients: list[str] | None = None  # the patient of each row (rows are CT series, entries)

    def matrix(self, symmetric: bool = False) -> np.ndarray:
        return similarity.symmetrise(self.kl) if symmetric else self.kl

    @staticmethod
    def definition(symmetric: bool) -> str:
        return similarity.SYMMETRIC_DEFINITION if symmetric else similarity.KL_DIRECTION

    def nearest(self, i: int, k: int = 5, symmetric: bool = False) -> list[tuple[int, float]]:
        """The k patients j ≠ i with the smallest matrix(symmetric)[i, j], ascending."""
        return similarity.nearest(self.matrix(symmetric), i, k)


_check = latent.check_model_fits


def patient_similarity(model, ws, aggregate: str = "mixture", split: str | None = None,
                       batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
                       cancel: Callable[[], bool] | None = None) -> PatientSimilarity:
    """Encode `ws` (a split or all), aggregate per patient, KL between every pair.

    Raises InterruptedError when cancel() stopped the encoding, ValueError when the model
    does not fit the workspace or there are no images.
    """
    _check(model, ws)
    rows = ws.index(split)
    if not len(rows):
        raise ValueError(f"{ws.path}: no images to encode" + (f" in split {split!r}" if split else ""))
    enc = latent.encode_workspace(model, ws, rows=rows, batch_size=batch_size, progress=progress, cancel=cancel)
    if len(enc.mu) < len(rows):
        raise InterruptedError("cancelled")
    pp = latent.aggregate_patients(enc, aggregate)
    of = {p.pseudonym: (p.patient or p.pseudonym) for p in ws.patients}
    return PatientSimilarity(pp.names, pp.mu, pp.logvar, similarity.kl_matrix(pp.mu, pp.logvar),
                             aggregate, pp.n_images, [of.get(n, n) for n in pp.names])


def slice_rows(ws, a: int, b: int, split: str | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(entry indices, rows of slice a, rows of slice b) of the entries (CT series) having
    both (negative indices count from the end of each series' stack; a == b is left out)."""
    pats, ra, rb = [], [], []
    for i, p in enumerate(ws.patients):
        if split not in (None, p.split) or p.n_images == 0:
            continue
        # Python's rule: −n is the first image, −(n+1) is out of range (not wrapped round)
        ia, ib = a + p.n_images if a < 0 else a, b + p.n_images if b < 0 else b
        if 0 <= ia < p.n_images and 0 <= ib < p.n_images and ia != ib:
            pats.append(i)
            ra.append((i, ia))
            rb.append((i, ib))
    return pats, np.array(ra, np.int64).reshape(-1, 2), np.array(rb, np.int64).reshape(-1, 2)


def identify_slices(model, ws, a: int, b: int, symmetric: bool = False, split: str | None = None,
                    batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
                    cancel: Callable[[], bool] | None = None, level: str = "patient") -> similarity.Identification:
    """Thesis 7.5 on slices a and b of every entry (CT series; see
    training.latent.similarity.identify).

    level "patient" (the default, as in `ct-vae identify` and the Similarity tab): a match
    to another series (entry) of the same patient is not a confusion, and the counts are
    per patient; level "series": only the query's own series counts, counts per series.

    progress(done, total) counts encoded images (2 per series). Needs a 2D workspace
    and at least 2 series having both slices (ValueError otherwise).
    """
    similarity._check_level(level)
    _check(model, ws)
    if ws.preprocess.mode == "3d":
        raise ValueError("identification compares two slices of each patient: it needs a 2D workspace")
    pats, ra, rb = slice_rows(ws, a, b, split)
    if len(pats) < 2:
        raise ValueError(_too_few(a, b))
    total = 2 * len(pats)
    ea = latent.encode_workspace(model, ws, rows=ra, batch_size=batch_size, cancel=cancel,
                                 progress=None if progress is None else (lambda d, t: progress(d, total)))
    eb = latent.encode_workspace(model, ws, rows=rb, batch_size=batch_size, cancel=cancel,
                                 progress=None if progress is None else (lambda d, t: progress(len(pats) + d, total)))
    if len(ea.mu) < len(pats) or len(eb.mu) < len(pats):
        raise InterruptedError("cancelled")
    names = [ws.patients[i].pseudonym for i in pats]
    patients = [ws.patients[i].patient or ws.patients[i].pseudonym for i in pats]
    return similarity.identify(ea.mu, ea.logvar, eb.mu, eb.logvar, names=names, symmetric=symmetric,
                               groups=patients if level == "patient" else None, patients=patients)


def _too_few(a: int, b: int) -> str:
    return f"fewer than 2 series (workspace entries) have both slice {a} and slice {b}"


def compare_rows(model, ws, ra: np.ndarray, rb: np.ndarray, names: list[str], patients: list[str],
                 level: str = "patient", batch_size: int = 64,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> similarity.Comparison:
    """Identification of query rows `rb` against reference rows `ra` (row i of each is the
    same entry) by every method of training.latent.similarity.METHODS: KL directed and
    symmetric, Euclidean between posterior means, pixel L2 between the preprocessed CT
    images and between their reconstructions decode(µ)."""
    n = len(ra)
    total = 2 * n
    ea = latent.encode_workspace(model, ws, rows=ra, batch_size=batch_size, cancel=cancel,
                                 progress=None if progress is None else (lambda d, t: progress(d, total)))
    eb = latent.encode_workspace(model, ws, rows=rb, batch_size=batch_size, cancel=cancel,
                                 progress=None if progress is None else (lambda d, t: progress(n + d, total)))
    if len(ea.mu) < n or len(eb.mu) < n:
        raise InterruptedError("cancelled")
    images_a, images_b = ws.read_images(ra), ws.read_images(rb)
    dec = latent.decode(model, np.concatenate([ea.mu, eb.mu]), batch_size=batch_size)
    return similarity.compare(ea.mu, ea.logvar, eb.mu, eb.logvar, images_a, images_b,
                              dec.ct[:n], dec.ct[n:], names=names, patients=patients, level=level)


def compare_slices(model, ws, a: int, b: int, split: str | None = None, level: str = "patient",
                   batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> similarity.Comparison:
    """Thesis 7.5 on slices a and b with every method side by side (compare_rows)."""
    _check(model, ws)
    if ws.preprocess.mode == "3d":
        raise ValueError("identification compares two slices of each patient: it needs a 2D workspace")
    pats, ra, rb = slice_rows(ws, a, b, split)
    if len(pats) < 2:
        raise ValueError(_too_few(a, b))
    names = [ws.patients[i].pseudonym for i in pats]
    patients = [ws.patients[i].patient or ws.patients[i].pseudonym for i in pats]
    return compare_rows(model, ws, ra, rb, names, patients, level, batch_size, progress, cancel)


def patient_groups(ws, names: list[str]) -> dict[str, list[str]]:
    """{patient: [entry labels]} for the patients with more than one entry among `names`."""
    of = {p.pseudonym: (p.patient or p.pseudonym) for p in ws.patients}
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(of.get(name, name), []).append(name)
    return {k: v for k, v in groups.items() if len(v) > 1}


# Sequential colours from dark (small divergence: similar) to light (large): the
# "viridis" anchors reversed would put yellow at 0; dark blue → pale yellow reads as
# "close = dense/dark" and keeps black text legible on the light, frequent cells.
_ANCHORS = np.array([
    (8, 29, 88), (37, 52, 148), (34, 94, 168), (29, 145, 192), (65, 182, 196),
    (127, 205, 187), (199, 233, 180), (237, 248, 177), (255, 255, 217)], np.float64)


def heat_scale(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Positions in [0, 1] of divergences on a log scale: t = log1p(v − lo) / log1p(hi − lo).

    lo/hi default to the smallest and largest finite off-diagonal values (the diagonal of
    a square matrix is 0 by definition and would stretch the scale). NaN stays NaN.
    """
    v = np.asarray(values, np.float64)
    if lo is None or hi is None:
        ref = v
        if v.ndim == 2 and v.shape[0] == v.shape[1] and v.shape[0] > 1:
            ref = v[~np.eye(v.shape[0], dtype=bool)]
        ref = ref[np.isfinite(ref)]
        lo = float(ref.min()) if lo is None and ref.size else (lo or 0.0)
        hi = float(ref.max()) if hi is None and ref.size else (hi if hi is not None else 1.0)
    span = np.log1p(max(hi - lo, 0.0))
    if span <= 0:
        return np.where(np.isfinite(v), 0.0, np.nan)
    return np.clip(np.log1p(np.clip(v - lo, 0.0, None)) / span, 0.0, 1.0)


def heat_rgb(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """uint8 (..., 3) colours of divergences (dark blue = smallest, pale yellow = largest)."""
    t = heat_scale(values, lo, hi)
    t = np.nan_to_num(t, nan=1.0) * (len(_ANCHORS) - 1)
    i = np.clip(np.floor(t).astype(np.int64), 0, len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    rgb = (1.0 - f) * _ANCHORS[i] + f * _ANCHORS[i + 1]
    return np.round(rgb).astype(np.uint8)


def is_dark(rgb: np.ndarray) -> np.ndarray:
    """True where white text reads better than black on the colour (relative luminance < 0.4)."""
    c = np.asarray(rgb, np.float64) / 255.0
    return (0.2126 * c[..., 0] + 0.7152 * c[..., 1] + 0.0722 * c[..., 2]) < 0.4


__all__ = [
    "PatientSimilarity", "patient_similarity", "slice_rows", "identify_slices", "compare_rows",
    "compare_slices", "patient_groups", "heat_scale",
    "heat_rgb", "is_dark",
]
