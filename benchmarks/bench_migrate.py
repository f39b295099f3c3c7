"""Migration from a live PACS (issue 13): `pacs-engine migrate` against Orthanc's own C-MOVE.

Run from the repository root (the table is printed by the last test, so use -s):

    .venv/bin/python -m pytest benchmarks/bench_migrate.py -q -s -p no:cacheprovider

Orthanc (Debian, benchmarks/orthanc.py) is loaded through its REST API (POST /instances,
stored as received, no transcoding) with the file set of bench_ingest restricted to CT and
MR: the corpus's CT and MR files that pydicom decodes, from an uncompressed or lossless
transfer syntax, outside malformed/ (`corpus_inputs({"CT", "MR"}, lossless=True)`; about
500 files, 95 MB, 25 studies). A file Orthanc crashes on is left out (it is restarted).
Every row moves what Orthanc then holds, and its MB/s is over the same bytes: the sizes
of the files in Orthanc's storage folder.

Rows, interleaved, PACS_ENGINE_BENCH_ROUNDS rounds (default 2): baseline, bounds, move 1,
move 4, get 1, get 4, baseline, ...
- baseline: Orthanc's own C-MOVE of every study, one after the other (one `movescu` per
  study, STUDY level, Study Root) to dcmtk's `storescp`, which the bench starts writing
  into a temporary folder with `+B` (bit-preserving: the data set written as received,
  as our spool keeps it, with no re-encoding), `+xa` (every transfer syntax dcmtk knows,
  so Orthanc sends each instance as stored instead of transcoding) and `-pm` (unknown SOP
  classes too). storescp does not fsync; our spool does before answering Success.
  Time: from the first movescu started to the newest file's mtime (the last file written).
- bound rows, to tell our cost from pynetdicom's: the same C-MOVEs (movescu, one per
  study) to a bare pynetdicom Storage SCP in the bench's process (TCP_NODELAY, every
  storage class and syntax the archive keeps, our maximum PDU size), whose handler only
  joins the file meta and data set bytes ("pynetdicom SCP, nothing kept") or also
  writes them durably as our spool does (`storage.write_atomic`: written, fsynced,
  renamed, rename fsynced).
- `pacs-engine migrate --from ORTHANC@127.0.0.1:PORT --archive A --method move|get
  --parallel 1|4` (one ingest worker, the default), into a fresh archive: "journal" is
  the time until the last study is logged complete in the journal (every instance
  received and durable in the spool), "archived" the command's own end (the spool's
  drain finished: everything ingested).
With PACS_ENGINE_BENCH_PYSPY=FOLDER, each of our runs is recorded by py-spy (`py-spy` on
the PATH or in /tmp/pyspy: `pip install --target /tmp/pyspy py-spy`) into
FOLDER/<method><parallel>-<round>.txt (collapsed stacks, every thread, idle ones too).
Ratios are against the baseline of the same round. Only correctness is asserted (every
instance Orthanc holds arrived: in storescp's folder, or archived), never speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode_file_meta

from benchmarks import orthanc as orthanc_mod
from benchmarks.conftest import corpus_inputs, read_whole
from pacs_engine import ScanError, scan_many
from pacs_engine.archive import Archive
from pacs_engine.serve.config import ServeConfig
from pacs_engine.serve.dimse import STORAGE_CLASSES, STORAGE_SYNTAXES, no_delay
from pacs_engine.serve.migrate import read_journal
from pacs_engine.storage import write_atomic

ROUNDS = int(os.environ.get("PACS_ENGINE_BENCH_ROUNDS", "2"))
RUN_SECONDS = 600  # one row, at most
AE_TITLE = "PACS_ENGINE"
STORESCP_AE = "STORESCP"
STORESCP = shutil.which("storescp") or "storescp"
MOVESCU = shutil.which("movescu") or "movescu"
#: DCMTK's switch for TCP_NODELAY, which Debian's build leaves off: without it Orthanc's
#: C-STORE sub-operations wait out delayed ACKs (13.5 s instead of 0.3 s for 150 small
#: instances to storescp). Orthanc, storescp and movescu get it, so the baseline is not
#: slowed by it, nor are our rows (Orthanc sends to us too).
NO_NAGLE = {"TCP_NODELAY": "1"}
OURS = [(method, parallel) for method in ("move", "get") for parallel in (1, 4)]


@dataclass
class Legacy:
    """Orthanc loaded with the file set, and what it holds."""

    orthanc: orthanc_mod.Orthanc
    move_port: int  # our Storage SCP's (the command's --port)
    scp_port: int  # storescp's
    studies: dict[str, int]  # Study Instance UID -> instances
    sops: set[str]
    bytes: int  # Orthanc's storage folder: the bytes every row moves
    left_out: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One measured run."""

    round: int
    name: str
    seconds: float  # to the last file written (baseline) / the command's end (ours)
    journal_seconds: float | None = None  # ours: to the last study logged complete


ROWS: list[Row] = []


def _post(orthanc: orthanc_mod.Orthanc, path: str) -> bool:
    """POST one file to Orthanc; False when Orthanc crashed on it (then restarted)."""
    conn = orthanc.connection()
    try:
        conn.request(
            "POST",
            "/instances",
            body=Path(path).read_bytes(),
            headers={"Content-Type": "application/dicom"},
        )
        conn.getresponse().read()
    except OSError:
        if not orthanc.died():
            raise
        orthanc.start()
        return False
    finally:
        conn.close()
    return True


def _holdings(orthanc: orthanc_mod.Orthanc) -> tuple[dict[str, int], set[str]]:
    """(instances per study, SOP Instance UIDs) of what Orthanc holds."""
    conn = orthanc.connection()
    try:
        query = {"Level": "Instance", "Query": {}, "Expand": True}
        conn.request("POST", "/tools/find", body=json.dumps(query))
        found = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    studies: dict[str, int] = {}
    sops = set()
    for instance in found:
        sops.add(instance["MainDicomTags"]["SOPInstanceUID"])
        study = orthanc.get(f"/instances/{instance['ID']}/study")["MainDicomTags"]
        uid = study["StudyInstanceUID"]
        studies[uid] = studies.get(uid, 0) + 1
    return studies, sops


@pytest.fixture(scope="module")
def legacy() -> Iterator[Legacy]:
    """Orthanc loaded with the corpus's CT and MR files (see the module docstring)."""
    if not orthanc_mod.installed() or not shutil.which(STORESCP) or not shutil.which(MOVESCU):
        pytest.skip("needs Orthanc and dcmtk (storescp, movescu)")
    candidates = corpus_inputs({"CT", "MR"}, lossless=True)
    paths = [
        path
        for path, header in zip(candidates, scan_many(candidates), strict=True)
        if not isinstance(header, ScanError) and header.get("SOPInstanceUID")
    ]
    read_whole(paths)
    move_port, scp_port = orthanc_mod.free_port(), orthanc_mod.free_port()
    modalities = {
        "pacs": [AE_TITLE, "127.0.0.1", move_port],
        "storescp": [STORESCP_AE, "127.0.0.1", scp_port],
    }
    with orthanc_mod.running_orthanc(
        extra={"DicomModalities": modalities}, env=NO_NAGLE
    ) as orthanc:
        left_out = [path for path in paths if not _post(orthanc, path)]
        studies, sops = _holdings(orthanc)
        yield Legacy(orthanc, move_port, scp_port, studies, sops, orthanc.storage_bytes(), left_out)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary folder, removed after the test whatever happened in it."""
    with tempfile.TemporaryDirectory(prefix="pacs-bench-migrate-") as folder:
        yield Path(folder)


def _wait_listening(process: subprocess.Popen[bytes], port: int, seconds: float = 10.0) -> None:
    """Until something accepts connections on 127.0.0.1:`port`."""
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "storescp exited at startup"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
            continue
        return
    raise RuntimeError(f"storescp does not listen on port {port}")


def _move_all(legacy: Legacy) -> None:
    """movescu: Orthanc C-MOVEs each study, one after the other, to STORESCP_AE."""
    for study in legacy.studies:
        move = [MOVESCU, "-S", "-aet", AE_TITLE, "-aec", orthanc_mod.AET]
        move += ["-aem", STORESCP_AE, "-k", "QueryRetrieveLevel=STUDY"]
        move += ["-k", f"StudyInstanceUID={study}", "127.0.0.1", str(legacy.orthanc.dicom_port)]
        subprocess.run(
            move,
            check=True,
            capture_output=True,
            timeout=RUN_SECONDS,
            env={**os.environ, **NO_NAGLE},
        )


def baseline(legacy: Legacy, folder: Path) -> float:
    """Orthanc's C-MOVE of every study to storescp; seconds to the last file written."""
    out = folder / "storescp"
    out.mkdir()
    scp = subprocess.Popen(
        [STORESCP, "+B", "+xa", "-pm", "-aet", STORESCP_AE, "-od", str(out), str(legacy.scp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **NO_NAGLE},
    )
    try:
        _wait_listening(scp, legacy.scp_port)
        started = time.time()
        _move_all(legacy)
    finally:
        scp.terminate()
        scp.wait(30)
    files = [p for p in out.iterdir() if p.is_file()]
    received = {str(h.get("SOPInstanceUID")) for h in scan_many([str(p) for p in files])}
    assert received == legacy.sops, f"storescp got {len(received)} of {len(legacy.sops)}"
    return max(p.stat().st_mtime for p in files) - started


def bare_scp(legacy: Legacy, folder: Path, durable: bool) -> float:
    """Orthanc's C-MOVE of every study to a bare pynetdicom Storage SCP; seconds to the end."""
    received: set[str] = set()

    def on_store(event: Any) -> int:
        data = b"".join(
            (b"\x00" * 128, b"DICM", encode_file_meta(event.file_meta), event.encoded_dataset())
        )
        if durable:
            write_atomic(folder / f"{len(received)}.dcm", data)
        received.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=STORESCP_AE)
    ae.maximum_pdu_size = ServeConfig.max_pdu  # as our Storage SCP's
    for uid in sorted(STORAGE_CLASSES):
        ae.add_supported_context(uid, list(STORAGE_SYNTAXES))
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, no_delay), (evt.EVT_C_STORE, on_store)]
    server = ae.start_server(("127.0.0.1", legacy.scp_port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        started = time.monotonic()
        _move_all(legacy)
        seconds = time.monotonic() - started
    finally:
        server.shutdown()
    assert received == legacy.sops, f"got {len(received)} of {len(legacy.sops)}"
    return seconds


def ours(legacy: Legacy, folder: Path, method: str, parallel: int) -> tuple[float, float]:
    """`pacs-engine migrate`; (seconds to the journal's last complete study, to its end)."""
    archive = folder / "archive"
    command = [sys.executable, "-m", "pacs_engine.cli", "migrate", "--from"]
    command += [f"{orthanc_mod.AET}@127.0.0.1:{legacy.orthanc.dicom_port}"]
    command += ["--archive", str(archive), "--method", method, "--parallel", str(parallel)]
    command += ["--port", str(legacy.move_port), "--listen", "127.0.0.1"]
    profile = os.environ.get("PACS_ENGINE_BENCH_PYSPY")
    if profile:
        pyspy = shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"
        out = Path(profile) / f"{folder.name}-{time.time_ns()}.txt"
        recorder = [pyspy, "record", "--idle", "--threads", "--format", "raw", "-r", "200"]
        command = [*recorder, "-o", str(out), "--", *command]
    log = (folder / "migrate.out").open("w+")
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.DEVNULL, text=True)
    journal_seconds = None
    try:
        while process.poll() is None:
            if time.monotonic() - started > RUN_SECONDS:
                raise RuntimeError(f"migrate took over {RUN_SECONDS} s")
            if journal_seconds is None and _all_complete(archive, len(legacy.studies)):
                journal_seconds = time.monotonic() - started
            time.sleep(0.02)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log.seek(0)
    output = log.read()
    assert process.returncode == 0, output
    if journal_seconds is None:  # the last study was logged within the last poll
        journal_seconds = seconds
    with Archive(archive) as opened:
        archived = {row["SOPInstanceUID"] for row in opened.query()}
    assert archived == legacy.sops, output
    return journal_seconds, seconds


def _all_complete(archive: Path, studies: int) -> bool:
    """Whether the migration journal logs every study complete."""
    journals = list((archive / "migrations").glob("*.json"))
    if not journals:
        return False
    try:
        states = read_journal(journals[0])
    except ValueError:  # the listing being written
        return False
    return sum(state.state == "complete" for state in states.values()) == studies


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1))
def test_round(round_: int, legacy: Legacy, scratch: Path) -> None:
    """One round: the baseline, then each of ours, each into fresh folders."""
    ROWS.append(Row(round_, "Orthanc C-MOVE -> storescp", baseline(legacy, scratch)))
    for durable in (False, True):
        folder = scratch / f"bare{int(durable)}"
        folder.mkdir()
        name = f"pynetdicom SCP, {'durable write' if durable else 'nothing kept'}"
        seconds = bare_scp(legacy, folder, durable)
        ROWS.append(Row(round_, name, seconds, seconds))
    for method, parallel in OURS:
        folder = scratch / f"{method}{parallel}"
        folder.mkdir()
        journal, seconds = ours(legacy, folder, method, parallel)
        name = f"migrate --method {method} --parallel {parallel}"
        ROWS.append(Row(round_, name, seconds, journal))


def test_summary(legacy: Legacy) -> None:
    """The table (MB/s over Orthanc's stored bytes; ratios against the round's baseline)."""
    mb = legacy.bytes / 1e6
    instances = len(legacy.sops)
    lines = [
        "",
        f"migration of {len(legacy.studies)} studies, {instances} instances, {mb:.1f} MB "
        f"(Orthanc's storage), {len(legacy.left_out)} file(s) Orthanc crashed on left out",
        f"{'round':>5}  {'row':<34} {'journal s':>9} {'MB/s':>6} {'ratio':>6}"
        f" {'archived s':>10} {'MB/s':>6} {'ratio':>6}",
    ]
    base: dict[int, float] = {}
    for row in ROWS:
        if row.journal_seconds is None:
            base[row.round] = row.seconds
            lines.append(
                f"{row.round:>5}  {row.name:<34} {row.seconds:>9.2f} {mb / row.seconds:>6.1f}"
                f" {1.0:>6.2f}"
            )
            continue
        ref = base[row.round]
        lines.append(
            f"{row.round:>5}  {row.name:<34} {row.journal_seconds:>9.2f}"
            f" {mb / row.journal_seconds:>6.1f} {ref / row.journal_seconds:>6.2f}"
            f" {row.seconds:>10.2f} {mb / row.seconds:>6.1f} {ref / row.seconds:>6.2f}"
        )
    print("\n".join(lines))
    assert ROWS, "no round ran"
