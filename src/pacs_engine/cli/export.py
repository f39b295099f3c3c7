"""`pacs-engine export`: rebuild original files, byte for byte."""

from __future__ import annotations

import argparse


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `export`."""
    export = commands.add_parser(
        "export",
        help="rebuild original files, byte for byte",
        description="Write the original files as DESTINATION/<study>/<series>/<sop>.dcm "
        "(the current version of each instance), each checked against its sha256 first. UIDs "
        "become names safe on any filesystem (digits, lower-case letters and dots kept, other "
        "characters written _XX); links in DESTINATION are never written through.",
    )
    export.add_argument("archive", help="the archive folder")
    export.add_argument("destination", help="the folder to write to")
    export.add_argument(
        "--uid",
        dest="uids",
        action="append",
        metavar="SOP_INSTANCE_UID",
        help="export only this instance (repeatable)",
    )
    export.add_argument(
        "--all-versions",
        action="store_true",
        help="also write each earlier version of an instance (same SOP Instance UID and "
        "pixels, other bytes) as <sop>_v<n>.dcm, n from 1, oldest first",
    )
    export.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Rebuild original files from the archive, byte for byte."""
    from pacs_engine.archive import open_archive

    with open_archive(args.archive) as archive:
        uids = args.uids or None
        written = archive.export(args.destination, uids, all_versions=args.all_versions)
    print(f"{len(written):,} files written under {args.destination}")
    return 0
