"""`pacs-engine migrate`: a live legacy PACS into an archive (C-FIND, then C-MOVE or C-GET)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pacs_engine.cli._common import worker_count

if TYPE_CHECKING:
    from pacs_engine.serve.migrate import MigrationReport


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `migrate`."""
    migrate = commands.add_parser(
        "migrate",
        help="migrate the studies of a live PACS into an archive over DICOM",
        description="List the studies of the legacy PACS with C-FIND (in StudyDate windows, "
        "split where an answer looks capped), retrieve each by C-MOVE to a Storage SCP this "
        "command runs (the PACS must know AE --ae-title at this host and --port) or by "
        "C-GET, check each study's instance count against what the PACS reported (short "
        "studies are retried), and ingest what arrives. A journal in ARCHIVE/migrations/ "
        "makes the same command resume where a killed run stopped. Exit 0 when every "
        "study is complete, 1 otherwise. See docs/migrate.md.",
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="AET@HOST:PORT")
    migrate.add_argument("--archive", required=True, help="the archive (created when missing)")
    migrate.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="StudyDate=YYYYMMDD-YYYYMMDD, Modality=CT, or any study-level key; repeatable",
    )
    migrate.add_argument("--method", choices=("move", "get"), default="move")
    migrate.add_argument("--parallel", type=int, default=1, metavar="N", help="studies in flight")
    migrate.add_argument("--ae-title", default="PACS_ENGINE", help="our AE title")
    migrate.add_argument(
        "--port", type=int, default=11112, help="our Storage SCP's port for C-MOVE (default 11112)"
    )
    migrate.add_argument(
        "--listen", default="0.0.0.0", metavar="HOST", help="our Storage SCP's address"
    )
    migrate.add_argument(
        "--rate-limit", metavar="N/min|NMB/s", help="studies per minute, or megabytes per second"
    )
    migrate.add_argument(
        "--max-results",
        type=int,
        default=1000,
        metavar="N",
        help="a C-FIND answer of N studies is taken as capped and its date window split",
    )
    migrate.add_argument(
        "--retries", type=int, default=2, help="retries of a short or failed study (default 2)"
    )
    migrate.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a stalled peer is waited for"
    )
    migrate.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        metavar="N",
        help="ingest worker processes (default: the number of cores, as ingest; 0: here)",
    )
    migrate.set_defaults(run=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Run (or resume) a migration; 0 when every study is complete."""
    from tqdm import tqdm

    from pacs_engine.archive import Archive, IngestReport
    from pacs_engine.ingest import make_executor
    from pacs_engine.serve.audit import AuditLog
    from pacs_engine.serve.config import Peer, ServeConfig, check_ae_title
    from pacs_engine.serve.context import ServeContext
    from pacs_engine.serve.dimse import DimseServer
    from pacs_engine.serve.migrate import (
        Legacy,
        Migration,
        MigrationError,
        parse_filters,
        parse_rate_limit,
        parse_source,
    )
    from pacs_engine.serve.spool import Drain, Spool

    source = parse_source(args.source)
    filters = parse_filters(args.filter)
    rate = parse_rate_limit(args.rate_limit)
    if args.parallel < 1 or args.max_results < 1 or not args.timeout > 0:
        raise MigrationError("--parallel, --max-results and --timeout must be positive")
    if args.retries < 0 or (args.workers or 0) < 0:
        raise MigrationError("--retries and --workers must be 0 or more")
    ae_title = check_ae_title(args.ae_title, "--ae-title")
    # The legacy PACS may only store here (its C-MOVE sub-operations, or C-GET's).
    config = ServeConfig(ae_title=ae_title, host=args.listen, timeout=args.timeout).with_peers(
        Peer(source.ae_title, frozenset({"store"}))
    )

    archive = Archive.open_or_create(args.archive)
    audit = AuditLog(archive.path)
    executor = make_executor(args.workers)
    spool = Spool(archive.path)
    ingested: list[IngestReport] = []
    drain = Drain(archive, spool, executor, on_report=ingested.append)
    server = DimseServer(ServeContext(archive, config, audit), spool)
    legacy = Legacy(source, ae_title, args.timeout)
    migration = Migration(
        archive,
        server,
        legacy,
        filters,
        method=args.method,
        parallel=args.parallel,
        max_results=args.max_results,
        retries=args.retries,
        rate=rate,
    )
    bars: list[tqdm] = []  # made once the number of studies to fetch is known

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="study", desc="migrate", file=sys.stderr))
        bar = bars[0]
        instances, size = migration.received_totals()
        seconds = max(bar.format_dict["elapsed"], 1e-3)
        bar.set_postfix(instances=instances, MBps=f"{size / seconds / 1e6:.1f}", refresh=False)
        bar.update(done)

    migration.progress = progress
    try:
        try:
            drain.start()  # what a killed run left in the spool is ingested first
            if args.method == "move":
                host, port = server.start(args.port)
                print(
                    f"pacs-engine migrate: {ae_title} receiving on {host}:{port} "
                    f"(C-MOVE destination for {source.ae_title})",
                    file=sys.stderr,
                    flush=True,
                )
            report = migration.run()
        finally:
            for bar in bars:
                bar.close()
            server.stop()
            drain.stop()
        # The rest of the spool, now that nothing more arrives.
        final = Drain(archive, spool, executor, on_report=ingested.append)
        final.drain()
        report.spool_failure = final.failure
    finally:
        executor.close()
        audit.close()
        archive.close()
    for part in ingested:
        report.add_ingest(part)
    _print_report(report)
    return 0 if report.ok else 1


def _print_report(report: MigrationReport) -> None:
    """The end-of-run report on stdout: studies by outcome, reasons, the ingest's invariant."""
    counts = report.ingest
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
    lines = [
        f"studies found: {report.found}, complete: {report.complete} "
        f"({report.skipped} in an earlier run), incomplete: {len(report.incomplete)}, "
        f"failed: {len(report.failed)}",
        f"instances received: {report.instances} ({report.bytes / 1e6:.1f} MB, {rate:.1f} MB/s)",
        f"inputs: {counts['inputs']} = archived {counts['archived']} + duplicates "
        f"{counts['duplicates']} + conflicts {counts['conflicts']} + quarantined "
        f"{counts['quarantined']}",
    ]
    lines += [f"incomplete {uid}: {reason}" for uid, reason in report.incomplete.items()]
    lines += [f"failed {uid}: {reason}" for uid, reason in report.failed.items()]
    lines += [f"listing: {problem}" for problem in report.listing_problems]
    if report.spool_failure is not None:
        lines.append(f"not ingested yet (kept in the spool): {report.spool_failure}")
    if not report.ok:
        lines.append("run the same command again to resume: complete studies are not fetched again")
    print("\n".join(lines), flush=True)
