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

from pacs_engine._native.scanner import PixelScan, Scanner
from pacs_engine.errors import ScanError
from pacs_engine.header import Header, PixelLocation, fragment_frames

#: Patient and study attributes (the index keeps them once per study and matches
#: queries on them at every level).
_STUDY: dict[str, tuple[int, str]] = {
    "PatientID": (0x00100020, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "IssuerOfPatientID": (0x00100021, "LO"),
    "OtherPatientIDs": (0x00101000, "LO"),
    "PatientAge": (0x00101010, "AS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "StudyDescription": (0x00081030, "LO"),
    "AccessionNumber": (0x00080050, "SH"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "StudyID": (0x00200010, "SH"),
}
STUDY_KEYWORDS: tuple[str, ...] = tuple(_STUDY)

#: Series attributes (the index keeps them once per series and matches queries on
#: them at every level).
_SERIES: dict[str, tuple[int, str]] = {
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "SeriesNumber": (0x00200011, "IS"),
    "SeriesDescription": (0x0008103E, "LO"),
    "Modality": (0x00080060, "CS"),
    "BodyPartExamined": (0x00180015, "CS"),
    "SeriesDate": (0x00080021, "DA"),
    "SeriesTime": (0x00080031, "TM"),
    "Laterality": (0x00200060, "CS"),
    "ProtocolName": (0x00181030, "LO"),
    "Manufacturer": (0x00080070, "LO"),
    "ManufacturerModelName": (0x00081090, "LO"),
}
SERIES_KEYWORDS: tuple[str, ...] = tuple(_SERIES)

#: Instance attributes (the index matches queries on them at the instance level).
_INSTANCE: dict[str, tuple[int, str]] = {
    "ImageType": (0x00080008, "CS"),
    "ConvolutionKernel": (0x00181210, "SH"),
    "FrameOfReferenceUID": (0x00200052, "UI"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "InstanceNumber": (0x00200013, "IS"),
    "AcquisitionNumber": (0x00200012, "IS"),
    "TransferSyntaxUID": (0x00020010, "UI"),
    "SpecificCharacterSet": (0x00080005, "CS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "NumberOfFrames": (0x00280008, "IS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "PlanarConfiguration": (0x00280006, "US"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "HighBit": (0x00280102, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "RescaleSlope": (0x00281053, "DS"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleType": (0x00281054, "LO"),
    "WindowCenter": (0x00281050, "DS"),
    "WindowWidth": (0x00281051, "DS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "PixelSpacing": (0x00280030, "DS"),
    "SliceThickness": (0x00180050, "DS"),
    "SliceLocation": (0x00201041, "DS"),
}
INSTANCE_KEYWORDS: tuple[str, ...] = tuple(_INSTANCE)

#: The attributes every header carries (when the file has them), by DICOM keyword:
#: the one list of what the scanner records and what the index matches on.
HEADER_KEYWORDS: tuple[str, ...] = STUDY_KEYWORDS + SERIES_KEYWORDS + INSTANCE_KEYWORDS
#: A row holding this keyword was written by a scanner that recorded every one of
#: HEADER_KEYWORDS (`rebuild-index` reads the header blobs of older rows again to fill
#: them): a keyword added to HEADER_KEYWORDS must come with a new one here.
NEWEST_KEYWORD = "ImageType"
#: Each header keyword's tag and VR, as DICOM's data dictionary has them (a test checks
#: them against pydicom's): the scanner needs them at import, and pydicom costs a
#: quarter of a second to import, which each ingest worker would pay to scan.
HEADER_TAGS: dict[str, tuple[int, str]] = {**_STUDY, **_SERIES, **_INSTANCE}
#: The header keywords whose value may hold several values (VM other than 1 in the data
#: dictionary; a test checks them against pydicom's): a query matches them value by value.
MULTI_VALUED_KEYWORDS: frozenset[str] = frozenset(
    {
        "OtherPatientIDs",
        "ImageType",
        "ConvolutionKernel",
        "SpecificCharacterSet",
        "WindowCenter",
        "WindowWidth",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
    }
)

PathLike = str | os.PathLike | bytes
Source = PathLike | bytes | bytearray | memoryview


def _plain(value: Any) -> Any:
    """pydicom's value types as plain Python ones (str, int, float, list)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

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
    # Here, not at the top: a scan whose values all take the fast path needs no pydicom.
    from pydicom.charset import convert_encodings
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import BaseTag
    from pydicom.values import convert_value

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
    import numpy as np

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
    unknown = [k for k in keywords if k not in HEADER_TAGS]
    if unknown:
        raise ValueError(f"not header keywords: {', '.join(unknown)}")
    return Scanner(
        list(keywords),
        [HEADER_TAGS[k][0] for k in keywords],
        [HEADER_TAGS[k][1] for k in keywords],
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
