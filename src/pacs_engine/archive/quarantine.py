"""Files the archive cannot take: kept with their original bytes and the reason."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pacs_engine.storage import write_atomic


class Quarantine:
    """`quarantine/<sha256>.dcm` (the original bytes) and `<sha256>.json` (why)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def add(self, path: str, data: bytes | None, sha256: str, reason: str, **details: Any) -> None:
        """Keep a file and its reason; the same file quarantined again replaces its record."""
        record = {
            "path": path,
            "sha256": sha256,
            "reason": reason,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **details,
        }
        if data is not None:
            write_atomic(self.root / f"{sha256}.dcm", data)
        write_atomic(self.root / f"{sha256}.json", json.dumps(record, indent=2).encode())

    def records(self) -> list[dict[str, Any]]:
        """Every quarantine record."""
        if not self.root.is_dir():
            return []
        return [json.loads(p.read_bytes()) for p in sorted(self.root.glob("*.json"))]
