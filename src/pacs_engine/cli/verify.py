"""`pacs-engine verify`: check every stored frame and every rebuilt file of an archive."""

from __future__ import annotations

import argparse
import sys

from pacs_engine.cli._common import add_progress, shows_progress, worker_count


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `verify`."""
    verify = commands.add_parser(
        "verify",
        help="check the stored frames and rebuilt files of an archive, or of a part of it",
        description="Decode every stored frame and compare it with the hash recorded at "
        "ingest (original bitstreams stored undecoded have none: they must decode), and "
        "rebuild every original file and compare its sha256; or do so for the instances the "
        "selection options pick. Exits 1 on any mismatch.",
    )
    verify.add_argument("archive", help="the archive folder")
    verify.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        help="worker processes (default: the number of cores; 0: in this process). In "
        "workers, a decoder that crashes on damaged data is reported as a mismatch instead "
        "of ending the check",
    )
    picks = verify.add_argument_group(
        "selection",
        "check part of the archive: --study and --series add up, every other option narrows "
        "the selection. Each verify is recorded in ARCHIVE/reports/verify-<start>-<n>.json "
        "(selection, instances checked, mismatches, seconds)",
    )
    picks.add_argument(
        "--since",
        metavar="DATE",
        help="instances ingested at or after DATE (UTC: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)",
    )
    picks.add_argument(
        "--study",
        metavar="UID",
        action="append",
        default=[],
        help="the instances of a study (repeatable)",
    )
    picks.add_argument(
        "--series",
        metavar="UID",
        action="append",
        default=[],
        help="the instances of a series (repeatable)",
    )
    picks.add_argument(
        "--not-verified-since",
        metavar="DATE",
        help="instances no verify started at or after DATE found clean (from the records): "
        "for a nightly cron job verifying a large archive a part at a time",
    )
    picks.add_argument(
        "--sample",
        metavar="FRACTION",
        type=float,
        help="a random FRACTION (0 < FRACTION <= 1) "
        "of the selected instances; the report says what the sample proves",
    )
    picks.add_argument(
        "--seed",
        type=int,
        help="the sample's random seed (default: a fixed one, printed with the sample: the "
        "same sample again)",
    )
    picks.add_argument(
        "--limit", metavar="N", type=int, help="at most N instances, the first by UID"
    )
    verify.add_argument(
        "--no-record", dest="record", action="store_false", help="do not write the record"
    )
    add_progress(verify)
    verify.set_defaults(run=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    """Decode every stored frame and rebuild every file; report what does not match."""
    from tqdm import tqdm

    from pacs_engine.archive import open_archive
    from pacs_engine.archive.verify_plan import DEFAULT_SEED, Selection, utc_time
    from pacs_engine.index import DamagedIndexError

    selection = Selection(
        since=None if args.since is None else utc_time(args.since, "--since"),
        studies=tuple(args.study),
        series=tuple(args.series),
        not_verified_since=None
        if args.not_verified_since is None
        else utc_time(args.not_verified_since, "--not-verified-since"),
        sample=args.sample,
        seed=DEFAULT_SEED if args.seed is None else args.seed,
        limit=args.limit,
    )
    try:
        with open_archive(args.archive) as archive:
            bar = tqdm(
                total=None if not selection.everything else len(archive.index),
                unit=" instances",
                disable=not shows_progress(args),
                file=sys.stderr,
                dynamic_ncols=True,
            )
            try:
                report = archive.verify(
                    progress=lambda uid, ok: bar.update(),
                    workers=args.workers,
                    selection=selection,
                    record=args.record,
                )
            finally:
                bar.close()
    except DamagedIndexError as error:  # on opening or met while checking
        print(f"DAMAGED INDEX {error}; `pacs-engine rebuild-index {args.archive}` rebuilds it")
        return 1
    for mismatch in report.mismatches:
        print(
            f"MISMATCH {mismatch['SOPInstanceUID']} ({mismatch['source_path']}): "
            f"{mismatch['problem']}"
        )
    if not selection.everything:
        print(
            f"selected {report.population:,} instances"
            + (
                f"; sampled {len(report.checked or ()):,} with seed {report.seed}"
                if report.sampled
                else ""
            )
        )
    print(
        f"{report.instances:,} instances, {report.frames:,} frames checked in "
        f"{report.seconds:.1f} s: "
        + ("all match" if report.ok else f"{len(report.mismatches):,} mismatches")
    )
    if report.proves():
        print(report.proves())
    if report.record is not None:
        print(f"recorded in {report.record}")
    if report.unrecorded is not None:
        print(f"not recorded: {report.unrecorded}")
    return 0 if report.ok else 1
