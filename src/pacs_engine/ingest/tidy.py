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
from collections.abc import Iterable
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


def tidy_series(archive: Archive, series_uid: str, tidied: Tidied) -> None:
    """Fit one series' arrays to their committed frames and delete what no committed row uses.

    Only while nothing else writes to the archive. Deletes before it rewrites an
    array's metadata, so that a tidy frees space even on a full disk.
    """
    rows = archive.index.iter_series(series_uid)  # a chunk of rows at a time
    _tidy_folders(archive, sorted(series_folders(series_uid)), rows, tidied)


def _tidy_folders(
    archive: Archive, folders: list[str], rows: Iterable[Row], tidied: Tidied
) -> None:
    """Delete what `rows` do not use in the series folders `folders` of pixels/ and headers/.

    Instances deleted to the trash but kept in place count as used (archive/corrections.py).
    """
    pixels = archive.pixels
    rows = itertools.chain(rows, trashed_rows(archive.path, folders))
    ends: dict[str, int] = {}
    shards: dict[str, set[int]] = {}
    packs: set[str] = set()
    for row in rows:
        for version in version_rows(row):  # earlier versions keep their own files
            packs.add(version["header"]["pack"])
            _add_frames(pixels, version.get("pixels"), ends, shards)
    arrays = []
    for name in folders:
        folder = pixels.root / name
        if folder.is_dir():
            arrays += [f"{name}/{p.name}" for p in sorted(folder.iterdir()) if p.is_dir()]
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
    committed: list[Path] = []  # pending rows files of committed parts (a copy's)
    for name in folders:
        folder = archive.path / "headers" / name
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                pack = file.with_suffix(PACK_SUFFIX)
                used = f"headers/{name}/{pack.name}" in packs
                if not file.is_file() or file.suffix not in (PACK_SUFFIX, *ROWS_FILE_SUFFIXES):
                    continue
                if not used:
                    tidied.remove(file)
                elif file.suffix == PENDING_SUFFIX:  # killed between its part's commit and rename
                    committed.append(file)
            remove_stale_temporaries(folder)  # a pack whose write a kill interrupted
        for empty in (pixels.root / name, folder):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
    if committed:
        mark_committed(committed)
        tidied.renamed += [str(file.relative_to(archive.path)) for file in committed]


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
    for name in sorted(on_disk):
        rows = (
            row for uid in sorted(owners.get(name, ())) for row in archive.index.iter_series(uid)
        )
        _tidy_folders(archive, [name], rows, tidied)
    remove_temporaries(archive)
    return tidied
