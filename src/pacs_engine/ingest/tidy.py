"""Delete what no committed row reaches: what killed or abandoned ingest runs wrote.

A copy's part killed between its commit and the rename of its pending rows files
(archive/copies.py) gets them renamed here, so `rebuild-index` sees the part committed.

An ingest's own tidy step does this for the series it planned. `tidy_archive`
does it for every series on disk, for runs that were killed and never resumed.
Both need the archive open for writing, whose lock (`.writer.lock`) one process
holds at a time, so a tidy never runs beside an ingest.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pacs_engine.archive.blobs import (
    PACK_SUFFIX,
    PENDING_SUFFIX,
    ROWS_FILE_SUFFIXES,
    mark_committed,
)
from pacs_engine.archive.corrections import trashed_rows
from pacs_engine.archive.format import ArchiveError
from pacs_engine.archive.pixel_store import PixelStore
from pacs_engine.archive.versions import version_rows
from pacs_engine.index.rows import PixelRef, Row
from pacs_engine.ingest import session
from pacs_engine.storage import remove_stale_temporaries, series_folders

if TYPE_CHECKING:
    from pacs_engine.archive import Archive


@dataclass
class Tidied:
    """What a tidy removed, resized and renamed."""

    files: int = 0
    bytes: int = 0
    arrays_resized: list[str] = field(default_factory=list)  # to their committed frames
    renamed: list[str] = field(default_factory=list)  # pending rows files of committed parts

    def remove(self, path: Path) -> None:
        """Delete a file or a folder and count it."""
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        self.files += len(files)
        self.bytes += sum(p.stat().st_size for p in files)
        if path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)


def tidy_marked_series(archive: Archive, series_uid: str, tidied: Tidied) -> None:
    """Fit one series' arrays to their committed frames and delete what no committed row uses.

    Only while nothing else writes to the archive, and after `mark_series_committed` on
    every series the caller tidies (a part may span several: all its pending rows files
    are renamed before any removal). Deletes before it rewrites an array's metadata, so
    that a tidy frees space even on a full disk.
    """
    rows = archive.index.iter_series(series_uid)  # a chunk of rows at a time
    _tidy_folders(archive, sorted(series_folders(series_uid)), rows, tidied)


def mark_series_committed(archive: Archive, series_uids: Iterable[str], tidied: Tidied) -> None:
    """Give the pending rows files of committed parts in these series' folders their
    rows-file names, before a tidy of them removes anything.

    A copy's part writes a rows file in each series folder it adds to, stamped alike, and
    `rebuild_index` takes a pending one as committed while another of its part was
    renamed: that renamed one removed first (its pack unused: its instances deleted, the
    trash emptied) and a kill before the others' renames would leave them uncommitted. A
    rename takes no disk space, so a tidy still deletes before it writes.
    """
    pending = []
    for uid in series_uids:
        rows = archive.index.iter_series(uid)  # read only where a pending file is
        pending += _committed_pending(archive, sorted(series_folders(uid)), rows)
    _mark_committed(archive, pending, tidied)


def _committed_pending(archive: Archive, folders: list[str], rows: Iterable[Row]) -> list[Path]:
    """The pending rows files in the series folders `folders` whose pack `rows` use (or an
    instance deleted in place): of a part killed between its commit and their rename."""
    headers = archive.path / "headers"
    pending = [p for name in folders for p in sorted((headers / name).glob(f"*{PENDING_SUFFIX}"))]
    if not pending:
        return []  # the common case: the rows are not read
    packs = {version["header"]["pack"] for version in _versions(archive, folders, rows)}
    return [p for p in pending if f"headers/{p.parent.name}/{p.stem}{PACK_SUFFIX}" in packs]


def _mark_committed(archive: Archive, pending: list[Path], tidied: Tidied) -> None:
    """Rename pending rows files of committed parts, and count them."""
    if pending:
        mark_committed(pending)
        tidied.renamed += [str(file.relative_to(archive.path)) for file in pending]


def _versions(archive: Archive, folders: list[str], rows: Iterable[Row]) -> Iterator[Row]:
    """Every version of `rows` and of the instances deleted but kept in place in `folders`
    (archive/corrections.py): what a tidy of those folders keeps."""
    for row in itertools.chain(rows, trashed_rows(archive.path, folders)):
        yield from version_rows(row)  # earlier versions keep their own files


def _tidy_folders(
    archive: Archive, folders: list[str], rows: Iterable[Row], tidied: Tidied
) -> None:
    """Delete what `rows` do not use in the series folders `folders` of pixels/ and headers/.

    Instances deleted to the trash but kept in place count as used (archive/corrections.py).
    The pending rows files of committed parts are renamed already (`mark_series_committed`).
    """
    pixels = archive.pixels
    ends: dict[str, int] = {}
    shards: dict[str, set[int]] = {}
    packs: set[str] = set()
    for version in _versions(archive, folders, rows):
        packs.add(version["header"]["pack"])
        _add_frames(pixels, version.get("pixels"), ends, shards)
    arrays = []
    for name in folders:
        folder = pixels.root / name
        if folder.is_dir():
            arrays += [f"{name}/{p.name}" for p in sorted(folder.iterdir()) if p.is_dir()]
            remove_stale_temporaries(folder)  # the series group's zarr.json being written
    for path in arrays:
        if path not in ends:
            tidied.remove(pixels.root / path)
            continue
        for file in pixels.unreferenced_files(path, shards[path]):
            tidied.remove(file)
        remove_stale_temporaries(pixels.root / path)  # a zarr.json being rewritten
        if pixels.frames(path) != ends[path]:
            pixels.set_frames(path, ends[path])
            tidied.arrays_resized.append(path)
    for name in folders:
        folder = archive.path / "headers" / name
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                pack = file.with_suffix(PACK_SUFFIX)
                used = f"headers/{name}/{pack.name}" in packs
                if (
                    file.is_file()
                    and file.suffix in (PACK_SUFFIX, *ROWS_FILE_SUFFIXES)
                    and not used
                ):
                    tidied.remove(file)
            remove_stale_temporaries(folder)  # a pack whose write a kill interrupted
        for empty in (pixels.root / name, folder):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()


def _add_frames(
    pixels: PixelStore,
    reference: PixelRef | None,
    ends: dict[str, int],
    shards: dict[str, set[int]],
) -> None:
    """Count the frames and shards a pixel reference uses."""
    if reference:
        path, first = reference["array"], reference["first_frame"]
        last = first + reference["frames"]
        ends[path] = max(ends.get(path, 0), last)
        per_shard, _ = pixels.grid(path)
        shards.setdefault(path, set()).update(
            range(first // per_shard, (last - 1) // per_shard + 1)
        )


def remove_temporaries(archive: Archive) -> None:
    """Delete what writes a kill interrupted left in the archive's own folders."""
    for folder in ("", "quarantine", "reports"):
        remove_stale_temporaries(archive.path / folder)


def tidy_archive(archive: Archive) -> Tidied:
    """Tidy every series on disk of an archive open for writing.

    Writes nothing before it has deleted: it runs on a full disk, to free it.
    """
    if archive.readonly:
        raise ArchiveError(f"{archive.path}: opened read-only")
    session.retire(archive.path)  # workers a killed run left behind stop writing first
    tidied = Tidied()
    on_disk = {p.name for p in archive.pixels.root.iterdir() if p.is_dir()}
    headers = archive.path / "headers"
    if headers.is_dir():
        on_disk |= {p.name for p in headers.iterdir() if p.is_dir()}
    # Which series each folder holds: its UID (earlier versions) or a digest of it.
    owners: dict[str, set[str]] = {}
    for record in archive.index.all_series():
        uid = record["SeriesInstanceUID"]
        for name in series_folders(uid):
            owners.setdefault(name, set()).add(uid)

    def rows(name: str) -> Iterator[Row]:
        """The rows of the series the folder `name` holds, read when iterated."""
        for uid in sorted(owners.get(name, ())):
            yield from archive.index.iter_series(uid)

    # Every folder's first (`mark_series_committed` says why), then the removals.
    pending = [
        p for name in sorted(on_disk) for p in _committed_pending(archive, [name], rows(name))
    ]
    _mark_committed(archive, pending, tidied)
    for name in sorted(on_disk):
        _tidy_folders(archive, [name], rows(name), tidied)
    remove_temporaries(archive)
    return tidied
