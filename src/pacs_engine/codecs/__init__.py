"""Lossless Zarr v3 codecs of the archive: one chunk is one frame.

Archive codecs encode pixels (JPEG-LS, HTJ2K, JPEG 2000, JPEG-XL); pass-through codecs
decode frames kept as their original DICOM bitstream exactly as pydicom's ``pixel_array``.
All are registered under the ``zarr.codecs`` entry point group, so ``zarr.open_array``
reads an archive without importing pacs_engine first; that list is also the package's one
registry of codecs (`pacs_engine.codecs.registry`). See docs/codecs.md.
"""

from pacs_engine.codecs._base import CodecError, FrameCodec, NoDecoderError
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.codecs.choose import choose_codec, default_codec, fast_candidates
from pacs_engine.codecs.deflate import DicomDeflateCodec
from pacs_engine.codecs.general import general_purpose_codecs
from pacs_engine.codecs.htj2k import DicomHtj2kCodec, Htj2kCodec
from pacs_engine.codecs.jpeg import DicomJpegCodec, DicomJpegLosslessCodec
from pacs_engine.codecs.jpeg2k import DicomJpeg2kCodec, Jpeg2kCodec
from pacs_engine.codecs.jpegls import DicomJpegLsCodec, JpegLsCodec
from pacs_engine.codecs.jpegxl import JpegXlCodec
from pacs_engine.codecs.registry import (
    ARCHIVE_CODECS,
    PASS_THROUGH_BY_SYNTAX,
    PASS_THROUGH_CODECS,
    REGISTRY,
)
from pacs_engine.codecs.rle import DicomRleCodec
from pacs_engine.codecs.sharding import pack_shard, write_shard


def pass_through_codec(transfer_syntax_uid: str, **pixel_module: object) -> BitstreamCodec:
    """The pass-through decoder for frames of `transfer_syntax_uid`, given the pixel module.

    `pixel_module` holds photometric_interpretation, bits_allocated, bits_stored,
    pixel_representation, samples_per_pixel and planar_configuration (snake_case).
    """
    cls = PASS_THROUGH_BY_SYNTAX.get(transfer_syntax_uid)
    if cls is None:
        raise CodecError(f"no pass-through decoder for transfer syntax {transfer_syntax_uid}")
    # The fields are ints and one str: the codec's own (dataclass) fields say which is which.
    return cls(transfer_syntax_uid=transfer_syntax_uid, **pixel_module)  # type: ignore[arg-type]


__all__ = [
    "ARCHIVE_CODECS",
    "PASS_THROUGH_BY_SYNTAX",
    "PASS_THROUGH_CODECS",
    "REGISTRY",
    "BitstreamCodec",
    "CodecError",
    "DicomDeflateCodec",
    "DicomHtj2kCodec",
    "DicomJpeg2kCodec",
    "DicomJpegCodec",
    "DicomJpegLosslessCodec",
    "DicomJpegLsCodec",
    "DicomRleCodec",
    "FrameCodec",
    "Htj2kCodec",
    "Jpeg2kCodec",
    "JpegLsCodec",
    "JpegXlCodec",
    "NoDecoderError",
    "choose_codec",
    "default_codec",
    "fast_candidates",
    "general_purpose_codecs",
    "pack_shard",
    "pass_through_codec",
    "write_shard",
]
