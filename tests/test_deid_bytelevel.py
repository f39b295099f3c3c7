"""The byte-level de-identification (deid/bytelevel.py) against the pydicom path: for every
input the deid tests use, under every option set, the same bytes, the same actions; bad
input refused with the reason; what it does not handle left to pydicom and said so."""

from __future__ import annotations

import copy
import pickle
import shutil
import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from test_deid import OPTIONS, _crafted, _select
from test_deid_profile import KEY, OPTION_SETS, _bytes, _dataset

from pacs_engine.archive.blobs import WHOLE
from pacs_engine.deid import Deidentifier, DeidError, deidentify, make_key
from pacs_engine.ingest.archive import Archive, open_archive
from tests.conftest import require_corpus

ALL_OPTION_SETS = [*OPTION_SETS, OPTIONS, ("retain-safe-private",)]
SAFE = [("ACME 1.0", 0x01)]
SECRET = "Zeppelin^Walburga"


def _pair(options: tuple[str, ...]) -> tuple[Deidentifier, Deidentifier]:
    """The byte-level engine and the pydicom one (the reference), burned-in kept."""
    made = [
        Deidentifier(KEY, options, burned_in="keep", safe_private=SAFE, byte_level=fast)
        for fast in (True, False)
    ]
    return made[0], made[1]


def _same(options: tuple[str, ...], data: bytes) -> bool:
    """Both paths give the same file and actions; True when the byte path did it."""
    fast, slow = _pair(options)
    ours, theirs = fast.apply(data), slow.apply(data)
    assert ours.data == theirs.data
    assert ours.actions == theirs.actions
    assert ours.sop_instance_uid == theirs.sop_instance_uid
    assert theirs.fallback is None  # the pydicom engine never tries the byte path
    return ours.fallback is None


def _elements(data: bytes) -> list[tuple[int, str, object]]:
    """(tag, VR, value) of every element at every depth, as pydicom reads them."""
    found = []

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                found.append((int(elem.tag), "SQ", len(elem.value)))
                for item in elem.value:
                    walk(item)
            else:
                found.append((int(elem.tag), str(elem.VR), elem.value))

    ds = pydicom.dcmread(BytesIO(data))
    walk(ds.file_meta)
    walk(ds)
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The files test_deid de-identifies: corpus CT, MR and other modalities, crafted ones."""
    require_corpus()
    folder = tmp_path_factory.mktemp("crafted")
    _crafted(folder)
    paths = _select() + sorted(folder.iterdir())
    return [p.read_bytes() for p in paths]


@pytest.mark.parametrize("options", ALL_OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
def test_the_byte_path_writes_what_pydicom_writes_for_every_corpus_file(
    inputs: list[bytes], options: tuple[str, ...]
) -> None:
    fast, slow = _pair(options)
    fallbacks: list[str] = []
    for data in inputs:
        try:
            theirs = slow.apply(data)
        except DeidError as error:  # refused: refused by the byte path too, for that reason
            with pytest.raises(DeidError) as ours_error:
                fast.apply(data)
            assert str(ours_error.value) == str(error)
            continue
        ours = fast.apply(data)
        assert (ours.data, ours.actions) == (theirs.data, theirs.actions)
        fallbacks += [ours.fallback] if ours.fallback else []
    # Left to pydicom: two corpus files without a preamble (OT-PAL-8-face, rtstruct), and
    # with the dates option one whose Date of Last Calibration has VR DS (pydicom writes
    # the number it read back as it formats it).
    # (Some options refuse one of these: a date that does not parse.)
    assert 1 <= fallbacks.count("no preamble and DICM prefix") <= 2
    dates = "retain-longitudinal-modified-dates" in options
    assert fallbacks.count("clean of a value that is not text") == dates  # the DS date
    # Content items holding text (the corpus's test-SR and the crafted one), and the
    # crafted sequence of VR UN.
    assert fallbacks.count("free text in structured content") == 2
    assert fallbacks.count("a sequence of VR UN") == 1
    assert len(fallbacks) <= 6 and len(inputs) > 20


@pytest.mark.parametrize("options", ALL_OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_every_attribute_of_the_table_the_same_way_as_pydicom(
    options: tuple[str, ...], syntax: str
) -> None:
    ds, _ = _dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.add_new(0x50000010, "US", 3)  # a curve
    ds.add_new(0x60000010, "US", 4)  # an overlay's rows and data: the group goes
    ds.add_new(0x60003000, "OW", b"\0\1")
    ds.add_new(0x00090010, "LO", "ACME 1.0")  # private: a safe one and another
    ds.add_new(0x00091001, "LO", "private value")
    ds.add_new(0x00091002, "LO", "secret private")
    ds.PatientName = SECRET
    ds.StudyDescription = f"CT of {SECRET.split('^')[0]} on 20200315"  # cleaned by options
    data = _bytes(ds)
    assert _same(options, data), "the byte path fell back"
    out = Deidentifier(KEY, options, safe_private=SAFE).apply(data).data or b""
    assert SECRET.encode() not in out and SECRET.split("^")[0].encode() not in out


def _edges() -> Dataset:
    """Nested sequences of defined and undefined lengths, empty values and items, several
    UIDs and dates in one value, DT with offsets, TM with fractions."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = SECRET
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5"
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ContentDate = "20200101"
    inner.PersonName = SECRET  # nested PN: a pseudonym's row
    deeper = Dataset()
    deeper.CodeValue = "X1"
    deeper.ContentSequence = Sequence([Dataset()])  # an empty item
    deeper["ContentSequence"].is_undefined_length = True
    inner.ContentSequence = Sequence([deeper])
    inner["ContentSequence"].is_undefined_length = True
    inner.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([inner, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedSeriesSequence = Sequence([])  # empty, defined length
    ds.OtherPatientIDsSequence = Sequence([copy.deepcopy(inner)])
    ds.RelatedFrameOfReferenceUID = ["1.2.3.1", "", "1.2.3.2"]  # several UIDs, one empty
    ds.AcquisitionDateTime = "20200315101112.123456+0100"  # a DT with fraction and offset
    ds.AcquisitionTime = "101112.123"  # a TM with a fraction
    ds.CalibrationDate = ["20200101", "20200202"]  # several dates in one value
    ds.AdmittingDiagnosesDescription = ""  # empty values
    ds.InstitutionName = None
    ds.add_new(0x00091010, "SQ", Sequence([copy.deepcopy(inner)]))  # a private sequence
    return ds


@pytest.mark.parametrize("options", ALL_OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_edges_nested_empty_several_values_the_same_way_as_pydicom(
    options: tuple[str, ...], syntax: str
) -> None:
    ds = _edges()
    ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    ds.save_as(out, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    data = out.getvalue()
    assert _same(options, data)
    undefined = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)  # sequence delimiters: kept so
    assert data.count(undefined) >= 3
    result = Deidentifier(KEY, options).apply(data).data or b""
    assert result.count(undefined) >= 2  # Other Patient IDs Sequence goes
    assert SECRET.encode() not in result
    assert (b"1.2.3.4.5" in result) == ("retain-uids" in options)
    # Element by element too (what the archive's scanner and pydicom will read).
    slow = Deidentifier(KEY, options, byte_level=False).apply(data).data or b""
    assert _elements(result) == _elements(slow)


def _spliced(data: bytes, before: int, tag: int, vr: bytes, value: bytes) -> bytes:
    """`data` with an explicit VR element put in just before the element `before`."""
    at = data.index(struct.pack("<HH", before >> 16, before & 0xFFFF), 132)
    element = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return data[:at] + element + data[at:]


def test_odd_lengths_as_found_are_kept_and_rewritten_ones_made_even() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.SpacingBetweenSlices  # put back below, of odd length
    assert "DeviceSerialNumber" not in ds
    out = BytesIO()
    ds.save_as(out)
    data = _spliced(out.getvalue(), 0x00181020, 0x00181000, b"LO", b"SN7")  # replaced
    data = _spliced(data, 0x00180090, 0x00180088, b"DS", b"1.5")  # not in the table: kept
    assert pydicom.dcmread(BytesIO(data)).DeviceSerialNumber == "SN7"
    assert _same((), data)
    result = Deidentifier(KEY).apply(data).data or b""
    assert struct.pack("<HH2sH", 0x0018, 0x0088, b"DS", 3) + b"1.5" in result  # as found
    assert b"SN7" not in result
    dummy = struct.pack("<HH2sH", 0x0018, 0x1000, b"LO", 10) + b"ANONYMIZED"
    assert dummy in result


def _table_files() -> list[bytes]:
    """The table's data set as a file in implicit, then explicit VR little endian."""
    files = []
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        ds, _ = _dataset()
        ds.file_meta.TransferSyntaxUID = syntax
        files.append(_bytes(ds))
    return files


def test_served_values_are_kept_apart_by_encoding_and_match_pydicom() -> None:
    """The emptied and dummy elements the native splice serves from `Rules.served` (after
    the first of each (tag, VR)): one engine de-identifying the table's data set in
    implicit, explicit, then implicit VR again writes what the pydicom path writes each
    time, and has served elements of each encoding."""
    fast, slow = _pair(())
    files = _table_files()
    for data in [*files, files[0]]:
        ours, theirs = fast.apply(data), slow.apply(data)
        assert ours.fallback is None
        assert (ours.data, ours.actions) == (theirs.data, theirs.actions)
    implicit, explicit = fast.rules.served
    assert {"Z", "D"} <= {action for action, _ in implicit.values()}
    assert {"Z", "D"} <= {action for action, _ in explicit.values()}
    assert any(implicit[k] != explicit[k] for k in implicit.keys() & explicit.keys())


def test_mapped_uid_elements_are_given_again_as_pydicom_maps_them() -> None:
    """UID elements the native splice gives again from the engine's memory of mapped ones
    (by their bytes): a second pass over the same files, and a pickled engine (which
    starts without that memory), write what the pydicom path writes; the SOP Instance UID,
    whose mapped value the file meta repeats, is never taken from it."""
    fast, slow = _pair(())
    files = _table_files()
    theirs = [slow.apply(data) for data in files]
    for engine in (fast, fast, pickle.loads(pickle.dumps(fast))):
        for data, expected in zip(files, theirs, strict=True):
            ours = engine.apply(data)
            assert ours.fallback is None
            assert (ours.data, ours.actions) == (expected.data, expected.actions)
    implicit, explicit = fast._mapped
    assert implicit and explicit
    sop = struct.pack("<HH", 0x0008, 0x0018)
    assert not any(raw.startswith(sop) for raw in [*implicit, *explicit])


def test_header_blobs_the_same_way_as_pydicom(tmp_path: Path, inputs: list[bytes]) -> None:
    """What research copies use: each archived instance's header blob (prefix and suffix)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for number, data in enumerate(inputs):
        (folder / f"{number}.dcm").write_bytes(data)
    edges = _edges()
    edges.DataSetTrailingPadding = b"\0" * 4  # an element after the pixel data: the suffix
    edges.save_as(folder / "edges.dcm")
    with Archive.open_or_create(tmp_path / "record") as record:
        assert record.ingest([folder], workers=0).balanced
    by_bytes = free_text = 0
    with open_archive(tmp_path / "record") as record:
        blobs = [record.header_blob(row) for row in record.index]
    assert any(b.suffix for b in blobs) and any(b.kind != WHOLE for b in blobs)
    for options in ALL_OPTION_SETS:
        fast, slow = _pair(options)
        for blob in blobs:
            try:
                theirs = slow.apply_header(blob)
            except DeidError as error:
                with pytest.raises(DeidError, match=str(error).split("(")[0]):
                    fast.apply_header(blob)
                continue
            ours = fast.apply_header(blob)
            assert ours.blob == theirs.blob and ours.actions == theirs.actions
            assert ours.data_set_end == theirs.data_set_end
            by_bytes += ours.fallback is None
            free_text += ours.fallback in ("free text in structured content", "a sequence of VR UN")
    # Content items holding text (test-SR, the crafted one) and a sequence of VR UN (the
    # crafted one) take the pydicom path.
    assert free_text <= 3 * len(ALL_OPTION_SETS)
    assert by_bytes + free_text >= (len(blobs) - 4) * len(ALL_OPTION_SETS)


def test_bad_input_is_refused_with_the_reason_never_written() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = SECRET
    out = BytesIO()
    ds.save_as(out)
    data = out.getvalue()
    engine = Deidentifier(KEY)
    name_at = data.index(SECRET.encode())
    # Cut inside the patient's name: the element's length runs past the end.
    with pytest.raises(DeidError, match=r"\(0010,0010\) at byte \d+: its length runs past"):
        engine.apply(data[: name_at + 3])
    # Cut inside an element's header.
    with pytest.raises(DeidError, match="truncated element header"):
        engine.apply(data[: name_at - 5])
    # A length made larger than what follows, in the middle of the data set.
    length_at = name_at - 2
    grown = data[:length_at] + struct.pack("<H", 0xFFF0) + data[length_at + 2 :]
    with pytest.raises(DeidError, match="runs past the end") as error:
        engine.apply(grown)
    assert "Zeppelin" not in str(error.value)
    # A sequence of undefined length that never ends (the last element of the data set).
    ds.DigitalSignaturesSequence = Sequence([Dataset()])
    ds["DigitalSignaturesSequence"].is_undefined_length = True
    del ds.PixelData, ds.DataSetTrailingPadding
    out = BytesIO()
    ds.save_as(out)
    with pytest.raises(DeidError, match="sequence truncated"):
        engine.apply(out.getvalue()[:-8])  # its delimiter cut off


def test_what_the_byte_path_does_not_handle_goes_to_pydicom_and_is_counted(
    tmp_path: Path,
) -> None:
    big = Path(get_testdata_file("MR_small_bigendian.dcm")).read_bytes()
    assert pydicom.dcmread(BytesIO(big)).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    name = str(pydicom.dcmread(BytesIO(big)).PatientName).encode()
    result = Deidentifier(KEY).apply(big)
    assert result.fallback == "transfer syntax: not explicit or implicit VR little endian"
    assert result.data is not None and name in big and name not in result.data
    assert _same((), big) is False
    # A value of VR UN to replace: pydicom reads it with the dictionary's VR first.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds[0x00100010].VR = "UN"
    ds[0x00100010].value = SECRET.encode()
    unknown = BytesIO()
    ds.save_as(unknown)
    assert Deidentifier(KEY).apply(unknown.getvalue()).fallback is not None
    assert _same((), unknown.getvalue()) is False
    # Counted in a research copy's report, by reason.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "unknown.dcm").write_bytes(unknown.getvalue())
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    with Archive.open_or_create(tmp_path / "record") as record:
        assert record.ingest([folder], workers=0).balanced
    key = make_key(tmp_path / "key")
    report = deidentify(tmp_path / "record", tmp_path / "research", key, workers=0)
    assert report.staged == 2
    assert report.to_dict()["fallbacks"] == {"a value of VR UN or of an ambiguous VR to rewrite": 1}
    stages = report.to_dict()["stages"]  # where the time went, for benchmarkers
    assert {"read header", "deidentify", "scan"} <= set(stages["headers"])
    assert {"copy chunks", "write", "fsync", "commit"} <= set(stages["parts"])


def test_file_meta_is_rewritten_with_its_group_length() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITALAE7"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.99"
    ds.file_meta.PrivateInformation = b"secret"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert _same((), out.getvalue())
    result = Deidentifier(KEY).apply(out.getvalue()).data or b""
    back = pydicom.dcmread(BytesIO(result))
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert b"HOSPITALAE7" not in result and b"secret" not in result
    meta_end = 144 + back.file_meta.FileMetaInformationGroupLength
    assert struct.unpack_from("<H", result, meta_end)[0] == 0x0008  # the data set follows


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_private_attributes_at_every_depth_counted_as_pydicom_counts_them(syntax: str) -> None:
    """The native walk counts private attributes instead of returning them: in items (at
    their start, between and after standard ones, an item of nothing else), in a private
    sequence (whose items' values are still cleaned out of text), before the pixel data."""
    ds = _edges()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.StudyDescription = f"study of {SECRET}"  # cleaned of the private sequence's name
    first, last = Dataset(), Dataset()
    for item in (first, last):
        item.add_new(0x00290010, "LO", "ACME 1.0")  # a safe creator: kept with its option
        item.add_new(0x00291001, "LO", "kept with retain-safe-private")
        item.add_new(0x00291002, "SH", "never kept")
    first.ReferencedSOPInstanceUID = "1.2.3.4.6"
    first.add_new(0x00311010, "LO", "after the standard attributes")
    last.is_undefined_length_sequence_item = True
    ds.SourceImageSequence = Sequence([first, Dataset(), last])
    ds.add_new(0x7FDF0010, "LO", "LAST PRIVATE")  # just before the pixel data
    ds.add_new(0x7FDF1001, "LT", SECRET)
    out = BytesIO()
    ds.save_as(out, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    data = out.getvalue()
    for options in [*ALL_OPTION_SETS, ("clean-descriptors",)]:
        assert _same(options, data)  # the byte path did it, as pydicom does
        result = Deidentifier(KEY, options, safe_private=SAFE).apply(data)
        assert SECRET.encode() not in (result.data or b"")
        assert b"never kept" not in (result.data or b"")
        kept = "retain-safe-private" in options
        assert (b"kept with retain-safe-private" in (result.data or b"")) == kept


# --- what must not survive, whichever path de-identifies it -------------------------------

LEAKED_NAME, LEAKED_UID = "Zebulon^Quixotic", "1.2.999.1.3.2"


def _implicit_item(ds: Dataset) -> bytes:
    """One sequence item of `ds`, implicit VR little endian, defined length."""
    out = BytesIO()
    fp = pydicom.filebase.DicomFileLike(out)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(fp, ds)
    value = out.getvalue()
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value


def _leaky(with_private_sequence: bool) -> bytes:
    """CT_small with identifying values where a walk that only follows VR SQ misses them:
    a standard sequence written as VR UN of defined length, a safe private sequence
    holding a name, and the file meta's presentation addresses."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.PatientName = LEAKED_NAME
    item.ReferencedSOPInstanceUID = LEAKED_UID
    item.ReferencedSOPClassUID = ds.SOPClassUID
    value = _implicit_item(item)  # Referenced Series Sequence, as a writer without it wrote it:
    tag = BaseTag(0x00081115)  # a raw element, or pydicom would make it the sequence it is
    ds._dict[tag] = RawDataElement(tag, "UN", len(value), value, 0, False, True)
    if with_private_sequence:
        ds.add_new(0x00090010, "LO", SAFE[0][0])
        private = Dataset()
        private.PatientName = LEAKED_NAME
        ds.add_new(0x00091001, "SQ", Sequence([private]))
    ds.file_meta.SourcePresentationAddress = "dicom://ct-3.hospital.example:104"
    ds.file_meta.SendingPresentationAddress = "dicom://10.20.30.40:11112"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
@pytest.mark.parametrize("options", [(), ("retain-safe-private",)], ids=["basic", "safe private"])
def test_no_name_uid_or_address_survives_in_a_un_sequence_a_kept_private_one_or_the_meta(
    fast: bool, options: tuple[str, ...]
) -> None:
    data = _leaky(with_private_sequence=True)
    assert LEAKED_NAME.encode() in data and LEAKED_UID.encode() in data
    engine = Deidentifier(KEY, options, burned_in="keep", safe_private=SAFE, byte_level=fast)
    result = engine.apply(data)
    assert result.data is not None
    for leaked in (LEAKED_NAME, LEAKED_UID, "hospital.example", "10.20.30.40"):
        assert leaked.encode() not in result.data, leaked
    ds = pydicom.dcmread(BytesIO(result.data))
    references = ds.ReferencedSeriesSequence  # kept (not in the table), its items cleaned
    assert references[0].ReferencedSOPInstanceUID == KEY.uid(LEAKED_UID)
    if options:
        assert str(ds[0x00091001].value[0].PatientName) != LEAKED_NAME


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
def test_a_kept_private_sequence_of_an_implicit_vr_file_is_de_identified(fast: bool) -> None:
    """Implicit VR: a private sequence is read as a value of unknown VR holding items; kept
    (retain-safe-private), its items go through the table too."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00090010, "LO", SAFE[0][0])
    private = Dataset()
    private.PatientName = LEAKED_NAME
    ds.add_new(0x00091001, "SQ", Sequence([private]))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert LEAKED_NAME.encode() in data
    engine = Deidentifier(
        KEY, ("retain-safe-private",), burned_in="keep", safe_private=SAFE, byte_level=fast
    )
    result = engine.apply(data)
    assert result.data is not None and LEAKED_NAME.encode() not in result.data
    assert 0x00091001 in pydicom.dcmread(BytesIO(result.data))  # kept


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image (Retired)
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image (Retired)
        "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image
        "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic Photography 8 Bit Image
    ],
)
def test_classes_that_carry_burned_in_text_are_withheld(sop_class: str) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    for fast in (True, False):
        result = Deidentifier(KEY, (), byte_level=fast).apply(out.getvalue())
        assert result.data is None and result.withheld is not None


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
@pytest.mark.parametrize("options", [(), ("clean-structured-content",)], ids=["basic", "clean"])
def test_free_text_in_content_items_goes_with_its_sequence(
    fast: bool, options: tuple[str, ...]
) -> None:
    """A content item's Text Value is in no row of the table: under Content Sequence's D
    (Basic Profile) it is a dummy, under its C (Clean Structured Content) it is cleaned of
    the patient's name and ID; the item's coded concept stays."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = LEAKED_NAME, "PIDQX998877"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "121071",
        "DCM",
        "Finding",
    )
    item = Dataset()
    item.ValueType, item.RelationshipType = "TEXT", "CONTAINS"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = "Zebulon Quixotic (MRN PIDQX998877) seen at 12 Elm St"
    ds.ContentSequence = Sequence([item])
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    engine = Deidentifier(KEY, options, burned_in="keep", byte_level=fast)
    result = engine.apply(out.getvalue())
    assert result.data is not None
    for leaked in (b"Zebulon", b"Quixotic", b"PIDQX998877"):
        assert leaked not in result.data
    (cleaned,) = pydicom.dcmread(BytesIO(result.data)).ContentSequence
    assert cleaned.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    if options:
        assert "seen at 12 Elm St" in cleaned.TextValue  # what identifies no one is kept
    else:
        assert cleaned.TextValue == "ANONYMIZED"


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
def test_cleaned_text_loses_the_uids_it_quotes(fast: bool) -> None:
    """clean-descriptors: a description quoting the instance's UID and the patient's ID
    keeps neither (the UID stayed: UIDs were not among the values text is cleaned of)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = "PIDQX998877"
    ds.StudyDescription = f"Head for {ds.PatientID} {ds.SOPInstanceUID}"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    engine = Deidentifier(KEY, ("clean-descriptors",), burned_in="keep", byte_level=fast)
    result = engine.apply(out.getvalue())
    assert result.data is not None
    cleaned = pydicom.dcmread(BytesIO(result.data)).StudyDescription
    assert cleaned == "Head for [removed] [removed]"
    assert str(ds.SOPInstanceUID).encode() not in result.data


def _saved(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _as_un(ds: Dataset, keyword: str) -> None:
    """Give `keyword`'s element VR UN, as a writer that did not know it (a raw element, or
    pydicom would give it its dictionary VR at once)."""
    tag = BaseTag(pydicom.datadict.tag_for_keyword(keyword))
    value = str(ds[tag].value).encode()
    value += b"\0" if len(value) & 1 else b""
    ds._dict[tag] = RawDataElement(tag, "UN", len(value), value, 0, False, True)


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
def test_uids_and_names_of_vr_un_are_mapped_and_cleaned_as_their_dictionary_vr(
    fast: bool,
) -> None:
    """A Study, Series or Frame of Reference UID of VR UN is mapped (it was emptied: the
    research copy lost the instance's study and series and its run stopped); an Accession
    Number or a referring physician of VR UN cleans free text of itself (it stayed in it)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC998877", "Referrer^Alicia"
    ds.StudyDescription = "CT for ACC998877 ordered by Referrer^Alicia"
    sources = {k: str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID")}
    sources["FrameOfReferenceUID"] = str(ds.FrameOfReferenceUID)
    for keyword in [*sources, "AccessionNumber", "ReferringPhysicianName"]:
        _as_un(ds, keyword)
    engine = Deidentifier(KEY, ("clean-descriptors",), burned_in="keep", byte_level=fast)
    result = engine.apply(_saved(ds))
    assert result.data is not None
    out = pydicom.dcmread(BytesIO(result.data))
    for keyword, source in sources.items():
        assert out[keyword].value == KEY.uid(source), keyword
    assert out.StudyDescription == "CT for [removed] ordered by [removed]"
    for leaked in (b"ACC998877", b"Alicia"):
        assert leaked not in result.data


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
@pytest.mark.parametrize("annotation", ["YES", " YES", "YES "])
def test_burned_in_annotation_yes_with_padding_is_withheld(fast: bool, annotation: str) -> None:
    """Leading spaces of a CS are not significant (PS3.5 6.2): ' YES' was copied."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BurnedInAnnotation = annotation
    result = Deidentifier(KEY, (), byte_level=fast).apply(_saved(ds))
    assert result.data is None and result.withheld == "Burned In Annotation is YES"


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
def test_other_patients_in_items_get_their_own_pseudonyms(fast: bool) -> None:
    """The items of a Group of Patients Identification Sequence name other patients: each
    gets its own pseudonym (all got the data set's patient's, linking them falsely); an
    item naming the data set's own patient keeps its pseudonym."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = "PID12345"
    items = []
    for patient_id in ("MOUSE-A", "MOUSE-B", " PID12345"):
        item = Dataset()
        item.PatientID = patient_id
        items.append(item)
    ds.GroupOfPatientsIdentificationSequence = Sequence(items)
    result = Deidentifier(KEY, (), burned_in="keep", byte_level=fast).apply(_saved(ds))
    assert result.data is not None
    out = pydicom.dcmread(BytesIO(result.data))
    found = [i.PatientID for i in out.GroupOfPatientsIdentificationSequence]
    top = KEY.patient_id("PID12345\0")
    assert out.PatientID == top
    assert found == [KEY.patient_id("MOUSE-A\0"), KEY.patient_id("MOUSE-B\0"), top]
    assert len(set(found)) == 3
    assert b"MOUSE" not in result.data


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
def test_a_patient_id_padded_with_a_leading_space_is_the_same_patient(fast: bool) -> None:
    """Leading spaces of an LO are not significant: ' PID12345' got another pseudonym and
    another date shift than 'PID12345'."""
    options = ("retain-longitudinal-modified-dates",)
    engine = Deidentifier(KEY, options, burned_in="keep", byte_level=fast)
    found = []
    for patient_id in ("PID12345", " PID12345"):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID = patient_id
        result = engine.apply(_saved(ds))
        assert result.data is not None
        out = pydicom.dcmread(BytesIO(result.data))
        found.append((out.PatientID, out.StudyDate))
    assert found[0] == found[1]


@pytest.mark.parametrize("fast", [True, False], ids=["byte path", "pydicom path"])
def test_a_cleaned_ae_title_loses_the_institution_it_names(fast: bool) -> None:
    """retain-device-identity cleans Station AE Title (C): an AE title naming the
    institution (removed by the Basic Profile) loses it (C kept AE values as they were)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.InstitutionName = ds.StationAETitle = "PHIHOSP"
    engine = Deidentifier(KEY, ("retain-device-identity",), burned_in="keep", byte_level=fast)
    result = engine.apply(_saved(ds))
    assert result.data is not None and b"PHIHOSP" not in result.data
    assert pydicom.dcmread(BytesIO(result.data)).StationAETitle == "[removed]"
