"""`pacs-engine verify`: check every stored frame and every rebuilt file of an archive."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from pacs_engine.cli._common import add_progress, shows_progress


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `verify`."""
    verify = commands.add_parser(
        "verify",
        help="check every stored frame and every rebuilt file of an archive",
        description="Decode every stored frame and compare it with the hash recorded at "
        "ingest (original bitstreams stored undecoded have none: they must decode), and "
        "rebuild every original file and compare its sha256. Exits 1 on any mismatch.",
    )
    verify.add_argument("archive", help="the archive folder")
    verify.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: the number of cores; 0: in this process). In "
        "workers, a decoder that crashes on damaged data is reported as a mismatch instead "
        "of ending the check",
    )
    add_progress(verify)
    verify.set_defaults(run=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    """Decode every stored frame and rebuild every file; report what does not match."""
    from pacs_engine.archive import open_archive
    from pacs_engine.index import DamagedIndexError

    try:
        with open_archive(args.archive) as archive:
            bar = tqdm(
                total=len(archive.index),
                unit=" instances",
                disable=not shows_progress(args),
                file=sys.stderr,
                dynamic_ncols=True,
            )
            try:
                report = archive.verify(progress=lambda uid, ok: bar.update(), workers=args.workers)
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
    print(
        f"{report.instances:,} instances, {report.frames:,} frames checked: "
        + ("all match" if report.ok else f"{len(report.mismatches):,} mismatches")
    )
    return 0 if report.ok else 1
