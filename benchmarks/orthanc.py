"""Start and stop a throwaway Orthanc (Debian's /usr/sbin/Orthanc) for peer benchmarks.

`running_orthanc()` writes a temporary configuration and starts Orthanc with it:

- storage in `<tmp>/storage` (DICOM files only) and the SQLite index in `<tmp>/index`,
  so that the storage folder's size is what Orthanc keeps per instance;
- `StorageCompression` false; `IngestTranscoding` only when asked (e.g. JPEG-LS lossless);
- HTTP and DICOM ports picked free at random; `RemoteAccessAllowed` false (Orthanc
  answers HTTP from localhost only) and no authentication; any calling AE may store
  (`DicomAlwaysAllowStore`, `DicomCheckCalledAet` false, `UnknownSopClassAccepted`);
- no plugins, no saved jobs; its output goes to `<tmp>/orthanc.log`;
- `extra` options merged over these (e.g. `DicomModalities`, so that Orthanc can
  C-MOVE to an AE of ours: `{"DicomModalities": {"pacs": ["PACS_ENGINE", "127.0.0.1", 11112]}}`);
- `env` variables added to its environment (e.g. `{"TCP_NODELAY": "1"}`: Debian's DCMTK,
  which Orthanc's DICOM side is, leaves Nagle's algorithm on unless told, and then each
  C-STORE it sends waits out the peer's delayed ACK, about 90 ms an instance).

The context manager stops Orthanc on exit, also when the body raises: SIGTERM (Orthanc
shuts down cleanly on it), then SIGKILL after a timeout, then removes the folder.
`Orthanc.start()` restarts it on the same storage after a crash.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
AET = "ORTHANC"


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def installed() -> bool:
    """Whether the Orthanc executable exists."""
    return os.access(ORTHANC, os.X_OK)


@dataclass
class Orthanc:
    """A running Orthanc: its process, ports and folders."""

    process: subprocess.Popen[bytes] | None
    folder: Path
    http_port: int
    dicom_port: int
    env: dict[str, str] | None = None  # added to the inherited environment

    @property
    def storage(self) -> Path:
        return self.folder / "storage"

    @property
    def log(self) -> Path:
        return self.folder / "orthanc.log"

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart, after a crash) on this folder's config; wait until it answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC, str(self.folder / "orthanc.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C does not reach it; we stop it ourselves
                env={**os.environ, **(self.env or {})},
            )
        _wait_ready(self, timeout)

    def alive(self) -> bool:
        """False once the process has exited (crashed or stopped)."""
        return self.process is not None and self.process.poll() is None

    def died(self, within: float = 10.0) -> bool:
        """Whether it exits within `within` s (a crashing process closes its sockets first)."""
        if self.process is None:
            return True
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            return False
        return True

    def connection(self, timeout: float = 600.0) -> http.client.HTTPConnection:
        """A new keep-alive HTTP connection to the REST API."""
        return http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)

    def get(self, path: str) -> Any:
        """GET a REST resource as JSON (a fresh connection)."""
        conn = self.connection()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def peak_rss_kib(self) -> int | None:
        """The process's peak resident set so far (VmHWM), None once it has exited."""
        if self.process is None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None

    def storage_bytes(self) -> int:
        """Apparent size of every file in the storage folder (the index is elsewhere)."""
        return sum(p.stat().st_size for p in self.storage.rglob("*") if p.is_file())


def config(
    folder: Path,
    http_port: int,
    dicom_port: int,
    transcode_to: str | None,
    extra: dict[str, Any] | None = None,
) -> dict:
    """The configuration `running_orthanc` writes (see the module docstring)."""
    cfg: dict[str, Any] = {
        "Name": "pacs-engine-bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
        "SaveJobs": False,
    }
    if transcode_to:
        cfg["IngestTranscoding"] = transcode_to
    cfg.update(extra or {})
    return cfg


@contextmanager
def running_orthanc(
    transcode_to: str | None = None,
    startup_timeout: float = 30.0,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Orthanc]:
    """Orthanc on fresh storage, ready for REST and C-STORE; stopped and removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="pacs-bench-orthanc-"))
    orthanc: Orthanc | None = None
    try:
        http_port, dicom_port = free_port(), free_port()
        while dicom_port == http_port:
            dicom_port = free_port()
        (folder / "orthanc.json").write_text(
            json.dumps(config(folder, http_port, dicom_port, transcode_to, extra))
        )
        orthanc = Orthanc(None, folder, http_port, dicom_port, env)
        orthanc.start(startup_timeout)
        yield orthanc
    finally:
        if orthanc is not None and orthanc.process is not None:
            stop(orthanc.process)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(orthanc: Orthanc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not orthanc.alive():
            raise RuntimeError(f"Orthanc exited at startup; see {orthanc.log}")
        try:
            orthanc.get("/system")
        except (OSError, RuntimeError):
            time.sleep(0.1)
            continue
        return
    raise RuntimeError(f"Orthanc did not answer on port {orthanc.http_port} in {timeout} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (a clean shutdown), SIGKILL if it has not exited in `timeout` s; exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)
