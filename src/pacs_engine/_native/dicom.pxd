# DICOM encoding constants and the inline byte readers every scanner module shares.
#
# Everything here is `cdef inline` or a compile-time constant, so that a module
# that cimports it compiles these tests to compares and loads, with no call
# through another module's function table.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef enum:
    META_GROUP = 0x0002


cdef extern from *:
    """
    #define PE_UNDEFINED 0xFFFFFFFFu
    #define PE_ITEM 0xFFFEE000u
    #define PE_ITEM_DELIMITER 0xFFFEE00Du
    #define PE_SEQUENCE_DELIMITER 0xFFFEE0DDu
    #define PE_PIXEL_DATA 0x7FE00010u
    #define PE_FLOAT_PIXEL_DATA 0x7FE00008u
    #define PE_DOUBLE_FLOAT_PIXEL_DATA 0x7FE00009u
    #define PE_TRANSFER_SYNTAX_UID 0x00020010u
    #define PE_SPECIFIC_CHARACTER_SET 0x00080005u
    #define PE_EXTENDED_OFFSET_TABLE 0x7FE00001u
    #define PE_EXTENDED_OFFSET_TABLE_LENGTHS 0x7FE00002u
    """
    const uint32_t UNDEFINED "PE_UNDEFINED"
    const uint32_t ITEM "PE_ITEM"
    const uint32_t ITEM_DELIMITER "PE_ITEM_DELIMITER"
    const uint32_t SEQUENCE_DELIMITER "PE_SEQUENCE_DELIMITER"
    const uint32_t PIXEL_DATA "PE_PIXEL_DATA"
    const uint32_t FLOAT_PIXEL_DATA "PE_FLOAT_PIXEL_DATA"
    const uint32_t DOUBLE_FLOAT_PIXEL_DATA "PE_DOUBLE_FLOAT_PIXEL_DATA"
    const uint32_t TRANSFER_SYNTAX_UID "PE_TRANSFER_SYNTAX_UID"
    const uint32_t SPECIFIC_CHARACTER_SET "PE_SPECIFIC_CHARACTER_SET"
    const uint32_t EXTENDED_OFFSET_TABLE "PE_EXTENDED_OFFSET_TABLE"
    const uint32_t EXTENDED_OFFSET_TABLE_LENGTHS "PE_EXTENDED_OFFSET_TABLE_LENGTHS"


# Value representations, packed as two big-endian ASCII letters.
cdef enum:  # compile-time constants, so the VR tests compile to compares and jumps
    VR_AE = 0x4145
    VR_AS = 0x4153
    VR_CS = 0x4353
    VR_DA = 0x4441
    VR_DS = 0x4453
    VR_DT = 0x4454
    VR_FD = 0x4644
    VR_FL = 0x464C
    VR_IS = 0x4953
    VR_LO = 0x4C4F
    VR_LT = 0x4C54
    VR_OB = 0x4F42
    VR_OD = 0x4F44
    VR_OF = 0x4F46
    VR_OL = 0x4F4C
    VR_OV = 0x4F56
    VR_OW = 0x4F57
    VR_PN = 0x504E
    VR_SH = 0x5348
    VR_SL = 0x534C
    VR_SQ = 0x5351
    VR_SS = 0x5353
    VR_ST = 0x5354
    VR_SV = 0x5356
    VR_TM = 0x544D
    VR_UC = 0x5543
    VR_UI = 0x5549
    VR_UL = 0x554C
    VR_UN = 0x554E
    VR_UR = 0x5552
    VR_US = 0x5553
    VR_UT = 0x5554
    VR_UV = 0x5556


cdef inline uint16_t rd16(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return p[0] | (p[1] << 8)
    return (p[0] << 8) | p[1]


cdef inline uint32_t rd32(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return p[0] | (p[1] << 8) | (p[2] << 16) | (<uint32_t>p[3] << 24)
    return (<uint32_t>p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]


cdef inline uint64_t rd64(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return rd32(p, 1) | (<uint64_t>rd32(p + 4, 1) << 32)
    return (<uint64_t>rd32(p, 0) << 32) | rd32(p + 4, 0)


cdef inline bint is_vr_letter(uint8_t c) noexcept nogil:
    return 0x41 <= c <= 0x5A


cdef inline bint has_long_length(uint16_t vr) noexcept nogil:
    """True for the VRs whose explicit encoding has a 4-byte length."""
    return (vr == VR_OB or vr == VR_OD or vr == VR_OF or vr == VR_OL or vr == VR_OV
            or vr == VR_OW or vr == VR_SQ or vr == VR_SV or vr == VR_UC or vr == VR_UN
            or vr == VR_UR or vr == VR_UT or vr == VR_UV)


cdef inline bint is_pixel_tag(uint32_t tag) noexcept nogil:
    return tag == PIXEL_DATA or tag == FLOAT_PIXEL_DATA or tag == DOUBLE_FLOAT_PIXEL_DATA


cdef inline bint is_text_vr(uint16_t vr) noexcept nogil:
    return (vr == VR_AE or vr == VR_AS or vr == VR_CS or vr == VR_DA or vr == VR_DT
            or vr == VR_LO or vr == VR_LT or vr == VR_PN or vr == VR_SH or vr == VR_ST
            or vr == VR_TM or vr == VR_UC or vr == VR_UI or vr == VR_UR or vr == VR_UT)


cdef inline bint is_value_vr(uint16_t vr) noexcept nogil:
    """VRs whose values the scanner converts: text and numbers."""
    return (is_text_vr(vr) or vr == VR_DS or vr == VR_IS or vr == VR_US or vr == VR_SS
            or vr == VR_UL or vr == VR_SL or vr == VR_FL or vr == VR_FD)


cdef inline bint is_blank(uint8_t c) noexcept nogil:
    return c == 0x20 or c == 0x00
