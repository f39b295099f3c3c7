# cython: language_level=3
"""Native DICOM header scanner.

`Scanner` reads the header of a DICOM file (a path or a buffer) and returns the
requested attributes (an `Attributes` mapping that converts each value on first
read) together with the exact byte location of the pixel data. The byte-level
parse and the copy of the requested values run without the GIL; building the
Python results holds it.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_FromDouble
from cpython.long cimport PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, realloc, strtod, strtoll
from libc.string cimport memcmp, memcpy, memset, strerror
from posix.fcntl cimport O_NONBLOCK, O_RDONLY
from posix.fcntl cimport open as c_open
from posix.stat cimport (
    S_ISBLK,
    S_ISCHR,
    S_ISDIR,
    S_ISFIFO,
    S_ISREG,
    S_ISSOCK,
    fstat,
    struct_stat,
)
from posix.types cimport mode_t
from posix.unistd cimport close, pread

import os
import zlib
from collections.abc import Mapping

import numpy as np

from pacs_engine.errors import ScanError

cdef extern from "fcntl.h":
    enum: O_CLOEXEC

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object)  # os.fsencode of a str

# --- constants -------------------------------------------------------------

cdef enum:
    HEAD_FIRST_READ = 16384        # most headers fit; the head grows by half when not
    HEAD_FIRST_CAPACITY = 32768    # the head's first allocation: room to grow without copying
    HEAD_MAX = 64 * 1024 * 1024    # contiguous header window, at most
    ROAM_READ = 4096               # one page for each read past the header
    MAX_DEPTH = 64                 # nested sequences deeper than this are refused
    META_GROUP = 0x0002


cdef extern from *:
    """
    #define PE_UNDEFINED 0xFFFFFFFFu
    #define PE_ITEM 0xFFFEE000u
    #define PE_ITEM_DELIMITER 0xFFFEE00Du
    #define PE_SEQUENCE_DELIMITER 0xFFFEE0DDu
    #define PE_PIXEL_DATA 0x7FE00010u
    #define PE_FLOAT_PIXEL_DATA 0x7FE00008u
    #define PE_DOUBLE_FLOAT_PIXEL_DATA 0x7FE00009u
    #define PE_TRANSFER_SYNTAX_UID 0x00020010u
    #define PE_SPECIFIC_CHARACTER_SET 0x00080005u
    #define PE_EXTENDED_OFFSET_TABLE 0x7FE00001u
    #define PE_EXTENDED_OFFSET_TABLE_LENGTHS 0x7FE00002u
    """
    const uint32_t UNDEFINED "PE_UNDEFINED"
    const uint32_t ITEM "PE_ITEM"
    const uint32_t ITEM_DELIMITER "PE_ITEM_DELIMITER"
    const uint32_t SEQUENCE_DELIMITER "PE_SEQUENCE_DELIMITER"
    const uint32_t PIXEL_DATA "PE_PIXEL_DATA"
    const uint32_t FLOAT_PIXEL_DATA "PE_FLOAT_PIXEL_DATA"
    const uint32_t DOUBLE_FLOAT_PIXEL_DATA "PE_DOUBLE_FLOAT_PIXEL_DATA"
    const uint32_t TRANSFER_SYNTAX_UID "PE_TRANSFER_SYNTAX_UID"
    const uint32_t SPECIFIC_CHARACTER_SET "PE_SPECIFIC_CHARACTER_SET"
    const uint32_t EXTENDED_OFFSET_TABLE "PE_EXTENDED_OFFSET_TABLE"
    const uint32_t EXTENDED_OFFSET_TABLE_LENGTHS "PE_EXTENDED_OFFSET_TABLE_LENGTHS"


# Value representations, packed as two big-endian ASCII letters.
cdef enum:  # compile-time constants, so the VR tests compile to compares and jumps
    VR_AE = 0x4145
    VR_AS = 0x4153
    VR_CS = 0x4353
    VR_DA = 0x4441
    VR_DS = 0x4453
    VR_DT = 0x4454
    VR_FD = 0x4644
    VR_FL = 0x464C
    VR_IS = 0x4953
    VR_LO = 0x4C4F
    VR_LT = 0x4C54
    VR_OB = 0x4F42
    VR_OD = 0x4F44
    VR_OF = 0x4F46
    VR_OL = 0x4F4C
    VR_OV = 0x4F56
    VR_OW = 0x4F57
    VR_PN = 0x504E
    VR_SH = 0x5348
    VR_SL = 0x534C
    VR_SQ = 0x5351
    VR_SS = 0x5353
    VR_ST = 0x5354
    VR_SV = 0x5356
    VR_TM = 0x544D
    VR_UC = 0x5543
    VR_UI = 0x5549
    VR_UL = 0x554C
    VR_UN = 0x554E
    VR_UR = 0x5552
    VR_US = 0x5553
    VR_UT = 0x5554
    VR_UV = 0x5556

INFLATE_STEP = 1 << 20                 # deflated data sets are inflated this much at a time
DEFLATED_HEADER_MAX = 64 << 20         # inflated bytes before the pixel data, at most
DEFLATED_TAIL_MAX = 64 << 20           # inflated bytes after the pixel data, at most

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"


# --- byte helpers ----------------------------------------------------------

cdef inline uint16_t rd16(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return p[0] | (p[1] << 8)
    return (p[0] << 8) | p[1]


cdef inline uint32_t rd32(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return p[0] | (p[1] << 8) | (p[2] << 16) | (<uint32_t>p[3] << 24)
    return (<uint32_t>p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]


cdef inline uint64_t rd64(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return rd32(p, 1) | (<uint64_t>rd32(p + 4, 1) << 32)
    return (<uint64_t>rd32(p, 0) << 32) | rd32(p + 4, 0)


cdef inline bint is_vr_letter(uint8_t c) noexcept nogil:
    return 0x41 <= c <= 0x5A


cdef inline bint has_long_length(uint16_t vr) noexcept nogil:
    """True for the VRs whose explicit encoding has a 4-byte length."""
    return (vr == VR_OB or vr == VR_OD or vr == VR_OF or vr == VR_OL or vr == VR_OV
            or vr == VR_OW or vr == VR_SQ or vr == VR_SV or vr == VR_UC or vr == VR_UN
            or vr == VR_UR or vr == VR_UT or vr == VR_UV)


cdef uint8_t VR_KIND[26 * 26]  # by VR letters: 1 for a 2-byte explicit length, 2 for a 4-byte one


cdef void fill_vr_kinds() noexcept nogil:
    cdef int a, b
    for a in range(26):
        for b in range(26):
            VR_KIND[a * 26 + b] = 2 if has_long_length(((0x41 + a) << 8) | (0x41 + b)) else 1


fill_vr_kinds()


cdef inline uint8_t vr_kind(const uint8_t* vr) noexcept nogil:
    """VR_KIND of two VR letters, 0 when they are not letters."""
    if not (is_vr_letter(vr[0]) and is_vr_letter(vr[1])):
        return 0
    return VR_KIND[(vr[0] - 0x41) * 26 + (vr[1] - 0x41)]


cdef inline bint is_pixel_tag(uint32_t tag) noexcept nogil:
    return tag == PIXEL_DATA or tag == FLOAT_PIXEL_DATA or tag == DOUBLE_FLOAT_PIXEL_DATA


# --- the source: a buffer, or a file read through two windows ---------------

cdef int read_full(int fd, uint8_t* dst, int64_t n, int64_t pos) noexcept nogil:
    """pread exactly n bytes; 0 on success, else an errno (or -1 at end of file)."""
    cdef long got
    while n > 0:
        got = pread(fd, dst, n, pos)
        if got < 0:
            if errno == EINTR:
                continue
            return errno
        if got == 0:
            return -1
        dst += got
        pos += got
        n -= got
    return 0


cdef inline const uint8_t* src_at(Source* s, int64_t pos, int64_t n) noexcept nogil:
    """Pointer to bytes [pos, pos + n) of the source, valid until the next call.

    NULL when the range is outside the source or the read failed (io_errno).
    """
    # The common cases first, inlined: bytes already in the head window, or a buffer.
    if pos >= 0 and n >= 0:
        if pos + n <= s.head_len:
            return s.head + pos
        if s.mem != NULL and n <= s.size and pos <= s.size - n:
            return s.mem + pos
    return src_fill(s, pos, n)


cdef const uint8_t* src_fill(Source* s, int64_t pos, int64_t n) noexcept nogil:
    """src_at's slow path: bounds checks and reads."""
    cdef int64_t want, want_cap
    cdef uint8_t* grown
    if pos < 0 or n < 0 or n > s.size or pos > s.size - n:
        return NULL
    if s.fd < 0:
        if s.mem != NULL:
            return s.mem + pos
        # Windowed memory (an inflated data set kept as header + tail): no reads.
        if pos + n <= s.head_len:
            return s.head + pos
        if s.roam_start <= pos and pos + n <= s.roam_start + s.roam_len:
            return s.roam + (pos - s.roam_start)
        s.io_errno = -1
        return NULL
    if pos + n <= s.head_len:
        return s.head + pos
    if not s.head_frozen and pos + n <= HEAD_MAX:
        # Grow by half (a header just past the first read costs a small second
        # read, a large one a few reads), or to what is asked if that is more.
        want = s.head_len + s.head_len // 2
        if want < HEAD_FIRST_READ:
            want = HEAD_FIRST_READ
        if want < pos + n:
            want = pos + n
        if want > s.size:
            want = s.size
        if want > s.head_cap:
            # The capacity doubles, so that growing copies the head few times.
            want_cap = s.head_cap * 2 if s.head_cap else HEAD_FIRST_CAPACITY
            if want_cap < want:
                want_cap = want
            if want_cap > s.size:
                want_cap = s.size
            grown = <uint8_t*>realloc(s.head, want_cap)
            if grown == NULL:
                s.io_errno = 12  # ENOMEM
                return NULL
            s.head = grown
            s.head_cap = want_cap
        s.io_errno = read_full(s.fd, s.head + s.head_len, want - s.head_len, s.head_len)
        if s.io_errno != 0:
            return NULL
        s.head_len = want
        return s.head + pos
    if s.roam_start <= pos and pos + n <= s.roam_start + s.roam_len:
        return s.roam + (pos - s.roam_start)
    want = n if n > ROAM_READ else ROAM_READ
    if want > s.size - pos:
        want = s.size - pos
    if want > s.roam_cap:
        grown = <uint8_t*>realloc(s.roam, want)
        if grown == NULL:
            s.io_errno = 12
            return NULL
        s.roam = grown
        s.roam_cap = want
    s.roam_len = 0
    s.io_errno = read_full(s.fd, s.roam, want, pos)
    if s.io_errno != 0:
        return NULL
    s.roam_start = pos
    s.roam_len = want
    return s.roam


cdef void state_free(ScanState* st) noexcept nogil:
    if st.src.fd >= 0:
        close(st.src.fd)
        st.src.fd = -1
    free(st.src.head)
    free(st.src.roam)
    free(st.elems)
    free(st.frags)
    free(st.values)
    st.src.head = NULL
    st.src.roam = NULL
    st.elems = NULL
    st.frags = NULL
    st.values = NULL


# --- the parser (no GIL) ----------------------------------------------------

cdef int fail(ScanState* st, int64_t offset, const char* what) noexcept nogil:
    st.failed = True
    st.err_offset = offset
    if st.src.io_errno > 0:
        snprintf(st.err_msg, sizeof(st.err_msg), "%s: read failed: %s", what,
                 strerror(st.src.io_errno))
    elif st.src.io_errno < 0:
        snprintf(st.err_msg, sizeof(st.err_msg), "%s: file ended while reading it", what)
    else:
        snprintf(st.err_msg, sizeof(st.err_msg), "%s", what)
    return -1


cdef int fail_beyond(ScanState* st, int64_t offset, uint32_t tag, int64_t length) noexcept nogil:
    st.failed = True
    st.err_offset = offset
    snprintf(st.err_msg, sizeof(st.err_msg),
             "element (%04X,%04X) declares a value of %lld bytes, past the end of the data "
             "(%lld bytes)", tag >> 16, tag & 0xFFFF, <long long>length, <long long>st.src.size)
    return -1


cdef inline bint keep(ScanState* st, Element* e) noexcept nogil:
    """Whether a top-level element is recorded (setting e.keyword): only those the
    results need are, so memory does not follow the number of elements in the file.

    Top-level tags ascend in a well-formed file, so the search in `kept` walks on
    from where the last tag fell (st.cursor: the first kept tag above it), and
    starts over when a tag does not ascend.
    """
    cdef Py_ssize_t i = st.cursor
    if i > 0 and st.kept[i - 1] >= e.tag:
        i = 0
    while i < st.n_kept and st.kept[i] < e.tag:
        i += 1
    if i < st.n_kept and st.kept[i] == e.tag:
        st.cursor = i + 1
        e.keyword = st.kept_keyword[i]
        return True
    st.cursor = i
    e.keyword = -1
    return (e.tag >> 16) == META_GROUP


cdef int push_element(ScanState* st, Element* e) noexcept nogil:
    cdef Element* grown
    if st.n_elems == st.cap_elems:
        st.cap_elems = 64 if st.cap_elems == 0 else st.cap_elems * 2
        grown = <Element*>realloc(st.elems, st.cap_elems * sizeof(Element))
        if grown == NULL:
            return fail(st, e.header_offset, "out of memory")
        st.elems = grown
    st.elems[st.n_elems] = e[0]
    st.n_elems += 1
    return 0


cdef int push_fragment(ScanState* st, Fragment* f) noexcept nogil:
    cdef Fragment* grown
    if st.n_frags == st.cap_frags:
        st.cap_frags = 16 if st.cap_frags == 0 else st.cap_frags * 2
        grown = <Fragment*>realloc(st.frags, st.cap_frags * sizeof(Fragment))
        if grown == NULL:
            return fail(st, f.offset, "out of memory")
        st.frags = grown
    st.frags[st.n_frags] = f[0]
    st.n_frags += 1
    return 0


cdef int fail_vr(ScanState* st, int64_t pos, uint32_t tag, const uint8_t* vr) noexcept nogil:
    st.failed = True
    st.err_offset = pos
    snprintf(st.err_msg, sizeof(st.err_msg), "element (%04X,%04X) has an invalid VR 0x%02X%02X",
             tag >> 16, tag & 0xFFFF, vr[0], vr[1])
    return -1


cdef inline int read_header(ScanState* st, int64_t pos, bint explicit, bint little,
                            Element* e, uint32_t* raw_length) noexcept nogil:
    """Decode the tag, VR and length of the element at pos into e."""
    cdef const uint8_t* p = src_at(&st.src, pos, 12)  # the longest header, usually there
    cdef bint short = p == NULL
    cdef uint8_t kind
    cdef uint16_t group
    if short:
        p = src_at(&st.src, pos, 8)
        if p == NULL:
            return fail(st, pos, "the data ends inside an element header")
    group = rd16(p, little)
    e.tag = (<uint32_t>group << 16) | rd16(p + 2, little)
    e.header_offset = pos
    if group == 0xFFFE or not explicit:
        # Items and delimiters carry no VR, even in explicit VR syntaxes.
        e.vr = 0
        raw_length[0] = rd32(p + 4, little)
        e.value_offset = pos + 8
        return 0
    kind = vr_kind(p + 4)
    if kind == 0:
        return fail_vr(st, pos, e.tag, p + 4)
    e.vr = (p[4] << 8) | p[5]
    if kind == 2:
        if short:
            return fail(st, pos, "the data ends inside an element header")
        raw_length[0] = rd32(p + 8, little)
        e.value_offset = pos + 12
    else:
        raw_length[0] = rd16(p + 6, little)
        e.value_offset = pos + 8
    return 0


cdef int read_item(ScanState* st, int64_t pos, bint little, Element* e, uint32_t* length,
                   int64_t* end) noexcept nogil:
    """Read an item header: 1 for an item, 0 for the sequence delimiter (end set), -1 else."""
    if read_header(st, pos, False, little, e, length) < 0:
        return -1
    if e.tag == SEQUENCE_DELIMITER:
        end[0] = e.value_offset
        return 0
    if e.tag != ITEM:
        st.failed = True
        st.err_offset = pos
        snprintf(st.err_msg, sizeof(st.err_msg),
                 "expected an item or a sequence delimiter, found (%04X,%04X)",
                 e.tag >> 16, e.tag & 0xFFFF)
        return -1
    return 1


cdef int64_t skip_unkept(ScanState* st, int64_t pos, bint explicit) noexcept nogil:
    """Walk the top-level little endian elements from pos that parse_dataset would only
    step over: a defined length inside the data, a tag between the kept tags around
    st.cursor (so `keep` leaves it and the cursor alone, and it is not the pixel
    data), the header in the head window. Returns the first element that needs
    more (or pos if it is one)."""
    cdef const uint8_t* p
    cdef int64_t value, last = st.src.head_len - 12
    cdef uint32_t tag, length
    cdef uint32_t low = st.kept[st.cursor - 1] if st.cursor > 0 else 0  # tag 0: general path
    cdef uint32_t high = st.kept[st.cursor] if st.cursor < st.n_kept else ITEM
    cdef uint8_t kind
    if high > ITEM:
        high = ITEM  # items and delimiters have no VR
    while pos <= last:
        p = st.src.head + pos
        tag = (<uint32_t>rd16(p, True) << 16) | rd16(p + 2, True)
        if not (low < tag < high) or (tag >> 16) == META_GROUP:
            break
        if explicit:
            kind = vr_kind(p + 4)
            if kind == 1:
                length = rd16(p + 6, True)
                value = pos + 8
            elif kind == 2:
                length = rd32(p + 8, True)
                value = pos + 12
            else:
                break
        else:
            length = rd32(p + 4, True)
            value = pos + 8
        if length == UNDEFINED or value + length > st.src.size:
            break
        pos = value + length
    return pos


cdef inline bint all_zero(const uint8_t* p, int64_t n) noexcept nogil:
    """True when the n bytes at p are all zero (False when they could not be read)."""
    cdef int64_t i
    if n == 0:
        return True
    if p == NULL:
        return False
    for i in range(n):
        if p[i] != 0:
            return False
    return True


cdef int parse_dataset(ScanState* st, int64_t pos, int64_t stop, bint explicit, bint little,
                       int depth, int64_t* end) noexcept nogil:
    """Parse elements from pos.

    At depth 0 the data set runs to the end of the source (`stop`) and every
    element is recorded; inside an item of undefined length it runs to the
    Item Delimitation Item.
    """
    cdef Element e
    cdef uint32_t length
    cdef int64_t value_end
    cdef bint sequence_like
    while True:
        if depth == 0 and little:
            pos = skip_unkept(st, pos, explicit)
        if depth == 0 and stop - pos < 8:
            # Fewer than 8 bytes cannot hold an element: trailing zero padding, or
            # (anything else) a file cut inside the header of its next element.
            if not all_zero(src_at(&st.src, pos, stop - pos), stop - pos):
                return fail(st, pos, "the data ends inside an element header")
            end[0] = pos
            return 0
        if read_header(st, pos, explicit, little, &e, &length) < 0:
            return -1
        if depth > 0 and e.tag == ITEM_DELIMITER:
            end[0] = e.value_offset
            return 0
        if length != UNDEFINED:
            e.value_length = length
            if e.value_offset + e.value_length > st.src.size:
                if depth == 0 and is_pixel_tag(e.tag) and st.pixel_index < 0:
                    st.pixel_end_beyond = e.value_offset + e.value_length
                return fail_beyond(st, pos, e.tag, e.value_length)
            value_end = e.value_offset + e.value_length
            if depth == 0 and is_pixel_tag(e.tag) and st.pixel_index < 0:
                st.pixel_index = st.n_elems
                st.src.head_frozen = True
        elif depth == 0 and is_pixel_tag(e.tag) and st.pixel_index < 0:
            st.pixel_index = st.n_elems
            st.encapsulated = True
            st.src.head_frozen = True
            if parse_items(st, e.value_offset, little, &value_end) < 0:
                return -1
            e.value_length = value_end - e.value_offset
        else:
            # Undefined length: a sequence, or (UN, or implicit VR) content
            # that is encoded as one.
            sequence_like = (e.vr == VR_SQ or e.vr == VR_UN or e.vr == 0)
            if sequence_like:
                # UN of undefined length holds implicit VR little endian.
                if parse_sequence(st, e.value_offset, explicit and e.vr != VR_UN,
                                  little if e.vr != VR_UN else True, depth, &value_end) < 0:
                    return -1
            else:
                st.failed = True
                st.err_offset = pos
                snprintf(st.err_msg, sizeof(st.err_msg),
                         "element (%04X,%04X) has an undefined length but is not a sequence",
                         e.tag >> 16, e.tag & 0xFFFF)
                return -1
            e.value_length = value_end - e.value_offset
        if depth == 0 and keep(st, &e) and push_element(st, &e) < 0:
            return -1
        pos = value_end


cdef int parse_sequence(ScanState* st, int64_t pos, bint explicit, bint little,
                        int depth, int64_t* end) noexcept nogil:
    """Parse the items of a sequence of undefined length; end is past its delimiter."""
    cdef Element e
    cdef uint32_t length
    if depth >= MAX_DEPTH:
        return fail(st, pos, "sequences nested too deep")
    cdef int found
    while True:
        found = read_item(st, pos, little, &e, &length, end)
        if found < 0:
            return -1
        if found == 0:
            return 0
        if length == UNDEFINED:
            if parse_dataset(st, e.value_offset, st.src.size, explicit, little, depth + 1,
                             &pos) < 0:
                return -1
        else:
            if e.value_offset + length > st.src.size:
                return fail_beyond(st, pos, e.tag, length)
            pos = e.value_offset + length


cdef int parse_items(ScanState* st, int64_t pos, bint little, int64_t* end) noexcept nogil:
    """Walk encapsulated pixel data: the Basic Offset Table, then each fragment."""
    cdef Element e
    cdef uint32_t length
    cdef Fragment f
    cdef const uint8_t* tail
    cdef int64_t n_tail, i
    cdef bint first = True
    cdef int found
    while True:
        found = read_item(st, pos, little, &e, &length, end)
        if found < 0:
            return -1
        if found == 0:
            return 0
        if length == UNDEFINED:
            return fail(st, pos, "pixel data item of undefined length")
        if e.value_offset + length > st.src.size:
            return fail_beyond(st, pos, e.tag, length)
        if first:
            st.bot_offset = e.value_offset
            st.bot_length = length
            first = False
        else:
            f.offset = e.value_offset
            f.length = length
            f.ends_with_eoi = False
            # Read the fragment's last bytes together with the next item header.
            n_tail = 10 if length >= 10 else length
            tail = src_at(&st.src, f.offset + length - n_tail, n_tail)
            if tail == NULL:
                return fail(st, f.offset, "cannot read pixel data fragment")
            for i in range(n_tail - 1):
                if tail[i] == 0xFF and tail[i + 1] == 0xD9:
                    f.ends_with_eoi = True
            if push_fragment(st, &f) < 0:
                return -1
        pos = e.value_offset + length


cdef int parse_meta(ScanState* st) noexcept nogil:
    """Find the preamble and the file meta group; set dataset_offset."""
    cdef const uint8_t* p
    cdef int64_t pos = 0
    cdef Element e
    cdef uint32_t length
    p = src_at(&st.src, 128, 4)
    if p != NULL and p[0] == 0x44 and p[1] == 0x49 and p[2] == 0x43 and p[3] == 0x4D:
        st.has_preamble = True
        pos = 132
    p = src_at(&st.src, pos, 6)
    if p != NULL and rd16(p, True) == META_GROUP and is_vr_letter(p[4]) and is_vr_letter(p[5]):
        st.has_meta = True
        while st.src.size - pos >= 8:
            p = src_at(&st.src, pos, 2)
            if p == NULL:
                return fail(st, pos, "cannot read the file meta")
            if rd16(p, True) != META_GROUP:
                break
            if read_header(st, pos, True, True, &e, &length) < 0:
                return -1
            if length == UNDEFINED:
                return fail(st, pos, "file meta element of undefined length")
            e.value_length = length
            if e.value_offset + e.value_length > st.src.size:
                return fail_beyond(st, pos, e.tag, e.value_length)
            keep(st, &e)
            if push_element(st, &e) < 0:
                return -1
            pos = e.value_offset + e.value_length
    elif not st.has_preamble and not plausible_dataset_start(&st.src):
        return fail(st, 0, "not a DICOM file: no 'DICM' prefix, no file meta, no data set")
    st.dataset_offset = pos
    return 0


cdef bint plausible_dataset_start(Source* s) noexcept nogil:
    """Whether a file without preamble starts like a data set (groups 0002-0010)."""
    cdef const uint8_t* p = src_at(s, 0, 8)
    cdef uint16_t group_le, group_be
    if p == NULL:
        return False
    group_le = rd16(p, True)
    group_be = rd16(p, False)
    return ((0x0002 <= group_le <= 0x0010 and group_le % 2 == 0)
            or (0x0002 <= group_be <= 0x0010 and group_be % 2 == 0))


cdef void guess_syntax(ScanState* st) noexcept nogil:
    """Choose the encoding of a data set that has no transfer syntax, as pydicom does."""
    cdef const uint8_t* p = src_at(&st.src, st.dataset_offset, 8)
    if p == NULL:
        st.explicit = False
        st.little = True
        return
    st.explicit = is_vr_letter(p[4]) and is_vr_letter(p[5])
    # A big-endian group number reads as a large little-endian one.
    st.little = rd16(p, True) <= rd16(p, False)


cdef int parse_body(ScanState* st) noexcept nogil:
    cdef int64_t end
    cdef const uint8_t* p
    if st.explicit:
        # Some writers label an implicit VR data set as explicit; detect it the
        # way pydicom does, from the first element.
        p = src_at(&st.src, st.dataset_offset, 6)
        if p != NULL and not (is_vr_letter(p[4]) and is_vr_letter(p[5])):
            st.explicit = False
    return parse_dataset(st, st.dataset_offset, st.src.size, st.explicit, st.little, 0, &end)


cdef bint uid_is(const uint8_t* p, int64_t n, const char* uid, int64_t uid_len) noexcept nogil:
    while n > 0 and (p[n - 1] == 0 or p[n - 1] == 0x20):
        n -= 1
    return n == uid_len and memcmp(p, uid, n) == 0


cdef int find_syntax(ScanState* st) noexcept nogil:
    """Set st.syntax from the file meta Transfer Syntax UID."""
    cdef Py_ssize_t i
    cdef const uint8_t* p
    cdef Element* e
    st.syntax = SYNTAX_GUESSED
    for i in range(st.n_elems):
        e = &st.elems[i]
        if e.tag != TRANSFER_SYNTAX_UID or e.value_length == 0:
            continue
        p = src_at(&st.src, e.value_offset, e.value_length)
        if p == NULL:
            return fail(st, e.value_offset, "cannot read the transfer syntax")
        if uid_is(p, e.value_length, b"1.2.840.10008.1.2", 17):
            st.syntax = SYNTAX_IMPLICIT_LE
        elif uid_is(p, e.value_length, b"1.2.840.10008.1.2.2", 19):
            st.syntax = SYNTAX_EXPLICIT_BE
        elif uid_is(p, e.value_length, b"1.2.840.10008.1.2.1.99", 22):
            st.syntax = SYNTAX_DEFLATED
        else:
            st.syntax = SYNTAX_EXPLICIT_LE
    return 0


cdef int scan_source(ScanState* st) noexcept nogil:
    """Parse the file meta and (unless deflated, which needs zlib) the data set, and
    copy the kept values."""
    if parse_meta(st) < 0 or find_syntax(st) < 0:
        return -1
    if st.syntax != SYNTAX_DEFLATED:
        if st.syntax == SYNTAX_GUESSED:
            guess_syntax(st)
        else:
            st.explicit = st.syntax != SYNTAX_IMPLICIT_LE
            st.little = st.syntax != SYNTAX_EXPLICIT_BE
        if parse_body(st) < 0:
            return -1
    return copy_values(st)


cdef int copy_values(ScanState* st) noexcept nogil:
    """Copy the kept values (all but the pixel data) and the Basic Offset Table into
    st.values, so that nothing after the parse reads the source. The requested
    values come first, after a Slot per keyword: that part is the Attributes blob."""
    cdef Py_ssize_t i, table = st.n_keywords * sizeof(Slot)
    cdef int64_t at = table
    cdef Element* e
    cdef Slot* s
    cdef const uint8_t* p
    cdef int phase
    for i in range(st.n_elems):
        if is_copied(&st.elems[i]):
            at += st.elems[i].value_length
    if st.encapsulated:
        at += st.bot_length
    st.values = <uint8_t*>malloc(at if at > 0 else 1)
    if st.values == NULL:
        return fail(st, 0, "out of memory")
    memset(st.values, 0, table)
    at = table
    for phase in range(2):  # the requested values first, then the other kept ones
        for i in range(st.n_elems):
            e = &st.elems[i]
            if not is_copied(e) or (e.keyword >= 0) != (phase == 0):
                continue
            if e.value_length:
                p = src_at(&st.src, e.value_offset, e.value_length)
                if p == NULL:
                    st.failed = True
                    st.err_offset = e.value_offset
                    snprintf(st.err_msg, sizeof(st.err_msg),
                             "cannot read the value of (%04X,%04X)", e.tag >> 16, e.tag & 0xFFFF)
                    return -1
                memcpy(st.values + at, p, e.value_length)
            e.copy = at
            at += e.value_length
            if e.keyword < 0:
                continue
            s = (<Slot*>st.values) + e.keyword  # a repeated tag: the last one wins
            s.start = e.copy
            s.length = e.value_length
            # Implicit VR, UN, or a VR that cannot hold this attribute's value
            # (SQ, OB, unknown letters): read it with the dictionary's VR.
            s.vr = e.vr if is_value_vr(e.vr) else st.keyword_vrs[e.keyword]
            s.present = True
            s.fast = is_fast(st.values + e.copy, e.value_length, s.vr)
        if phase == 0:
            st.blob_length = at
    st.bot_copy = at
    if st.encapsulated and st.bot_length:
        p = src_at(&st.src, st.bot_offset, st.bot_length)
        if p == NULL:
            return fail(st, st.bot_offset, "cannot read the Basic Offset Table")
        memcpy(st.values + at, p, st.bot_length)
    return 0


cdef inline bint is_copied(Element* e) noexcept nogil:
    """Every kept value but pixel data (unless requested) is copied."""
    return e.keyword >= 0 or not is_pixel_tag(e.tag)


cdef const char* file_kind(mode_t mode) noexcept nogil:
    """What a file that is not a regular file is (as pacs_engine.sources.file_kind says)."""
    if S_ISDIR(mode):
        return "folder"
    if S_ISFIFO(mode):
        return "fifo"
    if S_ISCHR(mode):
        return "character device"
    if S_ISBLK(mode):
        return "block device"
    if S_ISSOCK(mode):
        return "socket"
    return "unknown file type"


cdef int scan_file(ScanState* st, const char* path) noexcept nogil:
    """Open path and scan it; the descriptor stays open for reading values later."""
    cdef struct_stat info
    # Non-blocking: a fifo put where a file was must not hang the scan (regular files
    # ignore the flag); then anything that is not a regular file is refused.
    st.src.fd = c_open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    if st.src.fd < 0 or fstat(st.src.fd, &info) != 0:
        st.failed = True
        st.err_offset = 0
        snprintf(st.err_msg, sizeof(st.err_msg), "cannot open: %s", strerror(errno))
        return -1
    if not S_ISREG(info.st_mode):
        st.failed = True
        st.err_offset = 0
        snprintf(st.err_msg, sizeof(st.err_msg), "not a regular file: %s", file_kind(info.st_mode))
        return -1
    st.src.size = info.st_size
    return scan_source(st)


cdef void state_init(ScanState* st) noexcept nogil:
    memset(st, 0, sizeof(ScanState))
    st.src.fd = -1
    st.src.roam_start = -1
    st.pixel_index = -1


# --- values -------------------------------------------------------------------

cdef inline bint is_text_vr(uint16_t vr) noexcept nogil:
    return (vr == VR_AE or vr == VR_AS or vr == VR_CS or vr == VR_DA or vr == VR_DT
            or vr == VR_LO or vr == VR_LT or vr == VR_PN or vr == VR_SH or vr == VR_ST
            or vr == VR_TM or vr == VR_UC or vr == VR_UI or vr == VR_UR or vr == VR_UT)


cdef inline bint is_value_vr(uint16_t vr) noexcept nogil:
    """VRs whose values the scanner converts: text and numbers."""
    return (is_text_vr(vr) or vr == VR_DS or vr == VR_IS or vr == VR_US or vr == VR_SS
            or vr == VR_UL or vr == VR_SL or vr == VR_FL or vr == VR_FD)


cdef inline bint is_single_valued_text(uint16_t vr) noexcept nogil:
    return vr == VR_LT or vr == VR_ST or vr == VR_UT or vr == VR_UR


cdef inline Py_ssize_t binary_width(uint16_t vr) noexcept nogil:
    """Bytes per item of a binary number VR, 0 for other VRs."""
    if vr == VR_US or vr == VR_SS:
        return 2
    if vr == VR_UL or vr == VR_SL or vr == VR_FL:
        return 4
    return 8 if vr == VR_FD else 0


cdef inline bint is_blank(uint8_t c) noexcept nogil:
    return c == 0x20 or c == 0x00


cdef inline bint is_space(uint8_t c) noexcept nogil:
    return c == 0x20 or (0x09 <= c <= 0x0D)


cdef inline bint is_digit(uint8_t c) noexcept nogil:
    return 0x30 <= c <= 0x39


cdef inline bint is_sign(uint8_t c) noexcept nogil:
    return c == 0x2B or c == 0x2D


cdef inline void trim_spaces(const uint8_t** p, Py_ssize_t* n) noexcept nogil:
    while n[0] > 0 and is_space(p[0][0]):
        p[0] += 1
        n[0] -= 1
    while n[0] > 0 and is_space(p[0][n[0] - 1]):
        n[0] -= 1


cdef inline void trim_number_value(const uint8_t** p, Py_ssize_t* n) noexcept nogil:
    """pydicom strips an IS or DS value of whitespace, then of trailing blanks."""
    while n[0] > 0 and is_space(p[0][0]):
        p[0] += 1
        n[0] -= 1
    while n[0] > 0 and (is_space(p[0][n[0] - 1]) or p[0][n[0] - 1] == 0):
        n[0] -= 1


cdef bint is_number_list(const uint8_t* p, Py_ssize_t n, bint integer) noexcept nogil:
    """Whether each backslash-separated item of a trimmed IS (integer) or DS value,
    spaces around it aside, is a plain decimal number that strtoll or strtod reads
    whole: [+-]d+ for IS, at most 18 characters; [+-](d+[.d*]|.d+)[(e|E)[+-]d+]
    for DS, under 63. Other values are left to pydicom. One pass."""
    cdef Py_ssize_t i = 0, start, digits
    while True:
        while i < n and is_space(p[i]):
            i += 1
        start = i
        if i < n and is_sign(p[i]):
            i += 1
        digits = 0
        while i < n and is_digit(p[i]):
            i += 1
            digits += 1
        if not integer and i < n and p[i] == 0x2E:
            i += 1
            while i < n and is_digit(p[i]):
                i += 1
                digits += 1
        if digits == 0:
            return False
        if not integer and i < n and (p[i] == 0x45 or p[i] == 0x65):
            i += 1
            if i < n and is_sign(p[i]):
                i += 1
            if i == n or not is_digit(p[i]):
                return False
            while i < n and is_digit(p[i]):
                i += 1
        if i - start >= 63 or (integer and i - start > 18):
            return False
        while i < n and is_space(p[i]):
            i += 1
        if i == n:
            return True
        if p[i] != 0x5C:
            return False
        i += 1


cdef bint is_plain_text(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """No byte >= 0x80 and no ESC (0x1B), tested eight bytes at a time."""
    cdef uint64_t word, escapes
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        escapes = word ^ 0x1B1B1B1B1B1B1B1BULL  # a zero byte where the word has an ESC
        if ((word | ((escapes - 0x0101010101010101ULL) & ~escapes)) & 0x8080808080808080ULL):
            return False
        i += 8
    while i < n:
        if p[i] >= 0x80 or p[i] == 0x1B:
            return False
        i += 1
    return True


cdef bint is_fast(const uint8_t* p, Py_ssize_t n, uint16_t vr) noexcept nogil:
    """Whether fast_value converts the value (else pydicom does): empty values, 7-bit
    text without escape sequences (where every DICOM character set agrees with
    ASCII) but AE, IS and DS whose items are plain numbers, and binary numbers."""
    cdef Py_ssize_t width
    if n == 0:
        return True
    if not (is_text_vr(vr) or vr == VR_DS or vr == VR_IS):
        width = binary_width(vr)
        return width > 0 and n % width == 0
    if not (vr == VR_DS or vr == VR_IS):
        # pydicom strips each AE value on both sides: rare, leave it to pydicom
        return vr != VR_AE and is_plain_text(p, n)
    # Plain numbers are ASCII, so they need no test for other bytes.
    trim_number_value(&p, &n)
    return is_number_list(p, n, vr == VR_IS)


cdef object number_from_text(const uint8_t* p, Py_ssize_t n, bint integer):
    """An IS or DS item that is_number_list accepts (spaces around it allowed)."""
    cdef char buf[64]
    trim_spaces(&p, &n)
    memcpy(buf, p, n)
    buf[n] = 0
    if integer:
        return PyLong_FromLongLong(strtoll(buf, NULL, 10))
    return PyFloat_FromDouble(strtod(buf, NULL))


cdef object text_items(const uint8_t* p, Py_ssize_t n):
    """Backslash-separated ASCII values: one str, or a list of them."""
    cdef Py_ssize_t i, start = 0
    cdef list items
    for i in range(n):
        if p[i] == 0x5C:
            break
    else:
        return PyUnicode_DecodeASCII(<const char*>p, n, NULL)
    items = []
    for i in range(n + 1):
        if i == n or p[i] == 0x5C:
            items.append(PyUnicode_DecodeASCII(<const char*>(p + start), i - start, NULL))
            start = i + 1
    return items


cdef object number_items(const uint8_t* p, Py_ssize_t n, bint integer):
    """Backslash-separated IS or DS values: one number, or a list."""
    cdef Py_ssize_t i, start = 0
    cdef list items = []
    for i in range(n + 1):
        if i == n or p[i] == 0x5C:
            items.append(number_from_text(p + start, i - start, integer))
            start = i + 1
    return items[0] if len(items) == 1 else items


cdef object binary_items(const uint8_t* p, Py_ssize_t n, uint16_t vr, bint little):
    """US, SS, UL, SL, FL and FD values: one number, or a list."""
    cdef Py_ssize_t i, count = n // binary_width(vr)
    cdef list items = []
    for i in range(count):
        if vr == VR_US:
            items.append(rd16(p + i * 2, little))
        elif vr == VR_SS:
            items.append(<short>rd16(p + i * 2, little))
        elif vr == VR_UL:
            items.append(rd32(p + i * 4, little))
        elif vr == VR_SL:
            items.append(<int>rd32(p + i * 4, little))
        elif vr == VR_FL:
            items.append(as_float(rd32(p + i * 4, little)))
        else:
            items.append(as_double(rd64(p + i * 8, little)))
    return items[0] if count == 1 else items


cdef object fast_value(const uint8_t* p, Py_ssize_t n, uint16_t vr, bint little):
    """The value as pydicom gives it, for a value is_fast accepts."""
    if n == 0:
        return "" if is_text_vr(vr) else None
    if vr == VR_DS or vr == VR_IS:
        trim_number_value(&p, &n)
        return number_items(p, n, vr == VR_IS)
    if not is_text_vr(vr):
        return binary_items(p, n, vr, little)
    while n > 0 and is_blank(p[n - 1]):
        n -= 1
    if is_single_valued_text(vr):
        return PyUnicode_DecodeASCII(<const char*>p, n, NULL)
    return text_items(p, n)


cdef inline double as_float(uint32_t bits) noexcept nogil:
    cdef float f
    memcpy(&f, &bits, 4)
    return f


cdef inline double as_double(uint64_t bits) noexcept nogil:
    cdef double d
    memcpy(&d, &bits, 8)
    return d


cdef inline uint16_t vr_code(str vr):
    return (ord(vr[0]) << 8) | ord(vr[1])


cdef str vr_text(uint16_t vr):
    cdef char letters[2]
    letters[0] = vr >> 8
    letters[1] = vr & 0xFF
    return PyUnicode_DecodeASCII(letters, 2, "replace")


cdef object MISSING = object()


@cython.final
cdef class Attributes:
    """The requested attributes of one file: a read-only mapping of keyword to value.

    It holds one bytes object per file, a `Slot` per requested keyword followed by
    the value bytes, and turns a value into a Python object when it is first read
    (then keeps it). The values the native rules leave to pydicom (non-ASCII text,
    odd numbers) are converted during the scan instead, so that a value pydicom
    cannot convert is still a ScanError of the scan. Iteration follows tag order.
    """

    cdef Scanner scanner
    cdef bytes blob
    cdef bint little
    cdef Py_ssize_t count
    cdef dict converted       # keyword -> value, for the values read so far

    cdef inline const Slot* slot(self, Py_ssize_t k):
        return (<const Slot*><const char*>self.blob) + k

    cdef inline Py_ssize_t present(self, keyword):
        """The index of keyword if the file has it, else -1."""
        cdef object k = self.scanner.index.get(keyword)
        if k is None or not self.slot(k).present:
            return -1
        return k

    cdef object value(self, Py_ssize_t k):
        cdef const Slot* s
        keyword = self.scanner.keywords[k]
        value = self.converted.get(keyword, MISSING)
        if value is MISSING:
            s = self.slot(k)
            value = fast_value(<const uint8_t*><const char*>self.blob + s.start, s.length, s.vr,
                               self.little)
            self.converted[keyword] = value
        return value

    def __getitem__(self, keyword):
        cdef Py_ssize_t k = self.present(keyword)
        if k < 0:
            raise KeyError(keyword)
        return self.value(k)

    def get(self, keyword, default=None):
        cdef Py_ssize_t k = self.present(keyword)
        return default if k < 0 else self.value(k)

    def __contains__(self, keyword):
        return self.present(keyword) >= 0

    def __len__(self):
        return self.count

    def __iter__(self):
        cdef Py_ssize_t k
        return iter([self.scanner.keywords[k] for k in range(self.scanner.n_tags)
                     if self.slot(k).present])

    def copy(self):
        """Every attribute, converted, in a new dict."""
        cdef Py_ssize_t k
        return {self.scanner.keywords[k]: self.value(k) for k in range(self.scanner.n_tags)
                if self.slot(k).present}

    def keys(self):
        return self.copy().keys()

    def values(self):
        return self.copy().values()

    def items(self):
        return self.copy().items()

    def __eq__(self, other):
        if isinstance(other, Attributes):
            other = other.copy()
        return self.copy() == other

    __hash__ = None

    def __repr__(self):
        return repr(self.copy())

    def __reduce__(self):
        return dict, (self.copy(),)


Mapping.register(Attributes)


cdef class _Inflater:
    """Inflates a deflated data set from a source, a bounded amount per call."""

    cdef Scanner scanner
    cdef ScanState* st
    cdef object path
    cdef int64_t pos
    cdef object inflater
    cdef public bint done

    def __cinit__(self, Scanner scanner, *args):
        self.scanner = scanner

    cdef void start(self, ScanState* st, path, int64_t pos):
        self.st = st
        self.path = path
        self.pos = pos
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.done = False

    cdef bytes read(self, Py_ssize_t most):
        """Up to `most` more inflated bytes; sets done at the end of the stream."""
        cdef int64_t n
        while True:
            try:
                if self.inflater.eof:  # bytes after the stream's end are not data
                    self.done = True
                    return b""
                if self.inflater.unconsumed_tail:
                    out = self.inflater.decompress(self.inflater.unconsumed_tail, most)
                elif self.pos < self.st.src.size:
                    n = min(INFLATE_STEP, self.st.src.size - self.pos)
                    compressed = self.scanner.read_bytes(self.st, self.pos, n)
                    self.pos += n
                    out = self.inflater.decompress(compressed, most)
                else:
                    self.done = True
                    return b""
            except zlib.error as exc:
                raise ScanError(self.path, self.pos, f"deflated data set cannot be inflated: "
                                f"{exc}") from None
            if out:
                return out


cdef class Scanner:
    """Scans DICOM headers for a fixed set of attributes.

    `keywords`, `tags` and `vrs` name the attributes, their tags and their
    dictionary VRs (used for implicit VR data and for UN). `slow_value` is
    called as slow_value(vr, raw_bytes, little_endian, character_sets) for the
    values the native fast path leaves to pydicom (non-ASCII text, odd numbers).
    Keywords are indexed in tag order.
    """

    cdef uint16_t* vrs          # by keyword index
    cdef Py_ssize_t n_tags
    cdef list keywords          # by keyword index
    cdef dict index             # keyword -> keyword index
    cdef uint32_t* kept         # sorted: the requested tags, and those the results need
    cdef int* kept_keyword      # for each kept tag, its keyword index or -1
    cdef Py_ssize_t n_kept
    cdef object slow_value

    def __cinit__(self, keywords, tags, vrs, slow_value):
        cdef Py_ssize_t i
        order = sorted(range(len(tags)), key=lambda k: tags[k])
        needed = {SPECIFIC_CHARACTER_SET, EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS,
                  PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA}
        kept = sorted(set(tags) | needed)
        self.n_tags = len(tags)
        self.n_kept = len(kept)
        self.vrs = <uint16_t*>malloc(max(1, self.n_tags) * sizeof(uint16_t))
        self.kept = <uint32_t*>malloc(self.n_kept * sizeof(uint32_t))
        self.kept_keyword = <int*>malloc(self.n_kept * sizeof(int))
        if self.vrs == NULL or self.kept == NULL or self.kept_keyword == NULL:
            raise MemoryError()
        self.keywords = [keywords[k] for k in order]
        self.index = {keyword: i for i, keyword in enumerate(self.keywords)}
        for i, k in enumerate(order):
            self.vrs[i] = vr_code(vrs[k])
        by_tag = {tags[k]: i for i, k in enumerate(order)}
        for i, tag in enumerate(kept):
            self.kept[i] = tag
            self.kept_keyword[i] = by_tag.get(tag, -1)
        self.slow_value = slow_value

    def __dealloc__(self):
        free(self.vrs)
        free(self.kept)
        free(self.kept_keyword)

    cdef void prepare(self, ScanState* st) noexcept:
        state_init(st)
        st.kept = self.kept
        st.kept_keyword = self.kept_keyword
        st.n_kept = self.n_kept
        st.keyword_vrs = self.vrs
        st.n_keywords = self.n_tags

    def scan_paths(self, list paths):
        """Scan each file; per path, the result tuple (see scan_buffer) or a ScanError.

        The whole batch is parsed in one release of the GIL, in one head buffer that
        each file hands on to the next once its kept values are copied (so a batch
        does not hold a header's worth of memory per file).
        """
        cdef Py_ssize_t i, n = len(paths)
        cdef uint8_t* head = NULL
        cdef int64_t head_cap = 0
        cdef list encoded = [p if isinstance(p, bytes) else os.fsencode(p) for p in paths]
        cdef const char** c_paths = <const char**>malloc(max(1, n) * sizeof(char*))
        cdef ScanState* states = <ScanState*>malloc(max(1, n) * sizeof(ScanState))
        if c_paths == NULL or states == NULL:
            free(c_paths)
            free(states)
            raise MemoryError()
        for i in range(n):
            c_paths[i] = <bytes>encoded[i]
            self.prepare(&states[i])
        cdef list results = []
        try:
            with nogil:
                for i in range(n):
                    states[i].src.head = head
                    states[i].src.head_cap = head_cap
                    scan_file(&states[i], c_paths[i])
                    head = states[i].src.head
                    head_cap = states[i].src.head_cap
                    states[i].src.head = NULL
                    states[i].src.head_len = 0
                    states[i].src.head_cap = 0
            for i in range(n):
                try:
                    results.append(self.finish(&states[i], paths[i]))
                except ScanError as error:
                    results.append(error)
                state_free(&states[i])
        finally:
            for i in range(n):
                state_free(&states[i])
            free(states)
            free(c_paths)
            free(head)
        return results

    def scan_path(self, str path):
        """Scan one file; raises ScanError. Returns the result tuple (see scan_buffer)."""
        cdef bytes encoded = PyUnicode_EncodeFSDefault(path)
        cdef const char* c_path = encoded
        cdef ScanState st
        self.prepare(&st)
        try:
            with nogil:
                scan_file(&st, c_path)
            return self.finish(&st, path)
        finally:
            state_free(&st)

    def scan_buffer(self, const uint8_t[::1] data not None, path=None):
        """Scan bytes already in memory; raises ScanError.

        Returns (attributes, transfer_syntax_uid, has_preamble, has_meta,
        dataset_offset, explicit_vr, little_endian, deflated, file_size, data_size,
        pixel): attributes is an `Attributes` mapping; data_size is the size of the
        inflated data for a deflated file; pixel is None or (tag, vr,
        element_offset, value_offset, value_length, encapsulated, bot_offset,
        bot_bytes, fragment_offsets, fragment_lengths, fragment_eoi,
        extended_offset_table).
        """
        cdef ScanState st
        self.prepare(&st)
        st.src.mem = &data[0] if data.shape[0] > 0 else NULL
        st.src.size = data.shape[0]
        try:
            with nogil:
                scan_source(&st)
            return self.finish(&st, path)
        finally:
            state_free(&st)

    cdef tuple finish(self, ScanState* st, path):
        if st.failed:
            raise self.error(st, path)
        ts = self.meta_transfer_syntax(st)
        if st.syntax == SYNTAX_DEFLATED:
            return self.run_deflated(st, path, ts)
        return self.collect(st, path, ts, False)

    cdef tuple run_deflated(self, ScanState* st, path, ts):
        """Inflate the data set in bounded steps and scan it; offsets count in the inflated bytes.

        Memory stays bounded whatever the file claims: the inflated header is kept
        (up to DEFLATED_HEADER_MAX), the pixel data value is inflated and dropped,
        and what follows it is kept (up to DEFLATED_TAIL_MAX).
        """
        cdef int64_t start = st.dataset_offset
        cdef _Inflater stream = _Inflater(self)
        stream.start(st, path, start)
        head = bytearray(self.read_bytes(st, 0, start))
        step = INFLATE_STEP
        while True:
            result = self.scan_inflated(head, None, 0, len(head), path, ts, start,
                                        final=stream.done)
            if isinstance(result, tuple):
                return self.with_file_size(result, st.src.size)
            if stream.done:
                raise result
            if result > 0:
                break  # the pixel data runs past what is inflated: skip it
            if len(head) > DEFLATED_HEADER_MAX:
                raise ScanError(path, start, "the deflated data set inflates past "
                                f"{DEFLATED_HEADER_MAX >> 20} MiB before its pixel data")
            head += stream.read(step)
            step *= 2
        pixel_end = result
        total = len(head)
        tail = bytearray()
        while not stream.done:
            chunk = stream.read(INFLATE_STEP)
            if total + len(chunk) > pixel_end:
                tail += chunk[max(0, pixel_end - total):]
            total += len(chunk)
            if len(tail) > DEFLATED_TAIL_MAX:
                raise ScanError(path, start, "the deflated data set holds more than "
                                f"{DEFLATED_TAIL_MAX >> 20} MiB after its pixel data")
        result = self.scan_inflated(head, tail, pixel_end, total, path, ts, start, final=True)
        if isinstance(result, tuple):
            return self.with_file_size(result, st.src.size)
        raise result

    cdef tuple with_file_size(self, tuple result, int64_t size):
        """The result of scanning inflated bytes, with the size of the file itself."""
        return (*result[:8], size, *result[9:])

    cdef object scan_inflated(self, bytearray head, tail, int64_t tail_start, int64_t size,
                              path, ts, int64_t start, bint final):
        """Scan inflated bytes: a result tuple, a ScanError, or (not final) the end
        of a pixel data value that runs past the bytes inflated so far (0 if none)."""
        cdef ScanState inner
        self.prepare(&inner)
        try:
            inner.src.head = <uint8_t*>malloc(max(1, len(head)))
            inner.src.roam = <uint8_t*>malloc(max(1, len(tail) if tail is not None else 0))
            if inner.src.head == NULL or inner.src.roam == NULL:
                raise MemoryError()
            if len(head):
                memcpy(inner.src.head, <const char*>head, len(head))
            inner.src.head_len = len(head)
            inner.src.size = size
            if tail is not None:
                if len(tail):
                    memcpy(inner.src.roam, <const char*>tail, len(tail))
                inner.src.roam_start = tail_start
                inner.src.roam_len = len(tail)
            with nogil:
                if parse_meta(&inner) == 0:
                    inner.explicit = True
                    inner.little = True
                    if parse_body(&inner) == 0:
                        copy_values(&inner)
            if inner.failed:
                if not final:
                    return inner.pixel_end_beyond
                raise self.error(&inner, path)
            if not final:
                return 0
            return self.collect(&inner, path, ts, True)
        except ScanError as error:
            # Offsets past the file meta count in the inflated bytes; point at the
            # start of the deflated stream so that the offset lies in the input.
            return ScanError(path, start, f"{error.reason} (at byte {error.offset} of the "
                             "inflated data set)")
        finally:
            state_free(&inner)

    cdef object meta_transfer_syntax(self, ScanState* st):
        cdef Py_ssize_t i, n
        cdef const uint8_t* p
        for i in range(st.n_elems):
            if st.elems[i].tag == TRANSFER_SYNTAX_UID:
                p = st.values + st.elems[i].copy
                n = st.elems[i].value_length
                while n > 0 and is_blank(p[n - 1]):
                    n -= 1
                return PyUnicode_DecodeASCII(<const char*>p, n, "replace")
        return None

    cdef object error(self, ScanState* st, path):
        return ScanError(path, st.err_offset, st.err_msg.decode("utf-8", "replace"))

    cdef tuple collect(self, ScanState* st, path, ts, bint deflated):
        return (self.attributes(st, path), ts, st.has_preamble, st.has_meta, st.dataset_offset,
                st.explicit, st.little, deflated, st.src.size, st.src.size,
                self.pixel_location(st))

    cdef Attributes attributes(self, ScanState* st, path):
        """The Attributes of copy_values' blob; convert the values left to pydicom."""
        cdef Py_ssize_t k
        cdef const Slot* s
        cdef Attributes result = Attributes.__new__(Attributes)
        result.scanner = self
        result.blob = PyBytes_FromStringAndSize(<const char*>st.values, st.blob_length)
        result.little = st.little
        result.converted = {}
        charsets = MISSING
        for k in range(self.n_tags):
            s = result.slot(k)
            if not s.present:
                continue
            result.count += 1
            if s.fast:
                continue
            if charsets is MISSING:
                charsets = self.character_sets(st, path)
            result.converted[self.keywords[k]] = self.slow(st, self.last_element(st, k), s.vr,
                                                           charsets, path)
        return result

    cdef Element* last_element(self, ScanState* st, Py_ssize_t k):
        """The element whose value requested keyword k has (the last with its tag)."""
        cdef Py_ssize_t i = st.n_elems - 1
        while st.elems[i].keyword != k:
            i -= 1
        return &st.elems[i]

    cdef object character_sets(self, ScanState* st, path):
        """The Specific Character Set, as the slow path takes it (None when absent)."""
        cdef Py_ssize_t i
        cdef Element* e
        cdef const uint8_t* p
        for i in range(st.n_elems):
            e = &st.elems[i]
            if e.tag != SPECIFIC_CHARACTER_SET:
                continue
            if e.value_length == 0:
                return ""
            p = st.values + e.copy
            if is_fast(p, e.value_length, VR_CS):
                return fast_value(p, e.value_length, VR_CS, st.little)
            return self.slow(st, e, VR_CS, None, path)
        return None

    cdef object slow(self, ScanState* st, Element* e, uint16_t vr, charsets, path):
        """pydicom's conversion of the value of element e."""
        raw = PyBytes_FromStringAndSize(<const char*>st.values + e.copy, e.value_length)
        try:
            return self.slow_value(vr_text(vr), raw, st.little, charsets)
        except Exception as exc:  # pydicom's converters raise many kinds on bad bytes
            raise ScanError(path, e.header_offset, f"cannot convert the {vr_text(vr)} value "
                            f"of ({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}): {exc!r}") from None

    cdef object pixel_location(self, ScanState* st):
        cdef Element* e
        cdef Py_ssize_t i
        if st.pixel_index < 0:
            return None
        e = &st.elems[st.pixel_index]
        vr = vr_text(e.vr) if e.vr else None
        if not st.encapsulated:
            return (e.tag, vr, e.header_offset, e.value_offset, e.value_length, False,
                    -1, None, None, None, None, None)
        offsets = np.empty(st.n_frags, dtype=np.int64)
        lengths = np.empty(st.n_frags, dtype=np.int64)
        eoi = np.empty(st.n_frags, dtype=np.bool_)
        cdef int64_t[::1] o = offsets
        cdef int64_t[::1] n = lengths
        cdef uint8_t[::1] z = eoi.view(np.uint8)
        for i in range(st.n_frags):
            o[i] = st.frags[i].offset
            n[i] = st.frags[i].length
            z[i] = st.frags[i].ends_with_eoi
        bot = PyBytes_FromStringAndSize(<const char*>st.values + st.bot_copy, st.bot_length)
        return (e.tag, vr, e.header_offset, e.value_offset, e.value_length, True,
                st.bot_offset, bot, offsets, lengths, eoi, self.extended_offset_table(st))

    cdef bytes copied_value(self, ScanState* st, Element* e):
        return PyBytes_FromStringAndSize(<const char*>st.values + e.copy, e.value_length)

    cdef bytes read_bytes(self, ScanState* st, int64_t offset, int64_t length):
        cdef const uint8_t* p = src_at(&st.src, offset, length)
        if p == NULL:
            raise ScanError(None, offset, "cannot read bytes")
        return PyBytes_FromStringAndSize(<const char*>p, length)

    cdef object extended_offset_table(self, ScanState* st):
        """Raw bytes of (Extended Offset Table, Extended Offset Table Lengths), or None."""
        cdef Py_ssize_t i
        table = lengths = None
        for i in range(st.n_elems):
            if st.elems[i].tag == EXTENDED_OFFSET_TABLE:
                table = self.copied_value(st, &st.elems[i])
            elif st.elems[i].tag == EXTENDED_OFFSET_TABLE_LENGTHS:
                lengths = self.copied_value(st, &st.elems[i])
        if table is None or lengths is None:
            return None
        return table, lengths
