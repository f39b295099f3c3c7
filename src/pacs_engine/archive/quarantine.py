"""Files the archive cannot take: kept with their original bytes and the reason."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from pacs_engine.storage import write_atomic


class Quarantine:
    """`quarantine/<sha256>.dcm` (the original bytes) and `<sha256>.json` (why).

    One record per distinct content: the same bytes quarantined again from another
    path are listed in the record's `also` (path, reason, time), not written twice.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def add(self, path: str, data: bytes | None, sha256: str, reason: str, **details: Any) -> None:
        """Keep a file and its reason (another path to kept bytes joins their record)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"{sha256}.json"
        with open(self.root / ".lock", "a+") as lock:  # workers may add the same bytes at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                record = json.loads(target.read_bytes())
                if path == record["path"] or path in {a["path"] for a in record.get("also", [])}:
                    return  # a resumed run met it again
                record.setdefault("also", []).append(
                    {"path": path, "reason": reason, "time": now, **details}
                )
            else:
                record = {"path": path, "sha256": sha256, "reason": reason, "time": now, **details}
                if data is not None:
                    write_atomic(self.root / f"{sha256}.dcm", data)
            write_atomic(target, json.dumps(record, indent=2).encode())

    def paths(self) -> list[str]:
        """Every quarantined input, `also` included."""
        return [
            p for r in self.records() for p in [r["path"], *(a["path"] for a in r.get("also", []))]
        ]

    def records(self) -> list[dict[str, Any]]:
        """Every quarantine record."""
        if not self.root.is_dir():
            return []
        return [json.loads(p.read_bytes()) for p in sorted(self.root.glob("*.json"))]
