"""`pacs-engine query`: find patients, studies, series or instances, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pacs_engine.cli._common import fail

#: The columns shown by default, by level (every record key can be asked with --fields).
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "patient": (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    ),
    "study": (
        "PatientID",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyDescription",
        "StudyInstanceUID",
    ),
    "series": (
        "PatientID",
        "StudyDate",
        "SeriesNumber",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        "SeriesDescription",
        "SeriesInstanceUID",
    ),
    "instance": (
        "PatientID",
        "Modality",
        "SeriesNumber",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "SOPInstanceUID",
    ),
}


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `query`."""
    query = commands.add_parser(
        "query",
        help="find patients, studies, series or instances",
        description="Print the records of LEVEL matching every KEY=VALUE (DICOM keywords, "
        "matched as C-FIND does: * and ? wildcards, case-insensitive person names, date "
        "ranges 20000101-20001231, UID lists uid1\\uid2; a key given twice matches either "
        "value). Unknown keywords, keywords of another level and malformed dates are errors "
        "saying what would be valid. See docs/index.md.",
    )
    query.add_argument("archive", help="the archive folder")
    query.add_argument("filters", nargs="*", metavar="KEY=VALUE", help="a matching key")
    query.add_argument(
        "--level",
        choices=("patient", "study", "series", "instance"),
        default="study",
        help="what to list (default: study)",
    )
    query.add_argument("--fields", help="comma-separated keys to print (default: a few per level)")
    output = query.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object a line")
    output.add_argument("--csv", action="store_true", help="CSV with a header line")
    query.add_argument("--limit", type=int, metavar="N", help="print at most N records")
    query.set_defaults(run=cmd_query, late_positionals="filters")


def parse_filters(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs as query filters (a key given twice: a list, matching either value).

    Raises ValueError naming a pair without "=". Values of the archive's own fields
    (keywords outside the DICOM dictionary) are read as JSON when they parse (true, 3).
    """
    from pacs_engine.index.matching import vr_of

    filters: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key:
            raise ValueError(f"{pair!r}: a filter is KEY=VALUE, e.g. PatientID=12345")
        value: Any = text
        if vr_of(key) is None:
            try:
                value = json.loads(text)
            except ValueError:  # not JSON: the text itself
                value = text
        if key in filters:
            before = filters[key]
            filters[key] = [*(before if isinstance(before, list) else [before]), value]
        else:
            filters[key] = value
    return filters


def cmd_query(args: argparse.Namespace) -> int:
    """List the records of a level that match the filters."""
    from pacs_engine.archive import open_archive
    from pacs_engine.index.query import RECORD_KEYS, ROW_FIELDS, key_problem

    try:
        filters = parse_filters(args.filters)
    except ValueError as error:
        return fail("query", str(error), 2)
    # Rows also hold the archive's own fields (source_path, stored_bytes, ...).
    known = RECORD_KEYS[args.level] + (ROW_FIELDS if args.level == "instance" else ())
    fields = DEFAULT_FIELDS[args.level]
    if args.fields:
        fields = tuple(f.strip() for f in args.fields.split(",") if f.strip())
        for field in fields:
            if field not in known:
                return fail("query", "--fields: " + key_problem(field, args.level, known), 2)
    if args.limit is not None and args.limit < 0:
        return fail("query", f"--limit must be 0 or more, not {args.limit}", 2)
    # One record past the limit, to say whether more match without reading them all.
    limit = None if args.limit is None else args.limit + 1
    with open_archive(args.archive) as archive:
        found = archive.query(args.level, limit=limit, **filters)
    shown = found if args.limit is None else found[: args.limit]
    if args.json:
        for record in shown:
            print(json.dumps({f: record.get(f) for f in fields}))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([_text(record.get(f)) for f in fields] for record in shown)
    else:
        _table(shown, fields)
    if len(shown) < len(found):
        print(f"({len(shown):,} shown, more match: --limit)", file=sys.stderr)
    return 0


def _text(value: Any) -> str:
    """A value as one cell: lists joined with backslashes (DICOM's separator), None empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _table(records: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Print aligned columns under a header, then how many records."""
    cells = [[_text(r.get(f)) for f in fields] for r in records]
    widths = [max([len(f), *(len(row[i]) for row in cells)]) for i, f in enumerate(fields)]
    for row in [list(fields), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(records):,} record{'s' if len(records) != 1 else ''}")
