"""De-identify at the byte level: the data set is walked in its own encoding, never built.

The fast path of `engine.Deidentifier`. Elements are read where they lie (explicit or
implicit VR little endian) by a native walk (`_native/deidwalk.pyx`), each gets its action
from the same compiled table as the pydicom path (`actions.Rules.decide`; private
attributes that go are only counted), new values come from the same helpers
(`actions`), and the output is spliced: runs of unchanged elements are copied as slices,
changed ones are encoded again (even length, the VR's padding byte), sequences and items
of defined length get their new lengths, group lengths go (as in the pydicom path) and the
file meta group length is recomputed. The result is what the pydicom path writes, byte
for byte (tests/test_deid_bytelevel.py compares them).

What this does not handle raises `Fallback`, and the caller de-identifies the instance
with pydicom instead (counted in the report): big endian or deflated data sets, no
preamble, attributes out of order, VR UN or ambiguous VRs to rewrite, a new text value
that is not ASCII, "clean" of a value pydicom reads as a number, nested character sets, a
kept private sequence (docs/deidentify.md lists them all). A length past the end of the
data, a truncated element or a sequence without its delimiter is a DeidError: never an
output that could keep identity.
"""

from __future__ import annotations

import functools
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID

from pacs_engine._native.deidwalk import LONG_VRS, VRS, Element, Walker, splice
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
    PIXEL_TAGS,
    PRIVATE,
    SOP_INSTANCE_UID,
    STRING_VRS,
    STRUCTURED_CONTENT,
    TEXT_VRS,
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
from pacs_engine.deid.key import UID_CACHE, Key
from pacs_engine.errors import PacsEngineError

ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
ITEM_TAG = struct.pack("<HH", ITEM >> 16, ITEM & 0xFFFF)  # an item's tag as written: FE FF 00 E0
UNDEFINED = 0xFFFFFFFF
_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length
_IMPLICIT = struct.Struct("<HHL")  # tag, 32-bit length (also items and delimiters)
_UL = struct.Struct("<L")
_LONG_HEADER = struct.Struct("<HH2sHL")  # tag, VR, reserved, 32-bit length
_NUMBERS = {"FD": "<d", "FL": "<f", "SL": "<l", "SS": "<h", "SV": "<q", "UL": "<L"}
_NUMBERS |= {"US": "<H", "UV": "<Q"}
_DELIMITERS = {
    ITEM_END: _IMPLICIT.pack(0xFFFE, 0xE00D, 0),
    SEQUENCE_END: _IMPLICIT.pack(0xFFFE, 0xE0DD, 0),
}
_SOP_CLASS_UID = 0x00080016
_CHARSET, _BURNED_IN = 0x00080005, 0x00280301
_TRANSFER_SYNTAX, _MEDIA_SOP_INSTANCE, _META_LENGTH = 0x00020010, 0x00020003, 0x00020000
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_PIXEL_DATA = 0x7FE00010
_PLAIN_TEXT = TEXT_VRS | {"DA", "DT"}  # VRs pydicom reads as text less trailing padding
#: The De-identification Method attributes the engine writes, the sequence third.
MARK_TAGS = (0x00120062, 0x00120063, 0x00120064, 0x00280303)


class Fallback(PacsEngineError):
    """What the byte path does not handle (the reason names no value): use pydicom."""


@dataclass(slots=True)
class Marks:
    """The De-identification Method attributes, each encoded whole, by tag (in tag order),
    and the code sequence of undefined length (replacing one of undefined length)."""

    by_tag: dict[int, bytes]
    vrs: dict[int, str]
    sequence_undefined: bytes


@dataclass(slots=True)
class Settings:
    """What the byte path needs of a Deidentifier (it cannot import the engine)."""

    key: Key
    options: tuple[str, ...]
    kept_private: frozenset[tuple[str, int]]  # `Deidentifier.kept_private`
    rules: Rules
    burned_in: str  # the policy
    burned_in_reason: Callable[[object, object], str | None]
    marks: Callable[[bool], Marks]  # by explicit VR
    meta_removed: tuple[int, ...]
    #: UID elements mapped (action U, or D of VR UI), by their source bytes, implicit VR
    #: [0] and explicit [1]: a study's UIDs recur in each of its instances, and `splice`
    #: gives them again without a call back into Python. Keyed, so the Deidentifier's.
    mapped: tuple[dict[bytes, bytes], dict[bytes, bytes]]


@dataclass(slots=True)
class Output:
    """The de-identified bytes: the file, or a blob's prefix (through the pixel data
    element's header) and suffix; `data_set_end` is where that header starts."""

    sop_instance_uid: str
    withheld: str | None
    actions: Counter[str] | None  # None: withheld
    prefix: bytes = b""
    suffix: bytes = b""
    data_set_end: int = 0


def deidentify_file(settings: Settings, data: bytes) -> Output:
    """De-identify a whole file (preamble, meta, data set, pixel data as it is)."""
    explicit, compressed, meta_end = _meta(data)
    walker = _walker(settings, data, explicit)
    elements, dropped = walker.elements(meta_end, len(data), 0, False)
    rewrite = _Rewrite(settings, walker, explicit, data)
    rewrite.pixel_data_compressed = compressed  # pydicom frames Pixel Data by the syntax
    return rewrite.run(elements, dropped, meta_end, len(elements), b"")


def deidentify_blob(settings: Settings, prefix: bytes, suffix: bytes) -> Output:
    """De-identify a header blob: `prefix` ends with the pixel data element's header,
    `suffix` holds the elements after its value."""
    explicit, _, meta_end = _meta(prefix)
    head = 12 if explicit else 8
    if len(prefix) - head < meta_end:
        raise DeidError("header blob shorter than its pixel data element's header")
    group, element = struct.unpack_from("<HH", prefix, len(prefix) - head)
    if group << 16 | element not in PIXEL_TAGS:
        raise Fallback("the header blob does not end with a pixel data element")
    walker = _walker(settings, prefix, explicit)
    before, dropped = walker.elements(meta_end, len(prefix) - head, 0, False)
    after: list[Element] = []
    if suffix:
        tail = _walker(settings, suffix, explicit)
        after, dropped_after = tail.elements(0, len(suffix), 0, False)
        dropped += dropped_after
        if after and after[0].tag <= group << 16 | element:
            raise Fallback("attributes out of order")
    rewrite = _Rewrite(settings, walker, explicit, prefix, suffix)
    head_bytes = prefix[len(prefix) - head :]
    return rewrite.run(before + after, dropped, meta_end, len(before), head_bytes)


def _meta(data: bytes) -> tuple[bool, bool, int]:
    """(explicit VR, compressed, where the data set starts) from the file meta's transfer
    syntax."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise Fallback("no preamble and DICM prefix")
    pos, syntax, last = 132, None, -1
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
        if group << 16 | element <= last:
            raise Fallback("file meta information out of order")
        last = group << 16 | element
        value = pos + 8
        if vr not in VRS:  # file meta is explicit VR little endian; pydicom would guess
            raise Fallback("file meta information of unknown VR")
        if vr.decode("latin-1") in LONG_VRS:
            (length,) = _UL.unpack_from(data, pos + 8)
            value = pos + 12
        if value + length > len(data):
            raise DeidError("file meta information: an element's length runs past the end")
        if group << 16 | element == _TRANSFER_SYNTAX:
            syntax = data[value : value + length].decode("latin-1").rstrip(" \0")
        pos = value + length
    if syntax is None:
        raise Fallback("no transfer syntax in the file meta information")
    explicit, compressed = _syntax(syntax)
    return explicit, compressed, pos


@functools.lru_cache(maxsize=64)
def _syntax(syntax: str) -> tuple[bool, bool]:
    """(explicit VR, compressed) of a transfer syntax the byte path reads (each instance
    names one of a few)."""
    uid = UID(syntax)
    if syntax == _IMPLICIT_VR_LE:
        return False, False
    if not uid.is_transfer_syntax or uid.is_deflated or not uid.is_little_endian:
        raise Fallback("transfer syntax: not explicit or implicit VR little endian")
    return True, uid.is_compressed


def _walker(settings: Settings, data: bytes, explicit: bool) -> Walker:
    """The native walk of `data`: its elements, their items, each element's action
    (`Rules.decide`); what it cannot take is a Fallback, what is malformed a DeidError.
    Private attributes that are no sequence are only counted when none is kept (a
    private sequence stays: its items' values count among the identifying ones)."""
    rules = settings.rules
    return Walker(
        data,
        explicit,
        Fallback,
        DeidError,
        rules.decided,
        rules.decide,
        _IMPLICIT_VRS,
        _implicit_vr,
        None if settings.kept_private else PRIVATE,
        MAX_DEPTH,
    )


_IMPLICIT_VRS: dict[int, str] = {}
#: Actions whose elements `splice` drops without asking `_Rewrite._element` (a Python call
#: each: a third of them), and what each counts as (None: not counted).
_DROPPED: dict[str, str | None] = {"X": "X", COMMAND: "X", LENGTH: None}
_DROPPED_WITH_PRIVATE = {**_DROPPED, PRIVATE: "X"}  # when no private attribute is kept


def _free_text(sequence: Element) -> bool:
    """Whether a sequence's items hold, at any depth, free text the table does not list
    (`STRUCTURED_CONTENT`: the pydicom path gives it the sequence's action)."""
    return any(
        (e.action == UNLISTED and e.vr in FREE_TEXT_VRS) or (e.items and _free_text(e))
        for item in sequence.items or ()
        for e in item.elements
    )


def _implicit_vr(tag: int) -> str:
    """The dictionary's VR of a tag (what pydicom gives an implicit VR element), 'UN' if none;
    an ambiguous one ('US or SS') is kept whole, so rewriting it falls back."""
    try:
        return _IMPLICIT_VRS[tag]
    except KeyError:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
        _IMPLICIT_VRS[tag] = vr
        return vr


class _Rewrite:
    """One instance's rewrite: the decisions, the new values, the spliced bytes."""

    def __init__(
        self, settings: Settings, walker: Walker, explicit: bool, data: bytes, suffix: bytes = b""
    ) -> None:
        self.settings, self.walker = settings, walker
        self.explicit = explicit
        self.data, self.suffix = data, suffix
        self.rules = settings.rules
        self.encodings: str | list[str] = default_encoding
        self.context: Context | None = None
        self.identifying: list[str] | None = None  # made when some text is cleaned
        self.top: list[Element] = []
        self.sop_written = ""
        #: A whole file's transfer syntax is compressed (None: a blob, no Pixel Data in it).
        self.pixel_data_compressed: bool | None = None

    def run(
        self, elements: list[Element], dropped: int, meta_end: int, split: int, head: bytes
    ) -> Output:
        """De-identify the top-level `elements` (those from `split` on lie in the suffix;
        `dropped` private attributes were left out of them)."""
        self.top = elements
        by_tag = {e.tag: e for e in elements}
        sop = self._single(by_tag.get(SOP_INSTANCE_UID))
        if not sop:
            raise DeidError("no SOP Instance UID")
        new_sop = self.settings.rules.new_sop_instance_uid(self.settings.key, sop)
        withheld = self.settings.burned_in_reason(
            self._single(by_tag.get(_BURNED_IN)), self._single(by_tag.get(_SOP_CLASS_UID))
        )
        if withheld is not None and self.settings.burned_in == "leave-out":
            return Output(new_sop, withheld, None)
        charset = by_tag.get(_CHARSET)
        if charset is not None:
            value = self._strings(charset)
            check_charset(value)
            if value:
                self.encodings = convert_encodings(value)
        settings = self.settings
        self.context = Context.of_patient(
            settings.key,
            settings.options,
            settings.kept_private,
            self.rules,
            tuple(self._value(by_tag.get(t)) for t in PATIENT_TAGS),
        )
        out = bytearray()
        suffix_at = self._dataset(elements, dropped, out, 0, split)
        data_set = bytes(out[:suffix_at])
        meta = self._file_meta(meta_end)
        self.context.actions["added"] += len(MARK_TAGS)
        output = Output(new_sop, withheld, self.context.actions)
        output.prefix = meta + data_set + head
        output.suffix = bytes(out[suffix_at:])
        output.data_set_end = len(meta) + len(data_set)
        return output

    # -- reading values -------------------------------------------------------------

    def _bytes(self, element: Element) -> bytes:
        return element.source[element.value : element.end]

    def _strings(self, element: Element) -> str | list[str]:
        """A value as pydicom reads AE, AS, CS, DA, DT, TM and UI (ISO 8859, no padding)."""
        values = self._bytes(element).decode("latin-1").rstrip(" \0").split("\\")
        return values[0] if len(values) == 1 else values

    def _single(self, element: Element | None) -> str:
        """One string value ('' when absent); several fall back (pydicom's str of them)."""
        if element is None:
            return ""
        value = self._strings(element)
        if isinstance(value, list):
            raise Fallback("several values where one is read")
        return value

    def _value(self, element: Element | None) -> object:
        """The value pydicom gives an element (decoded with the data set's character set)."""
        if element is None:
            return ""
        value = self._bytes(element)
        # One value of ASCII text (no ISO 2022 escape either): what pydicom reads in any
        # character set, less the padding; pydicom's reading costs more.
        plain = value.isascii() and b"\\" not in value and b"\x1b" not in value
        if plain and element.vr in _PLAIN_TEXT:
            return value.decode("ascii").rstrip("\0 ")
        raw = RawDataElement(
            BaseTag(element.tag),
            element.vr if self.explicit else None,
            element.end - element.value,
            value,
            element.value,
            not self.explicit,
            True,
        )
        return convert_raw_data_element(raw, encoding=self.encodings).value

    # -- writing ----------------------------------------------------------------------

    def _dataset(
        self, elements: list[Element], dropped: int, out: bytearray, depth: int, split: int
    ) -> int:
        """Write a data set's elements de-identified into `out` (`dropped` private
        attributes the walk left out are counted); the offset in `out` where element
        `split` starts (the blob's suffix) is returned."""
        context = self.context
        assert context is not None
        for e in elements:
            if e.vr == "UN" and not e.tag >> 16 & 1 and _implicit_vr(e.tag) == "SQ":
                # Its items, implicit VR in a UN value (PS3.5 6.2.2), are not walked here.
                raise Fallback("a sequence of VR UN")
        counts = context.actions
        if dropped:
            counts["X"] += dropped
        marks = self.settings.marks(self.explicit) if depth == 0 else None
        return splice(
            elements,
            out,
            split,
            depth == 0,
            self.data,
            self.suffix,
            list(marks.by_tag.items()) if marks else [],
            marks.vrs if marks else {},
            marks.sequence_undefined if marks else b"",
            _DROPPED if context.kept_private else _DROPPED_WITH_PRIVATE,
            self.rules.served[self.explicit],
            self.settings.mapped[self.explicit],
            counts,
            self._element,
            depth,
            Fallback,
            UNLISTED,
            OVERLAY,
        )

    def _element(
        self, element: Element, action: str, siblings: list[Element], depth: int
    ) -> bytes | bool | None:
        """One element de-identified (but those `splice` drops: `_DROPPED`): True to copy
        it as it is, None to drop it, or its new bytes."""
        context = self.context
        assert context is not None
        tag, vr = element.tag, element.vr
        if action == PIXEL:
            return self._pixel_data(element) if depth == 0 and tag == _PIXEL_DATA else True
        if action == PRIVATE:
            return self._private(element, siblings)
        if action == UNLISTED:
            return self._sequence(element, depth) if vr == "SQ" else True
        if action == OVERLAY:
            return None
        context.actions[action] += 1
        if action == "K":
            return self._sequence(element, depth) if vr == "SQ" else True
        if " " in vr or (vr == "UN" and _implicit_vr(tag) != "UN"):
            # pydicom would give it the dictionary's VR (or resolve it) first
            raise Fallback("a value of VR UN or of an ambiguous VR to rewrite")
        if vr == "SQ":
            if tag in STRUCTURED_CONTENT and action in ("D", "C") and _free_text(element):
                raise Fallback("free text in structured content")
            return self._sequence(element, depth, empty=action == "Z")
        if action == "U":
            return self._mapped(element)
        if action == "Z":
            if tag in (PATIENT_ID, PATIENT_NAME):
                return self._encode(element, pseudonym(tag, context))
            return self._served(element, action, b"" if vr in BINARY_VRS else None)
        if action == "D":
            if vr == "UI":
                return self._mapped(element)
            if tag in (PATIENT_ID, PATIENT_NAME):
                return self._encode(element, pseudonym(tag, context))
            if vr in BINARY_VRS:
                return self._served(element, action, b"\0\0")
            if vr not in DUMMY:
                raise Fallback("no dummy value for this VR")
            return self._served(element, action, DUMMY[vr])
        return self._clean(element)

    def _mapped(self, element: Element) -> bytes:
        """A UID element with its UIDs mapped, remembered by its bytes in
        `Settings.mapped` for `splice` to give again."""
        context = self.context
        assert context is not None
        encoded = self._encode(element, map_uids(self._strings(element), context.key))
        if element.tag != SOP_INSTANCE_UID:  # `_encode` notes the SOP UID written
            mapped = self.settings.mapped[self.explicit]
            if len(mapped) >= UID_CACHE:
                mapped.clear()
            mapped[element.source[element.start : element.end]] = encoded
        return encoded

    def _served(self, element: Element, action: str, value: object) -> bytes:
        """An element with a new value that depends on its (tag, VR) alone, remembered in
        `Rules.served` for `splice` to give the next ones (a third of the elements
        rewritten on the corpus's CT and MR: an emptied or a dummy value)."""
        encoded = self._encode(element, value)
        if element.tag != SOP_INSTANCE_UID:  # `_encode` notes the SOP UID written
            self.rules.served[self.explicit][(element.tag, element.vr)] = (action, encoded)
        return encoded

    def _pixel_data(self, element: Element) -> bytes | bool:
        """Pixel Data as pydicom writes a whole file's: padded to even length, of undefined
        length where the transfer syntax is compressed."""
        if self.pixel_data_compressed is None:
            return True
        if self.pixel_data_compressed != (element.length == UNDEFINED):
            raise Fallback("Pixel Data framed otherwise than its transfer syntax says")
        if self.explicit and element.vr not in ("OB", "OW"):
            raise Fallback("Pixel Data of a VR other than OB or OW")
        if element.length == UNDEFINED or not element.length & 1:
            return True
        return self._encode(element, self._bytes(element))  # an odd length: padded

    def _clean(self, element: Element) -> bytes | bool | None:
        """C on a value that is no sequence (see `engine._clean_value`)."""
        context = self.context
        assert context is not None
        vr = element.vr
        dates = "retain-longitudinal-modified-dates" in context.options
        if vr in ("DA", "DT"):
            if not dates:
                return self._encode(element, None)
            days = context.key.shift_days(context.patient)
            name = keyword_for_tag(element.tag) or str(BaseTag(element.tag))
            return self._encode(element, shift(self._strings(element), days, name))
        if vr == "TM" and not dates:
            return self._encode(element, None)
        if vr in CLEANED_VRS:
            return self._encode(element, scrub(self._value(element), self._identifying()))
        if vr in BINARY_VRS:
            return self._encode(element, b"")
        # Anything else is kept, but pydicom has read it and writes what it read (without
        # its padding, for instance): so do the same, for text values.
        value = self._value(element)
        values = value if isinstance(value, MultiValue) else [value]
        if not all(isinstance(one, str) for one in values):
            raise Fallback("clean of a value that is not text")
        return self._encode(element, value)

    def _identifying(self) -> list[str]:
        """Every value the profile takes out, at every depth (`engine._collect_identifying`)."""
        if self.identifying is None:
            self.identifying = []
            self._collect(self.top)
        return self.identifying

    def _collect(self, elements: list[Element]) -> None:
        assert self.identifying is not None
        for element in elements:
            if element.items is not None:
                for item in element.items:
                    self._collect(item.elements)
            elif self.rules.identifying(element.tag, element.vr):
                self.identifying += identifying_parts(element.vr, self._value(element))
            elif element.vr == "UN" and not element.tag >> 16 & 1:
                known = _implicit_vr(element.tag)
                if known in STRING_VRS and self.rules.identifying(element.tag, known):
                    # pydicom reads it as its dictionary VR (engine._as_known)
                    raise Fallback("an identifying value of VR UN")

    def _private(self, element: Element, siblings: list[Element]) -> bytes | bool | None:
        """Private attributes go, but safe ones with their option (`engine._private`)."""
        context = self.context
        assert context is not None
        tag = element.tag
        low = tag & 0xFFFF
        if context.kept_private:
            if 0x10 <= low < 0x0100:  # a private creator: pydicom writes what it read
                name = self._value(element)
                if any(c == str(name).strip() for c, _ in context.kept_private):
                    if not isinstance(name, str):
                        raise Fallback("a private creator of several values")
                    return self._encode(element, name)
            elif low >= 0x1000:
                creator_tag = (tag & 0xFFFF0000) | low >> 8
                creator = next((e for e in siblings if e.tag == creator_tag), None)
                name = str(self._value(creator)).strip() if creator is not None else ""
                if (name, low & 0xFF) in context.kept_private:
                    if element.vr == "SQ" or (
                        element.vr == "UN" and self._bytes(element)[:4] == ITEM_TAG
                    ):
                        raise Fallback("a kept private sequence")
                    context.actions["K"] += 1
                    return True
        context.actions["X"] += 1
        return None

    def _sequence(self, element: Element, depth: int, empty: bool = False) -> bytes:
        """A sequence written again: its items de-identified (none when `empty`), lengths
        recomputed where they were defined."""
        if element.source is not self.data:
            raise Fallback("a sequence after the pixel data")
        context = self.context
        assert context is not None
        undefined = element.length == UNDEFINED
        out = bytearray(self._header(element.tag, "SQ", UNDEFINED))
        start = len(out)
        for item in [] if empty else element.items or []:
            out += _IMPLICIT.pack(0xFFFE, 0xE000, UNDEFINED)
            at = len(out)
            if any(e.tag == _CHARSET for e in item.elements):
                raise Fallback("a character set inside a sequence item")
            by_tag = {e.tag: e for e in item.elements if e.tag in PATIENT_TAGS}
            own = item_patient(context, tuple(self._value(by_tag.get(t)) for t in PATIENT_TAGS))
            outer, context.patient = context.patient, own or context.patient
            try:
                self._dataset(item.elements, item.dropped, out, depth + 1, len(item.elements))
            finally:
                context.patient = outer
            if item.undefined:
                out += _DELIMITERS[ITEM_END]
            else:
                _UL.pack_into(out, at - 4, len(out) - at)
        if undefined:
            out += _DELIMITERS[SEQUENCE_END]
        else:
            _UL.pack_into(out, start - 4, len(out) - start)
        return bytes(out)

    def _header(self, tag: int, vr: str, length: int) -> bytes:
        if not self.explicit:
            return _IMPLICIT.pack(tag >> 16, tag & 0xFFFF, length)
        if vr in LONG_VRS:
            return _LONG_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
        if length > 0xFFFF:  # pydicom would write it as UN
            raise Fallback("a new value too long for its VR's 16-bit length")
        return _EXPLICIT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)

    def _encode(self, element: Element, value: object) -> bytes:
        """An element with a new value, encoded as pydicom encodes it."""
        if element.tag == SOP_INSTANCE_UID and any(e is element for e in self.top):
            self.sop_written = str(value)
        encoded = encode_value(element.vr, value)
        return self._header(element.tag, element.vr, len(encoded)) + encoded

    def _file_meta(self, meta_end: int) -> bytes:
        """The preamble and file meta information: Media Storage SOP Instance UID follows
        the SOP Instance UID, AE titles and private information go, group length recomputed."""
        data = self.data
        if not self.sop_written:
            kept = next(e for e in self.top if e.tag == SOP_INSTANCE_UID)
            self.sop_written = self._single(kept)
        meta, pos, has_length = bytearray(), 132, False
        while pos < meta_end:
            group, element, code, length = _EXPLICIT.unpack_from(data, pos)
            tag, vr, value = group << 16 | element, code.decode("latin-1"), pos + 8
            if vr in LONG_VRS:
                (length,) = _UL.unpack_from(data, pos + 8)
                value = pos + 12
            if tag == _META_LENGTH:
                if vr != "UL" or length != 4:
                    raise Fallback("a file meta group length that is no UL")
                has_length = True
            elif tag == _MEDIA_SOP_INSTANCE:
                encoded = encode_value("UI", self.sop_written)
                meta += _EXPLICIT.pack(group, element, b"UI", len(encoded)) + encoded
            elif tag not in self.settings.meta_removed:
                meta += data[pos : value + length]
            pos = value + length
        # (0002,0000) UL: tag, "UL", 16-bit length 4, then its 32-bit value.
        length_element = _LONG_HEADER.pack(2, 0, b"UL", 4, len(meta)) if has_length else b""
        return bytes(data[:132]) + length_element + bytes(meta)


def encode_value(vr: str, value: object) -> bytes:
    """A value as pydicom writes it: text joined by backslashes and padded to even length
    (UI with NUL, others with space), numbers packed little endian, bytes as they are."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value + b"\0" * (len(value) & 1)
    if vr in _NUMBERS:
        return struct.pack(_NUMBERS[vr], value)
    text = value if isinstance(value, str) else "\\".join(str(v) for v in value)  # type: ignore[attr-defined]
    try:
        encoded = text.encode("ascii")
    except UnicodeEncodeError:  # pydicom would encode it in the data set's character set
        raise Fallback("a new text value that is not ASCII") from None
    if len(encoded) & 1:
        encoded += b"\0" if vr == "UI" else b" "
    return encoded
