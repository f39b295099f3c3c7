"""`pacs-engine trash`: what deletes took, listed, emptied for good, or restored."""

from __future__ import annotations

import argparse

from pacs_engine.cli._common import fail, megabytes
from pacs_engine.cli.correct import actor, apply_correction, audit, one_line, open_corrections


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `trash`."""
    trash = commands.add_parser(
        "trash",
        help="list, empty or restore from the trash of deletes",
        description="Deleted studies, series and instances stay in ARCHIVE/trash (or, for part "
        "of a series, where they were) until their keep time is over and the trash is "
        "emptied; until then `--restore ID` brings them back.",
    )
    trash.add_argument("archive", help="the archive folder")
    action = trash.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="list what the trash holds")
    action.add_argument("--empty", action="store_true", help="remove what is past its keep time")
    action.add_argument("--restore", metavar="ID", help="restore this delete")
    trash.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="with --empty: remove what was deleted more than DAYS ago, whatever its keep time",
    )
    trash.set_defaults(run=cmd_trash)


def cmd_trash(args: argparse.Namespace) -> int:
    """List, empty or restore from the trash."""
    from pacs_engine.archive import open_archive
    from pacs_engine.archive.corrections import load_records

    if args.older_than is not None and not args.empty:
        return fail("trash", "--older-than goes with --empty", 2)
    if args.list:
        with open_archive(args.archive) as archive:
            held = [
                c.summary()
                for c in load_records(archive.path)
                if c.kind == "delete" and not c.undone_by and not c.emptied
            ]
        for record in held:
            print(one_line(record))
        print(f"{len(held)} deletes in the trash")
        return 0
    with open_archive(args.archive, readonly=False) as archive:
        corrections = open_corrections(archive)
        if args.restore:
            planned = corrections.undo(args.restore, "restore from the trash", actor())
            args.dry_run, args.json = False, False
            return apply_correction(archive, corrections, planned, args)
        emptied, freed = corrections.empty_trash(args.older_than)
        if emptied:
            studies = sorted({s for c in emptied for s in c.studies})
            ids = ", ".join(c.id for c in emptied)
            audit(archive, "trash empty", studies, f"deletes removed for good: {ids}")
    print(f"emptied {len(emptied)} deletes from the trash, {megabytes(freed)} freed")
    for correction in emptied:
        print(f"  {correction.id}")
    return 0
