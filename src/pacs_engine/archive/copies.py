"""Write instances whose pixels are another archive's stored chunks, copied as they are.

A copy made from an archive (a de-identified research archive, pacs_engine.deid) gets
new header blobs and rows, and the SAME chunk bytes as its source: nothing is decoded
or encoded. Chunks are copied into shards of the copy's own arrays (whose zarr.json
is the source array's, codec included, but for its chunk keys: `CHUNK_KEYS`), never
hard-linked: each archive's shards are written, fsynced and checked on their own, and
damage to one cannot reach the other.

A part (of one series or several) is written in one round of durable writes: its shards,
the zarr.json of each array it wrote (written once, with its new frame count), each
series' header pack and its rows file under its pending name (`blobs.PENDING_SUFFIX`);
then the rows are committed in one index transaction; then the rows files are renamed to
their `.rows` names, which is what marks the part committed for a rebuild of the index
(it reads only those: docs/archive.md). A part that dies before its commit is invisible,
to the index and to a rebuild; the caller tidies the archive (`pacs_engine.ingest.tidy`)
before a run, which removes its files, fits the arrays to their committed frames, and
renames the pending rows files of a part killed after its commit.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacs_engine.archive.blobs import (
    ENCAPSULATED,
    NATIVE,
    WHOLE,
    HeaderBlob,
    mark_committed,
    pack_blobs,
    pending_sidecar,
)
from pacs_engine.archive.pixel_store import PixelStore, decompress
from pacs_engine.archive.prepare import rebuild_file
from pacs_engine.codecs.sharding import Chunk
from pacs_engine.index.rows import PixelRef, Row
from pacs_engine.stages import stage
from pacs_engine.storage import write_together

if TYPE_CHECKING:
    from pacs_engine.archive.archive import Archive

#: The chunk keys of a copy's arrays: each shard a file beside the array's zarr.json
#: (`c.<shard>.0.0`) rather than in folders of its own (`c/<shard>/0/0`). Zarr reads
#: either; 125 of the 237 folders a copy of the corpus's CT and MR made were chunk
#: folders, and each new folder cost it about 0.2 ms (docs/deidentify.md, Performance).
CHUNK_KEYS = {"name": "default", "configuration": {"separator": "."}}


@dataclass
class CopiedInstance:
    """One instance to write: its row (without `header` and `pixels`), its header blob,
    and its stored chunks as the source archive keeps them."""

    row: Row
    blob: HeaderBlob
    source_array: str | None  # the source's array path; None: no pixel data
    chunks: Sequence[Chunk]
    frames: int


def read_stored_many(
    source: Archive, rows: list[Row]
) -> list[tuple[str | None, Sequence[Chunk], int]]:
    """(array path, stored chunks as they are (views: no copy of each), frames) of each
    row, undecoded, with one read per run of rows whose frames follow each other in one
    array (a series' rows usually do): a shard's index is read once."""
    out: list[tuple[str | None, Sequence[Chunk], int]] = []
    run: list[PixelRef] = []  # frames that follow each other in one array

    def flush() -> None:
        if run:
            array, first = run[0]["array"], run[0]["first_frame"]
            chunks = source.pixels.chunk_views(array, first, first + sum(r["frames"] for r in run))
            per_frame, at = source.pixels.grid(array)[1], 0
            for reference in run:
                count = reference["frames"] * per_frame
                out.append((array, chunks[at : at + count], reference["frames"]))
                at += count
            run.clear()

    for row in rows:
        pixels = row.get("pixels")
        if not pixels:
            flush()
            out.append((None, [], 0))
            continue
        if run:
            last = run[-1]
            end = last["first_frame"] + last["frames"]
            if pixels["array"] != last["array"] or pixels["first_frame"] != end:
                flush()
        run.append(pixels)
    flush()
    return out


def file_sha256(
    source: PixelStore, instance: CopiedInstance, little_endian: bool, vr: str | None
) -> str:
    """The sha256 of the file the copy's export rebuilds, when it can be had without
    decoding a pixel; "" for native frames encoded with the archive codec (and
    transcoded instances), whose file bytes only a decode gives: their frame hashes and
    the blob's own sha256 (`header_sha256`) are then what export and verify check."""
    blob, row = instance.blob, instance.row
    if row.get("transcoded"):
        return ""
    if blob.kind == WHOLE or (blob.kind == NATIVE and blob.native_value is not None):
        data = rebuild_file(blob, None, little_endian, vr, None, None)
    elif blob.kind == ENCAPSULATED and instance.source_array is not None:
        spec = source.spec(instance.source_array)
        bitstreams = [bytes(decompress(spec, c)) for c in instance.chunks]  # zarr's compressor only
        data = rebuild_file(blob, None, little_endian, vr, None, bitstreams)
    else:
        return ""
    return hashlib.sha256(data).hexdigest()


def write_copied_part(
    archive: Archive, source: PixelStore, instances: list[CopiedInstance]
) -> list[Row]:
    """Write and commit one part of copied instances, of one series or several; returns
    its rows.

    The arrays are the source arrays' (same key, same zarr.json but for its chunk keys),
    made in each series' folder of this archive when missing; frames go after the
    array's frame count, which is its committed frames once what a killed run left was
    tidied (ingest.tidy). Each series gets its own header pack; the whole part one commit
    (several small series in one part: fewer fsyncs and transactions).
    """
    pixels = archive.pixels
    created: dict[str, dict[str, Any]] = {}  # the metadata of each array the part creates
    existing: dict[str, dict[str, Any]] = {}  # and of each other it adds to, read once
    by_array: dict[str, list[Chunk]] = {}
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    arrays: dict[tuple[str, str], str] = {}  # this archive's array, by source array and series
    rows: list[Row] = []
    by_series: dict[str, list[CopiedInstance]] = {}
    for instance in instances:
        row = instance.row
        series_uid = row["SeriesInstanceUID"]
        by_series.setdefault(series_uid, []).append(instance)
        if instance.source_array is None:
            row["pixels"] = None
            row["stored_bytes"] = 0
        else:
            mine = (instance.source_array, series_uid)
            if mine not in arrays:
                arrays[mine], meta = _array_for(pixels, source, *mine)
                # Two source arrays of a series can share a key (its folder of today and
                # the one earlier versions gave it): one array here, one zarr.json.
                if meta is not None and arrays[mine] not in starts:
                    created[arrays[mine]] = meta
                    starts[arrays[mine]] = 0
            path = arrays[mine]
            if path not in by_array:
                if path not in starts:
                    existing[path] = pixels.meta(path)
                    starts[path] = existing[path]["shape"][0]  # its frame count (`frames`)
                by_array[path] = []
                ends[path] = starts[path]
            first = ends[path]
            ends[path] += instance.frames
            by_array[path] += instance.chunks
            row["pixels"] = {"array": path, "first_frame": first, "frames": instance.frames}
            row["stored_bytes"] = sum(len(c) for c in instance.chunks)
        rows.append(row)
    # The part's files, synced together (`DeferredWrites`): the same durability, in a
    # fraction of the time the fsyncs one by one take. Each array's zarr.json is written
    # once, with its new frame count: the rows files, not the counts, tell a rebuild of
    # the index which parts committed, and a tidy fits the counts of a part that did not.
    files: list[tuple[Path, bytes | Sequence[Chunk]]] = []
    for path, end in ends.items():
        if path in created:
            files.append(pixels.new_array_file(path, created[path], end))
        else:
            files.append(pixels.frames_file(path, end, existing[path]))
        files += pixels.shard_files(path, starts[path], by_array[path])
    pending: list[Path] = []
    # One stamp for all the part's rows files: a kill midway through their renames leaves
    # some pending, which a rebuild of the index then takes as committed by that of the
    # renamed ones (archive/rebuild.py), not half the part.
    written_ns = time.time_ns()
    for series_uid, members in by_series.items():
        pack, sidecar = _pack_files(
            archive, series_uid, [(i.row, i.blob.to_bytes()) for i in members], written_ns
        )
        files += [pack, sidecar]
        pending.append(sidecar[0])
    write_together(files)
    with stage("commit"):
        archive.index.commit(rows)
    mark_committed(pending)
    return rows


def _array_for(
    pixels: PixelStore, source: PixelStore, source_path: str, series_uid: str
) -> tuple[str, dict[str, Any] | None]:
    """This archive's array for the source array's frames (its key), and the metadata of
    a new one (the source array's), None when it exists."""
    key = source_path.rsplit("/", 1)[-1]
    path = pixels.array_path(series_uid, key)
    if pixels.exists(path):
        return path, None
    meta = json.loads((source.root / source_path / "zarr.json").read_bytes())
    meta["chunk_key_encoding"] = CHUNK_KEYS
    return path, meta


def _pack_files(
    archive: Archive, series_uid: str, blobs: list[tuple[Row, bytes]], written_ns: int
) -> tuple[tuple[Path, bytes | Sequence[Chunk]], tuple[Path, bytes | Sequence[Chunk]]]:
    """The part's header blobs of one series as one pack (its blobs as parts, written one
    after the other: not joined first) and its rows file beside it under its pending name
    (docs/archive.md), stamped `written_ns`; the rows get their `header` reference and
    their blob's bytes in `stored_bytes`, as an ingest's rows do (`blobs.place_blobs`)."""
    for row, blob in blobs:
        row["header_sha256"] = hashlib.sha256(blob).hexdigest()
    data = [blob for _, blob in blobs]
    name, sidecar = pack_blobs(series_uid, [row for row, _ in blobs], data, written_ns)
    return (archive.path / name, data), (archive.path / pending_sidecar(name), sidecar)
