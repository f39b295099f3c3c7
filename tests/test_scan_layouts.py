"""File layouts the scanner must handle, built from real files or written with pydicom."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import pydicom_test_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from pacs_engine import HEADER_KEYWORDS, Header, ScanError, scan, scan_many

SAMPLES = {p.name: p for p in pydicom_test_files()}
DICM = b"DICM"


def attributes_without(header: Header, *keywords: str) -> dict:
    return {k: v for k, v in header.attributes.items() if k not in keywords}


def to_bytes(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=implicit, little_endian=little, enforce_file_format=False)
    return buffer.getvalue()


def image_dataset(transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A small CT-like instance with every attribute the header carries."""
    ds = pydicom.dcmread(SAMPLES["CT_small.dcm"])
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def test_file_meta_without_preamble() -> None:
    data = SAMPLES["CT_small.dcm"].read_bytes()
    assert data[128:132] == DICM
    original, stripped = scan(data), scan(data[132:])
    assert not stripped.has_preamble and stripped.has_file_meta
    assert stripped.attributes == original.attributes
    assert stripped.pixel.value_offset == original.pixel.value_offset - 132
    assert stripped.before_pixels[1] == original.before_pixels[1] - 132


@pytest.mark.parametrize(
    "name", ["MR_small_implicit.dcm", "CT_small.dcm", "MR_small_bigendian.dcm"]
)
def test_data_set_without_file_meta(name: str) -> None:
    """No preamble and no file meta: the encoding is guessed from the first element."""
    data = SAMPLES[name].read_bytes()
    original = scan(data)
    raw = data[original.dataset_offset :]
    header = scan(raw)
    assert not header.has_preamble and not header.has_file_meta
    assert header.transfer_syntax_uid is None and "TransferSyntaxUID" not in header
    assert header.explicit_vr == original.explicit_vr
    assert header.little_endian == original.little_endian
    assert header.attributes == attributes_without(original, "TransferSyntaxUID")
    assert (
        raw[header.pixel.value_offset : header.pixel.value_end]
        == pydicom.dcmread(SAMPLES[name]).PixelData
    )


def test_elements_after_the_pixel_data() -> None:
    ds = image_dataset()
    ds.DataSetTrailingPadding = b"\0" * 6
    data = to_bytes(ds)
    header = scan(data)
    start, end = header.after_pixels
    assert end == len(data) and end - start == 12 + 6  # (FFFC,FFFC) OB header + value
    assert data[header.pixel.value_offset : header.pixel.value_end] == ds.PixelData
    assert header.PatientID == ds.PatientID


def test_trailing_bytes_too_short_for_an_element_are_ignored_like_pydicom() -> None:
    whole = to_bytes(image_dataset())
    data = whole + b"\0\0\0"
    header = scan(data)
    assert header.after_pixels == (scan(whole).after_pixels[0], len(data))
    assert pydicom.dcmread(BytesIO(data)).PatientID == header.PatientID


def nested(depth: int, undefined: bool) -> Sequence:
    item = Dataset()
    item.CodeValue = f"depth{depth}"
    if depth > 0:
        item.ContentSequence = nested(depth - 1, not undefined)
    return Sequence([item, Dataset()])


@pytest.mark.parametrize("implicit", [False, True])
def test_nested_sequences_of_defined_and_undefined_length(implicit: bool) -> None:
    ds = image_dataset(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    ds.ReferencedStudySequence = nested(6, undefined=True)
    ds.ProcedureCodeSequence = nested(3, undefined=False)
    data = to_bytes(ds, implicit=implicit)
    header = scan(data)
    reread = pydicom.dcmread(BytesIO(data))
    assert header.PatientID == reread.PatientID and header.Rows == reread.Rows
    assert data[header.pixel.value_offset : header.pixel.value_end] == reread.PixelData


def explicit_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2s2xL", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def implicit_element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, element, len(value)) + value


def with_meta(body: bytes, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ts = transfer_syntax.encode() + (b"\0" if len(transfer_syntax) % 2 else b"")
    meta = explicit_element(0x0002, 0x0010, b"UI", ts)
    group_length = explicit_element(0x0002, 0x0000, b"UL", struct.pack("<L", len(meta)))
    return b"\0" * 128 + DICM + group_length + meta + body


def test_un_of_undefined_length_holds_implicit_vr_content() -> None:
    item = implicit_element(0x0009, 0x0010, b"ACME") + implicit_element(0x0009, 0x1001, b"x\0")
    un = (
        struct.pack("<HH2s2xL", 0x0009, 0x1002, b"UN", 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    body = (
        explicit_element(0x0008, 0x0060, b"CS", b"OT")
        + explicit_element(0x0009, 0x0010, b"LO", b"ACME")
        + un
        + explicit_element(0x0010, 0x0020, b"LO", b"ID42")
    )
    data = with_meta(body)
    header = scan(data)
    ds = pydicom.dcmread(BytesIO(data))
    assert header.Modality == ds.Modality == "OT"
    assert header.PatientID == ds.PatientID == "ID42"


def test_odd_length_and_padded_values_match_pydicom() -> None:
    body = (
        explicit_element(0x0008, 0x0060, b"CS", b"MR ")  # odd length, not padded
        + explicit_element(0x0010, 0x0010, b"PN", b"DOE^JOHN\0\0")  # NUL padding
        + explicit_element(0x0010, 0x0020, b"LO", b"  ID 7 ")  # leading space is kept
        + explicit_element(0x0018, 0x0050, b"DS", b" 1.25 ")
        + explicit_element(0x0020, 0x0013, b"IS", b"+12 ")
        + explicit_element(0x0028, 0x0030, b"DS", b"0.5\\0.75 ")
        + explicit_element(0x0028, 0x1050, b"DS", b"40\\400")
    )
    data = with_meta(body)
    header, ds = scan(data), pydicom.dcmread(BytesIO(data))
    assert header.Modality == ds.Modality == "MR"
    assert header.PatientName == str(ds.PatientName) == "DOE^JOHN"
    assert header.PatientID == ds.PatientID == "  ID 7"
    assert header.SliceThickness == ds.SliceThickness == 1.25
    assert header.InstanceNumber == ds.InstanceNumber == 12
    assert header.PixelSpacing == list(ds.PixelSpacing) == [0.5, 0.75]
    assert header.WindowCenter == list(ds.WindowCenter) == [40.0, 400.0]


def test_private_tags_are_skipped_and_the_rest_is_read() -> None:
    ds = image_dataset()
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "OB", b"\1" * 5000)
    block.add_new(0x02, "LO", "private text")
    header = scan(to_bytes(ds))
    assert header.PatientID == ds.PatientID and header.Rows == ds.Rows


def test_non_ascii_text_is_decoded_with_the_specific_character_set() -> None:
    ds = image_dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "Thorax ÄÖÜ"
    header = scan(to_bytes(ds))
    assert header.PatientName == "Müller^Jürgen"
    assert header.StudyDescription == "Thorax ÄÖÜ"


def test_attributes_behave_as_a_read_only_dict() -> None:
    ds = image_dataset()
    ds.PatientName = "Müller^Jürgen"  # left to pydicom, so converted during the scan
    ds.SpecificCharacterSet = "ISO_IR 192"
    header = scan(to_bytes(ds))
    attributes = header.attributes
    plain = dict(attributes)
    assert isinstance(attributes, Mapping) and isinstance(attributes.copy(), dict)
    assert attributes == plain and plain == attributes
    assert attributes != {**plain, "Rows": -1}
    assert list(attributes) == list(plain) == list(attributes.keys())
    assert list(attributes.values()) == list(plain.values())
    assert list(attributes.items()) == list(plain.items())
    assert len(attributes) == len(plain) and repr(attributes) == repr(plain)
    assert "Rows" in attributes and "Nope" not in attributes and 1 not in attributes
    assert attributes.get("Nope") is None and attributes.get("Nope", 7) == 7
    assert attributes["PatientName"] == "Müller^Jürgen" and attributes["Rows"] == ds.Rows
    assert attributes["Rows"] is attributes["Rows"]  # converted once, then kept
    with pytest.raises(KeyError):
        attributes["Nope"]
    with pytest.raises(TypeError):
        hash(attributes)
    assert pickle.loads(pickle.dumps(attributes)) == plain


def encapsulated_dataset(frames: list[bytes], pixel_data: bytes) -> Dataset:
    ds = image_dataset(JPEGBaseline8Bit)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    return ds


def jpeg_like(seed: int, size: int) -> bytes:
    body = np.random.default_rng(seed).integers(0, 0xFE, size, dtype=np.uint8).tobytes()
    return b"\xff\xd8" + body + b"\xff\xd9"


def fragment_bytes(data: bytes, header: Header) -> list[bytes]:
    pixel = header.pixel
    return [
        data[o : o + n] for o, n in zip(pixel.fragment_offsets, pixel.fragment_lengths, strict=True)
    ]


def test_encapsulated_frames_from_the_basic_offset_table() -> None:
    frames = [jpeg_like(i, 300 + 10 * i) for i in range(3)]
    ds = encapsulated_dataset(frames, encapsulate(frames, fragments_per_frame=2, has_bot=True))
    data = to_bytes(ds)
    header = scan(data)
    assert list(header.pixel.fragment_frames) == [0, 0, 1, 1, 2, 2]
    parts = fragment_bytes(data, header)
    assert [b"".join(parts[2 * i : 2 * i + 2]) for i in range(3)] == frames


def test_encapsulated_frames_from_jpeg_end_markers_without_offset_table() -> None:
    frames = [jpeg_like(i, 301 + 10 * i) for i in range(3)]
    ds = encapsulated_dataset(frames, encapsulate(frames, fragments_per_frame=2, has_bot=False))
    header = scan(to_bytes(ds))
    assert len(header.pixel.basic_offset_table) == 0
    assert list(header.pixel.fragment_frames) == [0, 0, 1, 1, 2, 2]


def test_encapsulated_frames_from_the_extended_offset_table() -> None:
    frames = [jpeg_like(i, 200 + 2 * i) for i in range(4)]
    pixel_data, offsets, lengths = encapsulate_extended(frames)
    ds = encapsulated_dataset(frames, pixel_data)
    ds.ExtendedOffsetTable = offsets
    ds.ExtendedOffsetTableLengths = lengths
    data = to_bytes(ds)
    header = scan(data)
    table_offsets, table_lengths = header.pixel.extended_offset_table
    assert list(table_offsets) == list(struct.unpack("<4Q", offsets))
    assert list(table_lengths) == [len(f) for f in frames]
    assert list(header.pixel.fragment_frames) == [0, 1, 2, 3]
    assert fragment_bytes(data, header) == frames


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_path_and_buffer_give_the_same_header(path: Path) -> None:
    try:
        from_path = scan(path)
    except ScanError as error:
        with pytest.raises(ScanError) as from_buffer:
            scan(path.read_bytes())
        assert (from_buffer.value.offset, from_buffer.value.reason) == (error.offset, error.reason)
        return
    from_buffer = scan(path.read_bytes())
    assert from_path.path == str(path) and from_buffer.path is None
    assert from_buffer.attributes == from_path.attributes
    assert (from_buffer.pixel is None) == (from_path.pixel is None)
    if from_path.pixel is not None:
        assert from_buffer.pixel.value_offset == from_path.pixel.value_offset
        assert from_buffer.pixel.value_length == from_path.pixel.value_length
        assert np.array_equal(from_buffer.pixel.fragment_offsets, from_path.pixel.fragment_offsets)


def test_scan_many_keeps_order_and_reports_errors_in_place(tmp_path: Path) -> None:
    paths = [str(p) for p in pydicom_test_files()]
    bad = tmp_path / "not_dicom.txt"
    bad.write_text("hello, this is not DICOM at all")
    missing = tmp_path / "vanished.dcm"
    paths[3:3] = [str(bad), str(missing)]
    serial = list(scan_many(paths, threads=1))
    threaded = list(scan_many(paths, threads=2, batch=5))
    assert len(serial) == len(threaded) == len(paths)
    for path, one, two in zip(paths, serial, threaded, strict=True):
        assert type(one) is type(two)
        assert one.path == two.path == path
        if isinstance(one, Header):
            assert one.attributes == two.attributes
    assert isinstance(serial[3], ScanError) and "not a DICOM file" in serial[3].reason
    assert isinstance(serial[4], ScanError) and "cannot open" in serial[4].reason
    assert str(missing) in str(serial[4])


def test_every_header_keyword_is_a_dicom_keyword() -> None:
    assert len(set(HEADER_KEYWORDS)) == len(HEADER_KEYWORDS)
    assert all(pydicom.datadict.tag_for_keyword(k) is not None for k in HEADER_KEYWORDS)


def test_a_deflated_file_reports_its_own_size_and_offsets_in_the_inflated_data() -> None:
    path = SAMPLES["image_dfl.dcm"]
    header = scan(path)
    assert header.deflated and header.file_size == path.stat().st_size
    assert header.data_size > header.file_size  # the data set inflates
    assert header.after_pixels[1] == header.data_size


def test_a_header_survives_pickling() -> None:
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    header = scan(str(path))
    clone = pickle.loads(pickle.dumps(header))
    assert dict(clone.attributes) == dict(header.attributes)
    assert clone.PatientName == header.PatientName
    assert clone.pixel.value_offset == header.pixel.value_offset
    assert clone.before_pixels == header.before_pixels
