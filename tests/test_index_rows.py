"""The TypedDicts of `pacs_engine.index.rows` against the rows an ingest really writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import pydicom_test_files
from test_kept_as_received import without_pylibjpeg_rle, write_one_bit_rle

from pacs_engine import Archive
from pacs_engine.deid import deidentify, make_key
from pacs_engine.index import Index
from pacs_engine.index.codec import ARCHIVE_FIELDS
from pacs_engine.index.keys import UID_KEYWORDS
from pacs_engine.index.rows import (
    Attributes,
    Duplicate,
    HeaderRef,
    PixelRef,
    Row,
    SeriesAttributes,
    SeriesRecord,
    StudyAttributes,
    StudyRecord,
    Version,
)
from pacs_engine.scanning import HEADER_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS

# CT_small twice (a duplicate), MR_small_RLE a version of MR_small, a J2K and an RGB file.
NAMES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm")
NAMES += ("SC_rgb_small_odd.dcm",)


def declared(shape: type) -> set[str]:
    return set(shape.__required_keys__ | shape.__optional_keys__)


def real_rows(tmp_path: Path) -> list[Row]:
    """The rows of an archive of record (versions, duplicates) and of one derived from it."""
    files = [p for p in pydicom_test_files() if p.name in NAMES]
    assert len(files) == len(NAMES)
    resent = tmp_path / "resent" / "CT_small.dcm"
    resent.parent.mkdir()
    resent.write_bytes(next(p for p in files if p.name == "CT_small.dcm").read_bytes())
    with Archive.create(tmp_path / "record") as record:
        report = record.ingest([*files, resent], workers=0)
        assert (report.archived, report.versions, report.duplicates) == (5, 1, 1)
        rows = list(record.index)
    with Archive.create(tmp_path / "derived") as derived:
        assert derived.ingest([tmp_path / "record"], workers=0).archived == 4
        rows += list(derived.index)
    return rows


def keys_of(records: Iterable[Mapping[str, Any]]) -> set[str]:
    return {key for record in records for key in record}


def test_every_key_of_a_real_row_is_declared_and_every_declared_field_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each key of a real row, and of its parts, is declared; each required key is there;
    and each archive field declared is written by some row (no `status`, `blob` that no
    code writes)."""
    rows = real_rows(tmp_path)
    assert len(rows) == 8
    # A de-identified copy's rows (pacs_engine.deid, chunks copied: `header_sha256`).
    key = make_key(tmp_path / "key")
    research_path = tmp_path / "research"
    assert deidentify(tmp_path / "record", research_path, key, burned_in="keep", workers=0).balanced
    with Index.open(research_path / "index") as research:
        rows += list(research)
    # A file kept as received without a decoder (`not_verified`): 1-bit RLE without pylibjpeg-rle.
    without_pylibjpeg_rle(monkeypatch)
    flagged = write_one_bit_rle(tmp_path / "flagged")
    with Archive.create(tmp_path / "flagged-archive") as archive:
        assert archive.ingest([tmp_path / "flagged"], workers=0).archived == 1
        rows.append(archive.index.get(flagged.SOPInstanceUID))
    for row in rows:
        assert set(row) <= declared(Row), set(row) - declared(Row)
        assert Row.__required_keys__ <= set(row)
    versions = [v for row in rows for v in row.get("versions", [])]
    duplicates = [d for row in rows for d in row.get("duplicates", [])]
    sources = [d for row in rows for d in row.get("source_duplicates", [])]
    pixels = [r["pixels"] for r in [*rows, *versions] if r.get("pixels")]
    headers = [r["header"] for r in [*rows, *versions] if "header" in r]
    assert versions and duplicates and sources and pixels and headers
    assert keys_of(versions) <= declared(Version), keys_of(versions) - declared(Version)
    assert {frozenset(d) for d in [*duplicates, *sources]} == {frozenset(declared(Duplicate))}
    assert {frozenset(p) for p in pixels} == {frozenset(declared(PixelRef))}
    assert {frozenset(h) for h in headers} == {frozenset(declared(HeaderRef))}
    written = keys_of([*rows, *versions, *duplicates, *pixels, *headers])
    assert set(ARCHIVE_FIELDS) <= written, set(ARCHIVE_FIELDS) - written
    assert not {"status", "blob"} & declared(Row)


def test_the_header_attributes_declared_are_the_scanners() -> None:
    """`Attributes` plus the UIDs is exactly what the scanner records, so a keyword added to
    the scanner must be declared too."""
    assert declared(Attributes) | set(UID_KEYWORDS) == set(HEADER_KEYWORDS)
    assert declared(Row) - set(ARCHIVE_FIELDS) == set(HEADER_KEYWORDS)
    assert set(SERIES_KEYWORDS) < declared(SeriesRecord)
    assert set(STUDY_KEYWORDS) < declared(StudyRecord)
    # The records' attributes are the scanner's study and series lists, declared once.
    assert declared(StudyAttributes) | {"StudyInstanceUID"} == set(STUDY_KEYWORDS)
    assert declared(SeriesAttributes) | {"SeriesInstanceUID"} == set(SERIES_KEYWORDS)


def test_real_records_and_query_results_have_declared_keys(tmp_path: Path) -> None:
    """Series and study records, as read and as queries return them, hold declared keys."""
    real_rows(tmp_path)
    with Index.open(tmp_path / "record" / "index") as index:
        series = index.all_series()
        studies = [index.study_record(uid) for uid in {s["StudyInstanceUID"] for s in series}]
        assert series and all(studies)
        assert keys_of(series) <= declared(SeriesRecord), keys_of(series)
        assert keys_of(studies) <= declared(StudyRecord), keys_of(studies)
        assert {"NumberOfSeriesRelatedInstances", "StudyInstanceUID"} <= keys_of(series)
        assert {"ModalitiesInStudy", "NumberOfStudyRelatedInstances"} <= keys_of(studies)
        both = declared(SeriesRecord) | set(STUDY_KEYWORDS)
        assert keys_of(index.query("series")) <= both
        assert keys_of(index.query("study")) <= declared(StudyRecord)
        assert keys_of(index.query("instance")) <= declared(Row)
