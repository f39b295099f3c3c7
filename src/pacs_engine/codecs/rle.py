"""Pass-through decoder for DICOM RLE Lossless frames."""

from __future__ import annotations

from typing import ClassVar

from pacs_engine.codecs._base import CodecError, zarr_codecs
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.codecs._markers import rle_segment_count


class DicomRleCoder(BitstreamCodec):
    """Pass-through decoder for RLE Lossless; decoded by pydicom's own (numpy) RLE decoder."""

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
        """pydicom decodes whole bytes per sample only: 1-bit RLE has no decoder."""
        if self.bits_allocated == 1:
            return "pydicom decodes RLE of whole bytes per sample only"
        return super().missing_decoder()

    def check_size(self, data: bytes, shape: tuple[int, ...]) -> None:
        """RLE declares no size, only its segments: one per byte plane of a sample."""
        self.check_bitstream(data)


# The zarr codecs (DicomRleCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, DicomRleCoder)
