"""Files the archive cannot take: kept with their original bytes and the reason."""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from pacs_engine.inputs import (
    DEFAULT_POLICY,
    InputError,
    InputPolicy,
    InputRef,
    InputTooLarge,
    read_chunks,
    read_input,
)
from pacs_engine.storage import write_atomic

#: Bytes kept of an input that is too large, or not DICOM: its head (for a person to see
#: what it was), with its size and sha256.
HEAD_BYTES = 64 << 10
#: How the scanner's reason starts for bytes that are no DICOM at all (not a damaged file).
NOT_DICOM = "not a DICOM file"


class Quarantine:
    """`quarantine/<sha256>.dcm` (the original bytes) and `<sha256>.json` (why).

    One record per distinct content: the same bytes quarantined again from another
    path are listed in the record's `also` (path, reason, time), not written twice.
    Of an input too large to read, or not DICOM, the first bytes are kept as
    `<sha256>.head` (its record says `size` and `kept_bytes`), not the whole.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def keep(
        self,
        key: str,
        data: bytes | None,
        reason: str,
        policy: InputPolicy = DEFAULT_POLICY,
        **details: Any,
    ) -> tuple[int, str]:
        """Quarantine one input (reading it if `data` is None); its size and full reason.

        Whole bytes are kept, but of an input over the policy's size limit, or not
        DICOM (unless `policy.keep_non_dicom`), only the first HEAD_BYTES (all of a
        smaller one), streamed through its sha256 so that no more than a chunk of it
        is in memory.
        """
        whole = policy.keep_non_dicom or not reason.startswith(NOT_DICOM)
        ref = InputRef.from_key(key)
        try:
            if data is None and whole:
                try:
                    data = read_input(ref, policy)
                except InputTooLarge as error:
                    reason, whole = _joined(reason, error.reason), False
            if data is not None and whole:
                self.add(key, data, hashlib.sha256(data).hexdigest(), reason, **details)
                return len(data), reason
            size, sha256, head = _digest(ref, data, policy)
        except InputError as error:
            # Unreadable: the record names the input (its key's hash), no bytes.
            reason = _joined(reason, error.reason)
            unread = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
            self.add(key, None, unread, reason, **details)
            return 0, reason
        if size <= len(head):  # the head is the whole: kept as the whole
            self.add(key, head, sha256, reason, **details)
        else:
            self.add(key, None, sha256, reason, head=head, size=size, **details)
        return size, reason

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


def _joined(reason: str, more: str) -> str:
    return reason if more in reason else f"{reason}; {more}"


def _digest(ref: InputRef, data: bytes | None, policy: InputPolicy) -> tuple[int, str, bytes]:
    """Size, sha256 and first HEAD_BYTES of an input (streamed when `data` is None)."""
    if data is not None:
        return len(data), hashlib.sha256(data).hexdigest(), data[:HEAD_BYTES]
    digest = hashlib.sha256()
    head = bytearray()
    size = 0
    for chunk in read_chunks(ref, policy):
        digest.update(chunk)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        size += len(chunk)
    return size, digest.hexdigest(), bytes(head)
