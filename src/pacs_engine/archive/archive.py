"""The archive: a Zarr v3 pixel store, header blobs, a memory-mapped index, and a quarantine.

```
ARCHIVE/
  archive.json      format, version, codec policy, shard size
  pixels/           Zarr v3 group: pixels/<SeriesInstanceUID>/<array key>
  headers/          header blobs, one pack file per series commit
  index/            the LMDB index (pacs_engine.index)
  quarantine/       files that could not be archived, with the reason
  reports/          one JSON report per ingest
```

A series is archived in one step: its frames are encoded and written as whole
shards, its header blobs as one pack file, then its index rows are committed in
one transaction. Readers only reach pixels through committed rows, so they never
see a half-written series; a crash before the commit leaves unreferenced bytes
that the next ingest of that series overwrites.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np

from pacs_engine.archive.blobs import HeaderBlob
from pacs_engine.archive.native import PixelLayout
from pacs_engine.archive.pixel_store import ArraySpec, PixelStore, split_tiles
from pacs_engine.archive.prepare import (
    Prepared,
    PrepareError,
    frame_hash,
    instance_pixel_hash,
    prepare,
    rebuild_file,
    transcoded_file,
)
from pacs_engine.archive.quarantine import Quarantine
from pacs_engine.archive.report import IngestReport
from pacs_engine.codecs import (
    CodecError,
    Htj2kCodec,
    Jpeg2kCodec,
    JpegLsCodec,
    JpegXlCodec,
    choose_codec,
    general_purpose_codecs,
)
from pacs_engine.errors import ScanError
from pacs_engine.header import Header
from pacs_engine.index import Index
from pacs_engine.scanning import HEADER_KEYWORDS, scan_many
from pacs_engine.sources import iter_files
from pacs_engine.storage import fsync_dirs, write_atomic

FORMAT = {"format": "pacs_engine archive", "version": 1}
CODECS: dict[str, Callable[[], Any]] = {
    "jpegls": JpegLsCodec,
    "htj2k": Htj2kCodec,
    "jpeg2k": Jpeg2kCodec,
    "jpegxl": lambda: JpegXlCodec(effort=2),
}
CODEC_CHOICES = ("auto", *CODECS, "blosc")
COMPARED_KEYWORDS = tuple(k for k in HEADER_KEYWORDS if k != "TransferSyntaxUID")


class ArchiveError(RuntimeError):
    """The archive cannot do what was asked (not an archive, locked, damaged)."""


@dataclass
class VerifyReport:
    """The result of `Archive.verify`: instances checked and what did not match."""

    instances: int = 0
    frames: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every stored frame decodes to its recorded hash."""
        return not self.mismatches


class _ArrayWriter:
    """Frames appended to one array during one series commit."""

    def __init__(self, store: PixelStore, path: str, first: int, dirs: set[Path]) -> None:
        self.store, self.path, self.dirs = store, path, dirs
        self.written = self.next = first
        self.pending: list[bytes] = []
        self.per_shard, self.per_frame = store.grid(path)

    def append(self, chunks: list[bytes]) -> int:
        """Queue one instance's chunks; returns its first frame index."""
        first = self.next
        self.pending += chunks
        self.next += len(chunks) // self.per_frame
        full = (self.next // self.per_shard) * self.per_shard
        if full > self.written:  # whole shards are ready: write them now
            self.flush(until=full)
        return first

    def flush(self, until: int | None = None) -> None:
        """Write queued frames (up to frame `until`) as shards."""
        until = self.next if until is None else until
        count = (until - self.written) * self.per_frame
        if count > 0:
            self.store.write_frames(self.path, self.written, self.pending[:count], self.dirs)
            del self.pending[:count]
            self.written = until


class Archive:
    """A lossless DICOM archive on disk. Open with `open_archive`, make with `Archive.create`."""

    def __init__(self, path: str | os.PathLike, readonly: bool = True) -> None:
        self.path = Path(path)
        meta_path = self.path / "archive.json"
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
        self._arrays: dict[str, Any] = {}

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
        root.mkdir(parents=True, exist_ok=True)
        Index.create(root / "index").close()
        PixelStore(root / "pixels").create()
        config = {
            **FORMAT,
            "codec": codec,
            "frames_per_shard": frames_per_shard,
            "max_chunk_pixels": max_chunk_pixels,
            "transcode": transcode,
        }
        write_atomic(root / "archive.json", json.dumps(config, indent=2).encode())
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

    def add(
        self,
        sources: Iterable[str | os.PathLike],
        verify: bool = False,
        progress: Callable[[str, str], None] | None = None,
    ) -> IngestReport:
        """Archive the DICOM files under `sources` (folders are walked) in this process.

        Every input ends archived, as a duplicate, as a conflict or in quarantine;
        the report counts them. With `verify`, every encoded frame is decoded
        again and checked against the source's hash before it is committed.
        `progress(path, outcome)` is called once per input.
        """
        self._writable()
        started = time.perf_counter()
        report = IngestReport()
        notify = progress or (lambda path, outcome: None)
        paths = sorted(iter_files(sources, lambda p, r: self._reject(report, p, None, r, notify)))
        by_series: dict[str, list[Header]] = defaultdict(list)
        for result in scan_many(paths):
            if isinstance(result, ScanError):
                self._reject(report, result.path or "", None, str(result.reason), notify)
                continue
            series = result.attributes.get("SeriesInstanceUID")
            if not isinstance(series, str) or not series:
                self._reject(report, result.path or "", None, "no SeriesInstanceUID", notify)
                continue
            by_series[series].append(result)
        for series_uid in sorted(by_series):
            self._add_series(series_uid, by_series[series_uid], report, verify, notify)
        report.seconds = time.perf_counter() - started
        write_atomic(
            self.path / "reports" / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}-"
            f"{uuid.uuid4().hex[:8]}.json",
            json.dumps(report.to_dict(), indent=2).encode(),
        )
        return report

    def _writable(self) -> None:
        if self.readonly:
            raise ArchiveError(f"{self.path}: opened read-only")

    def _reject(
        self,
        report: IngestReport,
        path: str,
        data: bytes | None,
        reason: str,
        notify: Callable,
        **details: Any,
    ) -> None:
        """Quarantine one input with its reason (reading it if the caller has not)."""
        report.inputs += 1
        if data is None:
            try:
                data = Path(path).read_bytes()
            except OSError as error:
                reason = f"{reason}; cannot read it: {error.strerror or error}"
        sha = (
            hashlib.sha256(data).hexdigest()
            if data is not None
            else hashlib.sha256(path.encode()).hexdigest()
        )
        self.quarantine.add(path, data, sha, reason, **details)
        report.input_bytes += len(data) if data else 0
        report.quarantine(reason)
        notify(path, "quarantined")

    def _add_series(
        self,
        series_uid: str,
        headers: list[Header],
        report: IngestReport,
        verify: bool,
        notify: Callable,
    ) -> None:
        """Archive the instances of one series and commit them in one index transaction."""
        committed = self._committed_frames(series_uid)
        dirs: set[Path] = set()  # folders whose new files must be durable before the commit
        writers: dict[str, _ArrayWriter] = {}
        rows: dict[str, dict[str, Any]] = {}
        blobs: list[tuple[str, bytes]] = []
        new = 0
        order = sorted(headers, key=_instance_order)
        for header in order:
            path = header.path or ""
            try:
                data = Path(path).read_bytes()
            except OSError as error:
                self._reject(report, path, None, f"cannot read: {error.strerror}", notify)
                continue
            try:
                prepared = prepare(path, data, header, self.config.get("transcode", False))
            except PrepareError as error:
                self._reject(report, path, data, str(error), notify)
                continue
            sop = prepared.sop_instance_uid
            prior = rows.get(sop) or self.index.get(sop)
            if prior is not None:
                self._duplicate_or_conflict(prior, prepared, data, rows, report, notify)
                continue
            try:
                pixels, stored = self._write_pixels(prepared, writers, committed, dirs, verify)
            except (CodecError, ValueError) as error:
                self._reject(report, path, data, f"cannot store the pixels: {error}", notify)
                continue
            blob = prepared.blob.to_bytes()
            blobs.append((sop, blob))
            rows[sop] = _row(prepared, pixels, stored + len(blob))
            report.inputs += 1
            report.archived += 1
            report.input_bytes += prepared.size
            report.raw_bytes += prepared.raw_pixel_bytes
            report.stored_bytes += stored + len(blob)
            new += 1
            notify(path, "archived")
        for writer in writers.values():
            writer.flush()
        if blobs:
            self._write_blobs(series_uid, blobs, rows, dirs)
        fsync_dirs(dirs)
        if rows:
            self.index.commit(rows.values())
        for path, writer in writers.items():
            self.pixels.set_frames(path, writer.next)

    def _committed_frames(self, series_uid: str) -> dict[str, int]:
        """Frames per array that committed rows of the series reference (the append points)."""
        frames: dict[str, int] = defaultdict(int)
        for row in self.index.series(series_uid):
            pixels = row.get("pixels")
            if pixels:
                end = pixels["first_frame"] + pixels["frames"]
                frames[pixels["array"]] = max(frames[pixels["array"]], end)
        return frames

    def _duplicate_or_conflict(
        self,
        prior: dict[str, Any],
        prepared: Prepared,
        data: bytes,
        rows: dict[str, dict[str, Any]],
        report: IngestReport,
        notify: Callable,
    ) -> None:
        same_pixels = prior.get("pixel_hash") == instance_pixel_hash(prepared.frame_hashes)
        attributes = prepared.header.attributes
        same_attributes = all(attributes.get(k) == prior.get(k) for k in COMPARED_KEYWORDS)
        if same_pixels and same_attributes:
            updated = dict(prior)
            updated["duplicates"] = [
                *prior.get("duplicates", []),
                {"path": prepared.path, "sha256": prepared.sha256},
            ]
            rows[prepared.sop_instance_uid] = updated
            report.inputs += 1
            report.duplicates += 1
            report.input_bytes += prepared.size
            notify(prepared.path, "duplicate")
            return
        differs = [k for k in COMPARED_KEYWORDS if attributes.get(k) != prior.get(k)]
        reason = "conflict: same SOP Instance UID as an archived instance, but " + (
            "different pixels" if not same_pixels else f"different {', '.join(differs)}"
        )
        self.quarantine.add(
            prepared.path,
            data,
            prepared.sha256,
            reason,
            sop_instance_uid=prepared.sop_instance_uid,
            archived_source=prior.get("source_path"),
            archived_sha256=prior.get("source_sha256"),
            archived_pixel_hash=prior.get("pixel_hash"),
            pixel_hash=instance_pixel_hash(prepared.frame_hashes),
        )
        report.inputs += 1
        report.conflicts += 1
        report.input_bytes += prepared.size
        notify(prepared.path, "conflict")

    def _write_pixels(
        self,
        prepared: Prepared,
        writers: dict[str, _ArrayWriter],
        committed: dict[str, int],
        dirs: set[Path],
        verify: bool,
    ) -> tuple[dict | None, int]:
        """Queue the instance's frames on its array; returns its pixel reference and bytes."""
        if prepared.storage == "none":
            return None, 0
        series_uid = prepared.header.attributes["SeriesInstanceUID"]
        key, spec, attributes = self._array_for(prepared)
        path = self.pixels.array_path(series_uid, key)
        if path not in writers:
            self.pixels.ensure_array(series_uid, key, spec, attributes)
            writers[path] = _ArrayWriter(self.pixels, path, committed.get(path, 0), dirs)
        if prepared.storage == "bitstream":
            chunks = [prepared.pass_through.encode_bitstream(b) for b in prepared.bitstreams]
        else:
            chunks = self._encode_native(path, prepared, verify)
        first = writers[path].append(chunks)
        reference = {"array": path, "first_frame": first, "frames": len(prepared.frame_hashes)}
        return reference, sum(len(c) for c in chunks)

    def _array_for(self, prepared: Prepared) -> tuple[str, ArraySpec, dict[str, Any]]:
        """The array key, spec and attributes for the instance's frames."""
        layout = prepared.layout
        ts = prepared.header.transfer_syntax_uid or ""
        attributes = {
            "photometric_interpretation": layout.photometric,
            "bits_allocated": layout.bits_allocated,
            "bits_stored": layout.bits_stored,
            "pixel_representation": layout.pixel_representation,
            "samples_per_pixel": layout.samples,
        }
        tile = None
        if prepared.storage == "bitstream":
            codec = prepared.pass_through
            dtype = codec.pixel_dtype
            config = json.dumps(codec.to_dict(), sort_keys=True)
            storage = f"{codec.codec_name.split('.')[-1]}-{_digest(config)}"
            attributes |= {
                "storage": "original bitstream",
                "transfer_syntax_uid": ts,
                "color_conversion": codec.color_conversion,
            }
            compressors: tuple = ()
        else:
            dtype = prepared.frames.dtype
            codec, compressors = self._native_codec(prepared.frames[0])
            storage = "native"
            attributes |= {"storage": "archive codec", "source_transfer_syntax_uid": ts}
            if prepared.transcoded and prepared.pass_through.color_conversion != "none":
                storage = "native-rgb"  # decoded as pixel_array does: YBR became RGB
                attributes["color_conversion"] = prepared.pass_through.color_conversion
            if layout.rows * layout.columns > self.config["max_chunk_pixels"]:
                tile = 1024
        key = (
            f"{layout.rows}x{layout.columns}x{layout.samples}_{np.dtype(dtype).str[1:]}"
            f"_b{layout.bits_stored}_{layout.photometric or 'none'}_{storage}"
        )
        spec = ArraySpec(
            layout.rows,
            layout.columns,
            layout.samples,
            np.dtype(dtype),
            codec,
            compressors,
            self.config["frames_per_shard"],
            tile,
        )
        return key, spec, attributes

    def _native_codec(self, sample: np.ndarray) -> tuple[Any, tuple]:
        """The archive codec for a new array of native frames like `sample`."""
        name = self.config["codec"]
        try:
            if name == "auto":
                return choose_codec(sample), ()
            if name in CODECS:
                codec = CODECS[name]()
                codec.encode_frame(np.ascontiguousarray(sample[:8, :8]))
                return codec, ()
        except CodecError:
            pass  # e.g. float or 32-bit pixels: no image codec takes them
        _, compressor = general_purpose_codecs(sample.dtype)
        return None, (compressor,)

    def _encode_native(self, path: str, prepared: Prepared, verify: bool) -> list[bytes]:
        """Encode the frames with the array's codec (as zarr would), tile by tile."""
        array = self._array(path)
        serializer = array.metadata.codecs[0].codecs[0]
        spec = _spec_of(array)
        chunks = []
        for index, frame in enumerate(prepared.frames):
            for tile in split_tiles(frame, spec):
                if hasattr(serializer, "encode_frame"):
                    data = serializer.encode_frame(tile)
                else:
                    data = _blosc(array).encode(
                        np.ascontiguousarray(tile, tile.dtype.newbyteorder("<"))
                    )
                    data = bytes(data)
                chunks.append(data)
            if verify:
                per = spec.tiles_per_frame
                decoded = self._decode_chunks(array, spec, chunks[-per:], frame.shape)
                if frame_hash(decoded) != prepared.frame_hashes[index]:
                    raise CodecError(f"frame {index} does not decode to its source pixels")
        return chunks

    def _write_blobs(
        self,
        series_uid: str,
        blobs: list[tuple[str, bytes]],
        rows: dict[str, dict[str, Any]],
        dirs: set[Path],
    ) -> None:
        """Write the series' header blobs as one pack file and point the rows at them."""
        name = f"headers/{series_uid}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.pack"
        offset = 0
        for sop, blob in blobs:
            rows[sop]["header"] = {"pack": name, "offset": offset, "length": len(blob)}
            offset += len(blob)
        write_atomic(self.path / name, b"".join(blob for _, blob in blobs), dirs)

    # --- reading ----------------------------------------------------------------------

    def _array(self, path: str) -> Any:
        if path not in self._arrays:
            self._arrays[path] = self.pixels.open_array(path)
        return self._arrays[path]

    def _decode_chunks(
        self, array: Any, spec: ArraySpec, chunks: list[bytes], shape: tuple[int, ...]
    ) -> np.ndarray:
        serializer = array.metadata.codecs[0].codecs[0]
        _, r, c, *_ = spec.chunk_shape
        tile_shape = (r, c, *shape[2:])
        out = np.zeros((spec.shard_shape[1], spec.shard_shape[2], *shape[2:]), array.dtype)
        tiles = iter(chunks)
        for top in range(0, spec.rows, r):
            for left in range(0, spec.columns, c):
                data = next(tiles)
                if hasattr(serializer, "decode_frame"):
                    tile = serializer.decode_frame(data, tile_shape, np.dtype(array.dtype))
                else:
                    raw = _blosc(array).decode(data)
                    tile = np.frombuffer(raw, np.dtype(array.dtype).newbyteorder("<")).reshape(
                        tile_shape
                    )
                out[top : top + r, left : left + c] = tile
        return out[: spec.rows, : spec.columns]

    def frames(self, sop_instance_uid: str) -> np.ndarray:
        """The decoded frames of one instance, shaped (frames, rows, columns[, samples]).

        Chunks are read from the shards and decoded with the array's codec directly:
        the same bytes and codec a zarr reader uses, without zarr's per-read overhead.
        """
        row = self._row(sop_instance_uid)
        pixels = row.get("pixels")
        if not pixels:
            raise ArchiveError(f"{sop_instance_uid}: the instance has no pixel data")
        path, first, count = pixels["array"], pixels["first_frame"], pixels["frames"]
        array = self._array(path)
        spec = _spec_of(array)
        chunks = self.pixels.read_chunks(path, first, first + count)
        per = spec.tiles_per_frame
        return np.stack(
            [
                self._decode_chunks(array, spec, chunks[i * per : (i + 1) * per], spec.frame_shape)
                for i in range(count)
            ]
        )

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
                bitstreams = self.pixels.read_chunks(
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

    def verify(self, progress: Callable[[str, bool], None] | None = None) -> VerifyReport:
        """Check every instance: its frames decode to the hashes recorded at ingest, and
        the file rebuilt from the archive has the original's sha256."""
        report = VerifyReport()
        for row in self.index:
            uid = row["SOPInstanceUID"]
            report.instances += 1
            problems = []
            try:
                if row.get("pixels"):
                    hashes = [frame_hash(f) for f in self.frames(uid)]
                    report.frames += len(hashes)
                    bad = [
                        i
                        for i, (a, b) in enumerate(zip(hashes, row["frame_hashes"], strict=True))
                        if a != b
                    ]
                    if bad:
                        problems.append(f"frames {bad} do not decode to the source pixels")
                rebuilt = self.export_bytes(uid)
                if not row.get("transcoded") and (
                    hashlib.sha256(rebuilt).hexdigest() != row["source_sha256"]
                ):
                    problems.append("the rebuilt file differs from the original")
            except Exception as error:  # a failure to read back is a finding, not a crash
                problems.append(f"cannot read back: {error!r}")
            if problems:
                report.mismatches.append(
                    {
                        "SOPInstanceUID": uid,
                        "source_path": row.get("source_path"),
                        "problem": "; ".join(problems),
                    }
                )
            if progress:
                progress(uid, not problems)
        return report

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
                codec = self._codec_name(pixels["array"])
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

    def _codec_name(self, path: str) -> str:
        meta = json.loads((self.pixels.root / path / "zarr.json").read_bytes())
        inner = meta["codecs"][0]["configuration"]["codecs"]
        names = [c["name"] for c in inner]
        if names[0] == "bytes":
            names = names[1:]
        return "+".join(names)


def open_archive(path: str | os.PathLike, readonly: bool = True) -> Archive:
    """Open an existing archive (read-only unless asked)."""
    return Archive(path, readonly=readonly)


def _with_ratio(counts: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = dict(counts)
    stored, raw = counts.get("stored_bytes", 0), counts.get("raw_pixel_bytes", 0)
    out["ratio"] = round(raw / stored, 3) if stored and raw else None
    return out


def _instance_order(header: Header) -> tuple:
    number = header.attributes.get("InstanceNumber")
    return (
        number if isinstance(number, int) else 1 << 62,
        header.attributes.get("SOPInstanceUID", ""),
        header.path or "",
    )


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _spec_of(array: Any) -> ArraySpec:
    """The ArraySpec of an existing zarr array."""
    shape = array.shape
    sharding = array.metadata.codecs[0]
    chunk = sharding.chunk_shape
    shard = array.metadata.chunk_grid.chunk_shape
    tile = chunk[1] if (chunk[1], chunk[2]) != (shape[1], shape[2]) else None
    return ArraySpec(
        shape[1],
        shape[2],
        shape[3] if len(shape) > 3 else 1,
        np.dtype(array.dtype),
        None,
        (),
        shard[0],
        tile,
    )


def _blosc(array: Any) -> numcodecs.Blosc:
    """The numcodecs Blosc that encodes chunks as the array's BloscCodec does."""
    blosc = array.metadata.codecs[0].codecs[1]
    shuffle = {
        "noshuffle": numcodecs.Blosc.NOSHUFFLE,
        "shuffle": numcodecs.Blosc.SHUFFLE,
        "bitshuffle": numcodecs.Blosc.BITSHUFFLE,
    }[blosc.shuffle.value]
    return numcodecs.Blosc(
        cname=blosc.cname.value, clevel=blosc.clevel, shuffle=shuffle, blocksize=blosc.blocksize
    )


def _row(prepared: Prepared, pixels: dict | None, stored: int) -> dict[str, Any]:
    """The index row of a newly archived instance."""
    header = prepared.header
    # Scanner values are plain str, int, float and lists of them: JSON as they are.
    row: dict[str, Any] = dict(header.attributes)
    row |= {
        "source_path": prepared.path,
        "source_sha256": prepared.sha256,
        "file_size": prepared.size,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "little_endian": header.little_endian,
        "pixels": pixels,
        "pixel_keyword": header.pixel.keyword if header.pixel else None,
        "pixel_vr": header.pixel.vr if header.pixel else None,
        "pixel_storage": prepared.storage,
        "transcoded": prepared.transcoded,
        "color_conversion": prepared.pass_through.color_conversion
        if prepared.pass_through is not None
        else "none",
        "frame_hashes": prepared.frame_hashes,
        "pixel_hash": instance_pixel_hash(prepared.frame_hashes),
        "raw_pixel_bytes": prepared.raw_pixel_bytes,
        "stored_bytes": stored,
        "duplicates": [],
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return row
