"""Atomic file writes: write beside the target, flush + fsync, then os.replace.

A reader (or a crash) sees either the old file or the complete new one, never a partial
write. Temporary names start with "." and end in ".tmp", so leftovers of a killed writer
are recognisable (and ignored by .gitignore and by Workspace.open). The one place every
workspace, checkpoint and export write goes through.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    # Makes the rename itself durable; some filesystems refuse fsync on directories.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2
_libc = None


def start_writeback(path: str | os.PathLike) -> None:
    """Ask the kernel to start writing a file's dirty pages to disk now, without waiting
    (Linux sync_file_range; elsewhere nothing). A later fsync then waits only for the
    tail, so a large file written piece by piece is mostly on disk when it is replaced."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                              ctypes.c_uint]
        fd = os.open(path, os.O_RDONLY)
    except (OSError, AttributeError):
        _libc = _libc or False
        return
    try:
        if _libc:
            _libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored
    finally:
        os.close(fd)


def temp_path_for(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write_path(final: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on normal exit it replaces `final`.

    The caller writes and closes the file at the yielded path. On an exception the
    temporary file is removed and `final` is untouched. The new file gets the ordinary
    permissions of a newly created file (0666 & ~umask).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], fsync: bool = True) -> Path:
    """`write(f)` fills a temporary binary file that then atomically replaces `path`."""
    with atomic_write_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())
