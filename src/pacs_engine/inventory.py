"""What a legacy archive holds: counts of instances, studies and series, by kind."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID

from pacs_engine.errors import ScanError
from pacs_engine.header import Header
from pacs_engine.scanning import scan_many
from pacs_engine.sources import iter_files


@dataclass
class Inventory:
    """Counts over every file found; `problems` lists each file that is not usable DICOM."""

    files: int = 0
    bytes: int = 0
    instances: int = 0
    pixel_bytes: int = 0
    sop_instances: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)
    by_modality: Counter = field(default_factory=Counter)
    bytes_by_modality: Counter = field(default_factory=Counter)
    by_transfer_syntax: Counter = field(default_factory=Counter)
    by_sop_class: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, result: Header | ScanError) -> None:
        """Count one scanned file."""
        self.files += 1
        if isinstance(result, ScanError):
            self.problems.append((result.path or "", f"at byte {result.offset}: {result.reason}"))
            self.bytes += _size(result.path)
            return
        self.bytes += result.file_size
        self.instances += 1
        if result.pixel is not None:
            self.pixel_bytes += result.pixel.value_length
        get = result.attributes.get
        for uids, keyword in (
            (self.sop_instances, "SOPInstanceUID"),
            (self.studies, "StudyInstanceUID"),
            (self.series, "SeriesInstanceUID"),
            (self.patients, "PatientID"),
        ):
            value = get(keyword)
            if value:
                uids.add(str(value))
        modality = get("Modality") or "(none)"
        self.by_modality[modality] += 1
        self.bytes_by_modality[modality] += result.file_size
        self.by_transfer_syntax[result.transfer_syntax_uid or "(none)"] += 1
        self.by_sop_class[str(get("SOPClassUID") or "(none)")] += 1

    def add_problem(self, path: str, reason: str) -> None:
        """Record a source that could not be read at all (a missing file, an unlistable folder)."""
        self.problems.append((path, reason))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "instances": self.instances,
            "unique_sop_instances": len(self.sop_instances),
            "studies": len(self.studies),
            "series": len(self.series),
            "patients": len(self.patients),
            "pixel_bytes": self.pixel_bytes,
            "by_modality": {
                m: {"instances": n, "bytes": self.bytes_by_modality[m]}
                for m, n in self.by_modality.most_common()
            },
            "by_transfer_syntax": {
                uid: {"name": _uid_name(uid), "instances": n}
                for uid, n in self.by_transfer_syntax.most_common()
            },
            "by_sop_class": {
                uid: {"name": _uid_name(uid), "instances": n}
                for uid, n in self.by_sop_class.most_common()
            },
            "problems": [{"path": p, "reason": r} for p, r in self.problems],
        }


def _size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _uid_name(uid: str) -> str:
    name = UID(uid).name if uid and uid != "(none)" else ""
    return "" if name == uid else name


def take_inventory(
    sources: Iterable[str | os.PathLike],
    threads: int | None = None,
    progress: Callable[[Header | ScanError], None] | None = None,
    follow_links: bool = False,
) -> Inventory:
    """Scan every file under the sources and count what they hold.

    Walked as the ingest walks them: links, fifos and devices are problems, not files.
    """
    inventory = Inventory()
    paths = iter_files(sources, inventory.add_problem, follow_links=follow_links)
    for result in scan_many(paths, threads=threads):
        inventory.add(result)
        if progress is not None:
            progress(result)
    return inventory
