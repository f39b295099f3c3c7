# The source a scan reads: a memory buffer, or a file descriptor read through two
# windows (the head, grown while parsing the header, and a roaming page past it).
#
# `src_at` is inline, so the parser's common case (bytes already in the head, or a
# buffer) costs a compare; only `src_fill`, the reads, is a call into window.pyx.

from libc.stdint cimport int64_t, uint8_t


cdef struct Source:
    int fd                  # -1: read from `mem`
    const uint8_t* mem
    int64_t size
    uint8_t* head           # file bytes [0, head_len), grown while parsing the header
    int64_t head_len
    int64_t head_cap
    bint head_frozen        # past the pixel data: further reads go to `roam`
    uint8_t* roam           # file bytes [roam_start, roam_start + roam_len)
    int64_t roam_start
    int64_t roam_len
    int64_t roam_cap
    int io_errno


cdef const uint8_t* src_fill(Source* s, int64_t pos, int64_t n) noexcept nogil
cdef void src_free(Source* s) noexcept nogil


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
