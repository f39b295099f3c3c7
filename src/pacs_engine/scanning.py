"""Scan DICOM headers with the native scanner: one file, or many on a thread pool."""

from __future__ import annotations

import itertools
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName
from pydicom.values import convert_value

from pacs_engine._native.scanner import PixelScan, Scanner
from pacs_engine.errors import ScanError
from pacs_engine.header import Header, PixelLocation, fragment_frames

#: Patient and study attributes (the index keeps them once per study and matches
#: queries on them at every level).
STUDY_KEYWORDS: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)

#: Series attributes (the index keeps them once per series and matches queries on
#: them at every level).
SERIES_KEYWORDS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "BodyPartExamined",
    "SeriesDate",
    "SeriesTime",
    "Laterality",
    "ProtocolName",
    "Manufacturer",
    "ManufacturerModelName",
)

#: Instance attributes (the index matches queries on them at the instance level).
INSTANCE_KEYWORDS: tuple[str, ...] = (
    "ImageType",
    "ConvolutionKernel",
    "FrameOfReferenceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "AcquisitionNumber",
    "TransferSyntaxUID",
    "SpecificCharacterSet",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SliceLocation",
)

#: The attributes every header carries (when the file has them), by DICOM keyword:
#: the one list of what the scanner records and what the index matches on.
HEADER_KEYWORDS: tuple[str, ...] = STUDY_KEYWORDS + SERIES_KEYWORDS + INSTANCE_KEYWORDS

PathLike = str | os.PathLike | bytes
Source = PathLike | bytes | bytearray | memoryview


def _plain(value: Any) -> Any:
    """pydicom's value types as plain Python ones (str, int, float, list)."""
    if isinstance(value, MultiValue | list):
        return [_plain(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return value


# pydicom warns about each invalid value it converts; the scanner reports values, it
# does not validate them, and warnings.catch_warnings is not thread-safe without a lock.
_SLOW_PATH = threading.Lock()


def _slow_value(vr: str, raw: bytes, little_endian: bool, character_sets: Any) -> Any:
    """Convert a value the native fast path leaves alone, exactly as pydicom does."""
    element = RawDataElement(BaseTag(0), vr, len(raw), raw, 0, False, little_endian)
    with _SLOW_PATH, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encodings = convert_encodings(character_sets)
        try:
            return _plain(convert_value(vr, element, encodings))
        except (ValueError, TypeError, OverflowError, LookupError):
            # pydicom refuses some malformed values; keep the text rather than lose it.
            return raw.decode("latin-1").strip(" \0")


def _number_of_frames(attributes: Mapping[str, Any]) -> int:
    frames = attributes.get("NumberOfFrames")
    return frames if isinstance(frames, int) and frames > 0 else 1


def _encapsulated_location(
    pixel: PixelScan, attributes: Mapping[str, Any], little: bool
) -> PixelLocation:
    """The PixelLocation of encapsulated pixel data: the tables decoded, fragments in frames."""
    endian = "<" if little else ">"
    bot, offsets = pixel.bot, pixel.fragment_offsets
    lengths, eoi = pixel.fragment_lengths, pixel.fragment_eoi
    # The scanner sets all four for encapsulated data (and none for native data).
    assert bot is not None and offsets is not None and lengths is not None and eoi is not None
    basic = np.frombuffer(bot[: len(bot) // 4 * 4], dtype=f"{endian}u4").astype(np.int64)
    eot = None
    if pixel.extended_offset_table is not None:
        eot = tuple(
            np.frombuffer(t[: len(t) // 8 * 8], dtype=f"{endian}u8").astype(np.uint64)
            for t in pixel.extended_offset_table
        )
    frames = fragment_frames(
        offsets,
        pixel.bot_offset + len(bot),
        basic,
        eot[0] if eot else None,
        eoi,
        _number_of_frames(attributes),
    )
    return PixelLocation(
        pixel.tag,
        pixel.vr,
        pixel.element_offset,
        pixel.value_offset,
        pixel.value_length,
        True,
        pixel.bot_offset,
        basic,
        eot,
        offsets,
        lengths,
        frames,
    )


def _make_scanner(keywords: Sequence[str]) -> Scanner[Header]:
    """A scanner for `keywords` that builds Headers; they always carry the TransferSyntaxUID."""
    if "TransferSyntaxUID" not in keywords:
        keywords = (*keywords, "TransferSyntaxUID")
    found = [tag_for_keyword(k) for k in keywords]
    unknown = [k for k, t in zip(keywords, found, strict=True) if t is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    tags = [t for t in found if t is not None]  # all are, after the check
    vrs = [dictionary_VR(t)[:2] for t in tags]
    return Scanner(
        list(keywords),
        tags,
        vrs,
        _slow_value,
        Header,
        PixelLocation.native,
        _encapsulated_location,
    )


_SCANNER = _make_scanner(HEADER_KEYWORDS)


_BUFFERS = (bytes, bytearray, memoryview)


def scan(source: Source) -> Header:
    """Scan one DICOM file (a path, or its bytes) and return its header; raises ScanError."""
    if isinstance(source, _BUFFERS):
        return _SCANNER.header_buffer(source)
    path = source if type(source) is str else os.fsdecode(source)
    return _SCANNER.header_path(path)


def scan_many(
    paths: Iterable[PathLike], threads: int | None = None, batch: int = 64
) -> Iterator[Header | ScanError]:
    """Scan many files on `threads` threads; yields a Header or a ScanError per path, in order.

    Files are parsed in batches, each in one release of the GIL, so threads
    overlap disk reads and parsing. At most 4 x threads batches are in flight,
    so memory stays bounded on any number of paths.
    """
    threads = threads or os.cpu_count() or 1
    names = map(os.fsdecode, paths)
    batches = iter(lambda: list(itertools.islice(names, batch)), [])
    if threads == 1:
        for paths_batch in batches:
            yield from _SCANNER.header_paths(paths_batch)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="pacs-scan") as pool:
        pending: deque = deque()
        for paths_batch in batches:
            pending.append(pool.submit(_SCANNER.header_paths, paths_batch))
            if len(pending) >= 4 * threads:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
