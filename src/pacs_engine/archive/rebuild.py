"""Rebuild a damaged index from what the archive keeps beside it (docs/archive.md).

Each part an ingest writes leaves a rows file beside its header pack
(`headers/<series>/<stamp>.rows`, blobs.dump_rows): the index rows of the
instances in the pack, as the part wrote them. A rebuild reads every rows file,
keeps for each SOP Instance UID the rows of committed parts (their pack exists, their
frames are within the array's frame count, which an ingest's part killed before its
commit did not raise, and no later part wrote over them; a copy's part raises the count
before its commit, but its rows files keep their pending name, blobs.PENDING_SUFFIX, until
after it, and such a file is not read as committed unless another of its part, stamped
alike, was renamed)
that no delete in force took (a delete of part of a series leaves its rows files as they were:
archive/corrections.py), makes the one written last the current version and the
earlier ones its versions (archive/versions.py), and commits them to a new index,
which replaces the old one; the old one is kept beside it as `index.damaged-<time>`.

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
from typing import Any, cast

from pacs_engine.archive.blobs import (
    PACK_SUFFIX,
    PENDING_SUFFIX,
    ROWS_FILE_SUFFIXES,
    BlobError,
    load_rows,
    read_blob,
    scannable,
)
from pacs_engine.archive.corrections import (
    CORRECTION_SOURCE,
    Correction,
    deleted_packs,
    load_records,
    made_by_correction,
    reason_of,
    recover_pending,
    shows_commit,
)
from pacs_engine.archive.format import ArchiveError, read_marker
from pacs_engine.archive.pixel_store import PixelStore
from pacs_engine.archive.versions import version_rows, with_version
from pacs_engine.errors import ScanError
from pacs_engine.index import Index
from pacs_engine.index.rows import PixelRef, Row
from pacs_engine.scanning import HEADER_KEYWORDS, NEWEST_KEYWORD, scan
from pacs_engine.storage import fsync_dir, unused_path

_BATCH = 1000


@dataclass
class Rebuilt:
    """What a rebuild restored and what it could not."""

    rows: int = 0
    uncommitted: int = 0  # rows of parts whose frames were never committed
    pending: int = 0  # rows of a copy's parts not known to be committed: rows files pending
    deleted: int = 0  # rows of instances deleted (`correct ... delete`) after they were written
    packs_without_rows: list[str] = field(default_factory=list)  # written before rows files
    damaged_rows_files: list[str] = field(default_factory=list)
    kept_as: str = ""  # where the replaced index is
    filled: int = 0  # rows given header attributes from their blob (written by older code)
    unreadable_blobs: list[str] = field(default_factory=list)  # SOP UIDs: rows left as written
    # Corrections a crash interrupted: finished (state "done") or rolled back ("pending")
    recovered: list[Correction] = field(default_factory=list)


def rebuild_index(path: str | os.PathLike) -> Rebuilt:
    """Rebuild the index of the archive at `path` from its rows files; needs the writer lock."""
    root = Path(path)
    if not root.is_dir():
        raise ArchiveError(f"{root}: not a folder, so not a pacs_engine archive")
    read_marker(root)  # a marker of a format version this code cannot read: refused
    with open(root / ".writer.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError(f"{root}: another process is writing to it") from None
        return _rebuild(root)


def _rebuild(root: Path) -> Rebuilt:
    rebuilt = Rebuilt()
    # The rebuilt index has no commit markers of corrections: the writer lock is held, so
    # each pending one is finished (its commit shows on disk) or rolled back here, before
    # the rows files are read, which then hold every finished step.
    rebuilt.recovered = recover_pending(root, lambda c: shows_commit(root, c))
    rows = _rows_by_sop(root, rebuilt)
    reasons = {CORRECTION_SOURCE + c.id: reason_of(c) for c in load_records(root)}
    # The writer lock is held: any other one is an interrupted rebuild's, of no use now.
    for stale in root.glob(".index.rebuilding-*"):
        shutil.rmtree(stale, ignore_errors=True)
    building = root / f".index.rebuilding-{os.getpid()}"
    index = Index.create(building)
    try:
        batch: list[Row] = []
        for sop in sorted(rows):
            row, *later_rows = (_as_written_now(r, reasons) for r in rows[sop])
            for later in later_rows:
                # A part retried after a worker died wrote the same input twice: one version.
                # Bytes equal to a kept version's from another source are a version of their
                # own (a correction that puts a value back: the live index holds it too).
                if _source(later) not in {_source(v) for v in version_rows(row)}:
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
        kept = f"index.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        # Then `-2`, `-3`...: a second rebuild within the same second would rename the index
        # onto the first one's (ENOTEMPTY); the writer lock is held, so no other rebuild
        # picks the same name meanwhile.
        damaged = unused_path(lambda n: root / (kept if n == 1 else f"{kept}-{n}"), 1)
        old.rename(damaged)
        rebuilt.kept_as = str(damaged)
    building.rename(old)
    fsync_dir(root)
    return rebuilt


def _source(row: Row) -> tuple[str, str | None]:
    """What a version was made from: its bytes' sha256 and the input (or correction) it
    came from."""
    return row["source_sha256"], row.get("source_path")


def _as_written_now(row: Row, reasons: dict[str, str]) -> Row:
    """`row` as its rows file keeps it now: a correction's row (`made_by_correction`) written
    before rows files kept its reason (0ea128d and earlier) has the stored_bytes of every
    version, which `with_version` would add again; its own are its header blob's, as a
    correction counts them, and its reason is the one its record gives (`reasons`: by
    source_path)."""
    if not made_by_correction(row) or "current_reason" in row:
        return row
    own: dict[str, Any] = {**row, "stored_bytes": row["header"]["length"]}
    if row["source_path"] in reasons:  # no record: the usual reason
        own["current_reason"] = reasons[row["source_path"]]
    return cast(Row, own)


@dataclass
class _RowsFile:
    """One rows file as read: when it was written, its pack, its rows."""

    written: int
    pack: str
    rows: list[Row]


def _rows_by_sop(root: Path, rebuilt: Rebuilt) -> dict[str, list[Row]]:
    """The rows of each SOP Instance UID over the rows files of committed parts, in the
    order written, but for those of deleted instances."""
    files = _rows_files(root, rebuilt)
    # A deleted instance's rows in the files written up to the last of its deleted versions'
    # stay deleted (a part of a series is deleted in place: its rows files still list it
    # until the trash is emptied); rows written after are of the instance received again.
    written = {file.pack: file.written for file in files}
    until = {
        sop: max((written[pack] for pack in packs if pack in written), default=-1)
        for sop, packs in deleted_packs(root).items()
    }
    for file in files:
        kept = [row for row in file.rows if file.written > until.get(row["SOPInstanceUID"], -1)]
        rebuilt.deleted += len(file.rows) - len(kept)
        file.rows = kept
    found: dict[str, list[Row]] = {}
    for file in _committed(root, files, rebuilt):
        for row in file.rows:
            found.setdefault(row["SOPInstanceUID"], []).append(row)
    return found


def _rows_files(root: Path, rebuilt: Rebuilt) -> list[_RowsFile]:
    """Every rows file beside its pack, in the order written (rows without a SOP Instance UID
    left out); packs without one and damaged ones are named in `rebuilt`."""
    files: list[_RowsFile] = []
    pending: list[_RowsFile] = []
    headers = root / "headers"
    folders = sorted(p for p in headers.iterdir() if p.is_dir()) if headers.is_dir() else []
    for folder in folders:
        for file in sorted(folder.iterdir()):
            name = f"headers/{folder.name}/{file.name}"
            if file.suffix == PACK_SUFFIX and not any(
                file.with_suffix(suffix).is_file() for suffix in ROWS_FILE_SUFFIXES
            ):
                rebuilt.packs_without_rows.append(name)
            if file.suffix not in ROWS_FILE_SUFFIXES:
                continue
            if not file.with_suffix(PACK_SUFFIX).is_file():
                continue
            try:
                written, rows = load_rows(file.read_bytes())
            except (OSError, BlobError):
                rebuilt.damaged_rows_files.append(name)
                continue
            rows = [row for row in rows if isinstance(row.get("SOPInstanceUID"), str)]
            found = _RowsFile(written, f"{name.removesuffix(file.suffix)}{PACK_SUFFIX}", rows)
            (pending if file.suffix == PENDING_SUFFIX else files).append(found)
    # A copy's part stamps all its rows files alike (copies.py): one renamed shows the part
    # committed, a kill having come midway through the renames; none renamed, it was not.
    renamed = {rows_file.written for rows_file in files}
    for rows_file in pending:
        if rows_file.written in renamed:
            files.append(rows_file)
        else:  # not known to be committed: a tidy on the index before would tell
            rebuilt.pending += len(rows_file.rows)
    return sorted(files, key=lambda file: file.written)  # stable: ties stay in folder order


def _committed(root: Path, files: list[_RowsFile], rebuilt: Rebuilt) -> list[_RowsFile]:
    """The rows files (in the order written) of parts whose commit went through, and the
    uncommitted rows counted in `rebuilt`.

    A part commits all its rows or none, so one row tells for its whole file (its rows
    without pixel data too): a file is left out when a row's frames lie beyond its
    array's frame count (an ingest's part raises it only after its commit; a copy's
    pending rows files are left out before: `_rows_files`), or when a later file
    has another instance's rows on the same frames (a part that never committed does not
    count in the next one's place, which writes over its frames and commits).
    """
    pixels = PixelStore(root / "pixels")
    frames: dict[str, int] = {}

    def within(reference: PixelRef) -> bool:
        array = reference["array"]
        if array not in frames:
            frames[array] = pixels.frames(array) if pixels.exists(array) else 0
        return reference["first_frame"] + reference["frames"] <= frames[array]

    left_out = {
        n
        for n, file in enumerate(files)
        if not all(within(ref) for ref in (row.get("pixels") for row in file.rows) if ref)
    }
    # Per array, the frames of each file's rows: (first, end, file, SOP UID), by first frame.
    spans: dict[str, list[tuple[int, int, int, str]]] = {}
    for n, file in enumerate(files):
        if n in left_out:
            continue
        for row in file.rows:
            reference = row.get("pixels")
            if reference:
                first = reference["first_frame"]
                span = (first, first + reference["frames"], n, row["SOPInstanceUID"])
                spans.setdefault(reference["array"], []).append(span)
    for array_spans in spans.values():
        active: list[tuple[int, int, int, str]] = []  # spans that reach past the next first
        for span in sorted(array_spans):
            active = [a for a in active if a[1] > span[0]]
            for other in active:
                if other[3] != span[3] and other[2] != span[2]:  # numbered in order written
                    left_out.add(min(other[2], span[2]))
            active.append(span)
    rebuilt.uncommitted += sum(len(files[n].rows) for n in left_out)
    return [file for n, file in enumerate(files) if n not in left_out]


def _with_attributes(root: Path, row: Row, rebuilt: Rebuilt) -> Row:
    """The row with the header attributes it lacks that its header blob has (a row written
    before the scanner recorded them); counted in `rebuilt`."""
    # The scanner records only what a file has, so rows rarely hold every keyword; a row
    # with NEWEST_KEYWORD (type 1 in image IODs) was written by a scanner that recorded
    # them all: its blob is not read again.
    if NEWEST_KEYWORD in row or all(k in row for k in HEADER_KEYWORDS):
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
