"""Durable file writes: a file is either absent, or whole (write, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes, dirs: set[Path] | None = None) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    The rename is made durable at once, or, when `dirs` is given, the folder is
    added to it for one `fsync_dirs` call after a batch of writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if dirs is None:
        fsync_dir(path.parent)
    else:
        dirs.add(path.parent)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete what `write_atomic` calls killed before their rename left in `folder`.

    Only while no other process writes there (an ingest's tidy step).
    """
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(dirs: set[Path]) -> None:
    """Make the renames of a batch of `write_atomic` calls durable."""
    for folder in sorted(dirs):
        fsync_dir(folder)
    dirs.clear()
