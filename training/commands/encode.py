"""`ct-vae encode`: posteriors µ, σ per image and per patient, as CSV and NPZ."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="encode a workspace with a trained model: µ and σ per image and per patient",
        description="Encode every image of a workspace (eval mode: deterministic). Writes "
        "OUT/encoded_images.csv (one row per image), OUT/encoded_series.csv (one row per CT "
        "series, aggregated from its slices by --aggregate), OUT/encoded_patients.csv (one row "
        "per patient, aggregated from the slices of all its series), beside each of the last two "
        "a .json naming the aggregate, and OUT/encoded.npz (all arrays; its patient_* arrays "
        "are per series).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p)
    common.add_encode_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=lambda a: common.run(main, a))


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def by_patient(enc, patient_of: dict[str, str]):
    """enc with its rows regrouped from series to patients (a patient's series one after
    the other, slices in order within each), for a per-patient aggregate."""
    from training.latent.encode import Encoded

    pats = list(dict.fromkeys(patient_of.get(n, n) for n in enc.names))
    index = {p: k for k, p in enumerate(pats)}
    of_series = np.array([index[patient_of.get(n, n)] for n in enc.names], dtype=np.int64)
    rows = enc.rows.copy()
    offset = np.zeros(len(enc.names), dtype=np.int64)  # series after series within a patient
    end: dict[int, int] = {}
    for s in range(len(enc.names)):
        sel = enc.rows[:, 0] == s
        offset[s] = end.get(int(of_series[s]), 0)
        end[int(of_series[s])] = offset[s] + (int(enc.rows[sel, 1].max()) + 1 if sel.any() else 0)
    rows[:, 1] = enc.rows[:, 1] + offset[enc.rows[:, 0]]
    rows[:, 0] = of_series[enc.rows[:, 0]]
    splits = {int(of_series[s]): enc.splits[s] for s in range(len(enc.names))} if enc.splits else {}
    return Encoded(enc.mu, enc.logvar, rows, pats, [splits.get(k, "") for k in range(len(pats))] if splits else [])


def write_outputs(out: Path, enc, pp, patient_of: dict[str, str] | None = None) -> list[Path]:
    """patient_of: series label → patient pseudonym (a patient may have several series);
    without it each series counts as its own patient.

    Every CSV starts with its plain header row (no '#' comment line: spreadsheets and naive
    readers trip on it). How the posterior of a series and of a patient is formed is in a
    sidecar beside each aggregated CSV: encoded_series.json and encoded_patients.json
    ("aggregate": the method, "posterior": what it does, "source": where it is computed).
    """
    import json

    from training.atomic import atomic_save_npz, atomic_write_text
    from training.latent.encode import aggregate_patients

    def sidecar(name: str, rows: str, posterior: str) -> Path:
        doc = {"file": f"{name}.csv", "rows": rows, "aggregate": pp.method, "posterior": posterior,
               "columns": "mu_d, sigma_d: mean and standard deviation of the posterior in latent dimension d",
               "source": "training/latent/encode.py"}
        return atomic_write_text(out / f"{name}.json", json.dumps(doc, indent=1) + "\n")

    patient_of = patient_of or {}
    j = enc.mu.shape[1]
    cols = [f"mu_{d}" for d in range(j)] + [f"sigma_{d}" for d in range(j)]
    img_rows = [
        [enc.names[p], patient_of.get(enc.names[p], enc.names[p]), int(i), enc.splits[p] if enc.splits else ""]
        + [repr(float(v)) for v in np.r_[m, s]]
        for (p, i), m, s in zip(enc.rows, enc.mu, enc.sigma)
    ]
    series_rows = [
        [name, patient_of.get(name, name), int(n)] + [repr(float(v)) for v in np.r_[m, s]]
        for name, n, m, s in zip(pp.names, pp.n_images, pp.mu, pp.sigma)
    ]
    per_patient = aggregate_patients(by_patient(enc, patient_of), pp.method)
    pat_rows = [
        [name, sum(patient_of.get(s, s) == name for s in pp.names), int(n)] + [repr(float(v)) for v in np.r_[m, s]]
        for name, n, m, s in zip(per_patient.names, per_patient.n_images, per_patient.mu, per_patient.sigma)
    ]
    paths = [
        atomic_write_text(out / "encoded_images.csv", _csv(["series", "patient", "image", "split"] + cols, img_rows)),
        atomic_write_text(out / "encoded_series.csv", _csv(["series", "patient", "n_images"] + cols, series_rows)),
        sidecar("encoded_series", "one CT series (a patient may have several: column patient)",
                f"per-series posterior: {pp.method} of the slice posteriors of one CT series; a patient "
                "may have several series (column patient)"),
        atomic_write_text(out / "encoded_patients.csv", _csv(["patient", "n_series", "n_images"] + cols, pat_rows)),
        sidecar("encoded_patients", "one patient",
                f"per-patient posterior: {pp.method} of the slice posteriors of all the patient's series"),
        atomic_save_npz(
            out / "encoded.npz",
            mu=enc.mu,
            logvar=enc.logvar,
            rows=enc.rows,
            names=np.array(enc.names),
            splits=np.array(enc.splits),
            patient_mu=pp.mu,
            patient_logvar=pp.logvar,
            patient_names=np.array(pp.names),
            patient_n_images=pp.n_images,
            aggregate=np.array(pp.method),
        ),
    ]
    return paths


def main(args) -> int:
    from training.latent import encode as latent

    model, _ = common.load(args)
    from training.store.units import series_of_patients

    with common.open_workspace(args.workspace) as ws:
        enc = common.encode(model, ws, args)
        patient_of = {p.pseudonym: p.patient or p.pseudonym for p in ws.patients}
    pp = latent.aggregate_patients(enc, args.aggregate)
    for p in write_outputs(args.out, enc, pp, patient_of):
        print(f"wrote {p}")
    n_patients = len({patient_of.get(n, n) for n in pp.names})
    print(f"{len(enc.mu)} images of {series_of_patients(len(pp.names), n_patients)}, "
          f"latent dimension {enc.mu.shape[1]}")
    return 0
