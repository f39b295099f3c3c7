"""The report of an ingest: what came in and where each input ended."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class IngestReport:
    """Counts of one ingest; inputs = archived + duplicates + conflicts + quarantined."""

    inputs: int = 0
    archived: int = 0
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    def quarantine(self, reason: str) -> None:
        """Count one quarantined input."""
        self.quarantined += 1
        self.reasons[_reason_group(reason)] += 1

    @property
    def balanced(self) -> bool:
        """The completeness invariant."""
        return self.inputs == self.archived + self.duplicates + self.conflicts + self.quarantined

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "inputs": self.inputs,
            "archived": self.archived,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "quarantined": self.quarantined,
            "quarantine_reasons": dict(self.reasons.most_common()),
            "input_bytes": self.input_bytes,
            "raw_pixel_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "ratio": round(self.raw_bytes / self.stored_bytes, 3) if self.stored_bytes else None,
            "seconds": round(self.seconds, 3),
            "instances_per_second": round(self.inputs / self.seconds, 1) if self.seconds else None,
            "raw_mb_per_second": round(self.raw_bytes / self.seconds / 1e6, 1)
            if self.seconds
            else None,
            "balanced": self.balanced,
        }


def _reason_group(reason: str) -> str:
    """A reason without the parts that differ per file (offsets, numbers)."""
    return reason.split(":")[0] if ": " in reason else reason
