"""`pacs-engine correct`: corrections, audited and reversible (docs/corrections.md)."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
from typing import TYPE_CHECKING

from pacs_engine.cli._common import fail

if TYPE_CHECKING:
    from pacs_engine.archive.archive import Archive
    from pacs_engine.archive.corrections import Correction, Corrections


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `correct`."""
    correct = commands.add_parser(
        "correct",
        help="merge patients, correct demographics, move a series, delete (reversibly)",
        description="Each correction writes a new version of every instance it changes (the "
        "pixel data is neither touched nor copied), commits the index in one transaction, is "
        "kept in ARCHIVE/corrections/ with the values before and after, and is written to the "
        "audit trail (UIDs and attribute keywords only). `--undo ID` puts back what it "
        "changed; a delete goes to the trash (`pacs-engine trash`). Refused while another "
        "process writes to the archive. docs/corrections.md.",
    )
    correct.add_argument("archive", help="the archive folder")
    correct.add_argument("--list", action="store_true", help="list the corrections made")
    correct.add_argument("--undo", metavar="ID", help="undo this correction (or restore a delete)")
    correct.add_argument("--json", action="store_true", help="print what was done as JSON")
    _add_common(correct, reason_required=False)
    kinds = correct.add_subparsers(dest="kind", metavar="KIND")
    merge = kinds.add_parser("merge-patient", help="file every study of one patient under another")
    merge.add_argument("--from", dest="source", required=True, metavar="PATIENT_ID")
    merge.add_argument("--to", dest="target", required=True, metavar="PATIENT_ID")
    patient = kinds.add_parser("patient", help="new values of patient attributes")
    patient.add_argument("--id", dest="patient", required=True, metavar="PATIENT_ID")
    patient.add_argument(
        "--set",
        dest="values",
        action="append",
        required=True,
        metavar="KEYWORD=VALUE",
        help="PatientName, PatientBirthDate, PatientSex, OtherPatientIDs, IssuerOfPatientID or "
        "PatientID (repeatable; an empty VALUE empties the attribute)",
    )
    move = kinds.add_parser("move-series", help="file a series under another study")
    move.add_argument("--series", required=True, metavar="SERIES_INSTANCE_UID")
    move.add_argument("--to-study", required=True, metavar="STUDY_INSTANCE_UID")
    delete = kinds.add_parser("delete", help="delete a study, series or instance to the trash")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="STUDY_INSTANCE_UID")
    which.add_argument("--series", metavar="SERIES_INSTANCE_UID")
    which.add_argument("--uid", metavar="SOP_INSTANCE_UID")
    delete.add_argument(
        "--keep-days",
        type=float,
        default=30.0,
        help="days the trash keeps it before `trash --empty` removes it (default 30)",
    )
    for sub in (merge, patient, move, delete):
        _add_common(sub, reason_required=True)
    correct.set_defaults(run=cmd_correct)


def _add_common(parser: argparse.ArgumentParser, reason_required: bool) -> None:
    # A KIND's options do not reset those given before it (`correct A --dry-run delete ...`).
    unset = argparse.SUPPRESS if reason_required else None
    parser.add_argument(
        "--reason", required=reason_required, default=unset, help="why (kept in the correction log)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=unset or False,
        help="show what it would change, write nothing",
    )


def cmd_correct(args: argparse.Namespace) -> int:
    """Make, undo or list corrections."""
    from pacs_engine.archive import open_archive
    from pacs_engine.archive.corrections import load_records

    chosen = [bool(args.list), bool(args.undo), bool(args.kind)]
    if sum(chosen) != 1:
        return fail("correct", "give one of --list, --undo ID or a KIND (merge-patient, ...)", 2)
    if args.list:
        with open_archive(args.archive) as archive:
            records = [c.summary() for c in load_records(archive.path)]
        if args.json:
            print(json.dumps(records, indent=1))
        for record in [] if args.json else records:
            print(one_line(record))
        return 0
    with open_archive(args.archive, readonly=False) as archive:
        corrections = open_corrections(archive)
        if args.undo:
            planned = corrections.undo(args.undo, args.reason or "undo", actor())
        else:
            planned = _plan(corrections, args)
        return apply_correction(archive, corrections, planned, args)


def _plan(corrections: Corrections, args: argparse.Namespace) -> Correction:
    """The correction the command line asks for, planned."""
    from pacs_engine.archive.corrections import CorrectionError

    who = actor()
    if args.kind == "merge-patient":
        return corrections.merge_patient(args.source, args.target, args.reason, who)
    if args.kind == "patient":
        values = {}
        for item in args.values:
            keyword, equals, value = item.partition("=")
            if not equals:
                raise CorrectionError(f"--set {keyword}: not KEYWORD=VALUE")
            values[keyword] = value
        return corrections.correct_patient(args.patient, values, args.reason, who)
    if args.kind == "move-series":
        return corrections.move_series(args.series, args.to_study, args.reason, who)
    return corrections.delete(
        args.reason,
        who,
        study=args.study,
        series=args.series,
        sop=args.uid,
        keep_days=args.keep_days,
    )


def apply_correction(
    archive: Archive, corrections: Corrections, planned: Correction, args: argparse.Namespace
) -> int:
    """Make the planned correction (unless a dry run), audit it and say what it did."""
    if not args.dry_run:
        corrections.apply(planned)
        audit_correction(archive, planned)
    summary = planned.summary()
    if args.dry_run:
        summary["state"] = "not made: --dry-run"
    if args.json:
        print(json.dumps({**summary, "dry_run": args.dry_run}, indent=1))
        return 0
    verb = "would make" if args.dry_run else "made"
    print(f"{verb} {one_line(summary)}")
    for study in summary["studies"]:
        print(f"  study {study}")
    for series in summary["series"]:
        print(f"  series {series}")
    if planned.kind == "delete" and not args.dry_run:
        print(
            f"  in the trash until {planned.keep_until}; `pacs-engine trash {args.archive} "
            f"--restore {planned.id}` brings it back"
        )
    return 0


def audit_correction(archive: Archive, correction: Correction, note: str = "") -> None:
    """The audit record of a correction made: UIDs and keywords only (the values, names and
    IDs among them, stay in the correction log)."""
    audit(
        archive,
        f"correct {correction.kind}",
        correction.studies,
        f"correction {correction.id}: {len(correction.before)} instances, "
        f"{len(correction.series)} series; attributes: {', '.join(correction.attributes)}"
        + (f"; undoes {correction.undoes}" if correction.undoes else "")
        + note,
    )


def audit(archive: Archive, action: str, studies: list[str], detail: str) -> None:
    """One record of the archive's audit trail for this command (protocol "cli")."""
    from pacs_engine.serve.audit import AuditLog

    with AuditLog(archive.path) as trail:
        trail.record(
            protocol="cli",
            actor=actor(),
            address=socket.gethostname(),
            action=action,
            outcome="ok",
            study=studies,
            detail=detail,
        )


def open_corrections(archive: Archive) -> Corrections:
    """The archive's corrections, those a crash interrupted finished or rolled back (said)."""
    from pacs_engine.archive.corrections import Corrections
    from pacs_engine.ingest import session

    session.retire(archive.path)  # workers a killed ingest left behind stop writing first

    corrections = Corrections(archive)
    report_recovered(archive, corrections.recover())
    return corrections


def report_recovered(archive: Archive, recovered: list[Correction]) -> None:
    """Say which interrupted corrections were finished or rolled back; audit the finished
    (the process that made them died before it could)."""
    for correction in recovered:
        if correction.state != "done":
            print(f"rolled back the interrupted correction {correction.id} (never committed)")
            continue
        print(f"finished the interrupted correction {correction.id}")
        audit_correction(archive, correction, " (finished after an interruption)")


def one_line(summary: dict) -> str:
    """One correction in one line, without values."""
    state = summary["state"]
    if summary.get("undone_by"):
        state = f"undone by {summary['undone_by']}"
    elif summary.get("emptied"):
        state = f"emptied {summary['emptied']}"
    elif summary["kind"] == "delete" and summary.get("keep_until"):
        state += f", kept until {summary['keep_until']}"
    attributes = f"; {', '.join(summary['attributes'])}" if summary["attributes"] else ""
    return (
        f"{summary['id']} {summary['kind']}: {summary['instances']} instances in "
        f"{len(summary['series'])} series of {len(summary['studies'])} studies{attributes} "
        f"({state}; {summary['actor']} {summary['time']})"
    )


def actor() -> str:
    """Who runs the command (the login name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "unknown"
