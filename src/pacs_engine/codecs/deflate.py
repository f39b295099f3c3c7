"""Pass-through decoder for Deflated Image Frame Compression (1.2.840.10008.1.2.8.1).

Each frame is the native encoding of one frame, deflated (RFC 1951). pydicom
3.0 cannot decode it, so the frame is inflated here and laid out exactly as
native pixel data is (`pacs_engine.codecs.native`).
"""

from __future__ import annotations

import zlib
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import CodecError, cast_exact, zarr_codecs
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.lazy import when_imported

DEFLATED_IMAGE_FRAME_COMPRESSION = "1.2.840.10008.1.2.8.1"


def _register(uid: ModuleType) -> None:
    """Add the syntax to pydicom's dictionary of UIDs (`pydicom.uid`)."""
    uid.UID_dictionary.setdefault(
        DEFLATED_IMAGE_FRAME_COMPRESSION,
        (
            "Deflated Image Frame Compression",
            "Transfer Syntax",
            "",
            "",
            "DeflatedImageFrameCompression",
        ),
    )


# pydicom 3.0 predates this syntax (DICOM 2024), so it refuses to write a data set in it;
# pynetdicom adds it to pydicom's dictionary when imported. Added here as well, so that
# what a process can write (a corrected or de-identified header) does not depend on
# whether it happened to import pynetdicom; once pydicom is imported, as an ingest of
# uncompressed files never imports it.
when_imported("pydicom.uid", _register)


class DicomDeflateCoder(BitstreamCodec):
    """Pass-through decoder for deflated native frames."""

    codec_name: ClassVar[str] = "pacs_engine.dicom_deflate"
    short_name: ClassVar[str] = "dicom_deflate"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (DEFLATED_IMAGE_FRAME_COMPRESSION,)
    fast_syntaxes: ClassVar[tuple[str, ...]] = transfer_syntaxes
    # Inflated frames are native samples, YBR ones included: the archive's label said
    # "ybr_full_to_rgb", and a transcoded file called them RGB.
    converts_ybr: ClassVar[bool] = False

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` inflates."""
        try:
            zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, 1)
        except zlib.error as error:
            raise CodecError(f"not a deflated frame: {error}") from None

    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The inflated frame, laid out as native pixel data."""
        from pacs_engine.codecs.native import LayoutError, PixelLayout, to_array

        layout = PixelLayout(
            shape[0],
            shape[1],
            self.samples_per_pixel,
            1,
            self.bits_allocated,
            self.bits_stored,
            self.pixel_representation,
            self.planar_configuration,
            self.photometric_interpretation,
            "PixelData",
        )
        need = layout.encoded_bytes
        try:
            # Inflate at most the frame and a pad byte (and one more to tell): a few KB of
            # deflate can declare gigabytes.
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            inflated = inflater.decompress(data, need + 2)
            if len(inflated) > need + 1:
                raise CodecError(f"the frame inflates to more than its {need} bytes")
            if not inflater.eof:  # a bounded decompress returns what it has, cut or not
                raise CodecError("the deflate stream is cut short")
            frame = to_array(inflated, layout, True, None)[0]
        except (zlib.error, LayoutError, CodecError) as error:
            raise CodecError(f"{self.codec_name}: {error}") from None
        return cast_exact(frame.reshape(shape), dtype)


# The zarr codecs (DicomDeflateCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, DicomDeflateCoder)
