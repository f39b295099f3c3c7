"""`pacs-engine serve`: the archive on the network (DIMSE: C-ECHO, C-STORE, Query/Retrieve)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacs_engine.archive import IngestReport


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `serve`."""
    serve = commands.add_parser(
        "serve",
        help="serve an archive on the network (DICOM C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE)",
        description="Serve ARCHIVE (created when missing) as a DICOM application entity: "
        "a Verification SCP (C-ECHO), a Storage SCP for every storage SOP class and every "
        "transfer syntax the archive keeps, and a Query/Retrieve SCP (C-FIND, C-GET, C-MOVE; "
        "Patient and Study Root; C-MOVE destinations are peers with an address). "
        "Nothing is admitted by default: only the calling AE titles given with --peer or in "
        "the --config file may associate, each with its rights (store, query, retrieve). "
        "A received instance is answered Success once it is "
        "written and fsynced to ARCHIVE/spool/; a background thread ingests the spool in "
        "batches, the way `ingest` archives files. Every association and operation is "
        "written to ARCHIVE/audit/. Stops on SIGINT or SIGTERM (the batch in hand finishes; "
        "what waits in the spool is ingested at the next start). See docs/serve.md.",
    )
    serve.add_argument("archive", metavar="ARCHIVE", help="the archive folder")
    serve.add_argument(
        "--dimse-port",
        type=int,
        metavar="PORT",
        help="the DIMSE port (0: a free port, printed; default: the config file's)",
    )
    serve.add_argument("--ae-title", help="the server's AE title (default: PACS_ENGINE)")
    serve.add_argument("--host", help="the address to listen on (default: 127.0.0.1)")
    serve.add_argument("--config", metavar="FILE", help="a TOML configuration (docs/serve.md)")
    serve.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="AET[@HOST:PORT][=RIGHTS]",
        help="admit a calling AE title with comma-separated rights (store, query, retrieve); "
        "repeatable; adds to the config file's peers",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="ingest worker processes for the spool (default: the number of cores, as "
        "ingest; 0: in the server process)",
    )
    serve.add_argument(
        "--drain-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="ingest the spool at least this often (default 2)",
    )
    serve.add_argument(
        "--drain-batch",
        type=int,
        default=256,
        metavar="N",
        help="ingest at once when N instances wait, and at most N per run (default 256)",
    )
    serve.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the archive until SIGINT or SIGTERM."""
    from pacs_engine.archive import Archive
    from pacs_engine.ingest import make_executor
    from pacs_engine.serve.audit import AuditLog
    from pacs_engine.serve.config import ConfigError, check_ae_title, load_config, parse_peer
    from pacs_engine.serve.context import ServeContext
    from pacs_engine.serve.dimse import DimseServer
    from pacs_engine.serve.qr import QR_SERVICES
    from pacs_engine.serve.spool import Drain, Spool

    config = load_config(args.config)
    config = config.with_peers(*(parse_peer(text) for text in args.peer))
    if args.ae_title is not None:
        config = replace(config, ae_title=check_ae_title(args.ae_title, "--ae-title"))
    if args.host is not None:
        config = replace(config, host=args.host)
    port = args.dimse_port if args.dimse_port is not None else config.dimse_port
    if port is None or not 0 <= port < 1 << 16:
        raise ConfigError("--dimse-port: give a port from 0 to 65535 (or port in [dimse])")
    if args.drain_interval <= 0 or args.drain_batch < 1 or (args.workers or 0) < 0:
        raise ConfigError("--drain-interval and --drain-batch must be positive, --workers >= 0")

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    archive = Archive.open_or_create(args.archive)
    audit = AuditLog(archive.path)
    executor = make_executor(args.workers)
    spool = Spool(archive.path)
    drain = Drain(
        archive,
        spool,
        executor,
        interval=args.drain_interval,
        batch_size=args.drain_batch,
        on_report=_print_report,
    )
    server = DimseServer(ServeContext(archive, config, audit), spool, QR_SERVICES)
    try:
        drain.start()  # what a previous server left in the spool is ingested first
        host, bound = server.start(port)
        tls = ", TLS" if config.tls is not None else ""
        print(
            f"pacs-engine serve: {config.ae_title} listening on {host}:{bound} (DIMSE{tls}), "
            f"{len(config.peers)} peer(s) admitted",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        drain.stop()
        executor.close()
        audit.close()
        archive.close()
    print("pacs-engine serve: stopped", file=sys.stderr, flush=True)
    return 0


def _print_report(report: IngestReport) -> None:
    """One line on stderr per spool batch ingested (counts only)."""
    print(
        f"pacs-engine serve: spool batch ingested: {report.inputs} inputs: "
        f"{report.archived} archived, {report.duplicates} duplicates, "
        f"{report.conflicts} conflicts, {report.quarantined} quarantined",
        file=sys.stderr,
        flush=True,
    )
