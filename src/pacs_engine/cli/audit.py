"""`pacs-engine audit`: list, verify and export an archive's audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree

from pacs_engine.cli._common import fail
from pacs_engine.serve.audit_export import (
    dicom_audit_message,
    fhir_audit_event,
    fhir_bundle,
    uids,
)

#: The columns of the table, and the widest a cell is printed.
_COLUMNS = ("time", "protocol", "actor", "address", "action", "outcome", "study", "detail")
_CELL_CHARS = 64


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `audit`."""
    audit = commands.add_parser(
        "audit",
        help="list, verify or export the audit trail of DIMSE and DICOMweb",
        description="List the records of ARCHIVE/audit/ (who, from where, what, which study, "
        "outcome, when), oldest first, as a table or (--json) JSON lines; the filters select "
        "records that match all of them. --verify walks the hash chain instead and exits 1 "
        "naming the file, line and reason of each break. --export writes the selected records "
        "as FHIR R4 AuditEvent resources (fhir: NDJSON; fhir-bundle: one Bundle) or DICOM "
        "PS3.15 A.5 audit messages (dicom: one XML AuditMessage a line).",
    )
    audit.add_argument("archive", help="the archive folder")
    audit.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain; exit 1 where it breaks; prints the last record's hash "
        "(the head) to keep outside the archive",
    )
    audit.add_argument(
        "--head",
        metavar="HASH",
        help="with --verify: a head printed by an earlier --verify, which must still be in "
        "the chain (records cut from its end leave a shorter chain that holds)",
    )
    audit.add_argument("--study", metavar="UID", help="only records naming this study")
    audit.add_argument("--user", metavar="NAME", help="only records of this user or AE title")
    audit.add_argument(
        "--since",
        metavar="DATE",
        type=_since,
        help="only records at or after DATE (ISO 8601: 2026-12-06 or 2026-12-06T10:00; UTC "
        "unless an offset is given)",
    )
    audit.add_argument("--json", action="store_true", help="print the records as JSON lines")
    audit.add_argument(
        "--export",
        choices=("fhir", "fhir-bundle", "dicom"),
        help="write the records as FHIR AuditEvent (NDJSON or a Bundle) or DICOM audit messages",
    )
    audit.add_argument(
        "--output", metavar="FILE", help="write the listing or export to FILE (default: stdout)"
    )
    audit.set_defaults(run=cmd_audit)


def _since(text: str) -> datetime:
    """A moment from the command line (naive: UTC)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    """List, verify or export the audit trail."""
    from pacs_engine.serve.audit import chain_head, read_records, verify_chain

    root = Path(args.archive)
    if not (root / "audit").is_dir():
        return fail("audit", f"{root}: no audit trail (no folder {root / 'audit'})", 2)
    if args.head is not None and not args.verify:
        return fail("audit", "--head goes with --verify", 2)
    if args.verify:
        problems = verify_chain(root, args.head)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return fail("audit", f"the chain breaks in {len(problems)} place(s)", 1)
        count = sum(1 for _ in read_records(root))
        print(f"{root}: {count} records, the chain holds; head {chain_head(root)}")
        return 0
    try:
        records = [r for r in read_records(root) if _selected(r, args)]
    except ValueError as error:  # a line that is no record: --verify names every one
        return fail("audit", f"{error} (see --verify)", 1)
    with _output(args.output) as out:
        _write(records, args, root.resolve().name, out)
    return 0


def _selected(record: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether a record passes the filters."""
    if args.user is not None and record["actor"] != args.user:
        return False
    if args.study is not None and args.study not in uids(record.get("study")):
        return False
    return args.since is None or datetime.fromisoformat(record["time"]) >= args.since


def _write(
    records: list[dict[str, Any]], args: argparse.Namespace, name: str, out: IO[str]
) -> None:
    """The records in the form asked."""
    if args.export == "fhir-bundle":
        events = [fhir_audit_event(r, name) for r in records]
        out.write(json.dumps(fhir_bundle(events), indent=1) + "\n")
    elif args.export == "fhir":
        for record in records:
            out.write(json.dumps(fhir_audit_event(record, name)) + "\n")
    elif args.export == "dicom":
        for record in records:
            message = dicom_audit_message(record, name)
            out.write(ElementTree.tostring(message, encoding="unicode") + "\n")
    elif args.json:
        for record in records:
            out.write(json.dumps(record) + "\n")
    else:
        for row in _table(records):
            out.write(row + "\n")


def _table(records: list[dict[str, Any]]) -> Iterator[str]:
    """The records as aligned text columns, cells cut to `_CELL_CHARS`."""
    rows = [[_cell(record, column) for column in _COLUMNS] for record in records]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(_COLUMNS)]
    for row in [list(_COLUMNS), *rows]:
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


def _cell(record: dict[str, Any], column: str) -> str:
    value = record.get(column)
    if column == "study":
        studies = uids(value)
        text = f"{studies[0]} (+{len(studies) - 1})" if len(studies) > 1 else "".join(studies)
    else:
        text = "-" if value is None else str(value)
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"


@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or FILE opened for writing."""
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as file:
        yield file
