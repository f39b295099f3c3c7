"""`pacs-engine rebuild-index`: rebuild a damaged index from the header packs' rows files."""

from __future__ import annotations

import argparse


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `rebuild-index`."""
    rebuild = commands.add_parser(
        "rebuild-index",
        help="rebuild a damaged index from the header packs' rows files",
        description="Rebuild ARCHIVE's index from the rows files that ingest parts, copies "
        "and corrections write beside their header packs (a copy's renamed from .pending "
        "to .rows after its commit: `pacs-engine tidy` renames those a kill left, so run it "
        "first while the index is sound; docs/archive.md, 'Recovering a damaged index'); "
        "the old index is kept as index.damaged-<time>. Exits 1 if some instances could "
        "not be restored (header packs written before rows files existed, damaged rows files), "
        "2 if ARCHIVE is not an archive or an ingest runs.",
    )
    rebuild.add_argument("archive", help="the archive folder")
    rebuild.set_defaults(run=cmd_rebuild_index)


def cmd_rebuild_index(args: argparse.Namespace) -> int:
    """Rebuild the archive's index from its rows files."""
    from pacs_engine.archive import open_archive
    from pacs_engine.archive.rebuild import rebuild_index
    from pacs_engine.cli.correct import report_recovered

    rebuilt = rebuild_index(args.archive)
    if rebuilt.recovered:
        with open_archive(args.archive) as archive:
            report_recovered(archive, rebuilt.recovered)
    print(f"{rebuilt.rows:,} instances restored into a new index")
    if rebuilt.kept_as:
        print(f"the old index is kept as {rebuilt.kept_as}")
    if rebuilt.uncommitted:
        print(f"{rebuilt.uncommitted:,} rows of parts that were never committed were left out")
    if rebuilt.pending:
        # The new index lacks those rows, so a tidy now would take their parts for
        # uncommitted and remove them: only the old index knows they committed.
        keep = (
            f"to keep them, put back {rebuilt.kept_as} as the index, run `pacs-engine tidy`, "
            "then rebuild-index; "
            if rebuilt.kept_as
            else ""
        )
        print(
            f"{rebuilt.pending:,} rows of parts not known to be committed (their rows files "
            f"are pending) were left out: {keep}a tidy now removes their files, and the next "
            "copy run copies their instances again"
        )
    if rebuilt.deleted:
        print(f"{rebuilt.deleted:,} rows of deleted instances were left out")
    if rebuilt.filled:
        print(f"{rebuilt.filled:,} rows written by older code got attributes from their headers")
    if rebuilt.unreadable_blobs:
        print(
            f"{len(rebuilt.unreadable_blobs):,} rows kept as written: their header blob "
            f"cannot be read (first: {rebuilt.unreadable_blobs[0]})"
        )
    for name in rebuilt.packs_without_rows:
        print(f"NOT RESTORED {name}: written before rows files existed")
    for name in rebuilt.damaged_rows_files:
        print(f"NOT RESTORED {name}: its rows file is damaged")
    return 1 if rebuilt.packs_without_rows or rebuilt.damaged_rows_files else 0
