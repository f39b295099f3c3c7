"""`pacs-engine keys`: the API keys of an archive's DICOMweb service accounts."""

from __future__ import annotations

import argparse


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys` (add, list, revoke)."""
    keys = commands.add_parser(
        "keys",
        help="API keys for DICOMweb service accounts (add, list, revoke)",
        description="API keys let a service account call the archive's DICOMweb service "
        "(`serve --http`) as `Authorization: Bearer KEY`. A key is printed once, when made; "
        "the archive keeps only its SHA-256 (ARCHIVE/auth/keys.json, mode 0600). "
        "A running server sees additions and revocations at once. See docs/dicomweb.md.",
    )
    actions = keys.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make a key and print it (once)")
    add.add_argument("archive", metavar="ARCHIVE", help="the archive folder")
    add.add_argument("name", metavar="NAME", help="the service account (letters, digits, . _ -)")
    add.add_argument(
        "--role",
        required=True,
        choices=("reader", "uploader", "admin"),
        help="reader: search and retrieve; uploader: store (STOW-RS); admin: everything",
    )
    listing = actions.add_parser("list", help="the keys: names, roles, dates (never a key)")
    listing.add_argument("archive", metavar="ARCHIVE", help="the archive folder")
    revoke = actions.add_parser("revoke", help="revoke a key (refused from then on)")
    revoke.add_argument("archive", metavar="ARCHIVE", help="the archive folder")
    revoke.add_argument("name", metavar="NAME", help="the key's name")
    keys.set_defaults(run=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    """Add, list or revoke API keys."""
    from pacs_engine.archive.format import ArchiveError, is_pacs_archive
    from pacs_engine.serve.web.auth import KeyStore

    if not is_pacs_archive(args.archive):
        raise ArchiveError(f"{args.archive}: not a pacs-engine archive")
    store = KeyStore(args.archive)
    if args.keys_action == "add":
        key = store.add(args.name, args.role)
        print(key)  # the only time it is shown: stdout, so that it can be piped to a vault
    elif args.keys_action == "revoke":
        store.revoke(args.name)
        print(f"revoked {args.name}")
    else:
        for entry in store.entries():
            state = f"revoked {entry.revoked}" if entry.revoked else "active"
            print(f"{entry.name}\t{entry.role}\tcreated {entry.created}\t{state}")
    return 0
