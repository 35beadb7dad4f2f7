"""Removing a chain of nested folders too deep for shutil.rmtree (used by the deep-nest
test and benchmarks/discover_deep.py)."""

from __future__ import annotations

import os
from pathlib import Path


def remove_nest(top: Path, window: int = 500) -> None:
    """Remove a chain of nested folders too deep for shutil.rmtree (it recurses once per
    level, and moving levels up is quadratic on overlay file systems): the deepest
    `window` levels are opened relative to their parents, emptied and removed from the
    bottom up, and again until the chain is gone."""
    while True:
        fds = [os.open(top, os.O_RDONLY)]
        try:
            while True:  # down to the bottom, keeping the last `window` descriptors
                subs = [e.name for e in os.scandir(fds[-1]) if e.is_dir(follow_symlinks=False)]
                if not subs:
                    break
                fds.append(os.open(subs[0], os.O_RDONLY, dir_fd=fds[-1]))
                if len(fds) > window:
                    os.close(fds.pop(0))
            for k in range(len(fds) - 1, 0, -1):  # bottom up: empty, then remove from the parent
                for e in os.scandir(fds[k]):
                    os.unlink(e.name, dir_fd=fds[k])
                name = next(e.name for e in os.scandir(fds[k - 1]) if e.is_dir(follow_symlinks=False))
                os.close(fds.pop())
                os.rmdir(name, dir_fd=fds[k - 1])
        finally:
            for fd in fds:
                os.close(fd)
        if not any(e.is_dir(follow_symlinks=False) for e in os.scandir(top)):
            for e in os.scandir(top):
                os.unlink(e.path)
            os.rmdir(top)
            return
