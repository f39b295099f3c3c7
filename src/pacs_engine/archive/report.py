"""The report of an ingest: what came in and where each input ended."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from pacs_engine.archive.quarantine import NOT_DICOM
from pacs_engine.archive.versions import CURRENT_REASON
from pacs_engine.stages import Times, add_times

OUTCOMES = ("archived", "duplicate", "conflict", "quarantined")


@dataclass
class Outcome:
    """Where one input ended, and its bytes."""

    key: str  # the input (a path, or an archive member)
    outcome: str  # one of OUTCOMES
    size: int = 0  # bytes of the input
    raw: int = 0  # bytes of its decoded pixels, when archived
    stored: int = 0  # bytes the archive stores for it, when archived
    reason: str | None = None  # why, for a conflict or a quarantined input
    sop: str | None = None
    undecoded: bool = False  # archived with original bitstreams no one has decoded yet
    version: bool = False  # archived as a new version of an instance the archive had
    not_verified: str | None = None  # archived, but no decoder reads its frames: why

    def to_bytes(self) -> bytes:
        """The journal's record of it."""
        # Its fields are plain values: no deep copy (asdict's) is needed to dump them.
        return json.dumps({k: v for k in _OUTCOME_FIELDS if (v := getattr(self, k))}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Outcome:
        """The outcome a journal record holds."""
        return cls(**json.loads(data))


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))


@dataclass
class IngestReport:
    """Counts of one ingest; inputs = archived + duplicates + conflicts + quarantined.

    `versions` counts the archived inputs that are new versions of an instance (same
    SOP Instance UID and pixels, other bytes); `duplicates` only byte-identical copies.
    `unchanged` counts the files skipped unread because a finished earlier run gave them
    an outcome and their size, mtime, inode and device have not changed since: they are
    not inputs of this run (found = inputs + unchanged). `seconds`, `phases` and `stages`
    are the sum over every session of the run (`resumed` + 1 sessions).

    `stages` says where each process's time went: per process ("worker 1", ...,
    "main" for the ingesting process's own work, "this process" for tasks run in it),
    [CPU seconds, wall seconds] per stage (see `pacs_engine.stages`); a worker's
    "idle" is the wall time of the scan and encode phases it spent without a task;
    main's "other" is the CPU time of the rest of its work (walking, planning, sending
    tasks, taking results, the tidy), with no wall time of its own.
    """

    inputs: int = 0
    unchanged: int = 0  # files skipped unread: not inputs of this run (see above)
    archived: int = 0
    versions: int = 0  # of the archived: new versions of an instance already archived
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    archived_undecoded: int = 0  # archived instances whose original bitstreams were not decoded
    # Of those, the ones no decoder reads (kept as received, not verified), by reason.
    not_verified: Counter = field(default_factory=Counter)
    raw_bytes: int = 0
    stored_bytes: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    workers: int = 0
    resumed: int = 0  # times the run was interrupted and resumed
    run: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds: scan, encode, tidy
    stages: dict[str, Times] = field(default_factory=dict)  # process -> stage -> [CPU, wall]
    not_dicom: list[str] = field(default_factory=list)  # inputs quarantined as not DICOM
    # Wall seconds from the session's start-up (the CLI: its launch) to its first encode.
    first_encode_seconds: float | None = None

    def count(self, outcome: Outcome) -> None:
        """Count one input's outcome."""
        self.inputs += 1
        self.input_bytes += outcome.size
        if outcome.outcome == "archived":
            self.archived += 1
            self.versions += outcome.version
            self.archived_undecoded += outcome.undecoded
            if outcome.not_verified:
                self.not_verified[outcome.not_verified] += 1
            self.raw_bytes += outcome.raw
            self.stored_bytes += outcome.stored
        elif outcome.outcome == "duplicate":
            self.duplicates += 1
        elif outcome.outcome == "conflict":
            self.conflicts += 1
        else:
            self.quarantined += 1
            self.reasons[_reason_group(outcome.reason or "")] += 1
            if (outcome.reason or "").startswith(NOT_DICOM):
                self.not_dicom.append(outcome.key)

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count outcomes in the block for good only if it ends without an error: they are
        counted with the index transaction that records them, which may fail."""
        saved = {name: copy.copy(getattr(self, name)) for name in _COUNTED}
        try:
            yield
        except BaseException:
            for name, value in saved.items():
                setattr(self, name, value)
            raise

    def add_stages(self, process: str, times: Times) -> None:
        """Add a task's seconds per stage to the process's."""
        add_times(self.stages.setdefault(process, {}), times)

    @property
    def balanced(self) -> bool:
        """The completeness invariant."""
        return self.inputs == self.archived + self.duplicates + self.conflicts + self.quarantined

    @property
    def ratio(self) -> float | None:
        """Raw pixel bytes per stored byte, so far."""
        return round(self.raw_bytes / self.stored_bytes, 3) if self.stored_bytes else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "run": self.run,
            "inputs": self.inputs,
            "unchanged": self.unchanged,
            "archived": self.archived,
            "versions": self.versions,
            "current_version": CURRENT_REASON,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "quarantined": self.quarantined,
            "archived_undecoded": self.archived_undecoded,
            "not_verified": dict(self.not_verified.most_common()),
            "quarantine_reasons": dict(self.reasons.most_common()),
            "not_dicom": sorted(self.not_dicom),
            "input_bytes": self.input_bytes,
            "raw_pixel_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "ratio": self.ratio,
            "seconds": round(self.seconds, 3),
            "instances_per_second": round(self.inputs / self.seconds, 1) if self.seconds else None,
            "raw_mb_per_second": round(self.raw_bytes / self.seconds / 1e6, 1)
            if self.seconds
            else None,
            "phase_seconds": {phase: round(s, 3) for phase, s in self.phases.items()},
            "first_encode_seconds": None
            if self.first_encode_seconds is None
            else round(self.first_encode_seconds, 3),
            "stage_seconds": {
                process: {
                    name: {"cpu": round(cpu, 3), "wall": round(wall, 3)}
                    for name, (cpu, wall) in sorted(times.items(), key=lambda t: -t[1][1])
                }
                for process, times in sorted(self.stages.items())
            },
            "workers": self.workers,
            "resumed": self.resumed,
            "sessions": self.resumed + 1,
            "balanced": self.balanced,
        }


#: The fields `IngestReport.count` changes: what `IngestReport.counting` puts back.
_COUNTED = (
    "inputs",
    "input_bytes",
    "archived",
    "versions",
    "archived_undecoded",
    "not_verified",
    "raw_bytes",
    "stored_bytes",
    "duplicates",
    "conflicts",
    "quarantined",
    "reasons",
    "not_dicom",
)


def _reason_group(reason: str) -> str:
    """A reason without the parts that differ per file (offsets, numbers)."""
    return reason.split(":")[0] if ": " in reason else reason
