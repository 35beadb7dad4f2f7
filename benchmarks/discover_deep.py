"""Discovery of a deep folder nest (issue 11): training.store.discover against os.walk.

    python benchmarks/discover_deep.py [--depth 3000] [--files-every 100]

Builds a nest `depth` folders deep (one-letter names; made relative to descriptors, since
its full path passes the 4096-byte limit of open()), with a file every `files-every`
levels, then times discover() (every entry accounted for) and a bare iterative os.scandir walk
(which silently stops where paths get too long) in one run, and prints what each found.
Before issue 11 discover() resolved each folder's real path (one lstat per level of it):
quadratic in the depth, 100–360 s for 3,000 levels here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.deep_nest import remove_nest as remove  # noqa: E402
from training.store.discover import discover  # noqa: E402


def build(base: Path, depth: int, every: int) -> int:
    fd = os.open(base, os.O_RDONLY)
    n = 0
    for k in range(depth):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        if k % every == every - 1:
            out = os.open(f"f{k}.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.close(out)
            n += 1
    os.close(fd)
    return n


def bare_walk(base: Path) -> int:
    """The reference: an iterative os.scandir walk by path (os.walk recurses once per
    level and overflows Python's stack here); folders it cannot open are passed over."""
    n, stack = 0, [str(base)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        n += 1
        except OSError:
            continue
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=3000)
    ap.add_argument("--files-every", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        n = build(base, a.depth, a.files_every)
        try:
            t0 = time.perf_counter()
            skipped: list = []
            files = discover([base], skipped=skipped)
            t_disc = time.perf_counter() - t0
            t0 = time.perf_counter()
            walked = bare_walk(base)
            t_walk = time.perf_counter() - t0
        finally:
            remove(base / "d")
    print(f"nest {a.depth} deep, {n} files")
    print(f"discover   {t_disc:8.3f} s  {len(files)} files to read + {len(skipped)} listed "
          f"(path too long) = {len(files) + len(skipped)}")
    print(f"bare walk  {t_walk:8.3f} s  {walked} files seen (the rest silently not)")


if __name__ == "__main__":
    main()
