"""The one registry of the archive's codecs, read from the ``zarr.codecs`` entry points.

pyproject.toml lists every codec once, as a ``zarr.codecs`` entry point (that is how zarr
finds them when it reads an archive). The entry point names a zarr codec class
(``JpegLsCodec``), made from the frame coder of its module (``JpegLsCoder``); the registry
holds the frame coders, found without loading the entry point, so it imports no zarr (the
zarr classes, named `_base.zarr_name` of these, are their modules' attributes). Each
coder says what it is for: its `short_name`, whether ``codec="auto"`` tries it
(`archive_candidate`), and, for a pass-through codec, the `transfer_syntaxes` it serves.
Every other list of codecs is derived here, so a codec added to pyproject.toml is
archived, and one left out fails loudly here instead of quarantining every file of its
transfer syntax.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from pacs_engine.codecs._base import CodecError, FrameCodec, coder_name
from pacs_engine.codecs._bitstream import BitstreamCodec

ENTRY_POINT_GROUP = "zarr.codecs"
NAME_PREFIX = "pacs_engine."


def _load_registry() -> tuple[type[FrameCodec], ...]:
    """The frame coders of the codecs pacs_engine registers with zarr (by entry point)."""
    found: dict[str, type[FrameCodec]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if not entry.name.startswith(NAME_PREFIX):
            continue  # another package's codec
        # The coder beside the zarr class the entry point names (which would import zarr).
        cls = getattr(import_module(entry.module), coder_name(entry.attr), None)
        name = getattr(cls, "codec_name", None)
        if not (isinstance(cls, type) and issubclass(cls, FrameCodec)) or name != entry.name:
            raise CodecError(f"entry point {entry.name} loads {entry.value}, coded by {name!r}")
        if found.setdefault(entry.name, cls) is not cls:
            raise CodecError(f"entry point {entry.name} is registered twice, once as {entry.value}")
    if not found:
        raise CodecError(
            f"no {NAME_PREFIX}* codec under the {ENTRY_POINT_GROUP} entry points: "
            "install pacs_engine (pip install -e .) so that zarr and the archive find its codecs"
        )
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
