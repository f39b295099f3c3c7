"""JPEG 2000 reversible (OpenJPEG): the archive codec and the pass-through decoder for DICOM J2K."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import FrameCodec, cast_exact, check_frame, expect_shape, zarr_codecs
from pacs_engine.codecs._bitstream import BitstreamCodec, sign_correct_j2k
from pacs_engine.codecs._markers import j2k_declared_shape, j2k_header, j2k_reversible


@dataclass(frozen=True, eq=False)
class Jpeg2kCoder(FrameCodec):
    """JPEG 2000 Part 1, reversible 5/3 wavelet (never ``level=100``, which is lossy).

    Signed frames are encoded as native signed samples. The chunk is a raw J2K codestream
    (DICOM 1.2.840.10008.1.2.4.90). Slow (~30 MB/s); kept for interchange, not as default.
    """

    codec_name: ClassVar[str] = "pacs_engine.jpeg2k"
    short_name: ClassVar[str] = "jpeg2k"
    rank: ClassVar[int] = 3  # slow: chosen by name only
    supported_dtypes: ClassVar[frozenset[str]] = frozenset({"u1", "i1", "u2", "i2"})

    def __init__(self) -> None:
        pass

    def encode_frame(self, frame: np.ndarray) -> bytes:
        """The reversible JPEG 2000 codestream of one image."""
        import imagecodecs

        check_frame(self, frame)
        # One thread: zarr already runs one chunk per thread.
        return bytes(
            imagecodecs.jpeg2k_encode(frame, reversible=True, codecformat="J2K", numthreads=1)
        )

    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image decoded from a JPEG 2000 codestream, as `dtype`."""
        import imagecodecs

        decoded = imagecodecs.jpeg2k_decode(data, numthreads=1)
        return cast_exact(expect_shape(decoded, shape, self.codec_name), dtype)


class DicomJpeg2kCoder(BitstreamCodec):
    """Pass-through decoder for frames kept as their DICOM JPEG 2000 codestream."""

    codec_name: ClassVar[str] = "pacs_engine.dicom_jpeg2k"
    short_name: ClassVar[str] = "dicom_jpeg2k"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
    )
    # Lossless-only 4.90 is exact with imagecodecs; 4.91 may use the irreversible 9/7
    # wavelet, whose rounding is the decoder's, so it goes through pydicom's decoder.
    fast_syntaxes: ClassVar[tuple[str, ...]] = transfer_syntaxes[:1]
    corrects_unused_bits: ClassVar[bool] = False  # pydicom corrects their sign only

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a JPEG 2000 codestream (or JP2 file)."""
        j2k_header(data)

    def declared_shape(self, data: bytes) -> tuple[int, int, int]:
        """(rows, columns, components) of the SIZ segment."""
        return j2k_declared_shape(data)

    def is_lossless(self, data: bytes) -> bool:
        """Lossless when every component is coded with the reversible 5-3 wavelet."""
        return j2k_reversible(data)

    def _decode_fast(self, data: bytes) -> np.ndarray:
        import imagecodecs

        header = j2k_header(data)
        decoded = imagecodecs.jpeg2k_decode(data, numthreads=1)
        return sign_correct_j2k(decoded, header.is_signed, header.precision, self)


# The zarr codecs (Jpeg2kCodec, DicomJpeg2kCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, Jpeg2kCoder, DicomJpeg2kCoder)
