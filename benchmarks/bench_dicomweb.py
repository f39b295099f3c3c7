"""DICOMweb against Orthanc's DICOMweb plugin, in one run (issue 14): the four rows.

Run from the repository root (the tables are printed, so use -s); `-k` selects a row:

    PYTHONPATH=src:. PACS_ENGINE_CORPUS=/work/shared/corpus .venv/bin/python -m pytest \\
        benchmarks/bench_dicomweb.py -q -s -p no:cacheprovider [-k frames|qido|stow]

- **frames** (`test_wado_frames_against_orthanc`): random single-frame WADO-RS retrieval
  from 1, 8 and 32 clients, and rendered PNG at 8 clients. Files: `pacs_engine.synth`
  512 x 512 CT, one series stored JPEG-LS lossless and one explicit VR little endian
  (SLICES each), and of each series one multi-frame instance of its SLICES frames,
  archived by us and stored by Orthanc with its DICOMweb plugin. Each client loops: a
  random frame of the set, `GET .../frames/N` with an Accept naming the stored syntax, so
  that neither server transcodes. Each run is bounded by REQUESTS requests and SECONDS
  seconds after a warm-up of every URL once; frames/s = requests answered / wall seconds;
  p50/p99 of each request's latency. The two servers' runs are interleaved; the first
  frame of each set is checked to be the same bytes from both. PACS_ENGINE_BENCH_WORKERS
  (default 1) is the number of HTTP worker processes of our server.
- **qido** (`test_qido_study_search_latency`): bench_cfind's synthetic index of 100,000
  instances (2,000 studies of 2 series of 25 instances; no pixels: QIDO-RS reads only the
  index); `GET /studies?...` from one keep-alive httpx client, the four kinds of query
  bench_cfind sends, request sent to body read; the same searches in-process (`qido.parse`,
  `find`, `qido.answer`: the work without HTTP); `GET /health` on the same connection; and
  the unfiltered pages `/studies?limit=100` and `/instances?limit=100` (PAGES times each).
- **stow** (`test_stow_rs_ingest`, `test_stow_report`): bench_dimse's selection (the
  corpus's CT and MR, less the HTJ2K files), sent as the files' bytes in requests of
  BATCH instances from 1 and 4 concurrent clients (threads, one keep-alive connection
  each); ours is acknowledged (every request answered, each instance fsynced in the
  spool) and archived (the spool drained into the archive); Orthanc answers once stored.
  MB/s = file bytes of the instances answered stored / seconds. Each run is bounded by
  PACS_ENGINE_BENCH_TIMEOUT (default 600 s).

Our server runs in its own process (`python -m benchmarks.bench_dicomweb serve ARCHIVE
KIND WORKERS`: uvicorn, the routes of KIND, a fixed bearer token, the audit trail on as in
production; for stow a new archive with the spool's drain and an ingest worker per core).
The frame load generator is this process: asyncio with a minimal HTTP/1.1 keep-alive
client (httpx costs more CPU per request than the servers do; on this 2-core machine it
would measure itself).

PACS_ENGINE_BENCH_SLICES (default 64), PACS_ENGINE_BENCH_REQUESTS (default 4000),
PACS_ENGINE_BENCH_SECONDS (default 10) and PACS_ENGINE_BENCH_ROUNDS (stow, default 1) set
the other bounds.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import signal
import socket
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

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from benchmarks import orthanc as orthanc_mod
from benchmarks.bench_cfind import QUERIES, ROWS_PER_SERIES, SERIES_PER_STUDY, STUDIES, rows_of
from benchmarks.bench_dimse import _sendable
from benchmarks.bench_ingest import IngestSet, build_ingest_set
from benchmarks.conftest import ROOT

SLICES = int(os.environ.get("PACS_ENGINE_BENCH_SLICES", "64"))
REQUESTS = int(os.environ.get("PACS_ENGINE_BENCH_REQUESTS", "4000"))
SECONDS = float(os.environ.get("PACS_ENGINE_BENCH_SECONDS", "10"))
WORKERS = int(os.environ.get("PACS_ENGINE_BENCH_WORKERS", "1"))
ROUNDS = int(os.environ.get("PACS_ENGINE_BENCH_ROUNDS", "1"))
TIMEOUT = float(os.environ.get("PACS_ENGINE_BENCH_TIMEOUT", "600"))
CONCURRENCY = (1, 8, 32)
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_DICOMWEB = {
    "Plugins": [DICOMWEB_PLUGIN],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
}
ACCEPT = {
    "1.2.840.10008.1.2.4.80": 'multipart/related; type="image/jls"; '
    "transfer-syntax=1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.1": 'multipart/related; type="application/octet-stream"; '
    "transfer-syntax=1.2.840.10008.1.2.1",
}
SYNTAX_NAMES = {"1.2.840.10008.1.2.4.80": "JPEG-LS", "1.2.840.10008.1.2.1": "native"}
START_SECONDS = 60
#: QIDO: the unfiltered pages, and how many times each is asked.
PAGES = ("/studies?limit=100", "/instances?limit=100")
PAGE_REPEATS = 5
INCLUDE = "includefield=StudyDescription"
STOW_BATCH = 32
STOW_CONCURRENCY = (1, 4)
OURS, ORTHANC = "pacs-engine STOW-RS", "Orthanc DICOMweb"


# --- our server, in its own process ---------------------------------------------------


def serve(archive_path: str, kind: str, workers: int) -> None:
    """Serve the `kind` routes (wado, qido, stow) on a free loopback port, printed, until killed."""
    import uvicorn
    from starlette.requests import Request

    from pacs_engine import Archive, open_archive
    from pacs_engine.ingest import make_executor
    from pacs_engine.serve.audit import AuditLog
    from pacs_engine.serve.config import ServeConfig
    from pacs_engine.serve.context import ServeContext
    from pacs_engine.serve.spool import Drain, Spool
    from pacs_engine.serve.web import qido, stow, wado
    from pacs_engine.serve.web.app import make_app
    from pacs_engine.serve.web.request import Principal

    who = Principal("bench", frozenset({"reader", "uploader"}))

    def authenticate(request: Request) -> Principal | None:
        return who if request.headers.get("authorization") == AUTH["Authorization"] else None

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    # More worker processes accepting on the same socket (what several HTTP workers would
    # be), each opening the archive after the fork; for wado and qido only.
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    spool = None
    if kind == "stow":
        archive = Archive.create(archive_path)
        spool = Spool(archive.path)
        Drain(archive, spool, make_executor(None)).start()
    else:
        archive = open_archive(archive_path)
    routes = {"wado": wado.routes, "qido": qido.routes, "stow": lambda: stow.routes(1 << 32)}
    context = ServeContext(archive, ServeConfig(), AuditLog(archive.path))
    app = make_app(context, authenticate, spool=spool, routes=routes[kind]())
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def our_server(archive: Path, kind: str, workers: int = 1) -> Iterator[int]:
    """Our server of `kind` in a subprocess (its own session); yields its port once it answers."""
    command = ["-m", "benchmarks.bench_dicomweb", "serve", str(archive), kind, str(workers)]
    process = subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("our DICOMweb server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # every worker process
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- the frame load generator ------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: GET, read the whole answer (length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        named = {}
        for field in fields:
            name, _, value = field.partition(":")
            named[name.strip().lower()] = value.strip()
        if "content-length" in named:
            return status, await self.reader.readexactly(int(named["content-length"]))
        body = bytearray()
        while True:  # chunked
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await self.reader.readexactly(size + 2)
            if size == 0:
                return status, bytes(body[:-2])
            del body[-2:]

    def close(self) -> None:
        self.writer.close()


@dataclass
class Result:
    """One run: requests answered, wall seconds, latencies (s)."""

    count: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def load(
    port: int, paths: list[str], headers: dict[str, str], clients: int, seed: int
) -> Result:
    """`clients` connections GETting random `paths` until REQUESTS or SECONDS run out."""
    connections = [await Connection.open(port) for _ in range(clients)]
    for path in paths:  # warm-up: every path once (page cache, caches of each server)
        status, body = await connections[0].get(path, headers)
        assert status == 200, (path, status, body[:200])
    rng = random.Random(seed)
    latencies: list[float] = []
    left = REQUESTS
    deadline = time.monotonic() + SECONDS

    async def client(connection: Connection) -> None:
        nonlocal left
        while left > 0 and time.monotonic() < deadline:
            left -= 1
            path = rng.choice(paths)
            start = time.perf_counter()
            status, body = await connection.get(path, headers)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status} {body[:200]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    seconds = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return Result(len(latencies), seconds, latencies)


async def fetch_once(port: int, path: str, headers: dict[str, str]) -> bytes:
    """One GET's body, on a connection of its own."""
    connection = await Connection.open(port)
    status, body = await connection.get(path, headers)
    connection.close()
    assert status == 200, body[:200]
    return body


def frame_body(body: bytes) -> bytes:
    """The first part's body of a multipart/related answer."""
    boundary = body.split(b"\r\n", 1)[0]
    first = body.split(boundary)[1]
    return first.split(b"\r\n\r\n", 1)[1][:-2]


@dataclass
class FrameSet:
    """Frames requested at random: their description, stored syntax and URLs."""

    name: str
    syntax: str
    paths: list[str]


def multi_frame(slices: list[Path], out: Path) -> Path:
    """One multi-frame instance of the slices' frames (their bitstreams, or native bytes)."""
    first = pydicom.dcmread(slices[0])
    frames = [pydicom.dcmread(path) for path in slices]
    if first.file_meta.TransferSyntaxUID.is_compressed:
        bitstreams = [next(generate_frames(ds.PixelData, number_of_frames=1)) for ds in frames]
        first.PixelData = encapsulate(bitstreams)
    else:
        first.PixelData = b"".join(ds.PixelData for ds in frames)
    first.NumberOfFrames = len(frames)
    first.SeriesInstanceUID = first.SeriesInstanceUID + ".9"
    first.SOPInstanceUID = first.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID + ".9"
    first.save_as(out, enforce_file_format=True)
    return out


@pytest.fixture(scope="module")
def files() -> Iterator[tuple[Path, list[Path]]]:
    from pacs_engine.synth import write_studies

    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as folder:
        written = write_studies(
            Path(folder) / "src",
            1,
            2,
            SLICES,
            syntaxes=("jpegls", "explicit"),
            modalities=("CT",),
            threads=2,
        )
        (Path(folder) / "src" / "multi").mkdir()
        for n, series in enumerate(sorted({path.parent for path in written})):
            slices = sorted(path for path in written if path.parent == series)
            written.append(multi_frame(slices, Path(folder) / "src" / "multi" / f"{n}.dcm"))
        yield Path(folder), written


def frame_sets(written: list[Path]) -> list[FrameSet]:
    """The single-frame instances by syntax, and each multi-frame instance's frames."""
    sets: dict[str, FrameSet] = {}
    for path in written:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        url = (
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/"
        )
        frames = int(ds.get("NumberOfFrames") or 1)
        kind = f"{frames}-frame instance" if frames > 1 else "1-frame instances"
        name = f"{kind}, {SYNTAX_NAMES[syntax]}"
        paths = sets.setdefault(name, FrameSet(name, syntax, [])).paths
        paths += [f"{url}{k}" for k in range(1, frames + 1)]
    return sorted(sets.values(), key=lambda s: s.name)


def test_wado_frames_against_orthanc(files: tuple[Path, list[Path]]) -> None:
    from pacs_engine import Archive

    folder, written = files
    archive = Archive.create(folder / "archive")
    archive.ingest([folder / "src"], workers=0)
    archive.close()
    sets = frame_sets(written)
    rows: list[tuple[str, str, int, Result]] = []
    with (
        orthanc_mod.running_orthanc(extra=ORTHANC_DICOMWEB) as orthanc,
        our_server(folder / "archive", "wado", WORKERS) as port,
    ):
        for path in written:
            conn = orthanc.connection(timeout=60)
            conn.request("POST", "/instances", body=path.read_bytes())
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            conn.close()
        servers = {
            "pacs_engine": (port, "", AUTH),
            "orthanc": (orthanc.http_port, "/dicom-web", {}),
        }

        def run(name: str, kind: str, paths: list[str], accept: str, clients: int) -> None:
            port_, prefix, auth = servers[name]
            headers = {**auth, "Accept": accept}
            result = asyncio.run(load(port_, [prefix + p for p in paths], headers, clients, 1))
            rows.append((name, kind, clients, result))

        for one in sets:  # the same frame bytes from both, as stored
            bodies = []
            for port_, prefix, auth in servers.values():
                headers = {**auth, "Accept": ACCEPT[one.syntax]}
                body = asyncio.run(fetch_once(port_, prefix + one.paths[0], headers))
                bodies.append(frame_body(body))
            assert bodies[0] == bodies[1], one.syntax
        for one in sets:
            for clients in CONCURRENCY:
                for name in servers:  # interleaved, so that both see the same machine
                    run(name, one.name, one.paths, ACCEPT[one.syntax], clients)
        (native,) = [one for one in sets if one.name == "1-frame instances, native"]
        rendered = [p + "/rendered" for p in native.paths]
        for name in servers:
            run(name, "rendered PNG", rendered, "image/png", 8)
    print()
    print(
        f"{'server':<12} {'what':<36} {'clients':>7} {'n':>6} {'/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    )
    for name, kind, clients, result in rows:
        print(
            f"{name:<12} {kind:<36} {clients:>7} {result.count:>6} {result.rate:>8.0f} "
            f"{1000 * result.percentile(50):>8.2f} {1000 * result.percentile(99):>8.2f}"
        )
    by = {(name, kind, clients): result for name, kind, clients, result in rows}
    print()
    for kind in sorted({kind for _, kind, _, _ in rows}):
        for clients in CONCURRENCY:
            ours, theirs = (
                by.get(("pacs_engine", kind, clients)),
                by.get(("orthanc", kind, clients)),
            )
            if ours and theirs:
                print(f"{kind}, {clients} clients: {ours.rate / theirs.rate:.1f}x Orthanc's rate")


# --- QIDO-RS at 100,000 instances ----------------------------------------------------------


def query_of(rnd: random.Random) -> dict[str, str]:
    """One study search, as bench_cfind's query_of picks them."""
    study = rnd.randrange(STUDIES)
    row = rows_of(study)[0]
    kind = rnd.randrange(4)
    if kind == 0:
        return {"PatientID": row["PatientID"]}
    if kind == 1:
        return {"AccessionNumber": row["AccessionNumber"]}
    if kind == 2:
        return {"PatientName": row["PatientName"].split("^")[0] + "^GIVEN*"}
    return {"StudyDate": row["StudyDate"]}


def timed_get(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    """Seconds from request sent to body read, and the response."""
    start = time.perf_counter()
    response = client.get(path)
    response.read()
    return time.perf_counter() - start, response


def test_qido_study_search_latency(tmp_path: Path) -> None:
    from pacs_engine import Archive
    from pacs_engine.serve.web import qido

    archive = Archive.create(tmp_path / "a")
    built = time.perf_counter()
    for first in range(0, STUDIES, 20):
        archive.index.commit([r for s in range(first, first + 20) for r in rows_of(s)])
    built = time.perf_counter() - built
    instances = STUDIES * SERIES_PER_STUDY * ROWS_PER_SERIES
    assert len(archive.index) == instances
    rnd = random.Random(14)
    searches = [query_of(rnd) for _ in range(QUERIES)]
    http_times, direct_times, health_times, matches = [], [], [], []
    pages: dict[str, list[float]] = {page: [] for page in PAGES}
    with (
        our_server(archive.path, "qido") as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=120) as client,
    ):
        for filters in searches:
            query = "&".join([*(f"{k}={v}" for k, v in filters.items()), INCLUDE])
            seconds, response = timed_get(client, f"/studies?{query}")
            http_times.append(seconds)
            assert response.status_code in (200, 204)
            matches.append(len(response.json()) if response.content else 0)
        for _ in range(QUERIES):  # HTTP with authentication, no search: the floor
            seconds, response = timed_get(client, "/health")
            assert response.status_code == 200
            health_times.append(seconds)
        for _ in range(PAGE_REPEATS):
            for page in PAGES:
                seconds, response = timed_get(client, page)
                assert response.status_code == 200 and len(response.json()) == 100
                assert "additional results" in response.headers["warning"]
                pages[page].append(seconds)
    for filters in searches:  # the same searches in-process: parse, find, DICOM JSON
        params = {k: [v] for k, v in filters.items()} | {"includefield": ["StudyDescription"]}
        start = time.perf_counter()
        parsed = qido.parse(qido.SEARCHES[0], params, {})
        found = list(qido.find(archive, parsed.query))
        qido.answer(parsed, found, "http://127.0.0.1", "PACS_ENGINE")
        direct_times.append(time.perf_counter() - start)
        assert len(found) >= 1
    archive.close()
    ms, direct = np.array(http_times) * 1000, np.array(direct_times) * 1000
    health = np.array(health_times) * 1000
    ratio = np.percentile(ms, 50) / np.percentile(direct, 50)
    print(
        f"\nQIDO-RS /studies on {instances:,} instances ({STUDIES:,} studies; index built in "
        f"{built:.0f} s): {QUERIES} searches, p50 {np.percentile(ms, 50):.2f} ms, "
        f"p99 {np.percentile(ms, 99):.2f} ms, mean matches {np.mean(matches):.1f}; "
        f"the same searches in-process (parse, find, DICOM JSON): p50 "
        f"{np.percentile(direct, 50):.2f} ms (HTTP/in-process {ratio:.1f}); "
        f"GET /health on the same client: p50 {np.percentile(health, 50):.2f} ms"
    )
    for page, times in pages.items():
        print(
            f"QIDO-RS {page} (no filter, {PAGE_REPEATS} times): "
            f"p50 {1000 * np.percentile(times, 50):.1f} ms, max {1000 * max(times):.1f} ms"
        )


# --- STOW-RS ------------------------------------------------------------------------------


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
    """The requests: (body, boundary), STOW_BATCH files each."""
    requests = []
    for start in range(0, len(fs.paths), STOW_BATCH):
        boundary = uuid.uuid4().hex
        files = [Path(p).read_bytes() for p in fs.paths[start : start + STOW_BATCH]]
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
                    **AUTH,
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


def wait_drained(archive: Path, started: float) -> float:
    """Seconds from `started` until the spool holds no instance (bounded)."""
    deadline = started + TIMEOUT
    while list((archive / "spool").glob("*/*.dcm")):
        assert time.perf_counter() < deadline, "the spool was not drained in time"
        time.sleep(0.05)
    return time.perf_counter() - started


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("clients", STOW_CONCURRENCY)
def test_stow_rs_ingest(stow_set: IngestSet, clients: int, round_: int) -> None:
    requests, size = bodies(stow_set), sizes(stow_set)
    with tempfile.TemporaryDirectory(prefix="pacs-bench-stow-") as folder:
        archive = Path(folder) / "archive"
        with our_server(archive, "stow") as port:
            started = time.perf_counter()
            seconds, stored = post_all(port, "/studies", requests, clients)
            archived = wait_drained(archive, started)
        total = sum(size[uid] for uid in stored)
        RUNS.append(Run(OURS, clients, len(stored), total, seconds, archived, round_))
    with orthanc_mod.running_orthanc(extra=ORTHANC_DICOMWEB) as orthanc:
        seconds, stored = post_all(orthanc.http_port, "/dicom-web/studies", requests, clients)
        total = sum(size[uid] for uid in stored)
        RUNS.append(Run(ORTHANC, clients, len(stored), total, seconds, seconds, round_))
    assert RUNS[-2].instances == len(stow_set), RUNS[-2:]  # ours took every file


def test_stow_report(stow_set: IngestSet) -> None:
    """The table: MB/s acknowledged and archived, and ours over Orthanc's, per run."""
    print(f"\nSTOW-RS ingest, {len(stow_set)} files ({stow_set.label}), {STOW_BATCH} a request")
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


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "serve":
    serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
