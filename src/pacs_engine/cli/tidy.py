"""`pacs-engine tidy`: delete what killed, never-resumed ingest runs left unreferenced."""

from __future__ import annotations

import argparse

from pacs_engine.cli._common import fail


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `tidy`."""
    tidy = commands.add_parser(
        "tidy",
        help="delete files of killed, never-resumed ingest runs that no instance uses",
        description="An ingest deletes what a killed earlier session of the same run left "
        "behind when it is resumed. A run that is never resumed leaves its uncommitted shards "
        "and header packs on disk: this deletes every file no archived instance uses, sets "
        "arrays' frame counts to what is committed, and lists unfinished runs (resuming one "
        "after a tidy is safe: its uncommitted work is redone). Refused (exit 2) while an "
        "ingest runs.",
    )
    tidy.add_argument("archive", help="the archive folder")
    tidy.add_argument(
        "--abandon",
        action="append",
        default=[],
        metavar="RUN",
        help="give up this unfinished run (repeatable): its plan leaves the journal, the "
        "record of where its finished inputs went stays, and ingesting the same sources "
        "again starts a new run (whose already archived instances are then duplicates)",
    )
    tidy.set_defaults(run=cmd_tidy)


def cmd_tidy(args: argparse.Namespace) -> int:
    """Delete what ingest runs killed and never resumed left unreferenced; list those runs."""
    from pacs_engine.archive import open_archive
    from pacs_engine.ingest.journal import Journal
    from pacs_engine.ingest.tidy import tidy_archive

    with open_archive(args.archive, readonly=False) as archive:  # one writer: never beside ingest
        tidied = tidy_archive(archive)
        journal = Journal(archive.index)
        given = list(dict.fromkeys(args.abandon))
        unknown = [run for run in given if not journal.can_abandon(run)]
        if unknown:
            return fail(
                "tidy",
                f"not an unfinished run of {args.archive}: "
                f"{', '.join(unknown)} (`pacs-engine tidy` lists them)",
                2,
            )
        abandoned = {run: journal.abandon(run) for run in given}
        unfinished = journal.unfinished()
    print(
        f"removed {tidied.files:,} files ({tidied.bytes / 1e6:,.1f} MB) that no archived "
        f"instance uses; {len(tidied.arrays_resized):,} arrays resized to their committed "
        f"frames; {len(tidied.renamed):,} pending rows files of committed parts renamed"
    )
    for run, dropped in abandoned.items():
        print(
            f"abandoned ingest run {run}: {dropped:,} planned inputs it had not archived "
            "were dropped; ingesting the same sources again starts a new run"
        )
    for record in unfinished:
        print(
            f"unfinished ingest run {record['run']} (started {record['started']}) of "
            f"{' '.join(record['sources'])}: run the same ingest again to finish it, "
            f"or give it up with --abandon {record['run']}"
        )
    return 0
