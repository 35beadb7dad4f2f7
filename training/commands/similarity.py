"""`ct-vae similarity`: the KL matrix between posteriors (per patient, per CT series or per
image) as CSV, and the nearest rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.commands import _latent_common as common

LEVEL_HELP = (
    "what a row is: patient = one posterior per patient, aggregated (--aggregate) from the "
    "slices of all its CT series (as encoded_patients.csv of `ct-vae encode`; --aggregate middle: "
    "the middle slice of its series placed one after the other); series = one "
    "posterior per CT series (workspace entry; a patient may have several); image = one per "
    "slice. The CSV's first header cell names the rows' unit; its column 'patient' names the "
    "patient (pseudonym) of each row."
)


def register(sub) -> None:
    p = sub.add_parser(
        "similarity",
        help="KL(q_i || q_j) between patients' (or series', images') posteriors as CSV, with nearest rows",
        description="Encode a workspace and write the matrix of divergences between the "
        "posteriors of its patients (--level patient), CT series (--level series) or single "
        "images (--level image). " + common.KL_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p)
    common.add_encode_args(p)
    p.add_argument("--level", choices=("patient", "series", "image"), default="patient", help=LEVEL_HELP)
    p.add_argument("--symmetric", action="store_true", help="0.5*(KL(q_i||q_j) + KL(q_j||q_i))")
    p.add_argument("--nearest", type=int, default=3, help="print the k nearest of every row (0: none)")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    p.set_defaults(func=lambda a: common.run(main, a))


def posteriors(enc, patient_of: dict[str, str], level: str, aggregate: str):
    """(mu, logvar, row names, patient of each row) at `level` ("patient", "series" or
    "image"). patient_of: series label → patient pseudonym. The patient level regroups the
    series of a patient (training.commands.encode.by_patient) before aggregating, so a
    patient with two series has one posterior from the slices of both."""
    from training.commands.encode import by_patient
    from training.latent import encode as latent

    if level == "patient":
        pp = latent.aggregate_patients(by_patient(enc, patient_of), aggregate)
        return pp.mu, pp.logvar, pp.names, list(pp.names)
    if level == "series":
        pp = latent.aggregate_patients(enc, aggregate)
        return pp.mu, pp.logvar, pp.names, [patient_of.get(n, n) for n in pp.names]
    if level == "image":
        return (enc.mu, enc.logvar, enc.labels,
                [patient_of.get(enc.names[s], enc.names[s]) for s in enc.rows[:, 0]])
    raise ValueError(f"level must be 'patient', 'series' or 'image', got {level!r}")


def main(args) -> int:
    from training.latent import similarity
    from training.store.units import plural, series_of_patients

    model, _ = common.load(args)
    with common.open_workspace(args.workspace) as ws:
        enc = common.encode(model, ws, args)
        patient_of = {p.pseudonym: p.patient or p.pseudonym for p in ws.patients}
    mu, lv, names, patients = posteriors(enc, patient_of, args.level, args.aggregate)
    d = similarity.similarity_matrix(mu, lv, symmetric=args.symmetric)
    similarity.write_matrix_csv(args.out, d, names, args.symmetric, patients=patients, unit=args.level)
    n_series = len({int(s) for s in enc.rows[:, 0]})
    n_patients = len(set(patients))
    of = series_of_patients(n_series, n_patients)
    print(f"wrote {args.out}: {len(names)}×{len(names)}, one row per {args.level} ("
          + (f"{plural(len(names), 'image')} of {of}" if args.level == "image" else of)
          + (f", aggregate {args.aggregate}" if args.level != "image" else "") + "); "
          + (similarity.SYMMETRIC_DEFINITION if args.symmetric else similarity.KL_DIRECTION))
    if args.nearest > 0:
        idx, vals = similarity.nearest_all(d, args.nearest)
        for i, name in enumerate(names):
            near = ", ".join(f"{names[j]} ({v:.4g})" for j, v in zip(idx[i], vals[i]))
            print(f"{name}: {near}")
    return 0
