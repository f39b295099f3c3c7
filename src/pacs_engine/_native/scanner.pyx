# cython: language_level=3
"""Native DICOM header scanner: the Python classes over the nogil parser.

`Scanner` reads the header of a DICOM file (a path or a buffer) and returns a
`ScanResult`: the requested attributes (an `Attributes` mapping that converts each
value on first read), the layout facts, and the exact byte location of the pixel
data (`PixelScan`). The byte-level parse (parse.pyx, over the windows of
window.pxd) and the copy of the requested values run without the GIL; building
the Python results (values.pyx converts the values) holds it.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import os
import zlib
from collections.abc import Mapping

from pacs_engine.errors import ScanError

from pacs_engine._native.dicom cimport (
    DOUBLE_FLOAT_PIXEL_DATA,
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    FLOAT_PIXEL_DATA,
    PIXEL_DATA,
    SPECIFIC_CHARACTER_SET,
    TRANSFER_SYNTAX_UID,
    VR_CS,
    is_blank,
)
from pacs_engine._native.parse cimport (
    SYNTAX_DEFLATED,
    Element,
    ScanState,
    Slot,
    copy_values,
    parse_body,
    parse_meta,
    scan_file,
    scan_source,
    state_free,
    state_init,
)
from pacs_engine._native.values cimport fast_value, is_fast
from pacs_engine._native.window cimport src_at

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object)  # os.fsencode of a str

INFLATE_STEP = 1 << 20                 # deflated data sets are inflated this much at a time
DEFLATED_HEADER_MAX = 64 << 20         # inflated bytes before the pixel data, at most
DEFLATED_TAIL_MAX = 64 << 20           # inflated bytes after the pixel data, at most


cdef inline uint16_t vr_code(str vr):
    return (ord(vr[0]) << 8) | ord(vr[1])


cdef str vr_text(uint16_t vr):
    cdef char letters[2]
    letters[0] = vr >> 8
    letters[1] = vr & 0xFF
    return PyUnicode_DecodeASCII(letters, 2, "replace")


cdef object MISSING = object()


@cython.final
cdef class PixelScan:
    """Where the pixel data element is, as the scan found it (offsets in the data set).

    For encapsulated data also the Basic Offset Table (its value's offset and raw
    bytes), each fragment's value offset, length and whether it ends with a JPEG
    EOI marker, and the raw (Extended Offset Table, Lengths) values or None.
    """

    cdef readonly uint32_t tag
    cdef readonly object vr                    # two letters, None when implicit
    cdef readonly int64_t element_offset
    cdef readonly int64_t value_offset
    cdef readonly int64_t value_length
    cdef readonly bint encapsulated
    cdef readonly int64_t bot_offset           # -1 for native data
    cdef readonly object bot                   # bytes, None for native data
    cdef readonly object fragment_offsets      # int64 array, None for native data
    cdef readonly object fragment_lengths      # int64 array, None for native data
    cdef readonly object fragment_eoi          # bool array, None for native data
    cdef readonly object extended_offset_table


@cython.final
cdef class ScanResult:
    """What one scan found: the attributes, the layout facts and the pixel data location.

    The names are those of `pacs_engine.header.Header`; `data_size` is the size of
    the inflated data set for a deflated file, else `file_size`.
    """

    cdef readonly Attributes attributes
    cdef readonly object transfer_syntax_uid   # str, None without file meta
    cdef readonly bint has_preamble
    cdef readonly bint has_file_meta
    cdef readonly int64_t dataset_offset
    cdef readonly bint explicit_vr
    cdef readonly bint little_endian
    cdef readonly bint deflated
    cdef readonly int64_t file_size
    cdef readonly int64_t data_size
    cdef readonly PixelScan pixel              # None without pixel data


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
    cdef const uint8_t* data  # the blob's bytes (it lives as long as self): no checks per read
    cdef bint little
    cdef Py_ssize_t count
    cdef dict converted       # keyword -> value, for the values read so far

    cdef inline const Slot* slot(self, Py_ssize_t k) noexcept:
        return (<const Slot*>self.data) + k

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
            value = fast_value(self.data + s.start, s.length, s.vr, self.little)
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
    cdef bint flushed

    def __cinit__(self, Scanner scanner, *args):
        self.scanner = scanner

    cdef void start(self, ScanState* st, path, int64_t pos):
        self.st = st
        self.path = path
        self.pos = pos
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.done = False
        self.flushed = False

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
                elif not self.flushed:
                    # The input is all read, but zlib may still hold output that a
                    # bounded call left (a few hundred bytes: the data set's end).
                    self.flushed = True
                    out = self.inflater.flush()
                    if not out:
                        self.done = True
                        return b""
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

    `scan_path`, `scan_paths` and `scan_buffer` return `ScanResult`s. `header_path`,
    `header_paths` and `header_buffer` return the caller's header instead, built
    here from the result's fields (a Python function reading them by name costs
    more than the rest of the conversion): `header(path, attributes,
    transfer_syntax_uid, has_preamble, has_file_meta, dataset_offset, explicit_vr,
    little_endian, deflated, file_size, pixel, data_size)`, `pixel` being None,
    `native(tag, vr, element_offset, value_offset, value_length)` or
    `encapsulated(pixel_scan, attributes, little_endian)`.
    """

    cdef uint16_t* vrs          # by keyword index
    cdef Py_ssize_t n_tags
    cdef list keywords          # by keyword index
    cdef dict index             # keyword -> keyword index
    cdef uint32_t* kept         # sorted: the requested tags, and those the results need
    cdef int* kept_keyword      # for each kept tag, its keyword index or -1
    cdef Py_ssize_t n_kept
    cdef object slow_value
    cdef object make_header     # the header, native and encapsulated callables above
    cdef object make_native
    cdef object make_encapsulated

    def __cinit__(self, keywords, tags, vrs, slow_value, header, native, encapsulated):
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
        self.make_header = header
        self.make_native = native
        self.make_encapsulated = encapsulated

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
        """Scan each file; per path, a ScanResult or a ScanError."""
        return self.batch(paths, False)

    def header_paths(self, list paths):
        """Scan each file; per path, its header or a ScanError."""
        return self.batch(paths, True)

    cdef list batch(self, list paths, bint headers):
        """Per path, a ScanResult (or with `headers`, a header) or a ScanError.

        The whole batch is parsed in one release of the GIL, in one head buffer that
        each file hands on to the next once its kept values are copied (so a batch
        does not hold a header's worth of memory per file).
        """
        cdef Py_ssize_t i, n = len(paths)
        cdef ScanResult result
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
                    result = self.finish(&states[i], paths[i])
                    results.append(self.header(paths[i], result) if headers else result)
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
        """Scan one file; raises ScanError."""
        return self.finish_path(path)

    def header_path(self, str path):
        """The header of one file; raises ScanError."""
        return self.header(path, self.finish_path(path))

    cdef ScanResult finish_path(self, str path):
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
        """Scan bytes already in memory; raises ScanError."""
        return self.finish_buffer(data, path)

    def header_buffer(self, const uint8_t[::1] data not None, path=None):
        """The header of bytes already in memory; raises ScanError."""
        return self.header(path, self.finish_buffer(data, path))

    cdef ScanResult finish_buffer(self, const uint8_t[::1] data, path):
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

    cdef object header(self, path, ScanResult result):
        """The caller's header of a result, its fields read in C."""
        cdef PixelScan pixel = result.pixel
        location = None
        if pixel is not None:
            if pixel.encapsulated:
                location = self.make_encapsulated(pixel, result.attributes, result.little_endian)
            else:
                location = self.make_native(pixel.tag, pixel.vr, pixel.element_offset,
                                            pixel.value_offset, pixel.value_length)
        return self.make_header(path, result.attributes, result.transfer_syntax_uid,
                                result.has_preamble, result.has_file_meta, result.dataset_offset,
                                result.explicit_vr, result.little_endian, result.deflated,
                                result.file_size, location, result.data_size)

    cdef ScanResult finish(self, ScanState* st, path):
        if st.failed:
            raise self.error(st, path)
        ts = self.meta_transfer_syntax(st)
        if st.syntax == SYNTAX_DEFLATED:
            return self.run_deflated(st, path, ts)
        return self.collect(st, path, ts, False)

    cdef ScanResult run_deflated(self, ScanState* st, path, ts):
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
            if isinstance(result, ScanResult):
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
        if isinstance(result, ScanResult):
            return self.with_file_size(result, st.src.size)
        raise result

    cdef ScanResult with_file_size(self, ScanResult result, int64_t size):
        """The result of scanning inflated bytes, with the size of the file itself."""
        result.file_size = size
        return result

    cdef object scan_inflated(self, bytearray head, tail, int64_t tail_start, int64_t size,
                              path, ts, int64_t start, bint final):
        """Scan inflated bytes: a ScanResult, a ScanError, or (not final) the end
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

    cdef ScanResult collect(self, ScanState* st, path, ts, bint deflated):
        cdef ScanResult result = ScanResult.__new__(ScanResult)
        result.attributes = self.attributes(st, path)
        result.transfer_syntax_uid = ts
        result.has_preamble = st.has_preamble
        result.has_file_meta = st.has_meta
        result.dataset_offset = st.dataset_offset
        result.explicit_vr = st.explicit
        result.little_endian = st.little
        result.deflated = deflated
        result.file_size = st.src.size
        result.data_size = st.src.size
        result.pixel = self.pixel_location(st)
        return result

    cdef Attributes attributes(self, ScanState* st, path):
        """The Attributes of copy_values' blob; convert the values left to pydicom."""
        cdef Py_ssize_t k
        cdef const Slot* s
        cdef Attributes result = Attributes.__new__(Attributes)
        result.scanner = self
        result.blob = PyBytes_FromStringAndSize(<const char*>st.values, st.blob_length)
        result.data = <const uint8_t*><const char*>result.blob
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

    cdef Element* last_element(self, ScanState* st, Py_ssize_t k) noexcept:
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

    cdef PixelScan pixel_location(self, ScanState* st):
        cdef Element* e
        cdef Py_ssize_t i
        cdef PixelScan pixel
        if st.pixel_index < 0:
            return None
        e = &st.elems[st.pixel_index]
        pixel = PixelScan.__new__(PixelScan)
        pixel.tag = e.tag
        pixel.vr = vr_text(e.vr) if e.vr else None
        pixel.element_offset = e.header_offset
        pixel.value_offset = e.value_offset
        pixel.value_length = e.value_length
        pixel.encapsulated = st.encapsulated
        pixel.bot_offset = -1
        if not st.encapsulated:
            return pixel
        # Here, not at the top: the ingesting process imports this module, never numpy.
        import numpy as np

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
        pixel.bot_offset = st.bot_offset
        pixel.bot = PyBytes_FromStringAndSize(<const char*>st.values + st.bot_copy, st.bot_length)
        pixel.fragment_offsets = offsets
        pixel.fragment_lengths = lengths
        pixel.fragment_eoi = eoi
        pixel.extended_offset_table = self.extended_offset_table(st)
        return pixel

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
