# Value conversion: which values the native rules convert and the conversion itself,
# to the Python objects pydicom gives for them.
#
# The rules (`is_fast` and its helpers) run without the GIL while the parser copies
# the values, so they are `cdef inline`, compiled into the parser; `fast_value`,
# which builds Python objects, is values.pyx's.

from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy

from pacs_engine._native.dicom cimport (
    VR_AE,
    VR_DS,
    VR_FD,
    VR_FL,
    VR_IS,
    VR_SL,
    VR_SS,
    VR_UL,
    VR_US,
    is_text_vr,
)


cdef object fast_value(const uint8_t* p, Py_ssize_t n, uint16_t vr, bint little)


cdef inline Py_ssize_t binary_width(uint16_t vr) noexcept nogil:
    """Bytes per item of a binary number VR, 0 for other VRs."""
    if vr == VR_US or vr == VR_SS:
        return 2
    if vr == VR_UL or vr == VR_SL or vr == VR_FL:
        return 4
    return 8 if vr == VR_FD else 0


cdef inline bint is_space(uint8_t c) noexcept nogil:
    return c == 0x20 or (0x09 <= c <= 0x0D)


cdef inline bint is_digit(uint8_t c) noexcept nogil:
    return 0x30 <= c <= 0x39


cdef inline bint is_sign(uint8_t c) noexcept nogil:
    return c == 0x2B or c == 0x2D


cdef inline void trim_number_value(const uint8_t** p, Py_ssize_t* n) noexcept nogil:
    """pydicom strips an IS or DS value of whitespace, then of trailing blanks."""
    while n[0] > 0 and is_space(p[0][0]):
        p[0] += 1
        n[0] -= 1
    while n[0] > 0 and (is_space(p[0][n[0] - 1]) or p[0][n[0] - 1] == 0):
        n[0] -= 1


cdef inline bint is_number_list(const uint8_t* p, Py_ssize_t n, bint integer) noexcept nogil:
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


cdef inline bint is_plain_text(const uint8_t* p, Py_ssize_t n) noexcept nogil:
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


cdef inline bint is_fast(const uint8_t* p, Py_ssize_t n, uint16_t vr) noexcept nogil:
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
