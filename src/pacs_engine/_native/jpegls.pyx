# cython: language_level=3
"""JPEG-LS through the vendored CharLS: encoding at any sample precision P (2..16), and
decoding one-component frames straight into (a window of) an output array."""

from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc

from pacs_engine._native.charls cimport (
    CHARLS_INTERLEAVE_MODE_NONE,
    CHARLS_INTERLEAVE_MODE_SAMPLE,
    CHARLS_JPEGLS_ERRC_DESTINATION_TOO_SMALL,
    CHARLS_JPEGLS_ERRC_NOT_ENOUGH_MEMORY,
    CHARLS_JPEGLS_ERRC_SUCCESS,
    charls_frame_info,
    charls_get_error_message,
    charls_jpegls_decoder,
    charls_jpegls_decoder_create,
    charls_jpegls_decoder_decode_to_buffer,
    charls_jpegls_decoder_destroy,
    charls_jpegls_decoder_get_frame_info,
    charls_jpegls_decoder_read_header,
    charls_jpegls_decoder_set_source_buffer,
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


ctypedef fused sample_t:
    uint8_t
    int8_t
    uint16_t
    int16_t
    uint32_t
    int32_t


cdef charls_jpegls_errc _decode_header(
    charls_jpegls_decoder* decoder, const uint8_t* data, size_t size, charls_frame_info* info
) noexcept nogil:
    """Point `decoder` at the stream and read its header into `info`."""
    cdef charls_jpegls_errc error = charls_jpegls_decoder_set_source_buffer(decoder, data, size)
    if error == CHARLS_JPEGLS_ERRC_SUCCESS:
        error = charls_jpegls_decoder_read_header(decoder)
    if error == CHARLS_JPEGLS_ERRC_SUCCESS:
        error = charls_jpegls_decoder_get_frame_info(decoder, info)
    return error


cdef int _decode_part(
    const uint8_t[::1] data,
    sample_t[:, :] out,
    Py_ssize_t out_top,
    Py_ssize_t out_left,
    Py_ssize_t height,
    Py_ssize_t width,
    Py_ssize_t top,
    Py_ssize_t left,
    Py_ssize_t rows,
    Py_ssize_t columns,
) except -1:
    """Decode the one-component stream `data` of rows x columns samples and write its
    height x width samples at (top, left) into `out` at (out_top, out_left); returns P."""
    cdef charls_jpegls_decoder* decoder = NULL
    cdef charls_frame_info info
    cdef charls_jpegls_errc error
    cdef uint8_t* decoded = NULL
    cdef size_t item, size
    cdef Py_ssize_t y, x
    cdef int32_t sign, value
    cdef bint signed = sample_t is int8_t or sample_t is int16_t or sample_t is int32_t
    if top < 0 or left < 0 or top + height > rows or left + width > columns:
        raise ValueError(
            f"a window at ({top}, {left}) of {height}x{width} is outside a {rows}x{columns} frame"
        )
    if data.shape[0] == 0:
        raise ValueError("an empty JPEG-LS stream")
    decoder = charls_jpegls_decoder_create()
    if decoder == NULL:
        raise MemoryError("no memory for a JPEG-LS decoder")
    try:
        with nogil:
            error = _decode_header(decoder, &data[0], data.shape[0], &info)
        if error != CHARLS_JPEGLS_ERRC_SUCCESS:
            raise ValueError(f"CharLS: {charls_get_error_message(error).decode()}")
        if info.component_count != 1 or info.width != columns or info.height != rows:
            raise ValueError(
                f"the stream holds {info.height}x{info.width}x{info.component_count} "
                f"samples, not {rows}x{columns}x1"
            )
        if info.bits_per_sample > <int32_t>(8 * sizeof(sample_t)):
            raise ValueError(f"{info.bits_per_sample}-bit samples do not fit the output dtype")
        item = 1 if info.bits_per_sample <= 8 else 2
        if (
            not signed and item == sizeof(sample_t) and height == rows and width == columns
            and out.strides[1] == <Py_ssize_t>item and out.strides[0] >= <Py_ssize_t>(columns * item)
        ):
            # The whole frame into unsigned samples of the stream's size, rows of `out` as
            # they are: CharLS decodes into `out` itself (no scratch frame, no copy).
            size = out.strides[0] * (rows - 1) + columns * item
            with nogil:
                error = charls_jpegls_decoder_decode_to_buffer(
                    decoder, &out[out_top, out_left], size, <uint32_t>out.strides[0]
                )
            if error != CHARLS_JPEGLS_ERRC_SUCCESS:
                raise ValueError(f"CharLS: {charls_get_error_message(error).decode()}")
            return info.bits_per_sample
        size = rows * columns * item
        decoded = <uint8_t*>malloc(size)
        if decoded == NULL:
            raise MemoryError(f"no memory for a {size}-byte JPEG-LS frame")
        with nogil:
            error = charls_jpegls_decoder_decode_to_buffer(decoder, decoded, size, 0)
            if error == CHARLS_JPEGLS_ERRC_SUCCESS:
                # (v ^ sign) - sign maps [0, 2**P) onto [-2**(P-1), 2**(P-1)); unsigned: as is.
                sign = (1 << (info.bits_per_sample - 1)) if signed else 0
                for y in range(height):
                    for x in range(width):
                        if item == 1:
                            value = decoded[(top + y) * columns + left + x]
                        else:
                            value = (<uint16_t*>decoded)[(top + y) * columns + left + x]
                        out[out_top + y, out_left + x] = <sample_t>((value ^ sign) - sign)
        if error != CHARLS_JPEGLS_ERRC_SUCCESS:
            raise ValueError(f"CharLS: {charls_get_error_message(error).decode()}")
        return info.bits_per_sample
    finally:
        free(decoded)
        charls_jpegls_decoder_destroy(decoder)


def decode_into(
    const uint8_t[::1] data,
    sample_t[:, :] out,
    Py_ssize_t top,
    Py_ssize_t left,
    Py_ssize_t rows,
    Py_ssize_t columns,
) -> int:
    """Decode the one-component JPEG-LS stream `data` of rows x columns samples, and write
    its part [top:top + out rows, left:left + out columns] into `out`; returns P.

    Samples are P-bit unsigned in the stream; a signed `out` gets them sign-extended
    from P (two's complement in P bits, as the archive encodes signed frames).
    Raises ValueError when the stream is not such a frame, or P does not fit `out`.
    """
    return _decode_part(
        data, out, 0, 0, out.shape[0], out.shape[1], top, left, rows, columns
    )


def decode_tiles(
    chunks,
    sample_t[:, :] out,
    Py_ssize_t top,
    Py_ssize_t left,
    Py_ssize_t rows,
    Py_ssize_t columns,
    Py_ssize_t across,
) -> None:
    """Decode the part of a tiled frame at (top, left) of out's size into `out`.

    `chunks`: the frame's one-component JPEG-LS tiles of rows x columns, `across` a row,
    in C order; only those the part overlaps are decoded (the others may be empty).
    Signed `out` as `decode_into`; ValueError names the tile that fails.
    """
    cdef Py_ssize_t bottom = top + out.shape[0], right = left + out.shape[1]
    cdef Py_ssize_t down = len(chunks) // across
    cdef Py_ssize_t row, col, y0, y1, x0, x1
    cdef const uint8_t[::1] chunk
    # Each side: a window below the last tile row would index past the list.
    if top < 0 or left < 0 or right > across * columns or bottom > down * rows:
        raise ValueError(
            f"a window at ({top}, {left}) of {out.shape[0]}x{out.shape[1]} is outside the "
            f"frame's {down}x{across} tiles of {rows}x{columns}"
        )
    for row in range(top // rows, (bottom + rows - 1) // rows):
        y0, y1 = max(top, row * rows), min(bottom, (row + 1) * rows)
        for col in range(left // columns, (right + columns - 1) // columns):
            x0, x1 = max(left, col * columns), min(right, (col + 1) * columns)
            try:
                chunk = chunks[row * across + col]
                _decode_part(
                    chunk, out, y0 - top, x0 - left, y1 - y0, x1 - x0,
                    y0 - row * rows, x0 - col * columns, rows, columns,
                )
            except ValueError as error:
                raise ValueError(f"tile {row * across + col}: {error}") from None
