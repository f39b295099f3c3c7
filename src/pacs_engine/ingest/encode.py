"""Encode one part of a series into shards and a header pack, without committing it.

This is the work an ingest worker does, in any process (a local pool worker, a
Dask worker, or the ingesting process itself): read the part's inputs, prepare
them, decide duplicates and conflicts against committed rows, write whole shards
and one pack file durably, and hand back the rows for the orchestrator to commit.
Parts of one series start on distinct shard boundaries, so no two parts ever
write the same shard file; nothing a part writes is reachable before its commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.archive.blobs import HeaderBlob, pack_blobs, rows_sidecar
from pacs_engine.archive.format import MARKER, read_config
from pacs_engine.archive.pixel_store import (
    DEFAULT_TILE,
    READ_OPTIMISED,
    ArraySpec,
    PixelStore,
    compress,
    decode_frame,
    encode_chunk,
    split_tiles,
)
from pacs_engine.archive.prepare import (
    MAX_FRAME_BYTES,
    Prepared,
    PrepareError,
    frame_hash,
    hash_kind,
    instance_pixel_hash,
    prepare,
)
from pacs_engine.archive.quarantine import HEAD_BYTES, NOT_DICOM, Quarantine
from pacs_engine.archive.report import Outcome
from pacs_engine.archive.versions import PENDING, kept_sha256s, version_rows, with_version
from pacs_engine.codecs import CodecError, choose_codec
from pacs_engine.codecs.blosc import Blosc, general_blosc
from pacs_engine.codecs.registry import ARCHIVE_BY_NAME
from pacs_engine.errors import ScanError
from pacs_engine.index import Index
from pacs_engine.index.rows import Duplicate, PixelRef, Row
from pacs_engine.ingest.inputs import (
    DEFAULT_POLICY,
    InputError,
    InputPolicy,
    InputRef,
    InputTooLarge,
    Readahead,
    archived_row,
    quarantine_record,
    read_chunks,
    read_input,
)
from pacs_engine.scanning import scan
from pacs_engine.stages import Times, stage
from pacs_engine.storage import DeferredWrites, fsync_dirs, write_atomic


@dataclass(frozen=True)
class Checks:
    """What ingest decodes before it commits a part."""

    # Decode compressed frames kept as their original bitstream, hashing their pixels
    # and quarantining files whose frames do not decode. Off ("trust the bitstreams"),
    # they are stored byte for byte undecoded and only `verify` decodes them.
    decode_bitstreams: bool = True
    # Decode every frame encoded with the archive codec again and compare it.
    recheck_encoded: bool = False
    # How inputs are walked, read (the size limit) and kept in the quarantine.
    inputs: InputPolicy = DEFAULT_POLICY
    # Quarantine compressed frames that would decode to more bytes than this (decoders
    # allocate what a file declares).
    max_frame_bytes: int = MAX_FRAME_BYTES


#: Compressors after a pass-through codec, where they pay: PackBits leaves much for zstd
#: (the corpus's RLE files: 1.05-1.5x smaller on real images, 1.25x in all; 1.26x on
#: synthetic CT), while JPEG, JPEG-LS and JPEG 2000 streams are entropy-coded already.
#: Level 1: 2-2.3x the speed of level 3 on those bitstreams, within 0.5 % of its ratio.
BITSTREAM_COMPRESSORS = {"pacs_engine.dicom_rle": (Blosc("zstd", 1, "noshuffle", 1),)}
#: Attributes two versions of one instance must share: where the archive keeps it (its
#: study and series) and the shape of its pixels (the pixel hash covers only their bytes).
COMPARED_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "PixelRepresentation",
)
#: A codec choice costs at most about 1 / CHOICE_SHARE of encoding the frames it is for
#: (its three candidates encode the sample, JPEG XL at half JPEG-LS's speed: ~3 frames).
CHOICE_SHARE = 4
#: A large series' choice is judged on a central 256 x 256: about one 512 x 512 frame's
#: encoding where the whole frame cost three or four (0.114 -> 0.064 s of choices on the
#: corpus set), and the same codec for every series of the corpus set and the synth set.
MIN_CHOICE_PIXELS, MAX_CHOICE_PIXELS = 64 * 64, 256 * 256
_CONFLICT = "conflict: same SOP Instance UID as an archived instance, but "
#: What an absent attribute of COMPARED_KEYWORDS means (DICOM's defaults).
_ABSENT = {"NumberOfFrames": 1, "SamplesPerPixel": 1, "PixelRepresentation": 0}


@dataclass(frozen=True)
class Part:
    """Inputs of one series to encode together, and the frames they may use in its arrays."""

    series_uid: str
    base: int  # first frame in every array of the series; a multiple of the shard size
    span: int  # frames from `base` the part may fill; a multiple of the shard size
    keys: tuple[str, ...]  # input keys, in instance order; one SOP Instance UID never spans parts
    run: str = PENDING  # the ingest run, written into its rows (and their rows file)
    # When its rows file was written, for rebuild_index (the later row wins; a delete takes
    # the rows before it): the main process's clock, made when the part is, not the
    # encoding worker's, which may be on another host and lag.
    written_ns: int = field(default_factory=time.time_ns)


@dataclass
class PartResult:
    """What a part produced: rows to commit, new versions and duplicates of committed rows,
    one outcome per input."""

    part: Part
    rows: list[Row] = field(default_factory=list)
    # (SOP Instance UID, the new version's row), in the order received
    versions: list[tuple[str, Row]] = field(default_factory=list)
    duplicates: list[tuple[str, Duplicate]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    arrays: dict[str, int] = field(default_factory=dict)  # array path -> frames end written
    worker: int = 0  # the process id of the worker that encoded it
    stages: Times = field(default_factory=dict)  # its CPU and wall seconds per stage
    encode_started: float | None = None  # when its first frame's encode began (epoch seconds)


class _ArrayWriter:
    """Frames appended to one array by one part: whole shards, from the part's base."""

    def __init__(self, store: PixelStore, path: str, part: Part, dirs: set[Path]) -> None:
        self.store, self.path, self.dirs = store, path, dirs
        self.written = self.next = part.base
        self.limit = part.base + part.span
        self.pending: list[bytes] = []
        self.per_shard, self.per_frame = store.grid(path)

    def room_for(self, frames: int) -> bool:
        """True when `frames` more frames stay inside the part's span."""
        return self.next + frames <= self.limit

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
            with stage("write"):
                self.store.write_frames(self.path, self.written, self.pending[:count], self.dirs)
            del self.pending[:count]
            self.written = until


@dataclass
class _PartState:
    """What the encoding of one part has gathered so far."""

    part: Part
    checks: Checks
    writers: dict[str, _ArrayWriter] = field(default_factory=dict)
    dirs: set[Path] = field(default_factory=set)  # folders whose new files must be durable
    # The committed row of each SOP Instance UID met, as the part first found it (or None)
    committed: dict[str, Row | None] = field(default_factory=dict)
    kept: dict[str, list[Row]] = field(default_factory=dict)  # versions received
    duplicates: dict[str, list[Duplicate]] = field(default_factory=dict)
    undecoded: dict[str, Prepared] = field(default_factory=dict)  # a version without hashes
    digests: dict[str, str] = field(default_factory=dict)  # bitstreams written, by file sha256
    # Header blobs to pack, with the row and outcome whose stored bytes count them
    blobs: list[tuple[Row, HeaderBlob, Outcome]] = field(default_factory=list)
    # Codecs chosen for new native arrays, by (modality, array key): the batch's, shared by
    # its parts (`PartEncoder.encode`)
    choices: dict[tuple, tuple] = field(default_factory=dict)
    encode_started: float | None = None  # when its first frame's encode began (epoch seconds)

    def view(self, sop: str) -> Row | None:
        """The instance as it stands: its committed row with the part's versions of it."""
        row = self.committed.get(sop)
        for received in self.kept.get(sop, []):
            row = received if row is None else with_version(row, received)
        return row


class PartEncoder:
    """Encodes parts for one archive; one per process, reused across parts."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config = read_config(self.root / MARKER)
        self.index = Index.open(self.root / "index", readonly=True)
        self.pixels = PixelStore(self.root / "pixels")
        self.quarantine = Quarantine(self.root / "quarantine")

    def close(self) -> None:
        """Release the index."""
        self.index.close()

    def encode(
        self,
        part: Part,
        checks: Checks = Checks(),
        choices: dict[tuple, tuple] | None = None,
        writes: DeferredWrites | None = None,
        readahead: Readahead | None = None,
    ) -> PartResult:
        """Prepare, check and write every input of the part; commits nothing.

        An input that cannot be archived is quarantined and its outcome says why;
        a failure to write the archive (a full disk) raises, and the part is lost
        as a whole: its files are unreachable until a later part rewrites them.
        `choices` keeps the codecs chosen for new arrays of native frames, by
        modality and array key, for the next parts of a batch to use unchosen.
        With `writes`, the part's files are left there for the caller to make
        durable (`fsync_dirs`), with those of other parts, before any is committed.
        `readahead` (over the part's keys, or a batch's) starts the reads of the next
        inputs as each is worked on.
        """
        # Array specs are read afresh per part: since the last part, an array no row used
        # may have been removed by a run's tidy and created again with another codec.
        self.pixels = PixelStore(self.root / "pixels")
        state = _PartState(
            part,
            checks,
            dirs=set() if writes is None else writes,
            choices={} if choices is None else choices,
        )
        result = PartResult(part)
        for key in part.keys:
            if readahead is not None:
                with stage("read"):
                    readahead.step()
            result.outcomes.append(self._encode_one(key, state))
        result.encode_started = state.encode_started
        for path, writer in state.writers.items():
            writer.flush()
            result.arrays[path] = writer.next
        if state.blobs:
            self._write_blobs(part, state.blobs, state.dirs)
        if writes is None:
            fsync_dirs(state.dirs)
        for sop, received in state.kept.items():
            if state.committed[sop] is not None:  # versions of a committed row: merged at commit
                result.versions += [(sop, row) for row in received]
                continue
            row = received[0]
            for later in received[1:]:
                row = with_version(row, later)
            for duplicate in state.duplicates.pop(sop, []):
                row = with_duplicate(row, duplicate)
            result.rows.append(row)
        result.duplicates = [(sop, d) for sop, found in state.duplicates.items() for d in found]
        return result

    def _encode_one(self, key: str, state: _PartState) -> Outcome:
        try:
            ref = InputRef.from_key(key)
            with stage("read"):
                data = read_input(ref, state.checks.inputs)
        except InputError as error:
            return self.reject(key, None, str(error), state.checks.inputs)
        try:
            with stage("scan"):
                header = scan(data)
        except ScanError as error:
            return self.reject(key, data, str(error.reason), state.checks.inputs)
        if header.get("SeriesInstanceUID") != state.part.series_uid:
            return self.reject(
                key, data, "the file changed since it was scanned", state.checks.inputs
            )
        try:
            with stage("prepare"):
                prepared = prepare(
                    key,
                    data,
                    header,
                    self.config.get("transcode", False),
                    state.checks.decode_bitstreams,
                    state.checks.max_frame_bytes,
                    state.checks.inputs.max_bytes,
                )
        except PrepareError as error:
            return self.reject(key, data, str(error), state.checks.inputs)
        except Exception as error:  # a parser's or decoder's failure on this file's bytes
            # This file's rejection, not the run's end (every resume met it again).
            kind = type(error)
            name = kind.__qualname__
            name = name if kind.__module__ == "builtins" else f"{kind.__module__}.{name}"
            why = f"cannot be read ({name}: {error})"
            return self.reject(key, data, why, state.checks.inputs)
        sop = prepared.sop_instance_uid
        if sop not in state.committed:
            state.committed[sop] = self.index.get(sop)
        prior = state.view(sop)
        if prior is not None:
            if prepared.sha256 in kept_sha256s(prior):  # byte-identical: nothing new to keep
                state.duplicates.setdefault(sop, []).append(
                    {"path": key, "sha256": prepared.sha256}
                )
                return Outcome(key, "duplicate", prepared.size, sop=sop)
            hashes: dict[str, str | None] = {}

            def same_pixels() -> bool:
                in_part = state.undecoded.get(sop) if prior.get("pixel_hash") is None else None
                hashes["archived"] = archived = (
                    _pixel_hash_or_none(in_part)
                    if in_part is not None
                    else stored_pixel_hash(self.pixels, prior)
                )
                # Of the archived hash's kind (rows written before BLAKE3 have BLAKE2b's).
                hashes["new"] = prepared.pixel_hash(hash_kind(archived))  # PrepareError: bad file
                return archived == hashes["new"]

            try:
                reason = conflict_reason(prior, header.attributes, same_pixels)
            except PrepareError as error:  # its bitstreams do not decode
                return self.reject(key, data, str(error), state.checks.inputs)
            if reason is not None:
                quarantine_conflict(
                    self.quarantine, key, data, prepared.sha256, reason, prior, sop, hashes
                )
                return Outcome(key, "conflict", prepared.size, reason=reason, sop=sop)
        try:
            pixels, stored = self._place_pixels(prepared, prior, state)
        except (CodecError, ValueError) as error:
            return self.reject(key, data, f"cannot store the pixels: {error}", state.checks.inputs)
        with stage("header"):
            row = new_row(prepared, pixels, stored, state.part.run)  # + its blob: packed later
        state.kept.setdefault(sop, []).append(row)
        with contextlib.suppress(InputError):  # provenance only: a vanished source costs it
            source = archived_row(ref)
            if source is not None and source.get("duplicates"):
                # Copied from another archive: the files it found identical. Kept apart from
                # `duplicates`, which lists this archive's own inputs.
                row["source_duplicates"] = source["duplicates"]
        if prepared.frame_hashes is None:
            state.undecoded.setdefault(sop, prepared)
        outcome = Outcome(
            key,
            "archived",
            prepared.size,
            raw=prepared.raw_pixel_bytes if stored else 0,
            stored=stored,
            sop=sop,
            undecoded=prepared.frame_hashes is None,
            version=prior is not None,
            not_verified=prepared.not_verified,
        )
        state.blobs.append((row, prepared.blob, outcome))
        return outcome

    def _place_pixels(
        self, prepared: Prepared, prior: Row | None, state: _PartState
    ) -> tuple[PixelRef | None, int]:
        """The pixel reference of an instance being archived and the pixel bytes it adds.

        A new version of an archived instance uses the pixels of a kept version when
        they rebuild its file too; otherwise its own frames are written.
        """
        if prior is not None:
            shared = self._shared_pixels(prepared, prior, state)
            if shared is not None:
                return shared, 0
        pixels, stored = self._write_pixels(prepared, state)
        if prepared.storage == "bitstream":
            state.digests[prepared.sha256] = _bitstreams_digest(prepared.bitstreams)
        return pixels, stored

    def _shared_pixels(self, prepared: Prepared, prior: Row, state: _PartState) -> PixelRef | None:
        """The pixel reference of a kept version whose stored pixels are this file's (or None).

        Versions have the same decoded pixels (or they would conflict). Frames stored
        with the archive codec in the array this file's frames would go to are then
        its frames; original bitstreams are its own only when byte-identical.
        """
        if prepared.storage == "none":
            return None
        path = self.pixels.array_path(state.part.series_uid, self._array_key(prepared))
        for version in reversed(version_rows(prior)):
            reference = version.get("pixels")
            if not reference or reference["array"] != path:
                continue
            if version.get("pixel_storage") != prepared.storage:
                continue
            if prepared.storage == "native":
                return reference
            if self._stored_digest(version, state) == _bitstreams_digest(prepared.bitstreams):
                return reference
        return None

    def _stored_digest(self, version: Row, state: _PartState) -> str | None:
        """The digest of a kept version's original bitstreams (None: they cannot be read)."""
        digest = state.digests.get(version["source_sha256"])
        if digest is not None:  # written by this part: maybe not on disk yet
            return digest
        reference = version["pixels"]
        if reference is None:  # no pixels archived: nothing to share
            return None
        first = reference["first_frame"]
        try:
            stored = self.pixels.read_bitstreams(
                reference["array"], first, first + reference["frames"]
            )
        except Exception:  # damaged: the new version keeps its own copy
            return None
        return _bitstreams_digest(stored)

    def reject(self, key: str, data: bytes | None, reason: str, policy: InputPolicy) -> Outcome:
        """Quarantine one input with its reason (reading it, by the run's `policy`, if the
        caller has not)."""
        return quarantine_input(self.quarantine, key, data, reason, policy)

    def _write_pixels(self, prepared: Prepared, state: _PartState) -> tuple[PixelRef | None, int]:
        """Queue the instance's frames on its array; returns its pixel reference and bytes."""
        if prepared.storage == "none":
            return None, 0
        part, writers = state.part, state.writers
        key = self._array_key(prepared)
        path = self.pixels.array_path(part.series_uid, key)
        chosen = None
        if path not in writers:
            spec, attributes = self._array_for(prepared)
            frames = len(part.keys) * prepared.frame_count  # about what the part brings
            chosen = self._ensure_array(
                part.series_uid, key, spec, attributes, prepared, frames, state.choices
            )
            writers[path] = _ArrayWriter(self.pixels, path, part, state.dirs)
        count = prepared.frame_count
        if not writers[path].room_for(count):
            raise ValueError(f"{count} frames, more than Number of Frames said when it was scanned")
        if state.encode_started is None:  # the report's first_encode_seconds
            state.encode_started = time.time()
        with stage("encode"):
            if prepared.storage == "bitstream":
                spec = self.pixels.spec(path)  # as created, maybe by an older version
                encode = prepared.pass_through.encode_bitstream
                chunks = [compress(spec, encode(b)) for b in prepared.bitstreams]
            else:
                chunks = self._encode_native(path, prepared, state.checks.recheck_encoded, chosen)
        first = writers[path].append(chunks)
        reference: PixelRef = {"array": path, "first_frame": first, "frames": count}
        return reference, sum(len(c) for c in chunks)

    def _ensure_array(
        self,
        series_uid: str,
        key: str,
        spec: ArraySpec,
        attributes: dict[str, Any],
        prepared: Prepared,
        frames: int,
        choices: dict[tuple, tuple],
    ) -> bytes | None:
        """Create the array once, even when parts of its series run in several processes.

        The first part to get here picks the codec for native frames (from its
        first frame: choosing encodes it several times, so only here), or takes the
        one its batch chose (`choices`) for frames of the same modality and array key (a small
        series would pay a choice about as dear as its encoding); the others encode
        with the one in the array's metadata, so every chunk of an array has the
        same codec. A choice for a few frames (`frames`, fewer than `CHOICE_SHARE`)
        is judged on a central part of the sample (`choice_pixels`), so that it costs
        about as much as encoding them rather than three times more.

        Returns the chosen codec's encoding of the instance's first frame when the choice
        judged that frame whole (`choose_codec`'s `encoded`), else None.
        """
        path = self.pixels.array_path(series_uid, key)
        if self.pixels.exists(path):
            return None
        locks = self.root / ".locks"
        locks.mkdir(exist_ok=True)
        with (
            stage("arrays"),
            open(locks / f"{_digest(path)}.lock", "a+") as lock,  # one lock per array
        ):
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.pixels.exists(path):
                return None
            encoded: list[bytes] = []
            if prepared.storage == "native":
                kind = (prepared.header.get("Modality"), key)
                if kind not in choices:
                    with stage("choose"):
                        sample = prepared.native_frames[0]
                        choices[kind] = self._native_codec(sample, frames, encoded)
                codec, compressors = choices[kind]
                spec = dataclasses.replace(spec, codec=codec, compressors=compressors)
            self.pixels.ensure_array(series_uid, key, spec, attributes)
        return encoded[0] if encoded else None

    def _array_key(self, prepared: Prepared) -> str:
        """The key of the array the instance's frames go to (every instance needs it; only
        a new array its spec and attributes, `_array_for`)."""
        layout = prepared.pixel_layout
        dtype, storage = _frames_kind(prepared)
        return (
            f"{layout.rows}x{layout.columns}x{layout.samples}_{dtype.str[1:]}"
            f"_b{layout.bits_stored}_{layout.photometric or 'none'}_{storage}"
        )

    def _array_for(self, prepared: Prepared) -> tuple[ArraySpec, dict[str, Any]]:
        """The spec and attributes of a new array for the instance's frames (`_array_key`).

        For native frames the spec has no codec yet: `_ensure_array` picks it.
        """
        layout = prepared.pixel_layout
        dtype, storage = _frames_kind(prepared)
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
            attributes |= {
                "storage": "original bitstream",
                "transfer_syntax_uid": ts,
                "color_conversion": codec.color_conversion,
            }
            compressors: tuple = BITSTREAM_COMPRESSORS.get(codec.codec_name, ())
        else:
            codec, compressors = None, ()
            attributes |= {"storage": "archive codec", "source_transfer_syntax_uid": ts}
            if storage == NATIVE_RGB:
                attributes["color_conversion"] = prepared.pass_through.color_conversion
            if layout.rows * layout.columns > self.config["max_chunk_pixels"]:
                tile = self.config.get("tile", DEFAULT_TILE)
        spec = ArraySpec(
            layout.rows,
            layout.columns,
            layout.samples,
            dtype,
            codec,
            compressors,
            self.config["frames_per_shard"],
            tile,
        )
        return spec, attributes

    def _native_codec(
        self, sample: np.ndarray, frames: int, encoded: list[bytes]
    ) -> tuple[Any, tuple]:
        """The archive codec for a new array of `frames` native frames like `sample` (and
        in `encoded`, the sample encoded with it, when the choice encoded it whole)."""
        import numpy as np

        name = self.config["codec"]
        # No image codec holds more than 16 bits: one that took a sample of small 32-bit
        # values refused the array's later frames (each quarantined).
        if sample.dtype.itemsize <= 2:
            try:
                if name == "auto":
                    pixels = choice_pixels(sample, frames)
                    return choose_codec(sample, max_pixels=pixels, encoded=encoded), ()
                if name in ARCHIVE_BY_NAME:
                    codec = ARCHIVE_BY_NAME[name]()
                    codec.encode_frame(np.ascontiguousarray(sample[:8, :8]))
                    return codec, ()
            except CodecError:
                pass  # e.g. float pixels: no image codec takes them
        if name in READ_OPTIMISED:
            return None, READ_OPTIMISED[name](sample.dtype)
        compressor = general_blosc(sample.dtype)
        return None, (compressor,)

    def _encode_native(
        self, path: str, prepared: Prepared, recheck: bool, chosen: bytes | None = None
    ) -> list[bytes]:
        """Encode the frames with the array's codec (as zarr would), tile by tile.

        `chosen`: the first frame as the codec choice encoded it whole with the array's
        codec, its chunk as it is (a chunk is the codec's bytes when the array has no
        compressors and one tile a frame): a small series' choice then costs its trials
        but not that frame's encode again.
        """
        import numpy as np

        spec = self.pixels.spec(path)
        hashes = prepared.frame_hashes if recheck else None
        if recheck and hashes is None:  # native frames are hashed when prepared
            raise CodecError("the frames have no hashes to recheck their encoding against")
        whole = not spec.compressors and spec.tiles_per_frame == 1
        first = chosen if whole else None
        chunks = []
        for index, frame in enumerate(prepared.native_frames):
            if index == 0 and first is not None:
                chunks.append(first)
            else:
                chunks += [encode_chunk(spec, tile) for tile in split_tiles(frame, spec)]
            if hashes is not None:
                decoded = np.empty(spec.frame_shape, spec.dtype)
                decode_frame(spec, chunks[-spec.tiles_per_frame :], decoded)
                if frame_hash(decoded) != hashes[index]:
                    raise CodecError(f"frame {index} does not decode to its source pixels")
        return chunks

    def _write_blobs(
        self, part: Part, blobs: list[tuple[Row, HeaderBlob, Outcome]], dirs: set[Path]
    ) -> None:
        """Write the part's header blobs as one pack file, point their rows at them and count
        their bytes in the rows' and outcomes' stored bytes."""
        with stage("header"):
            # Compressed here, one after another, rather than each between two instances'
            # frame encodes: there zstd ran on caches the codec had just filled, ~6x slower
            # (about 160 us a blob instead of 25 on the synth set's 512 x 512 frames).
            packed = [blob.to_bytes() for _, blob, _ in blobs]
            rows = [row for row, _, _ in blobs]
            for row, data in zip(rows, packed, strict=True):
                if row.get("transcoded"):
                    # No original file's sha256 proves its header: its blob's own does
                    # (checked by every read of it, export and verify among them).
                    row["header_sha256"] = hashlib.sha256(data).hexdigest()
            name, sidecar = pack_blobs(part.series_uid, rows, packed, part.written_ns)
            for row, _, outcome in blobs:
                outcome.stored = row["stored_bytes"]  # its pixels' and now its blob's
            write_atomic(self.root / name, packed, dirs)
            # What rebuild_index needs beyond the blobs (docs/archive.md).
            write_atomic(self.root / rows_sidecar(name), sidecar, dirs)


def choice_pixels(sample: np.ndarray, frames: int) -> int:
    """Pixels of the sample to choose a codec for `frames` frames like it on.

    Choosing encodes the sample with every candidate (about `CHOICE_SHARE` frames'
    worth of encoding): for fewer frames, a central part of it, at least
    `MIN_CHOICE_PIXELS` and at most `MAX_CHOICE_PIXELS` pixels.
    """
    pixels = sample.shape[0] * sample.shape[1] * max(frames, 1) // CHOICE_SHARE
    return max(MIN_CHOICE_PIXELS, min(MAX_CHOICE_PIXELS, pixels))


def conflict_reason(
    prior: Row, attributes: Mapping[str, Any], same_pixels: Callable[[], bool]
) -> str | None:
    """Why a file with an archived SOP Instance UID (other bytes) is a conflict; None for a
    new version of the instance.

    A version is in the same study and series, with pixels of the same shape and the
    same decoded values; any other attribute may differ. `same_pixels` may decode,
    so it is asked last.
    """
    differs = [k for k in COMPARED_KEYWORDS if _compared(attributes, k) != _compared(prior, k)]
    if differs:
        return f"{_CONFLICT}different {', '.join(differs)}"
    return None if same_pixels() else f"{_CONFLICT}different pixels"


def _compared(attributes: Mapping[str, Any], keyword: str) -> Any:
    """An attribute as versions are compared: absent or empty is DICOM's default."""
    value = attributes.get(keyword)
    return _ABSENT.get(keyword) if value in (None, "", []) else value


def _pixel_hash_or_none(prepared: Prepared) -> str | None:
    """The pixel hash of an instance being archived; None when its bitstreams do not decode."""
    try:
        return prepared.pixel_hash()
    except PrepareError:
        return None


def stored_pixel_hash(pixels: PixelStore, row: Row) -> str | None:
    """An indexed instance's pixel hash, recorded or from its decoded frames (None: undecodable).

    Rows of original bitstreams stored undecoded have none recorded.
    """
    if row.get("pixel_hash") is not None:
        return row["pixel_hash"]
    reference = row.get("pixels")
    if not reference:
        return instance_pixel_hash([])
    first = reference["first_frame"]
    try:
        frames = pixels.read_frames(reference["array"], range(first, first + reference["frames"]))
    except Exception:  # a codec's failure on bad data can be any exception
        return None
    return instance_pixel_hash([frame_hash(f) for f in frames])


def quarantine_input(
    quarantine: Quarantine,
    key: str,
    data: bytes | None,
    reason: str,
    policy: InputPolicy = DEFAULT_POLICY,
) -> Outcome:
    """Quarantine one input with its reason (reading it if the caller has not).

    Whole bytes are kept, but of an input over the policy's size limit only its head
    (`Quarantine.keep_head`), read a chunk at a time, and of one that is not DICOM
    (unless `policy.keep_non_dicom`) none: its path, size and sha256; of an input that
    cannot be read, a record without bytes.
    """
    reason = recorded_reason(key, reason)
    details = source_details(key)
    not_dicom = reason.startswith(NOT_DICOM)
    whole = policy.keep_non_dicom or not not_dicom
    ref = InputRef.from_key(key)
    try:
        if data is None and whole:
            try:
                data = read_input(ref, policy)
            except InputTooLarge as error:
                reason, whole = _joined(reason, error.reason), False
        if data is not None and whole:
            size = quarantine.keep(key, data, reason, **details)
        else:
            chunks = [data] if data is not None else read_chunks(ref, policy)
            size = quarantine.keep_head(
                key, chunks, reason, 0 if not_dicom else HEAD_BYTES, **details
            )
    except InputError as error:
        reason = _joined(reason, error.reason)
        quarantine.keep_unread(key, reason, **details)
        size = 0
    return Outcome(key, "quarantined", size, reason=reason)


def recorded_reason(key: str, reason: str) -> str:
    """A quarantine reason as recorded: without the input's name (the record names it)."""
    return reason.removeprefix(f"{key}: ")


def _joined(reason: str, more: str) -> str:
    return reason if more in reason else f"{reason}; {more}"


def source_details(key: str) -> dict[str, Any]:
    """For a file another archive had quarantined, its record there (its whole story)."""
    with contextlib.suppress(InputError, ValueError):  # the record is a courtesy: never fatal
        source = quarantine_record(InputRef.from_key(key))
        if source is not None:
            return {"source_record": source}
    return {}


def with_duplicate(row: Row, duplicate: Duplicate) -> Row:
    """A copy of `row` that also lists `duplicate` (path and sha256 of the same instance)."""
    return {**row, "duplicates": [*row["duplicates"], duplicate]}


def quarantine_conflict(
    quarantine: Quarantine,
    key: str,
    data: bytes | None,
    sha256: str,
    reason: str,
    prior: Mapping[str, Any],
    sop: str,
    hashes: dict[str, str | None],
) -> None:
    """Keep a conflicting input with what it conflicts with.

    `hashes` holds the pixel hashes computed to compare them ("archived", "new"), if any.
    """
    quarantine.add(
        key,
        data,
        sha256,
        reason,
        sop_instance_uid=sop,
        archived_source=prior.get("source_path"),
        archived_sha256=prior.get("source_sha256"),
        archived_pixel_hash=hashes.get("archived", prior.get("pixel_hash")),
        pixel_hash=hashes.get("new"),
        **source_details(key),
    )


#: The storage part of the array key of native frames decoded from YBR to RGB (as
#: pixel_array decodes them), kept apart from those stored as they came.
NATIVE_RGB = "native-rgb"


def _frames_kind(prepared: Prepared) -> tuple[np.dtype, str]:
    """The dtype of the instance's frames in the archive, and how they are stored: "native",
    `NATIVE_RGB`, or the original bitstream's codec and a digest of its configuration."""
    import numpy as np

    if prepared.storage == "bitstream":
        codec = prepared.pass_through
        config = json.dumps(codec.to_dict(), sort_keys=True)
        return np.dtype(codec.pixel_dtype), f"{codec.codec_name.split('.')[-1]}-{_digest(config)}"
    if prepared.transcoded and prepared.pass_through.color_conversion != "none":
        return prepared.native_frames.dtype, NATIVE_RGB
    return prepared.native_frames.dtype, "native"


def new_row(prepared: Prepared, pixels: PixelRef | None, stored: int, run: str = PENDING) -> Row:
    """The index row of a newly archived instance."""
    header = prepared.header
    # Scanner values are plain str, int, float and lists of them: JSON as they are. The
    # mapping's `copy()` converts each once; `dict()` would then read each again through it.
    row: dict[str, Any] = header.attributes.copy()
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
        "pixel_hash": None
        if prepared.frame_hashes is None
        else instance_pixel_hash(prepared.frame_hashes),
        "raw_pixel_bytes": prepared.raw_pixel_bytes,
        "stored_bytes": stored,
        **({"not_verified": prepared.not_verified} if prepared.not_verified else {}),
        "duplicates": [],
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": run,  # PENDING: the commit names the run
    }
    return cast(Row, row)


def _bitstreams_digest(bitstreams: list[bytes]) -> str:
    """One sha256 for a list of bitstreams (their lengths included: no two lists share it)."""
    digest = hashlib.sha256()
    for bitstream in bitstreams:
        digest.update(len(bitstream).to_bytes(8, "little"))
        digest.update(bitstream)
    return digest.hexdigest()


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]
