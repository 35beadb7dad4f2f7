"""The HDF5 workspace: schema, atomic commits, reads by batch (SPEC F6, F7, F8).

Layout of ``W.h5`` (schema version 1)::

    attrs      format, schema_version, tool_version, created, modified, preprocess (JSON),
               preprocess_hash, image_shape, salt, split_seed, test_fraction, merged_through
    /meta/     JSON text (scalar string datasets): provenance (one record per ingest or
               re-derive: time, tool version, source file count, preprocess), skipped
               ([relative path, reason]), identity (quick-identity table, see ingest.py),
               pseudonyms (HMAC digest → number), entries (one summary row per entry,
               so opening reads one dataset instead of every group)
    /entries/<label>/           one per CT series; <label> = "PAT-0001" or "PAT-0001-2"
        attrs  pseudonym, patient, split, content_hash, series_uid, frame_of_reference_uid,
               spacing (dz, dy, dx) mm, rois (JSON), warnings (JSON), n_source_files,
               role ("" = cohort; "query" = a query patient: see ROLE_QUERY),
               fidelity (JSON per-ROI rasterisation report; absent in older workspaces)
        source/hu     int16 (z, y, x) HU at native resolution, one chunk per slice,
                      uncompressed (lzf ran slower than reading the DICOM)
        source/masks  uint8 (n_rois, z, y, ceil(x/8)): np.packbits of each ROI mask along x
                      attrs geometry (VolumeGeometry.to_dict JSON), roi_names (JSON)
        derived/<preprocess_hash>/images  float32 (n, H, W) or (n, D, H, W) in [0, 1]
        derived/<preprocess_hash>/labels  uint8, same shape (absent for CT only)

Chunks: one per 2D image, one per depth slice of a 3D volume, so a random batch reads
exactly the chunks it needs. Reads loop over rows with ``read_direct`` into one
preallocated array (a list index on an h5py dataset is ~20× slower).

Atomicity: HDF5 is not crash-safe when modified in place, so the file is never modified
in place. A writer commits each series as its own small file in ``W.h5.staging/`` (written
to a temporary name, then renamed), and a merge writes a complete new copy of the
workspace, fsyncs it and ``os.replace``-s it. A SIGKILL at any instant leaves the old
workspace plus complete staged files; ``Workspace.open`` reads those leftovers as part of
the workspace and the next writer merges them. Staged files numbered ≤ ``merged_through``
were already merged (a crash between the rename and their removal) and are ignored.

Durability: only the merged copy is fsynced (before it replaces the workspace), so a power
cut never damages the workspace. Staged files are not: they guard against a killed or
crashed process, which leaves the page cache intact. After a power cut a staged file may be
damaged; opening and merging skip such a file (the merge removes it and records it in the
provenance), and its series is ingested again with the next drop because its files'
identity rows went with it. Not fsyncing them halves what an ingest writes to disk: a
staged file merged and removed within the kernel's writeback delay (~30 s) never reaches it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
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
SCHEMA_VERSION = 1
_STAGED_RE = re.compile(r"^(\d{8})-(.+)\.h5$")
_STR = h5py.string_dtype("utf-8")
# HU is stored uncompressed: lzf ran at ~75 MB/s here, slower than reading the DICOM, and
# the workspace would still be about as large as the DICOM folder. Packed masks and labels
# are mostly zeros, which lzf compresses quickly.
_MASK_COMPRESSION = "lzf"


class WorkspaceError(Exception):
    """The workspace file is missing, foreign, newer than this program, or inconsistent."""


def preprocess_hash(cfg: PreprocessConfig) -> str:
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:16]


def staging_dir(path: str | os.PathLike) -> Path:
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


def _json_attr(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def write_source(grp: h5py.Group, hu: np.ndarray, masks: dict[str, np.ndarray] | None,
                 geometry: VolumeGeometry | None) -> None:
    """Store native-resolution HU (int16) and packed ROI masks in `grp` ("source")."""
    hu16 = np.clip(np.rint(hu), -32768, 32767).astype(np.int16) if hu.dtype != np.int16 else hu
    z, y, x = hu16.shape
    grp.create_dataset("hu", data=hu16, chunks=(1, y, x))
    names = sorted(masks) if masks else []
    packed = np.zeros((len(names), z, y, (x + 7) // 8), dtype=np.uint8)
    for r, name in enumerate(names):
        packed[r] = np.packbits(np.asarray(masks[name], dtype=bool), axis=-1)
    ds = grp.create_dataset(
        "masks", data=packed, chunks=(1, 1, y, packed.shape[-1]) if names else None,
        compression=_MASK_COMPRESSION if names else None,
    )
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


def write_derived(grp: h5py.Group, images: np.ndarray, labels: np.ndarray | None) -> None:
    images = np.asarray(images, dtype=np.float32)
    chunks = (1,) * (images.ndim - 2) + images.shape[-2:]
    grp.create_dataset("images", data=images, chunks=chunks)
    if labels is not None:
        grp.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8), chunks=chunks,
                           compression="lzf")


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


def _read_meta(f: h5py.File, name: str, default: Any) -> Any:
    if "meta" in f and name in f["meta"]:
        raw = f["meta"][name][()]
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    return default


def _write_meta(f: h5py.File, name: str, obj: Any) -> None:
    meta = f.require_group("meta")
    if name in meta:
        del meta[name]
    meta.create_dataset(name, data=json.dumps(obj, sort_keys=True), dtype=_STR)


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


def _record_splits(f: h5py.File) -> None:
    ents = f["entries"]
    queries = {k for k in ents if str(ents[k].attrs.get("role", "")) == ROLE_QUERY}
    patients = {k: ents[k].attrs.get("patient", k) for k in ents if k not in queries}
    splits = assign_splits(list(patients.values()), float(f.attrs["test_fraction"]),
                           int(f.attrs["split_seed"]))
    for k, p in patients.items():
        ents[k].attrs["split"] = splits[p]
    for k in queries:
        ents[k].attrs["split"] = ROLE_QUERY


def _entry_row(g: h5py.Group, phash: str) -> dict:
    """What Workspace.open needs about one entry (a row of /meta/entries)."""
    d = g.get("derived/" + phash)
    img = d["images"] if d is not None and "images" in d else None
    src = g.get("source")
    return {
        "pseudonym": str(g.attrs.get("pseudonym", g.name.rsplit("/", 1)[-1])),
        "patient": str(g.attrs.get("patient", g.name.rsplit("/", 1)[-1])),
        "content_hash": str(g.attrs.get("content_hash", "")),
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


def _write_entry_table(f: h5py.File) -> None:
    """/meta/entries: one JSON row per entry, so opening reads one dataset, not N groups."""
    phash = str(f.attrs["preprocess_hash"])
    _write_meta(f, "entries", {k: _entry_row(f["entries"][k], phash) for k in f["entries"]})


def _data_hash(phash: str, rows: Iterable[tuple[str, str, str]]) -> str:
    h = hashlib.sha256(phash.encode())
    for label, content, split in sorted(rows):
        h.update(f"\n{label}\t{content}\t{split}".encode())
    return h.hexdigest()[:16]


def create_empty(path: str | os.PathLike, cfg: PreprocessConfig | None = None, *,
                 test_fraction: float = 0.25, seed: int = 0) -> Path:
    """Write an empty workspace atomically (a fresh random pseudonym salt)."""
    path = Path(path)
    with atomic_write_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _init_attrs(f, cfg or PreprocessConfig(), salt=new_salt(), seed=seed,
                        test_fraction=test_fraction)
            for name, obj in (("provenance", []), ("skipped", []), ("identity", {}),
                              ("pseudonyms", {})):
                _write_meta(f, name, obj)
    return path


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Delete temporary files a killed writer left beside the workspace and in staging.

    Call only while holding the writer lock (training.store.ingest.workspace_lock): then no
    temporary file can belong to a live writer.
    """
    path = Path(path)
    n = 0
    for folder in (path.parent, staging_dir(path)):
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
    return n


def list_staged(path: str | os.PathLike, merged_through: int = 0) -> list[tuple[int, Path]]:
    d = staging_dir(path)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STAGED_RE.match(p.name)
        if m and int(m.group(1)) > merged_through:
            out.append((int(m.group(1)), p))
    return sorted(out)


def staged_path(path: str | os.PathLike, seq: int, label: str) -> Path:
    return staging_dir(path) / f"{seq:08d}-{label}.h5"


def write_staged_tmp(final: Path, entry: EntryData, phash: str, salt: str,
                     identity: dict[str, list], pseudonyms: dict[str, int]) -> Path:
    """Write one entry as a complete temporary file beside `final` (not yet committed:
    `commit_staged` renames it). Not fsynced (see the module's Durability note)."""
    from training.atomic import temp_path_for

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT + "-staged"
            f.attrs["salt"] = salt
            f.attrs["preprocess_hash"] = phash
            write_entry(f.create_group("entries"), entry, phash)
            _write_meta(f, "identity", identity)
            _write_meta(f, "pseudonyms", pseudonyms)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit_staged(tmp: Path, final: Path) -> Path:
    """The commit point of one entry: an atomic rename of the complete file into the
    staging folder (durable only once merged; see the module's Durability note)."""
    os.replace(tmp, final)
    return final


def write_staged(path: str | os.PathLike, seq: int, entry: EntryData, phash: str, salt: str,
                 identity: dict[str, list], pseudonyms: dict[str, int]) -> Path:
    """Commit one entry as its own small HDF5 file in the staging folder (atomic)."""
    final = staged_path(path, seq, entry.label)
    return commit_staged(write_staged_tmp(final, entry, phash, salt, identity, pseudonyms), final)


class Merger:
    """Builds the next copy of a workspace while entries are being committed.

    The writer adds each staged file as soon as it is committed (`add_staged`: a raw
    chunk copy, overlapping the workers' loading); `finish` copies the entries of the
    current workspace that were not replaced, writes the tables, fsyncs and
    ``os.replace``-s the copy over the workspace, then removes the merged staged files.
    `abort` discards the copy (staged files stay and are merged next time).
    """

    def __init__(self, path: str | os.PathLike, new_cfg: PreprocessConfig | None = None):
        from training.atomic import temp_path_for

        self.path = Path(path)
        self.src = h5py.File(self.path, "r")
        try:
            _check_format(self.src, self.path)
            src = self.src
            self.merged_through = int(src.attrs.get("merged_through", 0))
            self.cfg = new_cfg or PreprocessConfig.from_json(src.attrs["preprocess"])
            self.phash = preprocess_hash(self.cfg)
            same = self.phash == src.attrs["preprocess_hash"]
            self.shape = [int(v) for v in src.attrs["image_shape"]] if same else []
            self.identity = _read_meta(src, "identity", {})
            self.pseudonyms = _read_meta(src, "pseudonyms", {})
            self.provenance = _read_meta(src, "provenance", [])
            self.skip_rows = {r[0]: r[1] for r in _read_meta(src, "skipped", [])}
            self.salt = str(src.attrs["salt"])
            self.tmp = temp_path_for(self.path)
            self.dst = h5py.File(self.tmp, "w")
            _init_attrs(self.dst, self.cfg, salt=self.salt, seed=int(src.attrs["split_seed"]),
                        test_fraction=float(src.attrs["test_fraction"]),
                        created=src.attrs.get("created"), image_shape=self.shape,
                        merged_through=self.merged_through)
        except BaseException:
            self.abort()
            raise
        self.max_seq = self.merged_through
        self.roles: dict[str, str] = {}  # label → new role, applied by finish (set_roles)
        self.consumed: list[Path] = []
        self.damaged: list[str] = []  # staged files that could not be read (left out)

    def add_staged(self, seq: int, staged: Path) -> None:
        """Copy a committed staged file into the next workspace copy. One that cannot be
        read (damaged by a power cut: staged files are not fsynced) is left out, recorded
        in the provenance and removed with the merged ones; its series comes in again with
        the next drop."""
        from training.atomic import start_writeback

        ents = self.dst["entries"]
        try:
            sf = h5py.File(staged, "r")
        except OSError as exc:
            self._damaged(seq, staged, exc)
            return
        with sf:
            copied: list[str] = []
            try:
                if sf.attrs.get("salt") != self.salt:
                    return  # not written for this workspace
                names = list(sf["entries"])
                identity = _read_meta(sf, "identity", {})
                pseudonyms = _read_meta(sf, "pseudonyms", {})
                for k in names:
                    if k in ents:
                        del ents[k]  # a later commit of the same series wins
                    copied.append(k)
                    copy_entry(sf["entries"][k], ents, [self.phash])
                    if not self.shape and self.phash in ents[k]["derived"]:
                        self.shape = list(ents[k]["derived"][self.phash]["images"].shape[1:])
            except (OSError, KeyError, ValueError) as exc:
                for k in copied:
                    if k in ents:
                        del ents[k]
                self._damaged(seq, staged, exc)
                return
            self.identity.update(identity)
            self.pseudonyms.update(pseudonyms)
        self.consumed.append(staged)
        self.max_seq = max(self.max_seq, seq)
        start_writeback(self.tmp)  # most of the copy is on disk before the final fsync

    def _damaged(self, seq: int, staged: Path, exc: BaseException) -> None:
        # the name only: h5py's message holds the absolute path
        self.damaged.append(f"{staged.name}: unreadable ({type(exc).__name__})")
        self.consumed.append(staged)
        self.max_seq = max(self.max_seq, seq)

    def finish(self, skipped: list[list[str]] | None = None, provenance: dict | None = None,
               seen: Iterable[str] = ()) -> Path:
        """seen: relative paths of this drop; their old skipped rows are replaced by `skipped`
        (a file fixed since is no longer listed)."""
        from training.atomic import fsync_dir, fsync_file

        try:
            done = set(self.consumed)
            for seq, p in list_staged(self.path, self.merged_through):
                if p not in done:
                    self.add_staged(seq, p)
            ents = self.dst["entries"]
            for k in self.src["entries"]:
                if k not in ents:
                    copy_entry(self.src["entries"][k], ents, [self.phash])
                    if not self.shape and self.phash in ents[k]["derived"]:
                        self.shape = list(ents[k]["derived"][self.phash]["images"].shape[1:])
            for p in seen:
                self.skip_rows.pop(p, None)
            if skipped:
                self.skip_rows.update({r[0]: r[1] for r in skipped})
            if provenance or self.damaged:
                record = dict(provenance or {"time": now_iso(), "action": "merge"})
                if self.damaged:
                    record["damaged_staged_files"] = list(self.damaged)
                self.provenance.append(record)
            for k, role in self.roles.items():
                if k in ents:
                    ents[k].attrs["role"] = str(role)
            d = self.dst
            d.attrs["image_shape"] = np.asarray(self.shape, dtype=np.int64)
            d.attrs["merged_through"] = int(self.max_seq)
            _record_splits(d)
            _write_entry_table(d)
            _write_meta(d, "identity", self.identity)
            _write_meta(d, "pseudonyms", self.pseudonyms)
            _write_meta(d, "provenance", self.provenance)
            _write_meta(d, "skipped", [[k, v] for k, v in sorted(self.skip_rows.items())])
            d.close()
            fsync_file(self.tmp)
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self.src.close()
        for p in self.consumed:
            try:
                p.unlink()
            except OSError:
                pass
        try:
            staging_dir(self.path).rmdir()  # only when empty
        except OSError:
            pass
        return self.path

    def abort(self) -> None:
        for name in ("dst", "src"):
            f = getattr(self, name, None)
            if f is not None:
                try:
                    f.close()
                except Exception:
                    pass
        tmp = getattr(self, "tmp", None)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def merge(path: str | os.PathLike, *, new_cfg: PreprocessConfig | None = None,
          skipped: list[list[str]] | None = None, provenance: dict | None = None) -> Path:
    """Write a new copy of the workspace with all staged entries folded in; os.replace it.

    new_cfg switches the current preprocessing (only for a workspace without entries:
    entries keep just their derived arrays for the new settings, so use
    training.store.ingest.rederive otherwise). skipped: [relative path, reason] rows replacing
    those of the same path.
    """
    return Merger(path, new_cfg).finish(skipped, provenance)


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
    Entries have no source group, so they cannot be re-derived. Atomic.
    """
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
    with atomic_write_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _init_attrs(f, cfg, salt=new_salt(), seed=seed, test_fraction=test_fraction,
                        image_shape=shape)
            for label, arr in images.items():
                arr = np.asarray(arr, dtype=np.float32)
                if arr.shape[1:] != shape:
                    raise ValueError(f"{label}: image shape {arr.shape[1:]} differs from {shape}")
                lab = None if labels is None else np.asarray(labels[label], dtype=np.uint8)
                h = hashlib.sha256(arr.tobytes())
                if lab is not None:
                    h.update(lab.tobytes())
                write_entry(f["entries"], EntryData(label=label, patient=(patients or {}).get(label, label),
                                                    content_hash=h.hexdigest()[:32],
                                                    images=arr, labels=lab,
                                                    rois=tuple(cfg.rois)), phash)
            _record_splits(f)
            _write_entry_table(f)
            _write_meta(f, "provenance", [{"time": now_iso(), "tool_version": __version__,
                                           "source": "arrays", "n_entries": len(images),
                                           "preprocess": cfg.to_dict()}])
            for name, obj in (("skipped", []), ("identity", {}), ("pseudonyms", {})):
                _write_meta(f, name, obj)
    return path


# ----------------------------------------------------------------------------- reading


class Workspace:
    """Read side of a workspace: patients, split index and batch reads.

    Use as a context manager (``with Workspace.open(p) as ws:``). Entries committed to the
    staging folder but not merged yet (a killed or running ingest) are included.
    Rows are (patient index, image index) into `patients` and that entry's images.
    """

    MAX_OPEN_STAGED = 256  # file handles kept for unmerged staged entries
    LRU_STAGED = 32  # reopened staged files kept open when there are more

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
        self._ds: dict[tuple[str, int], h5py.Dataset | None] = {}
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
            head = {k: main.attrs.get(k) for k in _HEAD_ATTRS}
            _check_format(head, path)
            phash = str(head["preprocess_hash"])
            table = _read_meta(main, "entries", None)
            names = list(main["entries"])
            if table is None or set(table) != set(names):
                table = {k: _entry_row(main["entries"][k], phash) for k in names}
            found: dict[str, tuple[str, h5py.File | Path, dict]] = {k: (k, main, table[k]) for k in names}
            staged = list_staged(path, int(head["merged_through"] or 0))
            # Few leftovers stay open (their data stays readable even if a concurrent merge
            # removes them); many are closed after reading their rows, reopened on demand.
            keep_open = len(staged) <= cls.MAX_OPEN_STAGED
            salt = main.attrs["salt"] if staged else None
            for _, p in staged:
                try:
                    sf = h5py.File(p, "r", rdcc_nbytes=0)
                except OSError:
                    continue  # removed by a concurrent merge, or unreadable: skip
                try:
                    if sf.attrs.get("salt") != salt:
                        sf.close()
                        continue
                    rows = {k: _entry_row(sf["entries"][k], phash) for k in sf["entries"]}
                except (OSError, KeyError, ValueError):  # damaged (a power cut): skip
                    sf.close()
                    continue
                for k, row in rows.items():
                    found[k] = (k, sf if keep_open else p, row)
                if keep_open:
                    files.append(sf)
                else:
                    sf.close()
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

    def _group(self, p: int) -> h5py.Group:
        label, f, _ = self._entries[p]
        if isinstance(f, Path):
            if f not in self._lru:
                if len(self._lru) >= self.LRU_STAGED:
                    old, handle = self._lru.popitem(last=False)
                    self._ds = {k: v for k, v in self._ds.items()
                                if self._entries[k[1]][1] != old}
                    handle.close()
                try:
                    self._lru[f] = h5py.File(f, "r", rdcc_nbytes=0)
                except OSError as exc:
                    raise WorkspaceError(f"{self.path}: staged entry {label} was merged or removed "
                                         "meanwhile; open the workspace again") from exc
            self._lru.move_to_end(f)
            return self._lru[f]["entries"][label]
        return f["entries"][label]

    def _dataset(self, kind: str, p: int) -> h5py.Dataset | None:
        """The entry's images or labels for the current preprocessing (None if absent)."""
        key = (kind, p)
        if key not in self._ds:
            ds = None
            if self.patients[p].n_images:
                d = self._group(p).get(f"derived/{self.preprocess_hash}")
                ds = d.get(kind) if d is not None else None
            self._ds[key] = ds
        return self._ds[key]

    def _read(self, kind: str, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        # Consecutive rows of one patient become one slice read; others one chunk each.
        n = len(rows)
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
            if i < 0 or i + (e - b) > ds.shape[0]:
                raise IndexError(f"image rows {i}..{i + e - b - 1} out of range for patient {p}")
            ds.read_direct(out, np.s_[i:i + (e - b)], np.s_[b:e])
            b = e
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
        return read_source(g["source"])

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
