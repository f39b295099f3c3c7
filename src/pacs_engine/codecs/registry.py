"""The one registry of the archive's codecs: the ``zarr.codecs`` entry points pacs_engine installs.

pyproject.toml lists every codec once, as a ``zarr.codecs`` entry point (that is how zarr
finds them when it reads an archive); `ENTRY_POINTS` is that list as the registry reads it,
and tests/test_codec_registry.py checks that it, pyproject.toml and the installed entry
points agree. The registry does not read the installed entry points: that imports
importlib.metadata and reads every installed package's metadata, about 0.02 s of CPU at
the start of every process that encodes, on the way to an ingest's first encode (other
packages' codecs are not the archive's anyway). An entry point names a zarr codec class
(``JpegLsCodec``), made from the frame coder of its module (``JpegLsCoder``); the registry
holds the frame coders, found without loading the entry point, so it imports no zarr (the
zarr classes, named `_base.zarr_name` of these, are their modules' attributes). Each
coder says what it is for: its `short_name`, whether ``codec="auto"`` tries it
(`archive_candidate`), and, for a pass-through codec, the `transfer_syntaxes` it serves.
Every other list of codecs is derived here, so a codec added to pyproject.toml (and here)
is archived, and one left out of either fails a test instead of quarantining every file
of its transfer syntax.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module

from pacs_engine.codecs._base import CodecError, FrameCodec, coder_name
from pacs_engine.codecs._bitstream import BitstreamCodec

#: pyproject.toml's ``zarr.codecs`` entry points, name -> "module:ZarrClass" (see above).
ENTRY_POINTS = {
    "pacs_engine.jpegls": "pacs_engine.codecs.jpegls:JpegLsCodec",
    "pacs_engine.htj2k": "pacs_engine.codecs.htj2k:Htj2kCodec",
    "pacs_engine.jpeg2k": "pacs_engine.codecs.jpeg2k:Jpeg2kCodec",
    "pacs_engine.jpegxl": "pacs_engine.codecs.jpegxl:JpegXlCodec",
    "pacs_engine.dicom_jpeg": "pacs_engine.codecs.jpeg:DicomJpegCodec",
    "pacs_engine.dicom_jpeg_lossless": "pacs_engine.codecs.jpeg:DicomJpegLosslessCodec",
    "pacs_engine.dicom_jpegls": "pacs_engine.codecs.jpegls:DicomJpegLsCodec",
    "pacs_engine.dicom_jpeg2k": "pacs_engine.codecs.jpeg2k:DicomJpeg2kCodec",
    "pacs_engine.dicom_htj2k": "pacs_engine.codecs.htj2k:DicomHtj2kCodec",
    "pacs_engine.dicom_rle": "pacs_engine.codecs.rle:DicomRleCodec",
    "pacs_engine.dicom_deflate": "pacs_engine.codecs.deflate:DicomDeflateCodec",
}


def _load_registry(entries: Mapping[str, str] = ENTRY_POINTS) -> tuple[type[FrameCodec], ...]:
    """The frame coders of the codecs pacs_engine registers with zarr, from its entry points
    (name -> "module:ZarrClass")."""
    found: dict[str, type[FrameCodec]] = {}
    for name, value in entries.items():
        module, _, attr = value.partition(":")
        # The coder beside the zarr class the entry point names (which would import zarr).
        cls = getattr(import_module(module), coder_name(attr), None)
        coded = getattr(cls, "codec_name", None)
        if not (isinstance(cls, type) and issubclass(cls, FrameCodec)) or coded != name:
            raise CodecError(f"entry point {name} loads {value}, coded by {coded!r}")
        found[name] = cls
    return tuple(sorted(found.values(), key=lambda cls: (cls.rank, cls.codec_name)))


def _by_syntax(codecs: tuple[type[BitstreamCodec], ...]) -> dict[str, type[BitstreamCodec]]:
    """Each transfer syntax served, with its one pass-through codec."""
    served: dict[str, type[BitstreamCodec]] = {}
    for cls in codecs:
        for uid in cls.transfer_syntaxes:
            if served.setdefault(uid, cls) is not cls:
                raise CodecError(f"transfer syntax {uid} has two pass-through codecs")
    return served


#: Every codec of pacs_engine, by `FrameCodec.rank` (archive codecs: preference), then name.
REGISTRY: tuple[type[FrameCodec], ...] = _load_registry()
#: Every codec by its zarr name (``pacs_engine.jpegls``), as array metadata names it.
BY_CODEC_NAME: dict[str, type[FrameCodec]] = {cls.codec_name: cls for cls in REGISTRY}
#: Codecs that encode pixels, by preference: the first is the default.
ARCHIVE_CODECS: tuple[type[FrameCodec], ...] = tuple(
    cls for cls in REGISTRY if not issubclass(cls, BitstreamCodec)
)
#: The archive codecs ``codec="auto"`` tries (`choose_codec`), by preference.
ARCHIVE_CANDIDATES: tuple[type[FrameCodec], ...] = tuple(
    cls for cls in ARCHIVE_CODECS if cls.archive_candidate
)
#: The archive codecs by short name (``--codec jpegls``).
ARCHIVE_BY_NAME: dict[str, type[FrameCodec]] = {cls.short_name: cls for cls in ARCHIVE_CODECS}
#: Decoders of frames kept as their original DICOM bitstream.
PASS_THROUGH_CODECS: tuple[type[BitstreamCodec], ...] = tuple(
    cls for cls in REGISTRY if issubclass(cls, BitstreamCodec)
)
#: The pass-through codec of each transfer syntax the archive keeps as is.
PASS_THROUGH_BY_SYNTAX: dict[str, type[BitstreamCodec]] = _by_syntax(PASS_THROUGH_CODECS)


def as_zarr(codec: FrameCodec) -> FrameCodec:
    """`codec` as its zarr codec of the same configuration, to hand to zarr (imports zarr)."""
    from pacs_engine.codecs._zarr import zarr_codec

    return zarr_codec(type(codec)).from_dict(codec.to_dict())
