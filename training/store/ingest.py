"""Ingest orchestration: discover → scan → load → rasterise → preprocess → commit.

    ingest(paths, workspace_path, preprocess) -> IngestReport
    rederive(workspace_path, new_cfg) -> IngestReport

What is stored, and why (see training/store/workspace.py for the file layout):
- one entry per CT series (a patient's second series is "PAT-0001-2"); its source
  group keeps HU (int16, native grid), every ROI mask (packed bits) and the geometry,
  so changed preprocessing re-derives from the workspace without touching DICOM;
- a quick-identity table: SHA-256 of (absolute path, size, mtime_ns) → the file's
  content hash (BLAKE3 of its bytes, 128 bits), its series and, for an unusable file, the
  reason and its (scrubbed) relative path. Re-dropping unchanged files therefore reads no
  DICOM at all and leaves the workspace untouched; a copied or touched file is hashed
  (bytes only) and, when its series' content hash is unchanged, not parsed further. A new
  series is hashed from the bytes its loader reads (each file is read once). An entry a
  reader found damaged (W.h5.d/<file>.damaged, workspace.py) is not "unchanged": its
  series is loaded again from the DICOM of the drop.
- pseudonyms: a keyed digest of the PatientID → number: '<key id>:' +
  HMAC-SHA256(key, HMAC-SHA256(salt, PatientID)), the salt random per workspace, the key
  this account's pseudonym key, kept outside every workspace (training/store/
  pseudonym_key.py; a workspace written before keys existed is migrated once). A
  different key's workspace is refused rather than renumbered.
  DICOM UIDs (study, series, frame of reference, SOP instances in the geometry) are kept:
  they are needed to attach RTSTRUCTs and are not names, IDs or birth dates.

Several CT series of one patient: one entry each, "PAT-0001", "PAT-0001-2", …; the
split keeps all of a patient's series on one side.

Privacy of stored paths: unusable files are listed by their path relative to the
dropped folder (the dropped folder's own name and everything above it are not stored).
Folder names below it may be a user's naming with patient names or IDs in them, so
every occurrence of an identifying value read from the headers of this drop (PatientID,
other patient IDs, AccessionNumber; PatientName and the other patient names whole, by
their parts and in any order with _ - . space or comma; PatientBirthDate as stored and in
the spellings people use: 1923-04-17, 17.04.1923, 4/17/1923, …; training/store/
pseudonym.py) is replaced, in any case, by that patient's pseudonym (the institution's
name by "[institution]") before the path, a warning or an ROI name is stored. Only what
this drop's headers say is known: a folder named after a patient none of whose headers is
in the drop is stored as it is. When a drop has new unusable files, one header of each
already-known series in it is read for the same purpose.

Parallelism: header scanning (by folder chunks) and, per series, hashing, loading,
rasterising, preprocessing and writing the entry's staged file run in a pool of
`workers` processes (fork, or forkserver when the caller has threads, e.g. the GUI).
At most `workers + 1` series are in flight and workers return only metadata, so memory
grows with the largest series, not with the folder.

Atomicity: a worker writes its entry to a temporary file; the parent commits it (rename
into W.h5.d/, where it stays) and folds it into the next head (workspace.Merger), which
is written after the entry files it names are fsynced and replaces the head at the end
(also after cancel). A killed ingest leaves the workspace openable with every committed
series (Workspace.open reads committed files the head does not name yet); see
workspace.py for what a power cut can cost.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from blake3 import blake3

from training import __version__
from training.config import PreprocessConfig
from training.store.pseudonym import (
    Replacements,
    format_pseudonym,
    identifying_tokens,
    identity_replacements,
    identity_values,
    patient_digest,
    scrub,
    series_label,
)
from training.store import pseudonym_key
from training.store import workspace as wsmod
from training.store.lock import die_with_parent, workspace_lock  # noqa: F401 - re-exported
from training.store.workspace import EntryData, PatientInfo, Workspace, WorkspaceError

Progress = Callable[[str, int, int, str], None]


@dataclass
class IngestReport:
    """What an ingest (or rederive) did. Entries are named by their pseudonym labels.

    skipped: (path relative to the dropped folder, reason) per unusable file.
    rois_missing: chosen ROI name → labels of the entries that lack it.
    """

    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rederived: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rois_missing: dict[str, list[str]] = field(default_factory=dict)
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)  # one-off messages (a pseudonym key
    # migration, a one-time layout conversion)
    n_files: int = 0
    seconds: float = 0.0
    workspace: str = ""
    on_skipped: Callable[[str, str], None] | None = field(default=None, repr=False, compare=False)

    def skip(self, row: tuple[str, str]) -> None:
        """Record an unusable file (relative path, reason) and tell the listener at once."""
        self.skipped.append(row)
        if self.on_skipped is not None:
            self.on_skipped(*row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace, "added": self.added, "unchanged": self.unchanged,
            "rederived": self.rederived, "skipped": [list(s) for s in self.skipped],
            "rois_missing": self.rois_missing, "cancelled": self.cancelled, "notes": self.notes,
            "n_files": self.n_files, "seconds": round(self.seconds, 3),
        }


class IngestCancelled(Exception):
    pass


# ----------------------------------------------------------------------------- helpers


def _attr(obj: Any, *names: str, default: Any = "") -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return default


def _ref_paths(ref: Any) -> list[str]:
    """The files of a series reference, as strings."""
    files = _attr(ref, "files", "paths", default=None)
    if files is None:
        slices = _attr(ref, "slices", "instances", default=[])
        files = [_attr(s, "path", "file", default=s) for s in slices]
    return [str(p) for p in files]


def _ref_files(ref: Any) -> list[Path]:
    return [Path(p) for p in _ref_paths(ref)]


def _copy_paths(ref: Any) -> list[str]:
    """Files with the SOPInstanceUID of one of the series' files (SeriesRef.copies): read
    by the loader only where that file cannot be decoded."""
    return [str(_attr(c, "path", default=c)) for c in getattr(ref, "copies", None) or ()]


def hash_bytes(data: bytes) -> str:
    """The content hash of one file (hash_file of a file holding `data`): BLAKE3, 128 bits
    in hex. BLAKE3 runs at several GB/s where SHA-256 manages ~0.9 GB/s here, and hashing
    every file is a large part of an ingest."""
    return blake3(data, max_threads=1).hexdigest(length=16)


def _identity_rows(hashes: dict[str, str], stage: dict[str, Any]) -> dict[str, list]:
    """Identity table rows (quick identity → [content hash, series UID, "", ""])."""
    return {stage["quick"][p]: [h, stage["series_uid"], "", ""] for p, h in hashes.items()
            if p in stage["quick"]}


def hash_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """hash_bytes of the file's content, read in pieces."""
    h = blake3(max_threads=1)
    with open(path, "rb") as fh:
        while True:
            b = fh.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest(length=16)


def combine_hashes(hashes: Iterable[str]) -> str:
    h = hashlib.sha256()
    for x in sorted(hashes):
        h.update(x.encode())
    return h.hexdigest()[:32]


def quick_identity(path: Path, st: os.stat_result) -> str:
    key = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


from training.store.discover import discover  # noqa: E402  (every file of a drop, or why not)


# ----------------------------------------------------------------------------- workers


def derive(hu: np.ndarray, masks: dict[str, np.ndarray], positions: Any,
           cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Stored source → training arrays, exactly as ingest and rederive store them.

    hu: (z, y, x) HU; masks: ROI name → bool (z, y, x); positions: slice positions in mm
    or a VolumeGeometry. Returns (images float32 [0, 1], labels uint8 or None, names of
    cfg.rois missing from `masks`).
    """
    from training.store.preprocess import preprocess_volume
    from training.dicom.rtstruct import exclusive_labels, match_roi_names

    labels = None
    missing: list[str] = []
    if cfg.rois:
        found = match_roi_names(masks.keys(), cfg.rois)
        missing = [r for r in cfg.rois if found[r] is None]
        labels = exclusive_labels(masks, cfg.rois, shape=hu.shape)
    images, labs = preprocess_volume(hu, labels, positions, cfg)
    return images, labs, missing


def clean_text(text: str, roots: Sequence[str], replacements: dict[str, str]) -> str:
    """Make a message storable: paths relative to the drop, identifiers → pseudonyms, and
    bytes of a file name that is not UTF-8 (Python keeps them as lone surrogates, which
    a print to a strict UTF-8 terminal refuses) spelt as \\xNN."""
    for r in roots:
        text = text.replace(r.rstrip(os.sep) + os.sep, "")
    text = scrub(text, replacements)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _load_job(ref: Any, struct_paths: list[str], cfg_json: str, known_hash: str,
              stage: dict[str, Any]) -> dict:
    """Worker: hash the series' files; unless unchanged, load (int16 HU), rasterise,
    preprocess and write the entry as a complete temporary staged file (the parent
    commits it by rename).

    Returns only small metadata, so big arrays never travel between processes.
    """
    from training.dicom import load_ct_series
    from training.dicom.rtstruct import read_rtstruct, rasterise

    files = [*_ref_paths(ref), *map(str, struct_paths)]
    copies = stage.get("copies", {})  # path → the scan's reason, which stands unless read
    hashes: dict[str, str] = {}
    if known_hash:  # seen before: hash first, load only when the content changed
        hashes = {p: hash_file(p) for p in files}
        content = combine_hashes(hashes.values())
        if content == known_hash:
            rows = _identity_rows(hashes, stage)
            _copy_rows(list(copies.items()), rows, stage)
            return {"content_hash": content, "status": "unchanged", "identity": rows,
                    "left_out": list(copies.items())}
        vol = load_ct_series(ref, dtype=np.int16)
    else:  # new: each file is hashed from the bytes the loader reads (one read per file)
        vol = load_ct_series(ref, dtype=np.int16,
                             on_file=lambda p, data: hashes.__setitem__(str(p), hash_bytes(data)))
        for p in files:  # left out by the loader, or decoded
            if p not in hashes:
                hashes[p] = hash_file(p)
        content = combine_hashes(hashes.values())
    used = [p for p in getattr(vol, "sources", ()) if p in copies]  # read where its slice's own file could not be
    if used:
        for p in used:
            if p not in hashes:
                hashes[p] = hash_file(p)
        content = combine_hashes(hashes.values())
    rows = _identity_rows(hashes, stage)
    left_out = [(sk.path, sk.reason) for sk in vol.skipped]
    listed = {p for p, _ in left_out}  # the loader's line supersedes the scan's
    left_out += [(p, why) for p, why in copies.items() if p not in listed and p not in used]
    for p, why in left_out:  # listed again with the drop that brings them unchanged
        q = stage["quick"].get(p)
        if q in rows:
            rows[q] = [rows[q][0], "", clean_text(why, stage["roots"], stage["replacements"]),
                       clean_text(p, stage["roots"], stage["replacements"])]
    _copy_rows(left_out, rows, stage)
    out: dict[str, Any] = {"content_hash": content, "identity": rows, "left_out": left_out}
    cfg = PreprocessConfig.from_json(cfg_json)
    geometry = vol.geometry
    warnings = list(vol.warnings)
    masks: dict[str, np.ndarray] = {}
    struct_skipped = []
    fidelity_rois: list[tuple[str, dict]] = []
    for sp in struct_paths:
        try:
            ss = read_rtstruct(sp)
            rr = rasterise(ss, geometry, series_uid=stage["series_uid"])
        except Exception as exc:  # RTStructError and damaged contour data alike
            struct_skipped.append((sp, getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"))
            continue
        warnings.extend(ss.warnings)
        warnings.extend(rr.warnings)
        fidelity_rois += [(str(sp), rec) for rec in rr.fidelity.values()]
        for name, m in rr.masks.items():
            # an ROI named after the patient ("GTV_<surname>") keeps only the pseudonym
            name = clean_text(name, (), stage["replacements"])
            masks[name] = m if name not in masks else (masks[name] | m)
    hu16 = vol.hu  # int16 HU, rounded and clipped by the loader
    del vol
    images, labels, missing = derive(hu16, masks, geometry, cfg)  # positions + pixel spacing
    warnings = [clean_text(w, stage["roots"], stage["replacements"]) for w in warnings]
    spacing = tuple(float(v) for v in geometry.spacing)
    fidelity = _fidelity_report(fidelity_rois, struct_skipped, stage)
    entry = EntryData(
        label=stage["label"], patient=stage["patient"], content_hash=content, images=images,
        labels=labels, spacing=spacing, rois=tuple(sorted(masks)), warnings=tuple(warnings),
        series_uid=stage["series_uid"], frame_of_reference_uid=geometry.frame_of_reference_uid,
        n_source_files=len(hashes) - sum(p in hashes for p, _ in left_out) - len(struct_skipped), hu=hu16, masks=masks,
        geometry=geometry, role=stage.get("role", ""), fidelity=fidelity)
    head_rows: dict[str, dict] = {}
    pseudonyms = {stage["digest"]: stage["number"]}
    tmp = wsmod.write_staged_tmp(Path(stage["final"]), entry, stage["phash"], stage["salt"], rows,
                                 pseudonyms, rows_out=head_rows)
    out.update(status="loaded", tmp=str(tmp), written=(head_rows, rows, pseudonyms), n_images=int(images.shape[0]),
               shape=tuple(images.shape[1:]), spacing=spacing, rois=entry.rois,
               warnings=tuple(warnings), missing=missing, struct_skipped=struct_skipped,
               source_shape=tuple(hu16.shape))
    return out


def _copy_rows(left_out: list[tuple[str, str]], rows: dict[str, list], stage: dict[str, Any]) -> None:
    """Identity rows of copies left out unread (no content hash, like the scan's rows)."""
    for p, why in left_out:
        q = stage["quick"].get(p)
        if q and q not in rows:
            rows[q] = ["", "", clean_text(why, stage["roots"], stage["replacements"]),
                       clean_text(p, stage["roots"], stage["replacements"])]


def _fidelity_report(rois: list[tuple[str, dict]], failed: list[tuple[str, str]],
                     stage: dict[str, Any]) -> dict:
    """The entry's per-ROI fidelity report (training.dicom.fidelity), paths made storable."""
    from training.dicom.fidelity import build_report

    def show(p: str) -> str:
        return clean_text(str(p), stage["roots"], stage["replacements"])

    return build_report([(show(p), _scrubbed(rec, stage)) for p, rec in rois],
                        [(show(p), show(r)) for p, r in failed])


def _scrubbed(obj: Any, stage: dict[str, Any]) -> Any:
    """obj with every string in it (ROI names, messages) made storable by clean_text."""
    if isinstance(obj, str):
        return clean_text(obj, stage["roots"], stage["replacements"])
    if isinstance(obj, dict):
        return {_scrubbed(k, stage): _scrubbed(v, stage) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_scrubbed(v, stage) for v in obj)
    return obj


def _rederive_job(src_file: str, label: str, cfg_json: str, stage: dict[str, Any]) -> dict:
    """Worker: read one entry's stored source from its file, derive the arrays for the new
    settings and write the entry again as a complete temporary file beside
    stage["final"] (its attributes and source copied as stored chunks). Only metadata
    comes back, so memory stays that of one series whatever the cohort."""
    cfg = PreprocessConfig.from_json(cfg_json)
    final = Path(stage["final"])
    from training.atomic import temp_path_for

    tmp = temp_path_for(final)
    with h5py.File(src_file, "r", rdcc_nbytes=0) as src:
        g = src["entries"][label]
        try:
            hu, masks, geo = wsmod.read_source(g["source"])
        except OSError as exc:
            return {"status": "damaged", "reason": wsmod._h5_reason(exc)}
        # the geometry: slice positions and pixel spacing (physical-scale resampling)
        pos = geo if geo is not None else np.arange(hu.shape[0], dtype=float)
        images, labs, missing = derive(hu, masks, pos, cfg)
        del hu, masks

        def fill(f: h5py.File) -> None:
            f.attrs["format"] = wsmod.FORMAT + "-staged"
            f.attrs["salt"] = stage["salt"]
            f.attrs["preprocess_hash"] = stage["phash"]
            dst = f.create_group("entries").create_group(label)
            for k, v in g.attrs.items():
                dst.attrs[k] = v
            src.copy(g["source"], dst, name="source")
            wsmod.write_derived(dst.create_group("derived").create_group(stage["phash"]),
                                images, labs)
            wsmod._write_meta(f, "identity", {})
            wsmod._write_meta(f, "pseudonyms", {})

        wsmod.write_h5(tmp, fill)
    return {"status": "derived", "tmp": str(tmp), "shape": tuple(images.shape[1:]),
            "missing": missing}


class _InlineExecutor:
    """workers ≤ 1: run jobs in this process (tests can monkeypatch the loaders)."""

    def submit(self, fn, *args):
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args))
        except BaseException as exc:  # delivered through the future like a pool would
            f.set_exception(exc)
        return f

    def shutdown(self, wait=True, cancel_futures=False):
        pass


_WORKER_MODULES = ["training.store.ingest", "training.dicom", "training.dicom.rtstruct", "training.dicom.rtstruct_raw",
                   "training.store.preprocess"]


def start_worker_server() -> None:
    """Start the forkserver that ingest workers come from in a process with threads (the
    GUI), its modules imported, so that the first drop does not wait for it (~0.5 s).
    Returns at once (~15 ms); a no-op where forkserver does not exist."""
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return
    from multiprocessing import forkserver

    ctx.set_forkserver_preload(_WORKER_MODULES)
    forkserver.ensure_running()


def _executor(workers: int):
    if workers <= 1:
        return _InlineExecutor()
    import threading

    # Load the heavy modules here once, so forked workers start warm.
    import training.dicom  # noqa: F401
    import training.store.preprocess  # noqa: F401
    import training.dicom.rtstruct  # noqa: F401

    if threading.active_count() == 1:
        ctx = multiprocessing.get_context("fork")  # no threads to break: cheapest start
    else:
        # A caller with threads (the GUI) must not fork them; forkserver workers import
        # the modules once in the server and fork from there.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER_MODULES)
    # Workers end with this process (SIGKILL, timeout, a closed terminal): they hold no
    # lock (training/store/lock.py) and must not keep running orphaned either.
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                  initializer=die_with_parent, initargs=(os.getpid(),))


def _bounded_map(executor, jobs: Iterable[tuple[Any, Callable, tuple]], limit: int,
                 cancel: Callable[[], bool] | None):
    """Yield (key, future) as they finish, with at most `limit` submitted at once."""
    it = iter(jobs)
    pending: dict[cf.Future, Any] = {}
    order: dict[cf.Future, int] = {}
    exhausted = False
    while True:
        while not exhausted and len(pending) < limit and not (cancel and cancel()):
            try:
                key, fn, args = next(it)
            except StopIteration:
                exhausted = True
                break
            f = executor.submit(fn, *args)
            pending[f] = key
            order[f] = len(order)
        if not pending:
            return
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        for f in sorted(done, key=order.__getitem__):  # submission order among the finished
            yield pending.pop(f), f
        if cancel and cancel():
            exhausted = True


# ----------------------------------------------------------------------------- state


@dataclass
class _State:
    path: Path
    cfg: PreprocessConfig
    salt: str
    identity: dict[str, list]
    pseudonyms: dict[str, int]
    entries: dict[str, dict]  # label → {content_hash, series_uid, patient}
    image_shape: tuple[int, ...]
    fresh: dict[str, list] = field(default_factory=dict)  # rows learnt outside staged entries
    key: bytes | None = None  # the user's pseudonym key (training/store/pseudonym_key.py)
    role: str = ""  # role of series new to the workspace (ingest's `role`)
    seen_paths: set[str] = field(default_factory=set)  # scrubbed relative paths of this drop

    def remember(self, rows: dict[str, list]) -> None:
        self.identity.update(rows)
        self.fresh.update(rows)

    @classmethod
    def read(cls, path: Path) -> "_State":
        with h5py.File(path, "r") as f:
            wsmod._check_format(f, path)
            entries = {k: {"content_hash": str(r.get("content_hash", "")),
                           "series_uid": str(r.get("series_uid", "")),
                           "patient": str(r.get("patient", k)),
                           "role": str(r.get("role", ""))}
                       for k, r in wsmod._read_meta(f, "entries", {}).items()}
            return cls(path=path, cfg=PreprocessConfig.from_json(f.attrs["preprocess"]),
                       salt=str(f.attrs["salt"]), identity=wsmod._read_meta(f, "identity", {}),
                       pseudonyms=wsmod._read_meta(f, "pseudonyms", {}), entries=entries,
                       image_shape=tuple(int(v) for v in f.attrs["image_shape"]))

    def label_for_series(self, series_uid: str) -> str | None:
        for k, e in self.entries.items():
            if series_uid and e["series_uid"] == series_uid:
                return k
        return None

    def pseudonym_for(self, patient_key: str) -> tuple[str, str]:
        if self.key is None:
            self.key = _user_key()
            pseudonym_key.check_workspace_key(self.path, self.pseudonyms, self.key)
        d = patient_digest(self.salt, patient_key, self.key)
        if d not in self.pseudonyms:
            self.pseudonyms[d] = max(self.pseudonyms.values(), default=0) + 1
        return format_pseudonym(self.pseudonyms[d]), d

    def new_label(self, pseudonym: str, taken: set[str]) -> str:
        n = 1
        while series_label(pseudonym, n) in self.entries or series_label(pseudonym, n) in taken:
            n += 1
        return series_label(pseudonym, n)


def _prepare(path: Path, cfg: PreprocessConfig, test_fraction: float, seed: int, *,
             report: "IngestReport | None" = None, create: bool = True) -> None:
    """Under the writer lock: refuse a read-only workspace, clear a killed writer's
    temporaries, create the workspace, convert a schema 1 one, fold in leftovers."""
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                wsmod._check_format(f, path)
                schema = wsmod._schema(f.attrs)
        except OSError as exc:
            raise WorkspaceError(f"{path}: exists and is not an HDF5 workspace ({exc})") from exc
        wsmod._writable_or_refuse(path)
    elif not create:
        raise WorkspaceError(f"{path}: no such workspace")
    wsmod.remove_stale_temps(path)
    if not path.exists():
        wsmod.create_empty(path, cfg, test_fraction=test_fraction, seed=seed)
    elif schema < 2:
        msg = wsmod.convert_v1(path)
        if report is not None and msg:
            report.notes.append(msg)
    elif wsmod.has_leftovers(path):
        wsmod.merge(path)  # fold in what a killed or cancelled ingest committed


def _call(progress: Progress | None, phase: str, done: int, total: int, msg: str = "") -> None:
    if progress is not None:
        progress(phase, done, total, msg)


# ----------------------------------------------------------------------------- rederive


def _rederive_locked(path: Path, cfg: PreprocessConfig, progress: Progress | None,
                     cancel: Callable[[], bool] | None, workers: int,
                     report: IngestReport) -> bool:
    """Write every entry again with derived arrays for `cfg` from its stored source, then
    one new head naming them (the commit point; the old entry files go after it).

    All or nothing: on cancel or error the old workspace stays as it was (the new files
    are removed). An entry whose source fails its checksum is left out and reported, and
    its files' identity rows forgotten, so its DICOM is ingested again when dropped.
    Returns False on cancel.
    """
    phash = wsmod.preprocess_hash(cfg)
    cfg_json = cfg.to_json()
    with h5py.File(path, "r") as src:
        table = wsmod._read_meta(src, "entries", {})
        segments = wsmod._read_meta(src, "segments", {})
    labels = sorted(table)
    total = len(labels)
    no_source = [k for k in labels if not table[k].get("has_source")]
    if no_source:  # arrays-only entries cannot follow new settings; never drop them
        raise WorkspaceError(
            f"{path}: {len(no_source)} entries hold no source data ({', '.join(no_source[:5])}); "
            "cannot re-derive them with new preprocessing")
    merger = wsmod.Merger(path, new_cfg=cfg)
    merger.rows, merger.segments = {}, {}
    folder = wsmod.data_dir(path)
    seq0 = wsmod.next_seq(path)
    written: list[Path] = []
    committed = False
    shape: tuple[int, ...] = ()

    def jobs():
        for k, label in enumerate(labels):
            stage = {"final": str(wsmod.staged_path(path, seq0 + k, label)), "salt": merger.salt,
                     "phash": phash}
            yield (label, seq0 + k, stage["final"]), _rederive_job, (
                str(folder / segments[label]), label, cfg_json, stage)

    ex = _executor(workers)
    done = 0
    try:
        try:
            for (label, seq, final), fut in _bounded_map(ex, jobs(), max(workers, 1) + 1, cancel):
                try:
                    res = fut.result()
                except ValueError as exc:  # e.g. a slice centre outside this series
                    raise WorkspaceError(
                        f"{path}: {label}: {exc}; the workspace is unchanged") from exc
                if res["status"] == "damaged":
                    why = f"stored source is damaged ({res['reason']}); drop its DICOM again"
                    merger.drop(label, why)
                    report.skip((label, why))
                    continue
                if shape and res["shape"] != shape:
                    Path(res["tmp"]).unlink(missing_ok=True)
                    merger.drop(label, "image shape differs")
                    report.skip((label, f"image shape {res['shape']} differs from "
                                        f"the workspace's {shape}; set crop or size"))
                    continue
                shape = shape or res["shape"]
                wsmod.commit_staged(Path(res["tmp"]), Path(final))
                written.append(Path(final))
                merger.add_staged(seq, Path(final))
                if label in merger.rows:  # the role is the head's (set_roles changes only it)
                    merger.rows[label] = {**merger.rows[label],
                                          "role": merger.old_rows.get(label, {}).get("role", "")}
                for r in res["missing"]:
                    report.rois_missing.setdefault(r, []).append(label)
                report.rederived.append(label)
                done += 1
                _call(progress, "rederive", done, total, label)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
            for p in folder.glob(".*.tmp"):  # results that came after a cancel or error
                p.unlink(missing_ok=True)
        if cancel and cancel():
            raise IngestCancelled()
        merger.finish(provenance={"time": wsmod.now_iso(), "tool_version": __version__,
                                  "action": "rederive", "preprocess": cfg.to_dict(),
                                  "n_entries": len(report.rederived)})
        committed = True
    finally:
        if not committed:
            for p in written:
                p.unlink(missing_ok=True)
    return True


def rederive(workspace_path: str | os.PathLike, new_cfg: PreprocessConfig,
             progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
             *, workers: int = 2) -> IngestReport:
    """Re-derive every entry's training arrays for `new_cfg` from the stored source
    (no DICOM is read). Atomic and all-or-nothing; cancel keeps the old workspace."""
    path = Path(workspace_path)
    t0 = time.perf_counter()
    report = IngestReport(workspace=str(path))
    with _storage_errors(path, "re-deriving"):
        with workspace_lock(path):
            _prepare(path, new_cfg, 0.25, 0, report=report, create=False)
            _migrate_key(path, report)
            try:
                _rederive_locked(path, new_cfg, progress, cancel, workers, report)
            except IngestCancelled:
                report.cancelled = True
                report.rederived = []
    report.seconds = time.perf_counter() - t0
    return report


@contextlib.contextmanager
def _storage_errors(path: Path, doing: str):
    """A full disk, a file size limit or a missing permission while writing becomes one
    WorkspaceError line naming the cause (h5py's own error is a multi-line stack)."""
    wsmod.check_writable(path)
    try:
        yield
    except (OSError, RuntimeError) as exc:
        cause = wsmod.storage_error(exc)
        if cause is None:
            raise
        raise WorkspaceError(
            f"{path}: {cause} while {doing}; the workspace is as it was before (series already "
            f"committed are kept); free space and run it again") from exc


# ----------------------------------------------------------------------------- ingest


def ingest(paths: str | os.PathLike | Sequence[str | os.PathLike], workspace_path: str | os.PathLike,
           preprocess: PreprocessConfig | None = None, *, progress: Progress | None = None,
           on_patient: Callable[[PatientInfo], None] | None = None,
           on_skipped: Callable[[str, str], None] | None = None,
           cancel: Callable[[], bool] | None = None, workers: int = 2,
           test_fraction: float = 0.25, seed: int = 0, role: str = "") -> IngestReport:
    """Add every CT series (with its RTSTRUCTs) found below `paths` to the workspace.

    preprocess: settings for the derived arrays (None: the workspace's own, or the
    defaults for a new workspace); when they differ from the workspace's, existing
    entries are re-derived from their stored source first (report.rederived).
    progress(phase, done, total, message): phases "discover", "scan", "ingest",
    "rederive", "merge". on_patient(PatientInfo) after each committed series;
    on_skipped(relative path, reason) as each unusable file is found.
    cancel() → True stops after the series in flight; what was committed stays.
    test_fraction, seed: the split, used only when the workspace is created.
    role: of the series new to the workspace ("" cohort, "query": never trained on, see
    workspace.ROLE_QUERY); a series already stored keeps its role (training.store.roles
    moves an entry between query and cohort).
    """
    from training import dicom

    if role not in wsmod.ROLES:
        raise ValueError(f"role must be one of {wsmod.ROLES}, got {role!r}")
    path = Path(workspace_path)
    cfg = preprocess
    if cfg is None:  # keep the workspace's settings; defaults for a new workspace
        cfg = PreprocessConfig.new_workspace()
        if path.exists():
            with Workspace.open(path) as ws:
                cfg = ws.preprocess
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    t0 = time.perf_counter()
    report = IngestReport(workspace=str(path), on_skipped=on_skipped)
    with _storage_errors(path, "ingesting"):
        _ingest_all(path, paths, cfg, report, progress, on_patient, cancel, workers,
                    test_fraction, seed, dicom, role)
    report.seconds = time.perf_counter() - t0
    return report


def _ingest_all(path, paths, cfg, report, progress, on_patient, cancel, workers, test_fraction,
                seed, dicom, role) -> None:
    with workspace_lock(path):
        _prepare(path, cfg, test_fraction, seed, report=report)
        _migrate_key(path, report)
        st = _State.read(path)
        if st.cfg.to_json() != cfg.to_json():
            if st.entries:
                try:
                    _rederive_locked(path, cfg, progress, cancel, workers, report)
                except IngestCancelled:
                    report.cancelled = True
                    report.rederived = []
                    return
            else:
                wsmod.merge(path, new_cfg=cfg)
            st = _State.read(path)
        merger = wsmod.Merger(path)  # the next workspace copy, filled as series commit
        try:
            st.role = role
            _ingest_locked(paths, st, cfg, dicom, report, progress, on_patient, cancel, workers,
                           merger)
        except BaseException:
            merger.abort()  # committed series stay staged; the next writer merges them
            raise
        # Nothing staged (all unchanged): the workspace is left exactly as it was.
        if merger.consumed or wsmod.has_leftovers(path):
            _call(progress, "merge", 0, 1, "writing the workspace")
            skipped_rows = [[r, why] for r, why in report.skipped]
            merger.finish(skipped=skipped_rows, provenance={
                "time": wsmod.now_iso(), "tool_version": __version__, "action": "ingest",
                "n_source_files": report.n_files, "added": len(report.added),
                "unchanged": len(report.unchanged), "cancelled": report.cancelled,
                "preprocess": cfg.to_dict()}, seen=st.seen_paths)
            _call(progress, "merge", 1, 1, "done")
        else:
            merger.abort()


def _ingest_locked(paths, st: _State, cfg: PreprocessConfig, dicom, report: IngestReport,
                   progress, on_patient, cancel, workers: int, merger: "wsmod.Merger") -> None:
    pool = _Pool(workers)
    try:
        _ingest_with_pool(paths, st, cfg, dicom, report, progress, on_patient, cancel, pool, merger)
    finally:
        pool.shutdown()
        # results of series finished after a cancel were never committed
        if wsmod.staging_dir(st.path).is_dir():
            for p in wsmod.staging_dir(st.path).glob(".*.tmp"):
                p.unlink(missing_ok=True)
    # identity rows of unchanged and skipped files go in with the final merge
    _stash_identity(st)


def _ingest_with_pool(paths, st: _State, cfg: PreprocessConfig, dicom, report: IngestReport,
                      progress, on_patient, cancel, pool: _Pool, merger: "wsmod.Merger") -> None:
    phash = wsmod.preprocess_hash(cfg)
    _call(progress, "discover", 0, 0, "listing files")
    ws_real = os.path.realpath(st.path)
    found_skipped: list[tuple[str, str, str]] = []  # links, FIFOs, unreadable folders...
    files = discover(paths, exclude=lambda real: _is_own_file(real, ws_real), skipped=found_skipped)
    report.n_files = len(files)
    rel_of: dict[str, str] = {}
    quick_of: dict[str, str] = {}
    unknown: list[str] = []
    known_by_series: dict[str, list[str]] = defaultdict(list)
    known_series: set[str] = set()
    # Entries a reader found damaged (workspace.recorded_damage): their series are read
    # and loaded again when their files come in, never called unchanged.
    damaged = {k for k in wsmod.recorded_damage(st.path) if k in st.entries}
    redo = {st.entries[k]["series_uid"] for k in damaged} - {""}
    for p, rel, stt in files:
        q = quick_identity(p, stt)
        rel_of[str(p)] = rel
        quick_of[str(p)] = q
        row = st.identity.get(q)
        if row is not None and row[1] in redo:
            row = None
        if row is None:
            unknown.append(p)
        elif row[2]:  # known unusable file: report it again without reading it
            report.skip((row[3] if len(row) > 3 else rel, row[2]))
        else:
            known_by_series[row[1]].append(p)
            known_series.add(row[1])
    _call(progress, "discover", len(files), len(files), f"{len(files)} files, {len(unknown)} new or changed")
    if cancel and cancel():
        report.cancelled = True
        return

    scan = None
    if unknown:
        try:
            scan = _scan(dicom, unknown, progress, cancel, pool)
        except dicom.Cancelled:
            report.cancelled = True
            return
        touched = {str(_attr(s, "series_uid", "series_instance_uid")) for s in scan.series}
        touched |= {u for s in scan.structs for u in _struct_series(s)}
        rescan = [p for s in touched & known_series for p in known_by_series[s]]
        if rescan:  # a series got new files: read it whole again
            try:
                scan = _scan(dicom, unknown + rescan, progress, cancel, pool)
            except dicom.Cancelled:
                report.cancelled = True
                return
            for s in touched & known_series:
                known_series.discard(s)
    if cancel and cancel():
        report.cancelled = True
        return

    # Unchanged: series whose every file in this drop is known.
    for s in sorted(known_series):
        label = st.label_for_series(s)
        if label:
            report.unchanged.append(label)
    if scan is None:
        if not found_skipped:
            return
        scan = dicom.ScanResult()  # nothing new to read, but entries to list

    # Identifying tokens of this drop → pseudonyms (for scrubbing stored paths).
    # Drop order (first file of each series as discovered) fixes the pseudonym numbering.
    order_of = {str(p): i for i, (p, _, _) in enumerate(files)}
    series = sorted(scan.series, key=lambda r: min((order_of.get(f, 1 << 62) for f in _ref_paths(r)),
                                                   default=1 << 62))
    plan = []  # (label, ref, struct paths, patient pseudonym, digest)
    replacements = Replacements()  # its matcher is built once for the whole drop
    taken: set[str] = set()
    for ref in series:
        pid = str(_attr(ref, "patient_id", default=""))
        pname = str(_attr(ref, "patient_name", default=""))
        birth = str(_attr(ref, "birth_date", default=""))
        key = f"id:{pid}" if pid else f"study:{_attr(ref, 'study_uid', 'study_instance_uid')}"
        pseudo, digest = st.pseudonym_for(key)
        for tok in identifying_tokens([pid, pname, birth]):
            replacements.setdefault(tok, pseudo)
        suid = str(_attr(ref, "series_uid", "series_instance_uid"))
        label = st.label_for_series(suid) or st.new_label(pseudo, taken)
        taken.add(label)
        plan.append([label, ref, [], pseudo, digest, suid])

    # Every header read counts, not only CT series: an MR, a dose file or an orphan
    # RTSTRUCT names its patient too, and that patient's folder may hold skipped files.
    for values in getattr(scan, "identities", ()):
        _learn_identity(values, st, replacements)

    roots = set()
    for r in paths:
        r = Path(r)
        base = r.parent if r.is_file() else r
        roots |= {str(base), os.path.abspath(base), os.path.realpath(base)}
    roots_sorted = sorted(roots, key=len, reverse=True)

    def clean(text: str) -> str:
        return clean_text(text, roots_sorted, replacements)

    def rel(p) -> str:
        key = str(p)
        if key in rel_of:
            return clean(rel_of[key])
        if key.rstrip(os.sep) in roots or os.path.abspath(key) in roots:
            return "."  # a dropped folder itself: its name and what is above it stay out
        return clean(key)

    # RTSTRUCT → CT series: by referenced series UID, else by Frame of Reference UID.
    # Matched first: an RTSTRUCT left without its CT is a row to store (below).
    by_series = {p[5]: p for p in plan}
    unmatched: list[tuple[str, str]] = []  # (path, reason)
    for sref in scan.structs:
        sp = str(_attr(sref, "path", default=""))
        ref_for = str(_attr(sref, "frame_of_reference_uid", default="") or "")
        target = next((by_series[u] for u in _struct_series(sref) if u in by_series), None)
        reason = None
        if target is not None:
            t_for = str(_attr(target[1], "frame_of_reference_uid", default="") or "")
            if ref_for and t_for and ref_for != t_for:
                reason = (f"RTSTRUCT Frame of Reference UID {ref_for} differs from its CT series' "
                          f"{t_for}")
                target = None
        elif ref_for:
            cands = [p for p in plan if str(_attr(p[1], "frame_of_reference_uid", default="")) == ref_for]
            target = cands[0] if len(cands) == 1 else None
            if target is None:
                reason = ("its CT series is not in this drop (no CT series with its Frame of "
                          "Reference UID)" if not cands else
                          "several CT series share its Frame of Reference and none is referenced")
        else:
            reason = "its CT series is not in this drop"
        if target is None:
            unmatched.append((sp, reason or "no matching CT series"))
        else:
            target[2].append(sp)

    # Patients of this drop whose files were all known were not read; their names may
    # still be folder or file names in a path this drop stores (a newly unusable file, an
    # RTSTRUCT without its CT, an old skipped row to match). One header each, read once,
    # and only when such a path exists: adding one patient to a cohort of 300 does not
    # read 299 headers.
    learnt: list[bool] = []

    def learn_known() -> None:
        if not learnt:
            learnt.append(True)
            for s in sorted(known_series):
                _learn_identifiers(known_by_series[s][:1], st, replacements)

    if scan.skipped or found_skipped or unmatched or merger.skip_rows:
        learn_known()
    # Old skipped rows of files in this drop are replaced by this drop's (merger.finish);
    # without old rows there is nothing to match, and scrubbing every path is skipped.
    st.seen_paths = {rel(p) for p, _, _ in files} if merger.skip_rows else set()

    for _, r, why in found_skipped:  # not regular files: nothing to remember them by
        report.skip((clean(r), clean(why)))
    copy_paths = {p for r in scan.series for p in _copy_paths(r)}
    copy_reasons: dict[str, str] = {}  # listed with their series, once the loader has run
    for s in scan.skipped:
        sp = str(_attr(s, "path", default=""))
        reason = str(_attr(s, "reason", default="unusable"))
        if sp in copy_paths:
            copy_reasons[sp] = reason
            continue
        report.skip((rel(sp), clean(reason)))
        q = quick_of.get(sp)
        if q and not reason.startswith("cannot read file"):  # permissions change, mtimes do not
            st.remember({q: ["", "", clean(reason), rel(sp)]})
    for sp, reason in unmatched:
        report.skip((rel(sp), reason))
        q = quick_of.get(sp)
        if q and "differs" in reason:
            # A mismatch stays one until the file changes; an RTSTRUCT whose CT is
            # absent is looked at again next time (its CT may come in a later drop).
            st.remember({q: ["", "", reason, rel(sp)]})

    total = len(plan)
    done = 0
    cfg_json = cfg.to_json()
    seq0 = wsmod.next_seq(st.path)

    def jobs():
        for k, item in enumerate(plan):
            label, ref, structs, pseudo, digest, suid = item
            known = "" if label in damaged else st.entries.get(label, {}).get("content_hash", "")
            stage = {
                "final": str(wsmod.staged_path(st.path, seq0 + k, label)), "label": label,
                "patient": pseudo, "digest": digest, "number": st.pseudonyms[digest],
                "salt": st.salt, "phash": phash, "series_uid": suid,
                "quick": {f: quick_of[f] for f in [*_ref_paths(ref), *_copy_paths(ref), *map(str, structs)]
                          if f in quick_of},
                "copies": {p: copy_reasons[p] for p in _copy_paths(ref) if p in copy_reasons},
                "roots": roots_sorted, "replacements": replacements,
                "role": st.entries[label].get("role", "") if label in st.entries else st.role,
            }
            yield (item, stage["final"], seq0 + k), _load_job, (ref, structs, cfg_json, known, stage)

    for (item, final, seq), fut in _bounded_map(pool.get(), jobs(), max(pool.workers, 1) + 1, cancel):
        label, ref, structs, pseudo, digest, suid = item
        done += 1
        try:
            res = fut.result()
        except Exception as exc:
            if wsmod.storage_error(exc) is not None:
                raise  # a full disk is not this series' fault: stop (see _storage_errors)
            learn_known()  # rows to store follow
            files = [*_ref_files(ref), *map(Path, _copy_paths(ref))]
            where = rel(getattr(exc, "path", None) or (files[0].parent if files else label))
            reason = clean(str(getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"))
            named = str(getattr(exc, "path", None) or "")
            if named in rel_of:  # the file the reason is about, then the others of its series
                report.skip((where, reason))
                reason = f"{where}: {reason}"
            _skip_series_files(report, [*files, *map(Path, structs)], reason, rel)
            _call(progress, "ingest", done, total, f"skipped {label}")
            continue
        if res["status"] == "unchanged":
            st.remember(res["identity"])
            for sp, why in res.get("left_out", ()):  # copies of its slices, unread
                report.skip((rel(sp), clean(str(why))))
            report.unchanged.append(label)
            _call(progress, "ingest", done, total, f"{label} unchanged")
            continue
        if res["struct_skipped"] or res.get("left_out") or (st.image_shape and res["shape"] != st.image_shape):
            learn_known()  # rows to store follow
        for sp, why in res["struct_skipped"]:
            report.skip((rel(sp), clean(str(why))))
        shape = res["shape"]
        if st.image_shape and shape != st.image_shape:
            Path(res["tmp"]).unlink(missing_ok=True)
            _skip_series_files(report, [*_ref_files(ref), *map(Path, _copy_paths(ref)), *map(Path, structs)], (
                f"preprocessed image shape {shape} differs from the workspace's "
                f"{st.image_shape}; set a crop or size"), rel)
            continue
        for sp, why in res.get("left_out", ()):  # files of the series the loader left out
            report.skip((rel(sp), clean(str(why))))
        st.image_shape = st.image_shape or shape
        wsmod.commit_staged(Path(res["tmp"]), Path(final))  # the commit point
        merger.add_staged(seq, Path(final), res["written"])  # its rows: no need to open it
        st.identity.update(res["identity"])  # carried by the staged entry itself
        role = st.entries.get(label, {}).get("role", st.role)
        st.entries[label] = {"content_hash": res["content_hash"], "series_uid": suid, "patient": pseudo,
                             "role": role}
        report.added.append(label)
        if label in damaged:
            report.notes.append(f"{label}: its damaged stored data was loaded again from its DICOM")
        for r in res["missing"]:
            report.rois_missing.setdefault(r, []).append(label)
        if on_patient is not None:
            on_patient(PatientInfo(pseudonym=label, n_images=res["n_images"], spacing=res["spacing"],
                                   rois=res["rois"], split=role and wsmod.ROLE_QUERY, patient=pseudo,
                                   content_hash=res["content_hash"], source_shape=res["source_shape"],
                                   warnings=res["warnings"], has_source=True, role=role))
        _call(progress, "ingest", done, total, label)
    if cancel and cancel():
        report.cancelled = True


def _skip_series_files(report: IngestReport, files: list[Path], reason: str, rel) -> None:
    """A series that could not be stored: each of its files (and RTSTRUCTs) not listed yet
    is listed with the reason, so every file of the drop is accounted for."""
    listed = {r for r, _ in report.skipped}
    for f in files:
        r = rel(f)
        if r not in listed:
            listed.add(r)
            report.skip((r, f"its CT series could not be stored: {reason}"))


def _is_own_file(real: str, ws_real: str) -> bool:
    """The workspace, its lock, staging folder and temporaries (a drop may contain them).
    Both paths are real paths (os.path.realpath)."""
    if real in (ws_real, ws_real + ".lock") or real.startswith(ws_real + ".staging" + os.sep) \
            or real.startswith(ws_real + ".d" + os.sep):
        return True
    name = os.path.basename(real)
    return os.path.dirname(real) == os.path.dirname(ws_real) and name.startswith(
        "." + os.path.basename(ws_real) + ".") and name.endswith(".tmp")


def _learn_identifiers(files: list[str], st: _State, replacements: dict[str, str]) -> None:
    from training.dicom.deflate import dcmread_bounded
    from training.dicom.identity import READ_KEYWORDS

    for f in files:
        try:  # bounded: a known file replaced by a deflate bomb is not inflated
            ds = dcmread_bounded(f, stop_before_pixels=True, specific_tags=list(READ_KEYWORDS))
        except Exception:
            continue
        _learn_identity(identity_values(ds), st, replacements)


def _learn_identity(values: dict[str, str], st: _State, replacements: dict[str, str]) -> None:
    """A header's identifying values → tokens replaced by the patient's pseudonym (a
    patient without PatientID is known by its study)."""
    pid = values.get("PatientID", "")
    study = values.get("StudyInstanceUID", "")
    if pid or study:
        pseudo, _ = st.pseudonym_for(f"id:{pid}" if pid else f"study:{study}")
    else:
        pseudo = "[patient]"
    for tok, rep in identity_replacements(values, pseudo).items():
        replacements.setdefault(tok, rep)


def _user_key() -> bytes:
    try:
        return pseudonym_key.load_key()
    except pseudonym_key.KeyError_ as exc:
        raise WorkspaceError(str(exc)) from None


def _migrate_key(path: Path, report: IngestReport) -> None:
    """Once per older workspace: key its pseudonym digests (pseudonym_key.py)."""
    key = _user_key()
    n = pseudonym_key.migrate_workspace(path, key)
    if n:
        report.notes.append(
            f"{path}: pseudonyms are now keyed with this account's pseudonym key "
            f"{pseudonym_key.key_id(key)} ({n} patient digest(s) migrated); the key is kept outside "
            f"the workspace in {pseudonym_key.key_path()} - share it with 'ct-vae key export' "
            "if colleagues add to this workspace")


def _stash_identity(st: _State) -> None:
    """Rows not carried by a staged entry (unchanged, unusable files) for the final merge."""
    extra = st.fresh
    if not extra:
        return
    seq = wsmod.next_seq(st.path)
    final = wsmod.staging_dir(st.path) / f"{seq:08d}-identity.h5"

    def fill(f: h5py.File) -> None:
        f.attrs["format"] = wsmod.FORMAT + "-staged"
        f.attrs["salt"] = st.salt
        f.create_group("entries")
        wsmod._write_meta(f, "identity", extra)
        wsmod._write_meta(f, "pseudonyms", st.pseudonyms)

    with wsmod.atomic_write_path(final) as tmp:
        wsmod.write_h5(tmp, fill)


def _struct_series(sref: Any) -> tuple[str, ...]:
    """CT series UIDs an RTSTRUCT reference names."""
    many = _attr(sref, "referenced_series_uids", default=None)
    if many is not None:
        return tuple(str(u) for u in many if u)
    one = _attr(sref, "referenced_series_uid", default="")
    return (str(one),) if one else ()


class _CancelFlag:
    """dicom.scan polls cancel.is_set(); ingest takes a plain callable."""

    def __init__(self, fn: Callable[[], bool] | None):
        self.fn = fn

    def is_set(self) -> bool:
        return bool(self.fn and self.fn())


def _scan_job(files: list[str]):
    from training import dicom

    return dicom.scan(files)


def _scan_chunks(files: list[str], n_chunks: int) -> list[list[str]]:
    """Files grouped by folder (a series normally lives in one), folders dealt to chunks."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by_dir[os.path.dirname(f)].append(str(f))
    chunks: list[list[str]] = [[] for _ in range(n_chunks)]
    for d in sorted(by_dir, key=lambda d: -len(by_dir[d])):
        min(chunks, key=len).extend(by_dir[d])
    return [c for c in chunks if c]


def _scan(dicom, files: list[str], progress: Progress | None, cancel: Callable[[], bool] | None,
          pool: "_Pool | None" = None):
    """dicom.scan, in the worker pool by folder chunks when there is enough to share.

    A series found in two chunks (its files spread over folders) would be split, so then
    the whole scan is done again in one call.
    """
    total = len(files)
    if pool is None or pool.workers <= 1 or total < 64:
        return dicom.scan([str(f) for f in files], progress=_scan_progress(progress),
                          cancel=_CancelFlag(cancel) if cancel else None)
    chunks = _scan_chunks(files, pool.workers * 4)
    if len(chunks) < 2:
        return dicom.scan([str(f) for f in files], progress=_scan_progress(progress),
                          cancel=_CancelFlag(cancel) if cancel else None)
    result = dicom.ScanResult()
    done = 0
    seen: dict[str, int] = {}
    split = False
    jobs = ((len(c), _scan_job, (c,)) for c in chunks)
    for n, fut in _bounded_map(pool.get(), jobs, pool.workers * 2, cancel):
        part = fut.result()
        for ref in part.series:
            split |= ref.series_uid in seen
            seen[ref.series_uid] = 1
        result.series.extend(part.series)
        result.structs.extend(part.structs)
        result.skipped.extend(part.skipped)
        result.identities.extend(getattr(part, "identities", ()))
        done += n
        _call(progress, "scan", done, total, "reading headers")
    if cancel and cancel():
        raise dicom.Cancelled("scan cancelled")
    if split:
        return dicom.scan([str(f) for f in files], progress=_scan_progress(progress),
                          cancel=_CancelFlag(cancel) if cancel else None)
    return result


class _Pool:
    """The worker pool, started on first use and shared by scanning and loading."""

    def __init__(self, workers: int):
        self.workers = workers
        self._ex = None

    def get(self):
        if self._ex is None:
            self._ex = _executor(self.workers)
        return self._ex

    def shutdown(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None


def _scan_progress(progress: Progress | None):
    if progress is None:
        return None

    def cb(*args):
        # Accepts (done, total[, message]) or (phase, done, total, message).
        nums = [a for a in args if isinstance(a, (int, np.integer)) and not isinstance(a, bool)]
        done, total = (int(nums[0]), int(nums[1])) if len(nums) >= 2 else (0, 0)
        progress("scan", done, total, "reading headers")

    return cb
