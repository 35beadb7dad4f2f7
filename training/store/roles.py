"""Moving workspace entries between the cohort and the queries (issue 16).

A query entry (``workspace.ROLE_QUERY``) is a patient added to be compared with the
cohort ("Find similar patients…", ``ct-vae query``): it is never trained on and takes no
part in the split or the data hash. `set_roles` is the only way an entry changes side:
the user moves a query into the cohort (it then joins its patient's split, and the data
hash changes, so models trained before no longer match), or a cohort entry out of it.

The change is written like every workspace change, under the one-writer lock: the roles
live in the head's entry table, so a new head replaces the old one atomically
(workspace.Merger); no entry file is rewritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from training.store import workspace as wsmod
from training.store.ingest import workspace_lock


def set_roles(path: str | os.PathLike, roles: dict[str, str]) -> list[str]:
    """Give entries (by label, e.g. "PAT-0003-2") a role: "" = cohort, "query".

    Returns the labels whose role changed (an entry already in that role is left alone;
    nothing changed → the workspace file is not rewritten). KeyError names an unknown
    label, ValueError an unknown role.
    """
    path = Path(path)
    for label, role in roles.items():
        if role not in wsmod.ROLES:
            raise ValueError(f"{label}: role must be one of {wsmod.ROLES}, got {role!r}")
    with workspace_lock(path):
        with wsmod.Workspace.open(path) as ws:
            current = {p.pseudonym: p.role for p in ws.patients}
        unknown = [k for k in roles if k not in current]
        if unknown:
            raise KeyError(f"{path}: no entries {', '.join(unknown)}")
        changed = {k: r for k, r in roles.items() if current[k] != r}
        if not changed:
            return []
        m = wsmod.Merger(path)
        m.roles = dict(changed)
        m.finish(provenance={"time": wsmod.now_iso(), "action": "set_roles",
                             "roles": {k: (r or "cohort") for k, r in sorted(changed.items())}})
        return sorted(changed)


def move_to_cohort(path: str | os.PathLike, labels) -> list[str]:
    """Query entries → cohort (they will be trained on from the next training run)."""
    return set_roles(path, {str(k): "" for k in labels})


def mark_as_query(path: str | os.PathLike, labels) -> list[str]:
    """Entries → queries (never trained on; models trained with them no longer match)."""
    return set_roles(path, {str(k): wsmod.ROLE_QUERY for k in labels})
