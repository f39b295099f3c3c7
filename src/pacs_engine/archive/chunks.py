"""Decode an array's stored chunks into frames with its own codec, as zarr would."""

from __future__ import annotations

from typing import Any

import numcodecs
import numpy as np

from pacs_engine.archive.pixel_store import ArraySpec


def spec_of(array: Any) -> ArraySpec:
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


def blosc_of(array: Any) -> numcodecs.Blosc:
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


def decode_frame_chunks(array: Any, spec: ArraySpec, chunks: list[bytes]) -> np.ndarray:
    """One frame from its stored chunks (tiles in row-major order)."""
    serializer = array.metadata.codecs[0].codecs[0]
    samples = spec.frame_shape[2:]
    _, r, c, *_ = spec.chunk_shape
    tile_shape = (r, c, *samples)
    out = np.zeros((spec.shard_shape[1], spec.shard_shape[2], *samples), array.dtype)
    tiles = iter(chunks)
    for top in range(0, spec.rows, r):
        for left in range(0, spec.columns, c):
            data = next(tiles)
            if hasattr(serializer, "decode_frame"):
                tile = serializer.decode_frame(data, tile_shape, np.dtype(array.dtype))
            else:
                raw = blosc_of(array).decode(data)
                tile = np.frombuffer(raw, np.dtype(array.dtype).newbyteorder("<")).reshape(
                    tile_shape
                )
            out[top : top + r, left : left + c] = tile
    return out[: spec.rows, : spec.columns]
