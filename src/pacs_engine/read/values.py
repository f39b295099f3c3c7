"""Decoded frames with the values a DICOM reader gives them: the bits above Bits Stored.

The archive keeps each frame's values as written, bits above Bits Stored included (a
writer may leave overlay bits there, or not extend a negative value's sign over them):
`Archive.frames` returns them so, as export and verify need. A reader of pixel values
(pydicom's `pixel_array`, and so a training loop) gets them cleared, or set from the sign
bit of a signed value, for every source but JPEG-LS and JPEG 2000, whose decoders give the
values as the bitstream holds them. The read layer's frames go through `read_values`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pacs_engine.codecs import PASS_THROUGH_BY_SYNTAX
from pacs_engine.codecs._base import CodecError, correct_unused_bits, unused_bits

if TYPE_CHECKING:
    from pacs_engine.archive.pixel_store import PixelStore


def read_values(
    pixels: PixelStore,
    path: str,
    frames: Sequence[int],
    window: tuple[slice, slice] | None = None,
    threads: int = 1,
    out: np.ndarray | None = None,
    names: Callable[[], str] | None = None,
) -> np.ndarray:
    """`PixelStore.read_frames`, each value as a DICOM reader gives it (`correct_unused_bits`).

    `names` says which instances the frames are of, for the error a frame that cannot be
    read raises (the store's names the array and frame only): called only then.
    """
    from pacs_engine.archive.pixel_store import FULL_FRAME, ShardError

    try:
        read = pixels.read_frames(path, frames, window or FULL_FRAME, threads, out=out)
    except (CodecError, ShardError) as error:
        if names is None:
            raise
        raise type(error)(f"{names()}: {error}") from error
    return correct_unused_bits(read, array_unused_bits(pixels, path))


@functools.lru_cache(maxsize=4096)
def array_unused_bits(pixels: PixelStore, path: str) -> tuple[int, bool] | None:
    """(Bits Stored, signed) of an array whose frames may hold bits above Bits Stored that a
    DICOM reader corrects, from its zarr.json; None when it has none (Bits Stored fills its
    integers, floating values, a JPEG-LS or JPEG 2000 source). An array's attributes are
    written once, with it."""
    dtype = pixels.spec(path).dtype
    attributes = pixels.meta(path).get("attributes") or {}
    source = attributes.get("source_transfer_syntax_uid") or attributes.get("transfer_syntax_uid")
    decoder = PASS_THROUGH_BY_SYNTAX.get(str(source))  # None: a native source
    if decoder is not None and not decoder.corrects_unused_bits:
        return None
    return unused_bits(attributes.get("bits_stored"), attributes.get("pixel_representation"), dtype)
