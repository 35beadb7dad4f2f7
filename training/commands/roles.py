"""`ct-vae roles`: list the query entries of a workspace, or move entries between the
queries and the cohort (training/store/roles.py; the Query tab's "Move into cohort").

    ct-vae roles W.h5                              # the queries, one label a line
    ct-vae roles W.h5 --to-cohort PAT-0003-2       # a query becomes training data
    ct-vae roles W.h5 --to-query PAT-0007          # a cohort entry becomes a query

A query (`ct-vae query`, the Query tab) is never trained on and takes no part in the split
or the data hash. Moving one into the cohort gives it its patient's split and changes the
data hash: models trained before no longer match the workspace (ct-vae query and the
explorer say so), the next training run uses it, and the encoded cohort kept beside a model
(RUN/encoded/) no longer matches, so the next query encodes the cohort again. Marking a
cohort entry as a query takes it out of training from the next run, with the same effect
on the data hash. Nothing is re-derived; only the workspace's head is rewritten (under
the writer lock, atomically). Labels are entry pseudonyms, as `ct-vae info` lists them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.commands import _latent_common as common


def register(sub) -> None:
    p = sub.add_parser(
        "roles",
        help="list query entries, or move entries between the queries and the cohort (changes the data hash)",
        description="Without options, print the workspace's query entries (never trained on). "
        "--to-cohort makes queries ordinary training data (they join their patient's split); "
        "--to-query takes cohort entries out of training. A move changes the workspace's data hash: "
        "models trained before no longer match it, and the encoded cohort kept beside a model "
        "(RUN/encoded/) is encoded again at the next query. Nothing is re-derived.",
    )
    p.add_argument("workspace", type=Path, help="workspace file (.h5)")
    p.add_argument("--to-cohort", nargs="+", default=[], metavar="LABEL",
                   help="query entries to move into the cohort (trained on from the next run)")
    p.add_argument("--to-query", nargs="+", default=[], metavar="LABEL",
                   help="cohort entries to mark as queries (never trained on)")
    p.set_defaults(func=lambda a: common.run(main, a))


def main(args: argparse.Namespace) -> int:
    from training.store.roles import set_roles
    from training.store.workspace import ROLE_QUERY, WorkspaceError

    if not args.workspace.exists():
        raise common.CommandError(f"{args.workspace}: no such workspace")
    both = set(args.to_cohort) & set(args.to_query)
    if both:
        raise common.CommandError(f"{', '.join(sorted(both))}: asked for both --to-cohort and --to-query")
    with common.open_workspace(args.workspace) as ws:
        before = ws.data_hash
        queries = [p.pseudonym for p in ws.patients if p.is_query]
    if not args.to_cohort and not args.to_query:
        for label in queries:
            print(label)
        if not queries:
            print(f"{args.workspace}: no query entries", flush=True)
        return 0
    roles = {**{k: "" for k in args.to_cohort}, **{k: ROLE_QUERY for k in args.to_query}}
    try:
        changed = set_roles(args.workspace, roles)
    except KeyError as exc:
        raise common.CommandError(str(exc.args[0] if exc.args else exc)) from exc
    except (ValueError, WorkspaceError, OSError) as exc:
        raise common.CommandError(str(exc)) from exc
    with common.open_workspace(args.workspace) as ws:
        after = ws.data_hash
    for label in sorted(roles):
        side = "the cohort (training data)" if roles[label] == "" else "the queries (never trained on)"
        print(f"{label}: {'moved to' if label in changed else 'already in'} {side}")
    if before != after:
        print(f"data hash {before} -> {after}: models trained before no longer match this workspace")
    else:
        print(f"data hash unchanged ({after})")
    return 0
