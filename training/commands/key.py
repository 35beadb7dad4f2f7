"""`ct-vae key`: the pseudonym key that links workspace pseudonyms to PatientIDs.

    ct-vae key show              where this account's key is and its id
    ct-vae key export FILE       write it to FILE (0600) for a colleague
    ct-vae key import FILE       make FILE's key this account's key (--force to replace)
    ct-vae key migrate W.h5      key the pseudonyms of a workspace written before keys existed

The key never enters a workspace; see README "Privacy and safety" for what a workspace
alone does and does not reveal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "key",
        help="show, export or import the pseudonym key (kept outside workspaces)",
        description=(
            "Pseudonyms are keyed digests of PatientIDs; the key lives in this account's config "
            "folder (or the file named by CT_VAE_KEY_FILE), never in a workspace. A team adding "
            "to one workspace from several accounts shares one key: export it on one, import it "
            "on the others."),
    )
    sub = p.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    sub.add_parser("show", help="where the key is and its id (not the key)")
    e = sub.add_parser("export", help="write the key to FILE (mode 0600)")
    e.add_argument("file", type=Path)
    i = sub.add_parser("import", help="make FILE's key this account's key")
    i.add_argument("file", type=Path)
    i.add_argument("--force", action="store_true", help="replace a different existing key")
    m = sub.add_parser("migrate", help="key the pseudonyms of an older workspace now")
    m.add_argument("workspace", type=Path)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from training.commands._printable import printable
    from training.store.pseudonym_key import KeyError_, export_key, import_key, key_id, key_path, load_key
    from training.store.workspace import WorkspaceError

    try:
        if args.key_command == "show":
            print(f"pseudonym key {key_id(load_key())} in {printable(key_path())}")
        elif args.key_command == "export":
            export_key(args.file)
            print(f"pseudonym key {key_id(load_key())} written to {printable(args.file)}; "
                  "anyone holding it can test guessed PatientIDs against your workspaces")
        elif args.key_command == "import":
            kid = import_key(args.file, force=args.force)
            print(f"pseudonym key {kid} is now this account's key ({printable(key_path())})")
        elif args.key_command == "migrate":
            from training.store.lock import workspace_lock
            from training.store.pseudonym_key import migrate_workspace

            with workspace_lock(args.workspace):
                n = migrate_workspace(args.workspace, load_key())
            print(f"{printable(args.workspace)}: {n} pseudonym digest(s) keyed" if n else
                  f"{printable(args.workspace)}: already keyed; nothing to do")
    except (KeyError_, WorkspaceError, OSError) as exc:
        print(f"ct-vae key: {printable(exc)}", file=sys.stderr)
        return 1
    return 0
