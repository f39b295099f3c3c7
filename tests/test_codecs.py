"""The archive's Zarr v3 codecs: bit-exact round trips, pass-through equals pydicom, fresh reads."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import warnings
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import google_crc32c
import imagecodecs
import numpy as np
import pacs_engine._native.jpegls as native_jpegls
import pydicom
import pytest
import zarr
from conftest import CORPUS, require_corpus
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from zarr.codecs import ShardingCodec

from pacs_engine.codecs import (
    ARCHIVE_CODECS,
    PASS_THROUGH_BY_SYNTAX,
    BitstreamCodec,
    CodecError,
    DicomJpegLsCodec,
    FrameCodec,
    Htj2kCodec,
    Jpeg2kCodec,
    JpegLsCodec,
    JpegXlCodec,
    choose_codec,
    general_purpose_codecs,
    pack_shard,
    pass_through_codec,
    shard_parts,
    write_shard,
)
from pacs_engine.codecs._base import image_shape, signed_precision, unsigned_precision
from pacs_engine.codecs.blosc import (
    BLOSC_HEADER,
    SHUFFLES,
    Blosc,
    blosc_decompress,
    blosc_decompress_into,
)
from pacs_engine.codecs.choose import central_crop
from pacs_engine.codecs.jpegls import encode_jpegls, jpegls_precision
from pacs_engine.codecs.jpegxl import frame_offset
from pacs_engine.codecs.registry import ARCHIVE_BY_NAME, as_zarr

#: Every transfer syntax a pass-through codec serves, from the registry (codecs/registry.py).
PASS_THROUGH_SYNTAXES = set(PASS_THROUGH_BY_SYNTAX)
#: Each archive codec as the archive makes it, plus the settings users can choose.
CODECS: dict[str, FrameCodec] = {name: cls() for name, cls in ARCHIVE_BY_NAME.items()} | {
    "jpegls-dtype": JpegLsCodec(precision="dtype"),
    "jpegxl-e3": JpegXlCodec(effort=3),
}
# Corpus frames per (modality, dtype, samples) group for the round trips: enough variety
# (signed/unsigned, 8/16-bit, RGB, MONOCHROME1) while the suite stays quick.
PER_GROUP = 4
ROUND_TRIP_MODALITIES = {"CT", "MR", "CR", "DX", "US", "NM", "PT", "OT"}


def _manifest() -> list[dict[str, str]]:
    with (CORPUS / "MANIFEST.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _usable(row: dict[str, str]) -> bool:
    return not row["path"].startswith("malformed/") and row["pydicom_decodes"] == "yes"


#: The transfer syntax of a file meta without one, from pydicom's (implicit VR, little
#: endian) reading of the data set, as the scanner guesses it.
_GUESSED_SYNTAX = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


def _read(path: Path) -> pydicom.FileDataset:
    """The data set, with a transfer syntax to decode it by even where the file has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _GUESSED_SYNTAX[ds.original_encoding]
    return ds


def _frames(ds: pydicom.Dataset) -> np.ndarray:
    """pixel_array as (frames, rows, cols[, samples])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
    single = int(ds.get("NumberOfFrames", 1) or 1) == 1
    return arr[None] if single else arr


@cache
def corpus_images() -> tuple[tuple[str, np.ndarray], ...]:
    """(label, frame) pairs of real corpus pixels decoded by pydicom, a few per kind."""
    if not (CORPUS / "MANIFEST.tsv").is_file():
        return ()
    groups: dict[tuple[str, str, int], int] = defaultdict(int)
    seen: set[str] = set()
    out = []
    for row in _manifest():
        if not _usable(row) or row["modality"] not in ROUND_TRIP_MODALITIES:
            continue
        frames = _frames(_read(CORPUS / row["path"]))  # the manifest says pydicom decodes it
        if frames.dtype.kind not in "ui":
            continue
        frame = np.ascontiguousarray(frames[len(frames) // 2])
        frame = frame.astype(frame.dtype.newbyteorder("="))
        key = (row["modality"], frame.dtype.str, frame.ndim)
        digest = hashlib.sha1(frame.tobytes()).hexdigest()
        if groups[key] >= PER_GROUP or digest in seen:
            continue
        groups[key] += 1
        seen.add(digest)
        out.append((f"{row['modality']}:{frame.dtype}:{row['path']}", frame))
    return tuple(out)


def _supports(codec: FrameCodec, frame: np.ndarray) -> bool:
    return f"{frame.dtype.kind}{frame.dtype.itemsize}" in codec.supported_dtypes


def _roundtrip(codec: FrameCodec, frame: np.ndarray) -> tuple[np.ndarray, bytes]:
    data = codec.encode_frame(frame)
    return codec.decode_frame(data, frame.shape, frame.dtype), data


# --- archive codecs: bit-exact round trips ----------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("name", CODECS)
def test_roundtrip_real_corpus_frames(name: str) -> None:
    """Every codec gives back pydicom's pixels of real CT/MR/CR/US/RGB frames bit for bit."""
    require_corpus()
    codec = CODECS[name]
    tested = defaultdict(int)
    for label, frame in corpus_images():
        if not _supports(codec, frame):
            continue
        try:
            back, _ = _roundtrip(codec, frame)
        except CodecError as exc:
            # Only the bit-depth limits of JPEG-LS / JPEG-XL may refuse a frame, never silently.
            assert "at most 16 bits" in str(exc), label
            continue
        assert back.dtype == frame.dtype, label
        assert np.array_equal(back, frame), label
        tested[label.split(":")[0]] += 1
        tested[f"{frame.dtype}{'-rgb' if frame.ndim == 3 else ''}"] += 1
    for kind in ("CT", "MR", "US", "uint16", "uint8", "uint8-rgb", "int16"):
        assert tested[kind], f"no {kind} frame was tested for {name}: {dict(tested)}"


EDGE_FRAMES = {
    "zeros-u8": np.zeros((7, 9), np.uint8),
    "ones-u8": np.ones((16, 16), np.uint8),
    "full-u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "full-u16": np.array([[0, 65535], [65535, 0]], np.uint16).repeat(8, 0).repeat(8, 1),
    "full-i16": np.array([[-32768, 32767], [0, -1]], np.int16).repeat(8, 0).repeat(8, 1),
    "i8": np.arange(-128, 128, dtype=np.int8).reshape(16, 16),
    "negative-only-i16": np.full((5, 3), -7, np.int16),
    # The type's lowest value alone (a padding tile): P counted one bit too many, 9 for int8
    # (a stream the decoder then refused: an archived file that could not be read back).
    "lowest-only-i8": np.full((6, 5), -128, np.int8),
    "lowest-only-i16": np.full((4, 4), -32768, np.int16),
    "one-pixel-u16": np.array([[4095]], np.uint16),
    "ct-padding-i16": np.where(np.arange(64 * 64).reshape(64, 64) % 7, -2000, 40).astype(np.int16),
    "rgb-u8": np.random.default_rng(1).integers(0, 256, (13, 11, 3), dtype=np.uint8),
    "rgb-u16": np.random.default_rng(2).integers(0, 4096, (8, 8, 3), dtype=np.uint16),
}


@pytest.mark.parametrize("frame_name", EDGE_FRAMES)
@pytest.mark.parametrize("name", CODECS)
def test_roundtrip_edge_frames(name: str, frame_name: str) -> None:
    """Extreme values, tiny and odd shapes, signed 8/16-bit and colour survive every codec."""
    codec, frame = CODECS[name], EDGE_FRAMES[frame_name]
    if not _supports(codec, frame):
        pytest.skip(f"{name} does not take {frame.dtype}")
    back, _ = _roundtrip(codec, frame)
    assert back.dtype == frame.dtype
    assert np.array_equal(back, frame)


def test_jpegls_precision_follows_the_data() -> None:
    """JPEG-LS "minimal" uses the bits the values need; signed data as two's complement."""
    codec = JpegLsCodec()
    assert jpegls_precision(codec.encode_frame(np.full((4, 4), 4095, np.uint16))) == 12
    assert jpegls_precision(codec.encode_frame(np.full((4, 4), 1, np.uint8))) == 2
    signed = np.linspace(-2000, 2000, 64 * 64).astype(np.int16).reshape(64, 64)
    assert jpegls_precision(codec.encode_frame(signed)) == 12
    assert jpegls_precision(JpegLsCodec(precision="dtype").encode_frame(signed)) == 16
    # Tiny and noisy frames, whose stream outgrows the input, keep their minimal P too.
    tiny = np.array([[-2000, 2000]], np.int16)
    data = codec.encode_frame(tiny)
    assert jpegls_precision(data) == 12
    assert np.array_equal(codec.decode_frame(data, tiny.shape, tiny.dtype), tiny)
    noise = np.random.default_rng(7).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    data = codec.encode_frame(noise)
    assert len(data) > noise.nbytes and jpegls_precision(data) == 8
    assert np.array_equal(codec.decode_frame(data, noise.shape, noise.dtype), noise)
    with pytest.raises(CodecError, match="at most 16 bits"):
        codec.encode_frame(np.array([[0, 70000]], np.uint32))


@pytest.mark.parametrize(
    ("low", "high", "bits"),
    [
        (-128, -128, 8),
        (-129, -129, 9),
        (-1, -1, 1),
        (-2, -1, 2),
        (-32768, -32768, 16),
        (-5, 3, 4),
        (0, 0, 1),
        (-128, 127, 8),
        (-4, -3, 3),
    ],
)
def test_signed_precision_is_the_fewest_twos_complement_bits(
    low: int, high: int, bits: int
) -> None:
    assert signed_precision(low, high) == bits
    assert -(1 << (bits - 1)) <= low and high < 1 << (bits - 1)  # they hold the range
    assert bits == 1 or not (-(1 << (bits - 2)) <= low and high < 1 << (bits - 2))  # fewest


@pytest.mark.parametrize("bits", [2, 5, 8, *range(9, 17)])
@pytest.mark.parametrize("samples", [1, 3])
def test_native_jpegls_equals_pyjpegls(bits: int, samples: int) -> None:
    """The vendored CharLS writes the same bytes as pyjpegls's CharLS build, at any P;
    imagecodecs and pydicom decode them to the input."""
    import jpeg_ls

    rng = np.random.default_rng(bits * 10 + samples)
    shape = (67, 45, samples) if samples > 1 else (67, 45)
    ramp = np.add.outer(np.arange(67), np.arange(45)) * 37
    ramp = ramp[..., None].repeat(samples, -1) if samples > 1 else ramp
    smooth = (ramp + rng.integers(0, 8, shape)) % (1 << bits)
    frame = smooth.astype(np.uint8 if bits <= 8 else np.uint16)
    ours = encode_jpegls(frame, bits)
    theirs = jpeg_ls.encode_buffer(frame.tobytes(), 67, 45, samples, bits, 0, 2)
    assert ours == bytes(theirs)
    assert jpegls_precision(ours) == bits
    assert np.array_equal(imagecodecs.jpegls_decode(ours), frame)
    decoded, _ = get_decoder("1.2.840.10008.1.2.4.80").as_array(
        encapsulate([ours]),
        rows=67,
        columns=45,
        samples_per_pixel=samples,
        bits_allocated=8 if bits <= 8 else 16,
        bits_stored=bits,
        pixel_representation=0,
        photometric_interpretation="RGB" if samples > 1 else "MONOCHROME2",
        planar_configuration=0,
        number_of_frames=1,
    )
    assert np.array_equal(decoded, frame)


def test_native_jpegls_takes_a_stream_larger_than_its_input() -> None:
    """Noise compresses to more than its own size: the first buffer is too small, and the
    frame is encoded again into room for the worst case, at the same P."""
    noise = np.random.default_rng(3).integers(0, 256, (256, 256), dtype=np.uint8)
    data = encode_jpegls(noise, 8)
    assert len(data) > noise.nbytes + 1024  # more than the first try had room for
    assert jpegls_precision(data) == 8
    assert np.array_equal(imagecodecs.jpegls_decode(data), noise)


def test_native_jpegls_refuses_what_charls_refuses() -> None:
    with pytest.raises(CodecError, match="outside the range"):
        encode_jpegls(np.zeros((4, 4), np.uint16), 17)
    with pytest.raises(CodecError, match="outside the range"):
        encode_jpegls(np.zeros((4, 4), np.uint8), 1)
    with pytest.raises(CodecError, match="positive size"):
        encode_jpegls(np.zeros((0, 4), np.uint8), 8)
    with pytest.raises(CodecError, match="2 samples per pixel"):  # CharLS would not decode it
        encode_jpegls(np.zeros((4, 4, 2), np.uint8), 8)


# --- JPEG-LS encode: the frame straight to CharLS, the same bytes as the masked copy ----------


def _masked_streams(frame: np.ndarray) -> tuple[bytes, bytes]:
    """The frame's JPEG-LS "minimal" stream made the way the archive made it up to session
    10: P from the value range, the samples masked to P bits in a wide copy, then narrowed
    to 1 or 2 bytes; encoded by the vendored CharLS and by pyjpegls's (upstream) CharLS."""
    import jpeg_ls

    low, high = int(frame.min()), int(frame.max())
    signed = frame.dtype.kind == "i"
    bits = max(signed_precision(low, high) if signed else unsigned_precision(high), 2)
    storage = "u1" if bits <= 8 else "<u2"
    values = np.ascontiguousarray(frame.astype(np.int64) & ((1 << bits) - 1), storage)
    rows, cols = frame.shape[:2]
    samples = frame.shape[2] if frame.ndim == 3 else 1
    upstream = jpeg_ls.encode_buffer(values.tobytes(), rows, cols, samples, bits, 0, 2)
    return encode_jpegls(values, bits), bytes(upstream)


def _check_against_masked(frame: np.ndarray, label: str) -> bytes:
    """JpegLsCodec's stream of `frame` equals the masked copy's (both encoders) and
    decodes to the frame; returns it."""
    data = JpegLsCodec().encode_frame(frame)
    vendored, upstream = _masked_streams(frame)
    assert data == vendored, f"{label}: the stream differs from the masked copy's"
    assert data == upstream, f"{label}: the stream differs from pyjpegls's"
    back = JpegLsCodec().decode_frame(data, frame.shape, frame.dtype.newbyteorder("="))
    assert np.array_equal(back, frame), label
    return data


#: Corpus CT and MR files per (modality, transfer syntax, bits allocated, samples, pixel
#: representation) group whose every frame is checked against the masked copy.
MASKED_FILES_PER_GROUP = 12


@pytest.mark.corpus
def test_jpegls_encode_equals_the_masked_copy_on_corpus_frames() -> None:
    """Every frame of a few dozen corpus CT/MR files (signed and unsigned, 8 and 16-bit,
    RGB, big and little endian) gives the bytes of the masked copy, and decodes back."""
    require_corpus()
    groups: dict[tuple[str, ...], int] = defaultdict(int)
    seen: Counter = Counter()
    for row in _manifest():
        if not _usable(row) or row["modality"] not in ("CT", "MR"):
            continue
        ds = _read(CORPUS / row["path"])
        group = (row["modality"], row["transfer_syntax_uid"], row["bits_allocated"])
        group += (row["samples_per_pixel"], ds.get("PixelRepresentation"))
        if groups[group] >= MASKED_FILES_PER_GROUP:
            continue
        frames = _frames(ds)
        if frames.dtype.kind not in "ui":
            continue
        groups[group] += 1
        for index, frame in enumerate(frames):
            data = _check_against_masked(frame, f"{row['path']} frame {index}")
            rgb = "-rgb" if frame.ndim == 3 else ""
            seen[f"{frame.dtype}{rgb}"] += 1
            seen[f"P {jpegls_precision(data)}"] += 1
            seen["files"] += index == 0
    for kind in ("int16", "uint16", "uint8-rgb", ">u2"):
        assert seen[kind], f"no {kind} frame was checked: {dict(seen)}"
    assert seen["files"] >= 36 and seen["int16"] >= 24 and seen["uint16"] >= 24, seen


def _ramp(shape: tuple[int, ...], low: int, high: int, dtype: str) -> np.ndarray:
    """A smooth ramp from `low` to `high` plus some noise, with both ends present."""
    rng = np.random.default_rng(abs(low) + high + len(shape))
    values = np.linspace(low, high, int(np.prod(shape))) + rng.integers(-3, 4, int(np.prod(shape)))
    frame = np.clip(values, low, high).astype(dtype).reshape(shape)
    frame.flat[0], frame.flat[-1] = low, high
    return frame


#: Frames that take each way into CharLS: signed at every storage size and at P <= 8 from
#: 16-bit samples (narrowed), full 16-bit ranges, odd sizes, colour (3 and 4 samples, also
#: signed), big-endian, non-contiguous and 32-bit frames.
BUILT_FRAMES = {
    "i1-P2": lambda: _ramp((7, 9), -2, 1, "i1"),
    "i1-P8": lambda: _ramp((16, 16), -128, 127, "i1"),
    "u1-P8-one-row": lambda: _ramp((1, 257), 0, 255, "u1"),
    "i2-P5-narrowed": lambda: _ramp((31, 17), -16, 15, "i2"),
    "u2-P7-narrowed": lambda: _ramp((9, 33), 0, 127, "u2"),
    "i2-P9": lambda: _ramp((67, 45), -256, 200, "i2"),
    "i2-P12-ct": lambda: _ramp((64, 96), -2048, 2047, "i2"),
    "i2-P16-full": lambda: _ramp((33, 31), -32768, 32767, "i2"),
    "i2-negative-only": lambda: np.full((16, 12), -7, np.int16),
    "u2-P12": lambda: _ramp((45, 67), 0, 4095, "u2"),
    "u2-P16-full": lambda: _ramp((3, 1001), 0, 65535, "u2"),
    "u1-rgb": lambda: _ramp((13, 11, 3), 0, 255, "u1"),
    "u2-rgb-P12": lambda: _ramp((8, 10, 3), 0, 4095, "u2"),
    "i2-rgb-P10": lambda: _ramp((9, 7, 3), -512, 511, "i2"),
    "i1-rgba-P6": lambda: _ramp((6, 5, 4), -32, 31, "i1"),
    "i2-big-endian": lambda: _ramp((17, 19), -1000, 3000, ">i2"),
    "u2-big-endian": lambda: _ramp((17, 19), 0, 3000, ">u2"),
    "i2-strided": lambda: _ramp((40, 50), -600, 900, "i2")[::2, 1::3],
    "i2-transposed": lambda: _ramp((21, 34), -1500, 1400, "i2").T,
    "i4-P13": lambda: _ramp((11, 13), -4096, 4095, "i4"),
    "u4-P16": lambda: _ramp((11, 13), 0, 65535, "u4"),
}


@pytest.mark.parametrize("frame_name", BUILT_FRAMES)
def test_jpegls_encode_equals_the_masked_copy_on_built_frames(frame_name: str) -> None:
    """Each way a frame goes to CharLS (viewed as it is, or cast once) gives the bytes of
    the masked copy, at the P its values need, and decodes back."""
    frame = BUILT_FRAMES[frame_name]()
    data = _check_against_masked(frame, frame_name)
    low, high = int(frame.min()), int(frame.max())
    signed = frame.dtype.kind == "i"
    expected = signed_precision(low, high) if signed else unsigned_precision(high)
    assert jpegls_precision(data) == max(expected, 2)


@pytest.mark.parametrize("bits", [2, 7, 8, 9, 12, 15, 16])
@pytest.mark.parametrize("samples", [1, 3])
def test_native_jpegls_encodes_only_the_low_p_bits(bits: int, samples: int) -> None:
    """What the encode relies on to skip the mask pass: CharLS reads each sample's low P
    bits, so samples with other bits above P (two's complement) give the masked stream."""
    storage = np.uint8 if bits <= 8 else np.uint16
    rng = np.random.default_rng(bits + samples)
    shape = (23, 29, samples) if samples > 1 else (23, 29)
    raw = rng.integers(0, np.iinfo(storage).max + 1, shape).astype(storage)
    masked = raw & storage((1 << bits) - 1)
    if bits < 8 * raw.itemsize:
        assert not np.array_equal(raw, masked)  # the high bits are set somewhere
    assert encode_jpegls(raw, bits) == encode_jpegls(masked, bits)
    assert np.array_equal(imagecodecs.jpegls_decode(encode_jpegls(raw, bits)), masked)


@pytest.mark.parametrize(
    ("bits", "dtype"),
    [
        (bits, dtype)
        for dtype in ("u1", "i1", "u2", "i2", "u4", "i4")
        for bits in (2, 5, 8, *range(9, 17))
        if bits <= 8 * np.dtype(dtype).itemsize  # P is chosen to fit the array's dtype
    ],
)
def test_native_jpegls_decode_equals_imagecodecs(bits: int, dtype: str) -> None:
    """The vendored CharLS decodes a stream (every P, every table it builds at load) as
    imagecodecs's CharLS does, straight into a window of the output, signed samples
    sign-extended from P as the archive's coder encodes them."""
    target = np.dtype(dtype)
    rng = np.random.default_rng(bits)
    ramp = np.add.outer(np.arange(67), np.arange(45)) * 37 + rng.integers(0, 8, (67, 45))
    stored = (ramp % (1 << bits)).astype(np.uint8 if bits <= 8 else np.uint16)
    data = encode_jpegls(stored, bits)
    expected = imagecodecs.jpegls_decode(data).astype(np.int64)
    if target.kind == "i":  # two's complement in P bits
        expected = np.where(expected >= 1 << (bits - 1), expected - (1 << bits), expected)
    out = np.full((70, 50), 7, target)
    assert native_jpegls.decode_into(data, out[2:22, 3:33], 40, 10, 67, 45) == bits
    assert np.array_equal(out[2:22, 3:33], expected[40:60, 10:40])
    assert (out[:2] == 7).all() and (out[22:] == 7).all() and (out[:, :3] == 7).all()
    # The whole frame into rows of a larger array (unsigned of the stream's size: in place).
    whole = np.full((70, 50), 7, target)
    assert native_jpegls.decode_into(data, whole[1:68, 2:47], 0, 0, 67, 45) == bits
    assert np.array_equal(whole[1:68, 2:47], expected)
    whole[1:68, 2:47] = 7
    assert (whole == 7).all()  # nothing written between or around its rows
    coder = JpegLsCodec()
    assert np.array_equal(coder.decode_frame(data, (67, 45), target), expected)


def test_native_jpegls_tiles_decode_a_window_of_the_frame() -> None:
    """A frame cut in tiles (each at its own P) decodes, for any window, to that window of
    the frame; tiles outside the window are not read at all."""
    rng = np.random.default_rng(11)
    frame = (np.add.outer(np.arange(100), np.arange(90)) * 9 - 900).astype(np.int16)
    frame[40:60, 30:70] += rng.integers(-500, 500, (20, 40)).astype(np.int16)
    padded = np.zeros((128, 96), np.int16)  # tiles of 32: the frame's edges padded
    padded[:100, :90] = frame
    coder = JpegLsCodec()
    tiles = [
        coder.encode_frame(padded[y : y + 32, x : x + 32])
        for y in range(0, 128, 32)
        for x in range(0, 96, 32)
    ]
    assert len({jpegls_precision(t) for t in tiles}) > 1
    for top, left, rows, cols in [(0, 0, 100, 90), (5, 7, 64, 40), (31, 31, 2, 2), (96, 64, 4, 26)]:
        out = np.empty((rows, cols), np.int16)
        wanted = {
            (y // 32) * 3 + x // 32
            for y in range(top, top + rows)
            for x in range(left, left + cols)
        }
        given = [t if k in wanted else b"" for k, t in enumerate(tiles)]
        assert coder.decode_tiles(given, (32, 32), 3, out, top, left)
        assert np.array_equal(out, frame[top : top + rows, left : left + cols])
    short = list(tiles)
    short[4] = coder.encode_frame(padded[:16, :32])  # the tile at (32, 32): half its rows
    with pytest.raises(CodecError, match="tile 4: the stream holds 16x32x1 samples"):
        coder.decode_tiles(short, (32, 32), 3, np.empty((10, 10), np.int16), 40, 40)
    for top, left, rows, cols in [(120, 0, 16, 10), (0, 90, 4, 8), (-1, 0, 4, 4), (0, -1, 4, 4)]:
        with pytest.raises(CodecError, match=r"of \d+x\d+ is outside the frame's 4x3 tiles"):
            coder.decode_tiles(tiles, (32, 32), 3, np.empty((rows, cols), np.int16), top, left)
    assert not coder.decode_tiles(tiles, (32, 32, 3), 3, np.empty((4, 4, 3), np.uint8), 0, 0)


def test_native_jpegls_decode_refuses_what_does_not_fit() -> None:
    data = encode_jpegls(np.full((4, 6), 3000, np.uint16), 12)
    with pytest.raises(CodecError, match="12-bit samples do not fit"):
        JpegLsCodec().decode_frame(data, (4, 6), np.dtype("u1"))
    with pytest.raises(CodecError, match="holds 4x6x1 samples, not 6x4x1"):
        JpegLsCodec().decode_frame(data, (6, 4), np.dtype("u2"))
    with pytest.raises(ValueError, match="outside a 4x6 frame"):
        native_jpegls.decode_into(data, np.empty((3, 3), np.uint16), 2, 0, 4, 6)
    with pytest.raises(CodecError, match="CharLS"):
        JpegLsCodec().decode_frame(data[: len(data) // 2], (4, 6), np.dtype("u2"))
    with pytest.raises(CodecError, match="empty"):
        JpegLsCodec().decode_frame(b"", (4, 6), np.dtype("u2"))


def test_signed_jpegls_chunk_is_a_dicom_jpegls_frame() -> None:
    """A signed archive chunk decodes with pydicom as JPEG-LS with Pixel Representation 1."""
    frame = EDGE_FRAMES["ct-padding-i16"]
    chunk = JpegLsCodec().encode_frame(frame)
    arr, _ = get_decoder("1.2.840.10008.1.2.4.80").as_array(
        encapsulate([chunk]),
        rows=frame.shape[0],
        columns=frame.shape[1],
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=16,
        pixel_representation=1,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    assert np.array_equal(arr, frame)


def test_signed_frames_keep_their_ratio() -> None:
    """Native signed input to HTJ2K compresses like the same image shifted to unsigned."""
    rng = np.random.default_rng(3)
    smooth = rng.normal(0, 30, (128, 128)).cumsum(axis=1).cumsum(axis=0) / 40
    signed = np.clip(smooth - 500, -2048, 2047).astype(np.int16)
    shifted = (signed.astype(np.int32) + 2048).astype(np.uint16)
    for codec in (Htj2kCodec(), Jpeg2kCodec(), JpegLsCodec(), JpegXlCodec()):
        n_signed = len(codec.encode_frame(signed))
        n_shifted = len(codec.encode_frame(shifted))
        assert n_signed <= 1.05 * n_shifted, codec.codec_name


def test_jpegxl_offset_box_only_for_negative_frames() -> None:
    """JPEG-XL chunks carry an offset box exactly when the frame has negative values."""
    codec = JpegXlCodec()
    assert frame_offset(codec.encode_frame(np.arange(16, dtype=np.int16).reshape(4, 4))) == 0
    data = codec.encode_frame(np.arange(-8, 8, dtype=np.int16).reshape(4, 4))
    assert frame_offset(data) == -8


@pytest.mark.corpus
def test_jpegxl_on_the_frames_that_broke_effort_1() -> None:
    """The RGB frames libjxl's effort-1 path corrupted are exact at the efforts we allow."""
    path = CORPUS / "pylibjpeg-data/JPEGLosslessSV1/JPEGLosslessP14SV1_3s_2f_u_08_08.dcm"
    if not path.is_file():
        pytest.skip(f"{path} not in the corpus (set PACS_ENGINE_CORPUS)")
    for frame in _frames(_read(path)):
        for effort in (2, 3):
            back, _ = _roundtrip(JpegXlCodec(effort=effort), np.ascontiguousarray(frame))
            assert np.array_equal(back, frame)


@pytest.mark.parametrize("codec", [cls() for cls in ARCHIVE_CODECS], ids=lambda c: c.codec_name)
def test_config_is_json_and_roundtrips(codec: FrameCodec) -> None:
    """Every codec's metadata is plain JSON and rebuilds an equal codec."""
    as_json = json.loads(json.dumps(codec.to_dict()))
    assert type(codec).from_dict(as_json) == codec


def test_bad_config_and_dtype_are_refused() -> None:
    """Unknown settings and unsupported dtypes fail loudly at array creation."""
    with pytest.raises(CodecError):
        JpegLsCodec(precision="best")
    with pytest.raises(CodecError, match="effort"):
        JpegXlCodec(effort=1)  # libjxl's fast-lossless path corrupted real RGB frames
    with pytest.raises(CodecError):
        zarr.create_array(
            {}, shape=(1, 4, 4), chunks=(1, 4, 4), dtype="float32", serializer=JpegLsCodec()
        )
    with pytest.raises(CodecError, match="not one frame"):
        image_shape((2, 4, 4))
    assert image_shape((1, 4, 5, 3)) == (4, 5, 3)


def test_general_purpose_codecs_roundtrip() -> None:
    """The documented fallback (zarr's bytes + blosc zstd bit-shuffle) stores floats losslessly."""
    data = np.random.default_rng(4).normal(size=(2, 8, 8)).astype(np.float32)
    serializer, compressor = general_purpose_codecs(data.dtype)
    arr = zarr.create_array(
        {},
        shape=data.shape,
        chunks=(1, 8, 8),
        dtype=data.dtype,
        serializer=serializer,
        compressors=[compressor],
    )
    arr[:] = data
    assert np.array_equal(arr[:], data)


def test_choose_codec_prefers_jpegls_unless_clearly_beaten() -> None:
    """Per-series choice keeps JPEG-LS on ties and switches only for a real gain."""
    noise = np.random.default_rng(5).integers(0, 4096, (64, 64), dtype=np.uint16)
    ls, xl = JpegLsCodec(), JpegXlCodec()
    assert choose_codec(noise, [ls, JpegLsCodec(precision="minimal")]) is ls
    n_ls, n_xl = len(ls.encode_frame(noise)), len(xl.encode_frame(noise))
    assert choose_codec(noise, [ls, xl], margin=0.02) is (xl if n_xl * 1.02 < n_ls else ls)
    assert choose_codec(noise, [ls, xl], margin=10.0) is ls
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.int16) - 50
    assert isinstance(choose_codec(ramp), FrameCodec)
    rgb = EDGE_FRAMES["rgb-u8"]
    assert isinstance(choose_codec(rgb), FrameCodec)
    with pytest.raises(CodecError):
        choose_codec(np.zeros((4, 4), np.float64), candidates=[JpegLsCodec()])
    assert central_crop(np.zeros((2000, 1000)), 512 * 512).shape == (724, 362)
    assert central_crop(np.zeros((10, 20, 3)), 512 * 512).shape == (10, 20, 3)


# --- fresh-process reads of sharded arrays -------------------------------------

READER = """
import json, sys
import numpy as np
import zarr
root = sys.argv[1]
for name in json.loads(sys.argv[2]):
    np.save(f"{root}/{name}.npy", zarr.open_array(f"{root}/{name}.zarr", mode="r")[:])
"""


def _read_in_fresh_process(root: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Read arrays with plain zarr in a new interpreter that never imports pacs_engine itself."""
    cmd = [sys.executable, "-c", READER, str(root), json.dumps(names)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return {name: np.load(root / f"{name}.npy") for name in names}


def _sharded(path: Path, shape: tuple[int, ...], dtype: np.dtype, codec: FrameCodec) -> zarr.Array:
    frames_per_shard = min(shape[0], 4)
    return zarr.create_array(
        str(path),
        shape=shape,
        dtype=dtype,
        chunks=(1, *shape[1:]),
        shards=(frames_per_shard, *shape[1:]),
        serializer=as_zarr(codec),
        compressors=None,
        fill_value=0,
    )


def _stacks() -> dict[str, np.ndarray]:
    """A few multi-frame stacks: real corpus frames when present, synthetic otherwise."""
    stacks = {f"edge-{k}": np.stack([v, v[::-1]]) for k, v in EDGE_FRAMES.items()}
    by_kind: dict[str, list[np.ndarray]] = defaultdict(list)
    for label, frame in corpus_images():
        by_kind[f"{label.split(':')[0]}-{frame.dtype}-{frame.shape}"].append(frame)
    for kind, frames in sorted(by_kind.items()):
        if len(frames) >= 2:
            stacks[f"corpus-{kind}"] = np.stack(frames[:5])
    return stacks


def _encodes(codec: FrameCodec, stack: np.ndarray) -> bool:
    """Whether every frame is within the codec's bit-depth limit (e.g. 32-bit RGB is not)."""
    try:
        for frame in stack:
            codec.encode_frame(frame)
    except CodecError:
        return False
    return True


@pytest.mark.parametrize("name", CODECS)
def test_fresh_process_reads_sharded_array(tmp_path: Path, name: str) -> None:
    """zarr.open_array in a new process reads what each codec wrote, via entry points only."""
    codec = CODECS[name]
    stacks = _stacks()
    expected, skipped = {}, []
    for i, (kind, stack) in enumerate(stacks.items()):
        if not _supports(codec, stack[0]) or not _encodes(codec, stack):
            skipped.append(kind)
            continue
        label = f"a{i}"
        arr = _sharded(tmp_path / f"{label}.zarr", stack.shape, stack.dtype, codec)
        arr[:] = stack  # five frames, shards of four: the last shard is partial
        expected[label] = stack
    # Left out only what no archive codec holds: samples wider than 16 bits.
    assert skipped == [kind for kind, stack in stacks.items() if stack.dtype.itemsize > 2]
    assert len(expected) == len(stacks) - len(skipped) > 0
    got = _read_in_fresh_process(tmp_path, list(expected))
    for label, stack in expected.items():
        assert got[label].dtype == stack.dtype
        assert np.array_equal(got[label], stack), label


def test_pack_shard_index_at_start(tmp_path: Path) -> None:
    """Hand-packed shards with the index first read back through zarr's sharding codec."""
    stack = np.stack([EDGE_FRAMES["full-i16"], EDGE_FRAMES["full-i16"].T])
    codec = JpegLsCodec()
    sharding = ShardingCodec(chunk_shape=(1, 16, 16), codecs=[codec], index_location="start")
    arr = zarr.create_array(
        str(tmp_path / "s.zarr"),
        shape=(3, 16, 16),
        dtype="int16",
        chunks=(3, 16, 16),
        serializer=sharding,
        compressors=None,
        fill_value=5,
    )
    write_shard(arr, (0, 0, 0), [codec.encode_frame(f) for f in stack])
    back = zarr.open_array(str(tmp_path / "s.zarr"), mode="r")[:]
    assert np.array_equal(back[:2], stack)
    assert (back[2] == 5).all()  # an absent chunk reads as the fill value
    assert pack_shard([b"ab", None], index_location="start")[-2:] == b"ab"


@pytest.mark.parametrize("location", ["end", "start"])
def test_shard_parts_are_the_chunks_themselves_and_join_to_the_specs_layout(location: str) -> None:
    """A shard written part by part is byte for byte the sharding spec's layout (built here
    by hand: chunks back to back, an index of little-endian (offset, length) pairs, absent
    ones all ones, and the index's crc32c), and its chunk parts are the encoded chunks' own
    buffers (no copy of a shard into one buffer before writing)."""
    chunks = [b"first", None, b"", b"x" * 1000, None]
    parts = shard_parts(chunks, location)
    index_size = 16 * len(chunks) + 4
    offset = index_size if location == "start" else 0
    table = b""
    for chunk in chunks:
        if chunk is None:
            table += b"\xff" * 16
        else:
            table += offset.to_bytes(8, "little") + len(chunk).to_bytes(8, "little")
            offset += len(chunk)
    index = table + google_crc32c.value(table).to_bytes(4, "little")
    stored = b"first" + b"x" * 1000
    assert b"".join(parts) == (stored + index if location == "end" else index + stored)
    body = parts[:-1] if location == "end" else parts[1:]
    assert [id(p) for p in body] == [id(chunks[0]), id(chunks[2]), id(chunks[3])]
    with pytest.raises(ValueError, match="index_location"):
        shard_parts(chunks, "middle")


# --- pass-through decoders -------------------------------------------------------


def _pass_through_files() -> list:
    if not (CORPUS / "MANIFEST.tsv").is_file():
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason=f"shared corpus not found at {CORPUS} (set PACS_ENGINE_CORPUS)"
                ),
            )
        ]
    rows = [
        r for r in _manifest() if _usable(r) and r["transfer_syntax_uid"] in PASS_THROUGH_SYNTAXES
    ]
    return [pytest.param(r["path"], id=r["path"]) for r in rows]


def _codec_for(ds: pydicom.Dataset) -> BitstreamCodec:
    return pass_through_codec(
        str(ds.file_meta.TransferSyntaxUID),
        photometric_interpretation=str(ds.PhotometricInterpretation),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(ds.BitsStored),
        pixel_representation=int(ds.PixelRepresentation),
        samples_per_pixel=int(ds.SamplesPerPixel),
        planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
    )


def _bitstreams(ds: pydicom.Dataset) -> list[bytes]:
    count = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=count))


@pytest.mark.corpus
@pytest.mark.parametrize("relpath", _pass_through_files())
def test_pass_through_equals_pydicom(relpath: str) -> None:
    """Decoding each original frame bitstream gives pydicom's pixel_array, dtype and values."""
    ds = _read(CORPUS / relpath)
    expected = _frames(ds)
    codec = _codec_for(ds)
    assert json.loads(json.dumps(codec.to_dict()))["configuration"]["color_conversion"] in (
        "ybr_full_to_rgb",
        "none",
    )
    for i, bitstream in enumerate(_bitstreams(ds)):
        chunk = codec.encode_bitstream(bitstream)
        got = codec.decode_frame(chunk, expected.shape[1:], expected.dtype)
        assert got.dtype == expected.dtype
        assert np.array_equal(got, expected[i]), f"frame {i} ({codec.decoder})"


@pytest.mark.corpus
def test_pass_through_sharded_fresh_process(tmp_path: Path) -> None:
    """Original bitstreams packed into shards by hand read back with plain zarr.open_array."""
    require_corpus()
    expected, families = {}, set()
    for i, param in enumerate(_pass_through_files()):
        ds = _read(CORPUS / param.values[0])
        frames, codec = _frames(ds), _codec_for(ds)
        arr = _sharded(tmp_path / f"p{i}.zarr", frames.shape, frames.dtype, codec)
        bitstreams = [codec.encode_bitstream(b) for b in _bitstreams(ds)]
        per_shard = arr.shards[0]
        for shard, start in enumerate(range(0, len(bitstreams), per_shard)):
            chunks = bitstreams[start : start + per_shard]
            write_shard(arr, (shard, *[0] * (frames.ndim - 1)), chunks)
        expected[f"p{i}"] = frames
        families.add(codec.codec_name)
    assert len(families) == 6, families
    got = _read_in_fresh_process(tmp_path, list(expected))
    for label, frames in expected.items():
        assert got[label].dtype == frames.dtype
        assert np.array_equal(got[label], frames), label


def test_pass_through_refuses_to_encode_pixels(tmp_path: Path) -> None:
    """Writing pixels through a pass-through codec raises; so does a foreign bitstream."""
    codec = DicomJpegLsCodec(
        transfer_syntax_uid="1.2.840.10008.1.2.4.80",
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        bits_stored=12,
    )
    arr = _sharded(tmp_path / "x.zarr", (2, 8, 8), np.dtype("u2"), codec)
    with pytest.raises(CodecError, match="cannot encode pixels"):
        arr[:] = np.ones((2, 8, 8), np.uint16)
    with pytest.raises(CodecError):
        codec.encode_bitstream(Htj2kCodec().encode_frame(np.ones((8, 8), np.uint16)))
    with pytest.raises(CodecError):
        codec.encode_bitstream(b"\x00" * 100)
    jls = JpegLsCodec().encode_frame(np.full((8, 8), 100, np.uint16))
    assert codec.encode_bitstream(jls) == jls
    with pytest.raises(CodecError):  # wrong array dtype (zarr validates unsharded codecs only)
        zarr.create_array(
            {}, shape=(2, 8, 8), chunks=(1, 8, 8), dtype="i2", serializer=codec, compressors=None
        )
    with pytest.raises(CodecError):  # DCT JPEG is never decoded by imagecodecs
        pass_through_codec(
            "1.2.840.10008.1.2.4.50",
            photometric_interpretation="MONOCHROME2",
            bits_allocated=8,
            bits_stored=8,
            decoder="imagecodecs",
        )


@pytest.mark.parametrize(
    ("syntax", "photometric", "decoder"),
    [
        ("1.2.840.10008.1.2.4.80", "MONOCHROME2", "imagecodecs"),  # JPEG-LS: integer-exact
        ("1.2.840.10008.1.2.4.81", "RGB", "imagecodecs"),
        ("1.2.840.10008.1.2.4.90", "MONOCHROME2", "imagecodecs"),  # reversible only
        ("1.2.840.10008.1.2.4.91", "MONOCHROME2", "pydicom"),  # may be irreversible 9/7
        ("1.2.840.10008.1.2.4.50", "MONOCHROME2", "pydicom"),  # DCT: decoders differ
        ("1.2.840.10008.1.2.4.80", "YBR_FULL", "pydicom"),  # colour conversion as pydicom's
    ],
)
def test_pass_through_picks_the_fast_decoder_only_where_it_is_exact(
    syntax: str, photometric: str, decoder: str
) -> None:
    """The default decoder per syntax (a slow default went unnoticed once: same pixels)."""
    samples = 1 if photometric.startswith("MONO") else 3
    codec = pass_through_codec(
        syntax,
        photometric_interpretation=photometric,
        bits_allocated=8,
        bits_stored=8,
        samples_per_pixel=samples,
    )
    assert codec.decoder == decoder


def test_a_zarr_codec_not_made_from_a_frame_coder_is_refused_when_defined() -> None:
    """The type is checked once, when the class is made, not on every chunk."""
    from pacs_engine.codecs._zarr import ZarrFrameCodec, zarr_codec

    with pytest.raises(TypeError, match="Stray is not made from a frame coder"):

        class Stray(ZarrFrameCodec):
            pass

    for coder in ARCHIVE_BY_NAME.values():
        made = zarr_codec(coder)
        assert issubclass(made, ZarrFrameCodec) and issubclass(made, coder)


@pytest.mark.parametrize("cname", ["lz4", "zstd", "blosclz"])
@pytest.mark.parametrize("shuffle", sorted(SHUFFLES))
def test_blosc_frames_decompress_to_what_numcodecs_gives(cname: str, shuffle: str) -> None:
    """blosc_decompress (imagecodecs) against numcodecs, which zarr decodes these chunks with."""
    import numcodecs.blosc

    rng = np.random.default_rng(7)
    for dtype, n in [("u1", 1), ("u1", 1000), ("u2", 512 * 512), ("i2", 4097), ("u4", 65536)]:
        frame = rng.integers(0, 3000 if dtype != "u1" else 200, n).astype(dtype)
        blosc = Blosc(cname, 5, shuffle, frame.dtype.itemsize)
        stored = blosc.encode(frame.tobytes())
        assert blosc_decompress(stored) == bytes(numcodecs.blosc.decompress(stored))
        assert blosc_decompress(memoryview(stored)) == frame.tobytes()
        into = np.full(n, 7, dtype)
        blosc_decompress_into(memoryview(stored), into)
        np.testing.assert_array_equal(into, frame)
        for size in (n - 1, n + 1):  # c-blosc would fill a larger buffer in part, silently
            with pytest.raises(CodecError, match=f"not the {size * frame.itemsize} of"):
                blosc_decompress_into(stored, np.empty(size, dtype))
        # Cut or lengthened frames: numcodecs may give bytes c-blosc never wrote, here an error.
        huge = BLOSC_HEADER.pack(*BLOSC_HEADER.unpack_from(stored)[:4], 2**31, 2**16, len(stored))
        bad_head = b"\xff" * 8 + stored[8:]  # its length right, its header not
        cases = (stored[: len(stored) // 2], stored[:-1], stored[:8], stored + b"\0\0")
        for damaged in (*cases, huge + stored[BLOSC_HEADER.size :], bad_head):
            with pytest.raises(CodecError, match="damaged Blosc frame"):
                blosc_decompress(damaged)
        for damaged in cases:
            with pytest.raises(CodecError, match="damaged Blosc frame"):
                blosc_decompress_into(damaged, np.empty(n, dtype))
        # Their headers' sizes are 2**31 and 0xffffffff bytes: not the output's.
        for damaged in (huge + stored[BLOSC_HEADER.size :], bad_head):
            with pytest.raises(CodecError, match=f"not the {n * frame.itemsize} of"):
                blosc_decompress_into(damaged, np.empty(n, dtype))


@pytest.mark.parametrize(
    ("cname", "shuffle"),
    [("lz4", "shuffle"), ("lz4", "noshuffle"), ("zstd", "bitshuffle"), ("blosclz", "shuffle")],
)
def test_a_blosc_frame_with_a_right_header_and_a_damaged_payload_is_an_error(
    cname: str, shuffle: str
) -> None:
    """c-blosc's own error on a compressed stream it cannot decode, from both decoders.

    Blosc frames carry no checksum: c-blosc finds a damaged stream, not every changed
    byte (a frame stored uncompressed, or flipped literals, decode without an error).
    """
    rows, columns = np.mgrid[:64, :48]
    frame = (columns * 7 + rows * 3).astype("u2")  # compressible: a compressed stream
    stored = Blosc(cname, 5, shuffle, 2).encode(frame.tobytes())
    at = BLOSC_HEADER.size + 4  # past the header and the one block's start
    quarter = len(stored) // 4
    flipped = stored[:at] + bytes(b ^ 0xFF for b in stored[at:])
    zeroed = stored[:-quarter] + bytes(quarter)
    out = np.zeros_like(frame)
    for damaged in (flipped, zeroed):
        assert BLOSC_HEADER.unpack_from(damaged) == BLOSC_HEADER.unpack_from(stored)
        for decode in (blosc_decompress, lambda data: blosc_decompress_into(data, out)):
            with pytest.raises(CodecError, match="damaged Blosc frame") as caught:
                decode(damaged)
            assert "header" not in str(caught.value)  # c-blosc's error, not the length check
    blosc_decompress_into(stored, out)
    np.testing.assert_array_equal(out, frame)


def test_blosc_decompress_into_takes_only_c_contiguous_writeable_arrays(tmp_path: Path) -> None:
    """An F-order `out` would get the frame in a copy and keep its stale pixels; c-blosc
    would write into a read-only one (a bytes object) or crash (a read-only memmap)."""
    frame = np.arange(64 * 48, dtype="u2").reshape(64, 48)
    stored = Blosc("lz4", 5, "shuffle", 2).encode(frame.tobytes())
    frozen = bytes(frame.nbytes)
    (tmp_path / "frame").write_bytes(frozen)
    refused = (
        np.zeros((64, 48), "u2", order="F"),
        np.zeros((64, 96), "u2")[:, ::2],
        np.frombuffer(frozen, "u2").reshape(64, 48),
        np.memmap(tmp_path / "frame", "u2", "r", shape=(64, 48)),
    )
    for out in refused:
        with pytest.raises(ValueError, match="C-contiguous writeable"):
            blosc_decompress_into(stored, out)
        assert not out.any()
    assert not any(frozen)
    out = np.zeros((64, 48), "u2")
    blosc_decompress_into(stored, out)
    np.testing.assert_array_equal(out, frame)
