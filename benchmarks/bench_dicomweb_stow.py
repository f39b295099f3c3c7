"""STOW-RS ingest throughput against Orthanc's DICOMweb plugin (issue 14), in the same run.

Run from the repository root (the table is printed by the last test, so use -s):

    PACS_ENGINE_CORPUS=/work/shared/corpus \\
        .venv/bin/python -m pytest benchmarks/bench_dicomweb_stow.py -q -s -p no:cacheprovider

Files: bench_dimse's selection (the corpus's CT and MR as bench_ingest selects them, less
the HTJ2K files), each sent as its file's bytes, in requests of `BATCH` instances
(`multipart/related; type="application/dicom"`, bodies built before the clock starts),
from 1 and 4 concurrent clients (threads, one keep-alive connection each, disjoint
shares of the requests), over loopback.

Receivers, fresh for each run, interleaved (ours, Orthanc, ...):
- ours: the STOW-RS app (`serve.web.stow`) served by uvicorn in a subprocess over a new
  archive, with the spool's drain thread and an ingest worker per core (what `pacs-engine
  serve --http` will run once it exists); a fixed bearer token. *acknowledged*: every
  request answered (each instance fsynced in the spool); *archived*: the spool is empty
  (the drain has ingested every instance).
- Orthanc (benchmarks/orthanc.py) with its DICOMweb plugin
  (/usr/share/orthanc/plugins/libOrthancDicomWeb.so), storing as received; it answers once
  stored, so acknowledged = archived.

MB/s = file bytes of the instances answered stored / seconds. PACS_ENGINE_BENCH_ROUNDS
(default 1) repeats each run; PACS_ENGINE_BENCH_TIMEOUT (default 600 s) bounds each.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import orthanc as orthanc_mod
from benchmarks.bench_dimse import _sendable
from benchmarks.bench_ingest import IngestSet, build_ingest_set
from benchmarks.conftest import ROOT

BATCH = 32
CONCURRENCY = (1, 4)
ROUNDS = int(os.environ.get("PACS_ENGINE_BENCH_ROUNDS", "1"))
TIMEOUT = float(os.environ.get("PACS_ENGINE_BENCH_TIMEOUT", "600"))
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
TOKEN = "bench-token"
OURS, ORTHANC = "pacs-engine STOW-RS", "Orthanc DICOMweb"

#: Our receiver, as a process: the STOW-RS app with the spool drain, on a free port.
SERVER = """
import socket, sys
import uvicorn
from pacs_engine.archive import Archive
from pacs_engine.ingest import make_executor
from pacs_engine.serve.audit import AuditLog
from pacs_engine.serve.config import ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.spool import Drain, Spool
from pacs_engine.serve.web import stow
from pacs_engine.serve.web.app import make_app
from pacs_engine.serve.web.request import Principal

archive = Archive.create(sys.argv[1])
audit = AuditLog(archive.path)
spool = Spool(archive.path)
drain = Drain(archive, spool, make_executor(None))
drain.start()
who = Principal("bench", frozenset({"uploader"}))
app = make_app(
    ServeContext(archive, ServeConfig(), audit),
    lambda request: who if request.headers.get("authorization") == "Bearer %s" else None,
    spool=spool,
    routes=stow.routes(1 << 32),
)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])
"""


@dataclass
class Run:
    """One receiver, one concurrency, one round."""

    receiver: str
    clients: int
    instances: int  # answered stored
    stored_bytes: int  # their file bytes
    acknowledged_s: float
    archived_s: float
    round_: int

    def mb_s(self, seconds: float) -> float:
        return self.stored_bytes / 1e6 / seconds


RUNS: list[Run] = []


@pytest.fixture(scope="module")
def stow_set() -> IngestSet:
    found = _sendable(build_ingest_set({"CT", "MR"}))
    if not found.paths:
        pytest.skip(f"no files to send ({found.label})")
    if not orthanc_mod.installed() or not Path(DICOMWEB_PLUGIN).is_file():
        pytest.skip("Orthanc or its DICOMweb plugin is not installed")
    return found


def bodies(fs: IngestSet) -> list[tuple[bytes, str]]:
    """The requests: (body, boundary), BATCH files each."""
    requests = []
    for start in range(0, len(fs.paths), BATCH):
        boundary = uuid.uuid4().hex
        files = [Path(p).read_bytes() for p in fs.paths[start : start + BATCH]]
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body = b"\r\n".join(head + f for f in files) + f"\r\n--{boundary}--\r\n".encode()
        requests.append((body, boundary))
    return requests


def sizes(fs: IngestSet) -> dict[str, int]:
    """File bytes by SOP Instance UID."""
    return {fs.sop_uids[p]: os.path.getsize(p) for p in fs.paths}


def post_all(
    port: int, path: str, requests: list[tuple[bytes, str]], clients: int
) -> tuple[float, list[str]]:
    """Every request, from `clients` threads: (seconds, SOP Instance UIDs answered stored)."""
    stored: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(share: list[tuple[bytes, str]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            for body, boundary in share:
                headers = {
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": "application/dicom+json",
                    "Authorization": f"Bearer {TOKEN}",
                }
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status not in (200, 202):
                    with lock:
                        errors.append(f"HTTP {response.status}: {answer[:300]!r}")
                    continue
                items = json.loads(answer).get("00081199", {}).get("Value", [])
                with lock:
                    stored.extend(item["00081155"]["Value"][0] for item in items)
        finally:
            conn.close()

    threads = [
        threading.Thread(target=client, args=(requests[i::clients],)) for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    seconds = time.perf_counter() - started
    assert not errors, errors[:3]
    return seconds, stored


@contextmanager
def our_server(archive: Path) -> Iterator[int]:
    """Our STOW-RS server process over a new archive; its port."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER % TOKEN, str(archive)],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        deadline = time.monotonic() + 60
        while True:  # until uvicorn answers
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_drained(archive: Path, started: float) -> float:
    """Seconds from `started` until the spool holds no instance (bounded)."""
    deadline = started + TIMEOUT
    while list((archive / "spool").glob("*/*.dcm")):
        assert time.perf_counter() < deadline, "the spool was not drained in time"
        time.sleep(0.05)
    return time.perf_counter() - started


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("clients", CONCURRENCY)
def test_stow_rs_ingest(stow_set: IngestSet, clients: int, round_: int) -> None:
    requests, size = bodies(stow_set), sizes(stow_set)
    with tempfile.TemporaryDirectory(prefix="pacs-bench-stow-") as folder:
        archive = Path(folder) / "archive"
        with our_server(archive) as port:
            started = time.perf_counter()
            seconds, stored = post_all(port, "/studies", requests, clients)
            archived = wait_drained(archive, started)
        total = sum(size[uid] for uid in stored)
        RUNS.append(Run(OURS, clients, len(stored), total, seconds, archived, round_))
    extra = {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with orthanc_mod.running_orthanc(extra=extra) as orthanc:
        seconds, stored = post_all(orthanc.http_port, "/dicom-web/studies", requests, clients)
        total = sum(size[uid] for uid in stored)
        RUNS.append(Run(ORTHANC, clients, len(stored), total, seconds, seconds, round_))
    assert RUNS[-2].instances == len(stow_set), RUNS[-2:]  # ours took every file


def test_report(stow_set: IngestSet) -> None:
    """The table: MB/s acknowledged and archived, and ours over Orthanc's, per run."""
    print(f"\nSTOW-RS ingest, {len(stow_set)} files ({stow_set.label}), {BATCH} a request")
    print(
        "| clients | round | ours: instances, MB/s acknowledged, archived "
        "| Orthanc: instances, MB/s | ratio acknowledged | ratio archived |"
    )
    print("|---|---|---|---|---|---|")
    ours = {(r.clients, r.round_): r for r in RUNS if r.receiver == OURS}
    for theirs in (r for r in RUNS if r.receiver == ORTHANC):
        mine = ours[(theirs.clients, theirs.round_)]
        ack, arch = mine.mb_s(mine.acknowledged_s), mine.mb_s(mine.archived_s)
        other = theirs.mb_s(theirs.acknowledged_s)
        print(
            f"| {theirs.clients} | {theirs.round_ + 1} | {mine.instances}, {ack:.1f}, {arch:.1f} "
            f"| {theirs.instances}, {other:.1f} | {ack / other:.2f} | {arch / other:.2f} |"
        )
