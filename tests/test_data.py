"""Batch streaming: input layout, DistributedSampler-equivalent order, prefetch, flat reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from training.vae.data import BatchStream, EpochSampler, InMemoryItems, build_input, evenly_spaced

torch.set_num_threads(1)


class ArraySource:
    """A workspace stand-in that records which rows were read."""

    def __init__(self, images, labels=None):
        self.images, self.labels = images, labels
        self.reads = []

    def _flat(self, rows):
        return rows[:, 0] * 1000 + rows[:, 1]

    def read_images(self, rows):
        self.reads.append(len(rows))
        return self.images[rows[:, 1]]

    def read_labels(self, rows):
        return None if self.labels is None else self.labels[rows[:, 1]]


def test_build_input_is_ct_then_one_hot_rt():
    img = np.random.default_rng(0).random((2, 4, 5), dtype=np.float32)
    lab = np.array([[[0, 1, 2, 0, 1]] * 4, [[2, 2, 0, 0, 1]] * 4], dtype=np.uint8)
    x = build_input(img, lab, 3)
    assert x.shape == (2, 4, 4, 5) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(img))
    for k in range(3):
        assert torch.equal(x[:, 1 + k], torch.from_numpy((lab == k).astype(np.float32)))
    assert torch.equal(x[:, 1:].sum(1), torch.ones(2, 4, 5))
    assert build_input(img, None, 0).shape == (2, 1, 4, 5)
    with pytest.raises(ValueError, match="no labels"):
        build_input(img, None, 3)


@pytest.mark.parametrize("size,world", [(10, 1), (10, 2), (11, 2), (7, 3)])
def test_sampler_matches_torch_distributed_sampler(size, world):
    for epoch in (0, 3):
        for rank in range(world):
            mine = EpochSampler(size, seed=5, num_replicas=world, rank=rank)
            ref = DistributedSampler(range(size), num_replicas=world, rank=rank, seed=5, shuffle=True)
            mine.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(mine) == list(ref)
            assert len(mine) == len(ref)


def test_shards_of_a_global_batch_make_the_single_process_batch():
    n, world, b = 24, 2, 3
    single = BatchStream(ArraySource(np.zeros((n, 2, 2), np.float32)), np.c_[np.zeros(n), np.arange(n)],
                         n_classes=0, batch_size=b * world, sampler=EpochSampler(n, seed=1))
    shards = [BatchStream(ArraySource(np.zeros((n, 2, 2), np.float32)), np.c_[np.zeros(n), np.arange(n)],
                          n_classes=0, batch_size=b,
                          sampler=EpochSampler(n, seed=1, num_replicas=world, rank=r)) for r in range(world)]
    for epoch in range(2):
        one = single.batches(epoch)
        per_rank = [s.batches(epoch) for s in shards]
        assert len(one) == len(per_rank[0]) == len(per_rank[1])
        for i, batch in enumerate(one):
            merged = np.empty(b * world, np.int64)
            for r in range(world):
                merged[r::world] = per_rank[r][i]
            assert np.array_equal(merged, batch)
    # each epoch is a different permutation of all items
    assert not np.array_equal(np.concatenate(single.batches(0)), np.concatenate(single.batches(1)))
    assert sorted(np.concatenate(single.batches(1))) == list(range(n))


def test_stream_yields_every_item_once_in_sampler_order_with_extras():
    rng = np.random.default_rng(1)
    n, a = 9, 4
    img = rng.random((n, 4, 4), dtype=np.float32)
    lab = rng.integers(0, 3, (n, 4, 4)).astype(np.uint8)
    src = ArraySource(img, lab)
    extra = InMemoryItems(rng.random((a, 4, 4), dtype=np.float32), rng.integers(0, 3, (a, 4, 4)).astype(np.uint8))
    stream = BatchStream(src, np.c_[np.zeros(n), np.arange(n)], n_classes=3, batch_size=4,
                         sampler=EpochSampler(n, seed=2), prefetch=2)
    stream.set_extra(extra)
    all_img = np.concatenate([img, extra.images])
    all_lab = np.concatenate([lab, extra.labels])
    seen = []
    for positions, x, labels in stream.epoch(0):
        assert torch.equal(x, build_input(all_img[positions], all_lab[positions], 3))
        assert torch.equal(labels, torch.from_numpy(all_lab[positions]))
        seen.extend(positions.tolist())
    assert sorted(seen) == list(range(n + a))
    assert stream.n_batches() == 4
    # the workspace is only ever asked for one batch at a time
    assert max(src.reads) <= 4


def test_prefetch_thread_stops_when_iteration_is_abandoned_and_errors_surface():
    src = ArraySource(np.zeros((50, 2, 2), np.float32))
    stream = BatchStream(src, np.c_[np.zeros(50), np.arange(50)], n_classes=0, batch_size=2, prefetch=2)
    it = stream.epoch(0)
    next(it)
    it.close()
    assert not it._thread.is_alive()
    # read-ahead is bounded: 1 consumed + at most prefetch queued + 1 in hand
    assert len(src.reads) <= 4

    class Broken(ArraySource):
        def read_images(self, rows):
            raise OSError("disk gone")

    bad = BatchStream(Broken(np.zeros((4, 2, 2), np.float32)), np.c_[np.zeros(4), np.arange(4)],
                      n_classes=0, batch_size=2)
    with pytest.raises(OSError, match="disk gone"):
        list(bad.epoch(0))


def test_evenly_spaced():
    assert evenly_spaced(10, 3).tolist() == [0, 4, 9] or evenly_spaced(10, 3).tolist() == [0, 5, 9]
    assert evenly_spaced(2, 8).tolist() == [0, 1]
    assert evenly_spaced(0, 3).tolist() == []


def test_input_on_device_matches_build_input():
    rng = np.random.default_rng(3)
    img = rng.random((3, 5, 6), dtype=np.float32)
    lab = rng.integers(0, 4, (3, 5, 6)).astype(np.uint8)
    assert torch.equal(build_input(img, lab, 4), __import__("training.vae.data", fromlist=["x"]).input_on_device(
        torch.from_numpy(img), torch.from_numpy(lab), 4))


def test_worker_processes_read_the_same_batches_as_the_thread(tmp_path):
    from training.store.workspace import Workspace, write_arrays_workspace

    rng = np.random.default_rng(4)
    images = {f"P{p}": rng.random((5, 8, 8), dtype=np.float32) for p in range(3)}
    labels = {k: (v > 0.5).astype(np.uint8) for k, v in images.items()}
    path = write_arrays_workspace(tmp_path / "w.h5", images, labels, roi_names=("A",))
    extra = InMemoryItems(rng.random((2, 8, 8), dtype=np.float32), np.ones((2, 8, 8), np.uint8))
    with Workspace.open(path) as ws:
        rows = ws.index()
        out = []
        for workers, assemble in ((0, True), (2, False)):
            stream = BatchStream(ws, rows, n_classes=2, batch_size=4, extra=extra, workers=workers,
                                 assemble=assemble, sampler=EpochSampler(len(rows) + 2, seed=9))
            got = [(p.copy(), x.clone(), lab.clone()) for p, x, lab in stream.epoch(1)]
            if not assemble:
                from training.vae.data import input_on_device

                got = [(p, input_on_device(x, lab, 2), lab) for p, x, lab in got]
            out.append(got)
    assert len(out[0]) == len(out[1]) == 5
    for (p0, x0, l0), (p1, x1, l1) in zip(*out):
        assert np.array_equal(p0, p1) and torch.equal(x0, x1) and torch.equal(l0, l1)
