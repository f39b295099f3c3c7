# cython: language_level=3
"""Value conversion: the native rules for which values to convert, and the conversion.

`is_fast` runs without the GIL while the parser copies the values; `fast_value`
turns one into the Python object pydicom gives for it.
"""

from cpython.float cimport PyFloat_FromDouble
from cpython.long cimport PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport strtod, strtoll
from libc.string cimport memcpy

from pacs_engine._native.dicom cimport (
    VR_AE,
    VR_DS,
    VR_FD,
    VR_FL,
    VR_IS,
    VR_LT,
    VR_SL,
    VR_SS,
    VR_ST,
    VR_UL,
    VR_UR,
    VR_US,
    VR_UT,
    is_blank,
    is_text_vr,
    rd16,
    rd32,
    rd64,
)


cdef inline bint is_single_valued_text(uint16_t vr) noexcept nogil:
    return vr == VR_LT or vr == VR_ST or vr == VR_UT or vr == VR_UR


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
