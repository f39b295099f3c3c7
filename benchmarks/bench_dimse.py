"""C-STORE receive throughput against Orthanc, and where our receive time goes (issue 13).

Run from the repository root (the tables are printed by the last test, so use -s):

    PACS_ENGINE_CORPUS=/work/shared/corpus \\
        .venv/bin/python -m pytest benchmarks/bench_dimse.py -q -s -p no:cacheprovider

Files: the corpus's CT and MR, selected as bench_ingest selects its files
(`build_ingest_set({"CT", "MR"})`: uncompressed or lossless, pydicom decodes them, not
malformed/), less the HTJ2K files dcmtk 3.6.7 cannot send, read once beforehand (page
cache warm). Each is sent in its own transfer syntax (bench_ingest's storescu profile),
with 1, 4 and 8 concurrent `storescu` processes, each one association sending a
disjoint share (every Nth file). A receiver that dies (Orthanc, on some files) is
restarted: see `send` (the restart is not timed, the file it died on not counted).

Receivers, each fresh for each run, interleaved (ours, Orthanc, ours, Orthanc JPEG-LS):
- ours: `pacs-engine serve ARCHIVE --dimse-port 0 --peer BENCH=store --workers N` as a
  subprocess, N = 1 (the default) and 2 (the drain's ingest worker processes; batches of
  256, interval 2 s, the defaults). *acknowledged*: the last storescu has exited (every
  instance answered Success, i.e. fsynced in the spool); *archived*: the drain's report
  lines count every file and the spool is empty.
- Orthanc (benchmarks/orthanc.py) storing as received, and with IngestTranscoding to
  JPEG-LS lossless; Orthanc answers a C-STORE once the instance is stored (transcoded).

instances/s = files / seconds; MB/s = decoded pixel bytes / seconds; stored ratio =
decoded pixel bytes / bytes kept (ours: the drain reports' raw and stored bytes;
Orthanc: file sizes in its storage folder, index excluded, over the instances it holds).

The profile tests run the receive path in this process (1 and 8 storescu associations,
2 rounds, interleaved): a bare pynetdicom Storage SCP with our contexts that discards
what it receives (pynetdicom's own bound); `DimseServer` "before" (the file meta through
pydicom's writer, pynetdicom's deep copy of the ~180 contexts at each association) and
"after" (`dimse.file_meta`, `_Contexts`), the drain off; and "after" with the drain
ingesting meanwhile (1 worker process: the GIL shared with the drain's thread). Per
run: instances/s, this process's CPU ms per instance, and `_on_store`'s phases (wall
and CPU, summed over the association threads).

PACS_ENGINE_BENCH_ROUNDS (default 1) repeats each comparison run; PACS_ENGINE_BENCH_TIMEOUT
(default 600 s) bounds each run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from benchmarks import orthanc as orthanc_mod
from benchmarks.bench_ingest import (
    JPEG_LS_LOSSLESS,
    STORESCU,
    IngestSet,
    _stored_syntaxes,
    build_ingest_set,
    storescu_profile,
)
from benchmarks.conftest import PACS_ENGINE, read_whole
from pacs_engine import Archive, scan_many
from pacs_engine.executors import make_executor
from pacs_engine.serve import dimse
from pacs_engine.serve.audit import AuditLog
from pacs_engine.serve.config import Peer, ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.spool import Drain, Spool

CONCURRENCY = (1, 4, 8)
ROUNDS = int(os.environ.get("PACS_ENGINE_BENCH_ROUNDS", "1"))
TIMEOUT = float(os.environ.get("PACS_ENGINE_BENCH_TIMEOUT", "600"))
CALLING = "BENCH"
OURS, ORTHANC, ORTHANC_JLS = "pacs-engine serve", "Orthanc as received", "Orthanc JPEG-LS"
OURS_W2 = "pacs-engine serve --workers 2"
OURS_WORKERS = {OURS: 1, OURS_W2: 2}
RECEIVERS = (OURS, ORTHANC, OURS_W2, ORTHANC_JLS)
TARGET_VS_JLS = 1.5
MAX_CRASHES = 10
PEER = ("--peer", f"{CALLING}=store")


@dataclass
class Run:
    """One receiver, one concurrency, one round."""

    receiver: str
    senders: int
    files: int  # taken: sent, less those the receiver died on
    raw_bytes: int  # their decoded pixel bytes
    acknowledged_s: float
    archived_s: float | None = None
    ratio: float | None = None
    note: str = ""
    round_: int = 0

    @property
    def per_s(self) -> float:
        """Instances acknowledged per second."""
        return self.files / self.acknowledged_s


RUNS: list[Run] = []
PROFILES: list[Profiled] = []


#: HTJ2K (2023): dcmtk 3.6.7's storescu does not know these syntaxes, reads such a file's
#: pixel data as native and fails to send it, whatever the receiver.
STORESCU_CANNOT_SEND = (
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
)


def _sendable(fs: IngestSet) -> IngestSet:
    """The set without the files storescu cannot send (their transfer syntax, from the scan)."""
    syntaxes = dict(zip(fs.paths, scan_many(fs.paths), strict=True))
    keep = [p for p in fs.paths if syntaxes[p].transfer_syntax_uid not in STORESCU_CANNOT_SEND]
    return replace(
        fs,
        paths=keep,
        raw_bytes={p: fs.raw_bytes[p] for p in keep},
        sop_uids={p: fs.sop_uids[p] for p in keep},
        left_out=fs.left_out + len(fs.paths) - len(keep),
    )


@pytest.fixture(scope="module")
def dimse_set() -> IngestSet:
    found = _sendable(build_ingest_set({"CT", "MR"}))
    if not found.paths:
        pytest.skip(f"no files to send ({found.label})")
    if STORESCU is None:
        pytest.skip("storescu not installed (apt-get install dcmtk)")
    return found


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pacs-bench-dimse-") as folder:
        yield Path(folder)


@dataclass
class Sent:
    """What the storescu processes of one run did."""

    seconds: float = 0.0
    refused: int = 0  # answered with a non-Success status
    crashed: list[str] = field(default_factory=list)  # files the receiver died on


@dataclass
class _Log:
    """One storescu log: the files answered Success, refused, and failed (in flight at an abort)."""

    ok: set[str]
    refused: set[str]
    failed: set[str]
    text: str


def _parse(text: str) -> _Log:
    ok, refused, failed, current = set(), set(), set(), ""
    for line in text.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1]
        elif "Received Store Response (Success)" in line:
            ok.add(current)
        elif "Received Store Response" in line:
            refused.add(current)
        elif "Store Failed, file: " in line:
            failed.add(line.split("Store Failed, file: ", 1)[1].rstrip(":"))
    return _Log(ok, refused, failed, text)


def _storescu(
    port: int, called: str, shares: list[list[str]], profile: Path, scratch: Path
) -> tuple[float, list[_Log]]:
    """One storescu per share, all at once: (seconds until all exit, their parsed logs)."""
    assert STORESCU is not None
    procs = []
    started = time.perf_counter()
    for i, share in enumerate(shares):
        with (scratch / f"storescu{i}.log").open("wb") as log:
            cmd = [STORESCU, "-v", "-xf", str(profile), "Bench", "-aet", CALLING, "-aec", called]
            procs.append(
                subprocess.Popen(
                    [*cmd, "127.0.0.1", str(port), *share], stdout=log, stderr=subprocess.STDOUT
                )
            )
    try:
        for proc in procs:
            proc.wait(max(0.1, TIMEOUT - (time.perf_counter() - started)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - started
    logs = [
        _parse((scratch / f"storescu{i}.log").read_text(errors="replace"))
        for i in range(len(shares))
    ]
    return seconds, logs


def send(
    port: int,
    called: str,
    fs: IngestSet,
    senders: int,
    scratch: Path,
    restart: Callable[[], bool] | None = None,
) -> Sent:
    """`senders` storescu processes at once, each a disjoint share (every Nth file).

    When the receiver dies (Orthanc on some files), `restart()` restarts it (False: it had
    not died); the files then in flight are sent again one by one (the one it dies on again
    is recorded and left out), the rest of the shares concurrently as before. Seconds count
    sending only, not restarts.
    """
    profile = storescu_profile(fs.contexts, scratch)
    read_whole(fs.paths)
    sent, todo = Sent(), list(fs.paths)
    for _ in range(MAX_CRASHES + 1):
        shares = [todo[i::senders] for i in range(senders)]
        seconds, logs = _storescu(port, called, [s for s in shares if s], profile, scratch)
        sent.seconds += seconds
        sent.refused += sum(len(log.refused) for log in logs)
        failed = set().union(*(log.failed for log in logs))
        if not failed:
            return sent
        tails = "\n".join(log.text[-800:] for log in logs if log.failed)
        assert restart is not None and restart(), tails
        done = set().union(*(log.ok | log.refused for log in logs))
        for suspect in sorted(failed):
            seconds, (log,) = _storescu(port, called, [[suspect]], profile, scratch)
            sent.seconds += seconds
            sent.refused += len(log.refused)
            if log.failed:
                assert restart(), log.text[-800:]
                sent.crashed.append(suspect)
        todo = [p for p in todo if p not in done and p not in failed]
        if not todo:
            return sent
    raise AssertionError(f"the receiver died more than {MAX_CRASHES} times")


# --- the comparison ---------------------------------------------------------------------


@contextmanager
def serving(
    archive: Path, scratch: Path, workers: int
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`pacs-engine serve --workers N` on a fresh archive: (process, port, its stderr file)."""
    err = scratch / "serve.err"
    cmd = [str(PACS_ENGINE), "serve", str(archive), "--dimse-port", "0", *PEER]
    with err.open("wb") as fh:
        proc = subprocess.Popen(
            [*cmd, "--workers", str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in (text := err.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, text[-2000:]
            time.sleep(0.05)
        port = int(text.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        yield proc, port, err
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _ingested(err: Path) -> int:
    """How many inputs the drain's report lines count so far."""
    return sum(
        int(line.split("ingested: ")[1].split(" ")[0])
        for line in err.read_text().splitlines()
        if "spool batch ingested: " in line
    )


def run_ours(fs: IngestSet, senders: int, scratch: Path, workers: int) -> Run:
    archive = scratch / "archive"
    with serving(archive, scratch, workers) as (proc, port, err):
        started = time.perf_counter()
        sent = send(port, "PACS_ENGINE", fs, senders, scratch)
        assert sent.refused == 0, f"{sent.refused} refused; see {err}"
        spool = archive / "spool"
        while _ingested(err) < len(fs) or any(spool.glob("*/*.dcm")):
            assert proc.poll() is None, err.read_text()[-2000:]
            assert time.perf_counter() - started < TIMEOUT, f"not archived in {TIMEOUT} s"
            time.sleep(0.02)
        archived = time.perf_counter() - started
    reports = [json.loads(p.read_text()) for p in (archive / "reports").glob("ingest-*.json")]
    raw, stored = (
        sum(r["raw_pixel_bytes"] for r in reports),
        sum(r["stored_bytes"] for r in reports),
    )
    outcomes: dict[str, int] = defaultdict(int)
    for r in reports:
        for key in ("archived", "duplicates", "conflicts", "quarantined"):
            outcomes[key] += r[key]
    note = f"{len(reports)} drain run(s): " + ", ".join(f"{v} {k}" for k, v in outcomes.items())
    ratio = raw / stored if stored else None
    receiver = OURS if workers == 1 else OURS_W2
    return Run(receiver, senders, len(fs), fs.total_raw, sent.seconds, archived, ratio, note)


def run_orthanc(fs: IngestSet, senders: int, scratch: Path, transcode: str | None) -> Run:
    if not orthanc_mod.installed():
        pytest.skip(f"Orthanc not installed ({orthanc_mod.ORTHANC})")
    with orthanc_mod.running_orthanc(transcode) as orthanc:

        def restart() -> bool:
            if not orthanc.died(within=5.0):
                return False
            orthanc.start()
            return True

        sent = send(orthanc.dicom_port, orthanc_mod.AET, fs, senders, scratch, restart)
        sops, syntaxes = _stored_syntaxes(orthanc)
        stored = orthanc.storage_bytes()
    raw = sum(fs.raw_by_sop().get(s, 0) for s in sops)
    note = f"{len(sops)} instances kept"
    if transcode:
        note += f", {syntaxes.get(transcode, 0)} as JPEG-LS"
    if sent.refused:
        note += f", {sent.refused} refused"
    if sent.crashed:
        note += f", DIED on {', '.join(Path(p).name for p in sent.crashed)} (restarted)"
    files = len(fs) - len(sent.crashed)
    raw_sent = fs.total_raw - sum(fs.raw_bytes[p] for p in sent.crashed)
    receiver = ORTHANC_JLS if transcode else ORTHANC
    return Run(receiver, senders, files, raw_sent, sent.seconds, None, raw / stored, note)


ORDER = [(n, r, receiver) for n in CONCURRENCY for r in range(ROUNDS) for receiver in RECEIVERS]


@pytest.mark.parametrize(
    ("senders", "round_", "receiver"), ORDER, ids=[f"{n}x-r{r}-{x}" for n, r, x in ORDER]
)
def test_receive(
    senders: int, round_: int, receiver: str, dimse_set: IngestSet, scratch: Path
) -> None:
    """One receiver takes every file from `senders` storescu associations."""
    if receiver in OURS_WORKERS:
        run = run_ours(dimse_set, senders, scratch, OURS_WORKERS[receiver])
    else:
        transcode = JPEG_LS_LOSSLESS if receiver == ORTHANC_JLS else None
        run = run_orthanc(dimse_set, senders, scratch, transcode)
    run.round_ = round_
    RUNS.append(run)


# --- where the time goes (in process) ---------------------------------------------------


class Phases:
    """Wall and CPU seconds spent in named phases, summed over the threads."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                with self.lock:
                    self.wall[name] += wall
                    self.cpu[name] += cpu

        return timed


def pydicom_file_meta(sop_class: str, sop: str, transfer_syntax: str, source_ae: str) -> bytes:
    """The file meta as `_on_store` built it before `dimse.file_meta`: pydicom's writer."""
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop),
        transfer_syntax=UID(transfer_syntax),
    )
    meta.SourceApplicationEntityTitle = source_ae
    return encode_file_meta(meta)


def bare_scp() -> ThreadedAssociationServer:
    """A pynetdicom Storage SCP, our contexts and PDU size, that answers Success, keeps nothing."""
    ae = AE(ae_title="PACS_ENGINE")
    ae.maximum_pdu_size = ServeConfig().max_pdu
    for uid in sorted(dimse.STORAGE_CLASSES):
        ae.add_supported_context(uid, list(dimse.STORAGE_SYNTAXES))

    def discard(event: Any) -> int:
        event.encoded_dataset(False)  # the bytes as our handler gets them
        return 0x0000

    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, discard),
        (evt.EVT_CONN_OPEN, dimse._no_delay),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None
    return server


@dataclass
class Profiled:
    name: str
    senders: int
    seconds: float
    cpu_s: float  # this process's CPU time meanwhile (every thread)
    phases: Phases | None = None


def profile_bare(fs: IngestSet, senders: int, scratch: Path) -> Profiled:
    server = bare_scp()
    try:
        cpu = time.process_time()
        sent = send(server.server_address[1], "PACS_ENGINE", fs, senders, scratch)
        cpu = time.process_time() - cpu
    finally:
        server.shutdown()
    return Profiled("bare pynetdicom SCP (discards)", senders, sent.seconds, cpu)


def profile_ours(
    fs: IngestSet,
    senders: int,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    before: bool,
    drain: bool,
) -> Profiled:
    """DimseServer receiving into a fresh archive's spool, its phases timed."""
    folder = scratch / f"archive-{uuid.uuid4().hex}"
    archive = Archive.create(folder)
    config = ServeConfig().with_peers(Peer(CALLING, frozenset({"store"})))
    ctx = ServeContext(archive, config, AuditLog(archive.path))
    spool = Spool(archive.path)
    server = dimse.DimseServer(ctx, spool)
    phases = Phases()
    monkeypatch.setattr(spool, "put", phases.wrap("spool write + fsyncs", spool.put))
    monkeypatch.setattr(ctx.audit, "record", phases.wrap("audit record", ctx.audit.record))
    monkeypatch.setattr(server, "_on_store", phases.wrap("_on_store total", server._on_store))
    monkeypatch.setattr(dimse, "_check", phases.wrap("scanner check", dimse._check))
    meta = pydicom_file_meta if before else dimse.file_meta
    monkeypatch.setattr(dimse, "file_meta", phases.wrap("file meta", meta))
    executor = make_executor(1)
    drainer = Drain(archive, spool, executor) if drain else None
    try:
        if drainer is not None:
            drainer.start()
        _, port = server.start(0)
        if before:  # pynetdicom's deep copy of the contexts at each association, as before
            server._server.contexts = list(server._server.contexts)  # type: ignore[union-attr]
        cpu = time.process_time()
        sent = send(port, "PACS_ENGINE", fs, senders, scratch)
        cpu = time.process_time() - cpu
    finally:
        monkeypatch.undo()
        server.stop()
        if drainer is not None:
            drainer.stop()
        executor.close()
        ctx.audit.close()
        archive.close()
        shutil.rmtree(folder, ignore_errors=True)
    name = "DimseServer " + ("before" if before else "after")
    name += ", drain running (1 worker)" if drain else ", no drain"
    return Profiled(name, senders, sent.seconds, cpu, phases)


PROFILE_ORDER = [
    (senders, round_, variant)
    for senders in (1, 8)
    for round_ in range(2)
    for variant in ("bare", "before", "after", "after+drain")
]


@pytest.mark.parametrize(
    ("senders", "round_", "variant"),
    PROFILE_ORDER,
    ids=[f"{n}x-r{r}-{v}" for n, r, v in PROFILE_ORDER],
)
def test_profile_receive_path(
    senders: int,
    round_: int,
    variant: str,
    dimse_set: IngestSet,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pynetdicom's bound, then DimseServer before and after (file meta, contexts), in process."""
    if variant == "bare":
        PROFILES.append(profile_bare(dimse_set, senders, scratch))
    else:
        PROFILES.append(
            profile_ours(
                dimse_set,
                senders,
                scratch,
                monkeypatch,
                before=variant == "before",
                drain=variant == "after+drain",
            )
        )


# --- the table ---------------------------------------------------------------------------


def paired(senders: int, ours: str, what: str, orthanc: str) -> list[float]:
    """Per round: our instances/s (acknowledged or archived) over Orthanc's in that round."""
    ratios = []
    for round_ in range(ROUNDS):
        mine = [r for r in RUNS if (r.receiver, r.senders, r.round_) == (ours, senders, round_)]
        theirs = [
            r for r in RUNS if (r.receiver, r.senders, r.round_) == (orthanc, senders, round_)
        ]
        if mine and theirs:
            seconds = mine[0].archived_s if what == "archived" else mine[0].acknowledged_s
            if seconds:
                ratios.append((mine[0].files / seconds) / theirs[0].per_s)
    return ratios


def test_summary(dimse_set: IngestSet) -> None:
    """Print the comparison (medians over rounds) and the profile."""
    n, mb = len(dimse_set), dimse_set.total_raw / 1e6
    print(f"\n{dimse_set.label}: {n} files, {mb:.1f} MB of decoded pixels")
    print(f"{'receiver (median of rounds)':<40} senders  inst/s    MB/s  seconds  ratio  note")
    per_file: dict[tuple[str, int], float] = {}
    for senders in CONCURRENCY:
        for receiver in RECEIVERS:
            runs = [r for r in RUNS if r.receiver == receiver and r.senders == senders]
            if not runs:
                continue
            rows = [("acknowledged", [r.acknowledged_s for r in runs])]
            if receiver in OURS_WORKERS:
                rows.append(("archived", [r.archived_s or 0.0 for r in runs]))
            files, raw_mb = runs[-1].files, runs[-1].raw_bytes / 1e6
            for what, times in rows:
                seconds = statistics.median(times)
                per_file[(f"{receiver} {what}", senders)] = seconds / files
                ratio = runs[-1].ratio
                print(
                    f"{receiver + (' ' + what if receiver in OURS_WORKERS else ''):<40}"
                    f"{senders:>4}  {files / seconds:8.1f} {raw_mb / seconds:7.1f} {seconds:8.2f}"
                    f"  {ratio or 0:5.2f}  {runs[-1].note if what != 'archived' else ''}"
                )
    print(
        f"paired per round (ours then Orthanc, interleaved), instances/s over Orthanc's; "
        f"target at 8 senders: >= {TARGET_VS_JLS}x Orthanc JPEG-LS, >= 1x as received"
    )
    for senders in CONCURRENCY:
        for ours in OURS_WORKERS:
            for what in ("acknowledged", "archived"):
                parts = []
                for orthanc in (ORTHANC_JLS, ORTHANC):
                    ratios = paired(senders, ours, what, orthanc)
                    if ratios:
                        shown = ", ".join(f"{x:.2f}" for x in ratios)
                        parts.append(f"{statistics.median(ratios):.2f}x {orthanc} ({shown})")
                if parts:
                    print(f"  {senders} senders, {ours} {what}: " + "; ".join(parts))
    print("\nin process (the server in this process, storescu as before; medians of rounds):")
    print(
        "receiver                                                senders  inst/s   MB/s"
        "  CPU ms/inst"
    )
    names = list(dict.fromkeys((p.name, p.senders) for p in PROFILES))
    for name, senders in sorted(names, key=lambda k: k[1]):
        profiled = [p for p in PROFILES if (p.name, p.senders) == (name, senders)]
        seconds = statistics.median([p.seconds for p in profiled])
        cpu = statistics.median([p.cpu_s for p in profiled])
        print(
            f"{name:<56}{senders:>4}  {n / seconds:7.1f} {mb / seconds:6.1f}  {cpu / n * 1e3:8.2f}"
        )
        phases = profiled[-1].phases
        if phases is None:
            continue
        for phase, wall in sorted(phases.wall.items(), key=lambda kv: -kv[1]):
            print(
                f"      {phase:<22} wall {wall / n * 1e3:6.2f} ms/inst, "
                f"CPU {phases.cpu[phase] / n * 1e3:6.2f} ms/inst (summed over threads)"
            )
