"""Rebuild a damaged index from what the archive keeps beside it (docs/archive.md).

Each part an ingest writes leaves a rows file beside its header pack
(`headers/<series>/<stamp>.rows`, blobs.dump_rows): the index rows of the
instances in the pack, as the part wrote them. A rebuild reads every rows file,
keeps for each SOP Instance UID the rows whose pack exists, whose frames the
array's committed frame count covers (a part killed before its commit raised no
frame count) and that no delete in force took (a delete of part of a series leaves
its rows files as they were: archive/corrections.py), makes the one written last the
current version and the earlier ones its versions (archive/versions.py), and commits
them to a new index, which replaces the old one; the old one is kept beside it as
`index.damaged-<time>`.

Rows written before the scanner recorded some header attributes (ImageType, Manufacturer,
ConvolutionKernel, ...: `scanning.HEADER_KEYWORDS`) get them from their header blob: the
rebuild scans the blob of each current row that lacks one of them, so an older archive
becomes queryable by every key the index matches on. Earlier versions are kept as written.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pacs_engine.archive.blobs import (
    PACK_SUFFIX,
    ROWS_SUFFIX,
    BlobError,
    load_rows,
    read_blob,
    scannable,
)
from pacs_engine.archive.corrections import deleted_since
from pacs_engine.archive.format import MARKER, ArchiveError, read_config
from pacs_engine.archive.pixel_store import PixelStore
from pacs_engine.archive.versions import kept_sha256s, with_version
from pacs_engine.errors import ScanError
from pacs_engine.index import Index
from pacs_engine.index.rows import Row
from pacs_engine.scanning import HEADER_KEYWORDS, scan
from pacs_engine.storage import fsync_dir

_BATCH = 1000


@dataclass
class Rebuilt:
    """What a rebuild restored and what it could not."""

    rows: int = 0
    uncommitted: int = 0  # rows of parts whose frames were never committed
    deleted: int = 0  # rows of instances deleted (`correct ... delete`) after they were written
    packs_without_rows: list[str] = field(default_factory=list)  # written before rows files
    damaged_rows_files: list[str] = field(default_factory=list)
    kept_as: str = ""  # where the replaced index is
    filled: int = 0  # rows given header attributes from their blob (written by older code)
    unreadable_blobs: list[str] = field(default_factory=list)  # SOP UIDs: rows left as written


def rebuild_index(path: str | os.PathLike) -> Rebuilt:
    """Rebuild the index of the archive at `path` from its rows files; needs the writer lock."""
    root = Path(path)
    if not root.is_dir():
        raise ArchiveError(f"{root}: not a folder, so not a pacs_engine archive")
    read_config(root / MARKER)
    with open(root / ".writer.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError(f"{root}: another process is writing to it") from None
        return _rebuild(root)


def _rebuild(root: Path) -> Rebuilt:
    rebuilt = Rebuilt()
    rows = _rows_by_sop(root, rebuilt)
    pixels = PixelStore(root / "pixels")
    frames: dict[str, int] = {}
    building = root / f".index.rebuilding-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    index = Index.create(building)
    try:
        batch: list[Row] = []
        for sop in sorted(rows):
            kept = [row for row in rows[sop] if _committed(row, root, pixels, frames)]
            rebuilt.uncommitted += len(rows[sop]) - len(kept)
            if not kept:
                continue
            row = kept[0]
            for later in kept[1:]:
                # A part retried after a worker died wrote the same file twice: one version.
                if later["source_sha256"] not in kept_sha256s(row):
                    row = with_version(row, later)
            batch.append(_with_attributes(root, row, rebuilt))
            if len(batch) == _BATCH:
                index.commit(batch)
                batch = []
        index.commit(batch)
        rebuilt.rows = len(index)
    finally:
        index.close()
    old = root / "index"
    if old.exists():
        damaged = root / f"index.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        old.rename(damaged)
        rebuilt.kept_as = str(damaged)
    building.rename(old)
    fsync_dir(root)
    return rebuilt


def _rows_by_sop(root: Path, rebuilt: Rebuilt) -> dict[str, list[Row]]:
    """The rows of each SOP Instance UID over every rows file, in the order written, but for
    those of deleted instances."""
    found: dict[str, list[tuple[int, int, Row]]] = {}
    order = 0  # rows of one file (versions received in one part) keep their order
    headers = root / "headers"
    folders = sorted(p for p in headers.iterdir() if p.is_dir()) if headers.is_dir() else []
    for folder in folders:
        for file in sorted(folder.iterdir()):
            name = f"headers/{folder.name}/{file.name}"
            if file.suffix == PACK_SUFFIX and not file.with_suffix(ROWS_SUFFIX).is_file():
                rebuilt.packs_without_rows.append(name)
            if file.suffix != ROWS_SUFFIX or not file.with_suffix(PACK_SUFFIX).is_file():
                continue
            try:
                written, rows = load_rows(file.read_bytes())
            except (OSError, BlobError):
                rebuilt.damaged_rows_files.append(name)
                continue
            for row in rows:
                sop = row.get("SOPInstanceUID")
                if isinstance(sop, str):
                    found.setdefault(sop, []).append((written, order, row))
                    order += 1
    # Rows of an instance written before the delete in force on it stay deleted (a part of
    # a series is deleted in place: its rows files still list it until the trash is emptied).
    deleted = deleted_since(root)
    kept: dict[str, list[Row]] = {}
    for sop, written_rows in found.items():
        since = deleted.get(sop, 0)
        kept_rows = [row for written, _, row in sorted(written_rows) if written > since]
        rebuilt.deleted += len(written_rows) - len(kept_rows)
        if kept_rows:
            kept[sop] = kept_rows
    return kept


def _with_attributes(root: Path, row: Row, rebuilt: Rebuilt) -> Row:
    """The row with the header attributes it lacks that its header blob has (a row written
    before the scanner recorded them); counted in `rebuilt`."""
    # The scanner records only what a file has, so rows rarely hold every keyword; a row
    # with ImageType (type 1 in image IODs, recorded since the keywords were added) was
    # written by a scanner that recorded them all: its blob is not read again.
    if "ImageType" in row or all(k in row for k in HEADER_KEYWORDS):
        return row
    try:
        attributes = scan(scannable(read_blob(root, row))).attributes
    except (OSError, BlobError, ScanError):  # a damaged pack: the row stays as it was written
        rebuilt.unreadable_blobs.append(row["SOPInstanceUID"])
        return row
    found = {k: attributes[k] for k in HEADER_KEYWORDS if k not in row and k in attributes}
    if not found:
        return row
    rebuilt.filled += 1
    return {**row, **found}  # type: ignore[typeddict-item]


def _committed(row: Row, root: Path, pixels: PixelStore, frames: dict[str, int]) -> bool:
    """True unless the row's frames lie beyond its array's committed frame count."""
    if not (root / row["header"]["pack"]).is_file():
        return False
    reference = row.get("pixels")
    if not reference:
        return True
    array = reference["array"]
    if array not in frames:
        frames[array] = pixels.frames(array) if pixels.exists(array) else 0
    return reference["first_frame"] + reference["frames"] <= frames[array]
