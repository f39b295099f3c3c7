"""Exceptions raised by pacs_engine: every one is a `PacsEngineError`.

The bottom layer: every module may import it. Each exception class of the package
subclasses `PacsEngineError` and keeps its standard base (ValueError, RuntimeError,
KeyError, OSError), so `except ValueError` callers still work.
"""

from __future__ import annotations

import os
from typing import Any


def _rebuild(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An exception of `cls` with `args`, made without calling its __init__ (for pickle)."""
    return cls.__new__(cls, *args)


class PacsEngineError(Exception):
    """Base of every exception pacs_engine raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The default (cls(*args)) breaks for the subclasses whose __init__ takes other
        # arguments than the message it passes on (ScanError, VolumeError, PartFailed):
        # rebuild from args and the attributes instead, so that errors pickle back
        # from worker processes with their message and fields.
        return _rebuild, (type(self), self.args), self.__dict__ or None


class ScanError(PacsEngineError, ValueError):
    """A file that cannot be read as DICOM: names the file, the byte offset and the reason."""

    def __init__(self, path: str | os.PathLike | bytes | None, offset: int, reason: str):
        self.path = os.fsdecode(path) if path is not None else None
        self.offset = offset
        self.reason = reason
        where = self.path if self.path is not None else "<buffer>"
        super().__init__(f"{where}: at byte {offset}: {reason}")
