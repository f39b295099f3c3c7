"""PS3.15 Table E.1-1 as shipped, and the engine doing exactly the table's action on a data
set that holds every attribute of the table, for several option sets."""

from __future__ import annotations

import datetime
import importlib.util
import json
import struct
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from pacs_engine.deid import Deidentifier, Key, ProfileError
from pacs_engine.deid.engine import DUMMY, REMOVED
from pacs_engine.deid.profile import OPTIONS, PROFILE_PATH, check_options

ROOT = Path(__file__).resolve().parent.parent
KEY = Key(bytes(range(32)))
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
DOCBOOK = "http://docbook.org/ns/docbook"
HEADERS = (
    "Attribute Name",
    "Tag",
    "Retd.",
    "In Std. Comp. IOD",
    "Basic Prof.",
    "Rtn. Safe Priv. Opt.",
    "Rtn. UIDs Opt.",
    "Rtn. Dev. Id. Opt.",
    "Rtn. Inst. Id. Opt.",
    "Rtn. Pat. Chars. Opt.",
    "Rtn. Long. Full Dates Opt.",
    "Rtn. Long. Modif. Dates Opt.",
    "Clean Desc. Opt.",
    "Clean Struct. Cont. Opt.",
    "Clean Graph. Opt.",
)
# Values of each VR: none holds another attribute's value, so C (clean) keeps them whole.
SAMPLE = {
    "AE": "STATION7",
    "AS": "045Y",
    "AT": 0x00100010,
    "CS": "SAMPLECS",
    "DA": "20200315",
    "DS": "12.5",
    "DT": "20200315101112.5",
    "FD": 1.5,
    "FL": 2.5,
    "IS": "42",
    "LO": "a long string",
    "LT": "a long text",
    "OB": b"\x01\x02",
    "OD": b"\x01" * 8,
    "OF": b"\x01" * 4,
    "OL": b"\x01" * 4,
    "OV": b"\x01" * 8,
    "OW": b"\x01\x02",
    "PN": "Doe^Jane",
    "SH": "short",
    "SL": -5,
    "SS": -4,
    "ST": "a short text",
    "SV": -6,
    "TM": "101112",
    "UC": "unlimited characters",
    "UI": "1.2.3.4.5.6.7.8.9",
    "UL": 7,
    "UN": b"\x03\x04",
    "UR": "http://example.org/x",
    "US": 8,
    "UT": "unlimited text",
    "UV": 9,
}
OPTION_SETS = [
    (),
    ("retain-uids",),
    ("retain-longitudinal-modified-dates",),
    (
        "retain-longitudinal-full-dates",
        "retain-device-identity",
        "retain-institution-identity",
        "retain-patient-characteristics",
        "clean-descriptors",
        "clean-structured-content",
        "clean-graphics",
    ),
]
UNIQUE_TEXT = {"LO", "LT", "SH", "ST", "UT", "UC", "PN"}
COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
COMPOUND_SQ = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "D", "U": "D"}


def _rows() -> list[dict]:
    return json.loads(PROFILE_PATH.read_text())["attributes"]


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:  # newer than pydicom's dictionary: a text VR
        return "LO"
    return vr.split(" or ")[0].replace("US or SS", "US")


def _expected(row: dict, options: tuple[str, ...], vr: str) -> str:
    """The table's action: a retaining option wins, then a cleaning one, then the Basic;
    of a compound action, the one that keeps the attribute, but X for the Referenced Study
    Sequence, Type 3 where it is used (docs/deidentify.md)."""
    codes = [row["options"][o] for o in options if o in row["options"]]
    action = "K" if "K" in codes else (codes[0] if codes else row["basic"])
    if row["tag"] == "00081110" and action == "X/Z":
        return "X"
    return (COMPOUND_SQ if vr == "SQ" else COMPOUND).get(action, action)


def _dataset() -> tuple[Dataset, dict[int, dict]]:
    """A data set with every exact tag of the table (groups 0000 and 0002 aside: they are
    command and file meta elements, no part of a stored data set)."""
    ds = Dataset()
    rows = {}
    for row in _rows():
        if not all(c in "0123456789abcdef" for c in row["tag"]):
            continue
        tag = int(row["tag"], 16)
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
            continue
        vr = _vr(tag)
        if vr == "SQ":
            item = Dataset()
            item.CodeValue = "CV1"
            value: object = Sequence([item])
        elif vr in UNIQUE_TEXT:  # a value of its own: cleaning another's leaves it whole
            value = f"v{tag:08x}"
        else:
            value = SAMPLE[vr]
        ds.add_new(tag, vr, value)
        rows[tag] = row
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, rows


def _bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_table_is_the_generated_standard_table() -> None:
    document = json.loads(PROFILE_PATH.read_text())
    assert document["edition"] and document["source"]
    assert document["generated_by"] == "tools/deid_profile.py"
    assert document["options"] == list(OPTIONS)
    rows = document["attributes"]
    assert len(rows) >= 600
    by_tag = {r["tag"]: r for r in rows}
    # A few rows anyone can check in the standard.
    assert by_tag["00100010"]["basic"] == "Z"  # Patient's Name
    assert by_tag["0020000d"]["basic"] == "U"  # Study Instance UID
    assert by_tag["0020000d"]["options"] == {"retain-uids": "K"}
    assert by_tag["00080020"]["options"]["retain-longitudinal-modified-dates"] == "C"
    assert by_tag["private"]["options"] == {"retain-safe-private": "C"}


def test_the_generator_reads_the_standards_docbook(tmp_path: Path) -> None:
    """tools/deid_profile.py --docbook reads Table E.1-1 laid out as in part15.xml and
    writes the shipped table again (rows, actions, options)."""
    spec = importlib.util.spec_from_file_location("deid_profile", ROOT / "tools/deid_profile.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ET.register_namespace("", DOCBOOK)
    book = ET.Element(f"{{{DOCBOOK}}}book")
    info = ET.SubElement(book, f"{{{DOCBOOK}}}info")
    ET.SubElement(info, f"{{{DOCBOOK}}}subtitle").text = "DICOM PS3.15 2099z - Security"
    table = ET.SubElement(book, f"{{{DOCBOOK}}}table")
    table.set("{http://www.w3.org/XML/1998/namespace}id", "table_E.1-1")
    head = ET.SubElement(ET.SubElement(table, f"{{{DOCBOOK}}}thead"), f"{{{DOCBOOK}}}tr")
    for text in HEADERS:
        ET.SubElement(ET.SubElement(head, f"{{{DOCBOOK}}}th"), f"{{{DOCBOOK}}}para").text = text
    body = ET.SubElement(table, f"{{{DOCBOOK}}}tbody")
    for row in _rows():
        tag = row["tag"]
        tag_text = (
            "(gggg,eeee) where gggg is odd"
            if tag == "private"
            else f"({tag[:4].upper()},{tag[4:].upper()})"
        )
        cells = [row["name"], tag_text, "N", "Y", row["basic"]]
        cells += [row["options"].get(option, "") for option in OPTIONS]
        tr = ET.SubElement(body, f"{{{DOCBOOK}}}tr")
        for text in cells:
            ET.SubElement(ET.SubElement(tr, f"{{{DOCBOOK}}}td"), f"{{{DOCBOOK}}}para").text = text
    xml = tmp_path / "part15.xml"
    ET.ElementTree(book).write(xml, encoding="utf-8", xml_declaration=True)
    out = tmp_path / "profile.json"
    assert tool.main(["--docbook", str(xml), "--output", str(out)]) == 0
    made = json.loads(out.read_text())
    assert made["edition"] == "2099z"
    assert made["attributes"] == _rows()
    # A column moved is refused, not read as another option.
    head[5], head[6] = head[6], head[5]
    ET.ElementTree(book).write(xml, encoding="utf-8")
    with pytest.raises(ValueError, match="columns"):
        tool.main(["--docbook", str(xml), "--output", str(out)])


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
def test_every_attribute_of_the_table_gets_its_action(options: tuple[str, ...]) -> None:
    ds, rows = _dataset()
    original = {tag: ds[tag].value for tag in rows}
    out = pydicom.dcmread(BytesIO(Deidentifier(KEY, options).apply(_bytes(ds)).data or b""))
    # A patient is its ID and the ID's issuer.
    patient = f"{original[PATIENT_ID]}\0{original.get(0x00100021, '')}"
    shift = datetime.timedelta(days=KEY.shift_days(patient))
    checked = 0
    for tag, row in rows.items():
        vr = _vr(tag)
        action = _expected(row, options, vr)
        if action == "U" and vr != "UI":
            action = "Z"
        where = f"{row['name']} ({row['tag']}) {row['basic']}->{action}"
        before = original[tag]
        if action == "X":
            assert tag not in out, where
        elif tag in (PATIENT_ID, PATIENT_NAME):
            pseudonym = KEY.patient_id(patient)
            assert str(out[tag].value) in (pseudonym, f"ANONYMOUS^{pseudonym}"), where
        elif action == "Z":
            value = out[tag].value
            assert value in (None, "", b"") or (vr == "SQ" and len(value) == 0), where
        elif action == "K":
            assert out[tag].value == before, where
        elif action == "U":
            assert out[tag].value == KEY.uid(before), where
        elif action == "D":
            value = out[tag].value
            if vr == "SQ":
                assert [i.CodeValue for i in value] == ["CV1"], where
            elif vr == "UI":
                assert value == KEY.uid(before), where
            elif vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
                assert value == b"\0\0", where
            else:
                assert value == DUMMY[vr] and value != before, where
        else:  # C
            value = out[tag].value if tag in out else None
            if vr in ("DA", "DT") and "retain-longitudinal-modified-dates" in options:
                day = datetime.date(2020, 3, 15) - shift
                assert value == day.strftime("%Y%m%d") + str(before)[8:], where
            elif vr in ("DA", "DT", "TM") and "retain-longitudinal-modified-dates" not in options:
                assert value in (None, ""), where
            elif vr == "SQ":
                assert [i.CodeValue for i in value] == ["CV1"], where
            elif vr in ("OB", "OW", "UN"):
                assert value in (b"", None), where
            else:  # text with no identifying value in it: kept whole
                assert value == before, where
        checked += 1
    assert checked > 550
    assert out.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and len(codes) == 1 + len(options)
    assert "113107" in codes or "retain-longitudinal-modified-dates" not in options


def test_masked_rows_private_curves_and_overlays() -> None:
    ds, _ = _dataset()
    ds.add_new(0x50000010, "US", 3)  # curve: the whole 50xx group is Curve Data
    ds.add_new(0x60000010, "US", 4)  # overlay rows
    ds.add_new(0x60003000, "OW", b"\0\1")  # overlay data
    ds.add_new(0x00090010, "LO", "ACME 1.0")  # private creator
    ds.add_new(0x00091001, "LO", "private value")
    ds.add_new(0x00091002, "LO", "secret private")
    # The rows of groups 0000 (command elements) and FFFA/FFFC, which _dataset leaves out.
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([Dataset()]))  # Digital Signatures Sequence: X
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 8)  # Data Set Trailing Padding: X
    data = _bytes(ds)
    # Command elements (Affected, Requested SOP Instance UID: X, U), which pydicom does not
    # write into a file: spliced in, explicit VR little endian, first after the file meta.
    command = b"".join(
        struct.pack("<HH2sH", 0, element, b"UI", len(uid)) + uid
        for element, uid in ((0x1000, b"1.2.3.1000"), (0x1001, b"1.2.3.1001"))
    )
    # After the preamble, DICM and the file meta, whose group length is bytes 140-143.
    start = 144 + int.from_bytes(data[140:144], "little")
    assert int.from_bytes(data[start : start + 2], "little") > 2  # the data set's first
    data = data[:start] + command + data[start:]
    assert pydicom.dcmread(BytesIO(data))[0x00001001].value == "1.2.3.1001"
    basic = pydicom.dcmread(BytesIO(Deidentifier(KEY).apply(data).data or b""))
    for tag in (0x50000010, 0x60000010, 0x60003000, 0x00090010, 0x00091001, 0x00091002):
        assert tag not in basic
    # Command elements go whatever their row says: no stored data set holds them.
    assert 0x00001000 not in basic and 0x00001001 not in basic
    assert 0xFFFAFFFA not in basic and 0xFFFCFFFC not in basic
    assert basic.file_meta.MediaStorageSOPInstanceUID == basic.SOPInstanceUID
    safe = Deidentifier(KEY, ["retain-safe-private"], safe_private=[("ACME 1.0", 0x01)])
    kept = pydicom.dcmread(BytesIO(safe.apply(_bytes(ds)).data or b""))
    assert kept[0x00091001].value == "private value" and 0x00091002 not in kept


def test_clean_removes_identifying_values_from_text() -> None:
    ds, _ = _dataset()
    ds.PatientName = "Smith^Johnathan"
    ds.PatientID = "ID-776655"
    ds.StudyDate = "20190704"
    ds.StudyDescription = "CT for smith (ID-776655) johnathan of 20190704"
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITALAE7"
    options = ["clean-descriptors", "retain-longitudinal-modified-dates"]
    data = Deidentifier(KEY, options).apply(_bytes(ds)).data or b""
    out = pydicom.dcmread(BytesIO(data))
    text = out.StudyDescription.lower()
    assert "smith" not in text and "776655" not in text and "johnathan" not in text
    assert "20190704" not in text and out.StudyDate != "20190704"  # shifted, not left in text
    assert REMOVED in out.StudyDescription and text.startswith("ct for")
    assert b"HOSPITALAE7" not in data


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["clean-pixel-data"], "not supported"),
        (["retain-everything"], "unknown option"),
        (
            ["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"],
            "exclude each other",
        ),
    ],
)
def test_options_refused_clearly(options: list[str], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        check_options("basic", options)
