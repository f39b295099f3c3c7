"""De-identify one DICOM file by Table E.1-1: the header is rewritten, the pixels are not.

The file (`apply`), or an archived instance's header blob without its pixel data value
(`apply_header`, what research copies use), is read with pydicom (a Pixel Data value stays
the bytes it was: nothing is decoded), every attribute at every depth gets its action, and
it is written again with the same transfer syntax. Anything that cannot be de-identified
with certainty raises DeidError, whose message names the attribute and never a value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import re
import struct
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO

import pydicom
import pydicom.config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from pacs_engine.archive.blobs import WHOLE, HeaderBlob
from pacs_engine.archive.prepare import blob_dataset
from pacs_engine.deid.key import Key
from pacs_engine.deid.profile import (
    METHOD_CODES,
    PRIVATE_ROW,
    check_options,
    resolve,
    row_of,
    table,
)
from pacs_engine.errors import PacsEngineError

#: Deeper nesting is refused: the scanner reads 64 levels, and no real IOD nests so deep.
MAX_DEPTH = 64
#: Storage SOP classes whose pixels often carry identity burned in (PS3.15 E.1.1 note):
#: ultrasound, secondary capture, visible light photography and video.
BURNED_IN_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}
BURNED_IN_POLICIES = ("leave-out", "keep")
#: Dummy values of action D by VR (a UID is mapped instead; a sequence is recursed).
DUMMY: dict[str, object] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "FD": 0.0,
    "FL": 0.0,
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "SL": 0,
    "SS": 0,
    "ST": "ANONYMIZED",
    "SV": 0,
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UL": 0,
    "UR": "http://anonymized.invalid",
    "US": 0,
    "UT": "ANONYMIZED",
    "UV": 0,
}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
TEXT_VRS = {"LO", "LT", "SH", "ST", "UT", "UC", "PN"}
_IDENTIFYING_VRS = TEXT_VRS | {"DA", "DT"}
#: Text cleaned of identifying values is refilled with this where one was.
REMOVED = "[removed]"
_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
# Compound actions: the one that keeps the attribute present (what a Type 1 or 2 attribute
# needs), since which type it has depends on the IOD, which this engine does not model.
_COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
# A sequence: an empty one is wrong where it is optional (Type 3), so X/Z/U* and D keep
# its items, de-identified (their UIDs mapped by their own rows). X/Z empties it (the
# Acquisition Context Sequence is Type 2), but for the Type 3 sequences named here.
_COMPOUND_SQ = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "D", "U": "D"}
_OPTIONAL_SQ = {0x00081110}  # Referenced Study Sequence: Type 3 in the General Study module
# File meta: source, sending and receiving AE titles, private information (and its creator).
_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")


class DeidError(PacsEngineError, ValueError):
    """A file that cannot be de-identified with certainty (the message holds no value)."""


@dataclass
class Result:
    """One de-identified file: its bytes and new SOP Instance UID, or why it is withheld."""

    sop_instance_uid: str
    data: bytes | None  # None: withheld (burned-in text); `withheld` says why
    withheld: str | None = None
    actions: Counter[str] = field(default_factory=Counter)


@dataclass
class HeaderResult:
    """One de-identified header blob and the new SOP Instance UID, or why it is withheld."""

    sop_instance_uid: str
    blob: HeaderBlob | None  # None: withheld (burned-in text); `withheld` says why
    withheld: str | None = None
    actions: Counter[str] = field(default_factory=Counter)
    data_set_end: int = 0  # where the pixel data element starts in the blob's prefix

    def header_bytes(self) -> bytes:
        """The de-identified file up to its pixel data element (all of it for a whole blob)."""
        assert self.blob is not None
        return self.blob.prefix[: self.data_set_end or None]


@dataclass
class _Context:
    """What de-identifying one file needs at every depth."""

    key: Key
    options: tuple[str, ...]
    safe_private: frozenset[tuple[str, int]]
    patient: str
    identifying: list[str]  # values the profile takes out, to clean free text of
    actions_of: dict[str, str]  # row of Table E.1-1 -> its action under the options
    actions: Counter[str] = field(default_factory=Counter)


class Deidentifier:
    """De-identifies files with one key, profile and option set; picklable."""

    def __init__(
        self,
        key: Key,
        options: Iterable[str] = (),
        profile: str = "basic",
        burned_in: str = "leave-out",
        safe_private: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.key = key
        self.options = check_options(profile, options)
        if burned_in not in BURNED_IN_POLICIES:
            raise DeidError(f"--burned-in must be one of {', '.join(BURNED_IN_POLICIES)}")
        self.burned_in = burned_in
        self._actions_of = {row: resolve(row, self.options) for row in table().basic}
        # (private creator, element byte): private attributes known to be safe to keep.
        self.safe_private = frozenset(
            (creator.strip(), element) for creator, element in safe_private
        )

    def method(self) -> list[str]:
        """De-identification Method values: the profile and each option, by name."""
        return ["PS3.15 E.1 Basic Application Confidentiality Profile", *self.options]

    def apply(self, data: bytes) -> Result:
        """The de-identified file of `data`, or a withheld Result; DeidError says why not."""
        with _quiet(), _refused():
            return self._apply(data)

    def _apply(self, data: bytes) -> Result:
        try:
            ds = pydicom.dcmread(BytesIO(data), force=True)  # the archive scanned it: DICOM
            ds.get("SOPInstanceUID")  # parse the header now: errors are raised here
        except Exception as error:  # pydicom raises many kinds; its messages may hold values
            raise DeidError(f"not readable as DICOM ({type(error).__name__})") from None
        new_sop, withheld, actions = self._deidentify(ds)
        if actions is None:
            return Result(new_sop, None, withheld)
        out = BytesIO()
        try:
            ds.save_as(out, enforce_file_format=False)
        except Exception as error:  # a value the new one cannot be written as
            raise DeidError(
                f"cannot write the de-identified file ({type(error).__name__})"
            ) from None
        return Result(new_sop, out.getvalue(), withheld, actions)

    def apply_header(self, blob: HeaderBlob) -> HeaderResult:
        """The de-identified header blob of an archived instance, or a withheld result:
        the data set around the pixel data value is rewritten, the value is not touched
        (it stays in the archive's chunks; a blob that keeps the whole file is the file)."""
        with _quiet(), _refused():
            return self._apply_header(blob)

    def _apply_header(self, blob: HeaderBlob) -> HeaderResult:
        if blob.kind == WHOLE:
            result = self._apply(blob.prefix)
            new = None if result.data is None else HeaderBlob(WHOLE, result.data)
            return HeaderResult(result.sop_instance_uid, new, result.withheld, result.actions)
        try:
            ds = blob_dataset(blob)
            ds.get("SOPInstanceUID")
        except Exception as error:  # pydicom raises many kinds; its messages may hold values
            raise DeidError(f"not readable as DICOM ({type(error).__name__})") from None
        implicit, little = ds.original_encoding
        # The pixel data element's own header (tag, VR, length) ends the blob's prefix.
        head = blob.prefix[-(8 if implicit else 12) :]
        group, element = struct.unpack("<HH" if little else ">HH", head[:4])
        pixel_tag = BaseTag(group << 16 | element)
        new_sop, withheld, actions = self._deidentify(ds)
        if actions is None:
            return HeaderResult(new_sop, None, withheld)
        after = Dataset()  # what follows the pixel data value goes back after it
        for tag in [t for t in list(ds.keys()) if t > pixel_tag]:
            after.add(ds[tag])
            del ds[tag]
        before, suffix = BytesIO(), DicomBytesIO()
        suffix.is_implicit_VR, suffix.is_little_endian = bool(implicit), bool(little)
        try:
            ds.save_as(before, enforce_file_format=False)
            write_dataset(suffix, after)
        except Exception as error:  # a value the new one cannot be written as
            raise DeidError(
                f"cannot write the de-identified file ({type(error).__name__})"
            ) from None
        new = dataclasses.replace(blob, prefix=before.getvalue() + head, suffix=suffix.getvalue())
        return HeaderResult(new_sop, new, withheld, actions, len(before.getvalue()))

    def _deidentify(self, ds: Dataset) -> tuple[str, str | None, Counter[str] | None]:
        """De-identify a data set in place: (new SOP UID, why it may carry burned-in text,
        the actions done; None when it is withheld and left as it was)."""
        sop = str(ds.get("SOPInstanceUID", ""))
        if not sop:
            raise DeidError("no SOP Instance UID")
        new_sop = self.key.uid(sop)
        withheld = self._burned_in(ds)
        if withheld is not None and self.burned_in == "leave-out":
            return new_sop, withheld, None
        _check_charset(ds)
        patient = f"{ds.get('PatientID', '')}\0{ds.get('IssuerOfPatientID', '')}"
        if not str(ds.get("PatientID", "")):  # no ID: the name and birth date tell patients apart
            patient = f"\0{ds.get('PatientName', '')}\0{ds.get('PatientBirthDate', '')}"
        context = _Context(self.key, self.options, self.safe_private, patient, [], self._actions_of)
        _collect_identifying(ds, context, 0)
        _clean(ds, context, 0)
        self._mark(ds, context)
        meta = ds.file_meta
        if "MediaStorageSOPInstanceUID" in meta:  # a file without meta information stays so
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for tag in _META_REMOVED:
            if tag in meta:
                del meta[tag]
        return new_sop, withheld, context.actions

    def _burned_in(self, ds: Dataset) -> str | None:
        """Why this instance may carry identity in its pixels, or None."""
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            return "Burned In Annotation is YES"
        name = BURNED_IN_CLASSES.get(str(ds.get("SOPClassUID", "")))
        return f"SOP class {name}: may carry burned-in text" if name else None

    def _mark(self, ds: Dataset, context: _Context) -> None:
        """Write the De-identification Method attributes (PS3.15 E.1.1)."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.method()
        codes = Sequence()
        for name in ("basic", *self.options):
            value, meaning = METHOD_CODES[name]
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        if "retain-longitudinal-full-dates" in self.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif "retain-longitudinal-modified-dates" in self.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        context.actions["added"] += 4


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pydicom's validation off: its warnings quote values (names, UIDs) into logs."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """Any error but DeidError becomes one naming only its type (messages may hold values)."""
    try:
        yield
    except DeidError:
        raise
    except Exception as error:  # a value of an unforeseen form: refused, not copied
        raise DeidError(f"cannot be de-identified ({type(error).__name__})") from None


def _check_charset(ds: Dataset) -> None:
    """Refuse a Specific Character Set pydicom cannot decode: names could not be cleaned."""
    charsets = ds.get("SpecificCharacterSet", "") or ""
    values = [charsets] if isinstance(charsets, str) else list(charsets)
    for value in values:
        if str(value).strip() not in python_encoding:
            raise DeidError("Specific Character Set not known: its text cannot be read reliably")


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    """The VR of an attribute without converting its value (implicit VR: the dictionary's)."""
    vr = ds.get_item(tag).VR
    if vr:
        return str(vr)
    try:
        return dictionary_VR(tag).split(" ")[0]
    except KeyError:
        return "UN"


def _collect_identifying(ds: Dataset, context: _Context, depth: int) -> None:
    """Every text value the profile takes out (names, IDs...), to clean free text of.

    Values are converted only where needed: most attributes stay raw bytes, written back
    as they were read (what makes this fast)."""
    if depth > MAX_DEPTH:
        raise DeidError(f"sequences nested more than {MAX_DEPTH} deep")
    for tag in list(ds.keys()):
        vr = _vr_of(ds, tag)
        if vr == "SQ":
            for item in ds[tag].value:
                _collect_identifying(item, context, depth + 1)
            continue
        if vr not in _IDENTIFYING_VRS:
            continue
        row = row_of(tag)
        if row is None or row == PRIVATE_ROW:
            continue
        # Kept values identify nothing; cleaned text is cleaned itself; but a shifted date
        # must not stay readable in some free text.
        if context.actions_of[row] in ("K", "C") and not (
            vr in ("DA", "DT") and context.actions_of[row] == "C"
        ):
            continue
        value = ds[tag].value
        for one in value if isinstance(value, list | tuple) else [value]:
            text = str(one or "")
            parts = [text, *re.split(r"[\^=\\ ,]+", text)] if vr == "PN" else [text]
            context.identifying += [p for p in parts if len(p.strip()) >= 3]


def _clean(ds: Dataset, context: _Context, depth: int) -> None:
    """Apply Table E.1-1 to every attribute of a data set and its items."""
    if depth > MAX_DEPTH:
        raise DeidError(f"sequences nested more than {MAX_DEPTH} deep")
    removed_overlays: set[int] = set()
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAGS:
            continue
        if tag.element == 0 or tag.group == 0:
            # Group lengths are retired and recomputed; command elements have no place in a
            # stored data set (PS3.10 7.1), and pydicom cannot write them: both go.
            context.actions["X"] += tag.group == 0
            del ds[tag]
            continue
        row = row_of(tag)
        if row == PRIVATE_ROW:
            _private(ds, tag, context)
            continue
        vr = _vr_of(ds, tag)
        if row is None:
            if vr == "SQ":  # not in the table: kept, and its items de-identified
                for item in ds[tag].value:
                    _clean(item, context, depth + 1)
            continue
        action = context.actions_of[row]
        if vr == "SQ" and action == "X/Z" and tag in _OPTIONAL_SQ:
            action = "X"
        action = (_COMPOUND_SQ if vr == "SQ" else _COMPOUND).get(action, action)
        if action == "U" and vr != "UI":
            action = "Z"
        if row.startswith("60xx") and action in ("X", "C"):
            # An overlay without its data breaks the Overlay Plane module: the whole group
            # goes (a bitmap cannot be "cleaned", so C removes it too).
            removed_overlays.add(tag.group)
            continue
        if row == "50xxxxxx" and action == "C":
            action = "X"  # curve data cannot be cleaned either
        context.actions[action] += 1
        if action == "X":
            del ds[tag]
        elif action != "K" or vr == "SQ":  # K keeps the raw bytes, unconverted
            _act(ds[tag], action, context, depth)
    for group in removed_overlays:
        for tag in [t for t in list(ds.keys()) if t.group == group]:
            context.actions["X"] += 1
            del ds[tag]


def _act(elem: DataElement, action: str, context: _Context, depth: int) -> None:
    """Do one action (Z D K C U) on one attribute (X deletes it: the caller's)."""
    tag = elem.tag
    if action == "K":  # a sequence: its items still go through the table
        for item in elem.value:
            _clean(item, context, depth + 1)
    elif action == "U":
        elem.value = _map_uids(elem.value, context.key)
    elif action == "Z":
        if tag in (_PATIENT_ID, _PATIENT_NAME):  # one pseudonym per patient, not empty
            elem.value = _pseudonym(tag, context)
        elif elem.VR == "SQ":
            elem.value = Sequence()
        else:
            elem.value = b"" if elem.VR in BINARY_VRS else None
    elif action == "D":
        _dummy(elem, context, depth)
    else:  # C
        _clean_value(elem, context, depth)


def _pseudonym(tag: BaseTag, context: _Context) -> str:
    pid = context.key.patient_id(context.patient)
    return pid if tag == _PATIENT_ID else f"ANONYMOUS^{pid}"


def _dummy(elem: DataElement, context: _Context, depth: int) -> None:
    """D: a value of the VR that identifies nothing (a sequence's items are de-identified)."""
    if elem.VR == "SQ":
        for item in elem.value:
            _clean(item, context, depth + 1)
    elif elem.VR == "UI":
        elem.value = _map_uids(elem.value, context.key)
    elif elem.tag in (_PATIENT_ID, _PATIENT_NAME):
        elem.value = _pseudonym(elem.tag, context)
    elif elem.VR in BINARY_VRS:
        elem.value = b"\0\0"
    else:
        elem.value = DUMMY[elem.VR]


def _clean_value(elem: DataElement, context: _Context, depth: int) -> None:
    """C: keep what the value says without what identifies: dates shifted (modified dates
    option), text cleaned of every identifying value of the data set, items recursed."""
    if elem.VR == "SQ":
        for item in elem.value:
            _clean(item, context, depth + 1)
    elif elem.VR in ("DA", "DT"):
        if "retain-longitudinal-modified-dates" in context.options:
            days = context.key.shift_days(context.patient)
            elem.value = _shift(elem.value, days, elem.keyword or str(elem.tag))
        else:  # C on a date without the dates option: nothing to keep it for
            elem.value = None
    elif elem.VR == "TM":
        if "retain-longitudinal-modified-dates" not in context.options:
            elem.value = None
    elif elem.VR in TEXT_VRS:
        elem.value = _scrub(elem.value, context.identifying)
    elif elem.VR in BINARY_VRS:
        elem.value = b""  # bytes cannot be cleaned


def _shift(value: object, days: int, name: str) -> object:
    """Dates moved back by `days`; a value that is not a date is refused."""
    values = value if isinstance(value, list | tuple) else [value]
    shifted: list[str] = []
    for one in values:
        text = str(one or "")
        if not text:
            shifted.append(text)
            continue
        match = _DATE.match(text)
        try:
            if match is None:
                raise ValueError
            day = datetime.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            raise DeidError(
                f"{name}: not a date (the modified dates option shifts dates)"
            ) from None
        moved = day - datetime.timedelta(days=days)
        shifted.append(moved.strftime("%Y%m%d") + text[8:])
    return shifted if isinstance(value, list | tuple) else shifted[0]


def _scrub(value: object, identifying: list[str]) -> object:
    """Text with every identifying value of the data set replaced by REMOVED."""
    values = value if isinstance(value, list | tuple) else [value]
    cleaned = []
    for one in values:
        text = str(one or "")
        for found in sorted(set(identifying), key=len, reverse=True):
            text = re.sub(re.escape(found), REMOVED, text, flags=re.IGNORECASE)
        cleaned.append(text)
    return cleaned if isinstance(value, list | tuple) else cleaned[0]


def _map_uids(value: object, key: Key) -> object:
    values = value if isinstance(value, list | tuple) else [value]
    mapped = [key.uid(str(v)) if v else v for v in values]
    return mapped if isinstance(value, list | tuple) else mapped[0]


def _private(ds: Dataset, tag: BaseTag, context: _Context) -> None:
    """Private attributes go, but for safe ones kept with the retain-safe-private option."""
    if "retain-safe-private" in context.options and context.safe_private:
        if 0x10 <= tag.element < 0x0100:  # a private creator
            if any(c == str(ds[tag].value).strip() for c, _ in context.safe_private):
                return
        elif tag.element >= 0x1000:
            creator = ds.get((tag.group, tag.element >> 8))
            name = str(creator.value).strip() if creator is not None else ""
            if (name, tag.element & 0xFF) in context.safe_private:
                context.actions["K"] += 1
                return
    context.actions["X"] += 1
    del ds[tag]
