# The source a scan reads: a memory buffer, or a file descriptor read through two
# windows (the head, grown while parsing the header, and a roaming page past it).
#
# All of it is `cdef inline`, compiled into each module that cimports it: a call
# into another extension goes through a function pointer table and, on a cold
# cache (a scan between other work), the measured cost of the split was the
# calls and code spread over more modules. `src_at` (the common case: bytes
# already in the head, or a buffer) comes first; `src_fill` does the reads.

from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, realloc
from posix.unistd cimport close, pread


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


cdef enum:
    HEAD_FIRST_READ = 16384        # most headers fit; the head grows by half when not
    HEAD_FIRST_CAPACITY = 32768    # the head's first allocation: room to grow without copying
    HEAD_MAX = 64 * 1024 * 1024    # contiguous header window, at most
    ROAM_READ = 4096               # one page for each read past the header


cdef inline int read_full(int fd, uint8_t* dst, int64_t n, int64_t pos) noexcept nogil:
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


cdef inline const uint8_t* src_fill(Source* s, int64_t pos, int64_t n) noexcept nogil:
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


cdef inline void src_free(Source* s) noexcept nogil:
    """Close the file and free both windows."""
    if s.fd >= 0:
        close(s.fd)
        s.fd = -1
    free(s.head)
    free(s.roam)
    s.head = NULL
    s.roam = NULL
