"""Turn one source file into what the archive stores: frames, their hashes, and a header blob.

A pure function of the file's bytes and its scanned header, so it can run in any
process (the bulk-migration orchestrator runs it in workers). Nothing here
writes to the archive.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from pacs_engine.archive.blobs import ENCAPSULATED, NATIVE, WHOLE, HeaderBlob
from pacs_engine.codecs import BitstreamCodec, CodecError, NoDecoderError, pass_through_codec
from pacs_engine.codecs.deflate import DEFLATED_IMAGE_FRAME_COMPRESSION
from pacs_engine.codecs.native import LayoutError, PixelLayout, to_array, to_bytes
from pacs_engine.errors import PacsEngineError
from pacs_engine.header import Header, PixelLocation
from pacs_engine.index.core import UID_KEYWORDS, uid_problem
from pacs_engine.index.rows import Row
from pacs_engine.stages import stage

if TYPE_CHECKING:
    import numpy as np
    import pydicom

ITEM_TAG = b"\xfe\xff\x00\xe0"
#: Compressed transfer syntaxes whose frames decode to exactly the encoded pixels (by
#: pydicom's names: this module imports pydicom only to rebuild files, not to prepare them).
LOSSLESS_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.57",  # JPEGLossless
        "1.2.840.10008.1.2.4.70",  # JPEGLosslessSV1
        "1.2.840.10008.1.2.4.80",  # JPEGLSLossless
        "1.2.840.10008.1.2.4.90",  # JPEG2000Lossless
        "1.2.840.10008.1.2.4.201",  # HTJ2KLossless
        "1.2.840.10008.1.2.4.202",  # HTJ2KLosslessRPCL
        "1.2.840.10008.1.2.5",  # RLELossless
        DEFLATED_IMAGE_FRAME_COMPRESSION,
    }
)


#: The kind of frame and pixel hash new rows get: BLAKE3 (128 bits, hex), named by this
#: prefix. Rows written before hold BLAKE2b-128 (32 hex digits, no prefix: `BLAKE2B`); both
#: verify, and a comparison hashes in the kind of the recorded hash (`hash_kind`). BLAKE3:
#: 7-10x BLAKE2b's speed here, and, unlike a checksum, a crafted file cannot match another's
#: pixel hash (a version's equal hash lets it share the stored frames).
BLAKE3 = "blake3:"
BLAKE2B = ""  # the kind of the rows written before BLAKE3: no prefix
#: Decoded bytes a frame may need, unless the ingest says otherwise (`Checks`): decoders
#: allocate what a file declares, and a few KB can declare 65535 x 65535 pixels.
MAX_FRAME_BYTES = 1 << 30
#: The default limit on the bytes of one input held in memory (ingest's --max-input-bytes).
#: A worker holds an input several times over (its bytes, decoded and encoded frames), so
#: 2 GiB keeps one worker within about 8 GB; it is above any single DICOM file met in
#: practice (a native Pixel Data value holds less than 4 GiB, and whole-slide images come
#: as one file per level). A deflated data set is inflated up to it, no further.
MAX_INPUT_BYTES = 2 << 30


class PrepareError(PacsEngineError, ValueError):
    """The file cannot be archived; the reason says why (the file goes to quarantine)."""


class NoDecoder(PrepareError):
    """No installed decoder reads the instance's frames: they cannot be checked (not damaged)."""


#: How an instance kept without a decoder for its frames is flagged (row, report, preflight).
NOT_VERIFIED = "kept as received, not verified"


@dataclass
class Prepared:
    """One instance, ready to be written: everything but the encoding of native frames."""

    path: str
    sha256: str
    size: int
    header: Header
    blob: HeaderBlob
    storage: str = "none"  # "native", "bitstream" or "none" (no pixel data)
    layout: PixelLayout | None = None
    frames: np.ndarray | None = None  # native: decoded frames
    bitstreams: list[bytes] = field(default_factory=list)  # encapsulated: one per frame
    pass_through: Any = None  # encapsulated: the codec that decodes the bitstreams
    # Hashes of the decoded frames; None for bitstreams kept undecoded (see `prepare`).
    frame_hashes: list[str] | None = field(default_factory=list)
    transcoded: bool = False  # lossless bitstreams decoded, to be stored with the archive codec
    # Why its bitstreams are kept undecoded although decoding was asked: no decoder reads them.
    not_verified: str | None = None

    @property
    def sop_instance_uid(self) -> str:
        """The instance's SOP Instance UID."""
        return self.header.attributes["SOPInstanceUID"]

    @property
    def pixel_layout(self) -> PixelLayout:
        """The layout of the instance's pixel data (PrepareError if it has none)."""
        if self.layout is None:
            raise PrepareError("the instance has no pixel data")
        return self.layout

    @property
    def native_frames(self) -> np.ndarray:
        """The decoded frames of an instance stored native (PrepareError if it has none)."""
        if self.frames is None:
            raise PrepareError("the instance has no native frames")
        return self.frames

    @property
    def frame_count(self) -> int:
        """Frames of pixel data (0 without pixel data)."""
        return 0 if self.layout is None else self.layout.frames

    @property
    def raw_pixel_bytes(self) -> int:
        """Bytes of the decoded pixels (what the compression ratio is measured against)."""
        if self.layout is None:
            return 0
        frame = self.layout.rows * self.layout.columns * self.layout.samples
        itemsize = (
            self.frames.dtype.itemsize
            if self.frames is not None
            else (self.pass_through.pixel_dtype.itemsize)
        )
        return frame * itemsize * self.frame_count

    def frame_hashes_of(self, kind: str) -> list[str]:
        """The frames' hashes of `kind`; decodes bitstreams kept undecoded (PrepareError if
        bad)."""
        if self.frame_hashes is None:
            # One frame at a time: many small fragments can each decode to a large frame.
            self.frame_hashes = [frame_hash(f) for f in decoded_frames(self)]
        if kind == BLAKE3:
            return self.frame_hashes
        # Compared with a row hashed the old way (rare: a file sent again): from the frames
        # again, which decodes bitstreams a second time.
        frames = decoded_frames(self) if self.storage == "bitstream" else self.frames
        return [frame_hash(f, kind) for f in ([] if frames is None else frames)]

    def pixel_hash(self, kind: str = BLAKE3) -> str:
        """The instance's pixel hash of `kind` (see `frame_hashes_of`)."""
        return instance_pixel_hash(self.frame_hashes_of(kind), kind)


def hash_kind(recorded: str | None) -> str:
    """The kind of a recorded frame or pixel hash (`BLAKE3` or `BLAKE2B`); None: `BLAKE3`."""
    return BLAKE3 if recorded is None or recorded.startswith(BLAKE3) else BLAKE2B


def frame_hash(frame: np.ndarray, kind: str = BLAKE3) -> str:
    """The hash of one decoded frame's C-order native-endian bytes, of `kind`."""
    import numpy as np

    with stage("hash"):
        data = np.ascontiguousarray(frame, frame.dtype.newbyteorder("="))
        return _digest(data.reshape(-1).view(np.uint8).data, kind)  # the buffer, no copy


def frame_hashes_like(frames: Iterable[np.ndarray], recorded: list[str] | None) -> list[str]:
    """The frames' hashes, of the kind of `recorded` (a row's frame hashes; None or []: BLAKE3)."""
    kind = hash_kind(recorded[0] if recorded else None)
    return [frame_hash(f, kind) for f in frames]


def instance_pixel_hash(frame_hashes: list[str], kind: str = BLAKE3) -> str:
    """One hash for all frames of an instance, of the kind of its frame hashes."""
    return _digest("".join(frame_hashes).encode(), kind)


def _digest(data: bytes | memoryview, kind: str) -> str:
    """128 bits of BLAKE3 (with its prefix) or, for `BLAKE2B`, of BLAKE2b, in hex."""
    if kind == BLAKE2B:
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    return BLAKE3 + blake3(data).hexdigest(16)


def check_uids(header: Header) -> None:
    """Raise PrepareError unless the study, series and SOP instance UIDs can be indexed."""
    for keyword in UID_KEYWORDS:
        problem = uid_problem(keyword, header.attributes.get(keyword))
        if problem is not None:
            raise PrepareError(problem)


def declared_pixels(attributes: Any) -> str | None:
    """'Rows R, Columns C, Bits Allocated B' when the attributes say there are pixels, else None."""
    values = [attributes.get(k) for k in ("Rows", "Columns", "BitsAllocated")]
    if all(isinstance(v, int) and v > 0 for v in values):
        return "Rows {}, Columns {}, Bits Allocated {}".format(*values)
    return None


def prepare(
    path: str,
    data: bytes,
    header: Header,
    transcode: bool = False,
    decode: bool = True,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    max_bytes: int = MAX_INPUT_BYTES,
) -> Prepared:
    """Split one file into frames and a header blob; raises PrepareError when it cannot.

    Compressed frames kept as their original bitstream are decoded to hash their
    pixels, and bitstreams that do not decode are refused. Without `decode` they
    are left undecoded (the archive keeps their exact bytes, so nothing is lost,
    but a bitstream that does not decode is then only found by `verify`).
    With `transcode`, frames of a lossless compressed transfer syntax are decoded
    and handed over as native frames (the original bitstreams are not kept).
    Bitstreams are refused, decoded or not, when their own header declares another
    frame size than the data set, or the data set's frame would decode to more than
    `max_frame_bytes`. A deflated data set is refused when it inflates past `max_bytes`
    (a file of a few MB may hold gigabytes of zeros).
    """
    check_uids(header)
    with stage("hash"):  # the contract's hash of the file (duplicates, export, verify)
        sha256 = hashlib.sha256(data).hexdigest()
    pixel = header.pixel
    if pixel is None:
        declared = declared_pixels(header.attributes)
        if declared is not None:
            # A file cut just before (or inside the header of) its pixel data looks whole.
            raise PrepareError(f"{declared}: an image, but the file has no pixel data (cut short?)")
        return Prepared(path, sha256, len(data), header, HeaderBlob(WHOLE, data))
    dataset = data
    if header.deflated:
        start = header.dataset_offset
        room = max(max_bytes - start, 0)
        inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:], room + 1)
        if len(inflated) > room:
            raise PrepareError(
                f"the deflated data set inflates to more than {max_bytes} bytes with its"
                " file meta (the input limit, --max-input-bytes)"
            )
        dataset = data[:start] + inflated
    try:
        layout = PixelLayout.from_attributes(header.attributes, pixel.keyword)
    except LayoutError as error:
        raise PrepareError(f"pixel data cannot be laid out: {error}") from None
    value = memoryview(dataset)[pixel.value_offset : pixel.value_end]
    if pixel.encapsulated:
        prepared = _encapsulated(
            path, sha256, data, dataset, header, pixel, layout, transcode, decode, max_frame_bytes
        )
    else:
        prepared = _native(path, sha256, data, header, pixel, layout, value)
    if prepared.transcoded:
        return prepared
    # Native parts give the file back by construction (the bytes before the value, the
    # value as its frames' bytes and tail or kept whole, the bytes after): only
    # encapsulated parts are rebuilt to be compared (fragment layouts vary).
    if header.deflated or (pixel.encapsulated and rebuild(prepared) != data):
        # The parts do not give the file back (deflated, or an unusual layout): keep it whole.
        prepared.blob = HeaderBlob(WHOLE, data)
        if prepared.frame_hashes is None and prepared.not_verified is None:
            # The export no longer reads the stored bitstreams, so its sha256 would not
            # prove them: their pixel hashes must (`verify`).
            _hash_or_flag(prepared)
    return prepared


def _native(
    path: str,
    sha256: str,
    data: bytes,
    header: Header,
    pixel: PixelLocation,
    layout: PixelLayout,
    value: memoryview,
) -> Prepared:
    try:
        frames = to_array(value, layout, header.little_endian, pixel.vr)
    except LayoutError as error:
        raise PrepareError(str(error)) from None
    if plain_layout(layout, header.little_endian):
        exact, length = True, layout.encoded_bytes  # the frames are a view of the value
    else:
        rebuilt = to_bytes(frames, layout, header.little_endian, pixel.vr)
        exact, length = bytes(value[: len(rebuilt)]) == rebuilt, len(rebuilt)
    blob = HeaderBlob(
        NATIVE,
        data[: pixel.value_offset],
        data[pixel.value_end :],
        native_tail=bytes(value[length:]),
        native_value=None if exact else bytes(value),
    )
    return Prepared(
        path,
        sha256,
        len(data),
        header,
        blob,
        "native",
        layout,
        frames,
        frame_hashes=[frame_hash(f) for f in frames],
    )


def plain_layout(layout: PixelLayout, little_endian: bool) -> bool:
    """True when `to_bytes(to_array(value))` is `value[:layout.encoded_bytes]`, whatever it holds.

    Little endian whole-byte samples, interleaved, not YBR 4:2:2: `to_array` is then
    a view of the value's bytes and `to_bytes` gives them back, so ingest need not
    copy the pixels twice to compare them.
    """
    return (
        little_endian
        and layout.bits_allocated >= 8
        and layout.dtype.itemsize * 8 == layout.bits_allocated
        and not layout.ybr422
        and not (layout.samples > 1 and layout.planar_configuration == 1)
    )


def _encapsulated(
    path: str,
    sha256: str,
    data: bytes,
    dataset: bytes,
    header: Header,
    pixel: PixelLocation,
    layout: PixelLayout,
    transcode: bool,
    decode: bool,
    max_frame_bytes: int,
) -> Prepared:
    ts = header.transfer_syntax_uid or ""
    frames_of = pixel.fragment_frames
    count = int(frames_of.max()) + 1 if len(frames_of) else 0
    if count != layout.frames:
        raise PrepareError(
            f"the fragments make {count} frame(s), NumberOfFrames is {layout.frames}"
        )
    fragments: list[list[bytes]] = [[] for _ in range(count)]
    for offset, length, frame in zip(
        pixel.fragment_offsets, pixel.fragment_lengths, frames_of, strict=True
    ):
        fragments[frame].append(dataset[offset : offset + length])
    bitstreams = [b"".join(parts) for parts in fragments]
    attributes = header.attributes
    try:
        codec = pass_through_codec(
            ts,
            photometric_interpretation=layout.photometric,
            bits_allocated=layout.bits_allocated,
            bits_stored=layout.bits_stored,
            pixel_representation=layout.pixel_representation,
            samples_per_pixel=layout.samples,
            planar_configuration=int(attributes.get("PlanarConfiguration") or 0),
        )
    except CodecError as error:
        raise PrepareError(str(error)) from None
    frame_bytes = layout.rows * layout.columns * layout.samples * codec.pixel_dtype.itemsize
    if frame_bytes > max_frame_bytes:
        raise PrepareError(
            f"a frame of {layout.rows} x {layout.columns} x {layout.samples} samples decodes "
            f"to {frame_bytes} bytes, more than the limit of {max_frame_bytes} (max_frame_bytes)"
        )
    for i, stream in enumerate(bitstreams):
        try:
            codec.check_size(stream, layout.frame_shape)
        except CodecError as error:
            raise PrepareError(f"frame {i}: {error}") from None
    start = pixel.value_offset
    first_item = int(pixel.fragment_offsets[0]) - 8 if count else pixel.value_end - 8
    blob = HeaderBlob(
        ENCAPSULATED,
        data[:start],
        data[pixel.value_end :],
        offset_table_item=dataset[start:first_item],
        fragment_lengths=tuple(tuple(len(f) for f in parts) for parts in fragments),
        delimiter=dataset[pixel.value_end - 8 : pixel.value_end],
    )
    prepared = Prepared(
        path,
        sha256,
        len(data),
        header,
        blob,
        "bitstream",
        layout,
        bitstreams=bitstreams,
        pass_through=codec,
        frame_hashes=None,
    )
    if transcode and ts in LOSSLESS_SYNTAXES and _lossless(codec, bitstreams):
        try:
            frames = decode_bitstreams(prepared)
        except NoDecoder as error:  # kept as its bitstreams, flagged
            prepared.not_verified = f"{error}: {NOT_VERIFIED}"
        else:
            prepared.storage, prepared.frames, prepared.bitstreams = "native", frames, []
            prepared.frame_hashes, prepared.transcoded = [frame_hash(f) for f in frames], True
    elif decode:
        _hash_or_flag(prepared)
    return prepared


def _lossless(codec: BitstreamCodec, bitstreams: list[bytes]) -> bool:
    """Whether every bitstream is lossless itself (a transcode keeps the others as they are:
    a near-lossless JPEG-LS or irreversible JPEG 2000 stream under a lossless UID)."""
    try:
        return all(codec.is_lossless(stream) for stream in bitstreams)
    except CodecError:  # unreadable: kept, and its decode says what is wrong
        return False


def _hash_or_flag(prepared: Prepared) -> None:
    """Hash the decoded frames; when no decoder reads them, flag the instance instead.

    Its bytes are archived all the same (the export is byte-exact), but nothing proves
    its pixels: the flag says so in its row, the report and `verify`.
    """
    try:
        prepared.pixel_hash()
    except NoDecoder as error:
        prepared.not_verified = f"{error}: {NOT_VERIFIED}"


def decoded_frames(prepared: Prepared) -> Iterator[np.ndarray]:
    """Each frame of an instance kept as bitstreams, decoded as pydicom's pixel_array."""
    layout, codec = prepared.pixel_layout, prepared.pass_through
    for i, chunk in enumerate(prepared.bitstreams):
        try:
            with stage("decode"):
                frame = codec.decode_checked(chunk, layout.frame_shape, codec.pixel_dtype)
        except NoDecoderError as error:
            raise NoDecoder(str(error)) from None
        except Exception as error:  # a codec's failure on bad data can be any exception
            raise PrepareError(f"frame {i} cannot be decoded: {error}") from None
        yield frame


def decode_bitstreams(prepared: Prepared) -> np.ndarray:
    """The frames of an instance kept as bitstreams, decoded as pydicom's pixel_array."""
    import numpy as np

    layout, codec = prepared.pixel_layout, prepared.pass_through
    frames = np.empty((len(prepared.bitstreams), *layout.frame_shape), codec.pixel_dtype)
    for i, frame in enumerate(decoded_frames(prepared)):
        frames[i] = frame
    return frames


def rebuild(prepared: Prepared) -> bytes:
    """The original file, rebuilt from what `prepare` split it into."""
    pixel = prepared.header.pixel
    return rebuild_file(
        prepared.blob,
        prepared.layout,
        prepared.header.little_endian,
        pixel.vr if pixel else None,
        prepared.frames,
        prepared.bitstreams,
    )


def rebuild_file(
    blob: HeaderBlob,
    layout: PixelLayout | None,
    little_endian: bool,
    vr: str | None,
    frames: np.ndarray | None,
    bitstreams: list[bytes] | None,
) -> bytes:
    """The original file's bytes from its header blob and its pixel frames or bitstreams."""
    if blob.kind == WHOLE:
        return blob.prefix
    if blob.kind == NATIVE:
        if blob.native_value is not None:
            value = blob.native_value
        elif frames is None or layout is None:
            raise PrepareError("the header blob keeps native pixel data, but no frames were given")
        else:
            value = to_bytes(frames, layout, little_endian, vr) + blob.native_tail
        return blob.prefix + value + blob.suffix
    if bitstreams is None:
        raise PrepareError("the header blob keeps encapsulated pixel data, but no bitstreams")
    parts = [blob.prefix, blob.offset_table_item]
    for lengths, stream in zip(blob.fragment_lengths, bitstreams, strict=True):
        at = 0
        for length in lengths:
            parts += [ITEM_TAG, length.to_bytes(4, "little"), stream[at : at + length]]
            at += length
    parts += [blob.delimiter, blob.suffix]
    return b"".join(parts)


def blob_dataset(blob: HeaderBlob) -> pydicom.FileDataset:
    """The data set a header blob keeps: every element but the pixel data value's."""
    import pydicom
    from pydicom.filereader import read_dataset

    if blob.kind == WHOLE:
        return pydicom.dcmread(BytesIO(blob.prefix), force=True)
    dataset = pydicom.dcmread(BytesIO(blob.prefix), stop_before_pixels=True, force=True)
    if blob.suffix:
        implicit, little = dataset.original_encoding
        if implicit is None or little is None:  # dcmread sets both for any data set it read
            raise PrepareError("the header blob's data set has no known encoding")
        dataset.update(read_dataset(BytesIO(blob.suffix), implicit, little))
    return dataset


def transcoded_file(blob: HeaderBlob, row: Row, frames: np.ndarray) -> bytes:
    """A transcoded instance as a file: its data set, pixels native, explicit VR little endian."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    dataset = blob_dataset(blob)
    layout = PixelLayout.from_attributes(row, "PixelData")
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in dataset:  # of the fragments the native file no longer has
            del dataset[keyword]
    if layout.samples > 1:
        dataset.PlanarConfiguration = 0
        # JPEG 2000's component transform (YBR_RCT, YBR_ICT) is undone by its decoder.
        decoded_rgb = layout.photometric in ("YBR_RCT", "YBR_ICT")
        if row.get("color_conversion", "none") != "none" or decoded_rgb:
            dataset.PhotometricInterpretation = "RGB"
        elif layout.ybr422:  # decoded 4:2:2 chroma is full resolution now
            dataset.PhotometricInterpretation = "YBR_FULL"
    native = PixelLayout(
        **{
            **{f: getattr(layout, f) for f in layout.__slots__},
            "planar_configuration": 0,
            "photometric": "RGB" if layout.samples > 1 else layout.photometric,
        }
    )
    dataset.PixelData = to_bytes(frames, native, True, None)
    dataset["PixelData"].VR = "OB" if layout.bits_allocated <= 8 else "OW"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    # dcmwrite, not save_as: a big endian original (Archive.native_bytes) becomes little endian.
    pydicom.dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()
