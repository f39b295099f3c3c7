"""The bulk-migration orchestrator: scan in parallel, plan by series, encode parts, commit.

```
inputs ──► scan_task (batches, workers) ──► journal: plan entries / outcomes
journal plan, series by series ──► parts (small ones batched) ──► encode_batch ──► commit (here)
```

Only this process writes the index: the rows of all parts of a series and its
inputs' outcomes are committed in one transaction, so readers never see part of
a series. The journal makes the run resumable: started
again with the same sources, it skips inputs that have an outcome and plans the
rest. Memory in this process is bounded by the parts in flight, not by the number
of inputs nor by the size of a series (it holds a count per series, to send the
largest first): the plan is read from the journal a page at a time and cut into
parts as it is read, the results of a series' parts wait until the last one is back
(in memory up to STAGED_INPUTS inputs, on disk past that), and its transaction is
fed from there part by part.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any

from pacs_engine.archive.report import IngestReport, Outcome
from pacs_engine.archive.versions import kept_sha256s, version_rows, with_run, with_version
from pacs_engine.errors import PacsEngineError
from pacs_engine.executors import InlineExecutor, make_executor
from pacs_engine.index.core import IndexWriter
from pacs_engine.index.rows import Row
from pacs_engine.ingest import session, tasks
from pacs_engine.ingest.encode import (
    Checks,
    Part,
    PartResult,
    conflict_reason,
    quarantine_conflict,
    quarantine_input,
    with_duplicate,
)
from pacs_engine.ingest.inputs import InputError, InputRef, iter_inputs, read_input
from pacs_engine.ingest.journal import Journal, Planned, file_identity
from pacs_engine.ingest.plan import align, committed_end, plan_parts
from pacs_engine.ingest.tidy import (
    Tidied,
    mark_series_committed,
    remove_temporaries,
    tidy_marked_series,
)
from pacs_engine.stages import StageClock, Times, add_times
from pacs_engine.storage import held_budget, write_atomic, write_together
from pacs_engine.workers import CrashIsolation, Executor, Finished, Future, window

if TYPE_CHECKING:
    from pacs_engine.archive import Archive

SCAN_BATCH = 128
#: Scanned inputs held before they are journaled (besides a second, CHECKPOINT_SECONDS,
#: since the oldest): each record is a synced index transaction during which no work is
#: sent, so the scan's results go to the journal in a few, with the scan's end as the
#: last (a 1,000-file run: one, not one per batch). A session killed meanwhile scans
#: them again as it resumes.
SCAN_RECORD = 4096
#: Pixel bytes at which held small parts are sent as one task (as at a shard's frames);
#: the part that reaches it is in, so a task holds less than twice this: ~40 ms of
#: encoding, past which a task's fixed costs no longer weigh and a larger one would
#: leave a worker alone at the end of a run.
BATCH_BYTES = 4 << 20
#: Files a held part (less than a shard's frames) writes besides its shards: its header
#: pack and that pack's rows file. Its shards: one per array, each input with pixels in an
#: array of its own at most. A batch's files are held open until its sync, within
#: `storage.held_budget` (see `_Run._send_series`).
PART_FILES = 2
#: Seconds between two records of a session's time in the journal (see `_Run._checkpoint`).
CHECKPOINT_SECONDS = 1.0
#: Inputs whose results a series waiting for its other parts holds in memory; past them, its
#: results wait in a temporary file (`_Staged`). Measured: ~6.3 KB held per input (1.4 KB
#: pickled), so ~6.5 MB a waiting series. The bound is per series; the series that reach it
#: are about one per task in flight (2 x workers) and the one being sent (a task of several
#: series' parts holds small ones): about (2 x workers + 1) x 6.5 MB in all at worst (~110 MB
#: with 8 workers).
STAGED_INPUTS = 1024


class IngestStopped(PacsEngineError, RuntimeError):
    """The run stopped before the end (the archive's disk is full, a worker died, ...).

    Everything committed before it stopped stays; what was in flight is not
    visible. Run the same ingest again to resume.
    """


class _Staged:
    """The results of a series' parts, held until the last one is back.

    In memory up to STAGED_INPUTS inputs; past that, all of them go to an unnamed
    temporary file in the archive's folder (mode 0600, gone when closed or when the
    process dies), so that a series of any size costs the memory of a few parts.
    Pickle, as the results came from the workers: this process wrote the file and
    nothing else can reach it. Most series never reach the file: their results are
    committed as they came, without a pickling round trip.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.file: IO[bytes] | None = None
        self.held: list[PartResult] = []  # the results after those in the file
        self.held_inputs = 0
        self.count = 0

    def add(self, result: PartResult) -> None:
        """Keep one part's result."""
        self.held.append(result)
        self.held_inputs += len(result.outcomes)
        self.count += 1
        if self.held_inputs > STAGED_INPUTS:
            if self.file is None:
                self.file = tempfile.TemporaryFile(dir=self.folder)  # noqa: SIM115 (close())
            for held in self.held:
                pickle.dump(held, self.file, protocol=pickle.HIGHEST_PROTOCOL)
            self.held, self.held_inputs = [], 0

    def __iter__(self) -> Iterator[PartResult]:
        """The results kept, one at a time, in the order they came back."""
        if self.file is not None:
            self.file.seek(0)
            for _ in range(self.count - len(self.held)):
                yield pickle.load(self.file)  # written by add(), in this process
        yield from self.held

    def close(self) -> None:
        """Drop the results (and the file)."""
        self.held = []
        if self.file is not None:
            self.file.close()


@dataclass
class _Waiting:
    """A series with parts out: its results so far, and what placing a part or a retry needs."""

    end: int  # first frame after every part placed so far: where the next part or a retry goes
    staged: _Staged
    parts: int = 0  # parts sent
    cut: bool = False  # the series is cut into parts: no part is to come but retries
    out: dict[Part, list[Planned]] = field(default_factory=dict)  # parts not back, with inputs


class PartFailed(PacsEngineError, RuntimeError):
    """A part could not be encoded (its worker failed or died): names the part."""

    def __init__(self, part: Part, error: BaseException) -> None:
        self.part, self.error = part, error
        first = part.keys[0] if part.keys else "-"
        super().__init__(
            f"{_describe(error)}, while encoding series {part.series_uid} "
            f"({len(part.keys)} inputs from {first})"
        )


@dataclass
class _Scanned:
    """Scan results not journaled yet: to plan, quarantined, the files' identities."""

    planned: list[Planned] = field(default_factory=list)
    rejected: list[Outcome] = field(default_factory=list)
    identities: dict[str, bytes] = field(default_factory=dict)
    since: float = 0.0  # when the oldest was taken (perf_counter)


@dataclass
class Progress:
    """Where a run is: its phase and the counts so far (for a progress bar)."""

    phase: str  # "scanning" or "encoding"
    report: IngestReport
    total: int | None  # inputs in the run, once the scan is complete
    seconds: float


def run_ingest(
    archive: Archive,
    sources: Iterable[str | os.PathLike],
    workers: int | None = None,
    executor: Executor | None = None,
    *,
    checks: Checks | None = None,
    progress: Callable[[Progress], None] | None = None,
    launched: float | None = None,
    catch_up: bool = True,
    scheduler: str | None = None,
) -> IngestReport:
    """Archive every input under `sources`; resumes the unfinished run of the same sources.

    Without `executor`, the run makes its own: `make_executor(workers, scheduler)`.

    The report's `first_encode_seconds` counts from `launched` (epoch seconds; None: now).
    `catch_up=False` neither skips unchanged files nor records the files' identities for
    later runs to skip (for sources whose files are never seen again: the receive spool).
    """
    checks = checks or Checks()
    return _Run(
        archive, sources, workers, executor, checks, progress, launched, catch_up, scheduler
    ).run()


class _Run:
    """One session of an ingest run: its executor, journal, report and series in flight."""

    def __init__(
        self,
        archive: Archive,
        sources: Iterable[str | os.PathLike],
        workers: int | None,
        executor: Executor | None,
        checks: Checks,
        progress: Callable[[Progress], None] | None,
        launched: float | None = None,
        catch_up: bool = True,
        scheduler: str | None = None,
    ) -> None:
        self.archive = archive
        self.catch_up = catch_up  # skip unchanged files, record the identities of those scanned
        self.root = str(archive.path.resolve())
        self.sources = [os.path.abspath(os.fspath(s)) for s in sources]
        self.own_executor = executor is None
        self.executor: Executor = (
            executor if executor is not None else make_executor(workers, scheduler)
        )
        self.checks = checks
        self.notify = progress
        self.journal = Journal(archive.index)
        self.started = time.perf_counter()
        # Where the report's first_encode_seconds counts from (epoch seconds).
        self.launched = time.time() if launched is None else launched
        self.cpu_started = time.process_time()
        self.inline_cpu = 0.0  # CPU seconds of the tasks run in this process, this session
        self.report = IngestReport(workers=self.executor.workers)
        self.total: int | None = None
        self.failure: BaseException | None = None
        self.waiting: dict[str, _Waiting] = {}  # series with parts in flight
        self.identities: dict[Future, dict[str, bytes]] = {}  # of each scan batch in flight
        self.scanned = _Scanned()  # scan results held, to journal together
        self.clock = StageClock()  # this process's own work: commits, the journal
        self.names: dict[int, str] = {}  # worker process id -> its name in the report
        self.busy: dict[str, float] = {}  # wall seconds of tasks per worker, this session
        self.task_stages: dict[str, Times] = {}  # seconds per stage of this session's tasks
        self.session_phases: dict[str, float] = {}  # wall seconds of this session's phases
        self.record: dict[str, Any] = {}  # the run record, as the session started it
        self.phase: tuple[str, float] | None = None  # the phase at work, since when
        self.checkpointed = 0.0  # when the session's time was last committed (`_checkpoint`)

    def run(self) -> IngestReport:
        """Scan, encode and tidy (what the journal says is left); the report of the run."""
        try:
            self.session = session.claim(self.root)
            record = self.journal.start(self.sources)
        except Exception as error:  # e.g. no space left for the journal
            if self.own_executor:
                self.executor.close()
            raise IngestStopped(
                f"{self.archive.path}: ingest could not start: {_describe(error)}"
            ) from error
        run = record["run"]
        self.record = record
        self.report.run = run
        self.report.resumed = record["sessions"] - 1
        self.report.phases = dict(record.get("phases", {}))  # earlier sessions' time in each
        self.report.stages = record.get("stages", {})  # this session's are added as it ends
        self.report.unchanged = record.get("unchanged", 0)  # of a scan an earlier session ended
        for outcome in self.journal.outcomes(run):  # work of earlier sessions of this run
            self.report.count(outcome)
        finished = False
        try:
            if record["state"] == "scanning":
                if self.report.resumed:  # planned inputs are scanned again: once each
                    self.journal.rescan(run)
                self._timed("scan", self._scan, run)
                if self.failure is None:
                    record["unchanged"] = self.report.unchanged
                    # "encoding" goes in the record that ends the scan, with the last plan
                    # entries held: until that is committed the run is still scanning (the
                    # record `finally` saves must not skip the entries it would have held).
                    record["state"] = "encoding"
                    self._record_scanned(run, end=True)
            if self.failure is None:
                self._timed("encode", self._encode, run)
            if self.failure is None:
                self._timed("tidy", self._tidy, run)
                self._report_stages()
                # The report first: a kill between the two leaves the run unfinished,
                # and the next session (with nothing left to do) writes it again.
                self.report.seconds = record["seconds"] + time.perf_counter() - self.started
                write_atomic(
                    self.archive.path / "reports" / f"ingest-{run}.json",
                    json.dumps(
                        {**self.report.to_dict(), "sources": self.sources}, indent=2
                    ).encode(),
                )
                self.journal.finish({**record, "seconds": self.report.seconds})
                finished = True
        except Exception as error:  # the archive's disk, the index: stop and say why
            self.failure = self.failure or error
        finally:
            if self.own_executor:
                self.executor.close()
            if isinstance(self.executor, InlineExecutor):
                tasks.release(self.root)
            if not finished:  # stopped, or interrupted (Ctrl-C): the next session counts on
                record["seconds"] += time.perf_counter() - self.started
                self._report_stages()
                record["phases"] = self.report.phases
                record["stages"] = self.report.stages
                self.report.seconds = record["seconds"]
                # The disk may be full: the stop below says why.
                with contextlib.suppress(Exception):
                    self.journal.save(record)
        if self.failure is not None:
            raise IngestStopped(
                f"{self.archive.path}: ingest stopped: {_describe(self.failure)}. "
                "Everything committed so far is kept and nothing half-written is visible; "
                "run the same ingest again to resume."
            ) from self.failure
        return self.report

    def _timed(self, phase: str, step: Callable[[str], None], run: str) -> None:
        """Run one phase of the session, adding its wall time to the report's phases."""
        started = time.perf_counter()
        self.phase = (phase, started)
        try:
            step(run)
        finally:
            self.phase = None
            elapsed = time.perf_counter() - started
            self.report.phases[phase] = self.report.phases.get(phase, 0.0) + elapsed
            self.session_phases[phase] = self.session_phases.get(phase, 0.0) + elapsed

    def _checkpoint(self, always: bool = False) -> dict[bytes, bytes | None]:
        """The session's time so far (by phase, by process and stage) as a journal entry, at
        most once a second (else none) unless `always`, committed with the session's work:
        kill -9 loses the time since."""
        now = time.perf_counter()
        if (not always and now - self.checkpointed < CHECKPOINT_SECONDS) or not self.record:
            return {}
        self.checkpointed = now
        phases = self._phases_so_far(now)
        stages = self._stages_so_far(phases)
        return self.journal.checkpoint(self.record, now - self.started, phases, stages)

    def _phases_so_far(self, now: float) -> dict[str, float]:
        """Wall seconds of this session's phases until `now`, the one at work included."""
        phases = dict(self.session_phases)
        if self.phase is not None:
            name, started = self.phase
            phases[name] = phases.get(name, 0.0) + now - started
        return phases

    # --- scanning ---------------------------------------------------------------------

    def _scan(self, run: str) -> None:
        """Scan every input without an outcome and record the plan; bounded in flight."""

        def on_error(path: str, reason: str) -> None:
            if not self.journal.done(run, [path]):  # a resumed scan meets it again
                self._hold(rejected=[self._quarantine_unread(path, reason)])

        def container_unchanged(path: str) -> bool:
            """True for a zip/tar to skip unread; else its identity is held, to journal with
            the scan results (the run, once finished, has an outcome for each member)."""
            identity = file_identity(path)
            if identity is None:
                return False
            if self.journal.unchanged({path: identity}):
                self.report.unchanged += 1
                return True
            self._hold(identities={path: identity})
            return False

        self.report.unchanged = 0  # a resumed scan skips them again
        batch: list[tuple[str, bytes | None]] = []
        in_flight: set = set()
        follow_links = self.checks.inputs.follow_links
        unchanged = container_unchanged if self.catch_up else None
        walk = iter_inputs(self.sources, on_error, [self.root], follow_links, unchanged)
        for ref in walk:
            # Files only: a zip/tar member has no identity of its own (see docs/ingest.md);
            # none at all without catch-up (nothing is skipped, nothing recorded).
            identity = None
            if ref.member is None and self.catch_up:
                identity = file_identity(ref.key)
            batch.append((ref.key, identity))
            if len(batch) >= SCAN_BATCH:
                in_flight = self._submit_scan(run, batch, in_flight)
                batch = []
            self._record_held(run)  # walk errors alone, with no scan to collect
            if self.failure is not None:
                break
        if batch and self.failure is None:
            in_flight = self._submit_scan(run, batch, in_flight)
        while in_flight:
            in_flight = self._collect_scans(run, in_flight)

    def _submit_scan(self, run: str, batch: list[tuple[str, bytes | None]], in_flight: set) -> set:
        """Send a batch of (key, file identity) to scan, once there is room, without the
        inputs a resumed run has done nor the files unchanged since a finished run."""
        # Only a resumed run has inputs done already (a walk meets each input once).
        done = self.journal.done(run, (k for k, _ in batch)) if self.report.resumed else set()
        identities = {k: i for k, i in batch if i is not None and k not in done}
        unchanged = self.journal.unchanged(identities)
        self.report.unchanged += len(unchanged)
        todo = [k for k, _ in batch if k not in done and k not in unchanged]
        while len(in_flight) >= window(self.executor):
            in_flight = self._collect_scans(run, in_flight)
        if todo:
            future = self._submit(tasks.scan_task, todo, self.checks.inputs)
            self.identities[future] = {k: identities[k] for k in todo if k in identities}
            in_flight.add(future)
        elif unchanged:
            self._notify("scanning")
        return in_flight

    def _collect_scans(self, run: str, in_flight: set) -> set:
        """Take the scan batches that are done, and journal what is held once SCAN_RECORD
        inputs or a second's worth are (one sync for all: while this process records, it
        sends no work); the batches still in flight."""
        done, pending = self.executor.wait_any(in_flight)
        for future in done:
            batch_identities = self.identities.pop(future)
            try:
                batch_planned, batch_rejected, worker, stages = future.result()
            except Exception as error:
                self.failure = self.failure or error
                continue
            self._add_stages(worker, stages)
            self._hold(batch_planned, batch_rejected, batch_identities)
        self._record_held(run)
        return pending

    def _hold(
        self,
        planned: list[Planned] | None = None,
        rejected: list[Outcome] | None = None,
        identities: dict[str, bytes] | None = None,
    ) -> None:
        """Hold scan results (inputs to plan, quarantined, files' identities) to journal
        together with the next record (`_record_held`)."""
        held = self.scanned
        if not held.planned and not held.rejected:
            held.since = time.perf_counter()
        held.planned += planned or []
        held.rejected += rejected or []
        held.identities.update(identities or {})

    def _record_held(self, run: str) -> None:
        """Journal the scan results held once SCAN_RECORD inputs or a second's worth are
        (identities alone wait for inputs, or the scan's end)."""
        held = self.scanned
        count = len(held.planned) + len(held.rejected)
        waited = time.perf_counter() - held.since
        if count and (count >= SCAN_RECORD or waited >= CHECKPOINT_SECONDS):
            self._record_scanned(run)

    def _record_scanned(self, run: str, end: bool = False) -> None:
        """Journal the scan results held (at the scan's `end`, with the run record, as the
        session has it); count the quarantined inputs."""
        held, self.scanned = self.scanned, _Scanned()
        with self.clock.stage("journal"):
            more = self._checkpoint(end)
            try:
                self.journal.record(run, held.rejected, held.planned, held.identities, more)
            except BaseException:
                # Not committed: the run is still scanning. Only a failed commit sets it
                # back; a Ctrl-C in the progress callback after it must not.
                if end:
                    self.record["state"] = "scanning"
                raise
        for outcome in held.rejected:
            self.report.count(outcome)
        self._notify("scanning")

    def _quarantine_unread(self, path: str, reason: str) -> Outcome:
        """Quarantine an input the walk could not read (no bytes to keep)."""
        self.archive.quarantine.keep_unread(path, reason)
        return Outcome(path, "quarantined", 0, reason=reason)

    # --- encoding ---------------------------------------------------------------------

    def _encode(self, run: str) -> None:
        """Encode the planned inputs series by series, committing parts as they finish."""
        left = self._planned_left(run)
        self.total = self.report.inputs + sum(inputs for inputs, _ in left.values())
        self.parts: CrashIsolation[tuple[Part, ...]] = CrashIsolation(
            self.executor,
            start=lambda batch: self._submit(tasks.encode_batch, batch, self.checks),
            split=lambda batch: [(retry,) for part in batch for retry in self._split(part)],
            handle=lambda done: self._finished(run, done),
            running=lambda: self.failure is None,
        )
        self.batch: list[Part] = []  # small parts not sent yet, to go as one task
        self.batch_size = (0, 0, 0)  # their frames, pixel bytes and files at most
        # A batch's files are held open until its sync in the worker, which inherits this
        # process's descriptor limit; none is held where it is infinite, nor capped then.
        budget = held_budget()
        self.batch_files = budget if budget > 0 else sys.maxsize
        # Largest series (in pixel bytes, then frames) first: the last parts out are small
        # ones, so the workers finish together rather than one ending the run alone on a
        # large series. Frames alone would send many small frames before a few large ones.
        order = sorted(left, key=lambda series: (-left[series][1][0], -left[series][1][1], series))
        try:
            for series in order:
                if self.failure is not None:
                    break
                self._send_series(run, series)
            if self.batch and self.failure is None:
                self._send_batch()
            self.parts.finish()
        finally:
            for waiting in self.waiting.values():  # a series the run stopped in
                waiting.staged.close()

    def _send_series(self, run: str, series: str) -> None:
        """Cut a series into parts as its plan is read and send them, window by window."""
        per_shard = self.archive.config["frames_per_shard"]
        waiting = None
        for planned, span in plan_parts(self.journal.pending(run, series), per_shard):
            if waiting is None:
                base = align(committed_end(self.archive, series), per_shard)
                waiting = self.waiting[series] = _Waiting(base, _Staged(self.root))
            part = Part(series, waiting.end, span, tuple(p.key for p in planned), run)
            waiting.end += span  # the next part starts on its own shard
            waiting.parts += 1
            waiting.out[part] = planned
            frames = sum(p.frames for p in planned)
            pixel_bytes = sum(p.pixel_bytes for p in planned)
            if frames >= per_shard or pixel_bytes >= BATCH_BYTES:  # a task of its own
                self._send_batch([part])
            else:  # a small series, or the end of one: with others, up to a part's frames
                files = PART_FILES + sum(1 for p in planned if p.frames)  # at most
                if self.batch and self.batch_size[2] + files > self.batch_files:
                    # Series without pixels (SR) add no frames nor bytes: past the budget,
                    # the batch's files would be synced one by one as they are written.
                    self._send_batch()
                self.batch.append(part)
                held_frames, held_bytes, held_files = self.batch_size
                self.batch_size = (
                    held_frames + frames,
                    held_bytes + pixel_bytes,
                    held_files + files,
                )
                if self.batch_size[0] >= per_shard or self.batch_size[1] >= BATCH_BYTES:
                    self._send_batch()
            if self.failure is not None:
                return
        if waiting is not None:
            waiting.cut = True
            self._commit_when_back(run, series)  # its parts may all be back already

    def _send_batch(self, parts: list[Part] | None = None) -> None:
        """Send `parts` as one task, once there is room (by default the small parts held)."""
        if parts is None:
            parts, self.batch, self.batch_size = self.batch, [], (0, 0, 0)
        self.parts.make_room()
        if self.failure is None:
            self.parts.submit(tuple(parts))

    def _planned_left(self, run: str) -> dict[str, tuple[int, tuple[int, int]]]:
        """Per series with planned inputs left (without an outcome): (inputs, (pixel bytes,
        frames)) left.

        One pass over the plan, series by series; one entry per series, not per input.
        """
        left = {}
        for series in self._planned_series(run):
            inputs = pixel_bytes = frames = 0
            for planned in self.journal.pending(run, series):
                inputs += 1
                pixel_bytes += planned.pixel_bytes
                frames += planned.frames
            if inputs:
                left[series] = (inputs, (pixel_bytes, frames))
        return left

    def _finished(self, run: str, done: Finished[tuple[Part, ...]]) -> None:
        """Take parts that ended: their results, or the quarantine of the input that kills
        workers."""
        if self.failure is not None:
            return
        if done.error is None:
            results, error = done.result
            for result in results:
                self._take(result)
            # The series the batch completes, in one transaction (one index commit, not one
            # each: while this process commits, it sends no work).
            self._commit_when_back(run, *(result.part.series_uid for result in results))
            if error is not None:  # the parts after it were not encoded
                self.failure = self.failure or PartFailed(done.task[len(results)], error)
        elif done.killer:  # a file may crash a codec: it is found, the rest is kept
            (part,) = done.task  # a retry: one part of one SOP Instance UID
            self._take(self._quarantined(part, done.error))
            self._commit_when_back(run, part.series_uid)
        else:
            self.failure = PartFailed(done.task[0], done.error)

    def _take(self, result: PartResult) -> None:
        """Keep a part's result (`_Staged`), for its series' commit once all its parts are back."""
        if result.stages:  # not a part quarantined here after its worker died
            self._add_stages(result.worker, result.stages)
        if result.encode_started is not None:
            first = result.encode_started - self.launched
            known = self.report.first_encode_seconds
            self.report.first_encode_seconds = first if known is None else min(known, first)
        waiting = self.waiting[result.part.series_uid]
        waiting.out.pop(result.part, None)
        try:
            waiting.staged.add(result)
        except Exception as error:  # the archive's disk is full: stop, keep what is in
            self.failure = self.failure or error

    def _commit_when_back(self, run: str, *series: str) -> None:
        """Commit those of the series that are cut into parts with every part back, together."""
        if self.failure is not None:
            return
        ready = [
            uid
            for uid in dict.fromkeys(series)  # each once, in order
            if (w := self.waiting[uid]).cut and w.staged.count >= w.parts
        ]
        staged = [self.waiting.pop(uid).staged for uid in ready]
        try:
            if staged:
                with self.clock.stage("commit"):
                    self._commit(run, (result for one in staged for result in one))
        except Exception as error:  # e.g. the index's disk is full: stop, keep what is in
            self.failure = self.failure or error
        finally:
            for one in staged:
                one.close()

    def _split(self, part: Part) -> list[Part]:
        """A part a dead worker took down, as parts of one SOP Instance UID each, placed anew.

        A dead worker fails every part in flight, so the innocent ones are retried as
        well (see CrashIsolation).
        """
        waiting = self.waiting[part.series_uid]
        planned = waiting.out.pop(part)
        groups: dict[str, list[Planned]] = {}
        for entry in planned:
            groups.setdefault(entry.sop_instance_uid, []).append(entry)
        waiting.parts += len(groups) - 1
        per_shard = self.archive.config["frames_per_shard"]
        alone = []
        for group in groups.values():
            # Each version may need frames of its own.
            span = align(sum(entry.frames for entry in group), per_shard)
            retry = Part(part.series_uid, waiting.end, span, tuple(e.key for e in group), part.run)
            waiting.end += span  # after every part placed: no shard is shared
            waiting.out[retry] = group
            alone.append(retry)
        return alone

    def _quarantined(self, part: Part, error: BaseException) -> PartResult:
        """The result of a part of one SOP Instance UID that killed its worker twice: its
        inputs quarantined."""
        reason = f"the encoding process died on this file ({_describe(error)})"
        quarantine = self.archive.quarantine
        outcomes = [
            quarantine_input(quarantine, k, None, reason, self.checks.inputs) for k in part.keys
        ]
        return PartResult(part, outcomes=outcomes)

    def _commit(self, run: str, results: Iterable[PartResult]) -> None:
        """Commit the parts of whole series (rows, versions, duplicates, outcomes) in one index
        transaction.

        Whole series in one transaction, so that readers never see part of a series. It
        is fed a part at a time (`results` may be read from disk as it goes), so memory
        holds at most STAGED_INPUTS inputs' results (`_Staged`) and one part read back,
        however large the series.
        """
        ends: dict[str, int] = {}
        # Its outcomes are counted as it goes, and uncounted if it does not commit.
        with self.report.counting(), self.archive.index.writing() as index:
            for result in results:
                self._commit_part(run, index, result)
                for path, end in result.arrays.items():
                    ends[path] = max(ends.get(path, 0), end)
        # After the commit: a zarr reader never sees frames that no row references. The
        # arrays' new counts are made durable together: a batch of small series raises a
        # count each, and two fsyncs one after another per array held this process (which
        # sends no work while it commits) ~8 ms an array under load.
        pixels = self.archive.pixels
        raised = []
        for path, end in ends.items():
            meta = pixels.meta(path)
            if end > meta["shape"][0]:
                raised.append(pixels.frames_file(path, end, meta))
        if raised:
            write_together(raised)
        self._notify("encoding")

    def _commit_part(self, run: str, index: IndexWriter, result: PartResult) -> None:
        """Add one part's rows, versions, duplicates and outcomes to its series' transaction."""
        outcomes = {o.key: o for o in result.outcomes}
        rows = {row["SOPInstanceUID"]: row for row in result.rows}
        # Rows this part changes; a SOP UID's inputs are all in one part, and earlier parts'
        # changes are read back from the transaction (`index.row`).
        updated: dict[str, Row] = {}
        for sop, row in list(rows.items()):
            # Committed meanwhile by another series' part, or added by an earlier part of
            # this series (the same SOP UID under another Instance Number, planned apart).
            prior = index.row(sop)
            if prior is not None:
                del rows[sop]
                # Each version of the row and the duplicates found of it in its part: each
                # is now judged against the committed row.
                for key, source in _inputs_of(row):
                    outcomes[key] = self._late_conflict(prior, key, source, updated, outcomes[key])

        if rows:  # a series is in one study: an instance that says another is not indexed
            study = _series_study(index, list(rows.values()))
            for sop, row in list(rows.items()):
                if row.get("StudyInstanceUID") != study:
                    del rows[sop]
                    reason = f"conflict: its series is in study {study} already"
                    for key, source in _inputs_of(row):
                        size = outcomes[key].size
                        outcomes[key] = self._quarantined_conflict(key, source, reason, {}, size)

        def committed_row(sop: str, what: str) -> Row:
            current = updated.get(sop) or index.row(sop)
            if current is None:  # cannot happen: the worker saw it committed
                raise RuntimeError(f"{sop}: {what} of a row that is not in the index")
            return current

        for sop, version in result.versions:  # versions of committed rows, in order received
            updated[sop] = with_version(committed_row(sop, "new version"), version)
        for sop, duplicate in result.duplicates:
            updated[sop] = with_duplicate(committed_row(sop, "duplicate"), duplicate)
        committed = [with_run(row, run) for row in (*rows.values(), *updated.values())]
        journal: dict[bytes, bytes | None] = {
            self.journal.outcome_key(run, k): o.to_bytes() for k, o in outcomes.items()
        }
        journal.update(
            self.journal.forget(k for k, o in outcomes.items() if o.outcome == "quarantined")
        )
        journal.update(self._checkpoint())
        index.add(committed, journal=journal)
        for outcome in outcomes.values():
            self.report.count(outcome)

    def _late_conflict(
        self,
        prior: Row,
        key: str,
        row: Row,
        updated: dict[str, Row],
        outcome: Outcome,
    ) -> Outcome:
        """The outcome of an input whose SOP UID another part committed after its worker looked.

        `row` is the input's version (for a duplicate: the row it duplicated, with its sha256).
        """
        sop = row["SOPInstanceUID"]
        current = updated.get(sop) or prior
        if row["source_sha256"] in kept_sha256s(current):
            updated[sop] = with_duplicate(current, {"path": key, "sha256": row["source_sha256"]})
            return Outcome(key, "duplicate", outcome.size, sop=sop)
        # The prior is another series' row (a conflict: its series differs), or one of this
        # series under another Instance Number, planned in another part: a version when
        # the pixel hashes both parts recorded agree (no hash, nothing decoded: a conflict).
        reason = conflict_reason(
            current,
            row,
            lambda: (
                row.get("pixel_hash") is not None
                and row.get("pixel_hash") == current.get("pixel_hash")
            ),
        )
        if reason is None and key == row["source_path"]:  # its own frames were written
            updated[sop] = with_version(current, row)
            return replace(outcome, version=True)
        reason = reason or "conflict: archived meanwhile"
        return self._quarantined_conflict(key, row, reason, current, outcome.size)

    def _quarantined_conflict(
        self, key: str, row: Row, reason: str, prior: Mapping[str, Any], size: int
    ) -> Outcome:
        """Quarantine input `key` (its version `row`, `size` bytes) as conflicting with
        `prior` (empty: with no one row); its outcome."""
        try:
            data = read_input(InputRef.from_key(key), self.checks.inputs)  # the run's links, limit
        except InputError:
            data = None
        sop = row["SOPInstanceUID"]
        quarantine_conflict(
            self.archive.quarantine, key, data, row["source_sha256"], reason, prior, sop, {}
        )
        return Outcome(key, "conflict", size, reason=reason, sop=sop)

    # --- the end ----------------------------------------------------------------------

    def _tidy(self, run: str) -> None:
        """For every series of the run: array shapes as committed, unreferenced files removed.

        What a killed session wrote and never committed (shards, packs, arrays)
        is deleted here, so the archive equals one an uninterrupted run makes.
        """
        tidied = Tidied()
        # Every series' first: a copy's part may have pending rows files in several.
        mark_series_committed(self.archive, self._planned_series(run), tidied)
        for series in self._planned_series(run):
            tidy_marked_series(self.archive, series, tidied)
        remove_temporaries(self.archive)

    def _planned_series(self, run: str) -> Iterator[str]:
        """The series the run planned, in UID order, read one at a time."""
        series = None
        while series := self.journal.next_series(run, series):
            yield series

    # --- helpers ----------------------------------------------------------------------

    def _submit(self, fn: Callable, *args: Any) -> Future:
        """Queue fn(root, *args) on the executor, guarded by this session."""
        return self.executor.submit(session.guarded, fn, self.root, self.session, *args)

    def _add_stages(self, worker: int, stages: Times) -> None:
        """Count a task's seconds per stage for the worker that ran it."""
        if worker == os.getpid():
            name = "this process"
            self.inline_cpu += sum(cpu for cpu, _ in stages.values())
        else:
            name = self.names.setdefault(worker, f"worker {len(self.names) + 1}")
        add_times(self.task_stages.setdefault(name, {}), stages)
        self.busy[name] = self.busy.get(name, 0.0) + sum(wall for _, wall in stages.values())

    def _stages_so_far(self, phases: dict[str, float]) -> dict[str, Times]:
        """This session's seconds per process and stage so far (`phases`: its phases' wall
        seconds): its tasks', this process's own and each worker's idle time."""
        stages = {
            name: {k: list(t) for k, t in times.items()} for name, times in self.task_stages.items()
        }
        self.clock.charge_open()  # the journal's stage, open for the scan's last record
        own = {name: list(times) for name, times in self.clock.times.items()}
        # The rest of this process's CPU: walking, planning, sending tasks, taking results,
        # the tidy (not the tasks it ran itself, counted as "this process").
        spent = sum(cpu for cpu, _ in own.values()) + self.inline_cpu
        rest = time.process_time() - self.cpu_started - spent
        stages["main"] = {**own, "other": [max(0.0, rest), 0.0]}
        working = phases.get("scan", 0.0) + phases.get("encode", 0.0)
        for name, busy in self.busy.items():
            if name != "this process":
                stages[name]["idle"] = [0.0, max(0.0, working - busy)]
        return stages

    def _report_stages(self) -> None:
        """The report's stages: the earlier sessions' (the run record's) and this one's."""
        self.report.stages = {}
        for stages in (self.record.get("stages", {}), self._stages_so_far(self.session_phases)):
            for name, times in stages.items():
                self.report.add_stages(name, times)

    def _notify(self, phase: str) -> None:
        """Tell the progress callback where the run is (no snapshot made without one)."""
        if self.notify is not None:
            seconds = time.perf_counter() - self.started
            self.notify(Progress(phase, self.report, self.total, seconds))


def _series_study(index: IndexWriter, rows: list[Row]) -> str | None:
    """The study of the series of `rows`: the indexed one, else the one most of them give
    (ties: the first)."""
    record = index.series_record(rows[0]["SeriesInstanceUID"])
    if record is not None:
        return record.get("StudyInstanceUID")
    return Counter(row.get("StudyInstanceUID") for row in rows).most_common(1)[0][0]


def _inputs_of(row: Row) -> list[tuple[str, Row]]:
    """(input key, its version) of each input a part's row holds: its versions received, and
    the duplicates found of them (with their own sha256)."""
    sources = [(v["source_path"], v) for v in version_rows(row)]
    sources += [(d["path"], {**row, "source_sha256": d["sha256"]}) for d in row["duplicates"]]
    return sources


def _describe(error: BaseException) -> str:
    """The reason of an error, for people: an OS error's text and file, else its type and text."""
    if isinstance(error, PartFailed):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    return f"{type(error).__name__}: {error}"
