"""JPEG-XL lossless (libjxl): an archive codec, strongest on MR and colour at low effort."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import (
    CodecError,
    FrameCodec,
    cast_exact,
    check_frame,
    expect_shape,
    unsigned_precision,
    value_range,
    zarr_codecs,
)

# ISO BMFF boxes of a JPEG-XL container file.
_SIGNATURE_BOX = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_FTYP_BOX = b"\x00\x00\x00\x14ftypjxl \x00\x00\x00\x00jxl "
# A private box holding the per-frame offset; JPEG-XL readers skip unknown boxes.
OFFSET_BOX = b"pcof"
# Effort 1 is not lossless on all real images with libjxl 0.11.2 (see JpegXlCoder).
MIN_EFFORT = 2


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _with_offset(encoded: bytes, offset: int) -> bytes:
    """`encoded` as a JPEG-XL container that carries `offset` in a private box."""
    box = _box(OFFSET_BOX, struct.pack(">q", offset))
    if encoded.startswith(_SIGNATURE_BOX + _FTYP_BOX[:8]):
        head = len(_SIGNATURE_BOX) + len(_FTYP_BOX)
        return encoded[:head] + box + encoded[head:]
    return _SIGNATURE_BOX + _FTYP_BOX + box + _box(b"jxlc", encoded)


def frame_offset(data: bytes) -> int:
    """The offset stored in a JPEG-XL chunk's private box (0 when there is none)."""
    if not data.startswith(_SIGNATURE_BOX):
        return 0
    i = 0
    while i + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, i)
        if kind == OFFSET_BOX:
            return struct.unpack_from(">q", data, i + 8)[0]
        if kind in (b"jxlc", b"jxlp") or length < 8:
            return 0
        i += length
    return 0


@dataclass(frozen=True, eq=False)
class JpegXlCoder(FrameCodec):
    """JPEG-XL lossless (modular) at a configurable effort (2 fastest allowed .. 10 smallest).

    Effort 1 (libjxl's "fast lossless" path) is refused: with libjxl 0.11.2 it produced
    wrong pixels for one real RGB frame of the corpus and an undecodable stream for another.

    Each frame is declared with the fewest bits its values need. Frames with negative
    values are shifted by their minimum, and that offset travels in a private ``pcof`` box
    of the JPEG-XL container, so every chunk decodes on its own.
    """

    codec_name: ClassVar[str] = "pacs_engine.jpegxl"
    short_name: ClassVar[str] = "jpegxl"
    archive_candidate: ClassVar[bool] = True
    # Effort 2 encodes colour at ~40 MB/s only, and effort 1 is not safe.
    candidate_colour: ClassVar[bool] = False
    rank: ClassVar[int] = 1
    supported_dtypes: ClassVar[frozenset[str]] = frozenset({"u1", "i1", "u2", "i2", "u4", "i4"})

    effort: int = 2

    def __init__(self, *, effort: int = 2) -> None:
        if not MIN_EFFORT <= int(effort) <= 10:
            raise CodecError(f"JPEG-XL effort must be {MIN_EFFORT}..10, not {effort}")
        object.__setattr__(self, "effort", int(effort))

    def encode_frame(self, frame: np.ndarray) -> bytes:
        """The lossless JPEG-XL stream of one image."""
        import imagecodecs
        import numpy as np

        check_frame(self, frame)
        low, high = value_range(frame)
        offset = low if low < 0 else 0
        bits = unsigned_precision(high - offset)
        if bits > 16:
            raise CodecError(f"JPEG-XL lossless holds at most 16 bits; this frame needs {bits}")
        values = frame.astype(np.int32) - offset if offset else frame
        values = np.ascontiguousarray(values, dtype=np.uint8 if bits <= 8 else np.uint16)
        encoded = bytes(
            imagecodecs.jpegxl_encode(
                values,
                lossless=True,
                effort=self.effort,
                bitspersample=bits,
                numthreads=1,
            )
        )
        return _with_offset(encoded, offset) if offset else encoded

    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image decoded from a JPEG-XL stream, as `dtype`."""
        import imagecodecs
        import numpy as np

        decoded = imagecodecs.jpegxl_decode(data, numthreads=1)
        decoded = expect_shape(decoded, shape, self.codec_name)
        offset = frame_offset(data)
        if offset:
            decoded = decoded.astype(np.int64) + offset
        return cast_exact(decoded, dtype)


# The zarr codecs (JpegXlCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, JpegXlCoder)
