# The part of CharLS's C API (charls/charls.h, vendored in charls/) that encodes and decodes.
# Compiled as C++, where the API's enums are C++ enum classes: named by their C++ names.

from libc.stdint cimport int32_t, uint32_t


cdef extern from "charls/charls.h" nogil:
    ctypedef struct charls_jpegls_encoder:
        pass

    ctypedef struct charls_jpegls_decoder:
        pass

    ctypedef enum charls_jpegls_errc:
        CHARLS_JPEGLS_ERRC_SUCCESS "charls::jpegls_errc::success"
        CHARLS_JPEGLS_ERRC_NOT_ENOUGH_MEMORY "charls::jpegls_errc::not_enough_memory"
        CHARLS_JPEGLS_ERRC_DESTINATION_TOO_SMALL "charls::jpegls_errc::destination_buffer_too_small"

    ctypedef enum charls_interleave_mode:
        CHARLS_INTERLEAVE_MODE_NONE "charls::interleave_mode::none"
        CHARLS_INTERLEAVE_MODE_SAMPLE "charls::interleave_mode::sample"

    ctypedef struct charls_frame_info:
        uint32_t width
        uint32_t height
        int32_t bits_per_sample
        int32_t component_count

    charls_jpegls_encoder* charls_jpegls_encoder_create()
    void charls_jpegls_encoder_destroy(const charls_jpegls_encoder* encoder)
    charls_jpegls_errc charls_jpegls_encoder_set_frame_info(
        charls_jpegls_encoder* encoder, const charls_frame_info* frame_info)
    charls_jpegls_errc charls_jpegls_encoder_set_interleave_mode(
        charls_jpegls_encoder* encoder, charls_interleave_mode interleave_mode)
    charls_jpegls_errc charls_jpegls_encoder_set_destination_buffer(
        charls_jpegls_encoder* encoder, void* destination_buffer, size_t destination_size_bytes)
    charls_jpegls_errc charls_jpegls_encoder_encode_from_buffer(
        charls_jpegls_encoder* encoder, const void* source_buffer, size_t source_size_bytes,
        uint32_t stride)
    charls_jpegls_errc charls_jpegls_encoder_get_bytes_written(
        const charls_jpegls_encoder* encoder, size_t* bytes_written)
    charls_jpegls_decoder* charls_jpegls_decoder_create()
    void charls_jpegls_decoder_destroy(const charls_jpegls_decoder* decoder)
    charls_jpegls_errc charls_jpegls_decoder_set_source_buffer(
        charls_jpegls_decoder* decoder, const void* source_buffer, size_t source_size_bytes)
    charls_jpegls_errc charls_jpegls_decoder_read_header(charls_jpegls_decoder* decoder)
    charls_jpegls_errc charls_jpegls_decoder_get_frame_info(
        const charls_jpegls_decoder* decoder, charls_frame_info* frame_info)
    charls_jpegls_errc charls_jpegls_decoder_decode_to_buffer(
        charls_jpegls_decoder* decoder, void* destination_buffer, size_t destination_size_bytes,
        uint32_t stride)
    const char* charls_get_error_message(charls_jpegls_errc error_value)
