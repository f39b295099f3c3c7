"""scan() on hostile input: mutated real files, garbage, adversarial structures.

The contract: ANY bytes given to `scan(bytes)`, or to `scan(path)` for a file
holding them, give a Header or a ScanError that names the file (for a path),
a byte offset in 0..len(data) and a non-empty reason. Never another exception,
a crash, a hang, an unbounded allocation or a read past the buffer.

Every case here runs three ways: on the bytes, on a copy of them that ends
exactly at an unreadable page (a read past the end faults at once instead of
reading whatever follows), and on a file holding them. The mutations are
seeded, so a run is repeatable; the base files are pydicom's bundled test
files, plus a sample of the shared corpus when it is present.

Inputs that once broke the contract live in tests/data/fuzz/ and are run by
test_fuzz_reproducer.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import random
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from conftest import CORPUS, corpus_files, pydicom_test_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scan_contract import HANG_SECONDS, Checker, contract_problem, run_isolated

from pacs_engine import Header, ScanError, scan, scan_many

FUZZ_DATA = Path(__file__).parent / "data" / "fuzz"
#: A test of this module still running after this long dumps every thread's stack and exits.
WATCHDOG_SECONDS = 300

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
LONG_VRS = set(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
EXPLICIT_LE = b"1.2.840.10008.1.2.1\0"
IMPLICIT_LE = b"1.2.840.10008.1.2\0"
EXPLICIT_BE = b"1.2.840.10008.1.2.2\0"
DEFLATED = b"1.2.840.10008.1.2.1.99"

pytestmark = [
    # pydicom warns about every odd value the slow path hands it: expected here.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


#: Where the watchdog writes the stacks when it ends a hung run (pytest captures stderr).
WATCHDOG_LOG = Path(tempfile.gettempdir()) / "pacs_engine-test_scan_fuzz-watchdog.log"


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """Turn a hang inside native code (which no Python timeout can interrupt) into an exit.

    The run then ends without a summary; WATCHDOG_LOG names the test and holds the stacks.
    """
    with WATCHDOG_LOG.open("w") as log:
        log.write(f"{request.node.nodeid} ran past {WATCHDOG_SECONDS} s; stacks:\n")
        log.flush()
        faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=log)
        yield
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    """pydicom logs a warning for each odd value; thousands of them would bury a failure."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


# --- the checker ------------------------------------------------------------


@pytest.fixture
def check(tmp_path: Path) -> Iterator[Checker]:
    checker = Checker(tmp_path)
    yield checker
    checker.report()  # a test that forgot to: fails at teardown rather than passing


# --- base files ---------------------------------------------------------------


@cache
def base_files() -> tuple[tuple[str, bytes], ...]:
    """Small real files of every kind that scan reads: pydicom's, plus a corpus sample.

    One file (the smallest) per layout: transfer syntax, preamble, file meta,
    pixel data encapsulated or not; and, dropping none, every file in the corpus's
    malformed/ and every file scan refuses (pydicom's truncated and non-DICOM ones).
    """
    chosen: dict[tuple, tuple[str, bytes]] = {}
    malformed: list[tuple[str, bytes]] = []
    sample = [(p, f"pydicom:{p.name}") for p in pydicom_test_files()]
    sample += [(p, f"corpus:{p.relative_to(CORPUS)}") for p in corpus_files()]
    for path, name in sample:
        if path.stat().st_size > 300_000:
            continue
        data = path.read_bytes()
        if "malformed" in path.parts:
            malformed.append((name, data))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                header = scan(data)
            except ScanError:
                malformed.append((name, data))
                continue
        pixel = header.pixel
        kind = (
            header.transfer_syntax_uid,
            header.explicit_vr,
            header.little_endian,
            header.has_preamble,
            header.has_file_meta,
            None if pixel is None else pixel.encapsulated,
            None if pixel is None else pixel.basic_offset_table.size > 0,
        )
        if kind not in chosen or len(data) < len(chosen[kind][1]):
            chosen[kind] = (name, data)
    return tuple(sorted(chosen.values())) + tuple(sorted(malformed))


def bases(limit: int | None = None, having: Callable[[bytes], bool] | None = None) -> list:
    """pytest params over the base files (the first `limit`, those `having` a property)."""
    files = base_files()[:limit]
    return [pytest.param(data, id=name) for name, data in files if having is None or having(data)]


# --- element headers found by walking a real file ----------------------------


@dataclass(frozen=True)
class Field:
    """The header of one element (or item, or delimiter) found in a file."""

    offset: int  # first byte of the tag
    tag: int
    vr_offset: int | None  # the two VR bytes, for explicit VR
    length_offset: int
    length_size: int  # 2 or 4
    length: int
    little: bool

    @property
    def value_offset(self) -> int:
        return self.length_offset + self.length_size


class Walker:
    """An independent, forgiving walk of a file's elements, nested ones included."""

    def __init__(self, data: bytes, limit: int = 400):
        self.data = data
        self.limit = limit
        self.fields: list[Field] = []

    def full(self) -> bool:
        return len(self.fields) >= self.limit

    def dataset(self, pos: int, end: int, explicit: bool, little: bool, nested: bool) -> int | None:
        data = self.data
        e = "<" if little else ">"
        while pos + 8 <= end and not self.full():
            group, element = struct.unpack_from(f"{e}HH", data, pos)
            tag = group << 16 | element
            vr = None
            if explicit and group != 0xFFFE:
                vr = data[pos + 4 : pos + 6]
                if not (vr.isalpha() and vr.isupper()):
                    return None
                size, at = (4, pos + 8) if vr in LONG_VRS else (2, pos + 6)
            else:
                size, at = 4, pos + 4
            if at + size > len(data):
                return None
            length = struct.unpack_from(f"{e}{'I' if size == 4 else 'H'}", data, at)[0]
            self.fields.append(Field(pos, tag, pos + 4 if vr else None, at, size, length, little))
            value = at + size
            if nested and tag == ITEM_DELIMITER:
                return value
            if length == UNDEFINED:
                if tag in PIXEL_TAGS:
                    after = self.items(value, little)
                elif vr in (None, b"SQ", b"UN"):
                    after = self.sequence(
                        value, len(data), explicit and vr != b"UN", little or vr == b"UN"
                    )
                else:
                    return None
                if after is None:
                    return None
                pos = after
            else:
                if vr == b"SQ" and value + length <= len(data):
                    self.sequence(value, value + length, explicit, little)
                pos = value + length
        return pos

    def sequence(self, pos: int, end: int, explicit: bool, little: bool) -> int | None:
        e = "<" if little else ">"
        while pos + 8 <= end and not self.full():
            group, element, length = struct.unpack_from(f"{e}HHI", self.data, pos)
            tag = group << 16 | element
            self.fields.append(Field(pos, tag, None, pos + 4, 4, length, little))
            if tag == SEQUENCE_DELIMITER:
                return pos + 8
            if tag != ITEM:
                return None
            if length == UNDEFINED:
                after = self.dataset(pos + 8, len(self.data), explicit, little, nested=True)
                if after is None:
                    return None
                pos = after
            else:
                self.dataset(pos + 8, min(pos + 8 + length, end), explicit, little, nested=True)
                pos += 8 + length
        return pos

    def items(self, pos: int, little: bool) -> int | None:
        e = "<" if little else ">"
        while pos + 8 <= len(self.data) and not self.full():
            group, element, length = struct.unpack_from(f"{e}HHI", self.data, pos)
            tag = group << 16 | element
            self.fields.append(Field(pos, tag, None, pos + 4, 4, length, little))
            if tag != ITEM or length == UNDEFINED:
                return pos + 8 if tag == SEQUENCE_DELIMITER else None
            pos += 8 + length
        return None


def header_of(data: bytes) -> Header | None:
    """scan(data), or None when scan refuses it (for choosing mutations only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return scan(data)
        except ScanError:
            return None


def walk(data: bytes, limit: int = 400) -> list[Field]:
    """The element headers of a real file, file meta included, in file order."""
    header = header_of(data)
    if header is None:
        return []
    walker = Walker(data, limit)
    if header.has_file_meta:
        walker.dataset(
            132 if header.has_preamble else 0, header.dataset_offset, True, True, nested=False
        )
    if not header.deflated:
        walker.dataset(
            header.dataset_offset, len(data), header.explicit_vr, header.little_endian, nested=False
        )
    return walker.fields


def spread(items: list, count: int) -> list:
    """At most `count` of items, evenly spread, first and last included."""
    if len(items) <= count:
        return items
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def put(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def length_bytes(field: Field, value: int) -> bytes:
    e = "<" if field.little else ">"
    if field.length_size == 2:
        return struct.pack(f"{e}H", value & 0xFFFF)
    return struct.pack(f"{e}I", value & 0xFFFFFFFF)


# --- builders for synthetic files -------------------------------------------


def element(
    group: int,
    elem: int,
    vr: bytes | None,
    value: bytes,
    *,
    little: bool = True,
    length: int | None = None,
) -> bytes:
    """One element; vr None for implicit VR. `length` overrides the length field."""
    e = "<" if little else ">"
    n = len(value) if length is None else length
    if vr is None:
        return struct.pack(f"{e}HHI", group, elem, n) + value
    if vr in LONG_VRS:
        return struct.pack(f"{e}HH2sHI", group, elem, vr, 0, n) + value
    return struct.pack(f"{e}HH2sH", group, elem, vr, n) + value


def file_meta(syntax: bytes = EXPLICIT_LE) -> bytes:
    """Preamble, 'DICM' and a minimal file meta group."""
    body = element(2, 0x10, b"UI", syntax + b"\0" * (len(syntax) % 2))
    return b"\0" * 128 + b"DICM" + element(2, 0, b"UL", struct.pack("<I", len(body))) + body


def tag(tag_value: int, length: int, little: bool = True) -> bytes:
    """An item or delimiter header."""
    e = "<" if little else ">"
    return struct.pack(f"{e}HHI", tag_value >> 16, tag_value & 0xFFFF, length)


def nested_sequences(
    depth: int, vr: bytes | None = b"SQ", little: bool = True, closed: bool = True
) -> bytes:
    """`depth` sequences of undefined length, each in an item of the one outside it."""
    opening = element(0x0040, 0xA730, vr, b"", little=little, length=UNDEFINED)
    opening += tag(ITEM, UNDEFINED, little)
    closing = tag(ITEM_DELIMITER, 0, little) + tag(SEQUENCE_DELIMITER, 0, little)
    return opening * depth + (closing * depth if closed else b"")


# --- the tests: empty, tiny and garbage inputs --------------------------------


def test_empty_input(check: Checker) -> None:
    outcome = check(b"", "empty")
    check.report()
    assert isinstance(outcome, ScanError)


@pytest.mark.parametrize("size", range(1, 201))
def test_tiny_inputs(check: Checker, size: int) -> None:
    """Inputs of 1..200 bytes: prefixes of real files, patterns and random bytes."""
    rng = random.Random(f"tiny-{size}")
    preamble = b"\0" * 128 + b"DICM"
    cases = {
        "zeros": b"\0" * size,
        "0xFF": b"\xff" * size,
        "random": rng.randbytes(size),
        "random letters": bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(size)),
        "preamble prefix": (preamble + file_meta()[132:])[:size],
        "meta prefix": file_meta()[132:][:size],
        "undefined lengths": (b"\x08\x00\x05\x00SQ\0\0\xff\xff\xff\xff" * 20)[:size],
        "items": (tag(ITEM, UNDEFINED) * 30)[:size],
    }
    for name, data in base_files():
        cases[f"prefix of {name}"] = data[:size]
    for what, data in cases.items():
        check(data, f"{what}[:{size}]")
    check.report()


def test_random_garbage(check: Checker) -> None:
    """Random bytes alone, after a preamble and after a valid file meta group."""
    rng = random.Random("garbage")
    prefixes = {
        "": b"",
        "preamble": b"\0" * 128 + b"DICM",
        "meta explicit": file_meta(EXPLICIT_LE),
        "meta implicit": file_meta(IMPLICIT_LE),
        "meta big endian": file_meta(EXPLICIT_BE),
        "meta deflated": file_meta(DEFLATED),
    }
    for size in [*range(1, 64), 100, 255, 256, 1000, 4096, 65536]:
        for name, prefix in prefixes.items():
            for _ in range(3):
                check(prefix + rng.randbytes(size), f"{name} + {size} random bytes")
    check.report()


def test_only_seeds_scan_refuses_are_left_out_of_structure_aware_cases() -> None:
    """Seeds without walked element headers get no length, VR or delimiter mutations
    (every other case still runs on them): they must be exactly those scan refuses,
    and few."""
    files = base_files()
    refused = [name for name, data in files if header_of(data) is None]
    unwalked = [name for name, data in files if not walk(data)]
    assert unwalked == refused
    assert 0 < len(refused) <= len(files) // 2, refused


# --- truncation ---------------------------------------------------------------


@pytest.mark.parametrize("data", bases())
def test_truncated(check: Checker, data: bytes) -> None:
    """Cut at every element header (and a few bytes around it) and at spread points."""
    points = {0, 1, 127, 128, 131, 132, 133, len(data) - 1}
    for field in spread(walk(data), 80):
        for delta in (0, 1, 2, 4, 6, 7, 8, 9, 11, 12, 13):
            points.add(field.offset + delta)
        points.add(field.value_offset + field.length // 2)
    header = header_of(data)
    pixel = header.pixel if header is not None else None
    if pixel is not None:
        points.update((pixel.element_offset + 4, pixel.value_offset, pixel.value_end - 1))
        for offset in pixel.fragment_offsets[:20]:
            points.update((int(offset) - 4, int(offset), int(offset) + 1))
    points.update(len(data) * i // 50 for i in range(50))
    for point in sorted(p for p in points if 0 <= p < len(data)):
        check(data[:point], f"truncated at {point} of {len(data)}")
    check.report()


# --- length fields ------------------------------------------------------------


def bad_lengths(field: Field, size: int) -> list[int]:
    """Lengths to put in a real length field of a file of `size` bytes."""
    rest = size - field.value_offset
    values = [
        0,
        1,
        2,
        3,
        field.length + 1,
        field.length - 1,
        field.length * 2,
        rest,
        rest + 1,
        rest + 2,
        rest - 1,
        0xFF,
        0xFFFE,
        0xFFFF,
    ]
    if field.length_size == 4:
        values += [0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFE, UNDEFINED]
    return sorted({v & (0xFFFF if field.length_size == 2 else 0xFFFFFFFF) for v in values})


@pytest.mark.parametrize("data", bases())
def test_bad_length_fields(check: Checker, data: bytes) -> None:
    """Every length field (meta, data set, items, delimiters, fragments) set to bad values."""
    fields = spread(walk(data), 40)
    for field in fields:
        for value in bad_lengths(field, len(data)):
            check(
                put(data, field.length_offset, length_bytes(field, value)),
                f"length of {field.tag:08X} at {field.offset} := {value:#x}",
            )
    check.report()


@pytest.mark.parametrize("data", bases(having=lambda data: bool(walk(data))))
def test_garbled_length_fields(check: Checker, data: bytes) -> None:
    """Random bytes in length fields, the byte order swapped, several fields at once."""
    rng = random.Random(f"garbled-{len(data)}-{data[-64:].hex()}")
    fields = walk(data)
    for i in range(60):
        out = data
        chosen = rng.sample(fields, min(len(fields), rng.choice((1, 1, 2, 5))))
        for field in chosen:
            raw = out[field.length_offset : field.length_offset + field.length_size]
            new = raw[::-1] if i % 3 == 0 else rng.randbytes(field.length_size)
            out = put(out, field.length_offset, new)
        check(out, f"garbled lengths at {[f.length_offset for f in chosen]} (round {i})")
    check.report()


# --- VRs, undefined lengths, delimiters in odd places ---------------------------

#: Invalid bytes, unknown letters, and real VRs that are wrong for the element.
BAD_VRS = [b"ZZ", b"XX", b"\0\0", b"  ", b"ob", b"O\0"]
BAD_VRS += b"UN SQ OB OW UT US SS UL FL FD AT DS IS PN DA SV UV OV".split()


def has_vr_bytes(data: bytes) -> bool:
    """Whether the file has explicit VRs to replace."""
    return any(f.vr_offset is not None for f in walk(data))


@pytest.mark.parametrize("data", bases(having=has_vr_bytes))
def test_bad_vrs(check: Checker, data: bytes) -> None:
    """Each explicit VR replaced by invalid, unknown and wrong (but valid) VRs."""
    fields = [f for f in walk(data) if f.vr_offset is not None]
    for field in spread(fields, 30):
        for vr in BAD_VRS:
            check(put(data, field.vr_offset, vr), f"VR of {field.tag:08X} := {vr!r}")
    check.report()


@pytest.mark.parametrize("data", bases())
def test_undefined_lengths_and_delimiters(check: Checker, data: bytes) -> None:
    """Undefined length on any element; tags turned into items and delimiters."""
    for field in spread(walk(data), 40):
        check(
            put(data, field.length_offset, length_bytes(field, UNDEFINED)),
            f"undefined length on {field.tag:08X} at {field.offset}",
        )
        e = "<" if field.little else ">"
        for special in (ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER):
            raw = struct.pack(f"{e}HH", special >> 16, special & 0xFFFF)
            check(put(data, field.offset, raw), f"tag at {field.offset} := {special:08X}")
    check.report()
    check.report()


SYNTAXES = {"explicit LE": EXPLICIT_LE, "implicit LE": IMPLICIT_LE, "explicit BE": EXPLICIT_BE}


@pytest.mark.parametrize("syntax", SYNTAXES.values(), ids=SYNTAXES.keys())
def test_odd_structures(check: Checker, syntax: bytes) -> None:
    """Hand-made oddities: delimiters at the top, unclosed sequences, items in pixel data."""
    little = syntax != EXPLICIT_BE
    implicit = syntax == IMPLICIT_LE
    meta = file_meta(syntax)

    def el(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
        return element(group, elem, None if implicit else vr, value, little=little, length=length)

    rows = el(0x28, 0x10, b"US", struct.pack("<H" if little else ">H", 4))
    pixel_undefined = el(0x7FE0, 0x10, b"OB", b"", UNDEFINED)
    cases = {
        "item delimiter at top": tag(ITEM_DELIMITER, 0, little),
        "sequence delimiter at top": tag(SEQUENCE_DELIMITER, 0, little),
        "item at top, undefined": tag(ITEM, UNDEFINED, little) + rows,
        "item at top, huge": tag(ITEM, 0xFFFFFFF0, little),
        "unclosed sequence": el(0x40, 0xA730, b"SQ", b"", UNDEFINED) + tag(ITEM, 0, little),
        "unclosed item": el(0x40, 0xA730, b"SQ", b"", UNDEFINED)
        + tag(ITEM, UNDEFINED, little)
        + rows,
        "sequence ends in item": el(0x40, 0xA730, b"SQ", b"", UNDEFINED)
        + tag(ITEM_DELIMITER, 0, little),
        "non-item in sequence": el(0x40, 0xA730, b"SQ", b"", UNDEFINED) + rows,
        "undefined OB": el(0x11, 0x1010, b"OB", b"", UNDEFINED) + rows,
        "undefined US": el(0x28, 0x10, b"US", b"", 0xFFFF) + rows,
        "undefined UT": el(0x10, 0x4000, b"UT", b"", UNDEFINED),
        "undefined UN, no delimiter": el(0x11, 0x1010, b"UN", b"", UNDEFINED) + rows,
        "pixel data, no items": pixel_undefined,
        "pixel data, undefined item": pixel_undefined + tag(ITEM, UNDEFINED, little),
        "pixel data, item delimiter": pixel_undefined + tag(ITEM_DELIMITER, 0, little),
        "pixel data, huge item": pixel_undefined + tag(ITEM, 0xFFFFFFF0, little),
        "pixel data, empty items": pixel_undefined
        + tag(ITEM, 0, little) * 1000
        + tag(SEQUENCE_DELIMITER, 0, little),
        "pixel data, odd fragment": pixel_undefined
        + tag(ITEM, 0, little)
        + tag(ITEM, 3, little)
        + b"\xff\xd9\0"
        + tag(SEQUENCE_DELIMITER, 0, little),
        "two pixel data": pixel_undefined + tag(SEQUENCE_DELIMITER, 0, little) + pixel_undefined,
        "pixel data huge": el(0x7FE0, 0x10, b"OW", b"", 0xFFFFFFF0),
        "many elements": rows * 20000,
        "wrong requested VRs": el(0x10, 0x20, b"US", b"\1\2\3")
        + el(0x28, 0x10, b"AT", b"\1\2\3\4\5")
        + el(0x28, 0x11, b"FD", b"\1\2\3")
        + el(0x28, 0x30, b"SQ", tag(ITEM, 2, little) + b"\0\0"),
    }
    for name, body in cases.items():
        check(meta + body, f"{name} ({syntax!r})")
        check(body, f"{name} without file meta ({syntax!r})")
        for cut in (1, 4, 8):
            check(meta + body[:-cut], f"{name}, last {cut} bytes cut ({syntax!r})")
    check.report()


# --- nesting --------------------------------------------------------------------


def un_nesting(depth: int) -> bytes:
    """An explicit UN of undefined length (so implicit VR inside) holding depth - 1 more."""
    opening = element(0x0040, 0xA730, b"UN", b"", length=UNDEFINED) + tag(ITEM, UNDEFINED)
    closing = tag(ITEM_DELIMITER, 0) + tag(SEQUENCE_DELIMITER, 0)
    return opening + nested_sequences(depth - 1, None) + closing


DEEP = {
    "explicit SQ": file_meta(EXPLICIT_LE) + nested_sequences(10_000, b"SQ"),
    "explicit UN": file_meta(EXPLICIT_LE) + un_nesting(10_000),
    "implicit": file_meta(IMPLICIT_LE) + nested_sequences(10_000, None),
    "big endian": file_meta(EXPLICIT_BE) + nested_sequences(10_000, b"SQ", little=False),
    "no file meta": element(0x08, 0x16, b"UI", b"1.2\0") + nested_sequences(10_000, b"SQ"),
}


@pytest.mark.parametrize("data", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_refused(check: Checker, data: bytes) -> None:
    """10,000 nested sequences of undefined length: a ScanError about nesting, no crash."""
    unclosed = data[: len(data) * 5 // 9]  # every delimiter and some openings cut off
    outcomes = {
        what: check(case, f"10,000 nested sequences, {what}")
        for what, case in (("closed", data), ("unclosed", unclosed))
    }
    check.report()
    for what, outcome in outcomes.items():
        assert isinstance(outcome, ScanError), f"{what}: nesting accepted"
        assert "nest" in outcome.reason, f"{what}: {outcome.reason}"


@pytest.mark.parametrize("depth", [1, 2, 30, 62, 63, 64, 65, 66, 200])
def test_nesting_near_the_limit(check: Checker, depth: int) -> None:
    for syntax, vr in ((EXPLICIT_LE, b"SQ"), (IMPLICIT_LE, None)):
        check(file_meta(syntax) + nested_sequences(depth, vr), f"{depth} nested, {syntax!r}")
        check(
            file_meta(syntax) + nested_sequences(depth, vr, closed=False),
            f"{depth} nested, unclosed, {syntax!r}",
        )
    check.report()


@pytest.mark.parametrize("depth", [10, 300, 3000])
def test_deep_nesting_inside_a_requested_attribute(check: Checker, depth: int) -> None:
    """Deep nesting in the (defined length) value of an attribute the header reports.

    The native parser skips a defined-length value, but the attribute is then
    converted by pydicom, which parses nested sequences recursively.
    """
    inner = nested_sequences(depth)
    item = tag(ITEM, len(inner)) + inner
    for keyword, (group, elem) in {"PatientID": (0x10, 0x20), "Rows": (0x28, 0x10)}.items():
        data = file_meta() + element(group, elem, b"SQ", item)
        check(data, f"{depth} nested sequences in {keyword} (SQ, defined length)")
    check.report()


# --- random mutations -------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, hot: int) -> tuple[bytes, str]:
    """One seeded mutation of data; `hot` bytes at the start (the header) are favoured."""
    out = bytearray(data)
    size = len(out)

    def where() -> int:
        return rng.randrange(min(size, hot) if rng.random() < 0.9 else size)

    kind = rng.choice(["flip", "flip", "bytes", "interesting", "insert", "delete", "copy", "swap"])
    if size == 0:
        return bytes(rng.randbytes(8)), "random"
    if kind == "flip":
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            out[where()] ^= 1 << rng.randrange(8)
    elif kind == "bytes":
        for _ in range(rng.choice((1, 2, 4, 16))):
            out[where()] = rng.randrange(256)
    elif kind == "interesting":
        value = rng.choice(
            [
                b"\xff\xff\xff\xff",
                b"\xf0\xff\xff\xff",
                b"\xff\xff",
                b"\0\0\0\0",
                b"\xfe\xff\x00\xe0",
                b"\xfe\xff\x0d\xe0",
                b"\xfe\xff\xdd\xe0",
                b"SQ",
                b"UN",
                b"OB",
                b"\x7f\xff\xff\xff",
                b"\xe0\x7f\x10\x00",
                b"DICM",
                b"\x02\x00",
            ]
        )
        at = where()
        out[at : at + len(value)] = value
    elif kind == "insert":
        at = where()
        out[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8, 100)))
    elif kind == "delete":
        at = where()
        del out[at : at + rng.choice((1, 2, 4, 8, 100))]
    elif kind == "copy":
        a, b = where(), where()
        n = rng.choice((4, 8, 12, 64, 512))
        out[b : b + n] = out[a : a + n]
    else:
        a, b = sorted((where(), where()))
        out[a], out[b] = out[b], out[a]
    return bytes(out), kind


def header_size(data: bytes) -> int:
    """Bytes before the pixel data value (or all), where mutations matter most."""
    header = header_of(data)
    if header is None or header.pixel is None:
        return len(data)
    return max(header.pixel.value_offset + 64, 256)


@pytest.mark.parametrize("data", bases())
def test_random_mutations(check: Checker, data: bytes) -> None:
    """Seeded random flips, overwrites, inserts, deletes and copies, stacked 1 to 4 deep."""
    rng = random.Random(f"mutations-{len(data)}-{data[-64:].hex()}")
    hot = header_size(data)
    for round_ in range(250):
        out, kinds = data, []
        for _ in range(rng.choice((1, 1, 2, 4))):
            out, kind = mutate(rng, out, hot)
            kinds.append(kind)
        check(out, f"mutation round {round_}: {'+'.join(kinds)}")
    check.report()


@pytest.mark.parametrize("threads", [1, 2])
def test_scan_many_survives_hostile_files(tmp_path: Path, threads: int) -> None:
    """scan_many gives one Header or ScanError per path, in order, whatever the files hold.

    An exception escaping one file's scan would abort the whole iteration.
    """
    rng = random.Random(f"scan_many-{threads}")
    files = [data for _, data in base_files()]
    # Not the saved reproducers: some of them hang, and this runs in-process.
    inputs = [
        b"",
        b"DICM",
        element(0x10, 0x20, b"ZZ", b"AB"),
        element(0x08, 0x60, b"CS", b"MR") + element(0x28, 0x10, b"US", b"\1\2\3"),
        element(0x08, 0x05, b"SQ", b"\\D"),
    ]
    for _ in range(120):
        data = rng.choice(files)
        inputs.append(mutate(rng, data, header_size(data))[0])
    paths = []
    for i, data in enumerate(inputs):
        path = tmp_path / f"{i:04d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.dcm"))
    results = []
    try:
        results.extend(scan_many(paths, threads=threads, batch=8))
    except Exception as error:
        pytest.fail(
            f"scan_many raised {type(error).__name__} after {len(results)} results: "
            f"{str(error)[:300]}"
        )
    assert len(results) == len(paths)
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, ScanError):
            assert (
                contract_problem(
                    result, Path(path).stat().st_size if Path(path).exists() else 0, path
                )
                is None
            ), result
        else:
            assert isinstance(result, Header), type(result)
            assert result.path == path


def test_splices(check: Checker) -> None:
    """The head of one real file glued to the tail of another."""
    rng = random.Random("splices")
    files = [data for _, data in base_files()]
    for round_ in range(300):
        a, b = rng.choice(files), rng.choice(files)
        cut_a, cut_b = rng.randrange(len(a) + 1), rng.randrange(len(b) + 1)
        check(a[:cut_a] + b[cut_b:], f"splice {round_}: a[:{cut_a}] + b[{cut_b}:]")
    check.report()


# --- deflated data sets -----------------------------------------------------------


def deflated_file(dataset: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return file_meta(DEFLATED) + packer.compress(dataset) + packer.flush()


def test_deflated(check: Checker) -> None:
    """Garbage, truncated and invalid streams behind a deflated transfer syntax."""
    rows = element(0x28, 0x10, b"US", b"\4\0")
    good = deflated_file(element(0x10, 0x20, b"LO", b"ID42") + rows)
    rng = random.Random("deflated")
    meta_size = len(file_meta(DEFLATED))
    check(good, "valid deflated")
    for cut in range(meta_size, len(good)):
        check(good[:cut], f"deflated, cut at {cut}")
    for round_ in range(100):
        out = bytearray(good)
        out[rng.randrange(meta_size, len(good))] ^= 1 << rng.randrange(8)
        check(bytes(out), f"deflated stream bit flip {round_}")
    for name, dataset in {
        "invalid VR": rows + b"\x10\x00\x20\x00\0\0\4\0ABCD",
        "truncated element": rows + element(0x10, 0x20, b"LO", b"ID42")[:-2],
        "huge length": rows + element(0x7FE0, 0x10, b"OB", b"", length=0xFFFFFFF0),
        "deep nesting": nested_sequences(1000),
    }.items():
        check(deflated_file(dataset), f"deflated data set with {name}")
    check.report()


def deflated_stream(inflated: int) -> bytes:
    """Raw deflate of a data set of about `inflated` bytes (a header, then a private OB)."""
    head = element(0x10, 0x20, b"LO", b"ID42")
    filler = bytes(max(0, inflated - len(head) - 12))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(head + element(0x11, 0x1010, b"OB", filler)) + packer.flush()


def test_deflated_stream_edges(tmp_path: Path) -> None:
    """Streams around the inflater's step sizes, with bytes after their end, cut or doubled.

    Run in a child process: inflating is a loop that a bad stream can keep going.
    """
    meta = file_meta(DEFLATED)
    cases = {}
    for size in (1000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20):
        stream = deflated_stream(size)
        cases[f"{size} bytes"] = meta + stream
        for junk in (b"\0", b"JUNK" * 2, bytes(5000)):
            cases[f"{size} bytes + {len(junk)} after the stream"] = meta + stream + junk
        cases[f"{size} bytes, stream cut in half"] = meta + stream[: len(stream) // 2]
        cases[f"{size} bytes, stream twice"] = meta + stream + stream
    run_isolated(tmp_path, cases)


def deflate_bomb(inflated_mb: int) -> bytes:
    """A deflated file: a small header, then native pixel data of inflated_mb MB of zeros."""
    pixels = bytes(inflated_mb << 20)
    dataset = element(0x10, 0x20, b"LO", b"ID42") + element(0x28, 0x10, b"US", b"\0\4")
    return deflated_file(dataset + element(0x7FE0, 0x10, b"OB", pixels))


def test_deflate_bomb_memory_is_bounded() -> None:
    """A ~100 KB deflated file that inflates to 100 MB: memory must not follow the inflation.

    Deflate packs up to ~1000:1, so inflating the whole data set at once makes a
    1 MB file cost ~1 GB (several times over, with copies). The header ends at
    the pixel data; inflating in bounded chunks (or refusing past a cap) keeps
    memory bounded whatever the file says.
    """
    data = deflate_bomb(100)
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        with contextlib.suppress(ScanError):
            scan(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"scan of a {len(data)}-byte file allocated {peak >> 20} MB at once"


HEADER_BOMB_CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from pacs_engine import ScanError, scan
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    scan(data)
    outcome = "Header"
except ScanError as error:
    outcome = f"ScanError: {error.reason}"
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "seconds": seconds, "grew_mb": (after - before) / 1024}))
"""


def header_bomb(inflated_mb: int) -> bytes:
    """A deflated file whose data set is inflated_mb MiB of empty 8-byte elements, no pixels."""
    empty = element(0x0009, 0x0010, b"LO", b"") * (1 << 17)  # 1 MiB
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = b"".join(packer.compress(empty) for _ in range(inflated_mb)) + packer.flush()
    return file_meta(DEFLATED) + stream


def test_deflated_header_bomb_is_cheap(tmp_path: Path) -> None:
    """~380 KB inflating to 250 MiB of tiny elements before any pixel data.

    The inflated header is kept and parsed whole, so memory and time follow
    the inflated size (here ~6x it in memory: the bytes, copies, one 32-byte
    record per element). Run in a child process to measure its memory.
    """
    data = header_bomb(250)
    assert len(data) < 512_000
    path = tmp_path / "header_bomb.dcm"
    path.write_bytes(data)
    child = subprocess.run(
        [sys.executable, "-c", HEADER_BOMB_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    summary = (
        f"{len(data)}-byte file: {result['outcome'][:120]} after {result['seconds']:.1f} s, "
        f"memory grew {result['grew_mb']:.0f} MB"
    )
    assert result["grew_mb"] < 512, summary
    assert result["seconds"] < HANG_SECONDS, summary


# --- hypothesis -------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=2048))
def test_hypothesis_binary(check: Checker, data: bytes) -> None:
    check(data, "hypothesis binary")
    check.report()


@FUZZ_SETTINGS
@given(data=st.binary(max_size=1024))
def test_hypothesis_binary_after_file_meta(check: Checker, data: bytes) -> None:
    check(file_meta() + data, "file meta + hypothesis binary")
    check(file_meta(IMPLICIT_LE) + data, "implicit file meta + hypothesis binary")
    check.report()


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A base file with a few overwrites, inserts and deletes, mostly in its header."""
    files = base_files()
    data = bytearray(files[draw(st.integers(0, min(len(files), 12) - 1))][1])
    hot = min(len(data), 4096)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(0, hot - 1)))
        action = draw(st.sampled_from(["put", "insert", "delete", "length"]))
        if action == "put":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF]))
            data[at : at + 4] = struct.pack("<I", value)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ_SETTINGS
@given(data=mutated_files())
def test_hypothesis_mutated_files(check: Checker, data: bytes) -> None:
    check(data, "hypothesis mutation of a real file")
    check.report()


# --- reproducers of past failures ----------------------------------------------------


def reproducers() -> list:
    files = sorted(FUZZ_DATA.glob("*.dcm")) if FUZZ_DATA.is_dir() else []
    return [pytest.param(p, id=p.name) for p in files]


@pytest.mark.parametrize("path", reproducers())
def test_fuzz_reproducer(tmp_path: Path, path: Path) -> None:
    """Each saved input that once broke the contract (see tests/data/fuzz/README.md).

    In a child process: some of these hung the scanner, which no in-process
    timeout can interrupt.
    """
    run_isolated(tmp_path, {path.name: path.read_bytes()})
