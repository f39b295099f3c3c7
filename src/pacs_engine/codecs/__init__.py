"""Lossless Zarr v3 codecs of the archive: one chunk is one frame.

Archive codecs encode pixels (JPEG-LS, HTJ2K, JPEG 2000, JPEG-XL); pass-through codecs
decode frames kept as their original DICOM bitstream exactly as pydicom's ``pixel_array``.
All are registered under the ``zarr.codecs`` entry point group, so ``zarr.open_array``
reads an archive without importing pacs_engine first; that list is also the package's one
registry of codecs (`pacs_engine.codecs.registry`). See docs/codecs.md.

Each codec is a frame coder (``JpegLsCoder``: encode and decode one chunk's bytes, no
zarr) and the zarr codec made from it (``JpegLsCodec``), which this package gives on first
use: importing it, and encoding frames, imports no zarr.
"""

from typing import Any

from pacs_engine.codecs._base import CodecError, FrameCodec, NoDecoderError, zarr_codecs
from pacs_engine.codecs._bitstream import BitstreamCodec
from pacs_engine.codecs.choose import choose_codec, default_codec, fast_candidates
from pacs_engine.codecs.deflate import DicomDeflateCoder
from pacs_engine.codecs.htj2k import DicomHtj2kCoder, Htj2kCoder
from pacs_engine.codecs.jpeg import DicomJpegCoder, DicomJpegLosslessCoder
from pacs_engine.codecs.jpeg2k import DicomJpeg2kCoder, Jpeg2kCoder
from pacs_engine.codecs.jpegls import DicomJpegLsCoder, JpegLsCoder
from pacs_engine.codecs.jpegxl import JpegXlCoder
from pacs_engine.codecs.registry import (
    ARCHIVE_CODECS,
    PASS_THROUGH_BY_SYNTAX,
    PASS_THROUGH_CODECS,
    REGISTRY,
)
from pacs_engine.codecs.rle import DicomRleCoder
from pacs_engine.codecs.sharding import pack_shard, shard_parts, write_shard


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


_zarr_codec = zarr_codecs(__name__, *REGISTRY)


def __getattr__(name: str) -> Any:
    """The zarr codec classes (``JpegLsCodec``...) and zarr's general-purpose codecs,
    imported on first use."""
    if name == "general_purpose_codecs":
        from pacs_engine.codecs.general import general_purpose_codecs

        return general_purpose_codecs
    return _zarr_codec(name)


__all__ = [
    "ARCHIVE_CODECS",
    "PASS_THROUGH_BY_SYNTAX",
    "PASS_THROUGH_CODECS",
    "REGISTRY",
    "BitstreamCodec",
    "CodecError",
    "DicomDeflateCodec",
    "DicomDeflateCoder",
    "DicomHtj2kCodec",
    "DicomHtj2kCoder",
    "DicomJpeg2kCodec",
    "DicomJpeg2kCoder",
    "DicomJpegCodec",
    "DicomJpegCoder",
    "DicomJpegLosslessCodec",
    "DicomJpegLosslessCoder",
    "DicomJpegLsCodec",
    "DicomJpegLsCoder",
    "DicomRleCodec",
    "DicomRleCoder",
    "FrameCodec",
    "Htj2kCodec",
    "Htj2kCoder",
    "Jpeg2kCodec",
    "Jpeg2kCoder",
    "JpegLsCodec",
    "JpegLsCoder",
    "JpegXlCodec",
    "JpegXlCoder",
    "NoDecoderError",
    "choose_codec",
    "default_codec",
    "fast_candidates",
    "general_purpose_codecs",
    "pack_shard",
    "pass_through_codec",
    "shard_parts",
    "write_shard",
]
