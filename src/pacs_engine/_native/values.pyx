# cython: language_level=3
"""Value conversion: `fast_value` turns a value the native rules accept (`is_fast`,
inline in values.pxd) into the Python object pydicom gives for it."""

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


cdef inline void trim_spaces(const uint8_t** p, Py_ssize_t* n) noexcept nogil:
    while n[0] > 0 and is_space(p[0][0]):
        p[0] += 1
        n[0] -= 1
    while n[0] > 0 and is_space(p[0][n[0] - 1]):
        n[0] -= 1


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
