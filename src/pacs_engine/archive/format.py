"""What makes a folder a pacs_engine archive: its marker file, archive.json, and its format.

The one place that decides "is this folder an archive?" (`is_pacs_archive`, for
walking sources and for the CLI) and reads the marker of one (`read_marker`, for
opening it). It imports nothing of the package, so every layer may ask.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from pathlib import Path
from typing import Any

from pacs_engine.errors import PacsEngineError
from pacs_engine.storage import write_atomic

MARKER = "archive.json"  # the file that makes a folder a pacs_engine archive
FORMAT_NAME = "pacs_engine archive"  # its "format", which another tool's file lacks
#: The version this code writes. Version 2 adds what version-1 code would misread
#: silently: frame hashes "blake3:<32 hex>" (it compares every hash as BLAKE2b: verify
#: would find every frame bad, a resent instance would be a conflict) and arrays with
#: zarr chunk keys of separator "." (research copies' `c.<n>.0.0` shards beside
#: zarr.json: it looks for c/<n>/0/0, so verify finds frames missing and a delete
#: leaves the pixels on disk). Version-1 code refuses any version but 1, so an archive
#: is raised to 2 before this code writes into it (`raise_format`); 1 still reads.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: everything written before version 2 existed
FORMAT: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
_MARKER_LIMIT = 1 << 20  # bytes read of a marker met while walking (a real one is < 1 KiB)


class ArchiveError(PacsEngineError, RuntimeError):
    """The archive cannot do what was asked (not an archive, locked, damaged)."""


def read_config(meta_path: Path) -> dict[str, Any]:
    """The archive's archive.json; ArchiveError naming the file when it cannot be read."""
    try:
        config = json.loads(meta_path.read_bytes())
    except (OSError, ValueError) as error:
        raise ArchiveError(f"{meta_path}: cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise ArchiveError(f"{meta_path}: not an archive description (not a JSON object)")
    return config


def read_marker(root: Path) -> dict[str, Any]:
    """The configuration of the archive at `root`; ArchiveError saying why it is not one."""
    if root.exists() and not root.is_dir():
        raise ArchiveError(f"{root}: not a folder, so not a pacs_engine archive")
    meta_path = root / MARKER
    if not meta_path.is_file():
        raise ArchiveError(f"{root}: not a pacs_engine archive (no {MARKER})")
    config = read_config(meta_path)
    version = config.get("version")
    # Only an int: JSON true or 2.0 equal 1 or 2 in Python but are no version written.
    if (
        config.get("format") != FORMAT_NAME
        or type(version) is not int
        or version not in READABLE_VERSIONS
    ):
        raise ArchiveError(f"{root}: unsupported archive format {config}")
    return config


def write_marker(root: Path, config: dict[str, Any]) -> None:
    """Write `config` as the marker of the archive at `root`, atomically and fsynced."""
    write_atomic(root / MARKER, json.dumps(config, indent=2).encode())


def raise_format(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The marker `config` of the archive at `root` at FORMAT_VERSION, rewritten if older.

    Called by a writer holding the writer lock, before it writes anything: from then
    on code that reads only the older version refuses the archive instead of
    misreading what this code adds. The marker is replaced atomically and fsynced.
    """
    if config.get("version") == FORMAT_VERSION:
        return config
    raised = {**config, "version": FORMAT_VERSION}  # same keys, same order
    try:
        write_marker(root, raised)
    except OSError as error:
        raise ArchiveError(
            f"{root / MARKER}: cannot raise the archive format to version {FORMAT_VERSION}: {error}"
        ) from None
    return raised


def is_pacs_archive(path: str | os.PathLike) -> bool:
    """True when `path` is the folder of a pacs_engine archive (its marker says so).

    The marker's content is checked: a folder of DICOM files that happens to hold
    another tool's `archive.json` is a folder to walk, not an archive to open. A
    marker that cannot be read or parsed counts as an archive's, so that opening
    it reports the damage rather than its shards and quarantine being walked as
    files.
    """
    marker = os.path.join(path, MARKER)
    try:
        st = os.stat(marker)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):  # never open a fifo or a device: it could block
        return False
    return _marker_is_ours(marker, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _marker_is_ours(marker: str, inode: int, size: int, mtime_ns: int) -> bool:
    """Whether the marker (this version of it, by its stat) is a pacs_engine archive's.

    Cached: every instance key of an archive source asks again.
    """
    try:
        # Without blocking, and only a regular file: a fifo may have replaced it since.
        fd = os.open(marker, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            content = json.loads(file.read(_MARKER_LIMIT))
    except (OSError, ValueError):  # unreadable or damaged: an archive that will say so
        return True
    return isinstance(content, dict) and content.get("format") == FORMAT_NAME
