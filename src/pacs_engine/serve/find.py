"""C-FIND: a request identifier as an index query, and each match as a response identifier.

The index (`pacs_engine.index`) does the matching (PS3.4 C.2.2.2, `index/matching.py`);
this module decides which keys of an identifier it is given:

- a key with a value is a matching key when the index holds it at the query's level
  or above (patient and study attributes at every level, series attributes at
  SERIES and IMAGE, and, as an extension, at STUDY where a study matches when one of
  its series does; instance attributes at IMAGE); an instance attribute in a STUDY or
  SERIES query is refused (0xA900). Any other key is matched universally (PS3.4 lets
  an SCP skip optional keys it cannot match) and returned empty;
- every key of the identifier is returned: filled from the index, computed
  (NumberOfStudyRelatedSeries, ModalitiesInStudy, SOPClassesInStudy, ...), or empty
  (zero length) when the index does not hold it;
- sequence matching is not done: a sequence key is returned as an empty sequence;
- several values of a key go to the index joined by backslashes, as DICOM encodes
  them, and the index decides (`pacs_engine.index.matching.compile_condition`): they
  are alternatives (any of them matches), but for an attribute that holds several
  values itself (ImageType, ConvolutionKernel), where they are one value matched whole:
  ORIGINAL\\PRIMARY* matches ORIGINAL\\PRIMARY\\AXIAL, and a single value matches
  when any of the attribute's values does.

Values are read from the request as pydicom decodes them under the request's
Specific Character Set, and the index holds decoded text, so a request in any
character set pydicom knows matches. Responses declare the request's character set
when it can encode every returned value, else ISO_IR 192 (UTF-8).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DSfloat, PersonName

from pacs_engine.archive import Archive
from pacs_engine.errors import PacsEngineError
from pacs_engine.index.matching import SERIES_COMPUTED, STUDY_COMPUTED
from pacs_engine.index.query import (
    PATIENT_COMPUTED,
    PATIENT_KEYWORDS,
    patient_counts,
    same_patient,
)
from pacs_engine.scanning import INSTANCE_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS

#: C-FIND statuses used here (PS3.4 C.4.1.1.4).
PENDING, SUCCESS, CANCEL = 0xFF00, 0x0000, 0xFE00
IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS, OUT_OF_RESOURCES = 0xA900, 0xC000, 0xA700
#: The most matches a C-FIND answers. They are read before the first is sent, so a
#: universal query of a hospital's archive (millions of instances) would hold them all in
#: memory; one with more is refused with 0xA700, to be narrowed.
MAX_MATCHES = 50_000

#: DICOM query level -> the index's level of the records it answers from.
INDEX_LEVEL = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}

_STUDY = STUDY_KEYWORDS + STUDY_COMPUTED
_SERIES = SERIES_KEYWORDS + SERIES_COMPUTED

#: The keys the index matches on, by DICOM query level (series keys at STUDY: an extension).
MATCHING_KEYS: dict[str, frozenset[str]] = {
    "PATIENT": frozenset(PATIENT_KEYWORDS),
    "STUDY": frozenset(_STUDY + _SERIES),
    "SERIES": frozenset(_STUDY + _SERIES),
    "IMAGE": frozenset(_STUDY + _SERIES + INSTANCE_KEYWORDS),
}

#: The unique key of each level, returned in every response at or below it.
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_ORDER = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


class QueryRefused(PacsEngineError, ValueError):
    """An identifier that cannot be answered: the status to send and a comment (no values)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment

    def status_dataset(self) -> Dataset:
        """The response's status, with its Error Comment (64 characters at most)."""
        status = Dataset()
        status.Status = self.status
        status.ErrorComment = self.comment[:64]
        return status


@dataclass
class Query:
    """A C-FIND identifier, understood: its level, the index filters, the keys to return."""

    level: str
    patient_root: bool
    filters: dict[str, Any] = field(default_factory=dict)
    return_keys: list[str] = field(default_factory=list)  # keywords, as requested
    other_tags: list[tuple[int, str]] = field(default_factory=list)  # (tag, VR), returned empty
    request_charset: list[str] = field(default_factory=list)

    def unique_keys(self) -> list[str]:
        """The unique keys returned whether asked for or not: this level's and those above."""
        levels = _ORDER[: _ORDER.index(self.level) + 1]
        if not self.patient_root:
            levels = tuple(level for level in levels if level != "PATIENT")
        return [UNIQUE_KEY[level] for level in levels]


def query_level(identifier: Dataset, patient_root: bool) -> str:
    """The identifier's QueryRetrieveLevel, checked against the information model."""
    value = identifier.get("QueryRetrieveLevel")
    level = str(value).strip().upper() if value is not None else ""
    if level not in INDEX_LEVEL:
        raise QueryRefused(IDENTIFIER_MISMATCH, "QueryRetrieveLevel missing or not known")
    if level == "PATIENT" and not patient_root:
        raise QueryRefused(IDENTIFIER_MISMATCH, "no PATIENT level in the Study Root model")
    return level


def parse_identifier(identifier: Dataset, patient_root: bool) -> Query:
    """The query an identifier asks for; QueryRefused when it cannot be answered."""
    query = Query(query_level(identifier, patient_root), patient_root)
    charset = identifier.get("SpecificCharacterSet")
    if charset:
        query.request_charset = [str(c) for c in as_list(charset)]
    below = _keys_below(query.level)
    for element in identifier:
        keyword = element.keyword
        if keyword in _NOT_KEYS or element.tag.group == 0x0002:
            continue
        if not keyword:  # a private or unknown tag: returned empty, never matched
            query.other_tags.append((int(element.tag), element.VR))
            continue
        query.return_keys.append(keyword)
        if element.VR == "SQ" or element.is_empty:
            continue  # a return key (sequence matching is not done)
        if keyword in MATCHING_KEYS[query.level]:
            query.filters[keyword] = _query_value(element.value)
        elif keyword in below:
            raise QueryRefused(IDENTIFIER_MISMATCH, f"{keyword} is below the {query.level} level")
    return query


def _keys_below(level: str) -> frozenset[str]:
    """The index's keys that belong to a level below `level` (not allowed as matching keys)."""
    below: set[str] = set()
    for lower in _ORDER[_ORDER.index(level) + 1 :]:
        below |= MATCHING_KEYS[lower]
    return frozenset(below - MATCHING_KEYS[level])


def as_list(value: Any) -> list[Any]:
    """A multi-valued element's values as a list; a single value as a list of one."""
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _query_value(value: Any) -> Any:
    """A request value as the index's matcher takes it: several values joined by backslashes,
    as DICOM encodes them (the matcher decides whether they are one value matched whole or
    alternatives: `index.matching.compile_condition`)."""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(_query_value(v)) for v in value)
    if isinstance(value, PersonName | str):
        return str(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def find(
    archive: Archive,
    query: Query,
    offset: int = 0,
    limit: int | None = None,
    most: int | None = None,
) -> Iterator[Mapping[str, Any]]:
    """The matches of `query` from `offset` (at most `limit`), with the computed keys asked;
    QueryRefused (0xA700) before any when there are more than `most`."""
    # Lenient (strict=False): PS3.4 lets keys the index does not hold match universally.
    page = {"offset": offset, "limit": limit if most is None else most + 1}
    level = "patient" if query.level == "PATIENT" else INDEX_LEVEL[query.level]
    found = archive.query(level, strict=False, **page, **query.filters)
    if most is not None and len(found) > most:
        raise QueryRefused(OUT_OF_RESOURCES, f"more than {most} matches: narrow the query")
    if query.level == "PATIENT":
        yield from found
        return
    wanted = set(query.return_keys)
    patients: dict[tuple[str, Any], dict[str, int]] = {}
    for record in found:
        extra: dict[str, Any] = {}
        if query.level == "STUDY" and "SOPClassesInStudy" in wanted:
            rows = archive.index.study(record["StudyInstanceUID"])
            extra["SOPClassesInStudy"] = sorted(
                {r["SOPClassUID"] for r in rows if r.get("SOPClassUID")}
            )
        # An empty Patient ID names no patient: its query would match every study.
        if wanted & set(PATIENT_COMPUTED) and record.get("PatientID"):
            patient = (record["PatientID"], record.get("IssuerOfPatientID"))
            if patient not in patients:
                studies = archive.query("study", strict=False, PatientID=patient[0])
                patients[patient] = patient_counts(same_patient(studies, *patient))
            extra.update(patients[patient])
        yield {**record, **extra} if extra else record


def response(record: Mapping[str, Any], query: Query, ae_title: str) -> Dataset:
    """The response identifier for one match: every requested key, the unique keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level
    texts: list[str] = []
    for keyword in dict.fromkeys([*query.unique_keys(), *query.return_keys]):
        if keyword == "RetrieveAETitle":
            value: Any = ae_title
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        else:
            value = record.get(keyword)
        _put(ds, keyword, value, texts)
    for tag, vr in query.other_tags:
        ds.add_new(tag, vr, [] if vr == "SQ" else None)
    charset = response_charset(texts, query.request_charset)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds


def _put(ds: Dataset, keyword: str, value: Any, texts: list[str]) -> None:
    """Add one element; a value that the VR cannot hold is returned empty."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    vr = dictionary_VR(tag)[:2]
    if vr == "SQ":
        ds.add_new(tag, vr, [])
        return
    # Only a wholly empty value is left empty: an empty value among others is kept in place
    # (an ImageType of DERIVED\\SECONDARY\\\\X has an empty third value).
    values = as_list(value)
    if all(v is None or v == "" for v in values):
        values = []
    try:
        converted = [DSfloat(v, auto_format=True) if vr == "DS" else v for v in values]
        ds.add_new(tag, vr, converted[0] if len(converted) == 1 else converted or None)
    except (TypeError, ValueError, OverflowError):
        ds.add_new(tag, vr, None)
        return
    texts.extend(v for v in values if isinstance(v, str))


#: Request character sets a response may be given in: one repertoire without code
#: extensions, whose Python codec is that repertoire (pydicom decodes ISO_IR 13 as Shift
#: JIS, a superset holding kanji, and ISO_IR 6 as Latin-1: a text they encode may not fit).
_ANSWERABLE = frozenset(
    {f"ISO_IR {n}" for n in (100, 101, 109, 110, 126, 127, 138, 144, 148, 166, 192)}
    | {"GB18030", "GBK"}
)


def response_charset(texts: list[str], requested: list[str]) -> str | list[str] | None:
    """The Specific Character Set of a response holding `texts`.

    None when every text is ASCII and the request named no character set; the
    request's own when it is one single-byte set that encodes every text; else
    ISO_IR 192 (UTF-8).
    """
    plain = all(t.isascii() for t in texts)
    if plain:
        return (requested[0] if len(requested) == 1 else requested) if requested else None
    if len(requested) == 1 and requested[0] in _ANSWERABLE:
        try:
            for text in texts:
                text.encode(python_encoding[requested[0]])
        except UnicodeEncodeError:
            return "ISO_IR 192"
        return requested[0]
    return "ISO_IR 192"
