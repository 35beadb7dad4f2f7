"""Find similar patients (issue 16): ranking speed and drop-to-answer time.

    python benchmarks/query.py [--n 10000] [--dims 12 64 128] [--repeats 30] [--threads 2]
                               [--cohort 4] [--slices 100] [--query-size 512] [--skip-drop]
                               [--skip-ranking] [--cache-cohort 60] [--cache-slices 50]
                               [--cache-size 128] [--skip-cache]

A. Ranking: one query posterior against N stored patients' posteriors (synthetic, float64
   as training.latent.encode.PatientPosteriors holds them), J latent dimensions.
   project: training.latent.query.rank_patients on a PosteriorIndex (σ², 1/σ² and Σ log σ²
   of the stored posteriors prepared once per cohort, as answer_query caches it; its build
   time is printed too): both KL directions, the Euclidean baseline, ranks and order; and
   kl_query_to_many + argsort (no index); bare: one numpy expression of KL(q ‖ q_j) +
   argsort. Median ms over --repeats; target ≤ 50 ms at N = 10,000.

B. Drop to answer: a phantom cohort (--cohort patients × --slices slices, 256² px, CT +
   RTSTRUCT) ingested with preprocessing resampled to 128² (3 ROIs), the thesis 2D net
   (ModelConfig defaults, untrained: speed does not depend on the weights), and a query =
   a rescan of one patient (--slices slices of --query-size² px). project: ingest(role=
   "query") + answer_query(top 5, images, ROI volumes) with the cohort's encoding cached
   (warm: a window that has answered a query before, or the CLI's second query) and not
   (cold: includes encoding the whole cohort). bare: pydicom reads of the query's CT files,
   window, 4×4 block mean to 128², the model's encoder on the 100 slices, numpy KL
   against the cached cohort posteriors and argsort (no RTSTRUCT, no workspace write, no
   images or volumes). Target ≤ 5 s. "project, from file" is a new process's first query:
   the in-memory cache empty, the cohort read from RUN/encoded/ (C).

C. The encoded cohort kept beside the model (RUN/encoded/<model>-<data hash>.npz,
   training.explore.query.encode_cohort(store=...)): an arrays workspace of --cache-cohort
   entries × --cache-slices images of --cache-size² (synthetic, no DICOM, so that a bigger
   cohort fits in the time: 300 × 100 is the realistic size), the thesis 2D net. project
   cold = encode_cohort with no file (read + encode every image + write the file, atomic,
   fsync'd); bare cold = read every entry + the encoder, nothing written. project warm =
   encode_cohort with the file there and the in-memory cache empty (model fingerprint,
   zip size check, np.load(allow_pickle=False), every validation, reorder, per-patient
   aggregation); bare warm = np.load(allow_pickle=False) of mu and logvar from the same
   file and nothing else. Then answer_query end to end (a query entry of --cache-slices
   images, top 5), cold (no file) and warm (file), the in-memory cache emptied before each.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))


def bench_ranking(n: int, dims, repeats: int) -> None:
    from training.latent import query as lq

    print(f"A. ranking one query against N = {n} posteriors (median of {repeats}, ms)")
    print("| J | rank_patients (project: both KLs, Euclidean, ranks) | kl_query_to_many + argsort (project) "
          "| bare numpy KL + argsort | ratio full/bare | index build (once) |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    names = [f"PAT-{i:05d}" for i in range(n)]
    for j in dims:
        mu = rng.normal(size=(n, j))
        lv = rng.normal(scale=0.5, size=(n, j)) - 1.0
        mq, lq_ = rng.normal(size=j), rng.normal(scale=0.5, size=j) - 1.0

        def bare():
            d = 0.5 * np.sum(lv - lq_ + (np.exp(lq_) + (mq - mu) ** 2) / np.exp(lv) - 1.0, axis=1)
            return np.argsort(d)

        ref = 0.5 * np.sum(lv - lq_ + (np.exp(lq_) + (mq - mu) ** 2) / np.exp(lv) - 1.0, axis=1)
        assert np.allclose(lq.kl_query_to_many(mq, lq_, mu, lv), ref, rtol=1e-10, atol=1e-9)
        t = time.perf_counter()
        index = lq.PosteriorIndex(mu, lv)  # once per cohort (cached with its encoding)
        build = 1000 * (time.perf_counter() - t)
        full = _median_ms(lambda: lq.rank_patients(mq, lq_, None, None, names, index=index), repeats)
        kl = _median_ms(lambda: np.argsort(lq.kl_query_to_many(mq, lq_, mu, lv)), repeats)
        b = _median_ms(bare, repeats)
        print(f"| {j} | {full:.1f} | {kl:.1f} | {b:.1f} | {full / b:.2f} | {build:.1f} |")


def drop_case(tmp: Path, n_cohort: int, slices: int, query_size: int):
    """B's data (also benchmarks/query_window.py): tmp/cohort (phantom, 256², CT + RTSTRUCT)
    ingested into tmp/w.h5 at 128² with 3 ROIs, and tmp/query, a rescan of patient 2
    (slices × query_size²). Returns (PreprocessConfig, the rescan's info)."""
    from training.config import PreprocessConfig
    from training.dicom.phantom import generate_cohort, write_rescan
    from training.store.ingest import ingest

    generate_cohort(tmp / "cohort", n_cohort, slices=slices, size=256, fsync=False)
    qinfo = write_rescan(tmp / "query", 2, slices=slices, size=query_size, fsync=False)
    cfg = PreprocessConfig(crop=None, size=128, rois=("Lung-Left", "Lung-Right", "Heart"))
    ingest([tmp / "cohort"], tmp / "w.h5", cfg, workers=2)
    return cfg, qinfo


def thesis_model(cfg):
    """The thesis 2D net (ModelConfig defaults at 128², untrained, seed 0), channels_last
    as the explorer's loaded models (LatentDecoder)."""
    import torch

    from training.config import ModelConfig
    from training.vae.model import VAE

    torch.manual_seed(0)
    model = VAE(ModelConfig(input_size=128, n_classes=cfg.n_classes)).eval()
    model.to(memory_format=torch.channels_last)
    return model


def bench_drop(n_cohort: int, slices: int, query_size: int, rounds: int = 2) -> None:
    import pydicom

    from training.explore.query import answer_query, clear_cache, encode_cohort
    from training.latent.encode import encode_arrays
    from training.store.ingest import ingest
    from training.store.workspace import Workspace, copy_workspace, data_dir

    tmp = Path(tempfile.mkdtemp(prefix="bench-query-"))
    try:
        t = time.perf_counter()
        cfg, qinfo = drop_case(tmp, n_cohort, slices, query_size)
        print(f"\nB. drop to answer: cohort {n_cohort} × {slices} slices (256² → 128²), query {slices} × "
              f"{query_size}² (setup {time.perf_counter() - t:.0f} s)")
        model = thesis_model(cfg)
        key = ("bench", id(model))

        store = tmp / "run" / "encoded"

        def project(mode: str) -> tuple[float, dict]:
            """mode: "memory" (the cohort's encoding in this process already), "file" (a new
            process: read from RUN/encoded/), "cold" (encoded here)."""
            shutil.rmtree(data_dir(tmp / "wq.h5"), ignore_errors=True)  # the last round's query
            copy_workspace(tmp / "w.h5", tmp / "wq.h5")  # the cohort without the query (head + W.h5.d/)
            clear_cache()
            shutil.rmtree(store, ignore_errors=True)
            if mode != "cold":  # the window (or a first query) encoded the cohort already
                with Workspace.open(tmp / "wq.h5") as ws:
                    encode_cohort(model, ws, model_key=key, store=store)
            if mode == "file":
                clear_cache()
            t0 = time.perf_counter()
            rep = ingest([tmp / "query"], tmp / "wq.h5", role="query", workers=1)  # as ct-vae query / the tab
            t1 = time.perf_counter()
            with Workspace.open(tmp / "wq.h5") as ws:
                a = answer_query(model, ws, rep.added[0], top=5, model_key=key, store=store)
            t2 = time.perf_counter()
            assert a.n_query_images == slices
            assert a.cohort_source == {"memory": "memory", "file": "file", "cold": "encoded"}[mode], a.cohort_source
            return t2 - t0, {"ingest": t1 - t0, **a.seconds}

        with Workspace.open(tmp / "w.h5") as ws:
            cohort = encode_cohort(model, ws, model_key=key)

        def bare() -> float:
            t0 = time.perf_counter()
            dss = [pydicom.dcmread(p) for p in qinfo.ct_files]
            dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
            hu = np.stack([np.frombuffer(d.PixelData, np.int16).reshape(d.Rows, d.Columns) * float(d.RescaleSlope)
                           + float(d.RescaleIntercept) for d in dss]).astype(np.float32)
            x = np.clip((hu - cfg.hu_min) / (cfg.hu_max - cfg.hu_min), 0, 1)
            f = query_size // 128
            x = x.reshape(len(x), 128, f, 128, f).mean(axis=(2, 4)).astype(np.float32)
            mu, lv = encode_arrays(model, x, np.zeros(x.shape, np.uint8))
            m, v = mu.astype(np.float64).mean(0), np.exp(lv.astype(np.float64)).mean(0) + mu.var(0)
            pmu, plv = cohort.posteriors.mu, cohort.posteriors.logvar
            d = 0.5 * np.sum(plv - np.log(v) + (v + (m - pmu) ** 2) / np.exp(plv) - 1.0, axis=1)
            np.argsort(d)
            return time.perf_counter() - t0

        rows = []
        for rnd in range(rounds):
            b = bare()
            w, wp = project("memory")
            f, fp = project("file")
            c, cp = project("cold")
            rows.append((b, w, f, c))
            print(f"  round {rnd + 1}: bare {b:.2f} s | project warm {w:.2f} s "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in wp.items())}) | project from file {f:.2f} s "
                  f"(cohort {fp['cohort']:.2f}) | project cold {c:.2f} s (cohort encode {cp['cohort']:.2f})")
        b, w, f, c = np.median(np.asarray(rows), axis=0)
        print("| bare | project, cohort in memory | project, cohort from file | project, cohort encoded too "
              "| memory/bare | file/bare |")
        print("|---|---|---|---|---|---|")
        print(f"| {b:.2f} s | {w:.2f} s | {f:.2f} s | {c:.2f} s | {w / b:.2f} | {f / b:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_cache(n_cohort: int, slices: int, size: int, rounds: int = 2) -> None:
    import torch

    from training.config import ModelConfig
    from training.explore import query as xq
    from training.latent import encode as latent
    from training.store.roles import mark_as_query
    from training.store.workspace import Workspace, write_arrays_workspace
    from training.vae.model import VAE

    tmp = Path(tempfile.mkdtemp(prefix="bench-query-cache-"))
    try:
        t = time.perf_counter()
        rng = np.random.default_rng(0)
        base = rng.random((slices, size, size), dtype=np.float32)
        images = {f"PAT-{i + 1:04d}": np.clip(base + 0.1 * rng.standard_normal((slices, size, size),
                                                                              dtype=np.float32), 0, 1)
                  for i in range(n_cohort + 1)}
        ws_path = write_arrays_workspace(tmp / "w.h5", images, test_fraction=0.0)
        del images
        query = f"PAT-{n_cohort + 1:04d}"
        mark_as_query(ws_path, [query])
        torch.manual_seed(0)
        model = VAE(ModelConfig(input_size=size)).eval()
        model.to(memory_format=torch.channels_last)
        store = tmp / "run" / "encoded"
        print(f"\nC. cohort encoding file: {n_cohort} entries × {slices} images of {size}² "
              f"({n_cohort * slices} images; setup {time.perf_counter() - t:.0f} s)")

        def project_cold():
            shutil.rmtree(store, ignore_errors=True)
            xq.clear_cache()
            with Workspace.open(ws_path) as ws:
                t0 = time.perf_counter()
                c = xq.encode_cohort(model, ws, store=store)
                dt = time.perf_counter() - t0
            assert c.source == "encoded" and c.cache_file is not None
            return dt

        def bare_cold():
            with Workspace.open(ws_path) as ws:
                t0 = time.perf_counter()
                for i, p in enumerate(ws.patients):
                    if not p.is_query:
                        im, lab = ws.read_patient(i)
                        latent.encode_arrays(model, im, lab, 32)
                return time.perf_counter() - t0

        def project_warm():
            xq.clear_cache()
            with Workspace.open(ws_path) as ws:
                t0 = time.perf_counter()
                c = xq.encode_cohort(model, ws, store=store)
                dt = time.perf_counter() - t0
            assert c.source == "file"
            return dt

        def bare_warm():
            (f,) = store.iterdir()
            t0 = time.perf_counter()
            with np.load(f, allow_pickle=False) as z:
                mu, lv = z["mu"], z["logvar"]
            assert len(mu) == len(lv) == n_cohort * slices
            return time.perf_counter() - t0

        def answer(cold: bool):
            if cold:
                shutil.rmtree(store, ignore_errors=True)
            xq.clear_cache()
            with Workspace.open(ws_path) as ws:
                t0 = time.perf_counter()
                a = xq.answer_query(model, ws, query, top=5, store=store)
                dt = time.perf_counter() - t0
            assert a.cohort_source == ("encoded" if cold else "file")
            return dt

        rows = []
        for rnd in range(rounds):
            r = (bare_cold(), project_cold(), bare_warm(), project_warm(), answer(True), answer(False))
            rows.append(r)
            (f,) = store.iterdir()
            print(f"  round {rnd + 1}: cold bare {r[0]:.2f} s, project {r[1]:.2f} s | warm bare {r[2] * 1000:.1f} ms, "
                  f"project {r[3] * 1000:.1f} ms | answer_query cold {r[4]:.2f} s, warm {r[5]:.2f} s "
                  f"(file {f.stat().st_size / 1e6:.1f} MB)")
        bc, pc, bw, pw, ac, aw = np.median(np.asarray(rows), axis=0)
        print("| images | cold: bare (read + encode) | cold: project (+ write file) | ratio "
              "| warm: bare np.load | warm: project (file, validated) | ratio | answer_query cold | warm | cold/warm |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {n_cohort * slices} | {bc:.2f} s | {pc:.2f} s | {pc / bc:.2f} | {bw * 1000:.1f} ms | "
              f"{pw * 1000:.1f} ms | {pw / bw:.1f} | {ac:.2f} s | {aw:.2f} s | {ac / aw:.0f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[12, 64, 128])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cohort", type=int, default=4)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--query-size", type=int, default=512)
    ap.add_argument("--skip-drop", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-ranking", action="store_true")
    ap.add_argument("--skip-cache", action="store_true")
    ap.add_argument("--cache-cohort", type=int, default=60, help="C: cohort entries (realistic: 300)")
    ap.add_argument("--cache-slices", type=int, default=50, help="C: images per entry (realistic: 100)")
    ap.add_argument("--cache-size", type=int, default=128, help="C: image side (the thesis net: 128)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if not args.skip_ranking:
        bench_ranking(args.n, args.dims, args.repeats)
    if not args.skip_drop:
        bench_drop(args.cohort, args.slices, args.query_size, args.rounds)
    if not args.skip_cache:
        bench_cache(args.cache_cohort, args.cache_slices, args.cache_size, args.rounds)


if __name__ == "__main__":
    main()
