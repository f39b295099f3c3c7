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
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pacs_engine.archive.pixel_store import PixelStore

#: Source transfer syntaxes whose decoded values a DICOM reader takes as they are (pydicom
#: corrects their sign, which the archive's decoders do too, not their unused bits):
#: JPEG-LS lossless and near-lossless, JPEG 2000 and High-Throughput JPEG 2000.
AS_DECODED_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)


def read_values(
    pixels: PixelStore,
    path: str,
    frames: Sequence[int],
    window: tuple[slice, slice] | None = None,
    threads: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """`PixelStore.read_frames`, each value as a DICOM reader gives it (`correct_unused_bits`)."""
    from pacs_engine.archive.pixel_store import FULL_FRAME

    read = pixels.read_frames(path, frames, window or FULL_FRAME, threads, out=out)
    return correct_unused_bits(read, unused_bits(pixels, path))


def correct_unused_bits(frames: np.ndarray, bits: tuple[int, bool] | None) -> np.ndarray:
    """`frames`, in place: the bits above `bits` = (Bits Stored, signed) cleared, or set from
    the sign bit of a signed value; as they are for None."""
    if bits is None or not frames.size:
        return frames
    stored, signed = bits
    if signed:
        shift = frames.dtype.itemsize * 8 - stored
        np.left_shift(frames, shift, out=frames)
        np.right_shift(frames, shift, out=frames)  # arithmetic: the sign bit fills them
    else:
        np.bitwise_and(frames, frames.dtype.type((1 << stored) - 1), out=frames)
    return frames


@functools.lru_cache(maxsize=4096)
def unused_bits(pixels: PixelStore, path: str) -> tuple[int, bool] | None:
    """(Bits Stored, signed) of an array whose frames may hold bits above Bits Stored that a
    DICOM reader corrects, from its zarr.json; None when it has none (Bits Stored fills its
    integers, floating values, a JPEG-LS or JPEG 2000 source). An array's attributes are
    written once, with it."""
    dtype = pixels.spec(path).dtype
    attributes = pixels.meta(path).get("attributes") or {}
    stored = attributes.get("bits_stored")
    source = attributes.get("source_transfer_syntax_uid") or attributes.get("transfer_syntax_uid")
    if dtype.kind not in "iu" or not isinstance(stored, int) or source in AS_DECODED_SYNTAXES:
        return None
    if not 0 < stored < dtype.itemsize * 8:
        return None
    return stored, dtype.kind == "i"
