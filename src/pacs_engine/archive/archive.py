"""The archive: a Zarr v3 pixel store, header blobs, a memory-mapped index, and a quarantine.

```
ARCHIVE/
  archive.json      format, version, codec policy, shard size
  pixels/           Zarr v3 group: pixels/<series folder>/<array key>
  headers/          header blobs, one pack file (and its rows file) per committed part
  index/            the LMDB index (pacs_engine.index)
  quarantine/       files that could not be archived, with the reason
  reports/          one JSON report per ingest
```

A series is archived in parts (`pacs_engine.ingest`): each part's frames are
encoded and written as whole shards and its header blobs as one pack file, then
its index rows are committed in one transaction with the ingest journal's
records of its inputs. Readers only reach pixels through committed rows, so they
never see a half-written part; what a killed run wrote but did not commit is
unreachable, and the run's resume removes it.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import grp
import hashlib
import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pacs_engine.archive.blobs import HeaderBlob, read_blob
from pacs_engine.archive.export import safe_name, version_name, write_file
from pacs_engine.archive.format import (
    FORMAT,
    MARKER,
    ArchiveError,
    raise_format,
    read_config,
    read_marker,
    write_marker,
)
from pacs_engine.archive.pixel_store import (
    CODEC_CHOICES,
    DEFAULT_TILE,
    MAX_TILE,
    MIN_TILE,
    PixelStore,
    chunk_layout,
)
from pacs_engine.archive.prepare import (
    blob_dataset,
    frame_hashes_like,
    rebuild_file,
    transcoded_file,
)
from pacs_engine.archive.quarantine import Quarantine
from pacs_engine.archive.verify import VerifyReport, check_rows_files, verify_here, verify_on
from pacs_engine.archive.verify_plan import STAMP, Selection, check_selection, select, write_record
from pacs_engine.archive.versions import version_rows
from pacs_engine.codecs.native import PixelLayout
from pacs_engine.executors import make_executor
from pacs_engine.index import Index
from pacs_engine.index.core import uid_problem
from pacs_engine.index.query import Found, patients
from pacs_engine.index.rows import Row
from pacs_engine.storage import adopt_permissions, fsync_dir
from pacs_engine.workers import Executor, alive

if TYPE_CHECKING:
    import numpy as np
    import pydicom

#: The parts of an archive `info` sizes: stored data, the index, what was refused, the
#: ingest reports, the network server's spool and audit log (pacs_engine.serve), and the
#: correction log and the trash of deletes (docs/corrections.md).
DISK_PARTS = (
    "pixels",
    "headers",
    "index",
    "quarantine",
    "reports",
    "spool",
    "audit",
    "corrections",
    "trash",
)


class ExportError(ArchiveError):
    """A file cannot be exported: unknown UID, damaged archive, or an unwritable destination."""


class UnknownInstance(ExportError, KeyError):
    """No instance with that SOP Instance UID (a KeyError too, as it always was)."""

    __str__ = ArchiveError.__str__  # KeyError would quote the message


class Archive:
    """A lossless DICOM archive on disk. Open with `open_archive`, make with `Archive.create`.

    This is the storage (reading, export, verify, query); `pacs_engine.Archive`, which
    users open, is its subclass in `pacs_engine.ingest.archive` that also ingests.
    Opened for writing, it sets the process umask from the archive folder's mode
    (0077 for a private archive), so that files zarr and LMDB create match it.
    """

    def __init__(self, path: str | os.PathLike, readonly: bool = True) -> None:
        self.path = Path(path)
        self.config = read_marker(self.path)
        self.readonly = readonly
        self._lock = None
        if not readonly:
            # What this process writes, and what zarr and LMDB create, gets the archive's
            # permissions (0700/0600, or a group's 2750/0640; storage.py).
            adopt_permissions(self.path)
            self._lock = open(self.path / ".writer.lock", "a+")  # noqa: SIM115
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise ArchiveError(f"{self.path}: another process is writing to it") from None
        try:
            if not readonly:  # before anything is written: older code must now refuse it
                self.config = raise_format(self.path, self.config)
            self.index = Index.open(self.path / "index", readonly=readonly)
        except BaseException as error:
            if self._lock is not None:
                self._lock.close()
            if isinstance(error, FileNotFoundError | ValueError):
                hint = ""
                if not (self.path / "index").exists() and any(
                    self.path.glob(".index.rebuilding-*")
                ):
                    hint = " (a rebuild-index was interrupted: run it again)"
                raise ArchiveError(
                    f"{self.path / 'index'}: cannot open the index: {error}{hint}"
                ) from None
            raise
        self.pixels = PixelStore(self.path / "pixels")
        self.quarantine = Quarantine(self.path / "quarantine")

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        codec: str = "auto",
        frames_per_shard: int = 64,
        max_chunk_pixels: int = 4096 * 4096,
        transcode: bool = False,
        group: str | None = None,
        tile: int | None = None,
    ) -> Self:
        """Make an empty archive at `path` (a new or empty folder) and open it for writing.

        Frames of more than `max_chunk_pixels` pixels stored with the archive codec are cut
        into square chunks of `tile` pixels a side (default 1024), each decodable alone;
        a `tile` given also lowers the threshold to `tile`² pixels, so a training copy
        made with `tile=128` stores a 512x512 frame as 16 chunks and a patch decodes only
        the chunks it overlaps. Original bitstreams are never tiled.

        With `transcode`, frames that arrive in a lossless compressed transfer syntax
        are stored with the archive codec instead of as their original bitstream;
        such instances export as explicit VR little endian files with the same
        pixels, not as their original bytes. The archive is its owner's only (folders
        0700, files 0600), or with `group` (a name or id) that group's too (2750/0640),
        and everything written into it later keeps that. When another process creates
        the same archive at once, one wins; the other opens it if it has the same
        options (and the writer lock is free), else raises ArchiveError.
        """
        if codec not in CODEC_CHOICES:
            raise ValueError(f"codec must be one of {', '.join(CODEC_CHOICES)}, not {codec!r}")
        if tile is not None and not MIN_TILE <= tile <= MAX_TILE:
            raise ValueError(f"tile must be from {MIN_TILE} to {MAX_TILE} pixels, not {tile}")
        gid = _group_id(group) if group is not None else None
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise ArchiveError(f"{root}: exists and is not a folder")
        if root.exists() and any(root.iterdir()):
            raise ArchiveError(f"{root}: exists and is not empty")
        root.parent.mkdir(parents=True, exist_ok=True)
        config = {
            **FORMAT,
            "codec": codec,
            "frames_per_shard": frames_per_shard,
            "max_chunk_pixels": max_chunk_pixels
            if tile is None
            else min(max_chunk_pixels, tile**2),
            "transcode": transcode,
        }
        if tile is not None:  # absent: the edge archives have always used (DEFAULT_TILE)
            config["tile"] = tile
        # Made beside it, then renamed into place in one step: a kill mid-way leaves no
        # half archive at `root` (only a dot-folder, removed by a later create there), and
        # of two processes creating the same archive exactly one rename succeeds.
        _remove_abandoned_builds(root)
        building = root.with_name(f".{root.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        building.mkdir(mode=0o700)
        try:
            if gid is not None:
                os.chown(building, -1, gid)
                os.chmod(building, 0o2750)  # setgid: what is made inside keeps the group
            else:
                os.chmod(building, 0o700)
            adopt_permissions(building)
            Index.create(building / "index").close()
            PixelStore(building / "pixels").create()
            write_marker(building, config)
            try:
                os.rename(building, root)  # onto a missing or empty folder; else it fails
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
                return cls._created_meanwhile(root, config, group)
            fsync_dir(root.parent)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return cls(root, readonly=False)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        codec: str | None = None,
        transcode: bool = False,
        group: str | None = None,
        tile: int | None = None,
    ) -> Self:
        """Open the archive at `path` for writing, or create it there (`create`) if none is.

        `codec` (default "auto"), `transcode`, `group` and `tile` are options of a new archive:
        given for an existing archive whose own options differ (any `group`, as it
        would be ignored), they raise ArchiveError rather than being silently dropped.
        """
        root = Path(path)
        if not cls.exists(root):
            return cls.create(
                root, codec=codec or "auto", transcode=transcode, group=group, tile=tile
            )
        config = read_marker(root)
        if tile is not None and tile != config.get("tile"):
            raise ArchiveError(
                f"{root} stores frames in tiles of {config.get('tile') or 'the default size'}; "
                "--tile applies only when the archive is created"
            )
        if codec is not None and codec != config.get("codec"):
            raise ArchiveError(
                f"{root} stores new series with codec {config.get('codec')!r}; --codec "
                "applies only when the archive is created"
            )
        if transcode and not config.get("transcode"):
            raise ArchiveError(
                f"{root} keeps original bitstreams; --transcode applies only when it is created"
            )
        if group is not None:
            raise ArchiveError(
                f"{root} exists; --group applies only when it is created (chgrp -R, chmod)"
            )
        return cls(root, readonly=False)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """True when `path` is an archive's folder: its marker (archive.json) is a file."""
        return (Path(path) / MARKER).is_file()

    @classmethod
    def _created_meanwhile(cls, root: Path, config: dict[str, Any], group: str | None) -> Self:
        """The archive another process made at `root` while this one made its own."""
        if not (root / MARKER).is_file():
            raise ArchiveError(f"{root}: something else was made there meanwhile")
        theirs = read_config(root / MARKER)
        if {k: theirs.get(k) for k in config} != config or (
            group is not None and root.stat().st_gid != _group_id(group)
        ):
            raise ArchiveError(
                f"{root}: another process created this archive meanwhile, with other options"
            )
        return cls(root, readonly=False)

    def close(self) -> None:
        """Release the index, the writer lock and the shard files kept open for reading."""
        self.index.close()
        self.pixels.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------

    def frames(self, sop_instance_uid: str, check: bool = True) -> np.ndarray:
        """The decoded frames of one instance, shaped (frames, rows, columns[, samples]).

        Chunks are read from the shards and decoded with the array's codec directly:
        the same bytes and codec a zarr reader uses, without zarr's per-read overhead.
        With `check` (the default) they are compared with the hashes recorded at ingest,
        so that a damaged chunk that still decodes (a flipped bit in an uncompressed, LZ4
        or kept JPEG chunk) is an ArchiveError naming the instance, not wrong pixels.
        """
        row = self._row(sop_instance_uid)
        if not check:
            return self.frames_of(row)
        try:
            return self.checked_frames_of(row)
        except ArchiveError as error:
            raise ArchiveError(f"{_shown(sop_instance_uid)}: {error}") from None

    def frames_of(self, row: Row) -> np.ndarray:
        """The decoded frames a row (of any version, see `versions`) references."""
        pixels = row.get("pixels")
        if not pixels:
            raise ArchiveError(f"{row['SOPInstanceUID']}: the instance has no pixel data")
        first, count = pixels["first_frame"], pixels["frames"]
        return self.pixels.read_frames(pixels["array"], range(first, first + count))

    def _row(self, sop_instance_uid: str) -> Row:
        problem = uid_problem("SOPInstanceUID", sop_instance_uid)
        if problem is not None:
            raise UnknownInstance(f"{_shown(sop_instance_uid)}: not in the archive ({problem})")
        row = self.index.get(sop_instance_uid)
        if row is None:
            raise UnknownInstance(
                f"{_shown(sop_instance_uid)}: {self._not_an_instance(sop_instance_uid)}"
            )
        return row

    def _not_an_instance(self, uid: str) -> str:
        """What to say of a UID that is no instance's: a study's or series' UID, or unknown."""
        if self.index.study_record(uid) is not None:
            return "not an instance in the archive but a Study Instance UID (export --study)"
        if self.index.series_record(uid) is not None:
            return "not an instance in the archive but a Series Instance UID (export --series)"
        return "not in the archive"

    def versions(self, sop_instance_uid: str) -> list[Row]:
        """Each kept version of one instance as its own row, oldest first; the current last.

        An instance has several when files with its SOP Instance UID and its pixels but
        other bytes came in (docs/archive.md); `export_bytes(uid, version=i)` rebuilds one.
        """
        return version_rows(self._row(sop_instance_uid))

    def export_bytes(self, sop_instance_uid: str, version: int | None = None) -> bytes:
        """The original file of one instance (the current version, or `version`: its position
        in `versions()`), rebuilt and checked against its sha256 (a transcoded instance: the
        same data set with its pixels in explicit VR little endian, its frames checked).

        Raises ExportError naming the UID when it cannot be rebuilt exactly.
        """
        row = self._row(sop_instance_uid)
        chosen = row
        if version is not None:
            versions = version_rows(row)
            if not 0 <= version < len(versions):
                raise ExportError(
                    f"{_shown(sop_instance_uid)}: no version {version} "
                    f"(it has {len(versions)}, from 0)"
                )
            chosen = versions[version]
        try:
            data = self.rebuild(chosen)
        except Exception as error:  # a damaged pack or shard can fail in any layer
            raise ExportError(
                f"{_shown(sop_instance_uid)}: cannot rebuild the file: {error!r}"
            ) from None
        if (
            not chosen.get("transcoded")
            and chosen["source_sha256"]  # "": a copy's native frames, checked in rebuild
            and hashlib.sha256(data).hexdigest() != (chosen["source_sha256"])
        ):
            raise ExportError(
                f"{_shown(sop_instance_uid)}: the rebuilt file differs from the archived file "
                "(its sha256 does not match): the archive is damaged, see `pacs-engine verify`"
            )
        return data

    def rebuild(self, row: Row) -> bytes:
        """The file of one version's row, rebuilt but unchecked (`export_bytes` checks it).

        A transcoded instance's frames are checked against their recorded hashes here,
        since its file has no original to compare with, and so are those of a row without
        a file sha256 (a copy's native frames, pacs_engine.archive.copies).
        """
        blob = read_blob(self.path, row)
        pixels = row.get("pixels")
        if row.get("transcoded"):
            return transcoded_file(blob, row, self.checked_frames_of(row))
        frames: np.ndarray | None = None
        bitstreams: list[bytes] | None = None
        layout: PixelLayout | None = None
        if pixels and blob.kind != 0:
            layout = PixelLayout.from_attributes(row, row["pixel_keyword"] or "PixelData")
            if row["pixel_storage"] == "bitstream":
                bitstreams = self.pixels.read_bitstreams(
                    pixels["array"], pixels["first_frame"], pixels["first_frame"] + pixels["frames"]
                )
            elif not row["source_sha256"]:
                frames = self.checked_frames_of(row)
            else:
                frames = self.frames_of(row)
        return rebuild_file(
            blob, layout, row["little_endian"], row.get("pixel_vr"), frames, bitstreams
        )

    def native_bytes(self, sop_instance_uid: str) -> bytes:
        """One instance as an explicit VR little endian file, its pixels decoded (and checked
        against their recorded hashes): for a receiver that does not take its stored syntax.

        Raises ExportError naming the UID when it has no pixel data or cannot be rebuilt.
        """
        row = self._row(sop_instance_uid)
        if not row.get("pixels"):
            raise ExportError(f"{_shown(sop_instance_uid)}: no pixel data to decode")
        try:
            return transcoded_file(read_blob(self.path, row), row, self.checked_frames_of(row))
        except Exception as error:  # a damaged pack or shard can fail in any layer
            raise ExportError(
                f"{_shown(sop_instance_uid)}: cannot rebuild the file: {error!r}"
            ) from None

    def header_dataset(self, row: Row) -> pydicom.FileDataset:
        """The data set of one version's row without its pixel data value, from its header
        blob (no pixels read): for metadata. Raises ExportError naming the UID when damaged.
        """
        try:
            return blob_dataset(read_blob(self.path, row))
        except Exception as error:  # a damaged pack can fail in any layer
            raise ExportError(
                f"{_shown(row['SOPInstanceUID'])}: cannot read its header: {error!r}"
            ) from None

    def header_blob(self, row: Row) -> HeaderBlob:
        """The header blob of one version's row (checked against its `header_sha256`, when the
        row has one); BlobError or OSError when damaged or missing."""
        return read_blob(self.path, row)

    def checked_frames_of(self, row: Row) -> np.ndarray:
        """The row's decoded frames, checked against their recorded hashes when it has them
        (ArchiveError: they differ, a chunk is damaged)."""
        decoded = self.frames_of(row)
        recorded = row.get("frame_hashes")
        if recorded and frame_hashes_like(decoded, recorded) != recorded:
            raise ArchiveError("its frames do not decode to the archived pixels (a damaged chunk)")
        return decoded

    def export(
        self,
        destination: str | os.PathLike,
        sop_instance_uids: Iterable[str] | None = None,
        all_versions: bool = False,
        progress: Callable[[], None] | None = None,
    ) -> list[Path]:
        """Write original files as `destination/<Study>/<Series>/<SOP>.dcm`; returns the paths.

        Each file is checked against its sha256 before it is written; one that fails is
        not written, the others are, and then ExportError names the first that failed
        and how many did. Names are `safe_name`s of the
        UIDs; files are written without following links (pacs_engine.archive.export).
        With `all_versions`, each earlier version of an instance is written beside the
        current one as `<SOP>_v<n>.dcm` (n from 1, oldest first). `progress` is called
        once per instance done. An unknown UID raises UnknownInstance before anything is
        written.
        """
        root = Path(destination)
        uids = (
            list(sop_instance_uids)
            if sop_instance_uids is not None
            else [row["SOPInstanceUID"] for row in self.index]
        )
        for uid in uids:  # all known before anything is written
            if uid_problem("SOPInstanceUID", uid) is not None or uid not in self.index:
                self._row(uid)  # raises UnknownInstance, saying what the UID is
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = "not a folder" if isinstance(error, FileExistsError) else error.strerror
            raise ExportError(f"{root}: cannot export into it: {reason}") from None
        written = []
        damaged = []  # one file's damage does not stop the export of the others
        for uid in uids:
            row = self._row(uid)
            folders = [safe_name(row["StudyInstanceUID"]), safe_name(row["SeriesInstanceUID"])]
            files: list[tuple[str, int | None]] = [(f"{safe_name(uid)}.dcm", None)]
            if all_versions:
                earlier = len(version_rows(row)) - 1
                files += [(version_name(uid, i + 1), i) for i in range(earlier)]
            for name, version in files:
                try:
                    data = self.export_bytes(uid, version)
                except ExportError as error:
                    damaged.append(str(error))
                    continue
                try:
                    written.append(write_file(root, folders, name, data))
                except OSError as error:
                    raise ExportError(
                        f"{error.filename or root}: cannot write {_shown(uid)}: {error.strerror}"
                    ) from None
            if progress is not None:
                progress()
        if damaged:
            more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
            raise ExportError(
                f"{len(damaged)} of {len(damaged) + len(written)} files not exported, the "
                f"others were: {damaged[0]}{more}"
            )
        return written

    def verify(
        self,
        progress: Callable[[str, bool], None] | None = None,
        workers: int | None = 0,
        executor: Executor | None = None,
        selection: Selection | None = None,
        record: bool = True,
    ) -> VerifyReport:
        """Check every instance, or those `selection` picks: frames decode, to their recorded
        hashes, and files rebuild.

        The index is checked first, page by page and row by row (DamagedIndexError).

        Original bitstreams stored undecoded have no recorded hashes: decoding them is
        the check, and the rebuilt file's sha256 proves their bytes. With `workers`
        (None: one per core) or an `executor` (pacs_engine.executors), instances are
        checked in worker processes, so a decoder crash is reported instead of ending
        the check (pacs_engine.archive.verify). With `record`, what was checked and found
        is kept in reports/verify-<start>.json (pacs_engine.archive.verify_plan).
        """
        selection = selection or Selection()
        check_selection(selection)  # a bad argument is refused before the long index check
        self.index.check()  # DamagedIndexError: nothing below can be trusted, or even read
        started, clock = time.strftime(STAMP, time.gmtime()), time.monotonic()
        uids, population = select(self, selection)
        if executor is None and workers == 0:
            report = verify_here(self, progress, uids)
        else:
            own = executor is None
            executor = executor if executor is not None else make_executor(workers)
            try:
                report = verify_on(self, executor, progress, uids)
            finally:
                if own:
                    executor.close()
        if selection.everything:  # what rebuild-index would restore the index from
            report.mismatches += check_rows_files(self)
        report.population, report.checked = population, uids
        report.sampled, report.seed = selection.sample is not None, selection.seed
        report.started, report.seconds = started, time.monotonic() - clock
        if record:
            try:
                report.record = write_record(self, selection, report)
            except OSError as error:  # a read-only copy of the archive: the findings still stand
                report.unrecorded = str(error)
        return report

    def query(
        self,
        level: str = "instance",
        strict: bool = True,
        *,
        offset: int = 0,
        limit: int | None = None,
        **filters: Any,
    ) -> list[Found]:
        """Rows (or patient, study or series records) matching DICOM-style filters.

        Strict by default: an unknown keyword, one not queryable at `level` or a
        malformed value raises QueryError saying what would be valid; `offset` and
        `limit` page the matches, read no further than needed; see Index.query.
        """
        return self.index.query(level, strict, offset=offset, limit=limit, **filters)

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk (allocated blocks) by part of the archive, those present, and total.

        "other" is what lies outside the parts (archive.json, locks, session files).
        """
        usage = {part: _disk_bytes(self.path / part) for part in DISK_PARTS}
        usage = {part: size for part, size in usage.items() if (self.path / part).exists()}
        everything = _disk_bytes(self.path)
        usage["other"] = everything - sum(usage.values())
        usage["total"] = everything
        return usage

    def info(self) -> dict[str, Any]:
        """Counts (patients, studies, series, instances), sizes on disk by part, compression
        ratio, by modality, by codec and by chunk layout; the storage options it was made
        with (`storage`: codec, max_chunk_pixels, frames_per_shard, transcode, and `tile`, the
        edge of the square chunks of frames over max_chunk_pixels)."""
        by_modality: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_codec: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_chunks: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        totals: dict[str, int] = defaultdict(int)
        for row in self.index:
            pixels = row.get("pixels")
            codec = chunks = "no pixel data"
            if pixels:
                spec = self.pixels.spec(pixels["array"])
                codec, chunks = spec.codec_name, chunk_layout(spec)
            buckets = (by_modality[row.get("Modality") or "(none)"], by_codec[codec], totals)
            for bucket in (*buckets, by_chunks[chunks]):
                bucket["instances"] += 1
                bucket["source_bytes"] += row.get("file_size", 0)
                bucket["raw_pixel_bytes"] += row.get("raw_pixel_bytes", 0)
                bucket["stored_bytes"] += row.get("stored_bytes", 0)
                bucket["duplicates"] += len(row.get("duplicates", []))
        studies = self.index.query("study")
        result = {
            "path": str(self.path),
            **_with_ratio(totals),
            "patients": len(patients(studies)),
            "studies": len(studies),
            "series": len(self.index.all_series()),
            "quarantined": len(self.quarantine.records()),
            "disk_bytes": self.disk_usage(),
            "by_modality": {k: _with_ratio(v) for k, v in sorted(by_modality.items())},
            "by_codec": {k: _with_ratio(v) for k, v in sorted(by_codec.items())},
            "by_chunks": {k: _with_ratio(v) for k, v in sorted(by_chunks.items())},
            "storage": {
                **{
                    k: self.config.get(k)
                    for k in ("codec", "max_chunk_pixels", "frames_per_shard", "transcode")
                },
                # Frames over max_chunk_pixels are cut into tiles of this edge.
                "tile": self.config.get("tile", DEFAULT_TILE),
            },
        }
        return result


def _disk_bytes(path: Path) -> int:
    """The bytes the files and folders under `path` take on disk (links not followed)."""
    try:
        info = path.lstat()
    except FileNotFoundError:  # removed meanwhile (a spool file sent on): nothing
        return 0
    total = info.st_blocks * 512  # st_blocks counts 512-byte units whatever the block size
    if path.is_dir() and not path.is_symlink():
        with os.scandir(path) as entries:
            total += sum(_disk_bytes(Path(entry.path)) for entry in entries)
    return total


def _group_id(group: str) -> int:
    """The id of a group named by name or number."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ArchiveError(f"{group}: no such group") from None


def _remove_abandoned_builds(root: Path) -> None:
    """Delete the half-made archives that killed creates left beside `root`."""
    for building in root.parent.glob(f".{glob.escape(root.name)}.creating*"):
        _, _, owner = building.name.rpartition(".creating")
        pid = owner[1:].split("-")[0]
        if pid.isdigit() and alive(int(pid)):
            continue  # another process is creating it now
        shutil.rmtree(building, ignore_errors=True)


def open_archive(path: str | os.PathLike, readonly: bool = True) -> Archive:
    """Open an existing archive (read-only unless asked)."""
    return Archive(path, readonly=readonly)


def _shown(uid: str) -> str:
    """A UID for a one-line message: as it is when printable, else quoted and escaped."""
    return uid if uid.isprintable() and uid.strip() == uid and uid else repr(uid)


def _with_ratio(counts: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = dict(counts)
    stored, raw = counts.get("stored_bytes", 0), counts.get("raw_pixel_bytes", 0)
    out["ratio"] = round(raw / stored, 3) if stored and raw else None
    return out
