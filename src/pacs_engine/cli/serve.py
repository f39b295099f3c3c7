"""`pacs-engine serve`: the archive on the network (DIMSE: C-ECHO, C-STORE, Query/Retrieve;
DICOMweb: QIDO-RS, WADO-RS, STOW-RS)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacs_engine.cli._common import worker_count

if TYPE_CHECKING:
    from pacs_engine.archive import IngestReport
    from pacs_engine.serve.config import ServeConfig
    from pacs_engine.serve.context import ServeContext
    from pacs_engine.serve.spool import Spool
    from pacs_engine.serve.web.server import HttpServer


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `serve`."""
    serve = commands.add_parser(
        "serve",
        help="serve an archive on the network (DICOM C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE; "
        "DICOMweb)",
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
        "what waits in the spool is ingested at the next start). With --http, DICOMweb "
        "(QIDO-RS, WADO-RS, STOW-RS) in the same process, for callers with an OIDC bearer "
        "token or an API key (`pacs-engine keys`); STOW-RS writes to the same spool. "
        "Give --dimse-port, --http or both (or their ports in the config file). "
        "See docs/serve.md and docs/dicomweb.md.",
    )
    serve.add_argument("archive", metavar="ARCHIVE", help="the archive folder")
    serve.add_argument(
        "--dimse-port",
        type=int,
        metavar="PORT",
        help="the DIMSE port (0: a free port, printed; default: the config file's)",
    )
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve DICOMweb on HOST:PORT (port 0: a free one, printed; default: [http] of "
        "the config file, if any)",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="DICOMweb over HTTPS: the certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="DICOMweb over HTTPS: its private key")
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
        type=worker_count,
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
    from pacs_engine.serve.context import ServeContext, keep_values_out_of_logs
    from pacs_engine.serve.dimse import DimseServer
    from pacs_engine.serve.qr import QR_SERVICES
    from pacs_engine.serve.spool import Drain, Spool

    config = _http_options(args, load_config(args.config))
    config = config.with_peers(*(parse_peer(text) for text in args.peer))
    if args.ae_title is not None:
        config = replace(config, ae_title=check_ae_title(args.ae_title, "--ae-title"))
    if args.host is not None:
        config = replace(config, host=args.host)
    port = args.dimse_port if args.dimse_port is not None else config.dimse_port
    if port is None and config.http.port is None:
        raise ConfigError(
            "give --dimse-port, --http or both (or port in [dimse] or [http] of --config)"
        )
    if port is not None and not 0 <= port < 1 << 16:
        raise ConfigError("--dimse-port: give a port from 0 to 65535 (or port in [dimse])")
    if args.drain_interval <= 0 or args.drain_batch < 1 or (args.workers or 0) < 0:
        raise ConfigError("--drain-interval and --drain-batch must be positive, --workers >= 0")

    keep_values_out_of_logs()
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
    context = ServeContext(archive, config, audit)
    server = DimseServer(context, spool, QR_SERVICES) if port is not None else None
    web = _http_server(context, spool) if config.http.port is not None else None
    try:
        drain.start()  # what a previous server left in the spool is ingested first
        listening = []
        if server is not None and port is not None:
            host, bound = server.start(port)
            tls = ", TLS" if config.tls is not None else ""
            listening.append(
                f"{config.ae_title} listening on {host}:{bound} (DIMSE{tls}), "
                f"{len(config.peers)} peer(s) admitted"
            )
        if web is not None and config.http.port is not None:
            host, bound = web.start(config.http.host, config.http.port)
            listening.append(f"DICOMweb listening on {web.scheme}://{host}:{bound}")
        print(f"pacs-engine serve: {'; '.join(listening)}", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        if web is not None:
            web.stop()
        if server is not None:
            server.stop()
        drain.stop()
        executor.close()
        audit.close()
        archive.close()
    print("pacs-engine serve: stopped", file=sys.stderr, flush=True)
    return 0


def _http_options(args: argparse.Namespace, config: ServeConfig) -> ServeConfig:
    """`config` with --http, --tls-cert and --tls-key applied."""
    from pacs_engine.serve.config import ConfigError, TlsConfig, parse_address

    http = config.http
    if args.http is not None:
        host, port = parse_address(args.http, "--http")
        http = replace(http, host=host, port=port)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key: give both, or neither")
    if args.tls_cert is not None:
        http = replace(http, tls=TlsConfig(Path(args.tls_cert), Path(args.tls_key)))
    return replace(config, http=http)


def _http_server(context: ServeContext, spool: Spool) -> HttpServer:
    """The DICOMweb application on uvicorn, authenticating with the archive's keys and OIDC."""
    from pacs_engine.serve.web.app import make_app
    from pacs_engine.serve.web.auth import Authenticator
    from pacs_engine.serve.web.server import HttpServer

    http = context.config.http
    app = make_app(context, Authenticator(context.archive.path, http.oidc), spool=spool)
    return HttpServer(app, http.tls)


def _print_report(report: IngestReport) -> None:
    """One line on stderr per spool batch ingested (counts only)."""
    print(
        f"pacs-engine serve: spool batch ingested: {report.inputs} inputs: "
        f"{report.archived} archived, {report.duplicates} duplicates, "
        f"{report.conflicts} conflicts, {report.quarantined} quarantined",
        file=sys.stderr,
        flush=True,
    )
