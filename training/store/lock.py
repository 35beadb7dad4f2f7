"""One writer per workspace: a lock that only the writing process holds, and workers
that die with it.

The lock is a POSIX record lock (fcntl F_SETLK) on ``W.h5.lock`` beside the workspace.
Unlike flock, a record lock belongs to the process, not to the open file: forked ingest
workers do not inherit it, and the kernel drops it the instant the holder dies (SIGKILL,
a closed terminal, ``timeout``). The file holds the holder's pid, host, start time and
command line so a refusal names the process; a file left by a killed holder is stale by
construction (nobody holds the record lock) and is simply taken over. The holder removes
the file when it is done, so no empty ``*.lock`` files are left behind.

Record locks do not exclude threads of one process from each other (and closing any
descriptor of the file drops them), so a process-wide table keeps a second writer in the
same process (the window's ingest and a re-derive) out as well, before the file is opened.

`die_with_parent(pid)` is what each pool worker (and each torchrun rank) calls first: the
Linux parent-death signal, plus a watchdog thread for the case where the direct parent
is a fork server rather than the process that owns the work.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path



def _error(message: str) -> Exception:
    # imported here: die_with_parent is armed first thing in a torchrun rank, before h5py
    from training.store.workspace import WorkspaceError

    return WorkspaceError(message)

_HELD: dict[str, int] = {}  # real path of a lock file → thread id of its holder
_HELD_GUARD = threading.Lock()


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _describe_holder(lock: Path) -> str:
    """Who holds the lock, from the record lock itself (F_GETLK) and the file's text."""
    info = ""
    with contextlib.suppress(OSError):
        info = lock.read_text(encoding="utf-8", errors="replace").strip()
    fields = dict(line.split("=", 1) for line in info.splitlines() if "=" in line)
    pid = fields.get("pid", "?")
    host = fields.get("host", "")
    since = fields.get("since", "")
    cmd = fields.get("command", "")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    parts = [f"process {pid}{where}"]
    if cmd:
        parts.append(f"'{_printable(cmd)[:120]}'")
    if since:
        parts.append(f"since {since}")
    return " ".join(parts)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


def _command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return " ".join(sys.argv)


@contextlib.contextmanager
def workspace_lock(path: Path):
    """Hold the writer lock of workspace `path` for the body of the with-block.

    Raises WorkspaceError naming the holder when another process (or another thread of
    this one) is writing the workspace."""
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(lock)
    with _HELD_GUARD:
        if key in _HELD:
            raise _error(f"{path}: another ingest in this process is writing this workspace")
        _HELD[key] = threading.get_ident()
    fd = -1
    try:
        fd = _acquire(path, lock)
        yield
    finally:
        try:
            if fd >= 0:
                # Remove while still holding the lock: a waiter that opened the old file
                # sees the inode change and tries again (see _acquire).
                with contextlib.suppress(OSError):
                    if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                        os.unlink(lock)
                os.close(fd)
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)


def _acquire(path: Path, lock: Path) -> int:
    for _ in range(100):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise _error(
                    f"{path}: another process is writing this workspace ({_describe_holder(lock)}); "
                    f"wait for it to finish or stop it") from None
            raise _error(f"{path}: cannot lock the workspace ({exc.strerror or exc})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file after we opened it
            os.close(fd)
            continue
        text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                f"since={time.strftime('%Y-%m-%d %H:%M:%S')}\ncommand={_command_line()}\n")
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode("utf-8", "replace"), 0)
        return fd
    raise _error(f"{path}: cannot lock the workspace (its lock file keeps changing)")


# ----------------------------------------------------------------------------- workers

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(owner_pid: int | None = None, poll_s: float = 0.5) -> None:
    """Make this (worker) process end when the process that owns its work ends.

    The parent-death signal covers the direct parent (the ingest process for forked
    workers, the fork server for forkserver workers, the torchrun agent for a rank); a
    daemon thread also watches `owner_pid` (the ingest process itself) and exits when it
    is gone, which covers a fork server that outlives its owner and non-Linux systems."""
    parent = os.getppid()
    set_parent_death_signal(signal.SIGKILL)
    # (no "parent is 1" test: an ingest running as PID 1 in a container is a live parent)
    if os.getppid() != parent or (owner_pid is not None and not _alive(owner_pid)):
        os._exit(1)  # the parent died before the signal was armed
    if owner_pid is None or owner_pid == os.getpid():
        return

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if not _alive(owner_pid) or os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
