"""Exceptions raised by pacs_engine."""

from __future__ import annotations

import os


class ScanError(ValueError):
    """A file that cannot be read as DICOM: names the file, the byte offset and the reason."""

    def __init__(self, path: str | os.PathLike | bytes | None, offset: int, reason: str):
        self.path = os.fsdecode(path) if path is not None else None
        self.offset = offset
        self.reason = reason
        where = self.path if self.path is not None else "<buffer>"
        super().__init__(f"{where}: at byte {offset}: {reason}")
