"""JPEG-LS lossless (CharLS): the archive codec and the pass-through decoder for DICOM JPEG-LS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

import pacs_engine._native.jpegls as jpegls
from pacs_engine.codecs._base import (
    CodecError,
    FrameCodec,
    cast_exact,
    check_frame,
    config_value,
    expect_shape,
    largest,
    sign_extend,
    signed_precision,
    unsigned_precision,
    value_range,
    zarr_codecs,
)
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.codecs._markers import (
    SOF_JPEGLS,
    jpeg_declared_shape,
    jpeg_frame_header,
    jpeg_scan_parameters,
)

PRECISIONS = ("minimal", "dtype")
# CharLS encodes 2..16 bit samples; 1-bit data is stored with P=2.
_MIN_P, _MAX_P = 2, 16


def encode_jpegls(frame: np.ndarray, precision: int) -> bytes:
    """The lossless JPEG-LS stream of the samples' low P = `precision` bits.

    Unsigned samples below 2**P are encoded as they are, signed ones as their two's
    complement in P bits (what DICOM JPEG-LS with Pixel Representation 1 holds).
    """
    import numpy as np

    rows, cols = frame.shape[:2]
    samples = frame.shape[2] if frame.ndim == 3 else 1
    storage = np.dtype("u1") if precision <= 8 else np.dtype("<u2")
    values = _as_storage(frame, storage).reshape(-1).view(np.uint8)
    try:
        return jpegls.encode(values, rows, cols, samples, precision)
    except ValueError as error:  # CharLS refused the frame (size or P out of range)
        raise CodecError(str(error)) from None


def _as_storage(frame: np.ndarray, storage: np.dtype) -> np.ndarray:
    """The samples as C-order `storage` integers, each taken modulo 2**(8 * storage size).

    CharLS encodes only the low P bits of each sample it reads (it masks every line), so
    the two's complement of a signed frame needs no pass of its own: an integer frame of
    the storage size is handed over as it is, viewed as unsigned, without a copy when it is
    C-contiguous and little-endian. Other frames are cast once (wrapping, like C).
    """
    import numpy as np

    dtype = frame.dtype
    little_endian = dtype == dtype.newbyteorder("<")
    if dtype.kind in "ui" and dtype.itemsize == storage.itemsize and little_endian:
        return np.ascontiguousarray(frame).view(storage)
    return frame.astype(storage, order="C")


def jpegls_precision(data: bytes) -> int:
    """The sample precision P of a JPEG-LS stream."""
    header = jpeg_frame_header(data)
    if header.marker != SOF_JPEGLS:
        raise CodecError("not a JPEG-LS bitstream: no SOF55 segment")
    return header.precision


@dataclass(frozen=True, eq=False)
class JpegLsCoder(FrameCodec):
    """JPEG-LS lossless with the smallest sample precision that holds the frame.

    ``precision="minimal"`` (default) encodes each frame with P = the bits its values need
    (two's complement in P bits for signed dtypes, which is what DICOM JPEG-LS decoders
    expect for Pixel Representation 1). ``precision="dtype"`` is plain JPEG-LS at 8/16 bits.
    The chunk is a standard JPEG-LS stream either way; P is in its header, so decoding
    needs only the array dtype.
    """

    codec_name: ClassVar[str] = "pacs_engine.jpegls"
    short_name: ClassVar[str] = "jpegls"
    archive_candidate: ClassVar[bool] = True
    supported_dtypes: ClassVar[frozenset[str]] = frozenset({"u1", "i1", "u2", "i2", "u4", "i4"})

    precision: str = "minimal"

    def __init__(self, *, precision: str = "minimal") -> None:
        object.__setattr__(self, "precision", config_value(precision, PRECISIONS, "precision"))

    def encode_frame(self, frame: np.ndarray) -> bytes:
        """The JPEG-LS stream of one image (rows, cols[, samples])."""
        import imagecodecs
        import numpy as np

        check_frame(self, frame)
        signed = frame.dtype.kind == "i"
        if self.precision == "dtype" and frame.dtype.itemsize <= 2:
            unsigned = frame.view(frame.dtype.str.replace("i", "u")) if signed else frame
            return bytes(imagecodecs.jpegls_encode(np.ascontiguousarray(unsigned)))
        if signed:
            bits = signed_precision(*value_range(frame))
        else:
            bits = unsigned_precision(largest(frame))
        bits = max(bits, _MIN_P)
        if bits > _MAX_P:
            raise CodecError(f"JPEG-LS holds at most 16 bits; this frame needs {bits}")
        # Signed frames as two's complement truncated to P bits; decode sign-extends from P.
        return encode_jpegls(frame, bits)

    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image decoded from a JPEG-LS stream, as `dtype`."""
        import imagecodecs
        import numpy as np

        if len(shape) == 2:
            out = np.empty(shape, dtype)
            self.decode_into(data, shape, out)
            return out
        decoded = expect_shape(imagecodecs.jpegls_decode(data), shape, self.codec_name)
        if dtype.kind == "i":
            return sign_extend(decoded, jpegls_precision(data), dtype)
        return cast_exact(decoded, dtype)

    def decode_into(
        self,
        data: bytes | memoryview,
        shape: tuple[int, ...],
        out: np.ndarray,
        top: int = 0,
        left: int = 0,
    ) -> None:
        """Decode a grey image straight into `out` (its part at (top, left)), by the vendored
        CharLS: no intermediate array, and signed samples sign-extended as they are copied."""
        if len(shape) != 2:  # colour: CharLS's interleaved samples, through decode_frame
            super().decode_into(data, shape, out, top, left)
            return
        try:
            jpegls.decode_into(data, out, top, left, *shape)
        except ValueError as error:  # CharLS refused the stream, or it is not this frame
            raise CodecError(f"{self.codec_name}: {error}") from None

    def decode_tiles(
        self,
        tiles: Sequence[bytes | memoryview],
        tile_shape: tuple[int, ...],
        across: int,
        out: np.ndarray,
        top: int,
        left: int,
    ) -> bool:
        """Grey tiles in one native call (the per-tile Python work was a third of a 32x32
        tile's decode); colour: False."""
        if len(tile_shape) != 2:
            return False
        try:
            jpegls.decode_tiles(tiles, out, top, left, *tile_shape, across)
        except ValueError as error:  # CharLS refused a tile's stream, or it is not this tile
            raise CodecError(f"{self.codec_name}: {error}") from None
        return True


class DicomJpegLsCoder(BitstreamCodec):
    """Pass-through decoder for frames kept as their DICOM JPEG-LS bitstream (lossless or near)."""

    codec_name: ClassVar[str] = "pacs_engine.dicom_jpegls"
    short_name: ClassVar[str] = "dicom_jpegls"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    )
    # JPEG-LS (also near-lossless) is integer-exact, so CharLS equals pydicom's decoder.
    fast_syntaxes: ClassVar[tuple[str, ...]] = transfer_syntaxes
    corrects_unused_bits: ClassVar[bool] = False  # pydicom corrects their sign only

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a JPEG-LS stream."""
        jpegls_precision(data)

    def declared_shape(self, data: bytes) -> tuple[int, int, int]:
        """(rows, columns, components) of the SOF55 segment."""
        return jpeg_declared_shape(data)

    def is_lossless(self, data: bytes) -> bool:
        """Lossless when NEAR is 0 and no point transform drops low bits."""
        near, _, point = jpeg_scan_parameters(data)
        return near == 0 and point & 0x0F == 0

    def _decode_fast(self, data: bytes) -> np.ndarray:
        import imagecodecs

        decoded = imagecodecs.jpegls_decode(data)
        if self.pixel_representation == 1:
            # JPEG-LS has no sign: like pydicom, sign-extend from the stream's precision.
            return sign_extend(decoded, jpegls_precision(data), self.pixel_dtype)
        return decoded


# The zarr codecs (JpegLsCodec, DicomJpegLsCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, JpegLsCoder, DicomJpegLsCoder)
