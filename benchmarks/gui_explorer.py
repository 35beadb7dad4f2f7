"""Speed of the Similarity and Volume tabs' interactive paths, beside bare references.

    python benchmarks/gui_explorer.py [--patients 500] [--size 128] [--steps 200] [--repeats 40]

1. Sorting the KL table: a 500-patient matrix (training.latent.similarity.kl_matrix of random
   posteriors, J = 12) in explorer.widgets.kl_table.KLTableView, shown at 1100×700;
   a header sort (`sortByColumn`, ascending and descending over different columns) plus
   a synchronous repaint of the viewport, so the new order is on screen. Reference: a
   naive Python sort of the rows (a list of lists, `sorted(rows, key=lambda r: r[j])`),
   which does not draw; the sort alone (no repaint) is timed too, for a like-for-like
   ratio. Target: p95 < 100 ms for sort + repaint.
2. Volume slider: explorer.widgets.slice_stack.SliceStackPair with two 128-slice stacks of
   128×128 (HU display with window/level, ROI overlay on), shown at 1200×700; one slider
   step, then a synchronous repaint of both views (new pixels on screen). Reference: two
   bare pyqtgraph ImageItems in the same-sized views getting the same float slices with
   fixed levels (no overlay, no labels). Target: p95 < 16 ms.

Each call is timed in wall and process-CPU time: on a shared, loaded machine the CPU time
is the figure that does not depend on the other processes (the GUI work runs on one
thread); ratios are of CPU medians. Runs offscreen unless QT_QPA_PLATFORM says otherwise
(under Xvfb: QT_QPA_PLATFORM=xcb).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


class Clock:
    """Wall and process-CPU milliseconds of each timed call. On a shared machine the CPU
    time (this process only; the GUI work is single-threaded) is the load-independent
    figure, the wall time what a user would see under that load."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu.append((time.process_time() - self._c) * 1000)
        self.wall.append((time.perf_counter() - self._w) * 1000)


def stats(clock: Clock) -> dict:
    a, c = np.asarray(clock.wall, np.float64), np.asarray(clock.cpu, np.float64)
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "max": float(a.max()),
            "cpu_median": float(np.median(c)), "cpu_p95": float(np.percentile(c, 95)), "n": len(a)}


def fmt(s: dict) -> str:
    return (f"wall median {s['median']:.2f} ms, p95 {s['p95']:.2f} ms, max {s['max']:.2f} ms; "
            f"CPU median {s['cpu_median']:.2f} ms, p95 {s['cpu_p95']:.2f} ms (n={s['n']})")


def bench_sort(app, n: int, repeats: int) -> dict:
    from explorer.qt import Qt
    from explorer.widgets.kl_table import KLTableView
    from training.latent.similarity import KL_DIRECTION, kl_matrix

    rng = np.random.default_rng(0)
    mu = rng.normal(size=(n, 12))
    lv = rng.normal(-1.0, 0.3, size=(n, 12))
    d = kl_matrix(mu, lv)
    names = [f"PAT-{i:04d}" for i in range(n)]
    view = KLTableView()
    view.resize(1100, 700)
    view.show()
    view.set_matrix(d, names, KL_DIRECTION)
    for _ in range(5):
        app.processEvents()
    cols = rng.integers(0, n, size=repeats)
    ours = Clock()
    for k, j in enumerate(cols):
        order = Qt.SortOrder.AscendingOrder if k % 2 == 0 else Qt.SortOrder.DescendingOrder
        with ours:
            view.sortByColumn(int(j), order)
            view.viewport().repaint()
            view.verticalHeader().viewport().repaint()
        key = d[:, j] if k % 2 == 0 else -d[:, j]
        assert view.kl_model.patient_at(0) == names[int(np.argsort(key, kind="stable")[0])]
    only = Clock()
    for k, j in enumerate(cols):
        order = Qt.SortOrder.AscendingOrder if k % 2 == 0 else Qt.SortOrder.DescendingOrder
        with only:
            view.sortByColumn(int(j), order)
    rows = d.tolist()
    ref = Clock()
    for k, j in enumerate(cols):
        with ref:
            sorted(rows, key=lambda r: r[j], reverse=k % 2 == 1)
    view.close()
    return {"ours": stats(ours), "sort_only": stats(only), "reference": stats(ref)}


def bench_slider(app, size: int, steps: int) -> dict:
    from explorer.qt import pg
    from explorer.widgets.slice_stack import SliceStackPair
    from training.explore.volume import SliceStack

    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:size, :size, :size].astype(np.float32) / size - 0.5
    body = (xx ** 2 / 0.16 + yy ** 2 / 0.1) < 1
    vol = np.clip(body * 0.55 + 0.05 * rng.random(body.shape, dtype=np.float32), 0, 1).astype(np.float32)
    labels = body.astype(np.uint8) + ((xx - 0.1) ** 2 + yy ** 2 + zz ** 2 < 0.01)
    left = SliceStack(vol, labels, (-800.0, 700.0), "input", ("BODY", "GTV"))
    right = SliceStack(vol[::-1].copy(), labels[::-1].copy(), (-800.0, 700.0), "recon", ("BODY", "GTV"))
    pair = SliceStackPair()
    pair.resize(1200, 700)
    pair.show()
    pair.set_pair(left, right, "input", "reconstruction")
    for _ in range(5):
        app.processEvents()
    ours = Clock()
    for s in range(steps):
        with ours:
            pair.slider.setValue(s % size)
            pair.left.viewport().repaint()
            pair.right.viewport().repaint()
    pair.close()

    # bare reference: two ImageItems in views of the same size, float HU, fixed levels
    from explorer.qt import QtWidgets

    w = QtWidgets.QWidget()
    lay = QtWidgets.QHBoxLayout(w)
    views, items, boxes = [], [], []
    for _ in range(2):
        g = pg.GraphicsLayoutWidget()
        vb = g.addViewBox(lockAspect=True, invertY=True)
        it = pg.ImageItem()
        vb.addItem(it)
        boxes.append(vb)
        lay.addWidget(g)
        views.append(g)
        items.append(it)
    w.resize(1200, 700)
    w.show()
    hu = [left.hu(), right.hu()]
    for it, h in zip(items, hu):
        it.setImage(h[0], levels=(-800, 700), autoLevels=False)
    for vb in boxes:
        vb.autoRange(padding=0.02)
    for _ in range(5):
        app.processEvents()
    ref = Clock()
    for s in range(steps):
        with ref:
            for it, h in zip(items, hu):
                it.setImage(h[s % size], levels=(-800, 700), autoLevels=False)
            for g in views:
                g.viewport().repaint()
    w.close()
    return {"ours": stats(ours), "reference": stats(ref)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args(argv)
    from explorer.qt import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    print(f"platform: {app.platformName()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    s = bench_sort(app, args.patients, args.repeats)
    print(f"KL table sort, {args.patients} patients (sort + repaint): {fmt(s['ours'])}")
    print(f"  sort alone (model reorder + layoutChanged, no drawing): {fmt(s['sort_only'])}")
    print(f"  reference, naive Python sort of rows (no drawing):     {fmt(s['reference'])}")
    ref_cpu = s["reference"]["cpu_median"]
    print(f"  ratio of CPU medians: sort alone / naive sort {s['sort_only']['cpu_median'] / ref_cpu:.2f}; "
          f"sort + repaint / naive sort {s['ours']['cpu_median'] / ref_cpu:.0f}; "
          f"target p95 < 100 ms (sort + repaint): wall {'met' if s['ours']['p95'] < 100 else 'NOT met'}, "
          f"CPU {'met' if s['ours']['cpu_p95'] < 100 else 'NOT met'}")
    v = bench_slider(app, args.size, args.steps)
    print(f"Volume slider step, 2 × {args.size}² + overlays (set + repaint): {fmt(v['ours'])}")
    print(f"  reference, 2 bare ImageItems (set + repaint):            {fmt(v['reference'])}")
    print(f"  ratio of CPU medians ours/reference: {v['ours']['cpu_median'] / v['reference']['cpu_median']:.2f}; "
          f"target p95 < 16 ms: wall {'met' if v['ours']['p95'] < 16 else 'NOT met'}, "
          f"CPU {'met' if v['ours']['cpu_p95'] < 16 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
