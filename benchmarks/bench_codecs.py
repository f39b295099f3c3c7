"""Lossless codecs side by side on real corpus images: ratio and one-core encode/decode speed.

Run from the repository root:

    /work/venv/bin/python -m pytest benchmarks/bench_codecs.py

Images: every frame of the corpus's CT, MR, CR/DX and US files that pydicom decodes, from
uncompressed or losslessly compressed sources only (lossy-origin pixels carry the old
codec's artefacts and would bias the ratios), at least 64x64, integer, de-duplicated by
pixel hash. Per codec and modality: ratio = raw pixel bytes / encoded bytes, geometric
mean over images; encode and decode MB/s = raw bytes / summed best-of-N time, one thread.
Every encoded frame is decoded and compared with the original (bit-exact or the run fails).
The table is printed at the end of the session; pytest-benchmark's own table times one
encode pass over all images per codec.

Environment: PACS_ENGINE_CORPUS (default ../shared/corpus), PACS_ENGINE_BENCH_REPEATS (5).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numcodecs
import numpy as np
import pydicom
import pytest

from benchmarks.conftest import CORPUS, LOSSY_SYNTAXES, NO_CORPUS
from benchmarks.read_compare import best_of
from pacs_engine.codecs import (
    CodecError,
    FrameCodec,
    Htj2kCodec,
    Jpeg2kCodec,
    JpegLsCodec,
    JpegXlCodec,
    choose_codec,
)
from pacs_engine.codecs.jpegls import encode_jpegls

REPEATS = int(os.environ.get("PACS_ENGINE_BENCH_REPEATS", "5"))
MODALITIES = ("CT", "MR", "CR", "US")
TARGET_MODALITIES = ("CT", "MR", "CR")
MIN_PIXELS = 64 * 64
BASELINE = "JPEG-LS plain (P=8/16)"
BITS_STORED = "JPEG-LS P=BitsStored+offset"
TARGET_RATIO, TARGET_MBPS = 1.05, 50.0


@dataclass(frozen=True)
class Image:
    """One real frame: its modality (CR includes DX), series, bits stored and pixels."""

    modality: str
    series: str
    bits_stored: int
    frame: np.ndarray


@cache
def corpus_images() -> tuple[Image, ...]:
    """The measured frames (see the module docstring), in manifest order."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return ()
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    seen: set[str] = set()
    images = []
    for row in rows:
        modality = "CR" if row["modality"] == "DX" else row["modality"]
        if (
            row["path"].startswith("malformed/")
            or row["pydicom_decodes"] != "yes"
            or modality not in MODALITIES
            or row["transfer_syntax_uid"] in LOSSY_SYNTAXES
        ):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(CORPUS / row["path"], force=True)
            arr = ds.pixel_array
        frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]
        for frame in frames:
            if frame.dtype.kind not in "ui" or frame.shape[0] * frame.shape[1] < MIN_PIXELS:
                continue
            frame = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
            digest = hashlib.sha1(frame.tobytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            bits = int(ds.get("BitsStored", 8 * frame.dtype.itemsize))
            images.append(Image(modality, row["series_instance_uid"], bits, frame))
    return tuple(images)


# --- the candidates ----------------------------------------------------------------

Encode = Callable[[Image], bytes]
Decode = Callable[[bytes, Image], np.ndarray]


def _frame_codec(codec: FrameCodec) -> tuple[Encode, Decode]:
    return (
        lambda im: codec.encode_frame(im.frame),
        lambda data, im: codec.decode_frame(data, im.frame.shape, im.frame.dtype),
    )


def _jpegls_at(
    precision_of: Callable[[Image], tuple[np.ndarray, int, int]],
) -> tuple[Encode, Decode]:
    """JPEG-LS of (frame - offset) at a chosen P; the offset would have to be stored too."""
    import imagecodecs

    def encode(im: Image) -> bytes:
        values, bits, offset = precision_of(im)
        return offset.to_bytes(8, "little", signed=True) + encode_jpegls(values, bits)

    def decode(data: bytes, im: Image) -> np.ndarray:
        offset = int.from_bytes(data[:8], "little", signed=True)
        out = imagecodecs.jpegls_decode(data[8:]).astype(np.int64) + offset
        return out.astype(im.frame.dtype)

    return encode, decode


def _min_subtract(im: Image) -> tuple[np.ndarray, int, int]:
    low = int(im.frame.min())
    values = im.frame.astype(np.int64) - low
    bits = max(2, int(values.max()).bit_length())
    return values.astype(np.uint8 if bits <= 8 else np.uint16), bits, low


def _bits_stored(im: Image) -> tuple[np.ndarray, int, int]:
    # Signed data offset by 2**(BitsStored-1); falls back to min-subtract if it does not fit.
    offset = -(1 << (im.bits_stored - 1)) if im.frame.dtype.kind == "i" else 0
    values = im.frame.astype(np.int64) - offset
    if values.min() < 0 or values.max() >= (1 << im.bits_stored) or im.bits_stored > 16:
        return _min_subtract(im)
    bits = max(2, im.bits_stored)
    return values.astype(np.uint8 if bits <= 8 else np.uint16), bits, offset


def _blosc() -> tuple[Encode, Decode]:
    """zarr's BloscCodec(zstd, clevel 5, bit-shuffle) is this numcodecs Blosc underneath."""
    numcodecs.blosc.set_nthreads(1)
    blosc = {
        size: numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
        for size in (1, 2, 4)
    }
    return (
        lambda im: bytes(blosc[im.frame.itemsize].encode(im.frame)),
        lambda data, im: np.frombuffer(
            blosc[im.frame.itemsize].decode(data), im.frame.dtype
        ).reshape(im.frame.shape),
    )


def candidates() -> dict[str, tuple[Encode, Decode]]:
    """Every measured configuration, by table name."""
    return {
        BASELINE: _frame_codec(JpegLsCodec(precision="dtype")),
        "JPEG-LS minimal P (default)": _frame_codec(JpegLsCodec()),
        BITS_STORED: _jpegls_at(_bits_stored),
        "JPEG-LS min-subtract": _jpegls_at(_min_subtract),
        "HTJ2K reversible": _frame_codec(Htj2kCodec()),
        "JPEG 2000 reversible": _frame_codec(Jpeg2kCodec()),
        "JPEG-XL effort 2": _frame_codec(JpegXlCodec(effort=2)),
        "JPEG-XL effort 3": _frame_codec(JpegXlCodec(effort=3)),
        "blosc zstd bitshuffle": _blosc(),
    }


PICK = "pick per series"


# --- measuring ----------------------------------------------------------------------


@dataclass
class Measured:
    """Per-image results of one codec."""

    ratios: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    raw: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    encode_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    decode_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    chosen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    series_codec: dict[str, FrameCodec] = field(default_factory=dict)


def measure(encode: Encode, decode: Decode, images: tuple[Image, ...]) -> Measured:
    """Ratio and best-of-N timings for every image; fails on any non-exact decode."""
    m = Measured()
    encode(images[0])  # warm up libraries and allocators outside the timings
    for im in images:
        enc_s, data = best_of(lambda im=im: encode(im), REPEATS)
        dec_s, back = best_of(lambda im=im, data=data: decode(data, im), REPEATS)
        assert back.dtype == im.frame.dtype and np.array_equal(back, im.frame)
        m.ratios[im.modality].append(im.frame.nbytes / len(data))
        m.raw[im.modality] += im.frame.nbytes
        m.encode_s[im.modality] += enc_s
        m.decode_s[im.modality] += dec_s
    return m


def measure_pick(images: tuple[Image, ...]) -> Measured:
    """Choose per series on its middle frame (timed too), then encode the series with it."""
    series: dict[str, list[Image]] = defaultdict(list)
    for im in images:
        series[im.series].append(im)
    m = Measured()
    for members in series.values():
        sample = members[len(members) // 2]
        pick_s, codec = best_of(lambda s=sample: choose_codec(s.frame), REPEATS)
        m.chosen[f"{sample.modality} {type(codec).__name__}"] += len(members)
        m.series_codec[sample.series] = codec
        m.encode_s[sample.modality] += pick_s
        part = measure(*_frame_codec(codec), tuple(members))
        for mod in part.raw:
            m.ratios[mod] += part.ratios[mod]
            m.raw[mod] += part.raw[mod]
            m.encode_s[mod] += part.encode_s[mod]
            m.decode_s[mod] += part.decode_s[mod]
    return m


def geomean(values: list[float]) -> float:
    """Geometric mean (nan for none)."""
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


# --- the table ------------------------------------------------------------------------


@dataclass
class Table:
    """All codecs' results, printed side by side at the end of the session."""

    results: dict[str, Measured] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report: per modality ratio, x JPEG-LS plain, encode/decode MB/s; target check."""
        base = self.results.get(BASELINE)
        images = corpus_images()
        counts = {mod: sum(im.modality == mod for im in images) for mod in MODALITIES}
        series = {
            mod: len({im.series for im in images if im.modality == mod}) for mod in MODALITIES
        }
        head = " | ".join(
            f"{mod} ({counts[mod]} img, {series[mod]} ser)".center(27) for mod in MODALITIES
        )
        out = [
            f"geometric-mean ratio (x = vs {BASELINE}), encode/decode MB/s on one core,"
            f" best of {REPEATS}",
            f"{'codec':<30} | {head} | {'CT+MR+CR':^27}",
            f"{'':<30} | " + " | ".join([f"{'ratio':>6} {'x':>5} {'enc':>6} {'dec':>6}"] * 5),
        ]
        for name, m in self.results.items():
            cells = []
            for mods in [(mod,) for mod in MODALITIES] + [TARGET_MODALITIES]:
                ratios = [r for mod in mods for r in m.ratios[mod]]
                base_ratios = [r for mod in mods for r in base.ratios[mod]] if base else []
                raw = sum(m.raw[mod] for mod in mods)
                enc = sum(m.encode_s[mod] for mod in mods)
                dec = sum(m.decode_s[mod] for mod in mods)
                gm = geomean(ratios)
                rel = gm / geomean(base_ratios) if base_ratios else math.nan
                cells.append(
                    f"{gm:6.3f} {rel:5.3f} {raw / enc / 1e6 if enc else math.nan:6.0f}"
                    f" {raw / dec / 1e6 if dec else math.nan:6.0f}"
                )
            out.append(f"{name:<30} | " + " | ".join(cells))
        out.extend(self._verdict().splitlines())
        for name, m in self.results.items():
            if m.chosen:
                out.append(
                    f"{name}: " + ", ".join(f"{k}: {v}" for k, v in sorted(m.chosen.items()))
                )
        return out

    def _verdict(self) -> str:
        base = self.results.get(BASELINE)
        by_bits = self.results.get(BITS_STORED)
        if base is None:
            return ""
        lines = [
            f"target: CT+MR+CR ratio >= {TARGET_RATIO}x JPEG-LS and encode >= {TARGET_MBPS:.0f}"
            " MB/s in each of CT, MR, CR. pooled = gm over all their images (MR-heavy);"
            " balanced = gm of the three modality gms; vs P=BS = against JPEG-LS at"
            " P=BitsStored (what dcmtk/GDCM write)"
        ]
        for name, m in self.results.items():
            gm = geomean([r for mod in TARGET_MODALITIES for r in m.ratios[mod]])
            pooled = gm / geomean([r for mod in TARGET_MODALITIES for r in base.ratios[mod]])
            balanced = geomean(
                [geomean(m.ratios[mod]) / geomean(base.ratios[mod]) for mod in TARGET_MODALITIES]
            )
            vs_bits = math.nan
            if by_bits is not None:
                bits_gm = geomean([r for mod in TARGET_MODALITIES for r in by_bits.ratios[mod]])
                vs_bits = gm / bits_gm
            slowest = min(m.raw[md] / m.encode_s[md] / 1e6 for md in TARGET_MODALITIES)
            ok = pooled >= TARGET_RATIO and slowest >= TARGET_MBPS
            lines.append(
                f"  {'MEETS' if ok else '     '} {name:<32} pooled {pooled:5.3f}x  balanced"
                f" {balanced:5.3f}x  vs P=BS {vs_bits:5.3f}x  slowest encode {slowest:4.0f} MB/s"
            )
        return "\n".join(lines)


class _Summary:
    """A plugin registered by the fixture, printing the table after the run."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.table.results:
            return
        terminalreporter.write_sep("=", "pacs_engine codec benchmark")
        for line in self.table.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> Table:
    """The shared results table (printed at the end of the session)."""
    t = Table()
    request.config.pluginmanager.register(_Summary(t), "pacs-engine-codec-summary")
    return t


@pytest.fixture(scope="module")
def images() -> tuple[Image, ...]:
    """The corpus frames; skips when the corpus is absent."""
    found = corpus_images()
    if not found:
        pytest.skip(NO_CORPUS)
    return found


@pytest.mark.corpus
@pytest.mark.parametrize("name", [*candidates(), PICK])
def test_codec(benchmark: Any, name: str, images: tuple[Image, ...], table: Table) -> None:
    """Measure one configuration on every image; pytest-benchmark times one encode pass."""
    if name == PICK:
        m = table.results[name] = measure_pick(images)

        def one_pass() -> None:
            for im in images:
                m.series_codec[im.series].encode_frame(im.frame)

        benchmark.pedantic(one_pass, rounds=REPEATS, iterations=1)
        return
    encode, decode = candidates()[name]
    try:
        table.results[name] = measure(encode, decode, images)
    except CodecError as exc:  # pragma: no cover - a codec refusing real data is a finding
        pytest.fail(f"{name}: {exc}")
    benchmark.pedantic(lambda: [encode(im) for im in images], rounds=REPEATS, iterations=1)
    m = table.results[name]
    benchmark.extra_info.update(
        {mod: round(geomean(m.ratios[mod]), 4) for mod in MODALITIES if m.ratios[mod]}
    )
