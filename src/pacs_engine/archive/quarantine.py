"""Files the archive cannot take: kept with their original bytes and the reason."""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pacs_engine.storage import write_atomic

#: Bytes kept of an input that is too large: its head (for a person to see what it was),
#: with its size and sha256.
HEAD_BYTES = 64 << 10
#: How the scanner's reason starts for bytes that are no DICOM at all (not a damaged file).
NOT_DICOM = "not a DICOM file"


class Quarantine:
    """`quarantine/<sha256>.dcm` (the original bytes) and `<sha256>.json` (why).

    One record per distinct content: the same bytes quarantined again from another
    path are listed in the record's `also` (path, reason, time), not written twice.
    Of an input too large to read, the first bytes are kept as `<sha256>.head` (its
    record says `size` and `kept_bytes`), not the whole; of one that is not DICOM, no
    bytes: its record alone (path, size, sha256, `kept_bytes` 0).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def keep(self, key: str, data: bytes, reason: str, **details: Any) -> int:
        """Quarantine an input's whole bytes with its reason; returns their size."""
        self.add(key, data, hashlib.sha256(data).hexdigest(), reason, **details)
        return len(data)

    def keep_head(
        self,
        key: str,
        chunks: Iterable[bytes],
        reason: str,
        head_bytes: int = HEAD_BYTES,
        **details: Any,
    ) -> int:
        """Quarantine the first `head_bytes` of an input given as `chunks` (all of a smaller
        one), with its size and sha256; returns its size.

        The chunks are streamed through the sha256, so that no more than one of them
        is in memory; an error raised while they are read goes to the caller, and
        nothing is kept.
        """
        digest = hashlib.sha256()
        head = bytearray()
        size = 0
        for chunk in chunks:
            digest.update(chunk)
            if len(head) < head_bytes:
                head += chunk[: head_bytes - len(head)]
            size += len(chunk)
        if size <= len(head):  # the head is the whole: kept as the whole
            self.add(key, bytes(head), digest.hexdigest(), reason, **details)
        else:
            self.add(key, None, digest.hexdigest(), reason, head=bytes(head), size=size, **details)
        return size

    def keep_unread(self, key: str, reason: str, **details: Any) -> None:
        """Record an input that could not be read: no bytes, named by its key's sha256."""
        name = key.encode("utf-8", "surrogateescape")  # names need not be UTF-8
        self.add(key, None, hashlib.sha256(name).hexdigest(), reason, **details)

    def add(
        self,
        path: str,
        data: bytes | None,
        sha256: str,
        reason: str,
        head: bytes | None = None,
        **details: Any,
    ) -> None:
        """Keep a file (or its `head`) and its reason (another path to kept bytes joins their
        record)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"{sha256}.json"
        with open(self.root / ".lock", "a+") as lock:  # workers may add the same bytes at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                record = json.loads(target.read_bytes())
                whole = "kept_bytes" in record and data is not None
                if whole and data is not None:  # only a head was kept: keep them whole now
                    write_atomic(self.root / f"{sha256}.dcm", data)
                    (self.root / f"{sha256}.head").unlink(missing_ok=True)
                    del record["kept_bytes"]
                listed = {record["path"], *(a["path"] for a in record.get("also", []))}
                if path not in listed:
                    record.setdefault("also", []).append(
                        {"path": path, "reason": reason, "time": now, **details}
                    )
                elif not whole:
                    return  # a resumed run met it again
            else:
                record = {"path": path, "sha256": sha256, "reason": reason, "time": now, **details}
                if data is not None:
                    write_atomic(self.root / f"{sha256}.dcm", data)
                elif head is not None:
                    if head:  # none of a file that is not DICOM: its record says what it was
                        write_atomic(self.root / f"{sha256}.head", head)
                    record["kept_bytes"] = len(head)
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
