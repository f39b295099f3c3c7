"""`pacs-engine export`: rebuild original files, byte for byte."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pacs_engine.cli._common import add_progress, fail, shows_progress

if TYPE_CHECKING:
    from pacs_engine.archive import Archive
    from pacs_engine.index.rows import Row


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `export`."""
    export = commands.add_parser(
        "export",
        help="rebuild original files, byte for byte",
        description="Write the original files as DESTINATION/<study>/<series>/<sop>.dcm "
        "(the current version of each instance), each checked against its sha256 first. UIDs "
        "become names safe on any filesystem (digits, lower-case letters and dots kept, other "
        "characters written _XX); links in DESTINATION are never written through. Without "
        "--uid, --study, --series, --patient or --query, every instance; with several, the "
        "instances any of them selects. A UID or patient not in the archive is an error, "
        "before anything is written.",
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
        "--study",
        dest="studies",
        action="append",
        metavar="STUDY_INSTANCE_UID",
        help="export this study (repeatable)",
    )
    export.add_argument(
        "--series",
        dest="series",
        action="append",
        metavar="SERIES_INSTANCE_UID",
        help="export this series (repeatable)",
    )
    export.add_argument(
        "--patient",
        dest="patients",
        action="append",
        metavar="PATIENT_ID",
        help="export every study of this Patient ID (repeatable)",
    )
    export.add_argument(
        "--query",
        nargs="+",
        metavar="KEY=VALUE",
        help="export the instances matching every KEY=VALUE, as `pacs-engine query "
        "--level instance` matches them",
    )
    export.add_argument(
        "--all-versions",
        action="store_true",
        help="also write each earlier version of an instance (same SOP Instance UID and "
        "pixels, other bytes) as <sop>_v<n>.dcm, n from 1, oldest first",
    )
    add_progress(export)
    export.set_defaults(run=cmd_export)


#: The selecting options: (attribute of the arguments, query keyword, what it names).
_SELECTORS = (
    ("studies", "StudyInstanceUID", "study"),
    ("series", "SeriesInstanceUID", "series"),
    ("patients", "PatientID", "patient"),
)


def selected_uids(archive: Archive, args: argparse.Namespace) -> list[str] | None:
    """The SOP Instance UIDs the options select (None: every instance), in order.

    Raises ExportError for a study, series or patient with no instance in the archive
    (the patient's ID is not repeated: it may identify someone).
    """
    from pacs_engine.archive.archive import ExportError
    from pacs_engine.cli.query import parse_filters

    if not (args.uids or args.query or any(getattr(args, a) for a, _, _ in _SELECTORS)):
        return None
    uids: dict[str, None] = dict.fromkeys(args.uids or [])
    for attribute, keyword, kind in _SELECTORS:
        for value in getattr(args, attribute) or []:
            rows = _exactly(archive, keyword, value)
            if not rows:
                shown = "the Patient ID given" if kind == "patient" else value
                raise ExportError(f"--{kind}: no {kind} in the archive has {shown}")
            uids.update(dict.fromkeys(row["SOPInstanceUID"] for row in rows))
    if args.query:
        rows = archive.query("instance", **parse_filters(args.query))
        if not rows:
            raise ExportError("--query: no instance in the archive matches")
        uids.update(dict.fromkeys(row["SOPInstanceUID"] for row in rows))
    return list(uids)


def _exactly(archive: Archive, keyword: str, value: str) -> list[Row]:
    """The instances whose `keyword` is `value` exactly: a UID or a Patient ID, not a query
    (an empty value, `*`, `?` or `\\` would match other patients' instances)."""
    if not value:
        return []
    if keyword == "StudyInstanceUID":
        return archive.index.study(value)
    if keyword == "SeriesInstanceUID":
        return archive.index.series(value)
    # The query narrows by the index; a Patient ID may hold what it reads as wildcards.
    return [r for r in archive.query("instance", **{keyword: value}) if r.get(keyword) == value]


def cmd_export(args: argparse.Namespace) -> int:
    """Rebuild original files from the archive, byte for byte."""
    from tqdm import tqdm

    from pacs_engine.archive import open_archive

    with open_archive(args.archive) as archive:
        try:
            uids = selected_uids(archive, args)
        except ValueError as error:  # a --query that is not KEY=VALUE
            return fail("export", str(error), 2)
        total = len(uids) if uids is not None else len(archive.index)
        show = shows_progress(args)
        with tqdm(total=total, unit=" instances", disable=not show, file=sys.stderr) as bar:
            written = archive.export(
                args.destination, uids, all_versions=args.all_versions, progress=bar.update
            )
    print(f"{len(written):,} files written under {args.destination}")
    return 0
