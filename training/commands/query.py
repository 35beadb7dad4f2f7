"""`ct-vae query`: the most similar earlier patients for a new patient's DICOM folder.

    ct-vae query RUN/last.pt W.h5 FOLDER --top 5 --out REPORT/

The folder is ingested with the workspace's own preprocessing as a QUERY entry (never
trained on: training/store/workspace.py ROLE_QUERY), encoded with the model, and every
cohort patient is ranked (training/explore/query.py). REPORT/ receives ranking.csv (every
cohort patient, best first, with the baselines) and ranking.json (the direction of the
divergence, how a patient's posterior is formed, what each column means), roi_volumes.csv
and roi_volumes.json (how a volume is measured), report.png and report.pdf (pseudonyms
only). With several CT series in
the folder, one sub-folder per query. --no-store ingests into a temporary workspace with
the same preprocessing instead (deleted afterwards), leaving W.h5 untouched; the query is
then called QUERY and is never linked to a stored patient (its pseudonym comes from the
temporary workspace's own key), so same_patient is False throughout.

The encoded cohort is kept beside the model, RUN/encoded/<model>-<data hash>.npz
(training/explore/query.py, encode_cohort): the next query with the same model and the
same cohort reads it instead of encoding every cohort image again. It holds posteriors,
mean images and entry labels (pseudonyms), no names or IDs; a file that does not match
the model and the data is ignored and rewritten. --no-cache neither reads nor writes it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "query",
        help="rank the workspace's patients by similarity to a new patient's DICOM folder; CSV + PDF/PNG report",
        description="Ingest FOLDER as a query (never trained on), encode it and rank every earlier "
        "patient by KL(q_query || q_j) between posteriors (the direction of the thesis' identification "
        "experiment; --direction for the reverse or the symmetric mean), with Euclidean and pixel "
        "baselines, images at paired positions and ROI volumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p)
    p.add_argument("folder", type=Path, nargs="+", help="DICOM folder(s) of the new patient (CT + RTSTRUCT)")
    p.add_argument("--top", type=int, default=5, help="matches shown with images and ROI volumes")
    p.add_argument("--out", type=Path, required=True, help="report folder to write")
    p.add_argument("--direction", choices=("query", "reverse", "symmetric"), default="query",
                   help="query: KL(q_query||q_j); reverse: KL(q_j||q_query); symmetric: their mean")
    p.add_argument("--aggregate", choices=("mixture", "product", "middle"), default="mixture",
                   help="per-patient posterior from its slices (training/latent/encode.py)")
    p.add_argument("--no-store", action="store_true",
                   help="do not add the query to the workspace (a temporary workspace is used)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the encoded cohort beside the model (RUN/encoded/); "
                        "without it, the first query encodes the cohort once and later ones read it")
    p.add_argument("--workers", type=int, default=1,
                   help="ingest worker processes (a query is usually one series: 1, no process pool, was "
                        "fastest; see benchmarks/README.md)")
    p.set_defaults(func=lambda a: common.run(main, a))


def _ingest(folders, ws_path: Path, preprocess, workers: int):
    from training.store.ingest import ingest
    from training.store.workspace import ROLE_QUERY, WorkspaceError

    def show(phase, done, total, msg):
        if phase == "ingest" and total:
            print(f"\ringesting query: {done}/{total}", end="" if done < total else "\n", file=sys.stderr,
                  flush=True)

    try:
        return ingest([str(f) for f in folders], ws_path, preprocess, role=ROLE_QUERY, workers=workers,
                      progress=show)
    except (WorkspaceError, OSError) as exc:
        raise common.CommandError(str(exc)) from exc


def main(args) -> int:
    from training.explore import query as xq
    from training.explore.query_report import write_report
    from training.latent.encode import check_model_fits

    for f in args.folder:
        if not f.exists():
            raise common.CommandError(f"{f}: no such folder")
    if not args.workspace.exists():
        raise common.CommandError(f"{args.workspace}: no such workspace (ingest the cohort first)")
    model, ckpt = common.load(args)
    with common.open_workspace(args.workspace) as ws:
        try:
            check_model_fits(model, ws)
        except ValueError as exc:
            raise common.CommandError(str(exc)) from exc
        preprocess = ws.preprocess
        if ckpt.data_hash and ckpt.data_hash != ws.data_hash:
            print(f"note: {args.checkpoint} was trained on other data than {args.workspace} holds now",
                  file=sys.stderr)
    store = None if args.no_cache else args.checkpoint.resolve().parent / "encoded"
    tmp = tempfile.TemporaryDirectory(prefix="ct-vae-query-") if args.no_store else None
    try:
        q_path = Path(tmp.name) / "query.h5" if tmp else args.workspace
        rep = _ingest(args.folder, q_path, preprocess, args.workers)
        for rel, why in rep.skipped:
            print(f"skipped {rel}: {why}", file=sys.stderr)
        labels = list(rep.added) + [k for k in rep.unchanged if k not in rep.added]
        if not labels:
            raise common.CommandError(f"{', '.join(map(str, args.folder))}: no usable CT series found")
        with common.open_workspace(args.workspace) as ws:
            qws = common.open_workspace(q_path) if tmp else None
            try:
                for n, label in enumerate(labels):
                    src = qws or ws
                    info = src.patients[src.patient_index(label)]
                    name = label if not tmp else ("QUERY" if len(labels) == 1 else f"QUERY-{n + 1}")
                    if not tmp and not info.is_query:
                        print(f"note: {label} is already in the cohort; ranked against the other patients",
                              file=sys.stderr)
                    try:
                        ans = xq.answer_query(model, ws, label, top=args.top, direction=args.direction,
                                              aggregate=args.aggregate, batch_size=args.batch_size,
                                              progress=common.progress_printer("encoding the cohort"),
                                              query_ws=qws, query_name=name if tmp else None,
                                              store=store)
                    except ValueError as exc:
                        raise common.CommandError(str(exc)) from exc
                    if ans.cohort_source == "file":
                        print(f"cohort: {ans.n_cohort} patients' posteriors {ans.cohort_note} "
                              f"({ans.seconds['cohort']:.2f} s)", file=sys.stderr)
                    elif ans.cohort_source == "encoded":
                        print(f"cohort: encoded in {ans.seconds['cohort']:.2f} s"
                              + (f"; cache {ans.cohort_note}" if ans.cohort_note else ""), file=sys.stderr)
                    out = args.out if len(labels) == 1 else args.out / name
                    paths = write_report(ans, out)
                    print(f"query {name}: {ans.n_query_images} images, ranked against {ans.n_cohort} patients "
                          f"by {ans.definition}")
                    for m in ans.matches:
                        same = "  (same patient)" if m.same_patient else ""
                        print(f"  #{m.rank} {m.name}: {m.divergence:.6g}  (Euclidean rank {m.euclid_rank}, "
                              f"pixel L2 rank {m.pixel_rank}){same}")
                    print("wrote " + ", ".join(str(paths[k]) for k in
                                               ("csv", "csv_json", "volumes", "volumes_json", "png", "pdf")
                                               if k in paths))
                    if tmp is None:
                        print(f"{label} is stored in {args.workspace} as a query (never trained on)")
            finally:
                if qws is not None:
                    qws.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0
