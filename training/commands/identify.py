"""`ct-vae identify`: the identification experiment of thesis 7.5."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path


from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "identify",
        help="is each patient's slice b nearest (by KL) to its own slice a? (thesis 7.5)",
        description="Encode slice A and slice B of every CT series (workspace entry; a patient "
        "may have several); for each series rank all series' slice A by KL(q_b,i || q_a,j) "
        "(query i = series i's slice B, reference j = series j's slice A) and count those whose "
        "own slice is nearest: per patient with --level patient (a patient counts when the "
        "query of each of its series is nearest one of its own series), per series with "
        "--level series. Prints the count with its unit, the mean divergence for the same and "
        "different series and the confused series; writes OUT/identify.csv (one row per series "
        "with its patient), OUT/identify_kl.csv (rows: series, column 'patient' names each "
        "row's patient) and OUT/identify.json. Slices are indices into each series' "
        "preprocessed images (negative counts from the end); series with too few images are "
        "left out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p)
    p.add_argument("--slice-a", type=int, default=0)
    p.add_argument("--slice-b", type=int, default=2)
    p.add_argument("--split", choices=("train", "test", "all"), default="all")
    p.add_argument("--symmetric", action="store_true", help="rank by 0.5*(KL(b||a) + KL(a||b))")
    p.add_argument("--level", choices=("patient", "series"), default="patient",
                   help="patient: a match to another CT series of the same patient is not a confusion, "
                        "counts per patient; series: only the query's own series counts, counts per series")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: print only)")
    p.set_defaults(func=lambda a: common.run(main, a))


def run_identification(model, ws, slice_a: int, slice_b: int, split=None, symmetric=False, batch_size=64,
                       level="patient"):
    from training.explore.similarity import identify_slices

    try:
        return identify_slices(model, ws, slice_a, slice_b, symmetric=symmetric, split=split,
                               batch_size=batch_size, level=level)
    except ValueError as exc:
        raise common.CommandError(f"{ws.path}: {exc}") from exc


def run_comparison(model, ws, slice_a: int, slice_b: int, split=None, batch_size=64, level="patient"):
    from training.explore.similarity import compare_slices

    try:
        return compare_slices(model, ws, slice_a, slice_b, split=split, level=level, batch_size=batch_size)
    except ValueError as exc:
        raise common.CommandError(f"{ws.path}: {exc}") from exc


def write_outputs(out: Path, res, slice_a: int, slice_b: int, patients=None) -> list[Path]:
    """identify.csv (one row per query series: its patient, nearest series, rank),
    identify_kl.csv (the query × reference matrix, rows are series, column "patient") and
    identify.json. patients: the patient of each row (default: res.patients).

    identify.json names every count by its unit: "n_series" (query rows), "n_patients"
    (distinct patients among them), "unit" ("patient" or "series", the level's) with
    "n" and "n_identified" in that unit, and "n_series_identified". (Files written before
    had "n_patients" and "n_identified" counting series and no "unit"; nothing in the
    project reads identify.json back.)

    Both CSVs start with a plain header row, no '#' comment line. The direction of the KL
    in identify.csv's kl_self and kl_nearest is identify.json's "direction" (the same text
    as identify_kl.csv's first header cell).
    """
    from training.atomic import atomic_write_text
    from training.latent.similarity import write_matrix_csv

    patients = [str(p) for p in (patients if patients is not None else res.patients)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # one row per CT series (PAT-0001, PAT-0001-2); "patient" says which rows belong to one patient
    w.writerow(["series", "patient", "nearest", "nearest_patient", "rank_of_self", "kl_self", "kl_nearest"])
    for i, name in enumerate(res.names):
        j = int(res.nearest[i])
        w.writerow([name, patients[i], res.names[j], patients[j], int(res.rank_of_self[i]),
                    repr(float(res.kl[i, i])), repr(float(res.kl[i, j]))])
    summary = {
        "slice_a": slice_a,
        "slice_b": slice_b,
        "direction": res.direction,
        "level": res.level,
        "unit": res.unit,
        "n": res.n,
        "n_identified": res.n_identified,
        "n_series": res.n_series,
        "n_series_identified": res.n_series_identified,
        "n_patients": res.n_patients,
        "mean_kl_same_series": res.mean_same,
        "mean_kl_different_series": res.mean_different,
        "confused": [{"series": res.names[i], "patient": patients[i], "nearest": res.names[j],
                      "nearest_patient": patients[j], "kl_nearest": v, "kl_self": s}
                     for i, j, v, s in res.confusions],
    }
    # The matrix CSV's rows are queries (slice b), columns references (slice a), both series.
    mpath = out / "identify_kl.csv"
    write_matrix_csv(mpath, res.kl, res.names, symmetric=False, definition=res.direction, patients=patients,
                     unit="series")
    return [
        atomic_write_text(out / "identify.csv", buf.getvalue()),
        mpath,
        atomic_write_text(out / "identify.json", json.dumps(summary, indent=2) + "\n"),
    ]


def main(args) -> int:
    model, _ = common.load(args)
    split = None if args.split == "all" else args.split
    with common.open_workspace(args.workspace) as ws:
        res = run_identification(model, ws, args.slice_a, args.slice_b, split, args.symmetric, args.batch_size,
                                 args.level)
        comp = run_comparison(model, ws, args.slice_a, args.slice_b, split, args.batch_size, args.level)
    print(f"slice a = {args.slice_a}, slice b = {args.slice_b}; level: {args.level} "
          f"(counted per {args.level})")
    print(res.summary())
    print()
    print("the same queries by every method (baselines beside the KL):")
    print(comp.table())
    if args.out is not None:
        for p in write_outputs(args.out, res, args.slice_a, args.slice_b, comp.patients):
            print(f"wrote {p}")
        from training.atomic import atomic_write_text

        doc = {"slice_a": args.slice_a, "slice_b": args.slice_b, **comp.to_dict()}
        print(f"wrote {atomic_write_text(args.out / 'identify_methods.json', json.dumps(doc, indent=2) + chr(10))}")
    return 0
