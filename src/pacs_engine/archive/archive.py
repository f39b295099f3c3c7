"""The archive: a Zarr v3 pixel store, header blobs, a memory-mapped index, and a quarantine.

```
ARCHIVE/
  archive.json      format, version, codec policy, shard size
  pixels/           Zarr v3 group: pixels/<SeriesInstanceUID>/<array key>
  headers/          header blobs, one pack file per committed part
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

import fcntl
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pacs_engine.archive.blobs import HeaderBlob
from pacs_engine.archive.encoder import CODEC_CHOICES, Checks
from pacs_engine.archive.native import PixelLayout
from pacs_engine.archive.pixel_store import PixelStore
from pacs_engine.archive.prepare import rebuild_file, transcoded_file
from pacs_engine.archive.quarantine import Quarantine
from pacs_engine.archive.report import IngestReport
from pacs_engine.archive.verify import VerifyReport, verify_here, verify_on
from pacs_engine.index import Index
from pacs_engine.inputs import PACS_ARCHIVE_FORMAT, PACS_ARCHIVE_MARKER
from pacs_engine.storage import fsync_dir, write_atomic

if TYPE_CHECKING:
    from pacs_engine.ingest import Progress

FORMAT = {"format": PACS_ARCHIVE_FORMAT, "version": 1}


class ArchiveError(RuntimeError):
    """The archive cannot do what was asked (not an archive, locked, damaged)."""


class Archive:
    """A lossless DICOM archive on disk. Open with `open_archive`, make with `Archive.create`."""

    def __init__(self, path: str | os.PathLike, readonly: bool = True) -> None:
        self.path = Path(path)
        meta_path = self.path / PACS_ARCHIVE_MARKER
        if not meta_path.is_file():
            raise ArchiveError(f"{self.path}: not a pacs_engine archive (no archive.json)")
        self.config = json.loads(meta_path.read_bytes())
        if {k: self.config.get(k) for k in FORMAT} != FORMAT:
            raise ArchiveError(f"{self.path}: unsupported archive format {self.config}")
        self.readonly = readonly
        self._lock = None
        if not readonly:
            self._lock = open(self.path / ".writer.lock", "a+")  # noqa: SIM115
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise ArchiveError(f"{self.path}: another process is writing to it") from None
        self.index = Index.open(self.path / "index", readonly=readonly)
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
    ) -> Archive:
        """Make an empty archive at `path` (a new or empty folder) and open it for writing.

        With `transcode`, frames that arrive in a lossless compressed transfer syntax
        are stored with the archive codec instead of as their original bitstream;
        such instances export as explicit VR little endian files with the same
        pixels, not as their original bytes.
        """
        if codec not in CODEC_CHOICES:
            raise ValueError(f"codec must be one of {', '.join(CODEC_CHOICES)}, not {codec!r}")
        root = Path(path)
        if root.exists() and any(root.iterdir()):
            raise ArchiveError(f"{root}: exists and is not empty")
        root.parent.mkdir(parents=True, exist_ok=True)
        # Made beside it, then renamed into place: a kill mid-way leaves no half archive
        # at `root` (only a dot-folder, removed by the next create there).
        building = root.with_name(f".{root.name}.creating")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        Index.create(building / "index").close()
        PixelStore(building / "pixels").create()
        config = {
            **FORMAT,
            "codec": codec,
            "frames_per_shard": frames_per_shard,
            "max_chunk_pixels": max_chunk_pixels,
            "transcode": transcode,
        }
        write_atomic(building / PACS_ARCHIVE_MARKER, json.dumps(config, indent=2).encode())
        if root.exists():
            root.rmdir()
        building.rename(root)
        fsync_dir(root.parent)
        return cls(root, readonly=False)

    def close(self) -> None:
        """Release the index and the writer lock."""
        self.index.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- ingest -----------------------------------------------------------------------

    def ingest(
        self,
        sources: Iterable[str | os.PathLike],
        workers: int | None = None,
        executor: Any = None,
        verify: bool = False,
        progress: Callable[[Progress], None] | None = None,
        trust_bitstreams: bool = False,
        max_frame_bytes: int | None = None,
    ) -> IngestReport:
        """Archive the DICOM files under `sources` (folders, files, zip and tar archives,
        and the instances of other pacs_engine archives).

        Runs `pacs_engine.ingest.run_ingest`: scan in parallel, group by series,
        encode parts of series in `workers` processes (0: in this process; None:
        one per core) or on `executor` (`DaskExecutor`), commit each part with its
        journal entries. Every input ends archived, as a duplicate, as a conflict
        or in quarantine; the report counts them. An interrupted run resumes when
        it is started again with the same sources. Compressed frames kept as their
        original bitstream are decoded to hash their pixels, and a file whose frames
        do not decode is quarantined. With `trust_bitstreams` they are stored byte
        for byte without being decoded (faster; a SOP Instance UID seen twice still
        decodes both copies), and only `Archive.verify` finds frames that never
        decoded. With `verify`, every frame encoded with the archive codec is decoded
        again and checked before it is committed. Compressed frames that would decode to
        more than `max_frame_bytes` (None: `Checks`' default, 1 GiB) are quarantined.
        """
        from pacs_engine.ingest import run_ingest

        self._writable()
        sources = list(sources)
        own = self.path.resolve()
        if any(Path(source).resolve() == own for source in sources):
            raise ArchiveError(f"{self.path}: an archive cannot be ingested into itself")
        checks = Checks(
            decode_bitstreams=not trust_bitstreams,
            recheck_encoded=verify,
            max_frame_bytes=max_frame_bytes or Checks.max_frame_bytes,
        )
        return run_ingest(self, sources, workers, executor, checks=checks, progress=progress)

    def _writable(self) -> None:
        if self.readonly:
            raise ArchiveError(f"{self.path}: opened read-only")

    # --- reading ----------------------------------------------------------------------

    def frames(self, sop_instance_uid: str) -> np.ndarray:
        """The decoded frames of one instance, shaped (frames, rows, columns[, samples]).

        Chunks are read from the shards and decoded with the array's codec directly:
        the same bytes and codec a zarr reader uses, without zarr's per-read overhead.
        """
        row = self._row(sop_instance_uid)
        pixels = row.get("pixels")
        if not pixels:
            raise ArchiveError(f"{sop_instance_uid}: the instance has no pixel data")
        first, count = pixels["first_frame"], pixels["frames"]
        return self.pixels.read_frames(pixels["array"], range(first, first + count))

    def _row(self, sop_instance_uid: str) -> dict[str, Any]:
        row = self.index.get(sop_instance_uid)
        if row is None:
            raise KeyError(f"{sop_instance_uid}: not in the archive")
        return row

    def export_bytes(self, sop_instance_uid: str) -> bytes:
        """The original file of one instance, rebuilt byte for byte (a transcoded instance:
        the same data set with its pixels in explicit VR little endian)."""
        row = self._row(sop_instance_uid)
        where = row["header"]
        with open(self.path / where["pack"], "rb") as f:
            f.seek(where["offset"])
            blob = HeaderBlob.from_bytes(f.read(where["length"]))
        pixels = row.get("pixels")
        if row.get("transcoded"):
            return transcoded_file(blob, row, self.frames(sop_instance_uid))
        frames = bitstreams = layout = None
        if pixels and blob.kind != 0:
            layout = PixelLayout.from_attributes(row, row["pixel_keyword"])
            if row["pixel_storage"] == "bitstream":
                bitstreams = self.pixels.read_bitstreams(
                    pixels["array"], pixels["first_frame"], pixels["first_frame"] + pixels["frames"]
                )
            else:
                frames = self.frames(sop_instance_uid)
        return rebuild_file(
            blob, layout, row["little_endian"], row.get("pixel_vr"), frames, bitstreams
        )

    def export(
        self, destination: str | os.PathLike, sop_instance_uids: Iterable[str] | None = None
    ) -> list[Path]:
        """Write original files as `destination/<Study>/<Series>/<SOP>.dcm`; returns the paths."""
        root = Path(destination)
        uids = (
            list(sop_instance_uids)
            if sop_instance_uids is not None
            else [row["SOPInstanceUID"] for row in self.index]
        )
        written = []
        for uid in uids:
            row = self._row(uid)
            target = root / row["StudyInstanceUID"] / row["SeriesInstanceUID"] / f"{uid}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.export_bytes(uid))
            written.append(target)
        return written

    def verify(
        self,
        progress: Callable[[str, bool], None] | None = None,
        workers: int | None = 0,
        executor: Any = None,
    ) -> VerifyReport:
        """Check every instance: its frames decode, to their recorded hashes, and its file rebuilds.

        Original bitstreams stored undecoded have no recorded hashes: decoding them is
        the check, and the rebuilt file's sha256 proves their bytes. With `workers`
        (None: one per core) or an ingest `executor`, instances are checked in worker
        processes, so a decoder crash is reported instead of ending the check
        (pacs_engine.archive.verify).
        """
        if executor is None and workers == 0:
            return verify_here(self, progress)
        from pacs_engine.ingest.executors import make_executor

        own = executor is None
        executor = executor if executor is not None else make_executor(workers)
        try:
            return verify_on(self, executor, progress)
        finally:
            if own:
                executor.close()

    def query(self, level: str = "instance", **filters: Any) -> list[dict[str, Any]]:
        """Rows (or series or study records) matching DICOM-style filters; see Index.query."""
        return self.index.query(level, **filters)

    def info(self) -> dict[str, Any]:
        """Counts, sizes and compression ratio, by modality and by codec."""
        by_modality: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_codec: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        totals: dict[str, int] = defaultdict(int)
        for row in self.index:
            pixels = row.get("pixels")
            codec = "no pixel data"
            if pixels:
                codec = self.pixels.spec(pixels["array"]).codec_name
            for bucket in (by_modality[row.get("Modality") or "(none)"], by_codec[codec], totals):
                bucket["instances"] += 1
                bucket["source_bytes"] += row.get("file_size", 0)
                bucket["raw_pixel_bytes"] += row.get("raw_pixel_bytes", 0)
                bucket["stored_bytes"] += row.get("stored_bytes", 0)
                bucket["duplicates"] += len(row.get("duplicates", []))
        result = {
            "path": str(self.path),
            **_with_ratio(totals),
            "series": len(self.index.all_series()),
            "quarantined": len(self.quarantine.records()),
            "by_modality": {k: _with_ratio(v) for k, v in sorted(by_modality.items())},
            "by_codec": {k: _with_ratio(v) for k, v in sorted(by_codec.items())},
        }
        return result


def open_archive(path: str | os.PathLike, readonly: bool = True) -> Archive:
    """Open an existing archive (read-only unless asked)."""
    return Archive(path, readonly=readonly)


def _with_ratio(counts: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = dict(counts)
    stored, raw = counts.get("stored_bytes", 0), counts.get("raw_pixel_bytes", 0)
    out["ratio"] = round(raw / stored, 3) if stored and raw else None
    return out
