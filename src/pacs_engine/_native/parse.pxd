# The nogil DICOM parser: the typed seam between the parse and the Python classes.
#
# The parser runs without the GIL on a `Source` (a memory buffer or a file
# descriptor read through two windows, window.pxd) and fills a `ScanState`: the
# top-level elements, the pixel data location and, for encapsulated pixel data,
# every fragment. The kept values are then copied out of the source, still without
# the GIL (`copy_values`), so the source's buffers can serve the next file: first a
# `Slot` per requested keyword and their values, which become the bytes of the
# file's `Attributes` (converted to Python objects when first read), then the
# other kept values and the Basic Offset Table.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t

from pacs_engine._native.window cimport Source


cdef enum TransferSyntax:
    SYNTAX_GUESSED          # no transfer syntax in the file meta
    SYNTAX_IMPLICIT_LE
    SYNTAX_EXPLICIT_LE      # and every compressed syntax
    SYNTAX_EXPLICIT_BE
    SYNTAX_DEFLATED


cdef struct Element:
    uint32_t tag
    int keyword             # index of the requested keyword, or -1
    uint16_t vr             # two ASCII letters, big-endian packed; 0 when implicit
    int64_t header_offset   # first byte of the tag
    int64_t value_offset
    int64_t value_length    # bytes, delimiters included for undefined length
    int64_t copy            # where copy_values put the value in ScanState.values


cdef struct Fragment:
    int64_t offset          # first byte of the fragment's value
    int64_t length
    bint ends_with_eoi      # JPEG EOI (FFD9) among its last 10 bytes


cdef struct ScanState:
    Source src
    bint has_preamble
    bint has_meta
    int64_t dataset_offset
    int syntax              # a TransferSyntax value
    bint explicit
    bint little
    const uint32_t* kept    # sorted tags recorded at the top level (see Scanner.kept)
    const int* kept_keyword # for each, the index of its requested keyword, or -1
    Py_ssize_t n_kept
    const uint16_t* keyword_vrs  # dictionary VR of each requested keyword
    Py_ssize_t n_keywords
    Py_ssize_t cursor       # the first kept tag above the last top-level tag
    Element* elems          # kept top-level elements: file meta, requested, pixel data
    Py_ssize_t n_elems
    Py_ssize_t cap_elems
    Py_ssize_t pixel_index  # index in elems of the pixel data element, or -1
    bint encapsulated
    int64_t bot_offset      # Basic Offset Table item value
    int64_t bot_length
    Fragment* frags
    Py_ssize_t n_frags
    Py_ssize_t cap_frags
    int64_t pixel_end_beyond  # end of a pixel data value that runs past the data, or 0
    uint8_t* values         # copy_values: Slot table, requested values, other kept values, BOT
    int64_t blob_length     # the Attributes part of values: the table and requested values
    int64_t bot_copy        # where the Basic Offset Table is in values
    bint failed
    int64_t err_offset
    char err_msg[192]


cdef struct Slot:           # one requested keyword's value in an Attributes blob
    int64_t start           # first byte of the value in the blob
    int64_t length
    uint16_t vr             # the VR the value is read with
    bint present            # the file has the attribute
    bint fast               # fast_value converts it (else pydicom does, during the scan)


cdef void state_init(ScanState* st) noexcept nogil
cdef void state_free(ScanState* st) noexcept nogil
cdef int scan_file(ScanState* st, const char* path) noexcept nogil
cdef int scan_source(ScanState* st) noexcept nogil
cdef int parse_meta(ScanState* st) noexcept nogil
cdef int parse_body(ScanState* st) noexcept nogil
cdef int copy_values(ScanState* st) noexcept nogil
