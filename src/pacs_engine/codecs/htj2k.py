"""HTJ2K reversible (OpenJPH): the archive codec and the pass-through decoder for DICOM HTJ2K."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import (
    CodecError,
    FrameCodec,
    cast_exact,
    check_frame,
    expect_shape,
    zarr_codecs,
)
from pacs_engine.codecs._bitstream import BitstreamCodec, sign_correct_j2k
from pacs_engine.codecs._markers import j2k_declared_shape, j2k_header, j2k_reversible

# imagecodecs reports OpenJPH's errors from a callback that cannot raise: Python prints
# them ("Exception ignored in ... ojph error") through sys.unraisablehook and the decode
# returns the pixels decoded so far. `htj2k_decode` catches them there, per thread.
_CAUGHT = threading.local()
_INSTALL = threading.Lock()
_previous_hook: Any = sys.unraisablehook


def _unraisable(args: Any) -> None:
    """Keep an error raised while this thread decodes HTJ2K; pass anything else on."""
    caught = getattr(_CAUGHT, "errors", None)
    if caught is not None and "ojph" in str(args.exc_value).lower():
        caught.append(args.exc_value)
    else:
        _previous_hook(args)


def htj2k_decode(data: bytes) -> np.ndarray:
    """imagecodecs.htj2k_decode, raising CodecError when OpenJPH reported an error."""
    import imagecodecs

    global _previous_hook
    with _INSTALL:  # installed again if replaced since (pytest swaps the hook per test)
        if sys.unraisablehook is not _unraisable:
            _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    _CAUGHT.errors = []
    try:
        decoded = imagecodecs.htj2k_decode(data)
    finally:
        caught, _CAUGHT.errors = _CAUGHT.errors, None
    if caught:
        raise CodecError(f"HTJ2K codestream cannot be decoded: {caught[0]}")
    return decoded


@dataclass(frozen=True, eq=False)
class Htj2kCoder(FrameCodec):
    """High-Throughput JPEG 2000, reversible 5/3 wavelet: lossless and very fast.

    Signed frames are given to OpenJPH as native signed samples (an unsigned view of two's
    complement costs up to ~45 % of the ratio); colour frames use the reversible colour
    transform. The chunk is a standard HTJ2K codestream (DICOM 1.2.840.10008.1.2.4.201).
    """

    codec_name: ClassVar[str] = "pacs_engine.htj2k"
    short_name: ClassVar[str] = "htj2k"
    archive_candidate: ClassVar[bool] = True
    rank: ClassVar[int] = 2
    supported_dtypes: ClassVar[frozenset[str]] = frozenset({"u1", "i1", "u2", "i2"})

    def __init__(self) -> None:
        pass

    def encode_frame(self, frame: np.ndarray) -> bytes:
        """The reversible HTJ2K codestream of one image."""
        import imagecodecs

        check_frame(self, frame)
        return bytes(imagecodecs.htj2k_encode(frame, reversible=True))

    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image decoded from an HTJ2K codestream, as `dtype`."""
        decoded = htj2k_decode(data)
        return cast_exact(expect_shape(decoded, shape, self.codec_name), dtype)


class DicomHtj2kCoder(BitstreamCodec):
    """Pass-through decoder for frames kept as their DICOM HTJ2K codestream."""

    codec_name: ClassVar[str] = "pacs_engine.dicom_htj2k"
    short_name: ClassVar[str] = "dicom_htj2k"
    transfer_syntaxes: ClassVar[tuple[str, ...]] = (
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    )
    # The two lossless-only syntaxes; 4.203 may be irreversible, whose rounding differs
    # between OpenJPH and pydicom's OpenJPEG, so it goes through pydicom.
    fast_syntaxes: ClassVar[tuple[str, ...]] = transfer_syntaxes[:2]
    corrects_unused_bits: ClassVar[bool] = False  # pydicom corrects their sign only
    # A damaged codestream often decodes without any error in OpenJPH, to other pixels
    # than OpenJPEG (pydicom) gives, so the ingest checks both.
    cross_checked: ClassVar[bool] = True

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a JPEG 2000 (HT) codestream."""
        j2k_header(data)

    def declared_shape(self, data: bytes) -> tuple[int, int, int]:
        """(rows, columns, components) of the SIZ segment."""
        return j2k_declared_shape(data)

    def is_lossless(self, data: bytes) -> bool:
        """Lossless when every component is coded with the reversible 5-3 wavelet."""
        return j2k_reversible(data)

    def _decode_fast(self, data: bytes) -> np.ndarray:
        header = j2k_header(data)
        decoded = htj2k_decode(data)
        return sign_correct_j2k(decoded, header.is_signed, header.precision, self)


# The zarr codecs (Htj2kCodec, DicomHtj2kCodec), named by the entry points.
__getattr__ = zarr_codecs(__name__, Htj2kCoder, DicomHtj2kCoder)
