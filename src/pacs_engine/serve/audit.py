"""The audit trail: who did what, from where, to which study, with what outcome, when.

One JSON object a line in `ARCHIVE/audit/YYYY-MM-DD.jsonl` (UTC days), appended
only. Each record carries the SHA-256 of the record before it (`prev`) and its own
(`hash`, over `prev` and its other fields), across day files, so an edited, removed
or reordered record, or a field added to one, breaks the chain that `verify_chain`
walks. Records cut from the end leave a chain that holds: only a head hash kept
outside the archive (`chain_head`) finds them. DIMSE and DICOMweb
write to the same trail. Records name studies (and, where known, series and
instances) by UID and peers by AE title, user and address; never a patient's name
or ID (callers pass no free text from datasets).

Lines are written with one `write` on an O_APPEND descriptor under a lock (a thread
lock and `flock`, so several processes may append), and fsynced at most every
`sync_seconds` and on `close`: the trail may lose its last fraction of a second in a
power cut, never a record in the middle.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pacs_engine.storage import file_mode, make_dirs_durable

#: `prev` of the very first record of a trail.
GENESIS = "0" * 64

#: The fields of a record, in the order written (`prev` and `hash` last).
FIELDS = ("time", "protocol", "actor", "address", "action", "outcome", "study", "detail")
#: Fields a record carries only when known, after `FIELDS`. They came after the first
#: trails were written: a record without them hashes as those did, so older trails
#: verify unchanged, and one with them covers them in its hash.
OPTIONAL_FIELDS = ("series", "instances")
#: Every field a record may hold: its hash covers all but `prev` and `hash` themselves.
_COVERED = frozenset({*FIELDS, *OPTIONAL_FIELDS, "prev", "hash"})


@dataclass(frozen=True)
class ChainProblem:
    """A place where the audit chain does not hold: the file, its line and why."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def record_hash(prev: str, fields: dict[str, Any]) -> str:
    """The hash of a record: SHA-256 of `prev` and the canonical JSON of its fields."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev}\n{canonical}".encode()).hexdigest()


class AuditLog:
    """The append-only audit trail of one archive, safe to share between threads."""

    def __init__(self, archive_root: str | os.PathLike, sync_seconds: float = 0.5) -> None:
        self.folder = Path(archive_root) / "audit"
        make_dirs_durable(self.folder)
        self.sync_seconds = sync_seconds
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day = ""
        self._last_sync = 0.0
        # (file, size, hash) after this object's last write: no read-back while it holds.
        self._known: tuple[str, int, str] | None = None

    def record(
        self,
        *,
        protocol: str,
        actor: str,
        address: str,
        action: str,
        outcome: str,
        study: str | list[str] | None = None,
        detail: str | None = None,
        series: str | list[str] | None = None,
        instances: list[str] | None = None,
    ) -> dict[str, Any]:
        """Append one record and return it (with its `prev` and `hash`)."""
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            "time": now.isoformat(timespec="microseconds"),
            "protocol": protocol,
            "actor": actor,
            "address": address,
            "action": action,
            "outcome": outcome,
            "study": study,
            "detail": detail,
        }
        for name, value in (("series", series), ("instances", instances)):
            if value is not None:
                fields[name] = value
        with self._lock:
            fd = self._open_day(now.strftime("%Y-%m-%d"))
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                known = self._known
                if known is not None and known[:2] == (self._day, size):
                    prev = known[2]
                else:  # first write, a new day, or another process wrote meanwhile
                    prev = _last_hash(self.folder)
                entry = {**fields, "prev": prev, "hash": record_hash(prev, fields)}
                line = (json.dumps(entry, ensure_ascii=True) + "\n").encode()
                os.write(fd, line)
                self._known = (self._day, size + len(line), entry["hash"])
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if time.monotonic() - self._last_sync >= self.sync_seconds:
                os.fsync(fd)
                self._last_sync = time.monotonic()
        return entry

    def close(self) -> None:
        """Flush the trail to disk and close it."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_day(self, day: str) -> int:
        """The descriptor of the day's file, opening it (and closing yesterday's) when needed."""
        if self._fd is None or day != self._day:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
            path = self.folder / f"{day}.jsonl"
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                # Its folder's rights whatever the umask (a writer's umask may be stricter).
                os.fchmod(self._fd, file_mode(self.folder))
            except FileExistsError:  # another process (or an earlier run) made it
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._day = day
        return self._fd


def day_files(archive_root: str | os.PathLike) -> list[Path]:
    """The trail's day files, oldest first."""
    return sorted((Path(archive_root) / "audit").glob("????-??-??.jsonl"))


def read_records(archive_root: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every record of the trail, oldest first; ValueError naming the file and line of one
    that is not a record (`verify_chain` says more)."""
    for path in day_files(archive_root):
        with open(path, "rb") as file:
            for number, line in enumerate(file, 1):
                try:
                    entry = json.loads(line)
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: not a record: {error}") from None
                if not isinstance(entry, dict):
                    raise ValueError(f"{path}:{number}: not a record: not a JSON object")
                yield entry


def verify_chain(archive_root: str | os.PathLike, head: str | None = None) -> list[ChainProblem]:
    """The places where the trail's hash chain breaks (empty when it holds).

    Records cut from the end leave a shorter chain that holds: `head`, a record's hash
    kept outside the archive (`chain_head`, earlier), must still be in it.
    """
    problems = []
    prev = GENESIS
    seen_head = head is None
    for path in day_files(archive_root):
        with open(path, "rb") as file:
            for number, raw in enumerate(file, 1):
                try:
                    entry = json.loads(raw)
                    fields = record_fields(entry)
                    stored_prev, stored_hash = entry["prev"], entry["hash"]
                except (ValueError, KeyError, TypeError) as error:
                    problems.append(ChainProblem(path, number, f"not a record: {error}"))
                    continue
                if stored_prev != prev:
                    problems.append(ChainProblem(path, number, "prev is not the hash before"))
                if record_hash(stored_prev, fields) != stored_hash:
                    problems.append(ChainProblem(path, number, "hash does not match the record"))
                uncovered = sorted(set(entry) - _COVERED)
                if uncovered:
                    reason = f"fields its hash does not cover: {', '.join(uncovered)}"
                    problems.append(ChainProblem(path, number, reason))
                seen_head = seen_head or stored_hash == head
                prev = stored_hash
    if not seen_head:
        reason = f"no record has the hash {head} kept as a head: records were cut from the end"
        problems.append(ChainProblem(Path(archive_root) / "audit", 0, reason))
    return problems


def chain_head(archive_root: str | os.PathLike) -> str:
    """The hash of the trail's last record (GENESIS when it has none): to keep outside the
    archive, so that `verify_chain(head=...)` finds records cut from the end later."""
    head = GENESIS
    for entry in read_records(archive_root):
        head = entry.get("hash", head)
    return head


def record_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """The fields of a record its hash covers (KeyError when one of `FIELDS` is missing)."""
    fields = {name: entry[name] for name in FIELDS}
    fields.update((name, entry[name]) for name in OPTIONAL_FIELDS if name in entry)
    return fields


def _last_line(file: BinaryIO, size: int) -> bytes:
    """The last line of a file of `size` bytes that ends with a newline."""
    # A record is a few hundred bytes; read back further only for a longer one.
    window = 65536
    while True:
        file.seek(max(0, size - window))
        tail = file.read().rstrip(b"\n")
        if b"\n" in tail or window >= size:
            return tail.rsplit(b"\n", 1)[-1]
        window *= 4


def _last_hash(folder: Path) -> str:
    """The hash of the trail's last record (GENESIS for an empty trail)."""
    for path in reversed(sorted(folder.glob("????-??-??.jsonl"))):
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            if size == 0:
                continue
            last = _last_line(file, size)
        return str(json.loads(last)["hash"])
    return GENESIS
