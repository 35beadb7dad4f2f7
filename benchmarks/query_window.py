"""Find similar patients through the window: drop on the Query tab to the answer shown.

    python benchmarks/query_window.py [--cohort 4] [--slices 100] [--query-size 512]
                                      [--rounds 3] [--threads 2] [--profile]

The data of benchmarks/query.py part B (drop_case: a phantom cohort of --cohort patients ×
--slices slices ingested at 128² with 3 ROIs; the query a rescan of patient 2, --slices ×
--query-size²) and its model (thesis_model: the thesis 2D net, untrained, seed 0), saved
as a checkpoint RUN/model.pt so that the window loads it as a user would (its cohort
encoding file goes to RUN/encoded/). Each measurement starts from a fresh copy of the
cohort workspace (no query in it).

window: the main window (offscreen), the workspace open, the model loaded, the Query tab
shown; a real QDragEnter + QDrop of the query folder on the window (benchmarks/gui.py
`drop`); the time runs from just before the drop is sent to the end of the panel's
answer slot (its answer set, the table, images and ROI volumes filled: a slot connected
after the panel's stamps the clock). The ingest's end (the window's job `ended`) is
stamped too. A 10 ms timer on the GUI thread (benchmarks/gui.py LatenessProbe) measures
the event loop's lateness from the drop to the answer.

headless: ingest(role="query", workers=1, inline as `ct-vae query` does) + answer_query(top 5, images, ROI volumes), with
the same checkpoint's model (training.explore.latent.load_latent_model), model key and
store as the tab's worker uses (explorer/panels/query.py `_compute`), on the main thread
with no event loop running.

Variants (the cohort cache, training.explore.query.encode_cohort):
  warm  the cohort's encoding in memory (a window that answered before; the same window
        is reused, re-opened on the fresh copy, and the cohort encoded into the cache first)
  file  a fresh window, the in-memory cache empty, RUN/encoded/ holding the file (the first
        query after the app starts)
  cold  a fresh window, no in-memory cache and no file (the cohort encoded too)
Every round runs headless and window alternately for each variant. Medians over rounds.
A line ends in "[ranked N of M]" when an answer ranked fewer entries than the cohort holds
(the warm in-memory cache's stale entry indices: benchmarks/README.md, "Through the window").
--profile: one more warm window drop under cProfile of the GUI thread plus the worker
thread's answer_query time (the split is printed).
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
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=int, default=4)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--query-size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["warm", "file", "cold"])
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-query-window-"))
    os.environ["CT_VAE_EXPLORER_DATA_DIR"] = str(tmp / "userdata")  # never the user's settings
    import torch

    torch.set_num_threads(args.threads)
    from gui import LatenessProbe, drop, spin_until
    from query import drop_case, thesis_model

    from explorer.main_window import MainWindow
    from explorer.panels.query import QueryPanel
    from explorer.qt import QtWidgets
    from explorer.settings import AppSettings
    from explorer.state import AppState
    from training.config import TrainConfig
    from training.explore.latent import load_latent_model
    from training.explore.query import answer_query, clear_cache, encode_cohort
    from training.store.ingest import ingest
    from training.store.workspace import Workspace, copy_workspace, data_dir
    from training.vae.checkpoint import save_checkpoint

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv)
    from training.store.ingest import start_worker_server

    start_worker_server()  # as the app does at launch (explorer/app.py): the query's ingest pool
    try:
        t = time.perf_counter()
        cfg, _ = drop_case(tmp, args.cohort, args.slices, args.query_size)
        model = thesis_model(cfg)
        with Workspace.open(tmp / "w.h5") as ws:
            pre, dh = ws.preprocess, ws.data_hash
        ckpt = save_checkpoint(tmp / "run" / "model.pt", model_config=model.cfg, train_config=TrainConfig(),
                               preprocess_config=pre, model_state=model.state_dict(), optimizer_state=None,
                               epoch=1, history=[], data_hash=dh, roi_names=tuple(cfg.rois))
        store = ckpt.parent / "encoded"
        lm = load_latent_model(ckpt)  # the process-wide cache the tab's worker reads
        print(f"cohort {args.cohort} × {args.slices} slices (256² → 128²), query {args.slices} × "
              f"{args.query_size}², torch {torch.__version__}, {args.threads} threads "
              f"(setup {time.perf_counter() - t:.0f} s); load average {os.getloadavg()}", flush=True)

        n = [0]
        labels: set[str] = set()  # the query's label in the cohort workspace (one)

        def fresh_copy() -> Path:
            n[0] += 1
            return copy_workspace(tmp / "w.h5", tmp / f"c{n[0]}.h5")

        def remove(path: Path) -> None:
            shutil.rmtree(data_dir(path), ignore_errors=True)
            path.unlink(missing_ok=True)

        def prepare(variant: str, path: Path) -> None:
            clear_cache()
            if variant == "cold":
                shutil.rmtree(store, ignore_errors=True)
            else:
                with Workspace.open(path) as ws:  # the file, and (warm) the in-memory cache
                    encode_cohort(lm.model, ws, model_key=lm.key, store=store)
                if variant == "file":
                    clear_cache()

        def headless(variant: str) -> dict:
            path = fresh_copy()
            prepare(variant, path)
            time.sleep(1.0)  # as the window's settle(): the encoder's threads idle again
            t0 = time.perf_counter()
            rep = ingest([tmp / "query"], path, role="query", workers=1)
            t1 = time.perf_counter()
            with Workspace.open(path) as ws:
                a = answer_query(lm.model, ws, rep.added[0], top=5, model_key=lm.key, store=store)
            t2 = time.perf_counter()
            labels.add(a.query)
            if len(labels) == 1 and not hasattr(headless, "said"):
                headless.said = True
                print(f"  the query: {a.query}, ranked against {a.n_cohort} cohort entries "
                      f"(in the cohort itself: {a.query_in_cohort}; nearest {a.matches[0].name})", flush=True)
            assert a.cohort_source == {"warm": "memory", "file": "file", "cold": "encoded"}[variant], a.cohort_source
            remove(path)
            return {"total": t2 - t0, "ingest": t1 - t0, "answer": t2 - t1, "answer_query": a.seconds["total"],
                    "cohort": a.seconds["cohort"], "encode": a.seconds["query_encode"],
                    "matches": a.seconds["matches"], "ranked": a.n_cohort}

        def new_window() -> MainWindow:
            w = MainWindow(AppState(AppSettings()))
            w.setProperty("quiet", True)
            w.resize(1400, 900)
            w.show()
            return w

        def settle(seconds: float = 1.0) -> None:
            end = time.monotonic() + seconds
            spin_until(app, lambda: time.monotonic() > end, seconds + 30)

        windows: dict[str, MainWindow] = {}

        def window(variant: str, profiler=None) -> dict:
            path = fresh_copy()
            if variant == "warm" and "warm" in windows:
                w = windows["warm"]
            else:
                old = windows.pop("fresh", None)
                if old is not None:
                    old.close()
                    old.deleteLater()
                w = new_window()
                windows["warm" if variant == "warm" else "fresh"] = w
            old_path = w.state.workspace_path
            w.open_workspace(path)
            assert w.load_model(ckpt)
            panel = w.panel(QueryPanel)
            w.tabs.setCurrentWidget(panel)
            prepare(variant, path)
            settle()
            if old_path is not None and old_path.name.startswith("c"):
                remove(old_path)
            stamps: dict[str, float] = {}

            def shown(_rid, _answer) -> None:
                stamps.setdefault("shown", time.perf_counter())

            panel.worker.resultReady.connect(shown)  # after the panel's own slot
            probe = PhaseProbe()
            probe.start()
            if profiler is not None:
                profiler.enable()
            t0 = time.perf_counter()
            drop(w, [tmp / "query"])
            job = w.job
            assert job is not None, "the drop started no ingest"
            job.ended.connect(lambda: stamps.setdefault("ingested", time.perf_counter()))
            spin_until(app, lambda: "shown" in stamps or bool(panel.error), 240)
            if profiler is not None:
                profiler.disable()
            lat = probe.stop()
            lat["max_ingest_ms"], lat["max_answer_ms"] = probe.max_before_after(stamps.get("ingested", t0))
            panel.worker.resultReady.disconnect(shown)
            if panel.error:
                raise RuntimeError(panel.error)
            a = panel.answer
            labels.add(a.query)
            assert len(labels) == 1 and panel.table.rowCount() == a.n_cohort, (panel.table.rowCount(), a.n_cohort)
            assert a.cohort_source == {"warm": "memory", "file": "file", "cold": "encoded"}[variant], a.cohort_source
            t1 = time.perf_counter()
            panel._answer_ready(0, a)  # the GUI fill alone, replayed
            fill = time.perf_counter() - t1
            return {"total": stamps["shown"] - t0, "ingest": stamps["ingested"] - t0,
                    "answer": stamps["shown"] - stamps["ingested"], "answer_query": a.seconds["total"],
                    "cohort": a.seconds["cohort"], "encode": a.seconds["query_encode"],
                    "matches": a.seconds["matches"], "ranked": a.n_cohort, "fill": fill, "lateness": lat}

        w0 = new_window()
        w0.open_workspace(tmp / "w.h5")
        w0.load_model(ckpt)
        settle()
        probe = LatenessProbe()
        probe.start()
        settle(3.0)
        idle = probe.stop()
        w0.close()
        w0.deleteLater()
        print(f"idle window: event loop lateness {fmt_lat(idle)}", flush=True)

        results = {(v, k): [] for v in args.variants for k in ("headless", "window")}
        for rnd in range(args.rounds):
            for v in args.variants:
                order = ("headless", "window") if (rnd % 2 == 0) else ("window", "headless")
                for k in order:
                    r = headless(v) if k == "headless" else window(v)
                    results[(v, k)].append(r)
                    extra = (f", GUI fill {r['fill'] * 1000:.0f} ms, lateness {fmt_lat(r['lateness'])}, max while "
                             f"ingesting {r['lateness']['max_ingest_ms']:.0f} / answering "
                             f"{r['lateness']['max_answer_ms']:.0f} ms" if k == "window" else "")
                    if r["ranked"] != args.cohort:
                        extra += f"  [ranked {r['ranked']} of {args.cohort} cohort entries]"
                    print(f"  round {rnd + 1} {v:4s} {k:8s}: {r['total']:.2f} s (ingest {r['ingest']:.2f}, "
                          f"then answer {r['answer']:.2f} of which answer_query {r['answer_query']:.2f}, "
                          f"cohort {r['cohort']:.2f}, query encode {r['encode']:.2f}, matches {r['matches']:.2f}){extra}", flush=True)
            print(f"  load average after round {rnd + 1}: {os.getloadavg()}", flush=True)

        med = lambda rs, key: float(np.median([r[key] for r in rs]))  # noqa: E731
        print("\n| cohort cache | headless | window (drop → answer shown) | window / headless "
              "| window: ingest / then answer (answer_query) | headless: ingest / answer_query "
              "| lateness p50 / p99 / max (ms) |")
        print("|---|---|---|---|---|---|---|")
        for v in args.variants:
            h, w_ = results[(v, "headless")], results[(v, "window")]
            lat = {k: float(np.median([r["lateness"][k] for r in w_])) for k in ("p50_ms", "p99_ms", "max_ms")}
            print(f"| {v} | {med(h, 'total'):.2f} s | {med(w_, 'total'):.2f} s | {med(w_, 'total') / med(h, 'total'):.2f} "
                  f"| {med(w_, 'ingest'):.2f} / {med(w_, 'answer'):.2f} ({med(w_, 'answer_query'):.2f}) s "
                  f"| {med(h, 'ingest'):.2f} / {med(h, 'answer_query'):.2f} s "
                  f"| {lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.0f} |")
        print(f"load average at the end: {os.getloadavg()}")

        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            r = window("warm", prof)
            print(f"\nprofiled warm drop: {r['total']:.2f} s (ingest {r['ingest']:.2f}, answer {r['answer']:.2f}, "
                  f"answer_query on the worker {r['answer_query']:.2f}); GUI thread's own time:")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(14)
        for w in windows.values():
            w.close()
    finally:
        app.processEvents()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def PhaseProbe():
    """benchmarks/gui.py's LatenessProbe that also keeps each tick's time, to tell the
    ingest's stalls from the answer's."""
    from gui import LatenessProbe

    class _Probe(LatenessProbe):
        def _tick(self) -> None:
            super()._tick()
            self.times = getattr(self, "times", [])
            self.times.append(self._last)

        def start(self) -> None:
            self.times = []
            super().start()

        def max_before_after(self, t: float) -> tuple[float, float]:
            times = np.asarray(self.times[1:])
            late = np.maximum(np.asarray(self.gaps) - self.interval, 0.0) * 1000.0
            before, after = late[times <= t], late[times > t]
            return (float(before.max()) if before.size else float("nan"),
                    float(after.max()) if after.size else float("nan"))

    return _Probe()


def fmt_lat(d: dict) -> str:
    return f"p50 {d['p50_ms']:.1f} / p99 {d['p99_ms']:.1f} / max {d['max_ms']:.0f} ms ({d['ticks']} ticks)"


if __name__ == "__main__":
    sys.exit(main())
