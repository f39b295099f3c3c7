"""Delete what no committed row reaches: what killed or abandoned ingest runs wrote.

An ingest's own tidy step does this for the series it planned. `tidy_archive`
does it for every series on disk, for runs that were killed and never resumed.
Both need the archive open for writing, whose lock (`.writer.lock`) one process
holds at a time, so a tidy never runs beside an ingest.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacs_engine.archive.archive import ArchiveError
from pacs_engine.archive.pixel_store import PixelStore
from pacs_engine.archive.versions import version_rows
from pacs_engine.ingest import session
from pacs_engine.storage import remove_stale_temporaries

if TYPE_CHECKING:
    from pacs_engine.archive import Archive


@dataclass
class Tidied:
    """What a tidy removed."""

    files: int = 0
    bytes: int = 0
    arrays_resized: list[str] = field(default_factory=list)  # to their committed frames

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

    Only while nothing else writes to the archive.
    """
    pixels = archive.pixels
    ends: dict[str, int] = {}
    shards: dict[str, set[int]] = {}
    packs: set[str] = set()
    for row in archive.index.iter_series(series_uid):  # a chunk of rows at a time
        for version in version_rows(row):  # earlier versions keep their own files
            packs.add(version["header"]["pack"])
            _add_frames(pixels, version.get("pixels"), ends, shards)
    for path in pixels.arrays(series_uid):
        if path not in ends:
            tidied.remove(pixels.root / path)
            continue
        if pixels.frames(path) != ends[path]:
            pixels.set_frames(path, ends[path])
            tidied.arrays_resized.append(path)
        for file in pixels.unreferenced_files(path, shards[path]):
            tidied.remove(file)
        remove_stale_temporaries(pixels.root / path)  # a zarr.json being rewritten
    folder = archive.path / "headers" / series_uid
    if folder.is_dir():
        for pack in folder.glob("*.pack"):
            if pack.is_file() and f"headers/{series_uid}/{pack.name}" not in packs:
                tidied.remove(pack)
        remove_stale_temporaries(folder)  # a pack whose write a kill interrupted
    for empty in (pixels.root / series_uid, folder):
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()


def _add_frames(
    pixels: PixelStore,
    reference: dict[str, Any] | None,
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
    """Tidy every series on disk of an archive open for writing."""
    if archive.readonly:
        raise ArchiveError(f"{archive.path}: opened read-only")
    session.claim(archive.path)  # workers a killed run left behind stop writing first
    tidied = Tidied()
    series = {p.name for p in archive.pixels.root.iterdir() if p.is_dir()}
    headers = archive.path / "headers"
    if headers.is_dir():
        series |= {p.name for p in headers.iterdir() if p.is_dir()}
    for series_uid in sorted(series):
        tidy_series(archive, series_uid, tidied)
    remove_temporaries(archive)
    return tidied
