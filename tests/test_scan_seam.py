"""The native scanner's result, read by name, against pydicom, the file and zlib."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_fragments

from pacs_engine._native.scanner import PixelScan, ScanResult
from pacs_engine.errors import ScanError
from pacs_engine.header import Header
from pacs_engine.scanning import _SCANNER, scan

FILES = (
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "SC_rgb_rle.dcm",
    "JPEG2000.dcm",
    "image_dfl.dcm",
)

#: The fields a ScanResult and a Header share (the pixel data location aside).
SCAN_RESULT_FIELDS = (
    "transfer_syntax_uid",
    "has_preamble",
    "has_file_meta",
    "dataset_offset",
    "explicit_vr",
    "little_endian",
    "deflated",
    "file_size",
    "data_size",
)


@pytest.mark.parametrize("name", FILES)
def test_scan_result_fields_by_name_match_pydicom(name: str) -> None:
    """Each field of ScanResult and PixelScan holds what pydicom and the file say."""
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    raw = Path(path).read_bytes()
    result = _SCANNER.scan_path(path)
    assert isinstance(result, ScanResult)
    assert result.file_size == os.path.getsize(path)
    assert result.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert result.has_preamble and result.has_file_meta
    assert result.attributes["SOPInstanceUID"] == ds.SOPInstanceUID
    assert result.little_endian == (ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2")
    assert result.explicit_vr == (ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2")
    assert result.deflated == (name == "image_dfl.dcm")
    data = raw
    if result.deflated:
        # Offsets count in the inflated data set; the file size stays the file's.
        body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw[result.dataset_offset :])
        data = raw[: result.dataset_offset] + body
    assert result.data_size == len(data)
    pixel = result.pixel
    assert isinstance(pixel, PixelScan)
    assert pixel.tag == 0x7FE00010
    assert data[pixel.element_offset : pixel.element_offset + 4] == (
        b"\xe0\x7f\x10\x00" if result.little_endian else b"\x7f\xe0\x00\x10"
    )
    value = data[pixel.value_offset : pixel.value_offset + pixel.value_length]
    if pixel.encapsulated:  # the value runs to the end of the Sequence Delimitation Item
        value, delimiter = value[:-8], value[-8:]
        assert delimiter == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert value == ds.PixelData
    assert pixel.encapsulated == ds.file_meta.TransferSyntaxUID.is_compressed
    if pixel.encapsulated:
        bot, *fragments = generate_fragments(ds.PixelData)  # the first item is the BOT
        assert pixel.bot == bot
        offsets, lengths = pixel.fragment_offsets, pixel.fragment_lengths
        assert [data[o : o + n] for o, n in zip(offsets, lengths, strict=True)] == fragments
        assert data[pixel.bot_offset : pixel.bot_offset + len(pixel.bot)] == pixel.bot
        assert pixel.fragment_eoi.dtype == np.bool_ and len(pixel.fragment_eoi) == len(fragments)
    else:
        assert pixel.bot_offset == -1 and pixel.bot is None and pixel.fragment_offsets is None


def test_scan_result_is_read_only_and_agrees_with_the_header() -> None:
    """The seam cannot be changed by a caller, and scan() copies it field by field."""
    path = get_testdata_file("CT_small.dcm")
    result = _SCANNER.scan_path(path)
    with pytest.raises(AttributeError):
        result.file_size = 0  # type: ignore[misc]
    header = scan(path)
    for field in ("transfer_syntax_uid", "has_preamble", "dataset_offset", "explicit_vr"):
        assert getattr(header, field) == getattr(result, field)
    assert header.has_file_meta == result.has_file_meta
    assert header.data_size == result.data_size and header.file_size == result.file_size
    assert header.pixel is not None and result.pixel is not None
    assert header.pixel.value_offset == result.pixel.value_offset
    assert _SCANNER.scan_buffer(Path(path).read_bytes()).dataset_offset == result.dataset_offset


def test_headers_built_natively_copy_every_field_of_the_scan_result(tmp_path: Path) -> None:
    """header_paths/header_path/header_buffer give, field by field, what scan_paths found."""
    paths = [get_testdata_file(name) for name in FILES]
    not_dicom = tmp_path / "not.dcm"
    not_dicom.write_bytes(b"not a DICOM file" * 20)
    paths.insert(2, str(not_dicom))
    results = _SCANNER.scan_paths(paths)
    headers = _SCANNER.header_paths(paths)
    assert len(headers) == len(results) == len(paths)
    for path, result, header in zip(paths, results, headers, strict=True):
        if isinstance(result, ScanError):
            assert isinstance(header, ScanError) and str(header) == str(result)
            continue
        assert isinstance(header, Header) and header.path == path
        for field in SCAN_RESULT_FIELDS:
            assert getattr(header, field) == getattr(result, field), (path, field)
        assert header.attributes == result.attributes
        pixel, location = result.pixel, header.pixel
        assert pixel is not None and location is not None
        assert (location.tag, location.vr, location.element_offset) == (
            pixel.tag,
            pixel.vr,
            pixel.element_offset,
        )
        assert (location.value_offset, location.value_length) == (
            pixel.value_offset,
            pixel.value_length,
        )
        assert location.encapsulated == pixel.encapsulated
        if pixel.encapsulated:
            assert location.basic_offset_table_offset == pixel.bot_offset
            assert list(location.fragment_offsets) == list(pixel.fragment_offsets)
            assert list(location.fragment_lengths) == list(pixel.fragment_lengths)
            assert len(location.fragment_frames) == len(pixel.fragment_offsets)
        else:
            assert location.basic_offset_table_offset == -1 and not len(location.fragment_offsets)
        one = _SCANNER.header_path(path)
        from_bytes = _SCANNER.header_buffer(Path(path).read_bytes())
        assert one.path == path and from_bytes.path is None
        for field in SCAN_RESULT_FIELDS:
            assert getattr(one, field) == getattr(from_bytes, field) == getattr(result, field)
