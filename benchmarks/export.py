"""Figure export: how long the GUI thread is held, against the whole export, in one run.

    QT_QPA_PLATFORM=offscreen python benchmarks/export.py [--size 1920] [--repeat 5]

A pyqtgraph plot holding one size × size image (a 15 × 15 manifold of 128² tiles is
1920²) and a few hundred scatter points. `figures.start_export` draws on the GUI thread
and encodes in a job: the figure printed is the time until start_export returns (what
the GUI thread waits) beside the time of the synchronous export of the same figure
(`export_png` / `export_svg`: the bare reference, all on one thread). PDF is drawn and
written on the GUI thread in full (printed for the record).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1920)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from explorer import figures
    from explorer.qt import QtWidgets, pg

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    w = pg.GraphicsLayoutWidget()
    w.resize(900, 900)
    plot = w.addPlot(title="export benchmark")
    rng = np.random.default_rng(0)
    plot.addItem(pg.ImageItem(rng.random((args.size, args.size)).astype(np.float32), levels=(0, 1)))
    for _ in range(12):
        plot.plot(rng.random(50) * args.size, rng.random(50) * args.size, pen=None, symbol="o")
    w.show()
    app.processEvents()
    tmp = Path(tempfile.mkdtemp(prefix="ctvae-export-"))

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1000 * min(times)

    jobs = []

    def start(fmt):
        job = figures.start_export(w, tmp / f"job.{fmt}")
        jobs.append(job)

    print(f"image {args.size}², view 900 × 900, best of {args.repeat}")
    for fmt, sync in (("png", figures.export_png), ("svg", figures.export_svg)):
        t_sync = best(lambda: sync(w, tmp / f"sync.{fmt}"))
        t_gui = best(lambda: start(fmt))
        for job in jobs:
            job.wait()
        app.processEvents()
        print(f"{fmt}: GUI thread {t_gui:6.0f} ms   whole export on one thread {t_sync:6.0f} ms   "
              f"ratio {t_gui / t_sync:.2f}")
    t_pdf = best(lambda: figures.export_pdf(w, tmp / "f.pdf"))
    print(f"pdf: GUI thread {t_pdf:6.0f} ms (drawn and written there)")
    shutil.rmtree(tmp, ignore_errors=True)
    os._exit(0)  # pyqtgraph widgets torn down after the QApplication would crash at exit


if __name__ == "__main__":
    sys.exit(main())
