"""The ingest journal: what a run has planned and where each of its inputs ended.

Kept in the index's `journal` database, so that the outcomes of a part's inputs
are committed in the same LMDB transaction as the part's rows: after a kill at
any moment, an input has an outcome if and only if its work is committed.

Keys (NUL-separated; UIDs hold no NUL). An input key (a path, or an archive and
a member name) can be longer than the 511 bytes LMDB allows in a key, so keys hold
its digest and values the key itself:

```
c <sources id>                           -> run id of the unfinished run of these sources
r <run>                                  -> the run record (JSON)
o <run> <digest>                         -> the input's Outcome (JSON)
p <run> <series> <order> <sop> <digest>  -> a scanned input waiting to be encoded (JSON)
s <key, or a digest of a long one>      -> a file's identity when a run scanned it, and that run
```

The `s` entries make catch-up runs cheap: a file whose size, mtime (ns), inode and
device are those recorded when a run that has since finished scanned it has an
outcome in that run and the same bytes (as far as a `stat` can tell), so it is
skipped without being opened. The identity is taken before the file is read, so a
change made while it is read shows as a different identity next time. A delete
(archive/corrections.py) drops the entries of its instances' files, which are then
read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pacs_engine.archive.report import Outcome
from pacs_engine.index import Index
from pacs_engine.index.keys import identity_key
from pacs_engine.stages import Times, add_times

_SEP = b"\x00"
_PAGE = 4096
#: Sorts instances without an Instance Number after every numbered one.
_NO_NUMBER = 1 << 63
#: Added to an Instance Number in a plan key: a number in [-_BIAS, _BIAS) (any real one)
#: gives 0 to _NO_NUMBER - 1, 19 digits at most; one outside sorts as none (a hostile
#: 2 ** 200 made a key past LMDB's 511 bytes, and stopped every resume of the run).
_BIAS = 1 << 62
#: A file's identity in an `s` entry: size, mtime in ns, inode, device (then the run id).
_IDENTITY = struct.Struct("<QqQQ")


def file_identity(path: str) -> bytes | None:
    """What tells a file changed without reading it (size, mtime, inode, device); None if
    it cannot be stat'ed (it is then read, and its error found, as any input)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return _IDENTITY.pack(info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)


@dataclass(frozen=True)
class Planned:
    """A scanned input, grouped under its series, waiting to be encoded."""

    key: str
    series_uid: str
    sop_instance_uid: str
    instance_number: int | None
    frames: int  # frames its pixel data holds (Number of Frames), 0 without pixel data
    # Bytes of its decoded pixels, as its attributes declare them (0 in plans written before)
    pixel_bytes: int = 0


class Journal:
    """The journal of ingest runs of one archive."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._finished: dict[str, bool] = {}  # run id -> finished, for `unchanged`

    # --- runs -------------------------------------------------------------------------

    def start(self, sources: list[str]) -> dict[str, Any]:
        """The unfinished run of these sources (resumed), or a new run."""
        current = _key(b"c", _sources_id(sources))
        found = self.index.journal_get([current]).get(current)
        if found is not None:
            run_key = _key(b"r", found.decode())
            record = json.loads(self.index.journal_get([run_key])[run_key])
            record["sessions"] += 1
            # A session killed (kill -9) could not save its time; its last checkpoint did.
            killed = record.pop("session", None)
            if killed is not None:
                record["seconds"] += killed["seconds"]
                phases = record.setdefault("phases", {})
                for phase, seconds in killed["phases"].items():
                    phases[phase] = phases.get(phase, 0.0) + seconds
                stages = record.setdefault("stages", {})
                for process, times in killed.get("stages", {}).items():  # none before s10
                    add_times(stages.setdefault(process, {}), times)
        else:
            record = {
                "run": f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
                "sources": sources,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "state": "scanning",
                "sessions": 1,
                "seconds": 0.0,
            }
        self.save(record, {current: record["run"].encode()})
        return record

    def save(self, record: dict[str, Any], more: dict[bytes, bytes | None] | None = None) -> None:
        """Write the run record (and `more` journal entries) in one transaction."""
        entries = {_key(b"r", record["run"]): json.dumps(record).encode(), **(more or {})}
        self.index.commit([], journal=entries)

    def checkpoint(
        self,
        record: dict[str, Any],
        seconds: float,
        phases: dict[str, float],
        stages: dict[str, Times],
    ) -> dict[bytes, bytes | None]:
        """The journal entry that records the running session's time so far (`seconds`, by
        phase, and by process and stage), to commit with the session's work: a session
        killed before it could save its time is then counted, up to its last commit, when
        the run resumes."""
        session = {"seconds": seconds, "phases": phases, "stages": stages}
        return {_key(b"r", record["run"]): json.dumps({**record, "session": session}).encode()}

    def finish(self, record: dict[str, Any]) -> None:
        """Drop the run's plan and mark it finished; the outcomes stay as its record."""
        self._drop_plan(record["run"])
        record["state"] = "finished"
        self.save(record, {_key(b"c", _sources_id(record["sources"])): None})

    def abandon(self, run: str) -> int:
        """Give up an unfinished run: drop its plan, so that its sources start a new run.

        The outcomes of the inputs it finished stay as their record. The run is marked
        abandoned before its plan is dropped, page by page, so an abandon that is
        interrupted leaves no half-planned run to resume; repeating it drops the rest.
        Returns how many planned inputs were dropped; raises KeyError for a run that is
        neither unfinished nor abandoned.
        """
        if not self.can_abandon(run):
            raise KeyError(run)
        record = self.run_record(run)
        if record is None:  # can_abandon found it: only a run removed meanwhile gets here
            raise KeyError(run)
        if record["state"] != "abandoned":
            sources = _key(b"c", _sources_id(record["sources"]))
            record["state"] = "abandoned"
            self.save(record, {sources: None})
        return self._drop_plan(run)

    def rescan(self, run: str) -> int:
        """Drop the plan of a run whose scan was interrupted, before it is done again: every
        input without an outcome is scanned and planned anew (a file changed meanwhile would
        else be planned twice, under its old and its new series or order). How many planned
        inputs were dropped; one interrupted meanwhile drops the rest on the next resume."""
        return self._drop_plan(run)

    def can_abandon(self, run: str) -> bool:
        """True for a run that is unfinished (or abandoned, with plan entries maybe left)."""
        record = self.run_record(run)
        return record is not None and record["state"] != "finished"

    def run_record(self, run: str) -> dict[str, Any] | None:
        """The record of a run (JSON: sources, state, sessions...), or None."""
        key = _key(b"r", run)
        found = self.index.journal_get([key]).get(key)
        return None if found is None else json.loads(found)

    def _drop_plan(self, run: str) -> int:
        """Delete the run's plan entries, a page per transaction; how many there were."""
        prefix = _key(b"p", run) + _SEP
        dropped = 0
        while page := self.index.journal_items(prefix, limit=_PAGE):
            self.index.commit([], journal=dict.fromkeys((k for k, _ in page), None))
            dropped += len(page)
        return dropped

    def unfinished(self) -> list[dict[str, Any]]:
        """The records of runs that have not finished (killed and not resumed yet)."""
        prefix = _key(b"c") + _SEP
        runs = []
        start = None
        while page := self.index.journal_items(prefix, start=start, limit=_PAGE):
            keys = [_key(b"r", value.decode()) for _, value in page]
            runs += [json.loads(v) for v in self.index.journal_get(keys).values()]
            start = page[-1][0] + _SEP
        return runs

    # --- outcomes ---------------------------------------------------------------------

    def outcome_key(self, run: str, key: str) -> bytes:
        """The journal key of an input's outcome."""
        return _key(b"o", run, _digest(key))

    def done(self, run: str, keys: Iterable[str]) -> set[str]:
        """The inputs among `keys` that already have an outcome in this run."""
        wanted = {self.outcome_key(run, k): k for k in keys}
        return {wanted[k] for k in self.index.journal_get(wanted)}

    def outcomes(self, run: str) -> Iterator[Outcome]:
        """Every outcome of the run, page by page."""
        prefix = _key(b"o", run) + _SEP
        start = None
        while page := self.index.journal_items(prefix, start=start, limit=_PAGE):
            for _, value in page:
                yield Outcome.from_bytes(value)
            start = page[-1][0] + _SEP

    def unchanged(self, identities: dict[str, bytes]) -> set[str]:
        """The files among `identities` (key -> `file_identity`) that a finished run scanned
        with the same identity: each has an outcome there, and the same bytes."""
        wanted = {identity_key(k): k for k in identities}
        same = set()
        for entry, value in self.index.journal_get(wanted).items():
            key = wanted[entry]
            if value[: _IDENTITY.size] == identities[key] and self._is_finished(
                value[_IDENTITY.size :].decode()
            ):
                same.add(key)
        return same

    def forget(self, keys: Iterable[str]) -> dict[bytes, bytes | None]:
        """Journal entries that drop the recorded identities of these inputs (quarantined:
        every run reads them again, as a newer engine or other limits may take them in)."""
        return dict.fromkeys(map(identity_key, keys))

    def _is_finished(self, run: str) -> bool:
        """True for a finished run (cached: only the current run changes state meanwhile)."""
        if run not in self._finished:
            record = self.run_record(run)
            self._finished[run] = record is not None and record["state"] == "finished"
        return self._finished[run]

    def record(
        self,
        run: str,
        outcomes: Iterable[Outcome],
        planned: Iterable[Planned],
        identities: dict[str, bytes] | None = None,
        more: dict[bytes, bytes | None] | None = None,
    ) -> None:
        """Commit scan results: outcomes of rejected inputs, plan entries of the others, and
        the identities (key -> `file_identity`) of the files scanned (and `more` entries)."""
        entries: dict[bytes, bytes | None] = {
            self.outcome_key(run, o.key): o.to_bytes() for o in outcomes
        }
        for name, identity in (identities or {}).items():
            entries[identity_key(name)] = identity + run.encode()
        entries.update(self.forget(o.key for o in outcomes if o.outcome == "quarantined"))
        for p in planned:
            key = _key(b"p", run, *plan_order(p))
            entry = {"frames": p.frames, "key": p.key, "pixel_bytes": p.pixel_bytes}
            entries[key] = json.dumps(entry).encode()
        self.index.commit([], journal={**entries, **(more or {})})

    # --- plan -------------------------------------------------------------------------

    def next_series(self, run: str, after: str | None) -> str | None:
        """The first planned series after `after` (in UID order), or None."""
        prefix = _key(b"p", run) + _SEP
        start = prefix if after is None else prefix + after.encode() + b"\x01"
        page = self.index.journal_items(prefix, start=start, limit=1)
        return page[0][0][len(prefix) :].split(_SEP, 1)[0].decode() if page else None

    def series(self, run: str, series_uid: str) -> Iterator[Planned]:
        """The planned inputs of one series, in instance order, read page by page."""
        for page in self._series_pages(run, series_uid):
            yield from page

    def pending(self, run: str, series_uid: str) -> Iterator[Planned]:
        """The planned inputs of one series that have no outcome yet, in instance order.

        Read a page at a time, so that a series of any size costs the memory of a page.
        """
        for page in self._series_pages(run, series_uid):
            done = self.done(run, (p.key for p in page))
            yield from (p for p in page if p.key not in done)

    def _series_pages(self, run: str, series_uid: str) -> Iterator[list[Planned]]:
        """The planned inputs of one series, in instance order, a page at a time."""
        prefix = _key(b"p", run, series_uid) + _SEP
        start = None
        while page := self.index.journal_items(prefix, start=start, limit=_PAGE):
            out = []
            for key, value in page:
                number, sop, _ = key[len(prefix) :].decode().split("\x00", 2)
                order, entry = int(number), json.loads(value)
                out.append(
                    Planned(
                        entry["key"],
                        series_uid,
                        sop,
                        None if order == _NO_NUMBER else order - _BIAS,
                        entry["frames"],
                        entry.get("pixel_bytes", 0),
                    )
                )
            yield out
            start = page[-1][0] + _SEP


def plan_order(p: Planned) -> tuple[str, str, str, str]:
    """Where a planned input sorts: series, Instance Number, SOP Instance UID, key digest."""
    given = p.instance_number
    number = _NO_NUMBER if given is None or not -_BIAS <= given < _BIAS else given + _BIAS
    return p.series_uid, f"{number:020d}", p.sop_instance_uid, _digest(p.key)


def _key(kind: bytes, *parts: str) -> bytes:
    return _SEP.join([kind, *(p.encode() for p in parts)])


def _digest(key: str) -> str:
    """A fixed-size stand-in for an input key (any length, any characters)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _sources_id(sources: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(sources)).encode()).hexdigest()[:32]
