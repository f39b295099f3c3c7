# cython: language_level=3
"""JPEG-LS encoding through the vendored CharLS, at any sample precision P (2..16)."""

from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc

from pacs_engine._native.charls cimport (
    CHARLS_INTERLEAVE_MODE_NONE,
    CHARLS_INTERLEAVE_MODE_SAMPLE,
    CHARLS_JPEGLS_ERRC_DESTINATION_TOO_SMALL,
    CHARLS_JPEGLS_ERRC_NOT_ENOUGH_MEMORY,
    CHARLS_JPEGLS_ERRC_SUCCESS,
    charls_frame_info,
    charls_get_error_message,
    charls_jpegls_encoder,
    charls_jpegls_encoder_create,
    charls_jpegls_encoder_destroy,
    charls_jpegls_encoder_encode_from_buffer,
    charls_jpegls_encoder_get_bytes_written,
    charls_jpegls_encoder_set_destination_buffer,
    charls_jpegls_encoder_set_frame_info,
    charls_jpegls_encoder_set_interleave_mode,
    charls_jpegls_errc,
)

cdef enum:
    # Stream markers and segments around the scan data, with room to spare.
    HEADER_BYTES = 1024
    # The most a JPEG-LS scan can take: every sample escaped with LIMIT = 2 * (P + max(8, P))
    # bits, at most 4x the bits of its input.
    WORST_EXPANSION = 4


cdef charls_jpegls_errc _encode_into(
    const uint8_t* pixels, size_t size, const charls_frame_info* info,
    uint8_t* out, size_t capacity, size_t* written,
) noexcept nogil:
    """One encode into `out` of `capacity` bytes; the bytes it wrote go to `written`."""
    cdef charls_jpegls_encoder* encoder = charls_jpegls_encoder_create()
    cdef charls_jpegls_errc error
    if encoder == NULL:
        return CHARLS_JPEGLS_ERRC_NOT_ENOUGH_MEMORY
    error = charls_jpegls_encoder_set_frame_info(encoder, info)
    if error == CHARLS_JPEGLS_ERRC_SUCCESS and info.component_count > 1:
        error = charls_jpegls_encoder_set_interleave_mode(encoder, CHARLS_INTERLEAVE_MODE_SAMPLE)
    if error == CHARLS_JPEGLS_ERRC_SUCCESS:
        error = charls_jpegls_encoder_set_destination_buffer(encoder, out, capacity)
    if error == CHARLS_JPEGLS_ERRC_SUCCESS:
        error = charls_jpegls_encoder_encode_from_buffer(encoder, pixels, size, 0)
    if error == CHARLS_JPEGLS_ERRC_SUCCESS:
        error = charls_jpegls_encoder_get_bytes_written(encoder, written)
    charls_jpegls_encoder_destroy(encoder)
    return error


def encode(
    const uint8_t[::1] pixels, int rows, int columns, int samples, int bits_per_sample
) -> bytes:
    """The lossless JPEG-LS stream of `pixels` at sample precision P = `bits_per_sample`.

    `pixels` holds rows x columns x samples in C order, one byte per sample for
    P <= 8, else two little-endian bytes. Colour is sample-interleaved (ILV 2).
    Raises ValueError with CharLS's message when a size or P is out of range.
    """
    cdef charls_frame_info info
    cdef charls_jpegls_errc error = CHARLS_JPEGLS_ERRC_DESTINATION_TOO_SMALL
    cdef size_t size = pixels.shape[0]
    cdef size_t capacity = size + HEADER_BYTES
    cdef size_t written = 0
    cdef uint8_t* out = NULL
    cdef int item = 1 if bits_per_sample <= 8 else 2
    if rows <= 0 or columns <= 0:
        raise ValueError(f"a JPEG-LS frame needs a positive size, not {rows}x{columns}")
    if samples not in (1, 3, 4):  # what CharLS decodes back (sample interleave for colour)
        raise ValueError(f"JPEG-LS frames of {samples} samples per pixel are not supported")
    # In Python integers: a product in size_t could wrap and let a short buffer through.
    if size != (<object>rows) * columns * samples * item:
        raise ValueError(
            f"{size} bytes do not hold {rows}x{columns}x{samples} samples of {item} byte(s)"
        )
    info.width = columns
    info.height = rows
    info.bits_per_sample = bits_per_sample
    info.component_count = samples
    # A scan rarely outgrows its input; one that does (noise in a tiny frame) is encoded
    # again into room for the worst case.
    for capacity in (size + HEADER_BYTES, WORST_EXPANSION * size + HEADER_BYTES):
        out = <uint8_t*>malloc(capacity)
        if out == NULL:
            raise MemoryError(f"no memory for a {capacity}-byte JPEG-LS stream")
        try:
            with nogil:
                error = _encode_into(&pixels[0], size, &info, out, capacity, &written)
            if error == CHARLS_JPEGLS_ERRC_SUCCESS:
                return out[:written]
        finally:
            free(out)
        if error != CHARLS_JPEGLS_ERRC_DESTINATION_TOO_SMALL:
            break
    raise ValueError(f"CharLS: {charls_get_error_message(error).decode()}")
