"""One codec registry: pyproject.toml, the installed entry points and every derived list agree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import import_module
from importlib.metadata import entry_points

import numpy as np
import pydicom.uid
import pytest
import zarr.registry
from conftest import ROOT
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

import pacs_engine.codecs
from pacs_engine.archive.pixel_store import CODEC_CHOICES
from pacs_engine.archive.prepare import LOSSLESS_SYNTAXES
from pacs_engine.codecs import (
    ARCHIVE_CODECS,
    PASS_THROUGH_BY_SYNTAX,
    PASS_THROUGH_CODECS,
    REGISTRY,
    BitstreamCodec,
    CodecError,
    FrameCodec,
    JpegLsCodec,
    choose_codec,
    default_codec,
    fast_candidates,
    pass_through_codec,
    registry,
)
from pacs_engine.codecs._base import zarr_name
from pacs_engine.codecs.registry import ARCHIVE_BY_NAME, ARCHIVE_CANDIDATES, ENTRY_POINTS

ENTRY_POINT_GROUP = "zarr.codecs"
NAME_PREFIX = "pacs_engine."  # of every name in ENTRY_POINTS

PIXEL_MODULE = {
    "photometric_interpretation": "MONOCHROME2",
    "bits_allocated": 16,
    "bits_stored": 12,
    "pixel_representation": 0,
    "samples_per_pixel": 1,
    "planar_configuration": 0,
}


def _target(cls: type[FrameCodec]) -> str:
    return f"{cls.__module__}:{zarr_name(cls)}"


def test_registry_is_the_entry_points_of_pyproject_and_of_the_install() -> None:
    """pyproject.toml, importlib.metadata, the list the registry reads (`ENTRY_POINTS`, so
    that it needs not read the installed ones) and the registry name the same codec classes."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    from_pyproject = declared[ENTRY_POINT_GROUP]
    installed = {
        e.name: e.value
        for e in entry_points(group=ENTRY_POINT_GROUP)
        if e.name.startswith(NAME_PREFIX)
    }
    in_registry = {cls.codec_name: _target(cls) for cls in REGISTRY}
    assert len(in_registry) == len(REGISTRY) == 11
    assert from_pyproject == installed == ENTRY_POINTS == in_registry


def test_the_codecs_import_no_entry_point_reader() -> None:
    """Encoding needs the registry, which reads no installed package's metadata
    (importlib.metadata and every package's entry points: ~0.02 s of CPU per process)."""
    probe = "import sys, pacs_engine.codecs; print('importlib.metadata' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_zarr_resolves_every_registered_name_to_the_registry_class() -> None:
    """zarr reads an archive through the zarr codecs made from the registry's frame coders
    (its registry, fed by the entry points)."""
    for cls in REGISTRY:
        zarr_codec = zarr.registry.get_codec_class(cls.codec_name)
        assert zarr_codec is getattr(import_module(cls.__module__), zarr_name(cls))
        assert zarr_codec is getattr(pacs_engine.codecs, zarr_name(cls))
        assert issubclass(zarr_codec, cls)
        assert zarr_codec.__name__ == zarr_name(cls) and zarr_codec is not cls


def test_an_unknown_name_is_refused_naming_the_module_asked() -> None:
    """The package's zarr-class lookup names the package, a codec module's names the module."""
    for module in ("pacs_engine.codecs", "pacs_engine.codecs.jpegls"):
        message = f"module {module!r} has no attribute 'NoSuchCodec'"
        with pytest.raises(AttributeError, match=f"^{re.escape(message)}$"):
            import_module(module).NoSuchCodec  # noqa: B018 (the lookup is the test)


def test_each_codec_says_what_it_is_for() -> None:
    """Unique short names; pass-through codecs serve syntaxes; only archive codecs are tried."""
    assert len({cls.short_name for cls in REGISTRY}) == len(REGISTRY)
    for cls in REGISTRY:
        passes_through = issubclass(cls, BitstreamCodec)
        assert bool(cls.transfer_syntaxes) == passes_through, cls
        assert not (passes_through and cls.archive_candidate), cls


def test_derived_views_agree_with_the_registry() -> None:
    """ARCHIVE_CODECS, PASS_THROUGH_CODECS, the archive's codec choices and the candidates."""
    assert set(ARCHIVE_CODECS) | set(PASS_THROUGH_CODECS) == set(REGISTRY)
    assert not set(ARCHIVE_CODECS) & set(PASS_THROUGH_CODECS)
    assert [cls.short_name for cls in ARCHIVE_CODECS] == ["jpegls", "jpegxl", "htj2k", "jpeg2k"]
    assert {cls.short_name: cls for cls in ARCHIVE_CODECS} == ARCHIVE_BY_NAME
    assert set(ARCHIVE_BY_NAME) < set(CODEC_CHOICES)
    for name, make in ARCHIVE_BY_NAME.items():
        assert make().short_name == name
    grey = [type(codec) for codec in fast_candidates(1)]
    colour = [type(codec) for codec in fast_candidates(3)]
    assert grey == list(ARCHIVE_CANDIDATES)
    assert colour == [cls for cls in ARCHIVE_CANDIDATES if cls.candidate_colour]
    assert [cls.short_name for cls in grey] == ["jpegls", "jpegxl", "htj2k"]
    assert [cls.short_name for cls in colour] == ["jpegls", "htj2k"]
    assert default_codec() == JpegLsCodec()


def test_every_transfer_syntax_kept_has_exactly_one_pass_through_codec() -> None:
    """What the archive keeps as is: every compressed syntax pydicom decodes, the lossless
    ones it may transcode and the retired JPEG ones (decoded as a syntax pydicom decodes);
    each is served by one codec, which pass_through_codec returns."""
    pydicom_compressed = {uid for uid in _PIXEL_DATA_DECODERS if pydicom.uid.UID(uid).is_compressed}
    assert len(pydicom_compressed) == 12
    retired_jpeg = {f"1.2.840.10008.1.2.4.{n}" for n in (*range(52, 57), *range(58, 67))}
    assert all(pydicom.uid.UID(uid).is_retired for uid in retired_jpeg)
    claimed = pydicom_compressed | LOSSLESS_SYNTAXES | retired_jpeg
    assert set(PASS_THROUGH_BY_SYNTAX) == claimed
    for cls in PASS_THROUGH_CODECS:
        assert set(cls.decoded_as) <= retired_jpeg & set(cls.transfer_syntaxes)
        assert set(cls.decoded_as.values()) <= pydicom_compressed
    for uid in claimed:
        serving = [cls for cls in PASS_THROUGH_CODECS if uid in cls.transfer_syntaxes]
        assert serving == [PASS_THROUGH_BY_SYNTAX[uid]], uid
        codec = pass_through_codec(uid, **PIXEL_MODULE)
        assert type(codec) is serving[0] and codec.transfer_syntax_uid == uid


def test_unknown_transfer_syntax_names_itself() -> None:
    """A syntax no codec serves is refused by name (the file goes to quarantine with it)."""
    with pytest.raises(CodecError, match=r"no pass-through decoder for transfer syntax 1\.2\.3"):
        pass_through_codec("1.2.3", **PIXEL_MODULE)


def test_registry_refuses_a_misnamed_entry_point() -> None:
    """An entry point whose class has another codec_name, or is not a codec, is refused."""
    rle = "pacs_engine.codecs.rle:DicomRleCodec"
    with pytest.raises(CodecError, match=r"pacs_engine\.rle loads .*'pacs_engine\.dicom_rle'"):
        registry._load_registry({"pacs_engine.rle": rle})
    with pytest.raises(CodecError, match=r"pacs_engine\.x loads pacs_engine\.codecs\.rle:No"):
        registry._load_registry({"pacs_engine.x": "pacs_engine.codecs.rle:No"})
    assert [c.short_name for c in registry._load_registry({"pacs_engine.dicom_rle": rle})] == [
        "dicom_rle"
    ]


def test_two_codecs_for_one_syntax_are_refused() -> None:
    """A transfer syntax claimed by two pass-through codecs would be served by chance."""
    jpegls = PASS_THROUGH_BY_SYNTAX["1.2.840.10008.1.2.4.80"]
    rle = PASS_THROUGH_BY_SYNTAX["1.2.840.10008.1.2.5"]
    assert registry._by_syntax((rle,)) == {"1.2.840.10008.1.2.5": rle}

    class Rival(jpegls):  # serves RLE too
        transfer_syntaxes = (*jpegls.transfer_syntaxes, "1.2.840.10008.1.2.5")

    with pytest.raises(CodecError, match=r"1\.2\.840\.10008\.1\.2\.5 has two pass-through"):
        registry._by_syntax((rle, Rival))


def test_auto_chooses_among_the_candidates_only() -> None:
    """choose_codec without candidates picks one of the registry's candidates."""
    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    assert type(choose_codec(ramp)) in ARCHIVE_CANDIDATES


def test_every_transfer_syntax_the_codecs_take_is_known_to_pydicom_without_pynetdicom() -> None:
    """pydicom 3.0 predates Deflated Image Frame Compression; pynetdicom registers it when
    imported. The codecs register it too, so a process writes such headers (corrections,
    de-identified copies) alike whether or not it imported pynetdicom."""
    import subprocess
    import sys

    from pacs_engine.codecs import PASS_THROUGH_CODECS

    syntaxes = sorted({ts for codec in PASS_THROUGH_CODECS for ts in codec.transfer_syntaxes})
    probe = (
        "import sys; import pacs_engine.codecs; from pydicom.uid import UID; "
        "assert 'pynetdicom' not in sys.modules; "
        f"print([ts for ts in {syntaxes!r} if not UID(ts).is_transfer_syntax])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
