"""The native scanner against pydicom, attribute by attribute and byte by byte."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import corpus_files, corpus_params, pydicom_test_files, require_corpus
from pydicom.encaps import generate_fragmented_frames, generate_fragments, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from pacs_engine import HEADER_KEYWORDS, ScanError, scan

DEFLATED = "1.2.840.10008.1.2.1.99"


def pydicom_read(path: Path) -> tuple[pydicom.Dataset | None, bool]:
    """The data set as pydicom reads it (None where it cannot), and whether it needed force."""
    for force in (False, True):
        try:
            ds = pydicom.dcmread(path, force=force)
            for keyword in HEADER_KEYWORDS:
                _ = ds.get(keyword)
            if "PixelData" in ds:
                _ = ds.PixelData
        except InvalidDicomError:
            continue
        except Exception:
            return None, force
        return ds, force
    return None, True


def expected(value):
    """pydicom's value in plain Python types, written independently of the scanner."""
    if isinstance(value, MultiValue | list):
        return [expected(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def file_bytes(path: Path, header) -> bytes:
    """The bytes the scanner's offsets refer to (the inflated data set for deflated files)."""
    raw = path.read_bytes()
    if not header.deflated:
        return raw
    start = header.dataset_offset
    return raw[:start] + zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw[start:])


def check_against_pydicom(path: Path) -> None:
    ds, forced = pydicom_read(path)
    try:
        header = scan(path)
    except ScanError as error:
        assert str(path) in str(error)
        if ds is not None and not forced:
            explain_refusal(path, ds, error)
        return
    assert ds is not None, "the scanner read a file pydicom cannot"

    for keyword in HEADER_KEYWORDS:
        if keyword == "TransferSyntaxUID":
            want = ds.file_meta.get(keyword) if hasattr(ds, "file_meta") else None
        else:
            want = ds.get(keyword)
        want = None if want is None else expected(want)
        got = header.get(keyword)
        if want is None and keyword not in ds and keyword != "TransferSyntaxUID":
            assert keyword not in header, f"{keyword}: pydicom has none, scanner has {got!r}"
            continue
        assert same(got, want), f"{keyword}: scanner {got!r} != pydicom {want!r}"

    pixel_keyword = next(
        (k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None
    )
    if pixel_keyword is None:
        assert header.pixel is None
        return
    assert header.pixel is not None and header.pixel.keyword == pixel_keyword
    data = file_bytes(path, header)
    value = ds[pixel_keyword].value
    location = header.pixel
    if not location.encapsulated:
        assert data[location.value_offset : location.value_end] == value
        return
    # Encapsulated: the value spans items up to and including the sequence delimiter.
    assert data[location.value_offset : location.value_end] == value + b"\xfe\xff\xdd\xe0\0\0\0\0"
    from io import BytesIO

    buffer = BytesIO(value)
    offsets = parse_basic_offsets(buffer)
    assert list(location.basic_offset_table) == offsets
    fragments = list(generate_fragments(buffer))
    ours = [
        data[o : o + n]
        for o, n in zip(location.fragment_offsets, location.fragment_lengths, strict=True)
    ]
    assert ours == fragments
    check_frames(ds, location, ours)


def check_frames(ds: pydicom.Dataset, location, fragments: list[bytes]) -> None:
    """Fragments grouped by our frame numbers equal pydicom's frames."""
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frames = list(
        generate_fragmented_frames(
            ds.PixelData,
            number_of_frames=int(ds.get("NumberOfFrames") or 1),
            extended_offsets=extended,
        )
    )
    if extended is not None:
        return  # pydicom gives frames as byte ranges there, not as fragments
    ours: dict[int, list[bytes]] = {}
    for frame, fragment in zip(location.fragment_frames, fragments, strict=True):
        ours.setdefault(int(frame), []).append(fragment)
    assert [tuple(ours[k]) for k in sorted(ours)] == frames
    assert np.all(np.diff(location.fragment_frames) >= 0)


#: Keys recorded for selecting training data (issue 15); the tests above compare them too.
SELECTION_KEYWORDS = ("ImageType", "ConvolutionKernel", "Manufacturer", "ManufacturerModelName")


def test_the_selection_keys_equal_pydicom_on_every_real_file_that_has_them() -> None:
    """ImageType (several CS values, kept as a list), ConvolutionKernel, Manufacturer and
    ManufacturerModelName as the scanner records them equal pydicom's on every corpus and
    pydicom file that has them; and enough files have them for that to mean something."""
    require_corpus()
    compared: dict[str, int] = dict.fromkeys(SELECTION_KEYWORDS, 0)
    for path in corpus_files() + pydicom_test_files():
        ds, _ = pydicom_read(path)
        try:
            header = scan(path)
        except ScanError:  # refusals are explained by test_corpus / test_pydicom_test_files
            continue
        assert ds is not None
        for keyword in SELECTION_KEYWORDS:
            if keyword in ds:
                want = expected(ds.get(keyword))
                assert same(header.get(keyword), want), f"{path}: {keyword}"
                compared[keyword] += 1
            else:
                assert keyword not in header, f"{path}: {keyword}"
        if isinstance(ds.get("ImageType"), MultiValue):
            assert isinstance(header["ImageType"], list) and len(header["ImageType"]) >= 2
    assert min(compared.values()) >= 20, compared


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_pydicom_test_files(path: Path) -> None:
    check_against_pydicom(path)


@pytest.mark.parametrize("path", corpus_params())
def test_corpus(path: Path) -> None:
    check_against_pydicom(path)


def explain_refusal(path: Path, ds: pydicom.Dataset, error: ScanError) -> None:
    """The one accepted difference: pydicom reads a truncated file, the scanner refuses it.

    pydicom returns whatever bytes remain for a value cut short by the end of
    the file; an archive must not take such a file as whole, so the scanner
    raises. Check that the file really is cut short where the error says.
    """
    size = path.stat().st_size
    assert "past the end of the data" in error.reason or "ends inside" in error.reason, error
    assert error.offset <= size
    if "past the end of the data" in error.reason:
        declared = int(error.reason.split("declares a value of ")[1].split()[0])
        assert error.offset + 8 + declared > size
