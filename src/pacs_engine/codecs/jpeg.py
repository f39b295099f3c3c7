"""Pass-through decoders for DICOM JPEG: baseline/extended (DCT) and lossless process 14."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import CodecError, zarr_codecs
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.codecs._markers import (
    JPEG_FRAME_MARKERS,
    JPEG_LOSSLESS_MARKERS,
    SOF_BASELINE,
    SOF_EXTENDED,
    SOF_LOSSLESS,
    jpeg_declared_shape,
    jpeg_frame_header,
    jpeg_scan_parameters,
)

JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
#: The retired DCT syntaxes: extended with arithmetic coding (.52), spectral selection
#: (.53, .54), full progression (.55, .56) and the hierarchical ones (.59 to .64).
RETIRED_DCT = tuple(f"1.2.840.10008.1.2.4.{n}" for n in (52, 53, 54, 55, 56, *range(59, 65)))
#: The retired lossless syntaxes: process 15 (arithmetic coding), hierarchical 28 and 29.
RETIRED_LOSSLESS = tuple(f"1.2.840.10008.1.2.4.{n}" for n in (58, 65, 66))


class DicomJpegCoder(BitstreamCodec):
    """Pass-through decoder for JPEG DCT frames: baseline (8-bit), extended (12-bit), retired.

    Always decoded by pydicom's own decoder: DCT decoders differ by a few grey levels
    (libjpeg-turbo vs pydicom's libjpeg measured up to 3 apart on the corpus), and the
    archive promises pydicom's pixels. YBR_FULL(_422) becomes RGB as in pixel_array.
    The retired syntaxes (progressive, spectral selection, arithmetic, hierarchical) go
    through the decoder pydicom uses for extended JPEG: its libjpeg reads them all.
    """

    codec_name: ClassVar[str] = "pacs_engine.dicom_jpeg"
    short_name: ClassVar[str] = "dicom_jpeg"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (
        "1.2.840.10008.1.2.4.50",
        JPEG_EXTENDED,
        *RETIRED_DCT,
    )
    decoded_as: ClassVar[dict[str, str]] = dict.fromkeys(RETIRED_DCT, JPEG_EXTENDED)

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a JPEG stream of a DCT process its syntax allows."""
        marker = jpeg_frame_header(data).marker
        retired = self.transfer_syntax_uid in RETIRED_DCT
        allowed = JPEG_FRAME_MARKERS if retired else {SOF_BASELINE, SOF_EXTENDED}
        if marker not in allowed:
            what = "a JPEG process" if retired else "baseline/extended"
            raise CodecError(f"JPEG frame has SOF marker FF{marker:02X}, not {what}")

    def declared_shape(self, data: bytes) -> tuple[int, int, int]:
        """(rows, columns, components) of the frame header."""
        return jpeg_declared_shape(data)


class DicomJpegLosslessCoder(BitstreamCodec):
    """Pass-through decoder for JPEG lossless, non-hierarchical (process 14, any predictor)."""

    codec_name: ClassVar[str] = "pacs_engine.dicom_jpeg_lossless"
    short_name: ClassVar[str] = "dicom_jpeg_lossless"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (
        JPEG_LOSSLESS,
        "1.2.840.10008.1.2.4.70",
        *RETIRED_LOSSLESS,
    )
    # Lossless: any conforming decoder gives the same samples (imagecodecs' ljpeg reads
    # process 14 only: the retired syntaxes go through pydicom's libjpeg).
    fast_syntaxes: ClassVar[tuple[str, ...]] = (JPEG_LOSSLESS, "1.2.840.10008.1.2.4.70")
    decoded_as: ClassVar[dict[str, str]] = dict.fromkeys(RETIRED_LOSSLESS, JPEG_LOSSLESS)
    # On damaged streams imagecodecs' ljpeg and pydicom's libjpeg give different pixels
    # without an error (on the corpus: 59 of 110 flipped bits), so the ingest checks both.
    cross_checked: ClassVar[bool] = True

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a lossless JPEG stream of a process its syntax
        allows (SOF3; retired: SOF11 or hierarchical)."""
        marker = jpeg_frame_header(data).marker
        retired = self.transfer_syntax_uid in RETIRED_LOSSLESS
        if marker not in (JPEG_LOSSLESS_MARKERS if retired else {SOF_LOSSLESS}):
            raise CodecError(f"JPEG frame has SOF marker FF{marker:02X}, not lossless")

    def declared_shape(self, data: bytes) -> tuple[int, int, int]:
        """(rows, columns, components) of the frame header."""
        return jpeg_declared_shape(data)

    def is_lossless(self, data: bytes) -> bool:
        """Lossless unless the scan's point transform (Al) drops low bits."""
        return jpeg_scan_parameters(data)[2] & 0x0F == 0

    def _decode_fast(self, data: bytes) -> np.ndarray:
        # pydicom reinterprets the decoded samples' bytes with the dataset's dtype; the
        # same-size astype in decode_frame does exactly that (uint16 -> int16 wraps).
        import imagecodecs

        return imagecodecs.ljpeg_decode(data)


# The zarr codecs (DicomJpegCodec, DicomJpegLosslessCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, DicomJpegCoder, DicomJpegLosslessCoder)
