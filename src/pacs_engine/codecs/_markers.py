"""Just enough JPEG / JPEG-LS / JPEG 2000 / RLE header parsing to check and describe a bitstream."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pacs_engine.codecs._base import CodecError

# Start-of-frame markers: the second byte of FFxx. C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
SOF_BASELINE = 0xC0
SOF_EXTENDED = 0xC1
SOF_PROGRESSIVE = 0xC2
SOF_LOSSLESS = 0xC3
SOF_LOSSLESS_ARITHMETIC = 0xCB
SOF_JPEGLS = 0xF7
# Define Hierarchical Progression: it opens a hierarchical stream and declares the full
# image size as a frame header does (its first frames may be smaller).
DHP = 0xDE
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE, 0xCF, SOF_JPEGLS, DHP}
)
#: Frame headers of the JPEG processes of ISO 10918-1 (every SOF but JPEG-LS's, and DHP).
JPEG_FRAME_MARKERS = _SOF_MARKERS - {SOF_JPEGLS}
#: Those of its lossless processes: 14 and 15, and the hierarchical ones (which open with DHP).
JPEG_LOSSLESS_MARKERS = frozenset({SOF_LOSSLESS, SOF_LOSSLESS_ARITHMETIC, DHP})
# Markers that stand alone (no length field): TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})

J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class JpegFrameHeader:
    """The start-of-frame segment of a JPEG family bitstream."""

    marker: int
    precision: int
    rows: int
    columns: int
    components: int


@dataclass(frozen=True)
class J2kHeader:
    """The SIZ segment of a JPEG 2000 codestream."""

    capabilities: int  # Rsiz: bit 14 set means Part 15 (HTJ2K) capabilities
    rows: int
    columns: int
    components: int
    precision: int
    is_signed: bool

    @property
    def is_htj2k(self) -> bool:
        """Whether the codestream declares High-Throughput (Part 15) block coding."""
        return bool(self.capabilities & 0x4000)


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset, length) of each marker segment of a JPEG or JPEG-LS stream up to and
    including its first start of scan (standalone markers and fill bytes skipped), or
    CodecError."""
    if data[:2] != b"\xff\xd8":
        raise CodecError("not a JPEG bitstream: no SOI marker")
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            raise CodecError(f"JPEG bitstream: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        yield marker, i, length
        if marker == 0xDA:  # the entropy-coded data follows
            return
        i += 2 + length


def jpeg_frame_header(data: bytes) -> JpegFrameHeader:
    """The first start-of-frame (or DHP) segment of a JPEG or JPEG-LS stream, or CodecError."""
    for marker, i, _ in _jpeg_segments(data):
        if marker in _SOF_MARKERS:
            if i + 10 > len(data):
                break
            precision, rows, columns, components = struct.unpack_from(">BHHB", data, i + 4)
            return JpegFrameHeader(marker, precision, rows, columns, components)
    raise CodecError("JPEG bitstream has no start-of-frame segment")


def jpeg_declared_shape(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, components) of a JPEG or JPEG-LS stream's frame header, or CodecError."""
    header = jpeg_frame_header(data)
    return header.rows, header.columns, header.components


def j2k_declared_shape(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, components) of a JPEG 2000 codestream's SIZ segment, or CodecError."""
    header = j2k_header(data)
    return header.rows, header.columns, header.components


def j2k_codestream(data: bytes) -> bytes:
    """The raw JPEG 2000 codestream of `data` (unwrapping a JP2 file), or CodecError."""
    if data[:4] == J2K_SOC_SIZ:
        return data
    if data[:12] == JP2_SIGNATURE:
        i = 0
        while i + 8 <= len(data):
            length, kind = struct.unpack_from(">I4s", data, i)
            header = 8
            if length == 1:
                if i + 16 > len(data):  # a box's extended length cut short
                    break
                (length,) = struct.unpack_from(">Q", data, i + 8)
                header = 16
            if kind == b"jp2c":
                return data[i + header : i + length if length else len(data)]
            if length == 0:
                break
            i += length
    raise CodecError("not a JPEG 2000 codestream: no SOC/SIZ markers")


def j2k_header(data: bytes) -> J2kHeader:
    """The SIZ segment of a JPEG 2000 codestream (or JP2 file), or CodecError."""
    stream = j2k_codestream(data)
    if len(stream) < 4 + 38 + 3:
        raise CodecError("JPEG 2000 codestream is truncated")
    rsiz, xsiz, ysiz, xo, yo = struct.unpack_from(">HIIII", stream, 6)
    (components,) = struct.unpack_from(">H", stream, 6 + 34)
    ssiz = stream[6 + 36]
    return J2kHeader(
        capabilities=rsiz,
        rows=ysiz - yo,
        columns=xsiz - xo,
        components=components,
        precision=(ssiz & 0x7F) + 1,
        is_signed=bool(ssiz & 0x80),
    )


def jpeg_scan_parameters(data: bytes) -> tuple[int, int, int]:
    """The three bytes that end a JPEG or JPEG-LS stream's first start-of-scan segment, or
    CodecError: lossless JPEG's predictor (Ss), Se and Ah/Al (Al: the point transform, 0
    when lossless); JPEG-LS's NEAR (0 when lossless), ILV and Ah/Al (point transform)."""
    framed = False  # a scan before any frame header is no JPEG stream
    for marker, i, length in _jpeg_segments(data):
        framed = framed or marker in _SOF_MARKERS
        if marker == 0xDA and framed:  # SOS: Ls, Ns, Ns x (Cs, Tm), then the three bytes
            components = data[i + 4] if i + 4 < len(data) else 0
            at = i + 5 + 2 * components
            if at + 3 <= min(len(data), i + 2 + length):
                return data[at], data[at + 1], data[at + 2]
    raise CodecError("JPEG bitstream has no whole start-of-scan segment")


def j2k_reversible(data: bytes) -> bool:
    """Whether a JPEG 2000 codestream's main header codes every component with the reversible
    5-3 wavelet (COD, and any COC, transformation 1), or CodecError."""
    stream = j2k_codestream(data)
    components = j2k_header(data).components
    i, end, found = 2, len(stream), False
    while i + 4 <= end:
        marker, length = struct.unpack_from(">HH", stream, i)
        if marker == 0xFF90:  # SOT: the main header ends
            break
        body = i + 4
        if marker == 0xFF52:  # COD: Scod, SGcod (4 bytes), SPcod: levels, xcb, ycb, style, T
            at = body + 1 + 4 + 4
        elif marker == 0xFF53:  # COC: Ccoc (1 or 2 bytes), Scoc, SPcoc as SPcod
            at = body + (1 if components < 257 else 2) + 1 + 4
        else:
            i += 2 + length
            continue
        if at >= min(end, i + 2 + length):
            raise CodecError("JPEG 2000 codestream: a coding style segment is cut short")
        if stream[at] != 1:
            return False
        found = found or marker == 0xFF52
        i += 2 + length
    if not found:
        raise CodecError("JPEG 2000 codestream has no coding style (COD) segment")
    return True


def rle_segment_count(data: bytes) -> int:
    """The number of segments in a DICOM RLE frame header, or CodecError if it is not one."""
    if len(data) < 64:
        raise CodecError("not a DICOM RLE frame: shorter than its 64-byte header")
    header = struct.unpack_from("<16I", data, 0)
    count, offsets = header[0], header[1 : 1 + header[0]]
    if not 1 <= count <= 15 or offsets[0] != 64:
        raise CodecError("not a DICOM RLE frame: bad segment table")
    if any(b <= a for a, b in itertools.pairwise(offsets)) or offsets[-1] >= len(data):
        raise CodecError("not a DICOM RLE frame: segment offsets out of order or range")
    return count
