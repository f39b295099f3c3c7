"""What de-identifying does to each attribute: one decision table for both ways of applying it.

`Rules` compiles Table E.1-1 under an option set into one lookup, `Rules.decide(tag, VR)`;
the pydicom path (`engine`) and the byte-level path (`bytelevel`) both take every
attribute's action from it, and both make new values with the helpers here (pseudonyms,
mapped UIDs, shifted dates, cleaned text), so the two cannot disagree on what to do.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections import Counter
from dataclasses import dataclass, field

from pydicom.charset import python_encoding
from pydicom.multival import MultiValue

from pacs_engine.deid.key import Key
from pacs_engine.deid.profile import PRIVATE_ROW, resolve, row_of, table
from pacs_engine.errors import PacsEngineError

#: Deeper nesting is refused: the scanner reads 64 levels, and no real IOD nests so deep.
MAX_DEPTH = 64
SOP_INSTANCE_UID = 0x00080018
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
#: VRs whose values C cleans of identifying values: text, and an AE title (a station's
#: may be the institution's name).
CLEANED_VRS = TEXT_VRS | {"AE"}
#: VRs whose value is a character string (PS3.5 6.2): its bytes are the same in any byte
#: order, so a value a writer gave VR UN reads as the dictionary's VR.
STRING_VRS = CLEANED_VRS | {"AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
#: Sequences whose items hold free text the table does not list (a content item's Text
#: Value, a graphic's Unformatted Text Value, an acquisition context's Text Value):
#: Content, Acquisition Context and Graphic Annotation Sequence. Under their D or C
#: (Basic Profile, Clean Structured Content, Clean Graphics) that text is replaced or
#: cleaned too: it may name the patient (PS3.15 E.3.1, E.3.3).
STRUCTURED_CONTENT = frozenset({0x0040A730, 0x00400555, 0x00700001})
FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
#: VRs whose values, when the profile takes them out, text is cleaned of (a UID too: a
#: description may quote one; an AE title, a device's identity).
IDENTIFYING_VRS = CLEANED_VRS | {"DA", "DT", "UI"}
#: Text cleaned of identifying values is refilled with this where one was.
REMOVED = "[removed]"
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_BIRTH_DATE = 0x00100030
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
# Compound actions: the one that keeps the attribute present (what a Type 1 or 2 attribute
# needs), since which type it has depends on the IOD, which this engine does not model.
_COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
# A sequence: an empty one is wrong where it is optional (Type 3), so X/Z/U* and D keep
# its items, de-identified (their UIDs mapped by their own rows). X/Z empties it (the
# Acquisition Context Sequence is Type 2), but for the Type 3 sequences named here.
_COMPOUND_SQ = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "D", "U": "D"}
_OPTIONAL_SQ = {0x00081110}  # Referenced Study Sequence: Type 3 in the General Study module
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
#: A value of several values: pydicom's MultiValue is no list, and each value counts.
_SEVERAL = (list, tuple, MultiValue)

# What `Rules.decide` says beside the table's actions X Z D K C U (counted per action):
PIXEL = "pixel"  # a pixel data element: kept as it is, never looked at
LENGTH = "length"  # a group length: removed (retired), not counted
COMMAND = "command"  # group 0000: no place in a stored data set (PS3.10 7.1); removed, X
PRIVATE = "private"  # removed, but for safe private attributes kept with their option
OVERLAY = "overlay"  # an overlay without its data breaks Overlay Plane: its group goes
UNLISTED = "unlisted"  # not in the table: kept (a sequence's items de-identified)


class DeidError(PacsEngineError, ValueError):
    """A file that cannot be de-identified with certainty (the message holds no value)."""


class Rules:
    """Table E.1-1 under one option set, compiled: the action of a (tag, VR), cached."""

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options
        self.actions_of = {row: resolve(row, options) for row in table().basic}
        #: `decide`'s answers by (tag, VR); the byte path's native walk reads them here.
        self.decided: dict[tuple[int, str], str] = {}
        self._identifying: dict[tuple[int, str], bool] = {}
        #: The byte path's new elements that depend on (tag, VR) alone (an emptied value,
        #: a dummy one): (action, encoded element) by (tag, VR), implicit VR [0] and
        #: explicit [1]; its native splice serves them without a call back into Python.
        self.served: tuple[dict[tuple[int, str], tuple[str, bytes]], ...] = ({}, {})

    def __getstate__(self) -> dict[str, object]:
        return {"options": self.options}  # the caches are rebuilt in a worker

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["options"])  # type: ignore[misc]

    def new_sop_instance_uid(self, key: Key, sop: str) -> str:
        """The copy's SOP Instance UID: the source's mapped, or kept (retain-uids)."""
        return sop if self.decide(SOP_INSTANCE_UID, "UI") == "K" else key.uid(sop)

    def decide(self, tag: int, vr: str) -> str:
        """The action for an attribute: X Z D K C U, or PIXEL LENGTH COMMAND PRIVATE
        OVERLAY UNLISTED (see their comments)."""
        try:
            return self.decided[(tag, vr)]
        except KeyError:
            action = self.decided[(tag, vr)] = self._decide(tag, vr)
            return action

    def _decide(self, tag: int, vr: str) -> str:
        if tag in PIXEL_TAGS:
            return PIXEL
        if tag & 0xFFFF == 0 or tag >> 16 == 0:
            # Group lengths are retired and recomputed; command elements have no place in a
            # stored data set (PS3.10 7.1), and pydicom cannot write them: both go.
            return COMMAND if tag >> 16 == 0 else LENGTH
        row = row_of(tag)
        if row == PRIVATE_ROW:
            return PRIVATE
        if row is None:
            return UNLISTED
        action = self.actions_of[row]
        if vr == "SQ" and action == "X/Z" and tag in _OPTIONAL_SQ:
            action = "X"
        action = (_COMPOUND_SQ if vr == "SQ" else _COMPOUND).get(action, action)
        if action == "U" and vr != "UI":
            action = "Z"
        if row.startswith("60xx") and action in ("X", "C"):
            return OVERLAY  # a bitmap cannot be "cleaned", so C removes it too
        if row == "50xxxxxx" and action == "C":
            action = "X"  # curve data cannot be cleaned either
        return action

    def identifying(self, tag: int, vr: str) -> bool:
        """Whether an attribute's value is one the profile takes out (to clean text of)."""
        try:
            return self._identifying[(tag, vr)]
        except KeyError:
            found = self._identifying[(tag, vr)] = self._is_identifying(tag, vr)
            return found

    def _is_identifying(self, tag: int, vr: str) -> bool:
        if vr not in IDENTIFYING_VRS:
            return False
        row = row_of(tag)
        if row is None or row == PRIVATE_ROW:
            return False
        # Kept values identify nothing; cleaned text is cleaned itself; but a shifted date
        # must not stay readable in some free text.
        action = self.actions_of[row]
        return action not in ("K", "C") or (vr in ("DA", "DT") and action == "C")


@dataclass
class Context:
    """What de-identifying one file needs at every depth."""

    key: Key
    options: tuple[str, ...]
    kept_private: frozenset[tuple[str, int]]  # `Deidentifier.kept_private`
    patient: str
    identifying: list[str]  # values the profile takes out, to clean free text of
    rules: Rules
    actions: Counter[str] = field(default_factory=Counter)
    #: Inside structured content (`STRUCTURED_CONTENT`): that sequence's action, D or C,
    #: which its free text the table does not list takes too.
    content: str | None = None
    #: The data set's own Patient ID and Patient's Name, as `patient_of` reads them: a
    #: sequence item naming the same patient keeps `patient` (`item_patient`).
    named: tuple[str, str] = ("", "")

    @classmethod
    def of_patient(
        cls,
        key: Key,
        options: tuple[str, ...],
        kept_private: frozenset[tuple[str, int]],
        rules: Rules,
        values: tuple[object, ...],
    ) -> Context:
        """The context of a data set whose `PATIENT_TAGS` values are `values`."""
        named = (str(values[0]).strip(), str(values[2]).strip())
        return cls(key, options, kept_private, patient_of(*values), [], rules, named=named)


#: The attributes `patient_of` reads, in its order.
PATIENT_TAGS = (PATIENT_ID, ISSUER_OF_PATIENT_ID, PATIENT_NAME, PATIENT_BIRTH_DATE)


def patient_of(patient_id: object, issuer: object, name: object, birth_date: object) -> str:
    """What tells a patient apart (keys pseudonyms and date shifts): ID and issuer, else
    (no ID) name and birth date; leading and trailing spaces are not significant (PS3.5)."""
    patient_id, issuer = str(patient_id).strip(), str(issuer).strip()
    if not patient_id:
        return f"\0{str(name).strip()}\0{str(birth_date).strip()}"
    return f"{patient_id}\0{issuer}"


def item_patient(context: Context, values: tuple[object, ...]) -> str | None:
    """The patient a sequence item's pseudonyms and date shifts are keyed on, from its
    `PATIENT_TAGS` values: the one it names where that is another patient than the data
    set's (an item of the Group of Patients Identification Sequence), None (the data set's)
    where it names none or the same one."""
    patient_id, name = str(values[0]).strip(), str(values[2]).strip()
    if not patient_id and not name:
        return None
    same = patient_id == context.named[0] if patient_id else name == context.named[1]
    return None if same else patient_of(*values)


def identifying_parts(vr: str, value: object) -> list[str]:
    """The texts of an identifying value to clean free text of (person names part by part)."""
    found: list[str] = []
    for one in value if isinstance(value, _SEVERAL) else [value]:
        text = str(one or "")
        parts = [text, *re.split(r"[\^=\\ ,]+", text)] if vr == "PN" else [text]
        found += [p for p in parts if len(p.strip()) >= 3]
    return found


def check_charset(charsets: object) -> None:
    """Refuse a Specific Character Set pydicom cannot decode: names could not be cleaned."""
    charsets = charsets or ""
    values = [charsets] if isinstance(charsets, str) else list(charsets)  # type: ignore[call-overload]
    for value in values:
        if str(value).strip() not in python_encoding:
            raise DeidError("Specific Character Set not known: its text cannot be read reliably")


def pseudonym(tag: int, context: Context) -> str:
    """The patient's pseudonymous ID or name (one per patient, from the key)."""
    pid = context.key.patient_id(context.patient)
    return pid if tag == PATIENT_ID else f"ANONYMOUS^{pid}"


def shift(value: object, days: int, name: str) -> object:
    """Dates moved back by `days`; a value that is not a date is refused."""
    values = value if isinstance(value, _SEVERAL) else [value]
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
    return shifted if isinstance(value, _SEVERAL) else shifted[0]


def scrub(value: object, identifying: list[str]) -> object:
    """Text with every identifying value of the data set replaced by REMOVED."""
    values = value if isinstance(value, _SEVERAL) else [value]
    folded = _folded(tuple(identifying))
    cleaned = []
    for one in values:
        text = str(one or "")
        # Only the values the text holds go into the expression: an instance may have
        # hundreds (its UIDs), a text holds a few.
        low = text.casefold()
        present = tuple(v for v, f in folded if f in low)
        cleaned.append(_pattern(present).sub(REMOVED, text) if present else text)
    return cleaned if isinstance(value, _SEVERAL) else cleaned[0]


@functools.lru_cache(maxsize=16)
def _folded(identifying: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Each value once, longest first, with its case-folded form (a superset test of what
    a case-insensitive expression finds); the texts of an instance share them."""
    unique = sorted(set(identifying), key=lambda v: (-len(v), v))
    return tuple((v, v.casefold()) for v in unique)


@functools.lru_cache(maxsize=256)
def _pattern(values: tuple[str, ...]) -> re.Pattern[str]:
    """One case-insensitive expression for `values`, longest first."""
    return re.compile("|".join(map(re.escape, values)), re.IGNORECASE)


def map_uids(value: object, key: Key) -> object:
    """Each UID of a value replaced by its research UID (empty values stay empty)."""
    values = value if isinstance(value, _SEVERAL) else [value]
    mapped = [key.uid(str(v)) if v else v for v in values]
    return mapped if isinstance(value, _SEVERAL) else mapped[0]
