"""What the DIMSE server tests share: an in-process server, dcmtk runs, corpus picks."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conftest import ROOT

from pacs_engine.archive import Archive, IngestReport
from pacs_engine.ingest import make_executor
from pacs_engine.serve.audit import AuditLog, read_records
from pacs_engine.serve.config import ServeConfig, parse_peer
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.dimse import DimseServer, Service
from pacs_engine.serve.spool import Drain, Spool

TOOL_SECONDS = 60
#: Bounds on a `pacs-engine serve` process starting and stopping.
START_SECONDS = 60
STOP_SECONDS = 30
AE_TITLE = "PACS_ENGINE"

#: The storescu option that proposes a file's own transfer syntax (dcmtk 3.6.7).
PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.5": "-xr",
}


@dataclass
class Running:
    """An in-process server over a fresh archive, whose spool is drained on demand."""

    root: Path
    archive: Archive
    audit: AuditLog
    spool: Spool
    drain: Drain
    server: DimseServer
    port: int
    reports: list[IngestReport] = field(default_factory=list)

    def drain_now(self) -> None:
        """Ingest what the spool holds, in this thread."""
        self.drain.drain()

    def records(self, action: str | None = None) -> list[dict]:
        """The audit records so far (of one action)."""
        return [r for r in read_records(self.root) if action is None or r["action"] == action]


@contextmanager
def running_server(
    root: Path,
    peers: Sequence[str] = ("SCU=store,query,retrieve",),
    services: Sequence[Service] = (),
    **config: object,
) -> Iterator[Running]:
    """A DIMSE server on 127.0.0.1 (a free port) over a new archive at `root`."""
    archive = Archive.create(root)
    audit = AuditLog(root, sync_seconds=0.0)
    settings = ServeConfig(**config).with_peers(*(parse_peer(p) for p in peers))  # type: ignore[arg-type]
    spool = Spool(root)
    executor = make_executor(0)
    reports: list[IngestReport] = []
    drain = Drain(archive, spool, executor, on_report=reports.append)
    server = DimseServer(ServeContext(archive, settings, audit), spool, services)
    _, port = server.start(0)
    try:
        yield Running(root, archive, audit, spool, drain, server, port, reports)
    finally:
        server.stop()
        audit.close()
        archive.close()


def run_tool(*args: str) -> subprocess.CompletedProcess:
    """Run a dcmtk tool, bounded in time; its output kept."""
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=TOOL_SECONDS, check=False
    )


def echoscu(port: int, calling: str = "SCU", *extra: str) -> subprocess.CompletedProcess:
    """dcmtk's echoscu against the server."""
    return run_tool("echoscu", *extra, "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port))


def storescu(
    port: int, files: Sequence[Path], syntax: str, calling: str = "SCU"
) -> subprocess.CompletedProcess:
    """dcmtk's storescu sending `files` in their own transfer syntax `syntax`."""
    return run_tool(
        "storescu",
        PROPOSE[syntax],
        "-aet",
        calling,
        "-aec",
        AE_TITLE,
        "127.0.0.1",
        str(port),
        *map(str, files),
    )


def manifest(corpus: Path) -> list[dict[str, str]]:
    """The corpus manifest's rows."""
    lines = (corpus / "MANIFEST.tsv").read_text().splitlines()
    names = lines[0].split("\t")
    return [dict(zip(names, line.split("\t"), strict=False)) for line in lines[1:] if line]


# --- `pacs-engine serve` as a process ---------------------------------------------------


def serve_command(archive: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pacs_engine.cli", "serve", str(archive), *args]


@contextmanager
def serving(archive: Path, *args: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """`pacs-engine serve` on a free port; (process, port) once it listens."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = serve_command(archive, "--dimse-port", "0", "--workers", "1", *args)
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc, wait_listening(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_SECONDS)
        proc.stderr.close()


def wait_listening(proc: subprocess.Popen) -> int:
    """The port from the server's one "listening" line (bounded in time)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            line = proc.stderr.readline()
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
            assert line, f"the server ended: exit {proc.poll()}"
    raise AssertionError("the server did not start listening in time")


def wait_drained(archive: Path) -> None:
    """Wait (bounded) until the spool holds no instance, in either of its folders."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not list((archive / "spool").glob("*/*.dcm")):
            return
        time.sleep(0.2)
    raise AssertionError("the spool was not drained in time")


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, then its exit code and the rest of its stderr (bounded in time)."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(STOP_SECONDS)
    return code, proc.stderr.read()
