"""The shapes of what the index stores: instance rows, their parts, series and study records.

A row is JSON: these TypedDicts describe it for readers and type checkers and change
nothing at run time (a row is still a plain dict). Header attributes are the
scanner's keywords (`pacs_engine.scanning.HEADER_KEYWORDS`); the rest are the
archive's fields, written by the ingest (`pacs_engine.ingest.encode.new_row`,
`pacs_engine.archive.versions`). Every field but the three UIDs may be absent: rows
written by older code lack the newer fields, and the index accepts any row with UIDs.
"""

from __future__ import annotations

from typing import Any, TypedDict

#: A header attribute as the scanner records it: str, int, float, a list of them, or
#: None. Typed Any because a malformed number stays text: a narrower type would lie.
Value = Any


class PixelRef(TypedDict):
    """Where an instance's frames are: `frames` frames of one array, from `first_frame` on."""

    array: str
    first_frame: int
    frames: int


class HeaderRef(TypedDict):
    """Where an instance's header blob is: `length` bytes at `offset` of a pack file."""

    pack: str  # relative to the archive's root
    offset: int
    length: int


class Duplicate(TypedDict):
    """An input found byte-identical to an archived version of the instance."""

    path: str
    sha256: str


class StudyAttributes(TypedDict, total=False):
    """The patient and study attributes the scanner records (scanning.STUDY_KEYWORDS)."""

    PatientID: Value
    PatientName: Value
    PatientBirthDate: Value
    PatientSex: Value
    IssuerOfPatientID: Value
    OtherPatientIDs: Value
    PatientAge: Value
    StudyDate: Value
    StudyTime: Value
    StudyDescription: Value
    AccessionNumber: Value
    ReferringPhysicianName: Value
    StudyID: Value


class SeriesAttributes(TypedDict, total=False):
    """The series attributes the scanner records, but its UID (scanning.SERIES_KEYWORDS)."""

    SeriesNumber: Value
    SeriesDescription: Value
    Modality: Value
    BodyPartExamined: Value
    SeriesDate: Value
    SeriesTime: Value
    Laterality: Value
    ProtocolName: Value
    Manufacturer: Value
    ManufacturerModelName: Value


class Attributes(StudyAttributes, SeriesAttributes, total=False):
    """The scanner's header attributes other than the three UIDs, by keyword."""

    ImageType: Value  # a list of its values (ORIGINAL, PRIMARY, ...), as every multi-valued one
    ConvolutionKernel: Value
    FrameOfReferenceUID: Value
    SOPClassUID: Value
    InstanceNumber: Value
    AcquisitionNumber: Value
    TransferSyntaxUID: Value
    SpecificCharacterSet: Value
    Rows: Value
    Columns: Value
    NumberOfFrames: Value
    SamplesPerPixel: Value
    PhotometricInterpretation: Value
    PlanarConfiguration: Value
    BitsAllocated: Value
    BitsStored: Value
    HighBit: Value
    PixelRepresentation: Value
    RescaleSlope: Value
    RescaleIntercept: Value
    RescaleType: Value
    WindowCenter: Value
    WindowWidth: Value
    ImagePositionPatient: Value
    ImageOrientationPatient: Value
    PixelSpacing: Value
    SliceThickness: Value
    SliceLocation: Value


class VersionFields(Attributes, total=False):
    """What one version of an instance has besides its UIDs: attributes, file, blob, pixels."""

    source_path: str  # the input's key: a path, or a member of a zip/tar or archive
    source_sha256: str  # "": a copy's native frames, checked by their hashes (archive.copies)
    header_sha256: str  # of the header blob as stored: copies' rows, transcoded instances
    file_size: int
    transfer_syntax_uid: str | None
    little_endian: bool
    header: HeaderRef
    pixels: PixelRef | None  # None: no pixel data
    pixel_keyword: str | None
    pixel_vr: str | None
    pixel_storage: str  # "native", "bitstream" or "none"
    transcoded: bool
    color_conversion: str
    # "blake3:" and 32 hex digits per frame (32 hex digits of BLAKE2b in rows written before
    # issue 18: archive.prepare.hash_kind); None: original bitstreams stored undecoded
    frame_hashes: list[str] | None
    not_verified: str  # present when no decoder reads its bitstreams: why (kept as received)
    pixel_hash: str | None
    raw_pixel_bytes: int
    stored_bytes: int
    ingested_at: str
    run: str  # the ingest run that received it; PENDING until committed


class Version(VersionFields, total=False):
    """An entry of a row's `versions`: an earlier version whole, or the current one's summary."""

    SOPInstanceUID: str
    SeriesInstanceUID: str
    StudyInstanceUID: str
    current: bool  # the summary of the version the row's top level describes


class _RowUids(TypedDict):
    SOPInstanceUID: str
    SeriesInstanceUID: str
    StudyInstanceUID: str


class Row(_RowUids, VersionFields, total=False):
    """An index row: the instance's current version, and the instance's own fields."""

    duplicates: list[Duplicate]  # this archive's inputs identical to a kept version
    source_duplicates: list[Duplicate]  # copied from another archive: its duplicates
    versions: list[Version]  # oldest first, the current one's summary last
    current_reason: str


class SeriesRecord(SeriesAttributes, total=False):
    """A series: the series attributes of its last committed row, its study, its size."""

    SeriesInstanceUID: str
    StudyInstanceUID: str
    NumberOfSeriesRelatedInstances: int


class StudyRecord(StudyAttributes, total=False):
    """A study: the patient and study attributes of its last committed row, and counts."""

    StudyInstanceUID: str
    ModalitiesInStudy: list[str]
    NumberOfStudyRelatedSeries: int
    NumberOfStudyRelatedInstances: int
