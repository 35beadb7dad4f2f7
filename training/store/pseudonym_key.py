"""The pseudonym key: a per-user secret kept outside every workspace.

A workspace links a patient to a pseudonym through a digest of the PatientID. With only a
per-workspace salt (stored in the workspace) anyone holding the file could try every
7-digit MRN in seconds and read back who PAT-0003 is. The digest is therefore keyed with
a secret that never enters a workspace:

    digest = KEYID ":" HMAC-SHA256(key, HMAC-SHA256(salt, PatientID))

stored as "<key id>:<hex>". The key (32 random bytes) lives in the user's config folder
(platformdirs' user_config_dir("ct-vae")/pseudonym.key, mode 0600), or in the file named
by CT_VAE_KEY_FILE. A team that adds to one workspace from several accounts shares one
key: `ct-vae key export FILE` on one account, `ct-vae key import FILE` on the others. The
key id (a digest of the key, not the key) tells which key made a workspace's pseudonyms,
so an ingest with another key is refused instead of numbering known patients anew.

Workspaces written before the key existed hold HMAC(salt, PatientID) digests: those are
migrated once, by keying the stored digest (no PatientID is needed), the next time the
workspace is written (see migrate_workspace).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

ENV_KEY_FILE = "CT_VAE_KEY_FILE"
KEY_BYTES = 32
_HEX = re.compile(r"[0-9a-f]{64}")


class KeyError_(Exception):
    """The pseudonym key cannot be read, written or imported (message says why)."""


def key_path() -> Path:
    override = os.environ.get(ENV_KEY_FILE)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("ct-vae", appauthor=False)) / "pseudonym.key"


def _parse(text: str, where: Path) -> bytes:
    value = text.strip().lower()
    for line in text.splitlines():  # comments and blank lines allowed around the key
        line = line.strip().lower()
        if line and not line.startswith("#"):
            value = line
            break
    if not _HEX.fullmatch(value):
        raise KeyError_(f"{where}: not a ct-vae pseudonym key (64 hexadecimal digits expected)")
    return bytes.fromhex(value)


def _write(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = ("# ct-vae pseudonym key: links workspace pseudonyms to PatientIDs. Keep it secret;\n"
            "# share it only with people allowed to re-identify patients (ct-vae key export).\n"
            f"{key.hex()}\n")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_key(create: bool = True) -> bytes:
    """This user's key; a new random one is made (and stored) on first use."""
    path = key_path()
    try:
        return _parse(path.read_text(encoding="ascii", errors="replace"), path)
    except FileNotFoundError:
        if not create:
            raise KeyError_(f"{path}: no pseudonym key yet") from None
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read the pseudonym key ({exc.strerror or exc})") from None
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) if path.parent.is_dir() else -1
    except FileExistsError:  # another process made it first: use theirs
        return load_key(create=False)
    except OSError as exc:
        raise KeyError_(f"{path}: cannot store a new pseudonym key ({exc.strerror or exc})") from None
    if fd >= 0:
        os.close(fd)
    try:
        _write(path, key)
    except OSError as exc:
        raise KeyError_(f"{path}: cannot store a new pseudonym key ({exc.strerror or exc})") from None
    return key


def key_id(key: bytes) -> str:
    """A short public name of the key (HMAC of a constant; reveals nothing of the key)."""
    return hmac.new(key, b"ct-vae pseudonym key id", hashlib.sha256).hexdigest()[:12]


def keyed(key: bytes, salted_digest: str) -> str:
    """The stored form of a patient digest: '<key id>:<HMAC(key, salted digest)>'."""
    return f"{key_id(key)}:" + hmac.new(key, salted_digest.encode("ascii"), hashlib.sha256).hexdigest()


def digest_key_id(digest: str) -> str | None:
    """The key id of a stored digest; None for an unkeyed (old) one."""
    head, sep, _ = digest.partition(":")
    return head if sep else None


def export_key(dest: Path) -> Path:
    """Write this user's key to `dest` (mode 0600) for a colleague to import."""
    dest = Path(dest)
    if dest.exists():
        raise KeyError_(f"{dest}: exists; choose a new file name")
    try:
        _write(dest, load_key())
    except OSError as exc:
        raise KeyError_(f"{dest}: cannot write ({exc.strerror or exc})") from None
    return dest


def import_key(src: Path, force: bool = False) -> str:
    """Make the key in `src` this user's key; returns its id. Refuses to replace a
    different existing key unless force (workspaces made with it would no longer match)."""
    src = Path(src)
    try:
        new = _parse(src.read_text(encoding="ascii", errors="replace"), src)
    except OSError as exc:
        raise KeyError_(f"{src}: cannot read ({exc.strerror or exc})") from None
    path = key_path()
    if path.exists() and not force:
        old = load_key(create=False)
        if old != new:
            raise KeyError_(
                f"{path}: this account already has pseudonym key {key_id(old)}; importing {key_id(new)} "
                "would make workspaces written with the old key refuse new drops (use --force to replace it)")
    try:
        _write(path, new)
    except OSError as exc:
        raise KeyError_(f"{path}: cannot store the key ({exc.strerror or exc})") from None
    return key_id(new)


# ----------------------------------------------------------------------------- workspaces


def workspace_key_ids(pseudonyms: dict[str, int]) -> tuple[set[str], int]:
    """(key ids found among a workspace's stored digests, number of unkeyed digests)."""
    ids = {digest_key_id(d) for d in pseudonyms}
    unkeyed = sum(1 for d in pseudonyms if digest_key_id(d) is None)
    ids.discard(None)
    return ids, unkeyed  # type: ignore[return-value]


def check_workspace_key(path: Path, pseudonyms: dict[str, int], key: bytes) -> None:
    """WorkspaceError when the workspace's pseudonyms were made with another key: adding
    to it would give known patients new numbers."""
    from training.store.workspace import WorkspaceError

    ids, _ = workspace_key_ids(pseudonyms)
    other = sorted(ids - {key_id(key)})
    if other:
        raise WorkspaceError(
            f"{path}: its pseudonyms were made with pseudonym key {', '.join(other)}, this account's "
            f"key is {key_id(key)} ({key_path()}); import the team's key with "
            "'ct-vae key import FILE' to add to this workspace")


def migrate_workspace(path: Path, key: bytes) -> int:
    """Key the unkeyed digests of a workspace written before pseudonym keys existed (one
    atomic rewrite, so no old digest stays behind in the file). Returns how many were
    migrated (0: nothing to do). Call only while holding the workspace's writer lock.

    A read-only workspace (file, folder or data folder) is refused with a one-line
    WorkspaceError and left as it is, as every other write refuses it; a writable one
    keeps its mode (the rewrite would otherwise get the umask's)."""
    import h5py

    from training.atomic import atomic_write_path
    from training.store import workspace as wsmod

    path = Path(path)
    with h5py.File(path, "r") as f:
        pseudonyms = wsmod._read_meta(f, "pseudonyms", {})
    _, unkeyed = workspace_key_ids(pseudonyms)
    if not unkeyed:
        return 0
    wsmod._writable_or_refuse(path)
    check_workspace_key(path, pseudonyms, key)
    mode = path.stat().st_mode & 0o7777
    new = {(keyed(key, d) if digest_key_id(d) is None else d): n for d, n in pseudonyms.items()}
    with atomic_write_path(path) as tmp:
        # A fresh file: HDF5 does not overwrite the space of a deleted dataset, so the
        # old digests would stay readable in a file edited in place.
        with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver=src.libver) as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                if name != "meta":
                    src.copy(src[name], dst, name=name)
            meta = dst.create_group("meta")
            for k, v in src["meta"].attrs.items() if "meta" in src else ():
                meta.attrs[k] = v
            for name in (src["meta"] if "meta" in src else ()):
                if name != "pseudonyms":
                    src.copy(src["meta"][name], meta, name=name)
            wsmod._write_meta(dst, "pseudonyms", new)
    os.chmod(path, mode)  # atomic_write_path gives the umask's mode; the user's stays
    return unkeyed
