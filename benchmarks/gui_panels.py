"""Explorer panels: interactive latent views (issue 6).

    python benchmarks/gui_panels.py [--size 128] [--n 15] [--repeats 60] [--threads 2] [--rt]

Section "latent" (this file's first function, `bench_latent`):
1. Interpolation slider: the slider is moved to a new value (QSlider.setValue, as a drag
   does) and the panel's image view is repainted synchronously (viewport().repaint());
   the time from the move to new pixels painted, per step. Reference in the same run: a
   bare torch decode of the same code (model.decode under inference_mode, no GUI).
   Target: p95 < 16 ms at 128×128.
2. Manifold refresh: the panel's refresh (n×n codes, one batched decode through the
   shared LatentDecoder, tiles updated, repainted) from submit to pixels. Reference: the
   bare batched decode of the same n² codes (torch, no GUI) and a naive GUI refresh
   (one decode call per tile, new ImageItems each time). Target: 15×15 < 400 ms.

The model is the thesis default architecture (training.config.ModelConfig at input_size
= --size, untrained: speed does not depend on the weights). Runs offscreen unless
QT_QPA_PLATFORM says otherwise; files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _p(a, q):
    return float(np.percentile(np.asarray(a), q))


def _setup(tmp: Path, size: int, rt: bool):
    import torch

    from training.vae.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainConfig
    from training.vae.model import VAE
    from training.store.workspace import write_arrays_workspace

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images, labels = {}, {}
    for i in range(4):
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 6 + i) ** 2
        images[f"PAT-{i:04d}"] = (disc[None] * 0.6 + 0.1 * rng.random((4, size, size))).astype(np.float32)
        labels[f"PAT-{i:04d}"] = np.repeat(disc[None], 4, 0).astype(np.uint8)
    ws = write_arrays_workspace(tmp / "ws.h5", images, labels if rt else None, roi_names=("GTV",) if rt else ())
    from training.store.workspace import Workspace

    with Workspace.open(ws) as w:
        pre, dh = w.preprocess, w.data_hash
    torch.manual_seed(0)
    cfg = ModelConfig(input_size=size, n_classes=pre.n_classes)
    model = VAE(cfg)
    ck = save_checkpoint(tmp / "model.pt", model_config=cfg, train_config=TrainConfig(), preprocess_config=pre,
                         model_state=model.state_dict(), optimizer_state=None, epoch=1, history=[],
                         data_hash=dh, roi_names=tuple(pre.rois))
    return ws, ck


def bench_latent(size: int = 128, n: int = 15, repeats: int = 60, rt: bool = False) -> dict:
    import torch

    from explorer.panels.interpolation import SLIDER_STEPS, InterpolationPanel
    from explorer.panels.manifold import ManifoldPanel
    from explorer.qt import QtWidgets, pg
    from explorer.settings import ENV_DATA_DIR, AppSettings
    from explorer.state import AppState
    from training.latent import encode as latent
    from training.explore import latent as latent_views
    from training.latent import sampling

    app = pg.mkQApp()
    tmp = Path(tempfile.mkdtemp(prefix="bench-panels-"))
    os.environ[ENV_DATA_DIR] = str(tmp / "userdata")
    ws, ck = _setup(tmp, size, rt)
    state = AppState(AppSettings())
    state.set_workspace(ws)
    state.set_checkpoint(ck)
    lm = latent_views.load_latent_model(ck)
    out: dict = {"size": size, "n": n, "rt": rt, "threads": torch.get_num_threads()}

    # -- 1. interpolation slider ---------------------------------------------------------
    interp = InterpolationPanel(state)
    interp.resize(1000, 700)
    interp.show()
    interp.wait_idle(120000)
    while interp.endpoints is None:
        app.processEvents()
    steps = np.linspace(0, SLIDER_STEPS, repeats + 5).astype(int)
    z0, z1 = interp.endpoints["z0"], interp.endpoints["z1"]
    model = lm.model
    times, bare = [], []
    # interleaved: each slider step, then the bare decode of the same code, so both see
    # the same load on this shared machine
    for i, v in enumerate(steps):
        t0 = time.perf_counter()
        interp.slider.setValue(int(v) if int(v) != interp.slider.value() else int(v) - 1)
        if interp.slider_worker.is_busy():  # decoding off the GUI thread: wait for the pixels
            interp.slider_worker.wait_idle(60000)
            app.processEvents()
        interp.image.viewport().repaint()
        dt = (time.perf_counter() - t0) * 1000.0
        z = torch.from_numpy(sampling.lerp(z0, z1, [v / SLIDER_STEPS]).astype(np.float32))
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.decode(z)
        db = (time.perf_counter() - t0) * 1000.0
        if i >= 5:
            times.append(dt)
            bare.append(db)
    out["slider_ms"] = {"median": _p(times, 50), "p95": _p(times, 95), "max": max(times)}
    out["slider_bare_decode_ms"] = {"median": _p(bare, 50), "p95": _p(bare, 95)}
    out["slider_sync"] = bool(np.median(interp.decode_ms[-5:]) <= 30.0)
    out["slider_decode_part_ms"] = {"median": _p(interp.decode_ms[-repeats:], 50)}
    interp.shutdown()
    interp.close()

    # -- 2. manifold refresh ---------------------------------------------------------------
    man = ManifoldPanel(state)
    man.resize(1200, 800)
    man.show()
    man.wait_idle(120000)
    while man.result is None:
        app.processEvents()
    man.n_spin.blockSignals(True)
    man.n_spin.setValue(n)
    man.n_spin.blockSignals(False)
    rounds = max(3, repeats // 12)
    codes = sampling.grid_codes(n, (0, 1), lm.latent_dim, prior_sigma2=lm.prior_sigma2).reshape(n * n, -1)
    zt = torch.from_numpy(codes)
    refresh, parts, bare_m = [], [], []
    for i in range(rounds + 1):
        before = man.refreshes
        t0 = time.perf_counter()
        man.refresh()
        man.worker.wait_idle(120000)
        while man.refreshes == before:
            app.processEvents()
        man.view.viewport().repaint()
        dt = (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.decode(zt)
        db = (time.perf_counter() - t0) * 1000.0
        if i:
            refresh.append(dt)
            bare_m.append(db)
            parts.append((man.result["decode_ms"], man.result["overlay_ms"]))
    # naive GUI: a decode call per tile and a fresh ImageItem for each
    naive = []
    view = pg.GraphicsLayoutWidget()
    view.resize(1200, 800)
    view.show()
    plot = view.addPlot()
    for i in range(2):
        t0 = time.perf_counter()
        plot.clear()
        for k, z in enumerate(codes):
            img = latent.decode(model, z[None]).ct[0]
            it = pg.ImageItem(img)
            it.setRect(k % n, k // n, 1, 1)
            plot.addItem(it)
        view.viewport().repaint()
        app.processEvents()
        naive.append((time.perf_counter() - t0) * 1000.0)
    view.close()
    out["manifold_ms"] = {"median": _p(refresh, 50), "max": max(refresh),
                          "decode_part": _p([a for a, _ in parts], 50), "overlay_part": _p([b for _, b in parts], 50)}
    out["manifold_bare_decode_ms"] = {"median": _p(bare_m, 50)}
    out["manifold_naive_ms"] = {"median": _p(naive, 50)}
    man.shutdown()
    man.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rt", action="store_true", help="CT + RT model (one ROI)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    r = bench_latent(args.size, args.n, args.repeats, args.rt)
    load1 = os.getloadavg()[0]
    s, b = r["slider_ms"], r["slider_bare_decode_ms"]
    m, mb, mn = r["manifold_ms"], r["manifold_bare_decode_ms"], r["manifold_naive_ms"]
    kind = "CT + RT" if r["rt"] else "CT only"
    print(f"Explorer panels, {kind}, {r['size']}×{r['size']}, torch threads {r['threads']}, "
          f"{os.cpu_count()} CPUs, load average {load0:.1f} → {load1:.1f}")
    print(f"  slider move → pixels: median {s['median']:.1f} ms, p95 {s['p95']:.1f} ms, max {s['max']:.1f} ms "
          f"({'GUI thread' if r['slider_sync'] else 'worker'}; of which decode "
          f"{r['slider_decode_part_ms']['median']:.1f} ms); bare decode median {b['median']:.1f} ms, "
          f"p95 {b['p95']:.1f} ms; p95 ratio {s['p95'] / b['p95']:.2f}; target p95 < 16 ms: "
          f"{'PASS' if s['p95'] < 16 else 'FAIL'}")
    print(f"  manifold {r['n']}×{r['n']} refresh → pixels: median {m['median']:.0f} ms (max {m['max']:.0f}; "
          f"of which decode {m['decode_part']:.0f} ms, overlay {m['overlay_part']:.0f} ms); "
          f"bare batched decode {mb['median']:.0f} ms (ratio {m['median'] / mb['median']:.2f}); naive per-tile "
          f"GUI {mn['median']:.0f} ms (speed-up {mn['median'] / m['median']:.1f}×); target < 400 ms: "
          f"{'PASS' if m['median'] < 400 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
