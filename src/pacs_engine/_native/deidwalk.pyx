# cython: language_level=3
"""The element walk of the byte-level de-identification (pacs_engine.deid.bytelevel).

Reads a data set's elements, their items and their items' elements where they lie
(explicit or implicit VR little endian), without their values, and gives each element
its action from the caller's compiled table: the Python layer then only decides new
values and splices. Elements of the `dropped` action that are no sequence (private
attributes, when none is kept) are only counted: most of a modality's header is private. The checks and their messages are the byte path's (a malformed
length is the caller's `error`, what the byte path leaves to pydicom its `fallback`).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t

from pacs_engine._native.dicom cimport UNDEFINED, has_long_length, is_pixel_tag, rd16, rd32

cdef uint32_t ITEM = 0xFFFEE000
cdef uint32_t ITEM_END = 0xFFFEE00D
cdef uint32_t SEQUENCE_END = 0xFFFEE0DD

#: The explicit VRs the byte path reads, by their two bytes.
VRS = {
    vr.encode(): vr
    for vr in (
        "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC "
        "UI UL UN UR US UT UV"
    ).split()
}
#: Explicit VRs with a 32-bit length (PS3.5 7.1.2).
LONG_VRS = frozenset(vr for vr in VRS.values() if has_long_length(ord(vr[0]) << 8 | ord(vr[1])))

# The VR strings by their two letters (A-Z each): index (first - 65) * 26 + second - 65.
cdef list _BY_CODE = [None] * (26 * 26)
for _code, _vr in VRS.items():
    _BY_CODE[(_code[0] - 65) * 26 + _code[1] - 65] = _vr


cdef class Element:
    """One element where it lies: tag, VR, its bytes' offsets (header, value, end), its
    length as found (UNDEFINED for undefined length), its items (sequences) and action."""

    cdef readonly bytes source  # the bytes it lies in (a blob's prefix or suffix)
    cdef readonly uint32_t tag
    cdef readonly str vr
    cdef readonly Py_ssize_t start, value, end
    cdef readonly uint32_t length
    cdef readonly list items  # of Item for a sequence, else None
    cdef readonly str action


cdef class Item:
    """A sequence item: whether of undefined length, and its elements."""

    cdef readonly bint undefined
    cdef readonly list elements
    cdef readonly int dropped  # elements of the walker's `dropped` action left out


cdef class Walker:
    """Walks one buffer; items nested deeper than `max_depth` (the top data set is 0) are
    an `error`, raised as they are met: the walk recurses once per level."""

    cdef bytes data
    cdef const uint8_t* p
    cdef bint explicit
    cdef object fallback, error, decide, implicit_vr, dropped
    cdef dict actions, implicit_vrs
    cdef int max_depth

    def __init__(
        self,
        bytes data,
        bint explicit,
        fallback,
        error,
        dict actions,
        decide,
        dict implicit_vrs,
        implicit_vr,
        dropped,
        int max_depth,
    ):
        """`actions` caches `decide(tag, vr)` by (tag, vr); `implicit_vrs` caches
        `implicit_vr(tag)`, the VR of an implicit VR element; elements of the action
        `dropped` (None: none) that are no sequence are counted, not returned."""
        self.data = data
        self.p = data
        self.explicit = explicit
        self.fallback, self.error = fallback, error
        self.actions, self.decide = actions, decide
        self.implicit_vrs, self.implicit_vr = implicit_vrs, implicit_vr
        self.dropped = dropped
        self.max_depth = max_depth

    def elements(self, Py_ssize_t pos, Py_ssize_t end, int depth, bint delimited):
        """The elements from `pos` to `end` (or to an item delimiter when `delimited`),
        and how many were dropped."""
        cdef int dropped = 0
        found, _ = self._elements(pos, end, depth, delimited, &dropped)
        return found, dropped

    cdef tuple _elements(
        self, Py_ssize_t pos, Py_ssize_t end, int depth, bint delimited, int* dropped
    ):
        cdef const uint8_t* p = self.p
        cdef list found = []
        cdef list items
        cdef long long last = -1
        cdef uint32_t tag, length
        cdef uint16_t group, code
        cdef Py_ssize_t value, stop
        cdef Element e
        cdef str vr
        cdef object action
        while pos < end:
            if pos + 8 > end:
                raise self.error(f"truncated element header at byte {pos}")
            group = rd16(p + pos, 1)
            tag = <uint32_t>group << 16 | rd16(p + pos + 2, 1)
            if tag == ITEM_END and delimited:
                return found, pos + 8
            if <long long>tag <= last or group == 2 or group == 0xFFFE:
                raise self.fallback("attributes out of order, repeated or misplaced")
            last = tag
            value = pos + 8
            if self.explicit:
                code = <uint16_t>p[pos + 4] << 8 | p[pos + 5]
                vr = None
                if 65 <= p[pos + 4] <= 90 and 65 <= p[pos + 5] <= 90:
                    vr = _BY_CODE[(p[pos + 4] - 65) * 26 + p[pos + 5] - 65]
                if vr is None:  # pydicom would guess implicit VR here
                    raise self.fallback("an element of unknown VR")
                length = rd16(p + pos + 6, 1)
                if has_long_length(code):
                    if pos + 12 > end:
                        raise self.error(f"truncated element header at byte {pos}")
                    length = rd32(p + pos + 8, 1)
                    value = pos + 12
            else:
                length = rd32(p + pos + 4, 1)
                vr = self.implicit_vrs.get(tag)
                if vr is None:
                    vr = self.implicit_vr(tag)
            items = None
            if length == UNDEFINED:
                if is_pixel_tag(tag):
                    stop = self._fragments(value, end)
                elif vr == "SQ":
                    items = []
                    stop = self._items(items, value, end, depth + 1, True)
                else:
                    raise self.fallback("an undefined length that is no sequence")
            else:
                stop = value + length
                if stop > end:
                    raise self.error(
                        f"element ({group:04X},{tag & 0xFFFF:04X}) at byte {pos}: its length "
                        "runs past the end of the data"
                    )
                if vr == "SQ":
                    items = []
                    self._items(items, value, stop, depth + 1, False)
            action = self.actions.get((tag, vr))
            if action is None:
                action = self.decide(tag, vr)
            if items is None and action == self.dropped:
                dropped[0] += 1
                pos = stop
                continue
            e = Element.__new__(Element)
            e.source, e.tag, e.vr, e.action, e.items = self.data, tag, vr, action, items
            e.start, e.value, e.end, e.length = pos, value, stop, length
            found.append(e)
            pos = stop
        if delimited:
            raise self.error("an item of undefined length without its delimiter")
        return found, pos

    cdef Py_ssize_t _items(
        self, list items, Py_ssize_t pos, Py_ssize_t end, int depth, bint delimited
    ) except -1:
        """A sequence's items into `items`, to `end` or to its delimiter (then the
        position after it)."""
        cdef const uint8_t* p = self.p
        cdef uint32_t tag, length
        cdef Item item
        if depth > self.max_depth:
            raise self.error(f"sequences nested more than {self.max_depth} deep")
        while True:
            if not delimited and pos >= end:
                return pos
            if pos + 8 > end:
                raise self.error("a sequence truncated (no delimiter or item header)")
            tag = <uint32_t>rd16(p + pos, 1) << 16 | rd16(p + pos + 2, 1)
            length = rd32(p + pos + 4, 1)
            if tag == SEQUENCE_END and delimited:
                return pos + 8
            if tag != ITEM:
                raise self.error(f"a sequence holds something else than items at byte {pos}")
            item = Item.__new__(Item)
            item.undefined = length == UNDEFINED
            item.dropped = 0
            if length == UNDEFINED:
                item.elements, pos = self._elements(pos + 8, end, depth, True, &item.dropped)
            else:
                if pos + 8 + length > end:
                    raise self.error(f"an item's length runs past the end at byte {pos}")
                item.elements, pos = self._elements(
                    pos + 8, pos + 8 + length, depth, False, &item.dropped
                )
            items.append(item)

    cdef Py_ssize_t _fragments(self, Py_ssize_t pos, Py_ssize_t end) except -1:
        """The end of encapsulated pixel data (after its delimiter): items skipped."""
        cdef const uint8_t* p = self.p
        cdef uint32_t tag, length
        while pos + 8 <= end:
            tag = <uint32_t>rd16(p + pos, 1) << 16 | rd16(p + pos + 2, 1)
            length = rd32(p + pos + 4, 1)
            if tag == SEQUENCE_END:
                return pos + 8
            if tag != ITEM or length == UNDEFINED or pos + 8 + length > end:
                raise self.error(f"encapsulated pixel data malformed at byte {pos}")
            pos += 8 + length
        raise self.error("encapsulated pixel data without its delimiter")


def splice(
    list elements,
    bytearray out,
    Py_ssize_t split,
    bint top,
    bytes data,
    bytes suffix,
    list pending,
    dict mark_vrs,
    bytes sequence_undefined,
    dict dropped,
    dict served,
    dict mapped,
    counts,
    element_value,
    int depth,
    fallback,
    str unlisted,
    str overlay,
):
    """Write a data set's `elements` de-identified into `out`: runs of kept elements are
    copied as slices of `data` (of `suffix` from element `split` on, at the `top`), the
    `pending` (tag, bytes) marks go in tag order, elements whose action is in `dropped` go
    (counted under the action it maps to, unless None), an element that is no sequence
    whose (tag, VR) is in `served` gets its (action, bytes) there (counted under the
    action), one of VR UI of action U or D whose bytes are in `mapped` the bytes there
    (counted), `element_value(element, action, elements, depth)` gives the others (True:
    kept, None: dropped, or new bytes); returns
    the offset in `out` where element `split` starts. The loop of
    `bytelevel._Rewrite._dataset`, here for its per-element cost."""
    cdef Py_ssize_t run_start = -1, run_end = -1, index, count = len(elements)
    cdef Py_ssize_t marked = 0, marks = len(pending)
    cdef Py_ssize_t split_at = len(out)
    cdef Element e
    cdef str action
    cdef object new, counted
    cdef bint gone
    cdef set overlays = {e.tag >> 16 for e in elements if e.action == overlay}
    for index in range(count):
        e = elements[index]
        action = e.action
        if index == split and top:
            if run_end >= 0:
                out += data[run_start:run_end]
                run_start = run_end = -1
            while marked < marks:
                out += pending[marked][1]
                marked += 1
            split_at = len(out)
            data = suffix
        while marked < marks and e.tag > pending[marked][0]:
            if run_end >= 0:
                out += data[run_start:run_end]
                run_start = run_end = -1
            out += pending[marked][1]
            marked += 1
        if action in dropped:
            counted = dropped[action]
            if counted is not None:
                counts[counted] += 1
            new = None
        elif action == unlisted and e.items is None:
            new = True
        elif e.items is None and (e.tag, e.vr) in served:
            counted, new = served[(e.tag, e.vr)]
            counts[counted] += 1
        else:
            new = None
            if e.vr == "UI" and (action == "U" or action == "D"):
                new = mapped.get(e.source[e.start:e.end])
            if new is None:
                new = element_value(e, action, elements, depth)
            else:
                counts[action] += 1
        if marked < marks and e.tag == pending[marked][0]:
            # Already there: set to the new value, as pydicom sets it (VR and
            # undefined length as found).
            if e.vr != mark_vrs[e.tag]:
                raise fallback("a De-identification Method attribute of another VR")
            new = pending[marked][1]
            marked += 1
            if e.length == UNDEFINED:
                new = sequence_undefined
        gone = new is not None or action == overlay
        if overlays and (e.tag >> 16) in overlays and gone:
            counts["X"] += 1  # its overlay group goes whole
            new = None
        if new is True:
            if run_end == e.start:
                run_end = e.end
            else:
                if run_end >= 0:
                    out += data[run_start:run_end]
                run_start, run_end = e.start, e.end
            continue
        if run_end >= 0:
            out += data[run_start:run_end]
            run_start = run_end = -1
        if isinstance(new, bytes):
            out += new
    if run_end >= 0:
        out += data[run_start:run_end]
    while marked < marks:
        out += pending[marked][1]
        marked += 1
    if top and split >= count:
        split_at = len(out)
    return split_at
