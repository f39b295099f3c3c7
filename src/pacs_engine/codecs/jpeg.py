"""Pass-through decoders for DICOM JPEG: baseline/extended (DCT) and lossless process 14."""

from __future__ import annotations

from typing import ClassVar

import imagecodecs
import numpy as np

from pacs_engine.codecs._base import CodecError
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.codecs._markers import (
    SOF_BASELINE,
    SOF_EXTENDED,
    SOF_LOSSLESS,
    jpeg_declared_shape,
    jpeg_frame_header,
)


class DicomJpegCodec(BitstreamCodec):
    """Pass-through decoder for JPEG baseline (8-bit) and extended (12-bit) DCT frames.

    Always decoded by pydicom's own decoder: DCT decoders differ by a few grey levels
    (libjpeg-turbo vs pydicom's libjpeg measured up to 3 apart on the corpus), and the
    archive promises pydicom's pixels. YBR_FULL(_422) becomes RGB as in pixel_array.
    """

    codec_name: ClassVar[str] = "pacs_engine.dicom_jpeg"
    short_name: ClassVar[str] = "dicom_jpeg"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
    )

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a baseline or extended sequential JPEG stream."""
        marker = jpeg_frame_header(data).marker
        if marker not in (SOF_BASELINE, SOF_EXTENDED):
            raise CodecError(f"JPEG frame has SOF marker FF{marker:02X}, not baseline/extended")

    def declared_shape(self, data: bytes) -> tuple[int, int, int]:
        """(rows, columns, components) of the frame header."""
        return jpeg_declared_shape(data)


class DicomJpegLosslessCodec(BitstreamCodec):
    """Pass-through decoder for JPEG lossless, non-hierarchical (process 14, any predictor)."""

    codec_name: ClassVar[str] = "pacs_engine.dicom_jpeg_lossless"
    short_name: ClassVar[str] = "dicom_jpeg_lossless"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    )
    # Lossless: any conforming decoder gives the same samples.
    fast_syntaxes: ClassVar[tuple[str, ...]] = transfer_syntaxes
    # On damaged streams imagecodecs' ljpeg and pydicom's libjpeg give different pixels
    # without an error (on the corpus: 59 of 110 flipped bits), so the ingest checks both.
    cross_checked: ClassVar[bool] = True

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a lossless (SOF3) JPEG stream."""
        marker = jpeg_frame_header(data).marker
        if marker != SOF_LOSSLESS:
            raise CodecError(f"JPEG frame has SOF marker FF{marker:02X}, not lossless SOF3")

    def declared_shape(self, data: bytes) -> tuple[int, int, int]:
        """(rows, columns, components) of the frame header."""
        return jpeg_declared_shape(data)

    def _decode_fast(self, data: bytes) -> np.ndarray:
        # pydicom reinterprets the decoded samples' bytes with the dataset's dtype; the
        # same-size astype in decode_frame does exactly that (uint16 -> int16 wraps).
        return imagecodecs.ljpeg_decode(data)
