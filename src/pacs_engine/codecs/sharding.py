"""Shards written by hand: the byte layout of zarr's sharding codec, for pre-encoded chunks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import google_crc32c

if TYPE_CHECKING:
    import zarr

# An absent inner chunk: offset and length both 2**64 - 1 (the sharding spec's marker).
EMPTY = 2**64 - 1
INDEX_LOCATIONS = ("end", "start")
DEFAULT_INDEX_CODECS = [
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "crc32c"},
]
#: A stored chunk: its bytes, or a view of bytes read from a shard (passed on uncopied).
Chunk = bytes | memoryview


def shard_index(lengths: Sequence[int | None], first_offset: int = 0) -> bytes:
    """The shard index for chunks stored back to back from `first_offset`, with its crc32c."""
    import numpy as np

    table = np.full((len(lengths), 2), EMPTY, dtype="<u8")
    offset = first_offset
    for i, length in enumerate(lengths):
        if length is not None:
            table[i] = (offset, length)
            offset += length
    raw = table.tobytes()
    # The default index codecs are [bytes(little), crc32c]: the checksum follows the table.
    return raw + int(google_crc32c.value(raw)).to_bytes(4, "little")


def pack_shard(chunks: Sequence[bytes | None], index_location: str = "end") -> bytes:
    """One shard object: inner chunks (C order of the shard's chunk grid, None = absent).

    The layout is what ``zarr.codecs.ShardingCodec`` with its default ``index_codecs``
    (little-endian bytes + crc32c) reads, so chunk bytes encoded in worker processes (or a
    frame's original bitstream) become a shard without passing through zarr's encoder.
    """
    return b"".join(shard_parts(chunks, index_location))


def shard_parts(chunks: Sequence[Chunk | None], index_location: str = "end") -> list[Chunk]:
    """The bytes of `pack_shard(chunks, index_location)` as parts, in order: the chunks
    themselves (views passed through as views) and the index, for a writer to write one
    after the other without first copying a shard (tens of MB) into one buffer."""
    if index_location not in INDEX_LOCATIONS:
        raise ValueError(f"index_location must be one of {INDEX_LOCATIONS}")
    lengths = [None if c is None else len(c) for c in chunks]
    body = [c for c in chunks if c is not None]
    if index_location == "end":
        return [*body, shard_index(lengths)]
    index_size = 16 * len(chunks) + 4
    return [shard_index(lengths, first_offset=index_size), *body]


def write_shard(
    array: zarr.Array, shard_coords: tuple[int, ...], chunks: Sequence[bytes | None]
) -> None:
    """Store pre-encoded inner chunks (C order; fewer than a full shard is fine) as one shard."""
    from zarr.codecs import ShardingCodec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.core.sync import sync

    metadata = array.metadata
    if not isinstance(metadata, ArrayV3Metadata):
        raise TypeError("write_shard needs a zarr v3 array")
    sharding = metadata.codecs[0]
    if not isinstance(sharding, ShardingCodec):
        raise TypeError("write_shard needs an array whose first codec is the sharding codec")
    index_codecs = [c.to_dict() for c in sharding.index_codecs]
    if index_codecs != DEFAULT_INDEX_CODECS:
        raise ValueError(f"pack_shard writes the default shard index, not {index_codecs}")
    grid = metadata.chunk_grid
    if not isinstance(grid, RegularChunkGrid):
        raise TypeError("write_shard needs an array with a regular chunk grid")
    shard_shape = grid.chunk_shape
    per_shard = math.prod(s // c for s, c in zip(shard_shape, sharding.chunk_shape, strict=True))
    if len(chunks) > per_shard:
        raise ValueError(f"{len(chunks)} chunks do not fit a shard of {per_shard}")
    # A shard's index always has one entry per inner chunk of a full shard.
    padded = [*chunks, *([None] * (per_shard - len(chunks)))]
    data = pack_shard(padded, index_location=sharding.index_location.value)
    key = array.metadata.encode_chunk_key(shard_coords)
    buffer = default_buffer_prototype().buffer.from_bytes(data)
    sync((array.store_path / key).set(buffer))
