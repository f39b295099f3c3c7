"""Pass-through decoder for DICOM RLE Lossless frames."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import CodecError, zarr_codecs
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.codecs._markers import rle_segment_count

#: pydicom's name for its pylibjpeg-rle plugin, the one decoder of 1-bit RLE.
PYLIBJPEG = "pylibjpeg"


class DicomRleCoder(BitstreamCodec):
    """Pass-through decoder for RLE Lossless; decoded by pydicom, whose pylibjpeg-rle plugin
    (Rust) comes first and its own (numpy) decoder after."""

    codec_name: ClassVar[str] = "pacs_engine.dicom_rle"
    short_name: ClassVar[str] = "dicom_rle"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = ("1.2.840.10008.1.2.5",)

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is an RLE frame with one segment per byte plane."""
        count = rle_segment_count(data)
        # Bits Allocated 1: one segment, each pixel padded to a byte (PS3.5 G.2)
        expected = self.samples_per_pixel * -(-self.bits_allocated // 8)
        if count != expected:
            raise CodecError(f"RLE frame has {count} segments, expected {expected}")

    def missing_decoder(self) -> str | None:
        """1-bit RLE has one decoder, pylibjpeg-rle: pydicom's own takes whole bytes only."""
        if self.bits_allocated == 1:
            from pydicom.pixels import get_decoder

            if PYLIBJPEG not in get_decoder(self.pydicom_syntax).available_plugins:
                return "pylibjpeg-rle is not installed: pydicom's own takes whole bytes"
        return super().missing_decoder()

    def check_size(self, data: bytes, shape: tuple[int, ...]) -> None:
        """RLE declares no size, only its segments: one per byte plane of a sample."""
        self.check_bitstream(data)

    def _decode_pydicom(self, data: bytes, shape: tuple[int, ...], plugin: str = "") -> np.ndarray:
        """pydicom's decode, where a panic of pylibjpeg-rle passes on to pydicom's own decoder
        like its other errors do; a 1-bit frame must hold 0 and 1 only."""
        try:
            frame = super()._decode_pydicom(data, shape, plugin)
        except BaseException as error:
            # pylibjpeg-rle panics on some damaged streams (an index out of bounds): pyo3 raises
            # PanicException, a BaseException, which pydicom does not catch to try its own
            # decoder and the ingest's `except Exception` would not catch either.
            if type(error).__name__ != "PanicException":
                raise
            frame = super()._decode_pydicom(data, shape, "pydicom")
        # pylibjpeg-rle gives a 1-bit segment's bytes as they are: a byte above 1 is no 1-bit
        # pixel, and no native 1-bit file holds it (PS3.5 G.2 pads each pixel to a byte).
        if self.bits_allocated == 1 and frame.max(initial=0) > 1:
            raise CodecError(f"{self.codec_name}: a 1-bit RLE frame holds bytes other than 0 and 1")
        return frame


# The zarr codecs (DicomRleCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, DicomRleCoder)
