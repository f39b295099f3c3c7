"""The bulk-migration orchestrator: scan in parallel, plan by series, encode parts, commit.

```
inputs ──► scan_task (batches, workers) ──► journal: plan entries / outcomes
journal plan, series by series ──► parts ──► encode_task (workers) ──► commit (here)
```

Only this process writes the index: the rows of all parts of a series and its
inputs' outcomes are committed in one transaction, so readers never see part of
a series. The journal makes the run resumable: started
again with the same sources, it skips inputs that have an outcome and plans the
rest. Memory in this process is bounded by the plans and rows of the series in
flight (a few kB per instance), not by the number of inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pacs_engine.archive.encoder import (
    Checks,
    Part,
    PartResult,
    conflict_reason,
    quarantine_conflict,
    quarantine_input,
    with_duplicate,
)
from pacs_engine.archive.report import IngestReport, Outcome
from pacs_engine.ingest import session, tasks
from pacs_engine.ingest.executors import InlineExecutor, make_executor, worker_died
from pacs_engine.ingest.journal import Journal, Planned
from pacs_engine.ingest.plan import align, committed_end, plan_parts
from pacs_engine.ingest.tidy import Tidied, remove_temporaries, tidy_series
from pacs_engine.inputs import InputError, InputRef, iter_inputs, read_input
from pacs_engine.storage import write_atomic

if TYPE_CHECKING:
    from pacs_engine.archive import Archive

SCAN_BATCH = 128


class IngestStopped(RuntimeError):
    """The run stopped before the end (the archive's disk is full, a worker died, ...).

    Everything committed before it stopped stays; what was in flight is not
    visible. Run the same ingest again to resume.
    """


@dataclass
class _Waiting:
    """A series with parts out: how many, their results, and what a retry needs."""

    parts: int
    results: list[PartResult]
    end: int  # first frame after every part planned for the series: where retries go
    planned: dict[str, Planned]  # by input key
    alone: set[Part] = field(default_factory=set)  # retried parts of one SOP Instance UID


class PartFailed(RuntimeError):
    """A part could not be encoded (its worker failed or died): names the part."""

    def __init__(self, part: Part, error: BaseException) -> None:
        self.part, self.error = part, error
        first = part.keys[0] if part.keys else "-"
        super().__init__(
            f"{_describe(error)}, while encoding series {part.series_uid} "
            f"({len(part.keys)} inputs from {first})"
        )


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
    executor: Any = None,
    *,
    checks: Checks | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> IngestReport:
    """Archive every input under `sources`; resumes the unfinished run of the same sources."""
    return _Run(archive, sources, workers, executor, checks or Checks(), progress).run()


class _Run:
    """One session of an ingest run: its executor, journal, report and series in flight."""

    def __init__(
        self,
        archive: Archive,
        sources: Iterable[str | os.PathLike],
        workers: int | None,
        executor: Any,
        checks: Checks,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        self.archive = archive
        self.root = str(archive.path.resolve())
        self.sources = [os.path.abspath(os.fspath(s)) for s in sources]
        self.own_executor = executor is None
        self.executor = executor if executor is not None else make_executor(workers)
        self.checks = checks
        self.notify = progress or (lambda p: None)
        self.journal = Journal(archive.index)
        self.started = time.perf_counter()
        self.report = IngestReport(workers=self.executor.workers)
        self.total: int | None = None
        self.failure: BaseException | None = None
        self.waiting: dict[str, _Waiting] = {}  # series with parts in flight
        self.alone: deque[Part] = deque()  # retries after a worker died, run one by one

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
        self.report.run = run
        self.report.resumed = record["sessions"] - 1
        self.report.phases = dict(record.get("phases", {}))  # earlier sessions' time in each
        for outcome in self.journal.outcomes(run):  # work of earlier sessions of this run
            self.report.count(outcome)
        try:
            if record["state"] == "scanning":
                self._timed("scan", self._scan, run)
                if self.failure is None:
                    record["state"] = "encoding"
                    self.journal.save(record)
            if self.failure is None:
                self._timed("encode", self._encode, run)
            if self.failure is None:
                self._timed("tidy", self._tidy, run)
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
        except Exception as error:  # the archive's disk, the index: stop and say why
            self.failure = self.failure or error
        finally:
            if self.own_executor:
                self.executor.close()
            if isinstance(self.executor, InlineExecutor):
                tasks.release(self.root)
            record["seconds"] += time.perf_counter() - self.started
            record["phases"] = self.report.phases
        if self.failure is not None:
            self.report.seconds = record["seconds"]
            # The disk may be full: the stop below says why; the next session counts on.
            with contextlib.suppress(Exception):
                self.journal.save(record)
            raise IngestStopped(
                f"{self.archive.path}: ingest stopped: {_describe(self.failure)}. "
                "Everything committed so far is kept and nothing half-written is visible; "
                "run the same ingest again to resume."
            ) from self.failure
        return self.report

    def _timed(self, phase: str, step: Callable[[str], None], run: str) -> None:
        """Run one phase of the session, adding its wall time to the report's phases."""
        started = time.perf_counter()
        try:
            step(run)
        finally:
            elapsed = time.perf_counter() - started
            self.report.phases[phase] = self.report.phases.get(phase, 0.0) + elapsed

    # --- scanning ---------------------------------------------------------------------

    def _scan(self, run: str) -> None:
        """Scan every input without an outcome and record the plan; bounded in flight."""
        walk_errors: list[Outcome] = []

        def on_error(path: str, reason: str) -> None:
            if not self.journal.done(run, [path]):  # a resumed scan meets it again
                walk_errors.append(self._quarantine_unread(path, reason))

        batch: list[str] = []
        in_flight: set = set()
        follow_links = self.checks.inputs.follow_links
        for ref in iter_inputs(self.sources, on_error, [self.root], follow_links):
            batch.append(ref.key)
            if len(batch) >= SCAN_BATCH:
                in_flight = self._submit_scan(run, batch, in_flight)
                batch = []
            if walk_errors:
                self._record(run, walk_errors, [])
                walk_errors = []
            if self.failure is not None:
                break
        if batch and self.failure is None:
            in_flight = self._submit_scan(run, batch, in_flight)
        if walk_errors:
            self._record(run, walk_errors, [])
        while in_flight:
            in_flight = self._collect_scans(run, in_flight)

    def _submit_scan(self, run: str, keys: list[str], in_flight: set) -> set:
        """Send a batch to scan (without inputs a resumed run has done), once there is room."""
        done = self.journal.done(run, keys)
        todo = [k for k in keys if k not in done]
        while len(in_flight) >= self._window():
            in_flight = self._collect_scans(run, in_flight)
        if todo:
            in_flight.add(self._submit(tasks.scan_task, todo, self.checks.inputs))
        return in_flight

    def _collect_scans(self, run: str, in_flight: set) -> set:
        """Record the scan batches that are done; the ones still in flight."""
        done, pending = self.executor.wait_any(in_flight)
        for future in done:
            try:
                planned, rejected = future.result()
            except Exception as error:
                self.failure = self.failure or error
                continue
            self._record(run, rejected, planned)
        return pending

    def _record(self, run: str, outcomes: list[Outcome], planned: list[Planned]) -> None:
        """Journal one scan batch and count its quarantined inputs."""
        self.journal.record(run, outcomes, planned)
        for outcome in outcomes:
            self.report.count(outcome)
        self._notify("scanning")

    def _quarantine_unread(self, path: str, reason: str) -> Outcome:
        """Quarantine an input the walk could not read (no bytes to keep)."""
        name = path.encode("utf-8", "surrogateescape")  # names need not be UTF-8
        self.archive.quarantine.add(path, None, hashlib.sha256(name).hexdigest(), reason)
        return Outcome(path, "quarantined", 0, reason=reason)

    # --- encoding ---------------------------------------------------------------------

    def _encode(self, run: str) -> None:
        """Encode the planned inputs series by series, committing parts as they finish."""
        self.total = self.report.inputs + self._planned_left(run)
        per_shard = self.archive.config["frames_per_shard"]
        in_flight: dict = {}  # future -> the part it encodes
        series = None
        while self.failure is None and (series := self.journal.next_series(run, series)):
            planned = self.journal.series(run, series)
            done = self.journal.done(run, [p.key for p in planned])
            todo = [p for p in planned if p.key not in done]
            if not todo:
                continue
            base = align(committed_end(self.archive.index, series), per_shard)
            parts = plan_parts(todo, base, per_shard)
            end = parts[-1].base + parts[-1].span
            self.waiting[series] = _Waiting(len(parts), [], end, {p.key: p for p in todo})
            for part in parts:
                while len(in_flight) >= self._window():
                    in_flight = self._collect_parts(run, in_flight)
                if self.alone:
                    self._isolate(run, in_flight)
                if self.failure is not None:
                    break
                in_flight[self._submit(tasks.encode_task, part, self.checks)] = part
        while in_flight or (self.alone and self.failure is None):
            if in_flight:
                self._collect_parts(run, in_flight)
            if self.alone and self.failure is None:
                self._isolate(run, in_flight)

    def _planned_left(self, run: str) -> int:
        """Planned inputs without an outcome (one pass over the plan, series by series)."""
        left = 0
        series = None
        while series := self.journal.next_series(run, series):
            planned = self.journal.series(run, series)
            left += len(planned) - len(self.journal.done(run, [p.key for p in planned]))
        return left

    def _collect_parts(self, run: str, in_flight: dict) -> dict:
        """Take the parts that are done; commit each series whose parts are all back."""
        done, _ = self.executor.wait_any(set(in_flight))
        for future in done:
            part = in_flight.pop(future)
            try:
                result = future.result()
            except Exception as error:
                if self.failure is not None:
                    continue
                if worker_died(error):  # a file may crash a codec: find it, keep the rest
                    result = self._after_crash(part, error)
                    if result is None:
                        continue
                else:
                    self.failure = PartFailed(part, error)
                    continue
            self._take(run, result)
        return in_flight

    def _take(self, run: str, result: PartResult) -> None:
        """Keep a part's result; commit its series once all its parts are back."""
        waiting = self.waiting[result.part.series_uid]
        waiting.results.append(result)
        if len(waiting.results) < waiting.parts or self.failure is not None:
            return
        del self.waiting[result.part.series_uid]
        try:
            self._commit(run, waiting.results)
        except Exception as error:  # e.g. the index's disk is full: stop, keep what is in
            self.failure = self.failure or error

    def _after_crash(self, part: Part, error: BaseException) -> PartResult | None:
        """Queue a part whose worker died to be retried one SOP Instance UID at a time; when
        such a retry dies too, quarantine its inputs (the returned result).

        A dead worker breaks every part in flight, so the innocent ones are retried as
        well; retries run one at a time on fresh workers, so the one that dies is guilty.
        """
        waiting = self.waiting[part.series_uid]
        if part in waiting.alone:
            self.executor.restart()
            reason = f"the encoding process died on this file ({_describe(error)})"
            quarantine = self.archive.quarantine
            return PartResult(
                part,
                outcomes=[
                    quarantine_input(quarantine, k, None, reason, self.checks.inputs)
                    for k in part.keys
                ],
            )
        groups: dict[str, list[str]] = {}
        for key in part.keys:
            groups.setdefault(waiting.planned[key].sop_instance_uid, []).append(key)
        waiting.parts += len(groups) - 1
        per_shard = self.archive.config["frames_per_shard"]
        for keys in groups.values():
            span = align(max(waiting.planned[k].frames for k in keys), per_shard)
            alone = Part(part.series_uid, waiting.end, span, tuple(keys))
            waiting.end += span  # after every planned part: no shard is shared
            waiting.alone.add(alone)
            self.alone.append(alone)
        return None

    def _isolate(self, run: str, in_flight: dict) -> None:
        """Let what is in flight finish, then run the queued retries one by one."""
        while in_flight:
            self._collect_parts(run, in_flight)
        self.executor.restart()
        while self.alone and self.failure is None:
            part = self.alone.popleft()
            in_flight[self._submit(tasks.encode_task, part, self.checks)] = part
            while in_flight:
                self._collect_parts(run, in_flight)

    def _commit(self, run: str, results: list[PartResult]) -> None:
        """Commit a series' parts (rows, duplicates, outcomes) in one index transaction.

        One transaction per series, so that readers never see part of a series.
        """
        index = self.archive.index
        outcomes = {o.key: o for result in results for o in result.outcomes}
        rows = {row["SOPInstanceUID"]: row for result in results for row in result.rows}
        updated: dict[str, dict[str, Any]] = {}
        for sop, row in list(rows.items()):
            prior = index.get(sop)
            if prior is not None:  # another series' part committed the same SOP meanwhile
                del rows[sop]
                # The row and the duplicates found of it in its part: each is now judged
                # against the committed row.
                sources = [(row["source_path"], row["source_sha256"])]
                sources += [(d["path"], d["sha256"]) for d in row["duplicates"]]
                for key, sha256 in sources:
                    source = {**row, "source_path": key, "source_sha256": sha256}
                    outcomes[key] = self._late_conflict(prior, source, updated, outcomes[key])
        for sop, duplicate in (d for result in results for d in result.duplicates):
            current = updated.get(sop) or index.get(sop)
            if current is None:  # cannot happen: the worker saw it committed
                raise RuntimeError(f"{sop}: duplicate of a row that is not in the index")
            updated[sop] = with_duplicate(current, duplicate)
        journal = {self.journal.outcome_key(run, k): o.to_bytes() for k, o in outcomes.items()}
        index.commit([*rows.values(), *updated.values()], journal=journal)
        ends: dict[str, int] = {}
        for result in results:
            for path, end in result.arrays.items():
                ends[path] = max(ends.get(path, 0), end)
        # After the commit: a zarr reader never sees frames that no row references.
        for path, end in ends.items():
            if end > self.archive.pixels.frames(path):
                self.archive.pixels.set_frames(path, end)
        for outcome in outcomes.values():
            self.report.count(outcome)
        self._notify("encoding")

    def _late_conflict(
        self,
        prior: dict[str, Any],
        row: dict[str, Any],
        updated: dict[str, dict[str, Any]],
        outcome: Outcome,
    ) -> Outcome:
        """The outcome of an input whose SOP UID another part committed after its worker looked."""
        key, sop = row["source_path"], row["SOPInstanceUID"]
        # The prior is another series' row (a part of this series would have seen it), so
        # the SeriesInstanceUID differs: a conflict whatever the pixels, never a duplicate.
        reason = conflict_reason(prior, row["source_sha256"], row, lambda: False)
        if reason is None:
            duplicate = {"path": key, "sha256": row["source_sha256"]}
            updated[sop] = with_duplicate(updated.get(sop) or prior, duplicate)
            return Outcome(key, "duplicate", outcome.size, sop=sop)
        try:
            data = read_input(InputRef.from_key(key))
        except InputError:
            data = None
        quarantine_conflict(
            self.archive.quarantine,
            key,
            data,
            row["source_sha256"],
            reason,
            prior,
            sop,
            {},
        )
        return Outcome(key, "conflict", outcome.size, reason=reason, sop=sop)

    # --- the end ----------------------------------------------------------------------

    def _tidy(self, run: str) -> None:
        """For every series of the run: array shapes as committed, unreferenced files removed.

        What a killed session wrote and never committed (shards, packs, arrays)
        is deleted here, so the archive equals one an uninterrupted run makes.
        """
        tidied = Tidied()
        series = None
        while series := self.journal.next_series(run, series):
            tidy_series(self.archive, series, tidied)
        remove_temporaries(self.archive)

    # --- helpers ----------------------------------------------------------------------

    def _submit(self, fn: Callable, *args: Any) -> Any:
        """Queue fn(root, *args) on the executor, guarded by this session."""
        return self.executor.submit(session.guarded, fn, self.root, self.session, *args)

    def _window(self) -> int:
        """Tasks in flight: enough to keep every worker busy while results are committed."""
        return max(1, 2 * self.executor.workers)

    def _notify(self, phase: str) -> None:
        """Tell the progress callback where the run is."""
        self.notify(Progress(phase, self.report, self.total, time.perf_counter() - self.started))


def _describe(error: BaseException) -> str:
    """The reason of an error, for people: an OS error's text and file, else its type and text."""
    if isinstance(error, PartFailed):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    return f"{type(error).__name__}: {error}"
