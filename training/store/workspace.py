"""The HDF5 workspace: schema, atomic commits, reads by batch (SPEC F6, F7, F8).

A workspace ``W.h5`` is two things side by side (schema version 2)::

    W.h5        the head: a small HDF5 file holding no arrays, replaced atomically at
                each commit (temporary file, fsync, rename, fsync of the folder)
    W.h5.d/     the data: one immutable HDF5 file per entry, "<seq>-<label>.h5"

Moving or copying a workspace means copying both ``W.h5`` and ``W.h5.d/`` (same folder,
same names); nothing else belongs to it (``W.h5.lock`` is recreated by the next writer).

Head ``W.h5``:
    attrs      format, schema_version, tool_version, created, modified, preprocess (JSON),
               preprocess_hash, image_shape, salt, split_seed, test_fraction, merged_through
    /meta/     JSON text (scalar string datasets): provenance (one record per ingest or
               re-derive: time, tool version, source file count, preprocess), skipped
               ([relative path, reason]), identity (quick-identity table, see ingest.py),
               pseudonyms (HMAC digest → number), entries (one summary row per entry, so
               opening reads one dataset instead of every file), segments (entry label →
               the name of its file in W.h5.d/)

Entry file ``W.h5.d/<seq>-<label>.h5`` (seq: 8 digits, increasing with each commit)::

    attrs      format "ct-vae-workspace-staged", salt, preprocess_hash
    /meta/     identity and pseudonyms rows this entry brought in
    /entries/<label>/           <label> = "PAT-0001" or "PAT-0001-2"
        attrs  pseudonym, patient, content_hash, series_uid, frame_of_reference_uid,
               spacing (dz, dy, dx) mm, rois (JSON), warnings (JSON), n_source_files,
               role ("" = cohort; "query" = a query patient: see ROLE_QUERY; the head's
               entries row holds the current role, set_roles changes only that),
               fidelity (JSON per-ROI rasterisation report; absent in older workspaces)
        source/hu     int16 (z, y, x) HU at native resolution, one chunk per slice,
                      Blosc lz4 with bit shuffle (hdf5plugin; lossless, ~0.42× on
                      a thorax CT; zstd or deflate in workspaces written before)
        source/masks  uint8 (n_rois, z, y, ceil(x/8)): np.packbits of each ROI mask along x,
                      lzf; attrs geometry (VolumeGeometry.to_dict JSON), roi_names (JSON)
        derived/<preprocess_hash>/images  uint16 (n, H, W) or (n, D, H, W): round(v · 65535)
                      of the [0, 1] image (step 1.5e-5, below a 16-bit display's step and
                      far below an 8-bit window's 1/255), Blosc lz4 with byte shuffle;
                      read back as float32
        derived/<preprocess_hash>/labels  uint8, same shape, lzf (absent for CT only)

Every dataset carries HDF5's fletcher32 checksum: a flipped byte makes its read fail,
reported as a WorkspaceError naming the entry (``ct-vae info --check`` reads everything).
Tables and attributes, which fletcher32 does not cover, carry SHA-256 digests of their
canonical bytes, written with them: /meta attribute ``digests`` (each table's JSON text,
head and entry files), root attribute ``head_digest`` (the head's settings: format,
schema_version, preprocess, preprocess_hash, merged_through, image_shape, test_fraction,
split_seed, salt) and the entry group's ``attrs_digest`` (its attributes and those below
it, source datasets' shapes and types; not derived/, which a re-derive rewrites).
``Workspace.open`` checks the settings, the entry table and the file list (<1 ms for 300
entries); other tables are checked when read (writers read them all) and by ``verify``;
an entry's attributes when first used (source, geometry, fidelity) and by ``verify``.
A mismatch is a DamagedError of one line naming the table or the entry. Files written
before digests existed have none and are read unchecked (``info --check`` says so).

Damaged entries are re-loaded by the next drop of their DICOM: a reader that finds an
entry damaged (a failed read, ``verify``) leaves ``W.h5.d/<entry file>.damaged`` beside it,
and ingest then reads and loads that series again instead of calling it unchanged (the
quick identity and content hash of its DICOM still match). The new file replaces the
damaged one and the marker goes with it. A damaged head cannot be re-derived from its
entries here: the message says to restore it from a copy.
Workspaces of schema 1 (float32 images, everything inside W.h5) are read as they are and
converted once by the next writer (``convert_v1``).

Chunks: one per 2D image, one per depth slice of a 3D volume, so a random batch reads
exactly the chunks it needs. Reads loop over rows with ``read_direct`` into one
preallocated array (a list index on an h5py dataset is ~20× slower).

Appending: committing entries writes their files (O(those series)) and a new head
(O(number of entries + identity rows), no arrays); a replaced entry's old file is removed
after the head that stops naming it is in place. Nothing is ever copied or modified in
place (HDF5 is not crash-safe when modified in place).

Atomicity: a writer writes each entry's file under a temporary name and renames it into
W.h5.d/ (the commit point of that series); the files a writer committed are named by the
next head it writes. A SIGKILL at any instant leaves the old head plus complete committed
files: ``Workspace.open`` reads files numbered above the head's ``merged_through`` as part
of the workspace (leftovers), and the next writer folds them into its head. Files numbered
≤ ``merged_through`` that the head does not name are superseded (a crash before their
removal): ignored, and removed by the next writer. Leftovers written for other
preprocessing (a killed re-derive) are ignored and removed likewise.

Durability: before a head is replaced, every entry file it names for the first time is
fsynced, then the head itself and the folder, so a power cut never damages what a head
names. Leftovers are not fsynced when committed (they guard against a killed process,
which leaves the page cache intact); after a power cut one may be damaged: opening skips
it, the next writer records it in the provenance and removes it, and its series is
ingested again with the next drop because its files' identity rows went with it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # registers the Blosc filter of the stored HU (also for readers)
import numpy as np

from training import __version__
from training.atomic import atomic_write_path
from training.config import PreprocessConfig
from training.dicom.geometry import VolumeGeometry
from training.store.pseudonym import new_salt

FORMAT = "ct-vae-workspace"
# Entry roles (attribute "role"; absent or "" = cohort). A query entry was added to be
# compared with the cohort ("Find similar patients"): it is never trained on, takes no part
# in the train/test split or the data hash (adding one does not make a model stale), and
# `Workspace.index()` leaves it out unless asked for split="query". Its split reads "query".
ROLE_QUERY = "query"
ROLES = ("", ROLE_QUERY)
SCHEMA_VERSION = 2
_STAGED_RE = re.compile(r"^(\d{8})-(.+)\.h5$")
_STR = h5py.string_dtype("utf-8")
# HU: Blosc lz4 (level 9) with bit shuffle (HDF5 filter 32001, registered by hdf5plugin),
# lossless: 0.42× on LUNG1-001 and 0.54× on the (noisier) phantom, ~600 MB/s written per
# worker. zstd level 1 (used from 2026-12-07 until the fourth session) gave 0.38× / 0.47×
# at ~300 MB/s: half an ingest worker's time per series went into it; byte shuffle +
# deflate 1 (h5py built in, before) 0.39× at 100 MB/s. Both are still read.
# Derived images (uint16, re-derivable): Blosc lz4 with byte shuffle, 0.65× for 2 ms a
# 64-slice series; a training batch reads ~10 % slower than uncompressed (within the 1.2×
# budget; benchmarks/batch_read.py) and the workspace stays ≤ 0.6× its DICOM.
# Packed masks and labels are mostly zeros, which lzf compresses quickly. Every dataset
# has fletcher32.
_HU_FILTERS: dict[str, Any] = {**hdf5plugin.Blosc(cname="lz4", clevel=9, shuffle=hdf5plugin.Blosc.BITSHUFFLE),
                               "fletcher32": True}
_MASK_FILTERS: dict[str, Any] = {"compression": "lzf", "fletcher32": True}
_IMAGE_FILTERS: dict[str, Any] = {**hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE),
                                  "fletcher32": True}
IMAGE_SCALE = 65535.0  # stored images: uint16 round(v · IMAGE_SCALE) of v in [0, 1]


class WorkspaceError(Exception):
    """The workspace file is missing, foreign, newer than this program, or inconsistent."""


class DamagedError(WorkspaceError):
    """Stored data that fails its checksum: an entry's chunks (fletcher32) or attributes,
    or one of the head's tables (`digest`). label: the entry ("" for a head table);
    detail: the cause without the advice."""

    def __init__(self, message: str, label: str = "", detail: str = ""):
        super().__init__(message)
        self.label = label
        self.detail = detail or message


# ----------------------------------------------------------------------------- digests
# Tables and attributes have no fletcher32 (HDF5 checksums chunks only), so each carries a
# SHA-256 of its canonical bytes, written with it and checked when it is read:
# - a head or entry file's /meta tables: /meta attribute "digests" = {table: sha256 of the
#   stored JSON text} (kept by _write_meta);
# - the head's root attributes (_SEALED_HEAD_ATTRS): root attribute "head_digest";
# - an entry's attributes and those of its source group and datasets, with the source
#   datasets' shapes and types: the entry group's attribute "attrs_digest" (derived arrays
#   are left out: a re-derive copies the attributes and source as they are).
# Files written before these existed have none and are read unchecked.
_DIGESTS_ATTR = "digests"
_HEAD_DIGEST_ATTR = "head_digest"
_ENTRY_DIGEST_ATTR = "attrs_digest"
# A reader that finds an entry damaged leaves "<entry file>.damaged" beside it in W.h5.d/;
# the next ingest re-loads that series from its DICOM instead of calling it unchanged.
DAMAGE_SUFFIX = ".damaged"


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _canon(v: Any) -> Any:
    """An attribute value as plain JSON-able data (bytes as text, arrays as lists)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, np.ndarray):
        return [_canon(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, np.generic):
        return _canon(v.item())
    return v


def _attrs_of(obj: h5py.HLObject, skip: str = "") -> dict:
    return {k: _canon(v) for k, v in obj.attrs.items() if k != skip}


def entry_digest(g: h5py.Group) -> str:
    """SHA-256 over the canonical bytes of an entry's attributes: its own, and those of
    everything below it except derived/ (with the datasets' shapes and types)."""
    items: dict[str, Any] = {".": _attrs_of(g, _ENTRY_DIGEST_ATTR)}

    def visit(name: str, obj: Any) -> None:
        if name == "derived" or name.startswith("derived/"):
            return
        d: dict[str, Any] = {"attrs": _attrs_of(obj)}
        if isinstance(obj, h5py.Dataset):
            d["shape"], d["dtype"] = list(obj.shape), obj.dtype.str
        items[name] = d

    g.visititems(visit)
    return _text_digest(json.dumps(items, sort_keys=True))


def seal_entry(g: h5py.Group) -> None:
    """Store the digest of an entry's attributes (after they are all written)."""
    g.attrs[_ENTRY_DIGEST_ATTR] = entry_digest(g)


def check_entry(g: h5py.Group) -> bool | None:
    """True: the entry's attributes match their digest; False: they do not (damaged);
    None: written before attribute digests existed (not checked)."""
    want = g.attrs.get(_ENTRY_DIGEST_ATTR)
    if want is None:
        return None
    return _canon(want) == entry_digest(g)


def _head_digest(attrs: Any) -> str:
    return _text_digest(json.dumps({k: _canon(attrs.get(k)) for k in _SEALED_HEAD_ATTRS},
                                   sort_keys=True))


def _check_head_digest(attrs: Any, path: Path) -> bool:
    """Raise DamagedError when the head's root attributes do not match their digest;
    False when the head has none (written before digests existed)."""
    want = attrs.get(_HEAD_DIGEST_ATTR)
    if want is None or _schema(attrs) < 2:  # schema 1 heads were written before digests
        return False
    if _canon(want) != _head_digest(attrs):
        raise DamagedError(_head_damage(path, "its settings (root attributes)"),
                           detail="settings (root attributes) do not match their checksum")
    return True


def _head_damage(path: Path | str, what: str) -> str:
    path = Path(path)
    return (f"{path}: the workspace head is damaged: {what} do not match their checksum; "
            f"the entries in {data_dir(path).name}/ are not affected, but {path.name} must be "
            f"restored from a copy (or the workspace built again from its DICOM)")


def _meta_digests(f: h5py.File | h5py.Group) -> dict | None:
    """The /meta tables' digests; None for a file written before they existed."""
    if "meta" not in f:
        return None
    raw = f["meta"].attrs.get(_DIGESTS_ATTR)
    if raw is None:
        return None
    try:
        d = json.loads(_canon(raw))
        if isinstance(d, dict):
            return d
    except ValueError:
        pass
    return {"": ""}  # unreadable: every table then fails its check


def _h5_reason(exc: BaseException) -> str:
    """h5py's message without the absolute path and the HDF5 error stack."""
    text = str(exc)
    if "checksum" in text.lower() or "filter returned failure" in text.lower() \
            or "can't read data" in text.lower():
        return "checksum mismatch or unreadable chunk"
    if "truncated" in text.lower() or "signature" in text.lower() or "eof" in text.lower():
        return "file truncated or not HDF5"
    return type(exc).__name__


_NO_SPACE = {28: "no space left on device", 27: "file size limit reached",
             122: "disk quota exceeded"}


def storage_error(exc: BaseException) -> str | None:
    """A one-line cause for a write that failed for want of room (a full disk, a file
    size limit, a quota) or of permission, from an OSError or from h5py's wrapped
    errors ("... errno = 28, error message = ..."); None for any other error."""
    import errno as _errno

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None)
        text = str(e)
        m = re.search(r"errno = (\d+)", text)
        if code is None and m:
            code = int(m.group(1))
        if code in _NO_SPACE:
            return _NO_SPACE[code]
        if "No space left" in text:
            return _NO_SPACE[28]
        if code in (_errno.EACCES, _errno.EPERM):
            return "permission denied"
        if code == _errno.EROFS:
            return "read-only file system"
        e = e.__cause__ or e.__context__
    return None


_OPEN_BUDGET: int | None = None


def _open_file_budget() -> int:
    """How many entry files a Workspace keeps open: half the open-file limit, raised to
    the hard limit first where the soft one is lower (a 1024 soft limit is common)."""
    global _OPEN_BUDGET
    if _OPEN_BUDGET is None:
        try:
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
            if soft != resource.RLIM_INFINITY and soft < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            _OPEN_BUDGET = max(16, min(4096, (soft if soft != resource.RLIM_INFINITY else 8192) // 2))
        except (ImportError, ValueError, OSError):
            _OPEN_BUDGET = 256
    return _OPEN_BUDGET


def preprocess_hash(cfg: PreprocessConfig) -> str:
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:16]


def data_dir(path: str | os.PathLike) -> Path:
    """W.h5.d/: the folder of entry files beside the head W.h5."""
    path = Path(path)
    return path.with_name(path.name + ".d")


staging_dir = data_dir  # committed entries are staged where they stay


def _old_staging_dir(path: str | os.PathLike) -> Path:
    """Schema 1 kept unmerged entries in W.h5.staging/."""
    path = Path(path)
    return path.with_name(path.name + ".staging")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PatientInfo:
    """One workspace entry: a CT series of a patient.

    pseudonym: the entry's label ("PAT-0001", or "PAT-0001-2" for the patient's second CT
    series); patient: the patient pseudonym ("PAT-0001"), the unit of the train/test
    split. spacing: source voxel spacing (dz, dy, dx) in mm. rois: ROI names found in the
    source RTSTRUCT(s). n_images: preprocessed images (2D slices, or 1 volume in 3D).
    """

    pseudonym: str
    n_images: int
    spacing: tuple[float, float, float]
    rois: tuple[str, ...]
    split: str
    patient: str = ""
    content_hash: str = ""
    source_shape: tuple[int, ...] | None = None
    warnings: tuple[str, ...] = ()
    has_source: bool = False
    role: str = ""  # "" = cohort, ROLE_QUERY = query (never trained on)

    @property
    def is_query(self) -> bool:
        return self.role == ROLE_QUERY


# ----------------------------------------------------------------------------- entries


@dataclass
class EntryData:
    """Everything one entry holds, in memory, for writing (see the module layout)."""

    label: str
    patient: str
    content_hash: str
    images: np.ndarray  # float32 (n, H, W) or (n, D, H, W) in [0, 1]
    labels: np.ndarray | None = None  # uint8 same shape
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rois: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    n_source_files: int = 0
    hu: np.ndarray | None = None  # int16 (z, y, x)
    masks: dict[str, np.ndarray] | None = None  # bool (z, y, x) per ROI
    geometry: VolumeGeometry | None = None
    role: str = ""  # see ROLE_QUERY
    # per-ROI rasterisation fidelity report (training.dicom.fidelity); None: not recorded
    fidelity: dict | None = None


def write_h5(target: str | os.PathLike, fill: Callable[[h5py.File], Any]) -> None:
    """Build an HDF5 file in memory with `fill(f)`, then write its bytes to `target` with a
    plain file write. A full disk then fails as one clean OSError (ENOSPC, EFBIG) instead of
    leaving an HDF5 file half-flushed, whose teardown prints error stacks and can crash the
    interpreter at exit. An entry's file is a few MB: memory is that of the arrays it holds."""
    import io

    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        fill(f)
    try:
        with open(target, "wb") as fh:
            fh.write(bio.getbuffer())
    except BaseException:
        Path(target).unlink(missing_ok=True)
        raise


def _json_attr(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def write_source(grp: h5py.Group, hu: np.ndarray, masks: dict[str, np.ndarray] | None,
                 geometry: VolumeGeometry | None) -> None:
    """Store native-resolution HU (int16) and packed ROI masks in `grp` ("source")."""
    hu16 = np.clip(np.rint(hu), -32768, 32767).astype(np.int16) if hu.dtype != np.int16 else hu
    z, y, x = hu16.shape
    grp.create_dataset("hu", data=hu16, chunks=(1, y, x), **_HU_FILTERS)
    names = sorted(masks) if masks else []
    packed = np.zeros((len(names), z, y, (x + 7) // 8), dtype=np.uint8)
    for r, name in enumerate(names):
        packed[r] = np.packbits(np.asarray(masks[name], dtype=bool), axis=-1)
    ds = grp.create_dataset(
        "masks", data=packed, **({"chunks": (1, 1, y, packed.shape[-1]), **_MASK_FILTERS}
                                 if names else {}))
    ds.attrs["roi_names"] = _json_attr(names)
    ds.attrs["width"] = x
    grp.attrs["geometry"] = _json_attr(geometry.to_dict() if geometry is not None else None)


def read_source(grp: h5py.Group) -> tuple[np.ndarray, dict[str, np.ndarray], VolumeGeometry | None]:
    """Inverse of write_source: (HU int16 (z, y, x), {roi: bool (z, y, x)}, geometry)."""
    hu = grp["hu"][...]
    ds = grp["masks"]
    names = json.loads(ds.attrs["roi_names"])
    width = int(ds.attrs["width"])
    masks = {}
    for r, name in enumerate(names):
        masks[name] = np.unpackbits(ds[r], axis=-1, count=width).astype(bool)
    g = json.loads(grp.attrs["geometry"])
    return hu, masks, (VolumeGeometry.from_dict(g) if g else None)


def to_stored_images(images: np.ndarray) -> np.ndarray:
    """float [0, 1] → the stored uint16 (round(v · 65535); max error 7.6e-6)."""
    scaled = np.multiply(np.asarray(images, dtype=np.float32), np.float32(IMAGE_SCALE))  # one copy
    np.clip(scaled, 0.0, np.float32(IMAGE_SCALE), out=scaled)  # = clip to [0, 1], then scale
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint16)


def as_stored(images: np.ndarray) -> np.ndarray:
    """float32 exactly as a workspace read returns `images` (the uint16 round trip)."""
    out = np.empty(np.shape(images), dtype=np.float32)
    np.multiply(to_stored_images(images), np.float32(1.0 / IMAGE_SCALE), out=out)
    return out


def write_derived(grp: h5py.Group, images: np.ndarray, labels: np.ndarray | None) -> None:
    images = np.asarray(images)
    chunks = (1,) * (images.ndim - 2) + images.shape[-2:]
    stored = images if images.dtype == np.uint16 else to_stored_images(images)
    grp.create_dataset("images", data=stored, chunks=chunks, **_IMAGE_FILTERS)
    if labels is not None:
        grp.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8), chunks=chunks,
                           **_MASK_FILTERS)


def write_entry(entries: h5py.Group, e: EntryData, phash: str) -> h5py.Group:
    g = entries.create_group(e.label)
    g.attrs["pseudonym"] = str(e.label)
    g.attrs["patient"] = str(e.patient or e.label)
    g.attrs["split"] = ""
    g.attrs["content_hash"] = str(e.content_hash)
    g.attrs["series_uid"] = str(e.series_uid)
    g.attrs["frame_of_reference_uid"] = str(e.frame_of_reference_uid)
    g.attrs["spacing"] = np.asarray(e.spacing, dtype=np.float64)
    g.attrs["rois"] = _json_attr(list(e.rois))
    g.attrs["warnings"] = _json_attr(list(e.warnings))
    g.attrs["n_source_files"] = int(e.n_source_files)
    if e.role:
        g.attrs["role"] = str(e.role)
    if e.fidelity is not None:
        g.attrs["fidelity"] = _json_attr(e.fidelity)
    if e.hu is not None:
        write_source(g.create_group("source"), e.hu, e.masks, e.geometry)
    write_derived(g.create_group("derived").create_group(phash), e.images, e.labels)
    seal_entry(g)
    return g


def copy_entry(src: h5py.Group, dst_entries: h5py.Group, keep_derived: Iterable[str],
               replace_derived: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None
               ) -> h5py.Group:
    """Copy an entry's attrs, source and the named derived groups (raw chunk copies)."""
    name = src.name.rsplit("/", 1)[-1]
    keep_derived = list(keep_derived)
    if not replace_derived and set(src.get("derived", {})) <= set(keep_derived):
        src.file.copy(src, dst_entries, name=name)  # all of it: one H5Ocopy, attributes included
        return dst_entries[name]
    g = dst_entries.create_group(name)
    for k, v in src.attrs.items():
        g.attrs[k] = v
    if "source" in src:
        src.file.copy(src["source"], g, name="source")
    d = g.create_group("derived")
    for h in keep_derived:
        if replace_derived and h in replace_derived:
            write_derived(d.create_group(h), *replace_derived[h])
        elif "derived" in src and h in src["derived"]:
            src.file.copy(src["derived"][h], d, name=h)
    return g


# ----------------------------------------------------------------------------- splits


def assign_splits(patients: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Train/test by patient: the round(n·f) patients with the smallest seeded hash go to test.

    Seeded and deterministic; ranking by a per-patient hash (not a permutation of the
    list) keeps earlier patients on their side when more patients are added later.
    With ≥ 2 patients and f > 0 both sides get at least one patient.
    """
    uniq = sorted(set(patients))
    n = len(uniq)
    n_test = int(round(n * test_fraction))
    if n >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    elif n < 2:
        n_test = 0
    rank = sorted(uniq, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    test = set(rank[:n_test])
    return {p: ("test" if p in test else "train") for p in uniq}


# ----------------------------------------------------------------------------- file level


def _read_meta(f: h5py.File, name: str, default: Any, digests: dict | None | bool = True) -> Any:
    """A /meta table, checked against its digest (DamagedError on a mismatch) where the
    file has digests. digests: the file's, already read (None: it has none); True: read them."""
    if "meta" in f and name in f["meta"]:
        raw = f["meta"][name][()]
        text = raw.decode() if isinstance(raw, bytes) else raw
        if digests is True:
            digests = _meta_digests(f)
        if digests is not None and digests.get(name) != _text_digest(text):
            where = Path(f.filename)
            if str(f.attrs.get("format", "")) == FORMAT:  # the head
                raise DamagedError(_head_damage(where, f"its table {name!r}"),
                                   detail=f"table {name!r} does not match its checksum")
            raise DamagedError(f"{where}: its table {name!r} does not match its checksum (damaged)",
                               detail=f"table {name!r} does not match its checksum")
        return json.loads(text)
    return default


def _write_meta(f: h5py.File, name: str, obj: Any) -> None:
    meta = f.require_group("meta")
    if name in meta:
        del meta[name]
    text = json.dumps(obj, sort_keys=True)
    meta.create_dataset(name, data=text, dtype=_STR)
    digests = _meta_digests(f) or {}
    if "" in digests:
        digests = {}
    digests[name] = _text_digest(text)
    meta.attrs[_DIGESTS_ATTR] = json.dumps(digests, sort_keys=True)


def _init_attrs(f: h5py.File, cfg: PreprocessConfig, *, salt: str, seed: int,
                test_fraction: float, created: str | None = None,
                image_shape: Sequence[int] | None = None, merged_through: int = 0) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["tool_version"] = __version__
    f.attrs["created"] = created or now_iso()
    f.attrs["modified"] = now_iso()
    f.attrs["preprocess"] = cfg.to_json()
    f.attrs["preprocess_hash"] = preprocess_hash(cfg)
    f.attrs["image_shape"] = np.asarray(list(image_shape or []), dtype=np.int64)
    f.attrs["salt"] = salt
    f.attrs["split_seed"] = int(seed)
    f.attrs["test_fraction"] = float(test_fraction)
    f.attrs["merged_through"] = int(merged_through)
    f.require_group("entries")


# Root attributes Workspace.open reads.
_HEAD_ATTRS = ("format", "schema_version", "preprocess", "preprocess_hash", "merged_through",
               "image_shape", "test_fraction", "split_seed")
# Those the head's digest covers (created, modified and tool_version are informational).
_SEALED_HEAD_ATTRS = (*_HEAD_ATTRS, "salt")
_OPEN_ATTRS = (*_SEALED_HEAD_ATTRS, _HEAD_DIGEST_ATTR)


def _check_format(f: h5py.File | dict, path: Path) -> None:
    """f: the file, or a dict of its root attributes already read."""
    attrs = f if isinstance(f, dict) else f.attrs
    if attrs.get("format") != FORMAT:
        raise WorkspaceError(f"{path}: not a ct-vae workspace (no format={FORMAT!r} attribute)")
    v = int(attrs.get("schema_version", 0) or 0)
    if v > SCHEMA_VERSION:
        raise WorkspaceError(
            f"{path}: workspace schema version {v} is newer than this program's ({SCHEMA_VERSION}); "
            "update ct-vae-explorer"
        )


def _entry_row(g: h5py.Group, phash: str) -> dict:
    """What Workspace.open needs about one entry (a row of /meta/entries)."""
    d = g.get("derived/" + phash)
    img = d["images"] if d is not None and "images" in d else None
    src = g.get("source")
    return {
        "pseudonym": str(g.attrs.get("pseudonym", g.name.rsplit("/", 1)[-1])),
        "patient": str(g.attrs.get("patient", g.name.rsplit("/", 1)[-1])),
        "content_hash": str(g.attrs.get("content_hash", "")),
        "series_uid": str(g.attrs.get("series_uid", "")),
        "spacing": [float(v) for v in g.attrs.get("spacing", (1.0, 1.0, 1.0))],
        "rois": json.loads(g.attrs.get("rois", "[]")),
        "warnings": json.loads(g.attrs.get("warnings", "[]")),
        "has_source": src is not None,
        "source_shape": list(src["hu"].shape) if src is not None else None,
        "n_images": int(img.shape[0]) if img is not None else 0,
        "image_shape": list(img.shape[1:]) if img is not None else None,
        "has_labels": bool(d is not None and "labels" in d),
        "role": str(g.attrs.get("role", "")),
    }


def _data_hash(phash: str, rows: Iterable[tuple[str, str, str]]) -> str:
    h = hashlib.sha256(phash.encode())
    for label, content, split in sorted(rows):
        h.update(f"\n{label}\t{content}\t{split}".encode())
    return h.hexdigest()[:16]


def _schema(attrs) -> int:
    return int(attrs.get("schema_version", 0) or 0)


def _read_only(p: Path) -> bool:
    """No write permission for us, or no write bit at all (a file or folder a user marked
    read-only stays so even for root, who could write it anyway)."""
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return not os.access(p, os.W_OK) or not mode & 0o222


def _writable_or_refuse(path: Path) -> None:
    """A read-only head is refused (never silently replaced); so is a read-only folder."""
    path = Path(path)
    if path.exists() and _read_only(path):
        raise WorkspaceError(f"{path}: the workspace file is read-only; make it writable "
                             f"(chmod u+w) to change it")
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and _read_only(folder):
        raise WorkspaceError(f"{folder}: the workspace's folder is read-only (no new files can "
                             f"be written there); choose another folder or make it writable")
    d = data_dir(path)
    if d.exists() and _read_only(d):
        raise WorkspaceError(f"{d}: the workspace's data folder is read-only; make it writable")


def check_writable(path: str | os.PathLike) -> None:
    """Raise WorkspaceError (one line) unless a writer may change or create `path`."""
    _writable_or_refuse(Path(path))


def _write_head(path: Path, *, cfg: PreprocessConfig, salt: str, seed: int, test_fraction: float,
                created: str | None, image_shape: Sequence[int], merged_through: int,
                meta: dict[str, Any]) -> Path:
    """Replace the head atomically (fsynced, the folder too); keeps an existing head's mode."""
    mode = None
    if path.exists():
        _writable_or_refuse(path)
        mode = path.stat().st_mode & 0o7777
    def fill(f: h5py.File) -> None:
        _init_attrs(f, cfg, salt=salt, seed=seed, test_fraction=test_fraction,
                    created=created, image_shape=image_shape, merged_through=merged_through)
        f.attrs[_HEAD_DIGEST_ATTR] = _head_digest(f.attrs)  # read back: as a reader sees them
        for name, obj in meta.items():
            _write_meta(f, name, obj)

    with atomic_write_path(path) as tmp:
        write_h5(tmp, fill)
        if mode is not None:
            os.chmod(tmp, mode)
    if mode is not None:
        os.chmod(path, mode)  # atomic_write_path gives the umask's mode; the user's stays
    return path


def create_empty(path: str | os.PathLike, cfg: PreprocessConfig | None = None, *,
                 test_fraction: float = 0.25, seed: int = 0, salt: str | None = None) -> Path:
    """Write an empty workspace atomically (a fresh random pseudonym salt unless given)."""
    path = Path(path)
    return _write_head(path, cfg=cfg or PreprocessConfig(), salt=salt or new_salt(), seed=seed,
                       test_fraction=test_fraction, created=None, image_shape=(),
                       merged_through=0,
                       meta={"provenance": [], "skipped": [], "identity": {}, "pseudonyms": {},
                             "entries": {}, "segments": {}})


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Delete temporary files a killed writer left beside the workspace and in its data
    folder, and entry files no head names any more (superseded, or written for other
    preprocessing by a killed re-derive).

    Call only while holding the writer lock (training.store.ingest.workspace_lock): then no
    temporary file can belong to a live writer.
    """
    path = Path(path)
    n = 0
    for folder in (path.parent, data_dir(path), _old_staging_dir(path)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.endswith(".tmp") and p.name.startswith("."):
                if folder == path.parent and not p.name.startswith(f".{path.name}."):
                    continue
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
    if path.exists() and data_dir(path).is_dir():
        try:
            with h5py.File(path, "r") as f:
                if _schema(f.attrs) < 2:
                    return n
                named = set(_read_meta(f, "segments", {}).values())
                through = int(f.attrs.get("merged_through", 0))
                phash = str(f.attrs.get("preprocess_hash", ""))
        except OSError:
            return n
        for seq, p in list_staged(path):
            stale = seq <= through and p.name not in named
            if not stale and seq > through:
                stale = _staged_phash(p) not in (phash, None)
            if stale:
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
        for p in data_dir(path).glob("*" + DAMAGE_SUFFIX):  # damage of files gone since
            if not p.with_name(p.name[:-len(DAMAGE_SUFFIX)]).exists():
                p.unlink(missing_ok=True)
    return n


def recorded_damage(path: str | os.PathLike) -> set[str]:
    """Labels of the entries a reader found damaged (a "<file>.damaged" marker beside the
    entry file the head names): the next ingest re-loads their series from DICOM."""
    path = Path(path)
    folder = data_dir(path)
    if not folder.is_dir():
        return set()
    marked = {p.name[:-len(DAMAGE_SUFFIX)] for p in folder.glob("*" + DAMAGE_SUFFIX)}
    if not marked:
        return set()
    with h5py.File(path, "r") as f:
        segments = _read_meta(f, "segments", {})
    return {k for k, name in segments.items() if name in marked}


def _staged_phash(p: Path) -> str | None:
    """The preprocessing an entry file was written for; None when it cannot be read."""
    try:
        with h5py.File(p, "r") as f:
            return str(f.attrs.get("preprocess_hash", ""))
    except OSError:
        return None


def list_staged(path: str | os.PathLike, merged_through: int = 0, *,
                folder: Path | None = None) -> list[tuple[int, Path]]:
    d = folder or data_dir(path)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STAGED_RE.match(p.name)
        if m and int(m.group(1)) > merged_through:
            out.append((int(m.group(1)), p))
    return sorted(out)


def entry_files(path: str | os.PathLike) -> dict[str, Path]:
    """Entry label → the file holding it, as the head names them (schema 2)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        segments = _read_meta(f, "segments", {})
    return {k: data_dir(path) / v for k, v in segments.items()}


def copy_workspace(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a workspace: its head W.h5 and its data folder W.h5.d/ (what moving one takes).
    The entry files are copied first, the head last, so an interrupted copy is no workspace."""
    import shutil

    src, dst = Path(src), Path(dst)
    if data_dir(src).is_dir():
        shutil.copytree(data_dir(src), data_dir(dst), dirs_exist_ok=True)
    shutil.copy2(src, dst)
    return dst


def has_leftovers(path: str | os.PathLike) -> bool:
    """Committed entry files that the head does not name yet (a killed writer's)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        through = int(f.attrs.get("merged_through", 0))
    return bool(list_staged(path, through))


def next_seq(path: str | os.PathLike) -> int:
    """A sequence number above every entry file and the head's merged_through."""
    path = Path(path)
    through = 0
    if path.exists():
        with h5py.File(path, "r") as f:
            through = int(f.attrs.get("merged_through", 0))
    return max([s for s, _ in list_staged(path)] + [through]) + 1


def staged_path(path: str | os.PathLike, seq: int, label: str) -> Path:
    return data_dir(path) / f"{seq:08d}-{label}.h5"


def write_staged_tmp(final: Path, entry: EntryData, phash: str, salt: str,
                     identity: dict[str, list], pseudonyms: dict[str, int],
                     rows_out: dict[str, dict] | None = None) -> Path:
    """Write one entry as a complete temporary file beside `final` (not yet committed:
    `commit_staged` renames it). Not fsynced (see the module's Durability note).
    rows_out: receives {label: head row} read from the file as written, so the writer
    can hand it to Merger.add_staged instead of opening the file again."""
    from training.atomic import temp_path_for

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)

    def fill(f: h5py.File) -> None:
        f.attrs["format"] = FORMAT + "-staged"
        f.attrs["salt"] = salt
        f.attrs["preprocess_hash"] = phash
        g = write_entry(f.create_group("entries"), entry, phash)
        if rows_out is not None:
            rows_out[entry.label] = _entry_row(g, phash)
        _write_meta(f, "identity", identity)
        _write_meta(f, "pseudonyms", pseudonyms)

    write_h5(tmp, fill)
    return tmp


def commit_staged(tmp: Path, final: Path) -> Path:
    """The commit point of one entry: an atomic rename of the complete file into the
    data folder (durable once a head names it; see the module's Durability note)."""
    os.replace(tmp, final)
    return final


def write_staged(path: str | os.PathLike, seq: int, entry: EntryData, phash: str, salt: str,
                 identity: dict[str, list], pseudonyms: dict[str, int]) -> Path:
    """Commit one entry as its own HDF5 file in the data folder (atomic)."""
    final = staged_path(path, seq, entry.label)
    return commit_staged(write_staged_tmp(final, entry, phash, salt, identity, pseudonyms), final)


class Merger:
    """Builds the next head of a workspace while entries are being committed.

    The writer adds each entry file as soon as it is committed (`add_staged` reads its
    small metadata); `finish` fsyncs the new files, writes the next head naming them and
    replaces the head atomically, then removes the files of entries it replaced.
    `abort` writes nothing (committed files stay and are folded in next time).
    new_cfg switches the preprocessing: the head then names only entries added for it
    (a re-derive adds every entry again).
    """

    def __init__(self, path: str | os.PathLike, new_cfg: PreprocessConfig | None = None):
        self.path = Path(path)
        try:
            src = h5py.File(self.path, "r")
        except OSError as exc:
            raise WorkspaceError(f"{self.path}: cannot be opened as HDF5 ({exc})") from exc
        with src:
            _check_format(src, self.path)
            if _schema(src.attrs) < 2:
                raise WorkspaceError(f"{self.path}: schema 1 workspace; convert it first")
            _check_head_digest(src.attrs, self.path)  # its tables are checked as read
            self.merged_through = int(src.attrs.get("merged_through", 0))
            self.cfg = new_cfg or PreprocessConfig.from_json(src.attrs["preprocess"])
            self.phash = preprocess_hash(self.cfg)
            same = self.phash == src.attrs["preprocess_hash"]
            self.shape = [int(v) for v in src.attrs["image_shape"]] if same else []
            self.identity = _read_meta(src, "identity", {})
            self.pseudonyms = _read_meta(src, "pseudonyms", {})
            self.provenance = _read_meta(src, "provenance", [])
            self.skip_rows = {r[0]: r[1] for r in _read_meta(src, "skipped", [])}
            old_segments = _read_meta(src, "segments", {})
            self.old_rows: dict[str, dict] = _read_meta(src, "entries", {})
            self.rows: dict[str, dict] = dict(self.old_rows) if same else {}
            self.segments: dict[str, str] = dict(old_segments) if same else {}
            self.old_files = set(old_segments.values())
            self.salt = str(src.attrs["salt"])
            self.seed = int(src.attrs["split_seed"])
            self.test_fraction = float(src.attrs["test_fraction"])
            self.created = src.attrs.get("created")
        self.max_seq = self.merged_through
        self.roles: dict[str, str] = {}  # label → new role, applied by finish (set_roles)
        self.consumed: list[Path] = []  # committed files read into this head
        self.added: list[Path] = []  # of those, the ones the head names
        self.damaged: list[str] = []  # staged files that could not be read (left out)
        self.dropped: list[str] = []  # entries removed (damaged data found by a re-derive)

    def add_staged(self, seq: int, staged: Path,
                   written: tuple[dict[str, dict], dict[str, list], dict[str, int]] | None = None) -> None:
        """Fold a committed entry file into the next head. One that cannot be read
        (damaged by a power cut: not fsynced before a head names it) is left out, recorded
        in the provenance and removed; its series comes in again with the next drop.
        written: (rows, identity, pseudonyms) of a file this writer has just written for
        this workspace and preprocessing (write_staged_tmp's rows_out), so it is not
        opened again."""
        from training.atomic import start_writeback

        if written is not None:
            rows, identity, pseudonyms = written
        else:
            try:
                sf = h5py.File(staged, "r")
            except OSError as exc:
                self._damaged(seq, staged, exc)
                return
            with sf:
                try:
                    if sf.attrs.get("salt") != self.salt:
                        return  # not written for this workspace
                    if "entries" in sf and len(sf["entries"]) and \
                            str(sf.attrs.get("preprocess_hash", "")) != self.phash:
                        return  # written for other preprocessing (a killed re-derive)
                    if any(check_entry(sf["entries"][k]) is False for k in sf["entries"]):
                        raise DamagedError(f"{staged.name}: attributes do not match their checksum")
                    rows = {k: _entry_row(sf["entries"][k], self.phash) for k in sf["entries"]}
                    identity = _read_meta(sf, "identity", {})
                    pseudonyms = _read_meta(sf, "pseudonyms", {})
                except (OSError, KeyError, ValueError, DamagedError) as exc:
                    self._damaged(seq, staged, exc)
                    return
        for k, row in rows.items():
            self.rows[k] = row  # a later commit of the same series wins
            self.segments[k] = staged.name
            if not self.shape and row["image_shape"]:
                self.shape = list(row["image_shape"])
        if rows:
            self.added.append(staged)
        self.identity.update(identity)
        self.pseudonyms.update(pseudonyms)
        self.consumed.append(staged)
        self.max_seq = max(self.max_seq, seq)
        start_writeback(staged)  # most of it is on disk before the final fsync

    def _damaged(self, seq: int, staged: Path, exc: BaseException) -> None:
        # the name only: h5py's message holds the absolute path
        self.damaged.append(f"{staged.name}: unreadable ({type(exc).__name__})")
        self.consumed.append(staged)
        self.max_seq = max(self.max_seq, seq)

    def drop(self, label: str, reason: str) -> None:
        """Leave an entry out of the next head and forget its files' identity rows, so
        the next drop of its DICOM ingests it again."""
        row = self.rows.pop(label, None) or self.old_rows.get(label)
        self.segments.pop(label, None)
        uid = (row or {}).get("series_uid", "")
        if uid:
            self.identity = {q: r for q, r in self.identity.items() if r[1] != uid}
        self.dropped.append(f"{label}: {reason}")

    def finish(self, skipped: list[list[str]] | None = None, provenance: dict | None = None,
               seen: Iterable[str] = ()) -> Path:
        """seen: relative paths of this drop; their old skipped rows are replaced by `skipped`
        (a file fixed since is no longer listed)."""
        from training.atomic import fsync_dir, fsync_file

        done = set(self.consumed)
        for seq, p in list_staged(self.path, self.merged_through):
            if p not in done:
                self.add_staged(seq, p)
        for p in seen:
            self.skip_rows.pop(p, None)
        if skipped:
            self.skip_rows.update({r[0]: r[1] for r in skipped})
        if provenance or self.damaged or self.dropped:
            record = dict(provenance or {"time": now_iso(), "action": "merge"})
            if self.damaged:
                record["damaged_staged_files"] = list(self.damaged)
            if self.dropped:
                record["damaged_entries_removed"] = list(self.dropped)
            self.provenance.append(record)
        for k, role in self.roles.items():  # the head's row holds the current role
            if k in self.rows:
                self.rows[k] = {**self.rows[k], "role": str(role)}
        named = set(self.segments.values())
        for p in self.added:
            if p.name in named:
                fsync_file(p)
        if self.added:
            fsync_dir(data_dir(self.path))
        labels = sorted(self.rows)
        _write_head(self.path, cfg=self.cfg, salt=self.salt, seed=self.seed,
                    test_fraction=self.test_fraction, created=self.created,
                    image_shape=self.shape, merged_through=self.max_seq,
                    meta={"entries": {k: self.rows[k] for k in labels},
                          "segments": {k: self.segments[k] for k in labels},
                          "identity": self.identity, "pseudonyms": self.pseudonyms,
                          "provenance": self.provenance,
                          "skipped": [[k, v] for k, v in sorted(self.skip_rows.items())]})
        # what the new head no longer names: replaced entries, damaged and entry-less files
        folder = data_dir(self.path)
        for name in (self.old_files | {p.name for p in self.consumed}) - named:
            try:
                (folder / name).unlink()
            except OSError:
                pass
            (folder / (name + DAMAGE_SUFFIX)).unlink(missing_ok=True)  # re-loaded since
        return self.path

    def abort(self) -> None:
        pass  # nothing written until finish


def merge(path: str | os.PathLike, *, new_cfg: PreprocessConfig | None = None,
          skipped: list[list[str]] | None = None, provenance: dict | None = None) -> Path:
    """Write a new head with all committed entry files folded in.

    new_cfg switches the current preprocessing (only for a workspace without entries:
    use training.store.ingest.rederive otherwise). skipped: [relative path, reason] rows
    replacing those of the same path.
    """
    return Merger(path, new_cfg).finish(skipped, provenance)


def convert_v1(path: str | os.PathLike) -> str:
    """Convert a schema 1 workspace (everything inside W.h5, leftovers in W.h5.staging/)
    to the appending layout, once: each entry is copied into its own file in W.h5.d/
    as it is (float32 images and uncompressed HU stay so until the next re-derive or
    re-ingest); then a new head replaces W.h5. Call while holding the writer lock.
    Returns a message for the user."""
    from training.atomic import fsync_dir, fsync_file

    path = Path(path)
    _writable_or_refuse(path)
    folder = data_dir(path)
    folder.mkdir(exist_ok=True)
    with h5py.File(path, "r") as src:
        _check_format(src, path)
        if _schema(src.attrs) >= 2:
            return ""
        through = int(src.attrs.get("merged_through", 0))
        staged = list_staged(path, through, folder=_old_staging_dir(path))
        seq = max([s for s, _ in staged] + [through, *[s for s, _ in list_staged(path)]]) + 1
        phash = str(src.attrs["preprocess_hash"])
        cfg = PreprocessConfig.from_json(src.attrs["preprocess"])
        rows: dict[str, dict] = {}
        segments: dict[str, str] = {}
        written: list[Path] = []
        for label in sorted(src["entries"]):
            final = staged_path(path, seq, label)
            from training.atomic import temp_path_for

            tmp = temp_path_for(final)

            def fill(f: h5py.File, label: str = label) -> None:
                f.attrs["format"] = FORMAT + "-staged"
                f.attrs["salt"] = src.attrs["salt"]
                f.attrs["preprocess_hash"] = phash
                src.copy(src["entries"][label], f.create_group("entries"), name=label)
                rows[label] = _entry_row(f["entries"][label], phash)

            write_h5(tmp, fill)
            fsync_file(tmp)
            os.replace(tmp, final)
            segments[label] = final.name
            written.append(final)
            seq += 1
        fsync_dir(folder)
        meta = {"entries": rows, "segments": segments,
                "identity": _read_meta(src, "identity", {}),
                "pseudonyms": _read_meta(src, "pseudonyms", {}),
                "skipped": _read_meta(src, "skipped", []),
                "provenance": _read_meta(src, "provenance", []) + [
                    {"time": now_iso(), "tool_version": __version__,
                     "action": "convert to schema 2 (one file per entry in W.h5.d/)"}]}
        head = dict(cfg=cfg, salt=str(src.attrs["salt"]), seed=int(src.attrs["split_seed"]),
                    test_fraction=float(src.attrs["test_fraction"]),
                    created=src.attrs.get("created"),
                    image_shape=[int(v) for v in src.attrs["image_shape"]])
    # unmerged leftovers of schema 1 keep their numbers (above every converted file's)
    moved = []
    for s, p in staged:
        dst = folder / p.name
        os.replace(p, dst)
        moved.append(dst)
    _write_head(path, merged_through=seq - 1, meta=meta, **head)
    try:
        _old_staging_dir(path).rmdir()
    except OSError:
        pass
    if moved:  # fold them in like any leftovers
        merge(path)
    return (f"{path.name}: converted to the appending layout (schema 2): {len(rows)} entries "
            f"now in {folder.name}/; copy both {path.name} and {folder.name}/ to move it")


def write_arrays_workspace(path: str | os.PathLike, images: dict[str, np.ndarray],
                           labels: dict[str, np.ndarray] | None = None,
                           preprocess: PreprocessConfig | None = None, roi_names: Sequence[str] = (),
                           test_fraction: float = 0.25, seed: int = 0,
                           patients: dict[str, str] | None = None) -> Path:
    """Write a workspace straight from preprocessed arrays (tests, benchmarks, demos).

    patients: entry label → patient pseudonym, for patients with several series (default:
    each entry is its own patient).
    images: label → float32 (n, H, W) for 2D or (n, D, H, W) for 3D, in [0, 1].
    labels: label → uint8 of the same shape (0 = complement, k = roi_names[k-1]).
    Entries have no source group, so they cannot be re-derived. Replaces any workspace
    at `path` atomically (its old entry files are removed after the new head is in place).
    """
    import shutil

    path = Path(path)
    if not images:
        raise ValueError("write_arrays_workspace: no images")
    first = next(iter(images.values()))
    mode = "3d" if first.ndim == 4 else "2d"
    cfg = preprocess or PreprocessConfig(mode=mode, crop=None)
    if roi_names and not cfg.rois:
        cfg = cfg.replace(rois=tuple(roi_names))
    if cfg.mode != mode:
        cfg = cfg.replace(mode=mode)
    phash = preprocess_hash(cfg)
    shape = first.shape[1:]
    salt = new_salt()
    old = sorted(data_dir(path).iterdir()) if data_dir(path).is_dir() else []
    seq = next_seq(path) if path.exists() else 1
    tmp = create_empty(path.with_name(f".{path.name}.arrays.tmp"), cfg,
                       test_fraction=test_fraction, seed=seed, salt=salt)
    written: list[Path] = []
    try:
        staged_tmp = Path(tmp)
        for label, arr in images.items():
            arr = np.asarray(arr, dtype=np.float32)
            if arr.shape[1:] != shape:
                raise ValueError(f"{label}: image shape {arr.shape[1:]} differs from {shape}")
            lab = None if labels is None else np.asarray(labels[label], dtype=np.uint8)
            h = hashlib.sha256(arr.tobytes())
            if lab is not None:
                h.update(lab.tobytes())
            written.append(write_staged(path, seq, EntryData(
                label=label, patient=(patients or {}).get(label, label), content_hash=h.hexdigest()[:32], images=arr,
                labels=lab, rois=tuple(cfg.rois)), phash, salt, {}, {}))
            seq += 1
        # the new head: fold the new files into the temporary empty head, then rename it
        m = Merger(staged_tmp)
        for k, p in enumerate(written):
            m.add_staged(seq - len(written) + k, p)
        m.provenance = [{"time": now_iso(), "tool_version": __version__, "source": "arrays",
                         "n_entries": len(images), "preprocess": cfg.to_dict()}]
        m.old_files = set()
        _finish_into(m, path)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)
    for p in old:
        if p.is_file():
            p.unlink(missing_ok=True)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    return path


def _finish_into(m: Merger, path: Path) -> None:
    """Write m's head at `path` (m was built on a temporary head beside it)."""
    from training.atomic import fsync_dir, fsync_file

    for p in m.added:
        fsync_file(p)
    fsync_dir(data_dir(path))
    labels = sorted(m.rows)
    _write_head(path, cfg=m.cfg, salt=m.salt, seed=m.seed, test_fraction=m.test_fraction,
                created=None, image_shape=m.shape, merged_through=m.max_seq,
                meta={"entries": {k: m.rows[k] for k in labels},
                      "segments": {k: m.segments[k] for k in labels},
                      "identity": {}, "pseudonyms": {}, "provenance": m.provenance,
                      "skipped": []})


# ----------------------------------------------------------------------------- reading


class Workspace:
    """Read side of a workspace: patients, split index and batch reads.

    Use as a context manager (``with Workspace.open(p) as ws:``). Entries committed to the
    staging folder but not merged yet (a killed or running ingest) are included.
    Rows are (patient index, image index) into `patients` and that entry's images.
    """

    LRU_STAGED = 0  # entry files kept open (0: as many as the open-file limit allows)

    def __init__(self, path: Path, files: list[h5py.File], main: h5py.File,
                 entries: list[tuple[str, h5py.File | Path, dict]], head: dict | None = None):
        from collections import OrderedDict

        self.path = path
        self._files = files
        self._lru: OrderedDict[Path, h5py.File] = OrderedDict()
        self._main = main
        a = head if head is not None else {k: main.attrs.get(k) for k in _HEAD_ATTRS}
        self.preprocess: PreprocessConfig = PreprocessConfig.from_json(a["preprocess"])
        self.preprocess_hash: str = str(a["preprocess_hash"])
        self.schema_version = int(a["schema_version"])
        # (label, file holding it, row); datasets are looked up on first read
        self._entries = entries
        self.head_checked = a.get(_HEAD_DIGEST_ATTR) is not None  # False: no digests
        self._sealed: dict[int, bool] = {}  # entry → attributes checked (False: no digest)
        self.unrecorded: list[str] = []  # damaged entries whose marker could not be written
        self.unchecked: list[str] = []  # entries without an attribute digest (set by verify)
        self._ds: dict[tuple[str, int], h5py.Dataset | None] = {}
        self._ds_info: dict[tuple[str, int], tuple[int, bool]] = {}
        shape = tuple(int(v) for v in a["image_shape"])
        if not shape:
            shape = next((tuple(r["image_shape"]) for _, _, r in entries if r["image_shape"]), ())
        self.image_shape: tuple[int, ...] = tuple(int(v) for v in shape)
        splits = assign_splits([r["patient"] for _, _, r in entries
                                if r.get("role", "") != ROLE_QUERY],
                               float(a["test_fraction"]), int(a["split_seed"]))
        infos = []
        for _, _, r in entries:
            ok = r["image_shape"] is not None and tuple(r["image_shape"]) == self.image_shape
            role = str(r.get("role", ""))
            infos.append(PatientInfo(
                pseudonym=r["pseudonym"],
                # an entry that cannot be batched with the others is listed with 0 images
                n_images=r["n_images"] if ok else 0,
                spacing=tuple(r["spacing"]),
                rois=tuple(r["rois"]),
                split=ROLE_QUERY if role == ROLE_QUERY else splits[r["patient"]],
                patient=r["patient"],
                content_hash=r["content_hash"],
                source_shape=tuple(r["source_shape"]) if r["source_shape"] else None,
                warnings=tuple(r["warnings"]),
                has_source=bool(r["has_source"]),
                role=role,
            ))
        self.patients: list[PatientInfo] = infos
        self.roi_names: tuple[str, ...] = tuple(self.preprocess.rois)
        # queries are left out: adding one does not change the data a model was trained on
        self.data_hash: str = _data_hash(
            self.preprocess_hash,
            ((p.pseudonym, p.content_hash, p.split) for p in infos if not p.is_query))

    # -- opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> "Workspace":
        path = Path(path)
        if not path.exists():
            raise WorkspaceError(f"{path}: no such workspace")
        try:
            # No chunk cache: training reads each chunk once per epoch, and h5py's default
            # 1 MiB cache per dataset (two per patient) made memory grow with the cohort.
            main = h5py.File(path, "r", rdcc_nbytes=0)
        except OSError as exc:
            raise WorkspaceError(f"{path}: cannot be opened as HDF5 ({exc})") from exc
        files = [main]
        try:
            # each root attribute read once (an h5py attribute read costs ~50 µs)
            head = {k: main.attrs.get(k) for k in _OPEN_ATTRS}
            _check_format(head, path)
            _check_head_digest(head, path)
            phash = str(head["preprocess_hash"])
            through = int(head["merged_through"] or 0)
            found: dict[str, tuple[str, h5py.File | Path, dict]] = {}
            if _schema(head) >= 2:
                digests = _meta_digests(main)  # the tables' checksums (None: written before)
                table = _read_meta(main, "entries", {}, digests)
                segments = _read_meta(main, "segments", {}, digests)
                if set(segments) != set(table):
                    raise DamagedError(_head_damage(path, "its entry table and file list"),
                                       detail="entry table and file list disagree")
                folder = data_dir(path)
                for k in sorted(segments):
                    found[k] = (k, folder / segments[k], table[k])
                staged = list_staged(path, through)
            else:  # schema 1: entries inside the head, leftovers in W.h5.staging/
                table = _read_meta(main, "entries", None)
                names = list(main["entries"])
                if table is None or set(table) != set(names):
                    table = {k: _entry_row(main["entries"][k], phash) for k in names}
                found = {k: (k, main, table[k]) for k in names}
                staged = list_staged(path, through, folder=_old_staging_dir(path))
            salt = head["salt"]
            for _, p in staged:  # committed by a writer that has not written its head yet
                try:
                    sf = h5py.File(p, "r", rdcc_nbytes=0)
                except OSError:
                    continue  # removed by a concurrent writer, or unreadable: skip
                try:
                    with sf:
                        if sf.attrs.get("salt") != salt:
                            continue
                        if len(sf["entries"]) and str(sf.attrs.get("preprocess_hash", "")) != phash:
                            continue  # a killed re-derive's: not part of this workspace
                        if any(check_entry(sf["entries"][k]) is False for k in sf["entries"]):
                            continue  # damaged: skipped like an unreadable one
                        rows = {k: _entry_row(sf["entries"][k], phash) for k in sf["entries"]}
                except (OSError, KeyError, ValueError):  # damaged (a power cut): skip
                    continue
                for k, row in rows.items():
                    found[k] = (k, p, row)
            return cls(path, files, main, [found[k] for k in sorted(found)], head)
        except BaseException:
            for f in files:
                f.close()
            raise

    def close(self) -> None:
        for f in [*self._files, *self._lru.values()]:
            try:
                f.close()
            except Exception:
                pass
        self._files = []
        self._lru.clear()
        self._ds.clear()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metadata
    @property
    def provenance(self) -> list[dict]:
        return _read_meta(self._main, "provenance", [])

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path relative to the dropped folder, reason) of every unusable file."""
        return [tuple(r) for r in _read_meta(self._main, "skipped", [])]

    @property
    def available_rois(self) -> tuple[str, ...]:
        """Every ROI name found in any patient (sorted)."""
        return tuple(sorted({r for p in self.patients for r in p.rois}))

    @property
    def split_seed(self) -> int:
        return int(self._main.attrs["split_seed"])

    @property
    def test_fraction(self) -> float:
        return float(self._main.attrs["test_fraction"])

    @property
    def n_images(self) -> int:
        return sum(p.n_images for p in self.patients)

    def patient_index(self, pseudonym: str) -> int:
        for i, p in enumerate(self.patients):
            if p.pseudonym == pseudonym:
                return i
        raise KeyError(f"no patient {pseudonym!r} in {self.path}")

    # -- index and reads
    def index(self, split: str | None = None) -> np.ndarray:
        """int64 (N, 2) rows (patient index, image index), patient-major order.

        split None: the cohort (train and test); query entries (ROLE_QUERY) are never in
        it, nor in "train" or "test": only split="query" lists their rows.
        """
        if split not in (None, "train", "test", ROLE_QUERY):
            raise ValueError(f"split must be None, 'train', 'test' or 'query', got {split!r}")
        parts = [
            np.stack([np.full(p.n_images, i), np.arange(p.n_images)], axis=1)
            for i, p in enumerate(self.patients)
            if p.n_images and (p.split == split if split is not None else not p.is_query)
        ]
        if not parts:
            return np.zeros((0, 2), dtype=np.int64)
        return np.concatenate(parts).astype(np.int64)

    def _max_open(self) -> int:
        if self.LRU_STAGED:
            return self.LRU_STAGED
        return _open_file_budget()

    def damaged(self, p: int, exc: BaseException | None, reason: str = "") -> DamagedError:
        """The error for an entry whose stored data cannot be read back (a chunk failing
        its checksum, attributes not matching their digest, an unreadable file). Records
        the damage ("<file>.damaged" beside the entry file) so that the next ingest
        re-loads the series when its DICOM is dropped again, as the message says."""
        label, f, _ = self._entries[p]
        where = f"{f.parent.name}/{f.name}" if isinstance(f, Path) else self.path.name
        detail = f"stored data is damaged ({reason or _h5_reason(exc)}) in {where}"
        why = self._record_damage(p)
        if why is None:
            advice = ("drop its DICOM again: the damage is recorded, so the next ingest "
                      "re-loads this series instead of calling it unchanged")
        else:
            if label not in self.unrecorded:
                self.unrecorded.append(label)
            advice = (f"the damage could not be recorded ({why}): make {data_dir(self.path)} "
                      f"writable, run `ct-vae info --check {self.path}`, then drop its DICOM again")
        return DamagedError(f"{self.path}: {label}: {detail}; {advice} "
                            f"(ct-vae info --check lists every damaged entry)",
                            label=label, detail=detail)

    def _record_damage(self, p: int) -> str | None:
        """Leave the damage marker of entry p; None when it is there, else why not."""
        label, f, _ = self._entries[p]
        if not isinstance(f, Path):
            return "the workspace has the old single-file layout"
        marker = f.with_name(f.name + DAMAGE_SUFFIX)
        try:
            with open(marker, "x", encoding="utf-8") as fh:
                fh.write(f"{label}\n")
        except FileExistsError:
            pass
        except OSError as exc:
            return storage_error(exc) or type(exc).__name__
        return None

    def _check_attrs(self, p: int, g: h5py.Group) -> None:
        """Once per entry: its attributes against their digest (DamagedError on a mismatch)."""
        if p not in self._sealed:
            ok = check_entry(g)
            if ok is False:
                raise self.damaged(p, None, "its attributes do not match their checksum")
            self._sealed[p] = ok is not None

    def _group(self, p: int, attrs: bool = True) -> h5py.Group:
        """The entry's group; attrs: its attributes are about to be used, so check them
        against their digest first (once per entry, ~1-3 ms; batch reads of the derived
        arrays use the head's row, not these attributes, and skip it)."""
        label, f, _ = self._entries[p]
        if isinstance(f, Path):
            if f not in self._lru:
                if len(self._lru) >= self._max_open():
                    old, handle = self._lru.popitem(last=False)
                    self._ds = {k: v for k, v in self._ds.items()
                                if self._entries[k[1]][1] != old}
                    handle.close()
                try:
                    self._lru[f] = h5py.File(f, "r", rdcc_nbytes=0)
                except OSError as exc:
                    if f.exists():
                        raise self.damaged(p, exc, f"its file cannot be opened: {_h5_reason(exc)}") from exc
                    raise WorkspaceError(f"{self.path}: {label} was replaced or removed by another "
                                         "process meanwhile; open the workspace again") from exc
            self._lru.move_to_end(f)
            f = self._lru[f]
        try:
            g = f["entries"][label]
        except (KeyError, OSError) as exc:
            raise self.damaged(p, exc) from exc
        if attrs:
            self._check_attrs(p, g)
        return g

    def _dataset(self, kind: str, p: int) -> h5py.Dataset | None:
        """The entry's images or labels for the current preprocessing (None if absent)."""
        key = (kind, p)
        if key not in self._ds:
            ds = None
            if self.patients[p].n_images:
                d = self._group(p, attrs=False).get(f"derived/{self.preprocess_hash}")
                ds = d.get(kind) if d is not None else None
            if ds is not None and int(ds.shape[0]) != self.patients[p].n_images:
                raise self.damaged(p, None, f"the workspace's entry table says "
                                            f"{self.patients[p].n_images} images, its {kind} hold "
                                            f"{int(ds.shape[0])}")
            self._ds[key] = ds
            if ds is not None:  # read once: h5py builds dtype and shape on every access
                self._ds_info[key] = (int(ds.shape[0]), ds.dtype == np.uint16)
        return self._ds[key]

    def _read(self, kind: str, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        # Consecutive rows of one patient become one slice read; others one chunk each.
        # Stored uint16 images are read into one scratch array and scaled in one pass.
        n = len(rows)
        scratch: np.ndarray | None = None
        scaled: list[tuple[int, int]] = []
        b = 0
        while b < n:
            p, i = int(rows[b, 0]), int(rows[b, 1])
            e = b + 1
            while e < n and rows[e, 0] == p and rows[e, 1] == i + (e - b):
                e += 1
            if not 0 <= p < len(self._entries):
                raise IndexError(f"patient index {p} out of range (0..{len(self._entries) - 1})")
            ds = self._dataset(kind, p)
            if ds is None:
                raise IndexError(f"patient {p} has no {kind} for the current preprocessing")
            rows_in, u16 = self._ds_info[(kind, p)]
            if i < 0 or i + (e - b) > rows_in:
                raise IndexError(f"image rows {i}..{i + e - b - 1} out of range for patient {p}")
            try:
                if u16 and out.dtype != np.uint16:  # stored images
                    if scratch is None:
                        scratch = np.empty(out.shape, dtype=np.uint16)
                    ds.read_direct(scratch, np.s_[i:i + (e - b)], np.s_[b:e])
                    if scaled and scaled[-1][1] == b:
                        scaled[-1] = (scaled[-1][0], e)
                    else:
                        scaled.append((b, e))
                else:
                    ds.read_direct(out, np.s_[i:i + (e - b)], np.s_[b:e])
            except OSError as exc:  # a fletcher32 mismatch, or a damaged file
                raise self.damaged(p, exc) from exc
            b = e
        for b, e in scaled:
            np.multiply(scratch[b:e], np.float32(1.0 / IMAGE_SCALE), out=out[b:e])
        return out

    def read_images(self, rows: np.ndarray | Sequence, out: np.ndarray | None = None) -> np.ndarray:
        """float32 (B, *image_shape) in [0, 1] for (patient, image) rows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        if out is None:
            out = np.empty((len(rows), *self.image_shape), dtype=np.float32)
        return self._read("images", rows, out)

    def read_labels(self, rows: np.ndarray | Sequence, out: np.ndarray | None = None) -> np.ndarray | None:
        """uint8 (B, *image_shape): 0 = complement, k = roi_names[k-1]; None for CT only."""
        if not self.roi_names:
            return None
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        if out is None:
            out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        return self._read("labels", rows, out)

    def read_patient(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """All preprocessed images (and labels) of one entry."""
        n = self.patients[index].n_images
        rows = np.stack([np.full(n, index), np.arange(n)], axis=1)
        return self.read_images(rows), self.read_labels(rows)

    def read_source(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray], VolumeGeometry | None]:
        """Native HU int16 (z, y, x), ROI masks and geometry of one entry."""
        g = self._group(index)
        if "source" not in g:
            raise WorkspaceError(f"{self.patients[index].pseudonym}: no source data stored")
        try:
            return read_source(g["source"])
        except (OSError, KeyError) as exc:
            raise self.damaged(index, exc) from exc

    def verify(self, progress: "Callable[[int, int, str], None] | None" = None
               ) -> tuple[list[tuple[str, str]], int]:
        """Check the head's tables against their digests, then read every stored array of
        every entry (source and derived), which checks each chunk's fletcher32 checksum,
        and check each entry's attributes against their digest. Returns ([(label, reason)]
        of what is damaged: an entry's label, or the head's file name for a head table;
        bytes checked). A damaged entry is recorded (see `damaged`). What was written
        before checksums existed is only read: see `head_checked` and `unchecked`."""
        damaged: list[tuple[str, str]] = []
        nbytes = 0
        self.unchecked: list[str] = []  # entries whose attributes have no digest
        if self.schema_version >= 2:
            digests = _meta_digests(self._main)
            for name in sorted(self._main["meta"]) if "meta" in self._main else ():
                try:
                    _read_meta(self._main, name, None, digests)
                except DamagedError as exc:
                    damaged.append((self.path.name, exc.detail))
                except ValueError:
                    damaged.append((self.path.name, f"table {name!r} is not readable JSON"))
        for p, (label, _, _) in enumerate(self._entries):
            try:
                g = self._group(p)
                for kind in ("images", "labels"):  # the head's row against the file
                    self._dataset(kind, p)
                datasets: list[h5py.Dataset] = []
                g.visititems(lambda _, obj: datasets.append(obj)
                             if isinstance(obj, h5py.Dataset) else None)
                for ds in datasets:
                    if ds.shape and ds.chunks:
                        buf = np.empty(ds.shape[1:], dtype=ds.dtype)
                        for i in range(ds.shape[0]):
                            ds.read_direct(buf, np.s_[i])
                    else:
                        ds[()]
                    nbytes += ds.id.get_storage_size()
                if not self._sealed.get(p, True):
                    self.unchecked.append(label)
            except DamagedError as exc:
                damaged.append((label, exc.detail))
            except WorkspaceError as exc:
                damaged.append((label, str(exc).split(": ", 2)[-1]))
            except (OSError, KeyError, ValueError) as exc:
                damaged.append((label, self.damaged(p, exc).detail))
            if progress is not None:
                progress(p + 1, len(self._entries), label)
        return damaged, nbytes

    def fidelity(self, index: int) -> dict | None:
        """The entry's per-ROI rasterisation fidelity report (see training.dicom.fidelity),
        or None where it was not recorded (entries written before it existed)."""
        raw = self._group(index).attrs.get("fidelity")
        if raw is None:
            return None
        try:
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except ValueError:
            return None

    def source_geometry(self, index: int) -> VolumeGeometry | None:
        """The source series' geometry (slice positions in mm, spacing, directions) of one
        entry without reading its voxels; None when no source is stored."""
        g = self._group(index)
        if "source" not in g:
            return None
        d = json.loads(g["source"].attrs.get("geometry", "null"))
        return VolumeGeometry.from_dict(d) if d else None

    def images_dataset(self, index: int) -> h5py.Dataset | None:
        """The h5py dataset behind an entry's images (chunk layout checks, streaming)."""
        return self._dataset("images", index)
