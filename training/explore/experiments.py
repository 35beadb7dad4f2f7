"""The thesis' chapter-7 experiments as one call each (issue 15; `ct-vae experiment`).

identify (thesis 7.5): train a fresh model on slice a of every patient (entry) of a 2D
workspace and nothing else, then query each patient with slices at several distances
from a (slices never trained on) and count, for every method of
training.latent.similarity.METHODS, the patients whose own reference is the nearest.
Writes a table (CSV), a figure (SVG: fraction identified vs distance per method) and
report.json with the settings, the source workspace's data hash and the hash of the
training subset.

Distances: each image's z in mm is where the workspace's preprocessing put it
(training.store.preprocess.output_positions of the entry's source geometry: the source
slices' positions, or the uniform grid when the workspace is resampled along z). The
query for a distance d of a patient is the image after a whose z is nearest to z_a + d
(before a when the stack ends more than half a slice short of that), at least the next
image; the actual distance |z_b − z_a| is recorded. On a uniform stack of spacing dz
this is slice a ± round(d / dz). An entry without a stored geometry (arrays workspaces)
counts slices with its source spacing. A patient without a slice at the distance is
left out of that distance (the table gives n per distance).

recon (7.1.1, fig. 7.2-7.3), manifold (7.1.1, fig. 7.11), samples (7.1.1, fig. 7.7): train
(or take a checkpoint) and write the per-epoch reconstructions with their metrics, the
decoded manifold grid, or prior samples as PNG.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from training.atomic import atomic_write_text

EXPERIMENTS = {
    "identify": "thesis 7.5: train on slice a of every patient, identify each patient from slices at "
                "several distances (mm); KL, Euclidean and pixel baselines side by side",
    "recon": "thesis 7.1.1 (figs 7.1-7.3): reconstructions and their metrics per epoch",
    "manifold": "thesis 7.1.1 (fig. 7.11): the decoded grid over a 2D latent space",
    "samples": "thesis 7.1.1 (fig. 7.7): images decoded from prior draws",
}

Progress = Callable[[str, int, int], None]


@dataclass
class RunSettings:
    """How the experiment's model is trained: a preset (training.config.PRESETS) or the
    project defaults, then `model`/`train` overrides (ModelConfig / TrainConfig fields)."""

    preset: str | None = None
    epochs: int = 200
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class IdentifySettings(RunSettings):
    slice_a: int | None = None  # None: the middle slice of each entry
    distances_mm: tuple[float, ...] = (3.0, 6.5, 16.0, 33.0)
    entries: tuple[str, ...] = ()  # entry labels; (): every entry of the workspace
    level: str = "patient"


def _configs(settings: RunSettings, preprocess, image_shape):
    from training.config import TrainConfig, preset_settings
    from training.vae.model import model_config_for

    model, train = preset_settings(settings.preset) if settings.preset else ({}, {})
    model.update(settings.model)
    train = {**train, "epochs": settings.epochs, "checkpoint_every": max(settings.epochs, 1),
             "recon_every": max(settings.epochs, 1), "metrics_images": 0, **settings.train}
    model.setdefault("input_size", int(image_shape[-1]))
    if any(s != model["input_size"] for s in image_shape):
        raise ValueError(f"input size {model['input_size']} but the workspace holds {tuple(image_shape)} images")
    return model_config_for(preprocess, **model), TrainConfig(**train)


def _train(ws_path: Path, settings: RunSettings, preprocess, image_shape, out_dir: Path,
           progress: Progress | None, cancel: Callable[[], bool] | None):
    """Train on a workspace; (model in eval mode, TrainSummary). Raises InterruptedError
    when cancelled, RuntimeError when training failed."""
    from training.vae.checkpoint import load_model
    from training.vae.trainer import Callback, Trainer, TrainingControl

    mc, tc = _configs(settings, preprocess, image_shape)
    control = TrainingControl()

    class _Watch(Callback):
        def on_batch_end(self, p):
            if cancel is not None and cancel():
                control.stop()

        def on_epoch_end(self, epoch, train_terms, test_terms):
            if progress is not None:
                progress("training", epoch, tc.epochs)

    summary = Trainer(ws_path, mc, tc, out_dir=out_dir, callbacks=[_Watch()], control=control).run()
    if cancel is not None and cancel():
        raise InterruptedError("cancelled")
    if summary.status == "failed":
        raise RuntimeError(summary.message)
    model, _ = load_model(out_dir / "last.pt")
    return model, summary


# -- identify ----------------------------------------------------------------------------------


@dataclass
class QueryPlan:
    """Reference rows (entry, slice a) and, per target distance, the query rows."""

    entries: list[int]
    names: list[str]
    patients: list[str]
    ref_rows: np.ndarray  # (N, 2)
    spacing: np.ndarray  # (N,) dz in mm
    queries: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]  # d → (indices into entries, rows, actual mm)


def plan_queries(ws, slice_a: int | None, distances_mm, entries=()) -> QueryPlan:
    """Which slices are references and which are queries (module docstring)."""
    eligible = sorted({int(p) for p in np.asarray(ws.index(None)).reshape(-1, 2)[:, 0]})
    chosen = set(entries)
    unknown = chosen - {ws.patients[i].pseudonym for i in eligible}
    if unknown:
        raise ValueError(f"unknown entries: {', '.join(sorted(unknown))}")
    idx, names, patients, refs, dzs, zs = [], [], [], [], [], []
    for i in eligible:
        p = ws.patients[i]
        if chosen and p.pseudonym not in chosen:
            continue
        if p.n_images < 2:
            continue
        a = (p.n_images - 1) // 2 if slice_a is None else (slice_a + p.n_images if slice_a < 0 else slice_a)
        if not 0 <= a < p.n_images:
            continue
        z = image_z(ws, i)
        idx.append(i)
        names.append(p.pseudonym)
        patients.append(p.patient or p.pseudonym)
        refs.append((i, a))
        zs.append(z)
        dzs.append(float(np.median(np.abs(np.diff(z)))))
    if len(idx) < 2:
        raise ValueError("the experiment needs at least 2 entries with 2 or more slices")
    queries = {}
    for d in distances_mm:
        sel, rows, actual = [], [], []
        for k, (i, a) in enumerate(refs):
            b = query_slice(zs[k], a, float(d))
            if b is not None:
                sel.append(k)
                rows.append((i, b))
                actual.append(abs(zs[k][b] - zs[k][a]))
        queries[float(d)] = (np.array(sel, np.int64), np.array(rows, np.int64).reshape(-1, 2),
                             np.array(actual, np.float64))
    return QueryPlan(idx, names, patients, np.array(refs, np.int64), np.array(dzs), queries)


def image_z(ws, index: int) -> np.ndarray:
    """z in mm of an entry's stored images (module docstring, Distances)."""
    from training.store.preprocess import output_positions

    p = ws.patients[index]
    geometry = ws.source_geometry(index)
    if geometry is not None:
        try:
            return np.asarray(output_positions(geometry, ws.preprocess, p.n_images), np.float64)
        except ValueError:  # stored images that this geometry and settings do not make
            pass
    return np.arange(p.n_images, dtype=np.float64) * float(p.spacing[0])


def query_slice(z: np.ndarray, a: int, d: float) -> int | None:
    """The image d mm from image a (module docstring, Distances), or None."""
    z = np.asarray(z, np.float64)
    half = 0.5 * float(np.median(np.abs(np.diff(z)))) + 1e-6
    for side in (np.arange(a + 1, len(z)), np.arange(a - 1, -1, -1)):
        if not len(side):
            continue
        dist = np.abs(z[side] - z[a])
        k = int(np.argmin(np.abs(dist - d)))
        if abs(dist[k] - d) <= half or (k == 0 and d < dist[0]):
            return int(side[k])
    return None


def _hash_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def run_identify(ws_path, out_dir, settings: IdentifySettings, progress: Progress | None = None,
                 cancel: Callable[[], bool] | None = None, model=None) -> dict[str, Any]:
    """The thesis 7.5 protocol end to end (module docstring); returns the report dict.

    model: an already trained VAE to skip training (its training set is then not
    guaranteed to be the references only; the report says so).
    """
    from training.explore.similarity import compare_rows
    from training.latent import similarity
    from training.store.workspace import Workspace, write_arrays_workspace
    from training.vae.metrics import evaluate_rows

    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Workspace.open(ws_path) as ws:
        if ws.preprocess.mode == "3d":
            raise ValueError("the identify experiment compares slices: it needs a 2D workspace")
        plan = plan_queries(ws, settings.slice_a, settings.distances_mm, settings.entries)
        pre, shape, source_hash = ws.preprocess, tuple(ws.image_shape), ws.data_hash
        ref_images = ws.read_images(plan.ref_rows)
        ref_labels = ws.read_labels(plan.ref_rows) if pre.n_classes else None
    train_hash = _hash_arrays(ref_images, *(() if ref_labels is None else (ref_labels,)))
    summary = None
    if model is None:
        train_ws = out_dir / "train_slices.h5"
        if train_ws.exists():
            train_ws.unlink()
        images = {n: ref_images[k:k + 1] for k, n in enumerate(plan.names)}
        labels = None if ref_labels is None else {n: ref_labels[k:k + 1] for k, n in enumerate(plan.names)}
        write_arrays_workspace(train_ws, images, labels, preprocess=pre, roi_names=pre.rois, test_fraction=0.0,
                               patients=dict(zip(plan.names, plan.patients)))
        model, summary = _train(train_ws, settings, pre, shape, out_dir / "model", progress, cancel)
    model.eval()
    results = []
    recon = {}
    with Workspace.open(ws_path) as ws:
        recon["references (trained on)"] = evaluate_rows(
            model, ws, plan.ref_rows, hu_min=pre.hu_min, hu_max=pre.hu_max, roi_names=pre.rois,
            n_classes=model.cfg.n_classes)
        for step, (d, (sel, rows, actual)) in enumerate(plan.queries.items()):
            if cancel is not None and cancel():
                raise InterruptedError("cancelled")
            if progress is not None:
                progress("identifying", step, len(plan.queries))
            if len(sel) < 2:
                results.append({"distance_mm": d, "n": int(len(sel)), "actual_mm_mean": None, "methods": {}})
                continue
            comp = compare_rows(model, ws, plan.ref_rows[sel], rows, [plan.names[k] for k in sel],
                                [plan.patients[k] for k in sel], settings.level, cancel=cancel)
            recon[f"queries at {d:g} mm"] = evaluate_rows(
                model, ws, rows, hu_min=pre.hu_min, hu_max=pre.hu_max, roi_names=pre.rois,
                n_classes=model.cfg.n_classes)
            results.append({"distance_mm": d, "n": int(len(sel)), "actual_mm_mean": float(actual.mean()),
                            "actual_mm_range": [float(actual.min()), float(actual.max())],
                            "methods": {m: sc.to_dict() for m, sc in comp.scores.items()}})
    if progress is not None:
        progress("identifying", len(plan.queries), len(plan.queries))
    report = {
        "experiment": "identify",
        "protocol": "thesis 7.5: trained on slice a of every entry only; queries at the distances, never trained on",
        "settings": asdict(settings),
        "workspace": str(ws_path),
        "data_hash": source_hash,
        "training_subset_hash": train_hash,
        "preprocess": pre.to_dict(),
        "entries": [{"entry": n, "patient": p, "slice_a": int(r[1]), "dz_mm": float(dz)}
                    for n, p, r, dz in zip(plan.names, plan.patients, plan.ref_rows, plan.spacing)],
        "methods": dict(similarity.METHODS),
        "results": results,
        "reconstruction": recon,
        "trained_here": summary is not None,
        "training": None if summary is None else {
            "status": summary.status, "epochs": summary.epochs_completed, "seconds": summary.seconds,
            "final_train_loss": (summary.final_train or {}).get("total"),
            "model_config": _read_json(out_dir / "model" / "history.json").get("model_config"),
            "train_config": _read_json(out_dir / "model" / "history.json").get("train_config")},
        "seconds": time.time() - t0,
    }
    write_identify_report(out_dir, report)
    return report


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def identify_rows(report: dict) -> list[dict[str, Any]]:
    """Flat table rows: distance, n, unit, method, identified, fraction, top-3, mean rank.
    n counts the query series (one per entry; at level patient a series nearest another
    series of its own patient counts as identified)."""
    rows = []
    for r in report["results"]:
        for m, s in r["methods"].items():
            rows.append({"distance_mm": r["distance_mm"], "actual_mm_mean": r["actual_mm_mean"], "n": r["n"],
                         "unit": s.get("unit", "series"), "method": m, "n_identified": s["n_identified"],
                         "fraction": s["n_identified"] / r["n"] if r["n"] else None,
                         "n_top3": s["n_top3"], "mean_rank": s["mean_rank"]})
    return rows


def identify_table(report: dict) -> str:
    """The table as text (the same as identify.csv)."""
    lines = [f"{'distance':>9} {'actual':>7} {'method':<13} {'identified':>11} {'top-3':>7} {'mean rank':>9}  unit"]
    for r in identify_rows(report):
        lines.append(f"{r['distance_mm']:>6g} mm {r['actual_mm_mean']:>7.1f} {r['method']:<13} "
                     f"{r['n_identified']:>4} of {r['n']:<3} {r['n_top3']:>3} of {r['n']:<3} {r['mean_rank']:>6.2f}"
                     f"  {r['unit']}")
    return "\n".join(lines)


def write_identify_report(out_dir: Path, report: dict) -> list[Path]:
    """identify.csv, identify.svg, report.json and README.md in `out_dir`. identify.csv
    starts with its plain header row (no '#' comment line: spreadsheets and naive readers
    trip on it); the protocol, level and data hash are in report.json beside it ("protocol",
    "settings"."level", "data_hash") and at the top of README.md."""
    import csv
    import io

    rows = identify_rows(report)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["distance_mm"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return [atomic_write_text(out_dir / "identify.csv", buf.getvalue()),
            atomic_write_text(out_dir / "identify.svg", identify_svg(report)),
            atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, default=str) + "\n"),
            atomic_write_text(out_dir / "README.md", _identify_markdown(report))]


_SVG_COLOURS = {"kl_directed": "#d62728", "kl_symmetric": "#ff7f0e", "euclidean_mu": "#9467bd",
                "pixel_l2": "#1f77b4", "recon_l2": "#2ca02c"}


def identify_svg(report: dict, width: int = 640, height: int = 400) -> str:
    """Fraction identified vs distance (mm), one line per method."""
    left, right, top, bottom = 60, 190, 30, 50
    pw, ph = width - left - right, height - top - bottom
    res = [r for r in report["results"] if r["methods"]]
    xs = [r["distance_mm"] for r in res] or [0.0, 1.0]
    x0, x1 = 0.0, max(xs) * 1.05 or 1.0

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + (1.0 - y) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">Identification vs distance (level: '
           f'{report["settings"]["level"]}, {report["data_hash"][:12]})</text>']
    for k in range(6):
        y = k / 5
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{x:g}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="black"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">distance from the trained '
               f'slice (mm)</text>')
    out.append(f'<text transform="translate(16 {top + ph / 2}) rotate(-90)" text-anchor="middle">fraction '
               f'nearest to self</text>')
    methods = list(report["methods"])
    for k, m in enumerate(methods):
        pts = [(r["distance_mm"], r["methods"][m]["n_identified"] / r["n"]) for r in res if m in r["methods"]]
        colour = _SVG_COLOURS.get(m, "#555")
        if pts:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for x, y in pts:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        ly = top + 10 + 20 * k
        out.append(f'<line x1="{left + pw + 15}" x2="{left + pw + 40}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 46}" y="{ly + 4}">{m}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _identify_markdown(report: dict) -> str:
    s = report["settings"]
    t = report.get("training") or {}
    lines = ["# Identification vs distance (thesis 7.5 protocol)", "",
             f"- protocol: {report['protocol']}",
             f"- workspace `{report['workspace']}`, data hash `{report['data_hash']}`; training subset hash "
             f"`{report['training_subset_hash']}`",
             f"- {len(report['entries'])} entries, level {s['level']}; slice a = "
             f"{'middle' if s['slice_a'] is None else s['slice_a']}; distances {s['distances_mm']} mm",
             f"- preset {s['preset'] or 'project defaults'}, epochs {s['epochs']}, overrides {s['model']} {s['train']}",
             f"- training: {t.get('status', 'not trained here')}, {t.get('seconds', 0):.0f} s", "",
             "```", identify_table(report), "```", "",
             "Methods: " + "; ".join(f"`{k}` = {v}" for k, v in report["methods"].items()), ""]
    for what, m in report["reconstruction"].items():
        from training.vae.metrics import format_metrics

        lines.append(f"- reconstruction, {what}: {format_metrics(m)}")
    return "\n".join(lines) + "\n"


# -- recon, manifold, samples ------------------------------------------------------------------------


def run_simple(name: str, ws_path, out_dir, settings: RunSettings, checkpoint=None,
               progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
               n: int = 8, seed: int = 0) -> dict[str, Any]:
    """recon / manifold / samples (module docstring); returns a small report dict."""
    from training.images import compose_grid, write_png
    from training.latent import encode as latent
    from training.latent.sampling import sample_prior
    from training.store.workspace import Workspace
    from training.vae.checkpoint import load_model

    if name not in ("recon", "manifold", "samples"):
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Workspace.open(ws_path) as ws:
        pre, shape, data_hash = ws.preprocess, tuple(ws.image_shape), ws.data_hash
    report: dict[str, Any] = {"experiment": name, "workspace": str(ws_path), "data_hash": data_hash,
                              "settings": asdict(settings), "files": []}
    if name == "manifold" and checkpoint is None:
        settings.model.setdefault("latent_dim", 2)  # the thesis' manifold is over z ∈ R²
    if name == "recon" and checkpoint is None:
        settings.train.setdefault("recon_every", max(1, settings.epochs // 10))
        settings.train.setdefault("metrics_images", 16)
    if checkpoint is None:
        model, summary = _train(Path(ws_path), settings, pre, shape, out_dir / "model", progress, cancel)
        checkpoint = out_dir / "model" / "last.pt"
        report["training"] = {"status": summary.status, "epochs": summary.epochs_completed,
                              "seconds": summary.seconds}
    else:
        model, _ = load_model(checkpoint)
    report["checkpoint"] = str(checkpoint)
    model.eval()
    files = []
    if name == "recon":
        from training.vae import recon_history

        for epoch, arrays in recon_history.load_snapshots(Path(checkpoint).parent):
            rows = []
            for split in recon_history.SPLITS:
                if f"{split}_input" in arrays:
                    rows += [arrays[f"{split}_input"], arrays[f"{split}_recon"]]
            if rows:
                k = min(len(r) for r in rows)
                grid = compose_grid(_middle(np.stack([r[:k] for r in rows]), 2), pad=2)
                files.append(write_png(out_dir / f"recon_epoch_{epoch:05d}.png", grid))
        hist = _read_json(Path(checkpoint).parent / "history.json").get("history", [])
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["epoch", "split", "loss_total", "mae_hu", "psnr_db", "ssim"])
        for row in hist:
            for split in ("train", "test"):
                m = (row.get("metrics") or {}).get(split) or {}
                terms = row.get(split) or {}
                w.writerow([row["epoch"], split, terms.get("total"), m.get("mae_hu"), m.get("psnr_db"), m.get("ssim")])
        files.append(atomic_write_text(out_dir / "recon_metrics.csv", buf.getvalue()))
    elif name == "manifold":
        if model.cfg.latent_dim < 2:
            raise ValueError("a manifold needs a latent space of 2 or more dimensions")
        mf = latent.manifold(model, n=n, dims=(0, 1), prior_sigma2=_prior(checkpoint))
        files.append(write_png(out_dir / "manifold.png", compose_grid(_middle(mf.images, 2), pad=1)))
    else:
        z = sample_prior(n * n, model.cfg.latent_dim, prior_sigma2=_prior(checkpoint), seed=seed)
        dec = latent.decode(model, z)
        ct = dec.ct.reshape(n, n, *dec.ct.shape[1:])
        files.append(write_png(out_dir / "samples.png", compose_grid(_middle(ct, 2), pad=1)))
    report["files"] = [str(f) for f in files]
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, default=str) + "\n")
    return report


def _middle(images: np.ndarray, lead: int) -> np.ndarray:
    """3D volumes (lead axes, D, H, W) → their middle slice; 2D images unchanged."""
    return images[(slice(None),) * lead + (images.shape[lead] // 2,)] if images.ndim == lead + 3 else images


def _prior(checkpoint) -> float:
    from training.latent.encode import prior_sigma2_of
    from training.vae.checkpoint import load_checkpoint

    return prior_sigma2_of(load_checkpoint(checkpoint))
