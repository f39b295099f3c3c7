"""The Zarr v3 pixel store: one sharded array per series and frame geometry, shards written whole.

Arrays live at `pixels/<SeriesInstanceUID>/<key>` and are shaped (frames, rows,
columns[, samples]). A chunk is one frame (or one tile of a frame larger than
`max_chunk_pixels`), a shard is `frames_per_shard` frames. Shards are packed by
`pacs_engine.codecs.pack_shard` from chunks encoded beforehand (or kept as their
original bitstream) and written with write + fsync + rename, so a reader never
sees a half-written shard. The array's frame count (its `shape[0]`) is raised
only after the index rows that reference the new frames are committed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pacs_engine.archive.native import frame_shape
from pacs_engine.codecs import pack_shard
from pacs_engine.codecs.sharding import EMPTY
from pacs_engine.storage import write_atomic

SHARD_INDEX_ENTRY = 16  # two little-endian uint64: offset, length
CRC32C_BYTES = 4


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """What an array holds: geometry, dtype and the codec that stores its chunks."""

    rows: int
    columns: int
    samples: int
    dtype: np.dtype
    codec: Any  # a zarr ArrayBytesCodec (pacs_engine.codecs), or None for bytes + blosc
    compressors: tuple = ()
    frames_per_shard: int = 64
    tile: int | None = None  # chunk edge for frames split into tiles

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """(rows, columns) or (rows, columns, samples)."""
        return frame_shape(self.rows, self.columns, self.samples)

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
        _, r, c, *_ = self.chunk_shape
        return math.ceil(self.rows / r) * math.ceil(self.columns / c)

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


def split_tiles(frame: np.ndarray, spec: ArraySpec) -> list[np.ndarray]:
    """The frame's chunks in C order, edge tiles padded with zeros as zarr pads them."""
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


class PixelStore:
    """The `pixels/` Zarr v3 hierarchy of an archive."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._grids: dict[str, tuple[int, int, int]] = {}  # fixed once an array exists

    def create(self) -> None:
        """Create the root group."""
        zarr.open_group(self.root, mode="w-", zarr_format=3)

    def array_path(self, series_uid: str, key: str) -> str:
        """The array's path below the root."""
        return f"{series_uid}/{key}"

    def ensure_array(self, series_uid: str, key: str, spec: ArraySpec, attributes: dict) -> None:
        """Create the array (and its series group) if it does not exist yet."""
        if (self.root / series_uid / key / "zarr.json").exists():
            return
        group = zarr.open_group(self.root, mode="a").require_group(series_uid)
        options: dict[str, Any] = {"compressors": spec.compressors or None}
        if spec.codec is not None:
            options["serializer"] = spec.codec
        group.create_array(
            key,
            shape=(0, *spec.frame_shape),
            chunks=spec.chunk_shape,
            shards=spec.shard_shape,
            dtype=spec.dtype,
            fill_value=0,
            attributes=attributes,
            **options,
        )

    def frames(self, path: str) -> int:
        """The array's committed frame count (its shape along axis 0)."""
        return json.loads((self.root / path / "zarr.json").read_bytes())["shape"][0]

    def set_frames(self, path: str, frames: int) -> None:
        """Set the array's frame count, atomically (write, fsync, rename of zarr.json)."""
        meta_path = self.root / path / "zarr.json"
        meta = json.loads(meta_path.read_bytes())
        meta["shape"][0] = frames
        write_atomic(meta_path, json.dumps(meta, indent=2).encode())

    def _meta(self, path: str) -> dict:
        return json.loads((self.root / path / "zarr.json").read_bytes())

    def _shard_file(self, path: str, shard: int) -> Path:
        rank = self._grid(path)[2]
        return self.root / path / "c" / "/".join([str(shard)] + ["0"] * (rank - 1))

    def _grid(self, path: str) -> tuple[int, int, int]:
        if path not in self._grids:
            meta = self._meta(path)
            shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
            chunk = meta["codecs"][0]["configuration"]["chunk_shape"]
            per_frame = math.prod(s // c for s, c in zip(shard[1:], chunk[1:], strict=True))
            self._grids[path] = (shard[0], per_frame, len(meta["shape"]))
        return self._grids[path]

    def grid(self, path: str) -> tuple[int, int]:
        """(frames per shard, chunks per frame) of an existing array."""
        per_shard, per_frame, _ = self._grid(path)
        return per_shard, per_frame

    def write_frames(
        self, path: str, first: int, chunks: Sequence[bytes], dirs: set[Path] | None = None
    ) -> None:
        """Store encoded chunks of frames [first, first + n) (tiles in order within a frame).

        A shard that already holds frames before `first` is read and rewritten with
        them: frames of one array are appended in order, by one writer at a time.
        """
        per_shard, per_frame = self.grid(path)
        if len(chunks) % per_frame:
            raise ValueError(f"{len(chunks)} chunks is not a whole number of frames")
        count = len(chunks) // per_frame
        frame = first
        while frame < first + count:
            shard = frame // per_shard
            start = shard * per_shard
            stop = min(start + per_shard, first + count)
            kept = self.read_chunks(path, start, frame) if frame > start else []
            new = chunks[(frame - first) * per_frame : (stop - first) * per_frame]
            inner: list[bytes | None] = [*kept, *new]
            inner += [None] * (per_shard * per_frame - len(inner))
            write_atomic(self._shard_file(path, shard), pack_shard(inner), dirs)
            frame = stop

    def read_chunks(self, path: str, start: int, stop: int) -> list[bytes]:
        """The stored (encoded) chunks of frames [start, stop), read from the shards as is.

        Per shard: one read of its index, one read of the bytes of the frames asked
        for (a shard stores its chunks back to back, in order).
        """
        per_shard, per_frame = self.grid(path)
        entries = per_shard * per_frame
        index_size = SHARD_INDEX_ENTRY * entries + CRC32C_BYTES
        out: list[bytes] = []
        frame = start
        while frame < stop:
            shard = frame // per_shard
            last = min(stop, (shard + 1) * per_shard)
            with open(self._shard_file(path, shard), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                table = np.frombuffer(
                    os.pread(f.fileno(), index_size, size - index_size), "<u8", count=2 * entries
                ).reshape(entries, 2)
                first_entry = (frame - shard * per_shard) * per_frame
                wanted = table[first_entry : (last - shard * per_shard) * per_frame]
                if (wanted[:, 0] == EMPTY).any():
                    raise ValueError(
                        f"{path}: a frame of {frame}..{last} is missing from shard {shard}"
                    )
                begin = int(wanted[0, 0])
                data = os.pread(f.fileno(), int(wanted[-1, 0] + wanted[-1, 1]) - begin, begin)
            out += [data[int(o) - begin : int(o + n) - begin] for o, n in wanted]
            frame = last
        return out

    def arrays(self, series_uid: str) -> list[str]:
        """The paths of the series' arrays."""
        folder = self.root / series_uid
        if not folder.is_dir():
            return []
        return sorted(
            self.array_path(series_uid, p.name)
            for p in folder.iterdir()
            if (p / "zarr.json").is_file()
        )

    def unreferenced_files(self, path: str, shards: set[int]) -> list[Path]:
        """Files in the array's chunk folder other than the shard files of `shards`."""
        keep = {self._shard_file(path, shard) for shard in shards}
        folder = self.root / path / "c"
        if not folder.is_dir():
            return []
        return [p for p in sorted(folder.rglob("*")) if p.is_file() and p not in keep]

    def open_array(self, path: str) -> zarr.Array:
        """The array, opened read-only with zarr."""
        return zarr.open_array(self.root / path, mode="r")
