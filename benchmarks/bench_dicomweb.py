"""WADO-RS frame retrieval against Orthanc's DICOMweb plugin (issue 14), in one run.

Run from the repository root (the table is printed, so use -s):

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_dicomweb.py -q -s -p no:cacheprovider

Files: `pacs_engine.synth` 512 x 512 CT, one series stored JPEG-LS lossless and one
explicit VR little endian (SLICES each), and of each series one multi-frame instance of
its SLICES frames (the JPEG-LS bitstreams, or the native bytes), archived by us (the
default codec: JPEG-LS for native CT) and stored by Orthanc 1.10 with its DICOMweb
plugin (benchmarks/orthanc.py), both on loopback.

Our server runs in its own process (`python benchmarks/bench_dicomweb.py serve ARCHIVE
PORT`: uvicorn, one worker, the WADO-RS routes, a fixed bearer token, the audit trail
on as in production). The load generator is this process: asyncio with a minimal
HTTP/1.1 keep-alive client (one connection per simulated client; httpx costs more CPU
per request than the servers do, on this 2-core machine it would measure itself).
Each client loops: a random frame of the set (the first frame of a random 1-frame
instance, or a random frame of the multi-frame instance), `GET .../frames/N` with an
Accept naming the stored syntax (`image/jls` + 1.2.840.10008.1.2.4.80, or
`application/octet-stream` + 1.2.840.10008.1.2.1), so that neither server transcodes;
then `.../frames/1/rendered` of the 1-frame native instances as image/png at 8
clients. Each run is bounded by REQUESTS requests and SECONDS seconds, after a warm-up
of every URL once; frames/s = requests answered / wall seconds; p50/p99 of each
request's latency. The two servers' runs are interleaved; the first frame of each set
is checked to be the same bytes from both.

PACS_ENGINE_BENCH_SLICES (default 64), PACS_ENGINE_BENCH_REQUESTS (default 4000) and
PACS_ENGINE_BENCH_SECONDS (default 10) set the bounds.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orthanc import free_port, running_orthanc

SLICES = int(os.environ.get("PACS_ENGINE_BENCH_SLICES", "64"))
REQUESTS = int(os.environ.get("PACS_ENGINE_BENCH_REQUESTS", "4000"))
SECONDS = float(os.environ.get("PACS_ENGINE_BENCH_SECONDS", "10"))
CONCURRENCY = (1, 8, 32)
TOKEN = "bench-token"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ACCEPT = {
    "1.2.840.10008.1.2.4.80": 'multipart/related; type="image/jls"; '
    "transfer-syntax=1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.1": 'multipart/related; type="application/octet-stream"; '
    "transfer-syntax=1.2.840.10008.1.2.1",
}
SYNTAX_NAMES = {"1.2.840.10008.1.2.4.80": "JPEG-LS", "1.2.840.10008.1.2.1": "native"}
START_SECONDS = 60


# --- our server, in its own process ---------------------------------------------------


def serve(archive_path: str, port: int) -> None:
    """Serve the archive's WADO-RS routes on 127.0.0.1:`port` until killed."""
    import uvicorn
    from starlette.requests import Request

    from pacs_engine import open_archive
    from pacs_engine.serve.audit import AuditLog
    from pacs_engine.serve.config import ServeConfig
    from pacs_engine.serve.context import ServeContext
    from pacs_engine.serve.web import wado
    from pacs_engine.serve.web.app import make_app
    from pacs_engine.serve.web.request import Principal

    reader = Principal("bench", frozenset({"reader"}))

    def authenticate(request: Request) -> Principal | None:
        return reader if request.headers.get("authorization") == f"Bearer {TOKEN}" else None

    archive = open_archive(archive_path)
    context = ServeContext(archive, ServeConfig(), AuditLog(archive_path))
    app = make_app(context, authenticate, routes=wado.routes())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def our_server(archive: Path) -> Iterator[int]:
    """Our WADO-RS server in a subprocess; yields its port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "serve", str(archive), str(port)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("our WADO-RS server did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the load generator --------------------------------------------------------------


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


# --- the benchmark ----------------------------------------------------------------------


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
    extra = {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    rows: list[tuple[str, str, int, Result]] = []
    with running_orthanc(extra=extra) as orthanc, our_server(folder / "archive") as port:
        for path in written:
            conn = orthanc.connection(timeout=60)
            conn.request("POST", "/instances", body=path.read_bytes())
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            conn.close()
        servers = {
            "pacs_engine": (port, "", {"Authorization": f"Bearer {TOKEN}"}),
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


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    serve(sys.argv[2], int(sys.argv[3]))
