"""De-identify one DICOM file by Table E.1-1: the header is rewritten, the pixels are not.

The file (`apply`), or an archived instance's header blob without its pixel data value
(`apply_header`, what research copies use), gets every attribute at every depth its
action, and is written again with the same transfer syntax; a Pixel Data value stays the
bytes it was (nothing is decoded). Two ways, one decision table (`actions.Rules`): the
byte-level path (`bytelevel`: the elements walked where they lie, changed ones spliced
in) and, where it does not apply (it says why: `Result.fallback`), pydicom (the data set
read, changed and written). Anything that cannot be de-identified with certainty raises
DeidError, whose message names the attribute and never a value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO

import pydicom
import pydicom.config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.values import convert_SQ

from pacs_engine.archive.blobs import WHOLE, HeaderBlob
from pacs_engine.archive.prepare import blob_dataset
from pacs_engine.deid import bytelevel
from pacs_engine.deid.actions import (
    BINARY_VRS,
    CLEANED_VRS,
    COMMAND,
    DUMMY,
    FREE_TEXT_VRS,
    LENGTH,
    MAX_DEPTH,
    OVERLAY,
    PATIENT_ID,
    PATIENT_NAME,
    PATIENT_TAGS,
    PIXEL,
    PRIVATE,
    REMOVED,
    STRING_VRS,
    STRUCTURED_CONTENT,
    UNLISTED,
    Context,
    DeidError,
    Rules,
    check_charset,
    identifying_parts,
    item_patient,
    map_uids,
    pseudonym,
    scrub,
    shift,
)
from pacs_engine.deid.key import Key
from pacs_engine.deid.profile import METHOD_CODES, check_options

__all__ = ["DUMMY", "REMOVED", "DeidError", "Deidentifier", "HeaderResult", "Result"]

#: Storage SOP classes whose pixels often carry identity burned in (PS3.15 E.1.1 note):
#: ultrasound, secondary capture, visible light photography and video.
BURNED_IN_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image (Retired)",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image",  # its label image
    "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography Image",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}
BURNED_IN_POLICIES = ("leave-out", "keep")
# File meta: source, sending and receiving AE titles and presentation addresses (host
# names, IP addresses), the real-time video source's identifier, private information
# (and its creator).
_META_REMOVED = (
    0x00020016,  # SourceApplicationEntityTitle
    0x00020017,  # SendingApplicationEntityTitle
    0x00020018,  # ReceivingApplicationEntityTitle
    0x00020026,  # SourcePresentationAddress
    0x00020027,  # SendingPresentationAddress
    0x00020028,  # ReceivingPresentationAddress
    0x00020035,  # RTVSourceIdentifier
    0x00020100,  # PrivateInformationCreatorUID
    0x00020102,  # PrivateInformation
)


@dataclass
class Result:
    """One de-identified file: its bytes and new SOP Instance UID, or why it is withheld."""

    sop_instance_uid: str
    data: bytes | None  # None: withheld (burned-in text); `withheld` says why
    withheld: str | None = None
    actions: Counter[str] = field(default_factory=Counter)
    fallback: str | None = None  # why the byte-level path left it to pydicom


@dataclass
class HeaderResult:
    """One de-identified header blob and the new SOP Instance UID, or why it is withheld."""

    sop_instance_uid: str
    blob: HeaderBlob | None  # None: withheld (burned-in text); `withheld` says why
    withheld: str | None = None
    actions: Counter[str] = field(default_factory=Counter)
    data_set_end: int = 0  # where the pixel data element starts in the blob's prefix
    fallback: str | None = None  # why the byte-level path left it to pydicom

    def header_bytes(self) -> bytes:
        """The de-identified file up to its pixel data element (all of it for a whole blob)."""
        assert self.blob is not None
        return self.blob.prefix[: self.data_set_end or None]


class Deidentifier:
    """De-identifies files with one key, profile and option set; picklable.

    `byte_level` False always takes the pydicom path (the reference the byte path is
    tested against)."""

    def __init__(
        self,
        key: Key,
        options: Iterable[str] = (),
        profile: str = "basic",
        burned_in: str = "leave-out",
        safe_private: Iterable[tuple[str, int]] = (),
        byte_level: bool = True,
    ) -> None:
        self.key = key
        self.options = check_options(profile, options)
        if burned_in not in BURNED_IN_POLICIES:
            raise DeidError(f"--burned-in must be one of {', '.join(BURNED_IN_POLICIES)}")
        self.burned_in = burned_in
        self.rules = Rules(self.options)
        # (private creator, element byte): private attributes known to be safe to keep.
        self.safe_private = frozenset(
            (creator.strip(), element) for creator, element in safe_private
        )
        #: The safe private attributes kept: none without the retain-safe-private option.
        self.kept_private = (
            self.safe_private if "retain-safe-private" in self.options else frozenset()
        )
        self.byte_level = byte_level
        self._marks: dict[bool, bytelevel.Marks] = {}
        self._mapped: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_marks": {}, "_mapped": ({}, {})}  # made where used

    def method(self) -> list[str]:
        """De-identification Method values: the profile and each option, by name."""
        return ["PS3.15 E.1 Basic Application Confidentiality Profile", *self.options]

    def apply(self, data: bytes) -> Result:
        """The de-identified file of `data`, or a withheld Result; DeidError says why not."""
        with _quiet(), _refused():
            fallback = None
            if self.byte_level:
                try:
                    out = bytelevel.deidentify_file(self._settings(), data)
                except bytelevel.Fallback as why:
                    fallback = str(why)
                else:
                    new = None if out.actions is None else out.prefix
                    return Result(out.sop_instance_uid, new, out.withheld, out.actions or Counter())
            result = self._apply(data)
            result.fallback = fallback
            return result

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
            if blob.kind == WHOLE:
                result = self.apply(blob.prefix)
                new = None if result.data is None else HeaderBlob(WHOLE, result.data)
                return HeaderResult(
                    result.sop_instance_uid,
                    new,
                    result.withheld,
                    result.actions,
                    fallback=result.fallback,
                )
            fallback = None
            if self.byte_level:
                try:
                    out = bytelevel.deidentify_blob(self._settings(), blob.prefix, blob.suffix)
                except bytelevel.Fallback as why:
                    fallback = str(why)
                else:
                    if out.actions is None:
                        return HeaderResult(out.sop_instance_uid, None, out.withheld)
                    new = dataclasses.replace(blob, prefix=out.prefix, suffix=out.suffix)
                    return HeaderResult(
                        out.sop_instance_uid, new, out.withheld, out.actions, out.data_set_end
                    )
            header = self._apply_header(blob)
            header.fallback = fallback
            return header

    def _apply_header(self, blob: HeaderBlob) -> HeaderResult:
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

    def new_sop_instance_uid(self, sop: str) -> str:
        """The copy's SOP Instance UID of a source instance's (`Rules.new_sop_instance_uid`)."""
        return self.rules.new_sop_instance_uid(self.key, sop)

    def _settings(self) -> bytelevel.Settings:
        """What the byte path needs of this Deidentifier."""
        return bytelevel.Settings(
            self.key,
            self.options,
            self.kept_private,
            self.rules,
            self.burned_in,
            burned_in_reason,
            self._encoded_marks,
            _META_REMOVED,
            self._mapped,
        )

    def _deidentify(self, ds: Dataset) -> tuple[str, str | None, Counter[str] | None]:
        """De-identify a data set in place: (new SOP UID, why it may carry burned-in text,
        the actions done; None when it is withheld and left as it was)."""
        sop = str(ds.get("SOPInstanceUID", ""))
        if not sop:
            raise DeidError("no SOP Instance UID")
        new_sop = self.new_sop_instance_uid(sop)
        withheld = burned_in_reason(ds.get("BurnedInAnnotation", ""), ds.get("SOPClassUID", ""))
        if withheld is not None and self.burned_in == "leave-out":
            return new_sop, withheld, None
        check_charset(ds.get("SpecificCharacterSet", ""))
        context = Context.of_patient(
            self.key, self.options, self.kept_private, self.rules, _patient_values(ds)
        )
        _collect_identifying(ds, context, 0)
        _clean(ds, context, 0)
        for element in self._marks_dataset():
            setattr(ds, element.keyword, element.value)
        context.actions["added"] += len(bytelevel.MARK_TAGS)
        meta = ds.file_meta
        if "MediaStorageSOPInstanceUID" in meta:  # a file without meta information stays so
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for tag in _META_REMOVED:
            if tag in meta:
                del meta[tag]
        return new_sop, withheld, context.actions

    def _marks_dataset(self) -> Dataset:
        """The De-identification Method attributes (PS3.15 E.1.1), as both paths write them."""
        ds = Dataset()
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
        return ds

    def _encoded_marks(self, explicit: bool) -> bytelevel.Marks:
        """The De-identification Method attributes encoded by pydicom (once per encoding)."""
        if explicit not in self._marks:
            by_tag, vrs = {}, {}
            marks = self._marks_dataset()
            for element in marks:
                by_tag[int(element.tag)] = _encoded(element, explicit)
                vrs[int(element.tag)] = element.VR
            sequence = marks[bytelevel.MARK_TAGS[2]]
            sequence.is_undefined_length = True  # after its defined-length encoding above
            undefined = _encoded(sequence, explicit)
            self._marks[explicit] = bytelevel.Marks(by_tag, vrs, undefined)
        return self._marks[explicit]


def _encoded(element: DataElement, explicit: bool) -> bytes:
    """One element as pydicom writes it."""
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = not explicit, True
    part = Dataset()
    part.add(element)
    write_dataset(out, part)
    return out.getvalue()


def burned_in_reason(annotation: object, sop_class: object) -> str | None:
    """Why an instance may carry identity in its pixels (its Burned In Annotation and SOP
    Class UID say so), or None."""
    if str(annotation).strip().upper() == "YES":  # leading spaces of a CS are not significant
        return "Burned In Annotation is YES"
    name = BURNED_IN_CLASSES.get(str(sop_class))
    return f"SOP class {name}: may carry burned-in text" if name else None


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


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    """The VR of an attribute without converting its value (implicit VR: the dictionary's).

    A sequence the file gives VR UN (a writer that did not know it) is made the sequence
    it is (`_as_sequence`), so that its items go through the table: kept as bytes, they
    kept every name and UID in them."""
    vr = ds.get_item(tag).VR
    if vr == "UN" and not tag.is_private:
        known = _dictionary_vr(tag)
        if known == "SQ":
            return _as_sequence(ds, tag)
        if known in STRING_VRS:
            return _as_known(ds, tag, known)
    if vr:
        return str(vr)
    return _dictionary_vr(tag)


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return dictionary_VR(tag).split(" ")[0]
    except KeyError:
        return "UN"


def _as_known(ds: Dataset, tag: BaseTag, vr: str) -> str:
    """Read an attribute of VR UN as the dictionary's string VR `vr` in its place; `vr`.

    The table's action then applies as to any other: a UID is mapped (as UN it was
    emptied, and a study lost its Study Instance UID), a name or ID cleans free text of
    itself. A string's bytes are the same in any byte order."""
    value = ds.get_item(tag).value
    raw = RawDataElement(tag, vr, len(value or b""), value, 0, False, True, True, False)
    ds[tag] = convert_raw_data_element(raw, encoding=ds._character_set, ds=ds)
    return vr


def _as_sequence(ds: Dataset, tag: BaseTag) -> str:
    """Read an attribute of VR UN as the sequence it holds (PS3.5 6.2.2: then encoded
    implicit VR little endian) in its place; "SQ", or "UN" (the value removed, left
    empty) when its bytes are no sequence."""
    value = ds.get_item(tag).value
    try:
        charset = ds._character_set
        encodings = [charset] if isinstance(charset, str) else list(charset)
        items = convert_SQ(bytes(value or b""), True, True, encodings)
    except Exception:  # not a sequence after all: nothing of it can be checked, so it goes
        ds[tag] = DataElement(tag, "UN", b"")
        return "UN"
    ds[tag] = DataElement(tag, "SQ", items)
    return "SQ"


def _holds_items(value: object) -> bool:
    """Whether a value of VR UN starts with a sequence item (a private sequence, implicit VR)."""
    return isinstance(value, bytes) and value[:4] == bytelevel.ITEM_TAG


def _collect_identifying(ds: Dataset, context: Context, depth: int) -> None:
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
        elif context.rules.identifying(tag, vr):
            context.identifying += identifying_parts(vr, ds[tag].value)


def _patient_values(ds: Dataset) -> tuple[object, ...]:
    """The values of a data set's `PATIENT_TAGS` ("" for each one absent)."""
    return tuple(ds[tag].value if tag in ds else "" for tag in PATIENT_TAGS)


def _clean(ds: Dataset, context: Context, depth: int) -> None:
    """Apply Table E.1-1 (`Rules.decide`) to every attribute of a data set and its items."""
    if depth > MAX_DEPTH:
        raise DeidError(f"sequences nested more than {MAX_DEPTH} deep")
    own = item_patient(context, _patient_values(ds)) if depth else None
    if own is not None:  # an item naming another patient: keyed on that one
        outer, context.patient = context.patient, own
        try:
            _clean_data_set(ds, context, depth)
        finally:
            context.patient = outer
    else:
        _clean_data_set(ds, context, depth)


def _clean_data_set(ds: Dataset, context: Context, depth: int) -> None:
    """`_clean` of a data set whose patient `context` holds."""
    removed_overlays: set[int] = set()
    for tag in list(ds.keys()):
        vr = _vr_of(ds, tag)
        action = context.rules.decide(tag, vr)
        if action == PIXEL:
            continue
        if action in (LENGTH, COMMAND):
            context.actions["X"] += action == COMMAND
            del ds[tag]
        elif action == PRIVATE:
            _private(ds, tag, context, depth)
        elif action == UNLISTED:
            if vr == "SQ":  # not in the table: kept, and its items de-identified
                for item in ds[tag].value:
                    _clean(item, context, depth + 1)
            elif context.content is not None and vr in FREE_TEXT_VRS:
                context.actions[context.content] += 1
                _act(ds[tag], context.content, context, depth)
        elif action == OVERLAY:
            removed_overlays.add(tag.group)
        else:
            context.actions[action] += 1
            if action == "X":
                del ds[tag]
            elif action != "K" or vr == "SQ":  # K keeps the raw bytes, unconverted
                outer = context.content
                if vr == "SQ" and tag in STRUCTURED_CONTENT and action in ("D", "C"):
                    context.content = action
                try:
                    _act(ds[tag], action, context, depth)
                finally:
                    context.content = outer
    for group in removed_overlays:
        for tag in [t for t in list(ds.keys()) if t.group == group]:
            context.actions["X"] += 1
            del ds[tag]


def _act(elem: DataElement, action: str, context: Context, depth: int) -> None:
    """Do one action (Z D K C U) on one attribute (X deletes it: the caller's)."""
    tag = elem.tag
    if action == "K":  # a sequence: its items still go through the table
        for item in elem.value:
            _clean(item, context, depth + 1)
    elif action == "U":
        elem.value = map_uids(elem.value, context.key)
    elif action == "Z":
        if tag in (PATIENT_ID, PATIENT_NAME):  # one pseudonym per patient, not empty
            elem.value = pseudonym(tag, context)
        elif elem.VR == "SQ":
            elem.value = Sequence()
        else:
            elem.value = b"" if elem.VR in BINARY_VRS else None
    elif action == "D":
        _dummy(elem, context, depth)
    else:  # C
        _clean_value(elem, context, depth)


def _dummy(elem: DataElement, context: Context, depth: int) -> None:
    """D: a value of the VR that identifies nothing (a sequence's items are de-identified)."""
    if elem.VR == "SQ":
        for item in elem.value:
            _clean(item, context, depth + 1)
    elif elem.VR == "UI":
        elem.value = map_uids(elem.value, context.key)
    elif elem.tag in (PATIENT_ID, PATIENT_NAME):
        elem.value = pseudonym(elem.tag, context)
    elif elem.VR in BINARY_VRS:
        elem.value = b"\0\0"
    else:
        elem.value = DUMMY[elem.VR]


def _clean_value(elem: DataElement, context: Context, depth: int) -> None:
    """C: keep what the value says without what identifies: dates shifted (modified dates
    option), text cleaned of every identifying value of the data set, items recursed."""
    if elem.VR == "SQ":
        for item in elem.value:
            _clean(item, context, depth + 1)
    elif elem.VR in ("DA", "DT"):
        if "retain-longitudinal-modified-dates" in context.options:
            days = context.key.shift_days(context.patient)
            elem.value = shift(elem.value, days, elem.keyword or str(elem.tag))
        else:  # C on a date without the dates option: nothing to keep it for
            elem.value = None
    elif elem.VR == "TM":
        if "retain-longitudinal-modified-dates" not in context.options:
            elem.value = None
    elif elem.VR in CLEANED_VRS:
        elem.value = scrub(elem.value, context.identifying)
    elif elem.VR in BINARY_VRS:
        elem.value = b""  # bytes cannot be cleaned


def _private(ds: Dataset, tag: BaseTag, context: Context, depth: int) -> None:
    """Private attributes go, but for safe ones kept with the retain-safe-private option."""
    if context.kept_private:
        if 0x10 <= tag.element < 0x0100:  # a private creator
            if any(c == str(ds[tag].value).strip() for c, _ in context.kept_private):
                return
        elif tag.element >= 0x1000:
            creator = ds.get((tag.group, tag.element >> 8))
            name = str(creator.value).strip() if creator is not None else ""
            if (name, tag.element & 0xFF) in context.kept_private:
                context.actions["K"] += 1
                elem = ds.get_item(tag)
                if elem.VR in ("UN", None) and _holds_items(elem.value):
                    _as_sequence(ds, tag)
                if ds.get_item(tag).VR == "SQ":  # kept, but its items go through the table
                    for item in ds[tag].value:
                        _clean(item, context, depth + 1)
                return
    context.actions["X"] += 1
    del ds[tag]
