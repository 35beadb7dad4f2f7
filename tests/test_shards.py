"""Several ranks on one workspace (README, "Training on several GPUs and machines"): each
rank opens the workspace read-only and reads only its shard; the shards of an epoch are
disjoint and together cover it."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from training.store.workspace import Workspace, data_dir, write_arrays_workspace
from training.vae.data import BatchStream, EpochSampler


class Recording:
    """A workspace that records the rows each read asks for."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.rows: list[tuple[int, int]] = []

    def read_images(self, rows, out=None):
        self.rows.extend(map(tuple, np.asarray(rows).tolist()))
        return self.ws.read_images(rows, out=out)

    def read_labels(self, rows, out=None):
        return self.ws.read_labels(rows, out=out)


def _read_only(path) -> None:
    for p in [path, *data_dir(path).iterdir()]:
        p.chmod(stat.S_IRUSR | stat.S_IRGRP)
    data_dir(path).chmod(stat.S_IRUSR | stat.S_IXUSR)


@pytest.mark.parametrize("n_images", [24, 23])
def test_two_ranks_read_disjoint_shards_that_cover_the_epoch(tmp_path, n_images):
    rng = np.random.default_rng(0)
    sizes = [5, 7, 4, n_images - 16]
    images = {f"P{i}": rng.random((k, 8, 8), dtype=np.float32) for i, k in enumerate(sizes)}
    labels = {k: (v > 0.5).astype(np.uint8) for k, v in images.items()}
    path = write_arrays_workspace(tmp_path / "w.h5", images, labels, roi_names=("A",),
                                  test_fraction=0.0)
    _read_only(path)
    try:
        world = 2
        for epoch in (1, 2):
            seen = []
            for rank in range(world):
                with Workspace.open(path) as ws:  # each rank its own read-only handle
                    rows = ws.index("train")
                    assert len(rows) == n_images
                    src = Recording(ws)
                    stream = BatchStream(src, rows, n_classes=2, batch_size=4,
                                         sampler=EpochSampler(len(rows), seed=3,
                                                              num_replicas=world, rank=rank))
                    n = sum(len(p) for p, _, _ in stream.epoch(epoch))
                    assert n == len(src.rows) == -(-n_images // world)
                    seen.append(src.rows)
            a, b = (set(s) for s in seen)
            everything = set(map(tuple, rows.tolist()))
            assert a | b == everything  # together: the whole epoch
            if n_images % world == 0:
                assert not a & b  # disjoint
            else:  # as DistributedSampler: the short shard is topped up with the first item
                assert len(a & b) == 1 and len(seen[0]) == len(seen[1])
            assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])
    finally:
        data_dir(path).chmod(0o755)
        for p in [path, *data_dir(path).iterdir()]:
            os.chmod(p, 0o644)
