"""`pacs-engine deid-key`: make the key of de-identified research copies."""

from __future__ import annotations

import argparse


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `deid-key`."""
    key = commands.add_parser(
        "deid-key",
        help="make a new key for `ingest --deidentify` (a file of 32 random bytes, mode 0600)",
        description="Write a new random key to KEY_FILE (mode 0600; an existing file is never "
        "overwritten). Pseudonyms, UIDs and date shifts of `ingest --deidentify` are keyed "
        "hashes of it: the same key gives the same research archive again, another key "
        "unlinkable ones. Keep it apart from the research archive.",
    )
    key.add_argument("key_file", metavar="KEY_FILE", help="the key file to create")
    key.set_defaults(run=cmd_deid_key)


def cmd_deid_key(args: argparse.Namespace) -> int:
    """Create a key file."""
    from pacs_engine.deid.key import make_key

    print(make_key(args.key_file))
    return 0
