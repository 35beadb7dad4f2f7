"""The answer to "which earlier patients are most like this new one?" (issue 16; thesis
4.6, 7.5), computed headless: the Query tab (explorer/panels/query.py) and
`ct-vae query` show what `answer_query` returns.

Steps: the cohort (every workspace entry that is not a query, train and test alike) is
encoded with the model, one posterior per patient (training.latent.encode.aggregate_patients,
"mixture" by default, as the Similarity tab; kept in memory and, with `store`, in a file
beside the model, RUN/encoded/, for the next process: see encode_cohort); the query entry
is encoded the same way; every cohort patient is ranked by the divergence of
training.latent.query (KL(q_query ‖ q_j) by default; the module says why; "reverse" and
"symmetric" on request).

What each match shows:
- rank among all cohort patients, the divergence in both directions and the symmetric mean;
- baselines: Euclidean distance between posterior means (ignores σ) and pixel L2, the
  root-mean-square difference between the two patients' MEAN preprocessed images (windowed
  CT in [0, 1], averaged over the patient's slices (2D) or depth (3D) and block-averaged to
  at most BASELINE_SIDE pixels a side): a position-free check that needs no model; each
  with its own rank among all;
- images side by side at matching anatomical positions. 2D: the query's slices at
  POSITIONS of its stack, and for each the match's slice whose posterior is closest,
  KL(q_query,s ‖ q_match,t) over the match's slices t (the model's own notion of "same
  place", which needs no landmark and works across different scan ranges), chosen
  jointly so that the pairs keep the stacks' order (monotone_pairing: the least summed
  KL with t increasing as s does; a pair chosen slice by slice could show a lower
  query slice beside a higher match slice); the slice KL is shown. 3D: each patient is one preprocessed cube, so the same depth index
  (the cubes span each series' own slice range);
- ROI overlays (the workspace's chosen ROIs, preprocessed labels) and, for every ROI of
  either patient, its volume in cm³ from the stored native-resolution mask: voxels whose
  centre lies inside the contours × dz·dy·dx / 1000 (the source spacing in mm); the
  difference is match − query.

Only pseudonyms (entry labels) appear anywhere in the answer.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from training.atomic import atomic_save_npz
from training.latent import encode as latent
from training.latent import query as lq

POSITIONS = (0.25, 0.5, 0.75)  # fractions of the query's stack shown
BASELINE_SIDE = 64
POSITION_METHOD_2D = ("2D: for each shown query slice s, the match's slice t with the closest posterior, "
                      "KL(q_query,s || q_match,t), chosen jointly so that the pairs keep the stacks' order "
                      "(least summed KL)")
POSITION_METHOD_3D = "3D: the same depth index of both preprocessed cubes (each spans its own series' slice range)"
PIXEL_L2_TEXT = (f"pixel L2: RMS difference of the patients' mean preprocessed images ([0, 1] windowed CT, "
                 f"block-averaged to <= {BASELINE_SIDE} px a side); position-free, no model")
EUCLID_TEXT = "Euclidean: ||mu_query - mu_j||_2 between posterior means (ignores sigma)"
VOLUME_TEXT = ("ROI volume: voxels of the stored native-resolution mask (centre inside the contours) "
               "x dz*dy*dx / 1000, cm^3; difference = match - query")


# ----------------------------------------------------------------------------- pairing


def monotone_pairing(d: np.ndarray) -> np.ndarray:
    """For each row r of d (P shown query slices in stack order × M match slices), a
    column t_r with t_0 < t_1 < … (t_0 ≤ t_1 ≤ … when M < P) minimising Σ_r d[r, t_r]:
    dynamic programming over a running minimum, O(P·M)."""
    d = np.asarray(d, dtype=np.float64)
    n_rows, n_cols = d.shape
    strict = n_cols >= n_rows
    cost = np.empty_like(d)
    back = np.zeros(d.shape, dtype=np.int64)
    cost[0] = d[0]
    for r in range(1, n_rows):
        prev = cost[r - 1]
        if strict:  # the best t' < t: running minimum shifted by one
            run = np.minimum.accumulate(prev)
            arg = _running_argmin(prev)
            cost[r, 0] = np.inf
            cost[r, 1:] = d[r, 1:] + run[:-1]
            back[r, 1:] = arg[:-1]
        else:  # t' ≤ t
            cost[r] = d[r] + np.minimum.accumulate(prev)
            back[r] = _running_argmin(prev)
    out = np.empty(n_rows, dtype=np.int64)
    out[-1] = int(np.argmin(cost[-1]))
    for r in range(n_rows - 1, 0, -1):
        out[r - 1] = back[r, out[r]]
    return out


def _running_argmin(a: np.ndarray) -> np.ndarray:
    """index of the minimum of a[:t + 1] for each t (the first one on ties)."""
    best = np.minimum.accumulate(a)
    is_new = np.r_[True, a[1:] < best[:-1]]  # a new running minimum
    return np.maximum.accumulate(np.where(is_new, np.arange(len(a)), 0))

def _block_mean(img: np.ndarray, side: int = BASELINE_SIDE) -> np.ndarray:
    """Average (H, W) down by an integer factor so both sides are ≤ `side`."""
    h, w = img.shape
    f = max(1, -(-max(h, w) // side))
    if f == 1:
        return img.astype(np.float32)
    h2, w2 = h // f * f, w // f * f
    return img[:h2, :w2].reshape(h2 // f, f, w2 // f, f).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def mean_image(images: np.ndarray) -> np.ndarray:
    """A patient's mean image for the pixel baseline: (n, H, W) or (n, D, H, W) → (h, w)."""
    a = np.asarray(images, dtype=np.float32)
    while a.ndim > 2:
        a = a.mean(axis=0, dtype=np.float64).astype(np.float32)
    return _block_mean(a)


@dataclass
class CohortLatents:
    """The encoded cohort: per-image posteriors (`encoded`, rows = workspace rows),
    per-patient posteriors (`posteriors`, one row per cohort entry with images) and the
    pixel baseline's mean images (P, h, w)."""

    encoded: latent.Encoded
    posteriors: latent.PatientPosteriors
    mean_images: np.ndarray
    seconds: float = 0.0
    _index: lq.PosteriorIndex | None = None
    # where the posteriors came from: "encoded" (the model ran over the cohort), "file"
    # (read from the cohort encoding file, see load_cohort_file); cache_note says what
    # happened to that file (read, written, ignored and why); "" without a store
    source: str = "encoded"
    cache_file: Path | None = None
    cache_note: str = ""

    @property
    def index(self) -> lq.PosteriorIndex:
        """The patient posteriors prepared for ranking (built once, then reused)."""
        if self._index is None:
            self._index = lq.PosteriorIndex(self.posteriors.mu, self.posteriors.logvar)
        return self._index

    @property
    def names(self) -> list[str]:
        return list(self.posteriors.names)


_lock = threading.RLock()
_cohorts: dict[tuple, CohortLatents] = {}
_CACHE = 2


# ----------------------------------------------------------------------------- on-disk cache
#
# Encoding the cohort is the slow part of a query (300 patients x 100 slices: tens of
# seconds on a CPU), and the in-memory cache above lives only as long as the process.
# The encoded cohort is therefore also kept in a file beside the model,
#
#     RUN/encoded/<model fingerprint[:16]>-<data hash>.npz
#
# (ct-vae query and the Query tab use the checkpoint's folder). The name says what it
# depends on: the model's weights (model_fingerprint: a hash of the configuration and of
# every tensor of the state dict, so a checkpoint rewritten by the next epoch is a new
# model even at the same path) and the workspace's data hash (pseudonyms, content and
# split of the cohort entries and the preprocessing; query entries are left out of it, so
# adding a query keeps the file valid, and moving one into the cohort makes it stale).
# Held: per-image µ and log σ² (float32), rows (entry ordinal, image index), the cohort's
# entry labels (pseudonyms such as PAT-0003-2, never names or IDs) and image counts, and
# the pixel baseline's mean images. Written atomically (training.atomic), read with
# np.load(allow_pickle=False) (no code runs), and trusted only when every key, dtype,
# shape, the fingerprint, the data hash and the cohort's labels and image counts agree
# with the workspace as it is now: anything else is ignored and encoded (and written)
# again.

CACHE_FORMAT = "ct-vae-cohort-encoding"
CACHE_VERSION = 1
CACHE_KEEP = 8  # newest cohort encoding files kept in one folder
_CACHE_NAME = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{16}\.npz$")
_CACHE_KEYS = {"format", "version", "model_key", "data_hash", "preprocess_hash", "labels", "counts",
               "mu", "logvar", "rows", "mean_images"}


def model_fingerprint(model) -> str:
    """sha256 (hex) of a model's configuration and weights: equal for equal encoders,
    whatever file or object holds them. A few ms for the thesis 2D net (0.9 M values)."""
    import torch

    h = hashlib.sha256(b"ct-vae-model\n")
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_json"):
        h.update(json.dumps(cfg.to_json(), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"\n{name}\t{t.dtype}\t{tuple(t.shape)}\n".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(np.ascontiguousarray(t.numpy()).view(np.uint8).reshape(-1))
    return h.hexdigest()


def cohort_file(store: str | os.PathLike, fingerprint: str, data_hash: str) -> Path:
    """The cohort encoding file of a model (fingerprint) and a workspace's data (hash)."""
    return Path(store) / f"{fingerprint[:16]}-{data_hash}.npz"


def _cohort_entries(ws) -> list[int]:
    return [i for i, p in enumerate(ws.patients) if p.n_images and not p.is_query]


def _expected_mean_shape(ws) -> tuple[int, ...]:
    return mean_image(np.zeros((1, *ws.image_shape), np.float32)).shape


def save_cohort_file(path: str | os.PathLike, cohort: "CohortLatents", ws, fingerprint: str) -> Path:
    """Write the encoded cohort of `ws` atomically (module comment above)."""
    enc = cohort.encoded
    pats = _cohort_entries(ws)
    ordinal = {wi: n for n, wi in enumerate(pats)}
    rows = np.stack([np.array([ordinal[int(w)] for w in enc.rows[:, 0]], dtype=np.int64),
                     enc.rows[:, 1].astype(np.int64)], 1) if len(enc.rows) else np.zeros((0, 2), np.int64)
    return atomic_save_npz(
        path, format=np.array(CACHE_FORMAT), version=np.array(CACHE_VERSION, dtype=np.int64),
        model_key=np.array(fingerprint), data_hash=np.array(ws.data_hash),
        preprocess_hash=np.array(ws.preprocess_hash),
        labels=np.array([ws.patients[i].pseudonym for i in pats], dtype=str),
        counts=np.array([ws.patients[i].n_images for i in pats], dtype=np.int64),
        mu=np.asarray(enc.mu, dtype=np.float32), logvar=np.asarray(enc.logvar, dtype=np.float32),
        rows=rows, mean_images=np.asarray(cohort.mean_images, dtype=np.float32))


class CacheRejected(ValueError):
    """A cohort encoding file that is not trusted (the message says why)."""


def _scalar_text(z, key: str) -> str:
    a = z[key]
    if a.shape != () or a.dtype.kind != "U":
        raise CacheRejected(f"{key} is not a text scalar")
    return str(a[()])


def load_cohort_file(path: str | os.PathLike, ws, fingerprint: str) -> tuple[latent.Encoded, np.ndarray]:
    """(per-image posteriors with workspace rows, mean images) from a cohort encoding
    file, checked against the workspace as it is now and the model's fingerprint.
    FileNotFoundError when there is none; CacheRejected (why) when it is damaged, stale
    or does not fit. Never executes anything from the file (allow_pickle=False)."""
    import zipfile

    path = Path(path)
    pats = _cohort_entries(ws)
    labels_now = [ws.patients[i].pseudonym for i in pats]
    counts_now = np.array([ws.patients[i].n_images for i in pats], dtype=np.int64)
    n_rows = int(counts_now.sum())
    mean_shape = _expected_mean_shape(ws)
    # the most the members may hold when the file fits: refuse anything larger before
    # reading it (a damaged or hostile file must not make us allocate without bound)
    limit = (n_rows * (2 * 4 * 1024 + 16) + len(pats) * (4 * int(np.prod(mean_shape)) + 8 + 4 * 256)
             + (1 << 20))
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = {i.filename[:-4] for i in infos if i.filename.endswith(".npy")}
            if names != _CACHE_KEYS or len(infos) != len(_CACHE_KEYS):
                raise CacheRejected(f"members {sorted(names)} are not those of a cohort encoding")
            if sum(i.file_size for i in infos) > limit:
                raise CacheRejected("larger than the cohort it should describe")
        with np.load(path, allow_pickle=False) as z:
            if _scalar_text(z, "format") != CACHE_FORMAT:
                raise CacheRejected("not a cohort encoding file")
            version = z["version"]
            if version.shape != () or version.dtype.kind not in "iu" or int(version) != CACHE_VERSION:
                raise CacheRejected("another format version")
            if _scalar_text(z, "model_key") != fingerprint:
                raise CacheRejected("encoded with another model")
            if _scalar_text(z, "data_hash") != ws.data_hash:
                raise CacheRejected("encoded from other data (data hash differs)")
            if _scalar_text(z, "preprocess_hash") != ws.preprocess_hash:
                raise CacheRejected("encoded with other preprocessing")
            labels, counts = z["labels"], z["counts"]
            if labels.ndim != 1 or labels.dtype.kind != "U" or counts.shape != labels.shape \
                    or counts.dtype.kind not in "iu":
                raise CacheRejected("labels or counts malformed")
            stored = {str(k): n for n, k in enumerate(labels.tolist())}
            if len(stored) != len(labels) or set(stored) != set(labels_now):
                raise CacheRejected("the cohort's entries differ")
            mu, lv, rows, means = z["mu"], z["logvar"], z["rows"], z["mean_images"]
    except FileNotFoundError:
        raise
    except CacheRejected:
        raise
    except Exception as exc:  # truncated, not a zip, an object array, a bad header, ...
        raise CacheRejected(f"unreadable ({type(exc).__name__}: {exc})") from None
    if (mu.dtype != np.float32 or lv.dtype != np.float32 or mu.ndim != 2 or mu.shape != lv.shape
            or mu.shape[0] != n_rows):
        raise CacheRejected(f"posteriors malformed: mu {mu.dtype}{mu.shape}, logvar {lv.dtype}{lv.shape}, "
                            f"{n_rows} images in the cohort")
    if rows.dtype != np.int64 or rows.shape != (n_rows, 2):
        raise CacheRejected(f"rows malformed: {rows.dtype}{rows.shape}")
    if means.dtype != np.float32 or means.shape != (len(pats), *mean_shape):
        raise CacheRejected(f"mean images malformed: {means.dtype}{means.shape}")
    order = np.array([stored[k] for k in labels_now], dtype=np.int64)  # stored ordinal of each entry now
    counts = counts.astype(np.int64)
    if not np.array_equal(counts[order], counts_now):
        raise CacheRejected("image counts differ from the workspace's")
    want_ord = np.repeat(np.arange(len(labels)), counts)
    want_img = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
    if not (np.array_equal(rows[:, 0], want_ord) and np.array_equal(rows[:, 1], want_img)):
        raise CacheRejected("rows do not enumerate the cohort's images")
    if not (np.isfinite(mu).all() and np.isfinite(lv).all() and np.isfinite(means).all()):
        raise CacheRejected("non-finite values")
    # reorder to the workspace's entry order, rows as workspace rows
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    take = np.concatenate([starts[o] + np.arange(counts[o]) for o in order]) if len(order) else \
        np.zeros(0, np.int64)
    ws_rows = np.stack([np.repeat(np.asarray(pats, dtype=np.int64), counts_now),
                        np.concatenate([np.arange(c) for c in counts_now]) if len(counts_now) else
                        np.zeros(0, np.int64)], 1).astype(np.int64)
    enc = latent.Encoded(mu=np.ascontiguousarray(mu[take]), logvar=np.ascontiguousarray(lv[take]), rows=ws_rows,
                         names=[p.pseudonym for p in ws.patients], splits=[p.split for p in ws.patients])
    return enc, np.ascontiguousarray(means[order])


def _prune(store: Path, keep_path: Path, keep: int = CACHE_KEEP) -> None:
    """Keep the `keep` newest cohort encoding files of a folder (and always keep_path)."""
    try:
        files = [p for p in store.iterdir() if _CACHE_NAME.match(p.name) and p != keep_path]
        files.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    except OSError:
        return
    for p in files[max(0, keep - 1):]:
        with contextlib.suppress(OSError):
            p.unlink()


def _model_key(model) -> tuple:
    key = getattr(model, "_query_cache_key", None)
    return key if key is not None else ("id", id(model))


def _at_current_positions(hit: CohortLatents, ws, aggregate: str) -> CohortLatents | None:
    """A cohort encoded earlier, with its rows pointing at where its entries are in `ws`
    now. Adding a query keeps the data hash (and so the cache key) but can move cohort
    entries (PAT-0003-2 sorts before PAT-0004): the rows name entries by position, so
    they are mapped through the entries' labels. None when an entry is gone."""
    names_now = [p.pseudonym for p in ws.patients]
    if hit.encoded.names == names_now:
        return hit
    where = {name: k for k, name in enumerate(names_now)}
    old_rows = hit.encoded.rows
    old_pats = np.unique(old_rows[:, 0])
    try:
        new_of_old = {int(o): where[hit.encoded.names[int(o)]] for o in old_pats}
    except KeyError:
        return None
    rows = np.stack([np.array([new_of_old[int(o)] for o in old_rows[:, 0]], dtype=np.int64),
                     old_rows[:, 1].astype(np.int64)], 1) if len(old_rows) else old_rows
    enc = latent.Encoded(mu=hit.encoded.mu, logvar=hit.encoded.logvar, rows=rows, names=names_now,
                         splits=[p.split for p in ws.patients])
    # mean images are in entry order (one per cohort entry): follow the new order
    order = np.argsort([new_of_old[int(o)] for o in old_pats], kind="stable")
    return dataclasses.replace(hit, encoded=enc, posteriors=latent.aggregate_patients(enc, aggregate),
                               mean_images=np.ascontiguousarray(hit.mean_images[order]), _index=None)


def encode_cohort(model, ws, aggregate: str = "mixture", batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None, model_key: tuple | None = None,
                  store: str | os.PathLike | None = None) -> CohortLatents:
    """Encode every cohort entry (not the queries) of an open workspace.

    Cached in memory per (model_key, workspace path, data hash, preprocessing, aggregate):
    the data hash leaves queries out, so adding a query does not encode the cohort again.
    store: a folder (ct-vae query and the Query tab: RUN/encoded/ beside the checkpoint)
    where the encoded cohort is also kept on disk, for the next process or window (see
    the comment above save_cohort_file); a file that does not fit is ignored and
    rewritten, one that cannot be written is only noted (cache_note).
    Raises InterruptedError when cancel() stopped it, ValueError when the model does not
    fit the workspace or the cohort has no images.
    """
    latent.check_model_fits(model, ws)
    fingerprint = model_fingerprint(model) if store is not None else None
    if model_key is None and fingerprint is not None:
        model_key = ("weights", fingerprint)
    key = None
    if model_key is not None:
        key = (model_key, str(Path(ws.path).resolve()), ws.data_hash, ws.preprocess_hash, aggregate)
        with _lock:
            hit = _cohorts.get(key)
        if hit is not None:
            hit = _at_current_positions(hit, ws, aggregate)
        if hit is not None:
            with _lock:
                _cohorts[key] = hit
            hit.index  # noqa: B018 (built once, shared by the copy below)
            return dataclasses.replace(hit, source="memory", seconds=0.0)
    t0 = time.perf_counter()
    pats = _cohort_entries(ws)
    if not pats:
        raise ValueError(f"{ws.path}: the workspace has no cohort images to compare a query with")
    out = None
    note = ""
    path = cohort_file(store, fingerprint, ws.data_hash) if store is not None else None
    if path is not None:
        try:
            enc, means = load_cohort_file(path, ws, fingerprint)
        except FileNotFoundError:
            note = "none yet"
        except Exception as exc:  # noqa: BLE001 (an optional file: whatever is wrong with it, encode)
            note = f"ignored ({exc})"
        else:
            out = CohortLatents(enc, latent.aggregate_patients(enc, aggregate), means,
                                time.perf_counter() - t0, source="file", cache_file=path,
                                cache_note=f"read {path}")
    if out is None:
        mus, lvs, rows, means = [], [], [], []
        total = sum(ws.patients[i].n_images for i in pats)
        done = 0
        for i in pats:
            if cancel is not None and cancel():
                raise InterruptedError("cancelled")
            images, labels = ws.read_patient(i)
            mu, lv = latent.encode_arrays(model, images, labels, batch_size)
            mus.append(mu)
            lvs.append(lv)
            rows.append(np.stack([np.full(len(images), i), np.arange(len(images))], 1))
            means.append(mean_image(images))
            done += len(images)
            if progress is not None:
                progress(done, total)
        enc = latent.Encoded(mu=np.concatenate(mus), logvar=np.concatenate(lvs),
                             rows=np.concatenate(rows).astype(np.int64),
                             names=[p.pseudonym for p in ws.patients], splits=[p.split for p in ws.patients])
        out = CohortLatents(enc, latent.aggregate_patients(enc, aggregate), np.stack(means),
                            time.perf_counter() - t0)
        if path is not None:
            try:
                save_cohort_file(path, out, ws, fingerprint)
            except (OSError, ValueError) as exc:
                out.cache_note = f"{note}; not written ({exc})" if note else f"not written ({exc})"
            else:
                _prune(path.parent, path)
                out.cache_file = path
                out.cache_note = (f"{note}; " if note.startswith("ignored") else "") + f"wrote {path}"
    if key is not None:
        with _lock:
            _cohorts[key] = out
            while len(_cohorts) > _CACHE:
                _cohorts.pop(next(iter(_cohorts)))
    return out


def clear_cache() -> None:
    with _lock:
        _cohorts.clear()


# ----------------------------------------------------------------------------- answer


@dataclass
class RoiVolume:
    name: str
    query_cm3: float | None
    match_cm3: float | None

    @property
    def difference_cm3(self) -> float | None:
        if self.query_cm3 is None or self.match_cm3 is None:
            return None
        return self.match_cm3 - self.query_cm3


@dataclass
class Match:
    """One ranked earlier patient (see the module docstring for every number)."""

    name: str  # entry label, e.g. "PAT-0003" or "PAT-0003-2"
    patient: str  # patient pseudonym (several entries may share one)
    rank: int
    divergence: float
    kl_query: float
    kl_reverse: float
    euclid: float
    euclid_rank: int
    pixel_l2: float
    pixel_rank: int
    split: str
    same_patient: bool  # the query's own patient (another series of it)
    match_images: list[int] = field(default_factory=list)  # image index paired with each shown query image
    slice_kl: list[float] = field(default_factory=list)  # KL of each pair (2D), nan in 3D
    images: np.ndarray | None = None  # (P, H, W) [0, 1] at the paired positions
    labels: np.ndarray | None = None  # (P, H, W) uint8 or None
    volumes: list[RoiVolume] = field(default_factory=list)

    @property
    def symmetric(self) -> float:
        return 0.5 * (self.kl_query + self.kl_reverse)


@dataclass
class QueryAnswer:
    query: str
    query_patient: str
    n_query_images: int
    direction: str
    aggregate: str
    spatial_dims: int
    ranking: lq.Ranking  # every cohort patient
    pixel_l2: np.ndarray  # (N,) in ranking order of names
    pixel_rank: np.ndarray
    splits: list[str]
    patients: list[str]
    query_images_shown: list[int]  # image indices (2D) or depth indices (3D)
    query_images: np.ndarray  # (P, H, W)
    query_labels: np.ndarray | None
    roi_names: tuple[str, ...]
    n_classes: int
    matches: list[Match]
    seconds: dict[str, float] = field(default_factory=dict)
    # the query is a cohort entry (dropped again, or asked by label): left out of its own
    # ranking, as `ct-vae query` notes
    query_in_cohort: bool = False
    # where the cohort's posteriors came from: "memory", "file" (the cohort encoding file
    # beside the model), "encoded"; cohort_note: what happened to that file
    cohort_source: str = "encoded"
    cohort_note: str = ""

    @property
    def definition(self) -> str:
        return lq.DIRECTION_TEXT[self.direction]

    @property
    def position_method(self) -> str:
        return POSITION_METHOD_3D if self.spatial_dims == 3 else POSITION_METHOD_2D

    @property
    def n_cohort(self) -> int:
        return len(self.ranking.names)

    # the columns of rows() and ranking.csv
    _ROW_KEYS = ("rank", "entry", "patient", "split", "same_patient", "divergence", "kl_query_to_j",
                 "kl_j_to_query", "kl_symmetric", "euclidean_mu", "euclidean_rank", "pixel_l2", "pixel_rank")

    def rows(self) -> list[dict]:
        """Every cohort patient, best first (the CSV and the tab's table)."""
        r = self.ranking
        out = []
        for j in r.order:
            out.append({
                "rank": int(r.rank[j]), "entry": r.names[j], "patient": self.patients[j],
                "split": self.splits[j], "same_patient": self.patients[j] == self.query_patient,
                "divergence": float(r.divergence[j]), "kl_query_to_j": float(r.kl_query[j]),
                "kl_j_to_query": float(r.kl_reverse[j]),
                "kl_symmetric": float(0.5 * (r.kl_query[j] + r.kl_reverse[j])),
                "euclidean_mu": float(r.euclid[j]), "euclidean_rank": int(r.euclid_rank[j]),
                "pixel_l2": float(self.pixel_l2[j]), "pixel_rank": int(self.pixel_rank[j]),
            })
        return out

    def csv_text(self) -> str:
        """ranking.csv: a plain header row (no '#' comment line: spreadsheets and naive
        readers trip on it), then every cohort patient, best first. What the numbers mean
        (the query, the cohort size, how a patient's posterior is formed, the divergence's
        direction, the baselines) is in the sidecar ranking.json, `csv_sidecar()`."""
        buf = io.StringIO()
        rows = self.rows()
        w = csv.writer(buf, lineterminator="\n")
        keys = list(rows[0]) if rows else list(self._ROW_KEYS)
        w.writerow(keys)
        for row in rows:
            w.writerow([repr(v) if isinstance(v, float) else v for v in row.values()])
        return buf.getvalue()

    def csv_sidecar(self) -> dict:
        """ranking.json, beside ranking.csv: what was asked and what each column means
        (formerly the CSV's leading '#' lines)."""
        return {
            "file": "ranking.csv",
            "rows": "every cohort patient, best first",
            "query": self.query,
            "n_query_images": self.n_query_images,
            "n_cohort": self.n_cohort,
            "patient_posterior": self.aggregate,
            "patient_posterior_text": (f"{self.aggregate} of the slice posteriors of all the patient's series "
                                       "(training/latent/encode.py aggregate_patients)"),
            "direction": self.direction,
            "divergence": self.definition,
            "columns": {
                "divergence": self.definition,
                "kl_query_to_j": lq.DIRECTION_TEXT["query"],
                "kl_j_to_query": lq.DIRECTION_TEXT["reverse"],
                "kl_symmetric": lq.DIRECTION_TEXT["symmetric"],
                "euclidean_mu": EUCLID_TEXT,
                "pixel_l2": PIXEL_L2_TEXT,
            },
        }

    def volumes_csv_text(self) -> str:
        """roi_volumes.csv: a plain header row, then one row per (match, ROI). The ROI
        volume definition (VOLUME_TEXT) is in the sidecar roi_volumes.json,
        `volumes_sidecar()`."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["rank", "match", "roi", "query_cm3", "match_cm3", "difference_cm3"])
        fmt = lambda v: "" if v is None else repr(float(v))  # noqa: E731
        for m in self.matches:
            for v in m.volumes:
                w.writerow([m.rank, m.name, v.name, fmt(v.query_cm3), fmt(v.match_cm3), fmt(v.difference_cm3)])
        return buf.getvalue()

    def volumes_sidecar(self) -> dict:
        """roi_volumes.json, beside roi_volumes.csv (formerly its leading '#' line)."""
        return {"file": "roi_volumes.csv", "query": self.query,
                "rows": "one row per (top match, ROI); rank: the match's rank in ranking.csv",
                "volume": VOLUME_TEXT}


def _positions(n: int, fractions=POSITIONS) -> list[int]:
    out: list[int] = []
    for f in fractions:
        k = int(round(f * (n - 1)))
        if k not in out:
            out.append(k)
    return out


def roi_volumes_cm3(ws, index: int) -> dict[str, float]:
    """{ROI: volume in cm³} of an entry from its stored native-resolution masks ({} when
    the entry stores no source)."""
    p = ws.patients[index]
    if not p.has_source:
        return {}
    _, masks, geo = ws.read_source(index)
    spacing = tuple(geo.spacing) if geo is not None else tuple(p.spacing)
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    return {name: float(np.count_nonzero(m)) * voxel_mm3 / 1000.0 for name, m in masks.items()}


def _volumes(q: dict[str, float], m: dict[str, float]) -> list[RoiVolume]:
    return [RoiVolume(k, q.get(k), m.get(k)) for k in sorted(set(q) | set(m))]


def encode_query(model, ws, index: int, aggregate: str = "mixture", batch_size: int = 32):
    """(images, labels, per-image µ, log σ², patient µ, log σ²) of one entry."""
    images, labels = ws.read_patient(index)
    if not len(images):
        raise ValueError(f"{ws.patients[index].pseudonym}: no images for the current preprocessing")
    mu, lv = latent.encode_arrays(model, images, labels, batch_size)
    enc = latent.Encoded(mu, lv, np.stack([np.zeros(len(mu), int), np.arange(len(mu))], 1).astype(np.int64),
                         [ws.patients[index].pseudonym])
    pp = latent.aggregate_patients(enc, aggregate)
    return images, labels, mu, lv, pp.mu[0], pp.logvar[0]


def answer_query(model, ws, query: str, *, top: int = 5, direction: str = "query",
                 aggregate: str = "mixture", batch_size: int = 32,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None, model_key: tuple | None = None,
                 volumes: bool = True, query_ws=None, query_name: str | None = None,
                 store: str | os.PathLike | None = None) -> QueryAnswer:
    """Rank the cohort of the open workspace `ws` for its entry `query` (a label).

    The query entry is usually a query (ROLE_QUERY); a cohort entry may be asked too, and
    is then left out of its own ranking. query_ws: another open workspace holding the query
    (`ct-vae query --no-store` ingests into a temporary one with the same preprocessing);
    query_name then replaces its label in the answer (its pseudonym there means nothing
    here). model_key: caches the cohort's encoding in memory (see encode_cohort); the
    explorer passes the checkpoint file's identity. store: the folder of the cohort
    encoding files (RUN/encoded/ beside the checkpoint; encode_cohort), so that the next
    process or window does not encode the cohort again.
    """
    if direction not in lq.DIRECTIONS:
        raise ValueError(f"direction must be one of {lq.DIRECTIONS}, got {direction!r}")
    t0 = time.perf_counter()
    qws = ws if query_ws is None else query_ws
    qi = qws.patient_index(query)
    if qws is not ws:
        latent.check_model_fits(model, qws)
        if qws.preprocess_hash != ws.preprocess_hash:
            raise ValueError(f"{query}: preprocessed with other settings than {ws.path}")
    cohort = encode_cohort(model, ws, aggregate, batch_size, progress, cancel, model_key, store)
    t1 = time.perf_counter()
    q_images, q_labels, q_mu, q_lv, pq_mu, pq_lv = encode_query(model, qws, qi, aggregate, batch_size)
    t2 = time.perf_counter()
    pp = cohort.posteriors
    own = qi if qws is ws else -1
    keep = np.flatnonzero(pp.patient_index != own)  # a cohort entry asked as query: not itself
    names = [pp.names[k] for k in keep]
    kq, kr, eu = cohort.index.divergences(pq_mu, pq_lv)
    ranking = lq.make_ranking(names, direction, kq[keep], kr[keep], eu[keep])
    q_mean = mean_image(q_images)
    diff = cohort.mean_images[keep] - q_mean
    pix = np.sqrt(np.square(diff, dtype=np.float64).reshape(len(keep), -1).mean(1))
    pix_rank = lq.ranks(pix)
    t3 = time.perf_counter()

    spatial = len(ws.image_shape)
    if spatial == 3:  # one cube per patient: show depth positions
        depth = q_images.shape[1]
        shown = _positions(depth)
        q_show = q_images[0, shown]
        q_lab_show = None if q_labels is None else q_labels[0, shown]
    else:
        shown = _positions(len(q_images))
        q_show = q_images[shown]
        q_lab_show = None if q_labels is None else q_labels[shown]
    q_vol = roi_volumes_cm3(qws, qi) if volumes else {}
    qinfo = qws.patients[qi]
    q_label = query_name or qinfo.pseudonym
    q_patient = (qinfo.patient or qinfo.pseudonym) if qws is ws else q_label
    matches = []
    for j in ranking.order[:max(0, int(top))]:
        k = int(keep[j])
        wi = int(pp.patient_index[k])
        info = ws.patients[wi]
        if spatial == 3:
            imgs, labs = ws.read_patient(wi)
            pair = list(shown)
            m_img = imgs[0, pair]
            m_lab = None if labs is None else labs[0, pair]
            skl = [float("nan")] * len(pair)
        else:
            sel = np.flatnonzero(cohort.encoded.rows[:, 0] == wi)
            img_idx = cohort.encoded.rows[sel, 1]
            d = np.stack([lq.kl_query_to_many(q_mu[s], q_lv[s], cohort.encoded.mu[sel], cohort.encoded.logvar[sel])
                          for s in shown])  # (P, n_match_slices)
            best = monotone_pairing(d)
            pair = [int(img_idx[b]) for b in best]
            skl = [float(d[r, b]) for r, b in enumerate(best)]
            rows = np.stack([np.full(len(pair), wi), np.asarray(pair)], 1)
            m_img = ws.read_images(rows)
            m_lab = ws.read_labels(rows)
        matches.append(Match(
            name=info.pseudonym, patient=info.patient or info.pseudonym, rank=int(ranking.rank[j]),
            divergence=float(ranking.divergence[j]), kl_query=float(ranking.kl_query[j]),
            kl_reverse=float(ranking.kl_reverse[j]), euclid=float(ranking.euclid[j]),
            euclid_rank=int(ranking.euclid_rank[j]), pixel_l2=float(pix[j]), pixel_rank=int(pix_rank[j]),
            split=info.split, same_patient=(info.patient or info.pseudonym) == q_patient,
            match_images=pair, slice_kl=skl, images=m_img, labels=m_lab,
            volumes=_volumes(q_vol, roi_volumes_cm3(ws, wi)) if volumes else []))
    t4 = time.perf_counter()
    return QueryAnswer(
        query=q_label, query_patient=q_patient, n_query_images=len(q_images),
        direction=direction, aggregate=aggregate, spatial_dims=spatial, ranking=ranking,
        pixel_l2=pix, pixel_rank=pix_rank,
        splits=[ws.patients[int(pp.patient_index[k])].split for k in keep],
        patients=[ws.patients[int(pp.patient_index[k])].patient or names[n] for n, k in enumerate(keep)],
        query_images_shown=list(shown), query_images=q_show, query_labels=q_lab_show,
        roi_names=tuple(ws.roi_names), n_classes=int(ws.preprocess.n_classes), matches=matches,
        seconds={"cohort": t1 - t0, "query_encode": t2 - t1, "rank": t3 - t2, "matches": t4 - t3,
                 "total": t4 - t0},
        query_in_cohort=qws is ws and not qinfo.is_query, cohort_source=cohort.source,
        cohort_note=cohort.cache_note,
    )


def query_labels(ws) -> list[str]:
    """Labels of the workspace's query entries, in workspace order."""
    return [p.pseudonym for p in ws.patients if p.is_query]
