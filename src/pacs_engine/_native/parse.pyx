# cython: language_level=3
"""The DICOM parser: walks a source without the GIL and records what the results need.

It fills a `ScanState` (parse.pxd): the file meta, the kept top-level elements, the
pixel data location and every fragment of encapsulated pixel data; `copy_values`
then copies the kept values out of the source.
"""

from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, realloc
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

from pacs_engine._native.dicom cimport (
    ITEM,
    ITEM_DELIMITER,
    META_GROUP,
    SEQUENCE_DELIMITER,
    TRANSFER_SYNTAX_UID,
    UNDEFINED,
    VR_SQ,
    VR_UN,
    has_long_length,
    is_pixel_tag,
    is_value_vr,
    is_vr_letter,
    rd16,
    rd32,
)
from pacs_engine._native.values cimport is_fast
from pacs_engine._native.window cimport Source, src_at, src_free

cdef extern from "fcntl.h":
    enum: O_CLOEXEC

cdef enum:
    MAX_DEPTH = 64                 # nested sequences deeper than this are refused


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


cdef void state_free(ScanState* st) noexcept nogil:
    src_free(&st.src)
    free(st.elems)
    free(st.frags)
    free(st.values)
    st.elems = NULL
    st.frags = NULL
    st.values = NULL


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
