"""The Zarr v3 pixel store: one sharded array per series and frame geometry, shards written whole.

Arrays live at `pixels/<series folder>/<key>` (`storage.series_folder`: the Series
Instance UID when it has DICOM's form, else a digest of it) and are shaped (frames, rows,
columns[, samples]). A chunk is one frame (or one tile of a frame larger than
`max_chunk_pixels`), a shard is `frames_per_shard` frames. Shards are laid out by
`pacs_engine.codecs.shard_parts` from chunks encoded beforehand (or kept as their
original bitstream) and written from those buffers, without a copy into one, with
write + fsync + rename, so a reader never
sees a half-written shard. The array's frame count (its `shape[0]`) is raised
only after the index rows that reference the new frames are committed.

Readers go around zarr: `read_frames` reads the asked-for chunk bytes straight from
the shards (one read per shard and run of frames; each process keeps recently read
shard files open with their checked index) and decodes them with the array's
own codec (`decode_chunk`), the bytes and codec a zarr reader would use, without
zarr's per-call overhead, into one preallocated array, optionally on several threads.
"""

from __future__ import annotations

import json
import math
import os
import sys
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import google_crc32c

from pacs_engine.codecs import CodecError, shard_parts
from pacs_engine.codecs.blosc import Blosc, blosc_decompress, blosc_decompress_into
from pacs_engine.codecs.native import frame_shape
from pacs_engine.codecs.registry import ARCHIVE_BY_NAME, BY_CODEC_NAME
from pacs_engine.codecs.sharding import EMPTY, Chunk
from pacs_engine.errors import PacsEngineError
from pacs_engine.storage import legacy_series_folder, series_folder, series_folders, write_atomic
from pacs_engine.workers import PerProcess

if TYPE_CHECKING:  # the ingest writes and reads arrays without zarr (docs/ingest.md)
    import numpy as np
    import zarr

DEFAULT_TILE = 1024  # chunk edge of frames over an archive's max_chunk_pixels
MIN_TILE, MAX_TILE = 16, 4096  # the tile edges an archive may be made with
SHARD_INDEX_ENTRY = 16  # two little-endian uint64: offset, length
CRC32C_BYTES = 4
#: Shard files a store keeps open per process, with their checked index: a shuffled
#: training loop reads each shard many times, and reopening it and checking its index
#: cost as much as copying the frame out of it.
SHARD_CACHE = 64
FULL_FRAME = (slice(None), slice(None))
#: Codecs for archives read by training loops, where decode time bounds the reads
#: (docs/read.md): on 512x512 CT, Blosc LZ4 with byte shuffle decodes a frame in
#: ~0.12 ms at 2.1:1, and "raw" (no compression) is a copy, where JPEG-LS takes ~4 ms.
LZ4_LEVEL = 5  # on 512x512 CT: 2.06:1 and 0.12 ms to decode a frame; level 1: 2.02:1, 0.19 ms
READ_OPTIMISED: dict[str, Callable[[np.dtype], tuple]] = {
    "lz4": lambda dtype: (Blosc("lz4", LZ4_LEVEL, "shuffle", dtype.itemsize),),
    "raw": lambda dtype: (),
}
#: What an archive's `codec` (archive.json) may be: "auto" (chosen per array from a sample
#: frame), an archive codec of the registry, "blosc" (general purpose) or a read-optimised one.
CODEC_CHOICES = ("auto", *ARCHIVE_BY_NAME, "blosc", *READ_OPTIMISED)


_T = TypeVar("_T")


class ArrayMetadataError(PacsEngineError, ValueError):
    """An array's zarr.json that cannot be read: names the file and the reason."""


class ShardError(PacsEngineError, ValueError):
    """Frames that cannot be read from their shard (missing, cut short, a damaged index):
    names the array, the frames and the reason."""


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """What an array holds: geometry, dtype and the codec that stores its chunks."""

    rows: int
    columns: int
    samples: int
    dtype: np.dtype
    codec: Any  # a frame coder (pacs_engine.codecs), or None for plain bytes
    compressors: tuple[Blosc, ...] = ()
    frames_per_shard: int = 64
    tile: int | None = None  # chunk edge for frames split into tiles
    #: zarr's chunk key separator: "/" (a folder per shard and axis: `c/<shard>/0/0`) or
    #: "." (each shard a file beside zarr.json: `c.<shard>.0.0`, copies' arrays).
    separator: str = "/"

    @property
    def codec_name(self) -> str:
        """The chunks' codecs, e.g. "pacs_engine.jpegls", "blosc-lz4", "bytes"."""
        names = [self.codec.codec_name] if self.codec is not None else []
        names += [f"blosc-{blosc.cname}" for blosc in self.compressors]
        return "+".join(names) or "bytes"

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """(rows, columns) or (rows, columns, samples)."""
        return frame_shape(self.rows, self.columns, self.samples)

    @property
    def layout(self) -> ShardLayout:
        """Where the array's chunks are (its shard files' names and indexes)."""
        return ShardLayout(
            self.frames_per_shard, self.tiles_per_frame, self.separator, len(self.frame_shape)
        )

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """One frame, or one tile of a frame."""
        edge_r = self.tile or self.rows
        edge_c = self.tile or self.columns
        tail = (self.samples,) if self.samples > 1 else ()
        return (1, min(edge_r, self.rows), min(edge_c, self.columns), *tail)

    @property
    def tiles_per_frame(self) -> int:
        """Inner chunks per frame (1 unless tiled)."""
        return _tiles_per_frame(self.rows, self.columns, self.tile)

    @property
    def shard_shape(self) -> tuple[int, ...]:
        """`frames_per_shard` frames, each padded to whole tiles."""
        _, r, c, *tail = self.chunk_shape
        return (
            self.frames_per_shard,
            math.ceil(self.rows / r) * r,
            math.ceil(self.columns / c) * c,
            *tail,
        )


def chunk_layout(spec: ArraySpec) -> str:
    """How an array's frames are chunked, for reports: "whole frames, 64 a shard" or
    "tiles of 64x64, 64 frames a shard" (a patch decodes only the tiles it overlaps)."""
    _, r, c, *_ = spec.chunk_shape
    if spec.tiles_per_frame == 1:
        return f"whole frames, {spec.frames_per_shard} a shard"
    return f"tiles of {r}x{c}, {spec.frames_per_shard} frames a shard"


def split_tiles(frame: np.ndarray, spec: ArraySpec) -> list[np.ndarray]:
    """The frame's chunks in C order, edge tiles padded with zeros as zarr pads them."""
    import numpy as np

    _, r, c, *_ = spec.chunk_shape
    if (r, c) == (spec.rows, spec.columns):
        return [frame]
    tiles = []
    for top in range(0, spec.rows, r):
        for left in range(0, spec.columns, c):
            tile = frame[top : top + r, left : left + c]
            if tile.shape[:2] != (r, c):
                padded = np.zeros((r, c, *frame.shape[2:]), frame.dtype)
                padded[: tile.shape[0], : tile.shape[1]] = tile
                tile = padded
            tiles.append(np.ascontiguousarray(tile))
    return tiles


def _tiles_per_frame(rows: int, columns: int, tile: int | None) -> int:
    """Inner chunks per frame of `rows` x `columns` cut in tiles of `tile` (None: whole)."""
    return math.ceil(rows / min(tile or rows, rows)) * math.ceil(
        columns / min(tile or columns, columns)
    )


class ShardLayout(NamedTuple):
    """Where an array's chunks are: what the shard files' names and indexes need, and
    not its dtype nor codec (known without numpy nor the codecs: the ingest's tidy)."""

    frames_per_shard: int
    tiles_per_frame: int
    separator: str
    frame_axes: int  # 2 (rows, columns) or 3 (and samples)


def shard_layout(meta: dict[str, Any]) -> ShardLayout:
    """The ShardLayout of an existing array (its zarr.json), checked as `array_spec` checks it."""
    rows, columns, samples, frames_per_shard, tile, separator = _geometry(meta)
    axes = len(frame_shape(rows, columns, samples))
    return ShardLayout(frames_per_shard, _tiles_per_frame(rows, columns, tile), separator, axes)


def _geometry(meta: dict[str, Any]) -> tuple[int, int, int, int, int | None, str]:
    """(rows, columns, samples, frames per shard, tile, chunk key separator) of an existing
    array's zarr.json, checked to be a layout the archive writes."""
    if meta["zarr_format"] != 3 or meta["node_type"] != "array":
        raise ValueError(f"not a zarr v3 array: {meta['zarr_format']}, {meta['node_type']}")
    sharding = meta["codecs"][0]
    if sharding["name"] != "sharding_indexed":
        raise ValueError(f"archive arrays are sharded, not {sharding['name']}")
    config = sharding["configuration"]
    grid = meta["chunk_grid"]
    if grid["name"] != "regular":
        raise ValueError(f"archive arrays have a regular chunk grid, not {grid['name']}")
    frames_per_shard = grid["configuration"]["chunk_shape"][0]
    keys = meta.get("chunk_key_encoding") or {"name": "default"}
    separator = (keys.get("configuration") or {}).get("separator", "/")
    if keys["name"] != "default" or separator not in ("/", "."):
        raise ValueError(f"archive arrays have zarr's default chunk keys, not {keys}")
    shape = tuple(meta["shape"])
    chunk = tuple(config["chunk_shape"])
    # Tiles are square, cut to the frame: the larger edge of a chunk is the tile edge.
    tile = max(chunk[1], chunk[2]) if (chunk[1], chunk[2]) != (shape[1], shape[2]) else None
    samples = shape[3] if len(shape) > 3 else 1
    return shape[1], shape[2], samples, frames_per_shard, tile, separator


def array_spec(meta: dict[str, Any]) -> ArraySpec:
    """The ArraySpec of an existing array (its zarr.json), its codec and compressors included.

    Read without zarr, for the layout the archive writes: one sharding codec over one
    serializer (plain little-endian bytes or a pacs_engine codec) and Blosc compressors.
    """
    import numpy as np

    rows, columns, samples, frames_per_shard, tile, separator = _geometry(meta)
    serializer, *compressors = meta["codecs"][0]["configuration"]["codecs"]
    codec = None
    if serializer["name"] == "bytes":  # plain bytes (no endian for 1-byte pixels)
        endian = (serializer.get("configuration") or {}).get("endian")
        if endian not in (None, "little"):
            raise ValueError(f"big-endian chunks are not read: {serializer}")
    elif serializer["name"] in BY_CODEC_NAME:
        codec = BY_CODEC_NAME[serializer["name"]].from_dict(serializer)
    else:
        raise ValueError(f"no codec {serializer['name']!r} among pacs_engine's")
    return ArraySpec(
        rows,
        columns,
        samples,
        np.dtype(meta["data_type"]),
        codec,
        tuple(Blosc.from_dict(c) for c in compressors),
        frames_per_shard,
        tile,
        separator,
    )


def encode_chunk(spec: ArraySpec, tile: np.ndarray) -> bytes:
    """One chunk encoded as zarr encodes it: the array's codec (or bytes), then its Blosc."""
    import numpy as np

    if spec.codec is not None:
        return compress(spec, spec.codec.encode_frame(tile))
    return compress(spec, np.ascontiguousarray(tile, tile.dtype.newbyteorder("<")).tobytes())


def compress(spec: ArraySpec, data: bytes) -> bytes:
    """Serialized chunk bytes through the array's compressors (Blosc), as zarr applies them."""
    for blosc in spec.compressors:
        data = blosc.encode(data)
    return bytes(data)


def decompress(spec: ArraySpec, data: bytes | memoryview) -> bytes | memoryview:
    """A stored chunk's serialized bytes: its compressors undone."""
    if spec.compressors:  # Blosc frames carry their own shuffle and type size
        return blosc_decompress(data)
    return data


def decode_chunk(spec: ArraySpec, data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """One stored chunk decoded to `shape` and the array dtype, as zarr decodes it."""
    import numpy as np

    data = decompress(spec, data)
    if spec.codec is not None:  # bytes(): the codecs take bytes, not a view of a shard
        return spec.codec.decode_frame(bytes(data), shape, spec.dtype)
    return np.frombuffer(data, spec.dtype.newbyteorder("<")).reshape(shape)


def decode_chunk_into(
    spec: ArraySpec,
    data: bytes | memoryview,
    shape: tuple[int, ...],
    out: np.ndarray,
    top: int = 0,
    left: int = 0,
) -> None:
    """One stored chunk of `shape` decoded, and its part at (top, left) of out's size written
    into `out` (a codec that can decodes straight into it: no intermediate array)."""
    if spec.codec is not None:
        spec.codec.decode_into(decompress(spec, data), shape, out, top, left)
    else:
        out[...] = decode_chunk(spec, data, shape)[
            top : top + out.shape[0], left : left + out.shape[1]
        ]


#: zarr's codec JSON of a plain (little-endian) bytes serializer: 1-byte data has no endian.
_BYTES_ONE = {"name": "bytes"}
_BYTES_LE = {"name": "bytes", "configuration": {"endian": "little"}}
#: The zarr.json of a group without attributes, as zarr writes it.
GROUP_METADATA = b'{\n  "attributes": {},\n  "zarr_format": 3,\n  "node_type": "group"\n}'


def array_metadata(spec: ArraySpec, attributes: dict) -> bytes:
    """The zarr.json zarr's `create_array` writes for an empty array of `spec`, byte for byte.

    Built as plain JSON, in zarr's key order and indent (tests/test_archive_metadata.py
    compares it with create_array's for every kind of spec): the ingest workers write
    arrays without importing zarr, and an array costs a JSON dump, not create_array's
    ~5 ms of round trips through zarr's event loop thread.
    """
    if spec.dtype.kind not in "iuf":
        raise ValueError(f"archive arrays hold integers or floats, not {spec.dtype}")
    plain = _BYTES_ONE if spec.dtype.itemsize == 1 else _BYTES_LE
    serializer = plain if spec.codec is None else spec.codec.to_dict()
    sharding = {
        "chunk_shape": list(spec.chunk_shape),
        "codecs": [serializer, *(blosc.to_dict() for blosc in spec.compressors)],
        "index_codecs": [_BYTES_LE, {"name": "crc32c"}],
        "index_location": "end",
    }
    metadata = {
        "shape": [0, *spec.frame_shape],
        "data_type": spec.dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(spec.shard_shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": spec.separator}},
        "fill_value": 0.0 if spec.dtype.kind == "f" else 0,
        "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
        "attributes": attributes,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    return zarr_json(metadata)


#: zarr.json texts by kind (`zarr_json`): a placeholder frame count splits each in two.
_ZARR_JSON: dict[str, tuple[bytes, bytes]] = {}
_ZARR_JSON_KINDS = 256  # the memory starts again when full
_FRAMES = "\0frames"


def zarr_json(meta: dict[str, Any]) -> bytes:
    """An array's metadata as zarr writes it (`json.dumps(meta, indent=2)`), made once per
    kind of array (the metadata but the frame count: a few codecs and dtypes).

    An indented dump is json's pure-Python encoder (~0.24 ms each; a copy of the corpus's
    CT and MR makes 112 arrays); the compact dump that tells kinds apart is its C one.
    """
    shape = meta["shape"]
    template = {**meta, "shape": [_FRAMES, *shape[1:]]}
    kind = json.dumps(template, allow_nan=True)
    parts = _ZARR_JSON.get(kind)
    if parts is None:
        text = json.dumps(template, allow_nan=True, indent=2).encode()
        marker = json.dumps(_FRAMES).encode()
        head, placeholder, tail = text.partition(marker)
        if not placeholder or marker in tail:
            return json.dumps(meta, allow_nan=True, indent=2).encode()  # a value holds it
        if len(_ZARR_JSON) >= _ZARR_JSON_KINDS:
            _ZARR_JSON.clear()
        parts = _ZARR_JSON[kind] = (head, tail)
    return parts[0] + json.dumps(shape[0]).encode() + parts[1]


def _is_array(folder: Path) -> bool:
    """True when `folder` holds a zarr array (not a group, nor anything else)."""
    try:
        return json.loads((folder / "zarr.json").read_bytes()).get("node_type") == "array"
    except (OSError, ValueError):
        return False


def decode_frame(
    spec: ArraySpec,
    chunks: Sequence[bytes | memoryview],
    out: np.ndarray,
    window: tuple[slice, slice] = FULL_FRAME,
) -> None:
    """Decode one frame's chunks (tiles in C order) into `out`, the frame cut to `window`.

    Only the tiles that overlap the window are decoded.
    """
    if window == FULL_FRAME and spec.tile is None:
        if (
            spec.codec is None
            and len(spec.compressors) == 1
            and sys.byteorder == "little"  # the chunk's bytes are little-endian
            and out.dtype == spec.dtype
            and out.flags.c_contiguous
        ):
            # Blosc's frame straight into `out`, without a bytes object and its copy: a
            # 512x512 frame of a read-optimised copy ~20 us less.
            blosc_decompress_into(chunks[0], out)
        else:
            decode_chunk_into(spec, chunks[0], spec.frame_shape, out)
        return
    top, bottom, rstep = window[0].indices(spec.rows)
    left, right, cstep = window[1].indices(spec.columns)
    if rstep != 1 or cstep != 1:
        raise ValueError(f"frame windows are contiguous, not {window}")
    _, r, c, *_ = spec.chunk_shape
    tile_shape = (r, c, *spec.frame_shape[2:])
    across = -(-spec.columns // c)
    codec = spec.codec
    if (
        not spec.compressors
        and codec
        and codec.decode_tiles(chunks, tile_shape, across, out, top, left)
    ):
        return
    for row in range(top // r, -(-bottom // r)):
        y0, y1 = max(top, row * r), min(bottom, (row + 1) * r)
        for col in range(left // c, -(-right // c)):
            x0, x1 = max(left, col * c), min(right, (col + 1) * c)
            decode_chunk_into(
                spec,
                chunks[row * across + col],
                tile_shape,
                out[y0 - top : y1 - top, x0 - left : x1 - left],
                y0 - row * r,
                x0 - col * c,
            )


_NOTHING = memoryview(b"")  # a chunk left unread: outside the window decoded


def window_shape(spec: ArraySpec, window: tuple[slice, slice] = FULL_FRAME) -> tuple[int, ...]:
    """The shape of one of the array's frames cut to `window`."""
    top, bottom, _ = window[0].indices(spec.rows)
    left, right, _ = window[1].indices(spec.columns)
    return (max(bottom - top, 0), max(right - left, 0), *spec.frame_shape[2:])


def _window_span(spec: ArraySpec, window: tuple[slice, slice]) -> tuple[int, int] | None:
    """The run [first, stop) of a tiled frame's chunks (C order) that holds `window`.

    None when the whole frame is read anyway (untiled, or the window spans every chunk).
    """
    if spec.tile is None or window == FULL_FRAME:
        return None
    top, bottom, _ = window[0].indices(spec.rows)
    left, right, _ = window[1].indices(spec.columns)
    if bottom <= top or right <= left:
        return None
    _, r, c, *_ = spec.chunk_shape
    across = -(-spec.columns // c)
    first = (top // r) * across + left // c
    stop = ((bottom - 1) // r) * across + (right - 1) // c + 1
    return None if (first, stop) == (0, spec.tiles_per_frame) else (first, stop)


def _slots(frames: Sequence[int]) -> dict[int, list[int]]:
    """Each distinct frame of `frames`, with its places there (a repeat is read once)."""
    slots: dict[int, list[int]] = {}
    for k, f in enumerate(frames):
        slots.setdefault(f, []).append(k)
    return slots


def _by_shard(frames: list[int], per_shard: int) -> list[tuple[int, list[int]]]:
    """Each shard `frames` (sorted) fall in, in order, with its frames there."""
    if not frames:
        return []
    shard = frames[0] // per_shard
    if frames[-1] // per_shard == shard:  # one shard (the datasets read a frame a call)
        return [(shard, frames)]
    groups = []
    k = 0
    while k < len(frames):
        shard = frames[k] // per_shard
        # A bisection per shard, not a step per frame: this is every batch's read path.
        end = bisect_left(frames, (shard + 1) * per_shard, k)
        groups.append((shard, frames[k:end]))
        k = end
    return groups


def _file_identity(status: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is replaced (a new inode) or rewritten in place."""
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _close_in(pid: int, fd: int) -> None:
    """Close `fd` in the process that opened it (a forked child's number may be reused)."""
    if os.getpid() == pid:
        os.close(fd)


def _read_spans(fd: int, spans: list[tuple[int, int]]) -> list[memoryview]:
    """The chunks at `spans` ((offset, length) each) of a shard file, as views of one read
    from the lowest offset to the highest end: not of the first's and the last's, since a
    shard's index may list its chunks in any order (zarr allows it; ours are in order, back
    to back), and a slice at a negative start would wrap, silently giving other bytes."""
    if not spans:
        return []
    begin = min(o for o, _ in spans)
    data = memoryview(os.pread(fd, max(o + n for o, n in spans) - begin, begin))
    return [data[o - begin : o + n - begin] for o, n in spans]  # views: no copy of each


class _OpenShard:
    """A shard file held open with its checked index; closed when the last reference goes.

    Readers keep a reference while they read, so evicting it from the cache never
    closes a descriptor another thread is reading through.
    """

    __slots__ = ("__weakref__", "fd", "identity", "table")

    def __init__(self, file: str, entries: int, where: str) -> None:
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            raise ShardError(f"{where}: its shard file is missing ({file})") from None
        try:
            self.identity = _file_identity(os.fstat(fd))
            self.table = PixelStore._shard_table(fd, entries, where)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        weakref.finalize(self, _close_in, os.getpid(), fd)

    def current(self, file: str) -> bool:
        """True while `file` is still the file this holds (not replaced, not rewritten)."""
        try:
            return _file_identity(os.stat(file)) == self.identity
        except OSError:
            return False  # gone: reopening says why


class PixelStore:
    """The `pixels/` Zarr v3 hierarchy of an archive."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._specs: dict[str, ArraySpec] = {}  # fixed once an array exists
        self._layouts: dict[str, ShardLayout] = {}  # fixed too; also of arrays without a spec
        # Checked per read against the file (one stat): writers replace shards whole.
        self._shards: PerProcess[str, _OpenShard] = PerProcess(SHARD_CACHE)

    def close(self) -> None:
        """Drop the shard files kept open (each closes once no reader holds it)."""
        self._shards = PerProcess(SHARD_CACHE)

    def create(self) -> None:
        """Create the root group (the folder must not exist): the zarr.json zarr writes."""
        self.root.mkdir()
        # Written as zarr wrote it (not synced): the archive is made in a folder renamed
        # into place once whole (`Archive.create`).
        (self.root / "zarr.json").write_bytes(GROUP_METADATA)

    def array_path(self, series_uid: str, key: str) -> str:
        """The path below the root of the series' array `key`.

        An array an earlier version made under the series' legacy folder name is used
        on (a new one beside it would store the series' frames twice).
        """
        legacy = legacy_series_folder(series_uid)
        if legacy is not None and self.exists(f"{legacy}/{key}"):
            return f"{legacy}/{key}"
        return f"{series_folder(series_uid)}/{key}"

    def exists(self, path: str) -> bool:
        """True when the array has been created."""
        return os.path.exists(f"{self.root}/{path}/zarr.json")

    def ensure_array(
        self,
        series_uid: str,
        key: str,
        spec: ArraySpec,
        attributes: dict,
    ) -> None:
        """Create the array (and its series group) if it does not exist yet.

        Its zarr.json holds the bytes zarr's `create_array` writes (`array_metadata`),
        written and made durable with its folders before this returns: the rows of its
        frames are committed before the commit's `frames_file` rewrites it (with
        `write_together`), and a power cut between the two must not leave committed rows
        in an array without its metadata. A crash before any row uses it leaves an
        array the ingest's tidy removes.
        """
        path = self.array_path(series_uid, key)
        if not self.exists(path):
            self.create_array(path, array_metadata(spec, attributes))

    def create_array(self, path: str, zarr_json: bytes) -> None:
        """Create an array (and its series group) with this zarr.json, made durable (see
        `ensure_array`)."""
        self._ensure_group(path)
        write_atomic(self.root / path / "zarr.json", zarr_json)

    def new_array_file(self, path: str, meta: dict[str, Any], frames: int) -> tuple[Path, bytes]:
        """The zarr.json (path, bytes) that creates an array with metadata `meta` and
        `frames` frames, for the caller to write durably with its frames' shards
        (`shard_files` knows the array from now on). Its group's zarr.json is written now
        when missing."""
        self._learn_spec(path, meta)
        self._ensure_group(path)
        return self.root / path / "zarr.json", zarr_json(
            {**meta, "shape": [frames, *meta["shape"][1:]]}
        )

    def _ensure_group(self, path: str) -> None:
        """Write the zarr.json of the array's series group when missing, made durable with
        the series' folder (which holds the arrays rows reference)."""
        group = (self.root / path).parent
        if not (group / "zarr.json").exists():
            write_atomic(group / "zarr.json", GROUP_METADATA)

    def frames(self, path: str) -> int:
        """The array's frame count (its shape along axis 0): its committed frames', but
        after a kill (an ingest raises it after its commit, a copy before) until a tidy."""
        return self.meta(path)["shape"][0]

    def set_frames(self, path: str, frames: int) -> None:
        """Set the array's frame count, atomically (write, fsync, rename of zarr.json)."""
        write_atomic(*self.frames_file(path, frames))

    def frames_file(self, path: str, frames: int, meta: dict | None = None) -> tuple[Path, bytes]:
        """The array's zarr.json with its frame count set to `frames` (`set_frames` writes it),
        made from `meta` when the caller read it already (`meta`), else read now."""
        meta = self.meta(path) if meta is None else meta
        return self.root / path / "zarr.json", zarr_json(
            {**meta, "shape": [frames, *meta["shape"][1:]]}
        )

    def meta(self, path: str) -> dict:
        """The array's zarr.json; ArrayMetadataError naming the file when it cannot be read."""
        meta_path = self.root / path / "zarr.json"
        try:
            meta = json.loads(meta_path.read_bytes())
        except (OSError, ValueError) as error:
            raise ArrayMetadataError(f"{meta_path}: cannot be read: {error}") from None
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if not isinstance(shape, list) or not shape or not isinstance(shape[0], int):
            raise ArrayMetadataError(f"{meta_path}: not the metadata of an array (no shape)")
        return meta

    def _shard_file(self, path: str, shard: int) -> str:
        layout = self.layout(path)
        zeros = f"{layout.separator}0" * layout.frame_axes
        return f"{self.root}/{path}/c{layout.separator}{shard}{zeros}"

    def spec(self, path: str) -> ArraySpec:
        """The geometry and codec of an existing array, read from its zarr.json once."""
        spec = self._specs.get(path)
        if spec is None:
            spec = self._learn_spec(path, self.meta(path))
        return spec

    def _learn_spec(self, path: str, meta: dict[str, Any]) -> ArraySpec:
        """The array's spec (and layout) from its metadata, remembered; ArrayMetadataError
        naming its file."""
        spec = self._specs[path] = self._parsed(path, meta, array_spec)
        self._layouts[path] = spec.layout
        return spec

    def _parsed(self, path: str, meta: dict[str, Any], parse: Callable[[dict], _T]) -> _T:
        """`parse(meta)` of the array's metadata; ArrayMetadataError naming its zarr.json."""
        try:
            return parse(meta)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            raise ArrayMetadataError(f"{self.root / path / 'zarr.json'}: {error}") from None

    def grid(self, path: str) -> tuple[int, int]:
        """(frames per shard, chunks per frame) of an existing array."""
        layout = self.layout(path)
        return layout.frames_per_shard, layout.tiles_per_frame

    def layout(self, path: str) -> ShardLayout:
        """Where an existing array's chunks are, read from its zarr.json once (set with its
        spec when that is learnt first). Needs neither numpy nor the codecs, as its spec
        does: the ingesting process's tidy learns the shards of every array without
        importing them (~0.08 s of CPU, at the end of a run, when the workers have nothing
        left to do)."""
        layout = self._layouts.get(path)
        if layout is None:
            # Its metadata is not kept for `spec`: another process may make the array anew
            # (another codec) before this one asks for its spec.
            layout = self._layouts[path] = self._parsed(path, self.meta(path), shard_layout)
        return layout

    def write_frames(
        self, path: str, first: int, chunks: Sequence[Chunk], dirs: set[Path] | None = None
    ) -> None:
        """Store encoded chunks of frames [first, first + n) (tiles in order within a frame).

        A shard that already holds frames before `first` is read and rewritten with
        them: frames of one array are appended in order, by one writer at a time.
        """
        for file, data in self.shard_files(path, first, chunks):
            write_atomic(file, data, dirs)

    def shard_files(
        self, path: str, first: int, chunks: Sequence[Chunk]
    ) -> list[tuple[Path, list[Chunk]]]:
        """The shard files (and their new bytes, as parts for `write_atomic`) `write_frames`
        writes for these chunks."""
        per_shard, per_frame = self.grid(path)
        if len(chunks) % per_frame:
            raise ValueError(f"{len(chunks)} chunks is not a whole number of frames")
        count = len(chunks) // per_frame
        frame = first
        files = []
        while frame < first + count:
            shard = frame // per_shard
            start = shard * per_shard
            stop = min(start + per_shard, first + count)
            kept = self._kept_chunks(path, shard, frame - start) if frame > start else []
            new = chunks[(frame - first) * per_frame : (stop - first) * per_frame]
            inner: list[Chunk | None] = [*kept, *new]
            inner += [None] * (per_shard * per_frame - len(inner))
            file = self._shard_file(path, shard)
            # About to be replaced: an open copy kept would hold the old file's disk space.
            self._shards.pop(file)
            files.append((Path(file), shard_parts(inner)))
            frame = stop
        return files

    def drop_frames(self, path: str, shard: int, frames: set[int]) -> int:
        """Rewrite one shard of the array without the chunks of `frames` (frame numbers in
        the array, whose frame count stays): emptying the trash. Bytes freed."""
        file = self._shard_file(path, shard)
        try:
            size = os.stat(file).st_size
        except FileNotFoundError:
            return 0  # none of its frames was ever written
        per_shard, per_frame = self.grid(path)
        start = shard * per_shard
        kept = self._kept_chunks(path, shard, per_shard)
        parts = shard_parts(
            [None if start + k // per_frame in frames else c for k, c in enumerate(kept)]
        )
        # About to be replaced: an open copy kept would hold the old file's disk space.
        self._shards.pop(file)
        write_atomic(file, parts)
        return size - sum(map(len, parts))

    def _kept_chunks(self, path: str, shard: int, frames: int) -> list[memoryview | None]:
        """The chunks of the shard's first `frames` frames as stored, None for an absent
        one: emptying the trash drops a deleted instance's chunks from its shard
        (`drop_frames`) and keeps the array's frame count, so a shard appended
        to may have holes, which it keeps."""
        per_frame = self.grid(path)[1]
        held = self._open_shard(path, shard, f"{path}: shard {shard}")
        table = held.table[: frames * per_frame].tolist()
        stored = iter(_read_spans(held.fd, [(o, n) for o, n in table if o != EMPTY]))
        # Views: the shard is rewritten from them with no copy of each chunk.
        return [None if o == EMPTY else next(stored) for o, _ in table]

    def read_chunks(self, path: str, start: int, stop: int) -> list[bytes]:
        """The stored (encoded) chunks of frames [start, stop), read from the shards as is.

        Per shard: one read of its index, one read of the bytes of the frames asked
        for (ours stores its chunks back to back, in order: `_read_spans`).
        """
        return [bytes(chunk) for chunk in self.chunk_views(path, start, stop)]

    def chunk_views(self, path: str, start: int, stop: int) -> list[memoryview]:
        """`read_chunks`' chunks as views of the bytes read (one buffer per shard), for a
        writer that passes them on (`shard_files`) with no copy of each."""
        per_shard = self.spec(path).frames_per_shard
        out: list[memoryview] = []
        frame = start
        while frame < stop:
            last = min(stop, (frame // per_shard + 1) * per_shard)
            out += self._shard_chunks(path, frame, last)
            frame = last
        return out

    def read_bitstreams(self, path: str, start: int, stop: int) -> list[bytes]:
        """The chunks of frames [start, stop) with their compressors undone.

        For an array of original bitstreams: those bitstreams, byte for byte.
        """
        spec = self.spec(path)
        # Views: a Blosc chunk is read from the shard's buffer, not first copied to bytes.
        return [bytes(decompress(spec, c)) for c in self.chunk_views(path, start, stop)]

    def arrays(self, series_uid: str) -> list[str]:
        """The paths of the series' arrays (in its folder, and where earlier versions put it)."""
        names = series_folders(series_uid)
        found = []
        for name in names:
            folder = self.root / name
            if folder.is_dir():
                found += [f"{name}/{p.name}" for p in folder.iterdir() if _is_array(p)]
        return sorted(found)

    def unreferenced_files(self, path: str, shards: set[int]) -> list[Path]:
        """The array's chunk files other than the shard files of `shards`."""
        keep = {Path(self._shard_file(path, shard)) for shard in shards}
        folder = self.root / path / "c"
        if self.layout(path).separator == ".":
            found = list((self.root / path).glob("c.*"))
        else:
            found = list(folder.rglob("*")) if folder.is_dir() else []
        return [p for p in sorted(found) if p.is_file() and p not in keep]

    def _open_shard(self, path: str, shard: int, where: str) -> _OpenShard:
        """The shard file, open with its checked index: kept per process while unchanged.

        `where` names the array and frames in the errors of a shard opened here.
        """
        per_shard, per_frame = self.grid(path)
        file = self._shard_file(path, shard)
        return self._shards.get(
            file,
            lambda: _OpenShard(file, per_shard * per_frame, where),
            lambda kept: kept.current(file),
        )

    def _shard_chunks(self, path: str, start: int, stop: int) -> list[memoryview]:
        """The chunks of frames [start, stop), all in one shard: one read (and its index)."""
        per_shard, per_frame = self.grid(path)
        shard = start // per_shard
        frames = f"frame {start}" if stop == start + 1 else f"frames {start}..{stop - 1}"
        held = self._open_shard(path, shard, f"{path}: {frames}")
        first = (start - shard * per_shard) * per_frame
        wanted = held.table[first : (stop - shard * per_shard) * per_frame].tolist()
        if any(o == EMPTY for o, _ in wanted):
            raise ShardError(f"{path}: a frame of {start}..{stop} is missing from shard {shard}")
        return _read_spans(held.fd, wanted)

    def _window_chunks(
        self, path: str, frames: Sequence[int], first: int, stop: int
    ) -> dict[int, list[memoryview]]:
        """Chunks [first, stop) of each frame (all in one shard): one read per frame.

        The frame's other chunks are left empty: only a window inside the span is decoded.
        """
        per_shard, per_frame = self.grid(path)
        shard = frames[0] // per_shard
        out: dict[int, list[memoryview]] = {}
        held = self._open_shard(path, shard, f"{path}: frames {frames[0]}..{frames[-1]}")
        for f in frames:
            base = (f - shard * per_shard) * per_frame
            wanted = held.table[base + first : base + stop].tolist()
            if any(o == EMPTY for o, _ in wanted):
                raise ShardError(f"{path}: frame {f} is missing from shard {shard}")
            out[f] = (
                [_NOTHING] * first + _read_spans(held.fd, wanted) + [_NOTHING] * (per_frame - stop)
            )
        return out

    @staticmethod
    def _shard_table(fd: int, entries: int, where: str) -> np.ndarray:
        """A shard file's index: (offset, length) of each of its `entries` chunks, checked.

        `where` names the array and frames in errors: read from a cut or damaged shard,
        the offsets are pixel bytes, and using them fails with MemoryError or OverflowError.
        """
        import numpy as np

        index_size = SHARD_INDEX_ENTRY * entries + CRC32C_BYTES
        size = os.fstat(fd).st_size
        if size < index_size:
            raise ShardError(
                f"{where}: the shard file is {size} bytes, less than its {index_size}-byte "
                "index (cut short?)"
            )
        data = os.pread(fd, index_size, size - index_size)
        if len(data) != index_size or google_crc32c.value(data[:-CRC32C_BYTES]) != int.from_bytes(
            data[-CRC32C_BYTES:], "little"
        ):
            raise ShardError(
                f"{where}: the shard's index fails its checksum (cut short or damaged)"
            )
        table = np.frombuffer(data, "<u8", count=2 * entries).reshape(entries, 2)
        stored = table[table[:, 0] != EMPTY]
        room = np.uint64(size - index_size)
        if np.any((stored[:, 0] > room) | (stored[:, 1] > room - np.minimum(stored[:, 0], room))):
            raise ShardError(f"{where}: the shard's index points past the end of its chunks")
        return table

    def _raw_chunks(
        self, path: str, spec: ArraySpec, frames: list[int], first: int, stop: int, size: int
    ) -> Iterator[tuple[_OpenShard, list[int], np.ndarray]]:
        """Per shard of `frames` (sorted, distinct) of an uncompressed array: the shard open,
        its frames and the offsets of their chunks [first, stop), each there and `size` bytes.
        """
        import numpy as np

        per_shard, per_frame = spec.frames_per_shard, spec.tiles_per_frame
        for shard, some in _by_shard(frames, per_shard):
            named = f"frame {some[0]}" if len(some) == 1 else f"frames {some[0]}..{some[-1]}"
            held = self._open_shard(path, shard, f"{path}: {named}")
            bases = (np.asarray(some, np.int64) - shard * per_shard) * per_frame
            entries = held.table[bases[:, None] + np.arange(first, stop)]
            offsets, lengths = entries[..., 0], entries[..., 1]
            missing = np.any(offsets == EMPTY, axis=1)
            wrong = np.any(lengths != size, axis=1)
            if np.any(missing | wrong):  # the first bad frame named, as a decode would
                at = int(np.argmax(missing | wrong))
                if missing[at]:
                    raise ShardError(f"{path}: frame {some[at]} is missing from shard {shard}")
                stored = int(lengths[at][lengths[at] != size][0])
                raise ShardError(
                    f"{path}: frame {some[at]} holds a chunk stored as {stored} bytes, not {size}"
                )
            yield held, some, offsets

    def _read_raw_frames(
        self, path: str, spec: ArraySpec, frames: Sequence[int], out: np.ndarray
    ) -> np.ndarray:
        """Frames of an uncompressed untiled array, read straight into `out`."""
        slots = _slots(frames)
        size = math.prod(out.shape[1:]) * out.itemsize
        for held, some, offsets in self._raw_chunks(path, spec, sorted(slots), 0, 1, size):
            for f, offset in zip(some, offsets[:, 0].tolist(), strict=True):
                at, *copies = slots[f]
                if os.preadv(held.fd, [memoryview(out[at]).cast("B")], offset) != size:
                    raise ShardError(f"{path}: frame {f} is cut short in its shard")
                if copies:  # an empty index list costs microseconds a frame
                    out[copies] = out[at]
        return out

    def _read_raw_windows(
        self,
        path: str,
        spec: ArraySpec,
        frames: Sequence[int],
        window: tuple[slice, slice],
        out: np.ndarray,
    ) -> bool:
        """Frames of an uncompressed array (tiled or not) cut to `window`, into `out`, without
        a decode: per frame, one read of the window's rows (untiled), or one read per row of
        tiles of the tiles it overlaps, then one numpy copy of the window out of them (two
        over 2 or more tile columns: the tiles are first copied into one image).

        Reads, not a mapping of the shard: a file cut short in place by another process after
        the open shard's freshness check gives a short read and an error naming the frame,
        where a mapping kills the reader with SIGBUS. False when a shard's chunks are not back
        to back in C order (zarr allows any order; we write them so): the caller then reads
        the call's frames chunk by chunk, those of the shards before it again.
        """
        import numpy as np

        top, bottom, rstep = window[0].indices(spec.rows)
        left, right, cstep = window[1].indices(spec.columns)
        if rstep != 1 or cstep != 1 or bottom <= top or right <= left:
            return False  # decode_frame says why, or there is nothing to read
        _, r, c, *tail = spec.chunk_shape
        dtype = spec.dtype.newbyteorder("<")  # the chunks' bytes (only read on little-endian)
        tile_bytes = r * c * math.prod(tail) * dtype.itemsize
        across = -(-spec.columns // c)
        first, stop = _window_span(spec, window) or (0, spec.tiles_per_frame)  # C order
        (row0, col0), (row_end, col_end) = divmod(first, across), divmod(stop - 1, across)
        if across == 1:  # tiles as wide as the frame: its rows are back to back, read those
            scratch = np.empty((1, bottom - top, c, *tail), dtype)
            skip = (top - row0 * r) * scratch[0, 0].nbytes
        else:  # the tiles the window overlaps
            scratch = np.empty((row_end - row0 + 1, col_end - col0 + 1, r, c, *tail), dtype)
            skip = 0
        # Per frame, a read into each row of `scratch` from its first chunk's offset.
        targets = [
            (memoryview(part).cast("B"), skip + i * across * tile_bytes)
            for i, part in enumerate(scratch)
        ]
        steps = np.arange(stop - first, dtype=np.uint64) * np.uint64(tile_bytes)
        y, x = top - row0 * r, left - col0 * c  # the window in the image of whole tiles
        slots = _slots(frames)
        # One shard open at a time (a series' window read may span thousands of them),
        # each checked as it comes: only another writer's array has chunks out of order.
        for held, some, offsets in self._raw_chunks(
            path, spec, sorted(slots), first, stop, tile_bytes
        ):
            if np.any(offsets != offsets[:, :1] + steps):
                return False
            for f, offset in zip(some, offsets[:, 0].tolist(), strict=True):
                for target, lead in targets:
                    if os.preadv(held.fd, [target], offset + lead) != target.nbytes:
                        raise ShardError(f"{path}: frame {f} is cut short in its shard")
                at, *copies = slots[f]
                if across == 1:
                    out[at] = scratch[0, :, left:right]
                else:  # the tiles overlapped as one image, then its window
                    image = scratch.swapaxes(1, 2).reshape(len(scratch) * r, -1, *tail)
                    out[at] = image[y : y + bottom - top, x : x + right - left]
                if copies:  # an empty index list costs microseconds a frame
                    out[copies] = out[at]
        return True

    def read_frames(
        self,
        path: str,
        frames: Sequence[int],
        window: tuple[slice, slice] = FULL_FRAME,
        threads: int = 1,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Frames of an array, decoded in the order given into one array, returned.

        Shaped (len(frames), rows, columns[, samples]), each frame cut to `window`:
        a new array, or `out` (writeable, of that shape and the array's dtype, e.g. a
        slice of a larger one; ValueError otherwise). The frames of a shard are read
        with one read when they are close (at most half of the span skipped), else one
        read each; uncompressed frames are read straight into the output, an uncompressed
        window is cut from the bytes of the rows or tiles it overlaps without a decode, and
        each tile a coded window needs is decoded and copied into its place. With `threads` > 1,
        frames of an image codec are decoded in parallel (the codecs release the
        GIL); Blosc and uncompressed frames are decoded on this thread, faster than
        a hand-off.
        """
        import numpy as np

        spec = self.spec(path)
        if len(frames) and min(frames) < 0:
            raise ShardError(f"{path}: frame {min(frames)} is no frame of the array")
        shape = (len(frames), *window_shape(spec, window))
        if out is None:
            out = np.empty(shape, spec.dtype)
        elif out.shape != shape or out.dtype != spec.dtype:
            raise ValueError(
                f"{path}: frames read into an array of {out.shape} {out.dtype}, "
                f"not {shape} {spec.dtype}"
            )
        elif not out.flags.writeable:
            # c-blosc writes into any buffer it is given, read-only or not.
            raise ValueError(f"{path}: frames read into a read-only array")
        # Uncompressed little-endian chunks are the frames' bytes on this machine.
        plain = spec.codec is None and not spec.compressors and sys.byteorder == "little"
        if plain and window == FULL_FRAME and spec.tile is None and out.flags.c_contiguous:
            return self._read_raw_frames(path, spec, frames, out)
        if plain and self._read_raw_windows(path, spec, frames, window, out):
            return out
        per_shard, per_frame = spec.frames_per_shard, spec.tiles_per_frame
        span = _window_span(spec, window)
        wanted = sorted(set(frames))
        chunks: dict[int, list[memoryview]] = {}
        for _, some in _by_shard(wanted, per_shard):
            lo, hi = some[0], some[-1] + 1
            if span is not None:
                chunks.update(self._window_chunks(path, some, *span))
            elif hi - lo <= 2 * len(some):
                data = self._shard_chunks(path, lo, hi)
                for f in some:
                    chunks[f] = data[(f - lo) * per_frame : (f - lo + 1) * per_frame]
            else:
                for f in some:
                    chunks[f] = self._shard_chunks(path, f, f + 1)

        def decode(k: int) -> None:
            try:
                decode_frame(spec, chunks[frames[k]], out[k], window)
            except Exception as error:  # a codec's failure on bad data can be any exception
                # Name the frame: a training loop reading millions must say which one.
                raise CodecError(f"{path}: frame {frames[k]} cannot be decoded: {error}") from error

        def decode_every(first: int, step: int) -> None:
            for k in range(first, len(frames), step):
                decode(k)

        # Threads only for image codecs: Blosc and plain bytes decode faster than a
        # hand-off to a thread (and Blosc has threads of its own). One task per thread,
        # each taking every n-th frame, which balances frames of unequal cost.
        count = min(threads, len(frames)) if spec.codec is not None else 1
        if count > 1:
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(decode_every, range(count), [count] * count))
        else:
            decode_every(0, 1)
        return out

    def open_array(self, path: str) -> zarr.Array:
        """The array, opened read-only with zarr."""
        import zarr

        return zarr.open_array(self.root / path, mode="r")
