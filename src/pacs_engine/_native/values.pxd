# Value conversion: which values the native rules convert (without the GIL, while
# the parser copies them) and the conversion itself, to the Python objects pydicom
# gives for them.

from libc.stdint cimport uint8_t, uint16_t


cdef bint is_fast(const uint8_t* p, Py_ssize_t n, uint16_t vr) noexcept nogil
cdef object fast_value(const uint8_t* p, Py_ssize_t n, uint16_t vr, bint little)
