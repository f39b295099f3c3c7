"""QIDO-RS (PS3.18 10.6): search for studies, series and instances, answered in DICOM JSON.

A search is turned into a C-FIND identifier and answered by the same code as C-FIND
(`pacs_engine.serve.find`): the same matching keys, the same matching rules, the same
computed attributes. What QIDO-RS adds:

- query parameters name attributes by keyword or tag (`PatientID` or `00100020`); an
  attribute that is not a DICOM attribute, a malformed date, time or UID, an instance
  attribute in a study search, a bad `limit` or `offset` is a 400 saying which;
- a matching key the index does not hold is matched universally (as C-FIND may) and
  named in a `Warning: 299` header; `fuzzymatching` is not done (a `Warning` says so);
- the attributes returned are PS3.18 Table 10.6.1-5's for the level (and the levels
  above when the search is not scoped to them) that the index holds, plus
  `includefield` (repeatable, comma lists, `all`: every attribute the index holds at
  that level), plus RetrieveURL (0008,1190), the WADO-RS URL of each match;
- `limit` above `MAX_LIMIT` is clamped, and a search with more matches than it
  returns says so in a `Warning` header; no match is 204 with an empty body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pacs_engine.errors import PacsEngineError
from pacs_engine.index.query import RECORD_KEYS, value_problem
from pacs_engine.serve.find import (
    INDEX_LEVEL,
    MATCHING_KEYS,
    Query,
    QueryRefused,
    find,
    parse_identifier,
    response,
)
from pacs_engine.serve.web.request import accepted, audit, context, require, url_uid

#: The most matches one response holds (a larger `limit` is clamped, with a Warning).
MAX_LIMIT = 5000

#: The media type of every answer with a body.
DICOM_JSON = "application/dicom+json"

#: The Accept media ranges that DICOM JSON satisfies (PS3.18 8.7.3: JSON answers as either).
_ACCEPTED = frozenset({"*/*", "application/*", DICOM_JSON, "application/json"})

#: PS3.18 Table 10.6.1-5: the attributes returned at each level by default.
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "STUDY": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
    ),
    "IMAGE": (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

#: What a query string may hold besides attributes.
_LIMIT, _OFFSET, _INCLUDE, _FUZZY = "limit", "offset", "includefield", "fuzzymatching"
_EMPTY, _MULTIPLE = "emptyvaluematching", "multiplevaluematching"
#: PS3.18 8.3.3.1: the media types and character sets an answer may take, as parameters.
_ACCEPT, _CHARSET = "accept", "charset"
#: What is no attribute to match: the search's own parameters (PS3.18 8.3.4).
_NOT_KEYS = frozenset({_LIMIT, _OFFSET, _INCLUDE, _FUZZY, _EMPTY, _MULTIPLE, _ACCEPT, _CHARSET})
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
#: Computed by this module or by `find.response`, whatever the index holds.
_ALWAYS_KNOWN = frozenset({"InstanceAvailability"})
#: Not data set attributes of a match (file meta, the character set of the answer).
_NOT_RETURNED = frozenset({"TransferSyntaxUID", "SpecificCharacterSet"})


@dataclass(frozen=True)
class Search:
    """One QIDO-RS resource: its level, the levels whose defaults it returns, its path UIDs."""

    name: str
    level: str
    default_levels: tuple[str, ...]
    path_keys: tuple[str, ...]


SEARCHES = (
    Search("studies", "STUDY", ("STUDY",), ()),
    Search("series", "SERIES", ("STUDY", "SERIES"), ()),
    Search("study series", "SERIES", ("SERIES",), ("StudyInstanceUID",)),
    Search("instances", "IMAGE", ("STUDY", "SERIES", "IMAGE"), ()),
    Search("study instances", "IMAGE", ("SERIES", "IMAGE"), ("StudyInstanceUID",)),
    Search("series instances", "IMAGE", ("IMAGE",), ("StudyInstanceUID", "SeriesInstanceUID")),
)
_PATHS = {
    "studies": "/studies",
    "series": "/series",
    "study series": "/studies/{study}/series",
    "instances": "/instances",
    "study instances": "/studies/{study}/instances",
    "series instances": "/studies/{study}/series/{series}/instances",
}
_PATH_PARAMS = {"StudyInstanceUID": "study", "SeriesInstanceUID": "series"}


class BadQuery(PacsEngineError, ValueError):
    """A query string that cannot be answered; the message says which parameter and why."""


@dataclass
class Parsed:
    """A QIDO-RS request understood: the C-FIND query, paging, and the warnings to send."""

    query: Query
    limit: int
    offset: int
    warnings: list[str]


def held_keys(level: str) -> frozenset[str]:
    """The attributes the index fills at a query level (and those computed for any match)."""
    return frozenset(RECORD_KEYS[INDEX_LEVEL[level]]) | _ALWAYS_KNOWN


def check_uid(value: str, what: str) -> str:
    """`value` if it is a UID (digits and dots, at most 64 characters), else BadQuery."""
    if not url_uid(value):
        raise BadQuery(f"{what}: not a UID (digits, letters, dots, '_' or '-', not '.' first)")
    return value


def attribute_keyword(name: str, where: str) -> str:
    """The keyword of a query parameter's attribute (`PatientID` or `00100020`), else BadQuery."""
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise BadQuery(f"{where}: {name!r} is not a DICOM attribute keyword or tag this server knows")


def _element(keyword: str, value: str | None) -> DataElement:
    """An identifier's element (its value as pydicom reads text), BadQuery if it cannot be one."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    vr = dictionary_VR(tag)[:2]
    if value is None or vr == "SQ":
        return DataElement(tag, vr, [] if vr == "SQ" else None)
    if vr == "UI":
        values: Any = [check_uid(v, keyword) for v in re.split(r"[,\\]", value)]
    else:
        values = value.split("\\") if "\\" in value else value
    try:
        # Validation off: a range or a wildcard is not a valid DA or PN value, yet a key.
        return DataElement(tag, vr, values, validation_mode=pydicom_config.IGNORE)
    except (TypeError, ValueError, OverflowError):
        raise BadQuery(f"{keyword}: not a valid {vr} value") from None


def _include(values: list[str], level: str) -> list[str]:
    """The keywords `includefield` asks for (`all`: every attribute held at the level)."""
    keywords: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                keywords += sorted(k for k in held_keys(level) if tag_for_keyword(k) is not None)
            elif name:
                keywords.append(attribute_keyword(name, _INCLUDE))
    return [k for k in keywords if k not in _NOT_RETURNED]


def _count(params: Mapping[str, list[str]], name: str, default: int) -> int:
    values = params.get(name, [])
    if not values:
        return default
    if len(values) > 1 or not values[0].isdigit() or len(values[0]) > 18:
        raise BadQuery(f"{name}: a non-negative integer, once, not {values!r}")
    return int(values[0])


def _flag(params: Mapping[str, list[str]], name: str, default: bool) -> bool:
    values = params.get(name, [])
    if not values:
        return default
    if len(values) > 1 or values[0] not in ("true", "false"):
        raise BadQuery(f"{name}: true or false, once, not {values!r}")
    return values[0] == "true"


def parse(search: Search, params: Mapping[str, list[str]], path_uids: Mapping[str, str]) -> Parsed:
    """The C-FIND query a QIDO-RS request asks for; BadQuery when it cannot be answered."""
    warnings = []
    limit = _count(params, _LIMIT, MAX_LIMIT)
    if limit > MAX_LIMIT:
        warnings.append(f"the limit is {MAX_LIMIT}: {limit} was asked")
        limit = MAX_LIMIT
    offset = _count(params, _OFFSET, 0)
    if _flag(params, _FUZZY, False):
        warnings.append(
            "The fuzzymatching parameter is not supported. Only literal matching has been "
            "performed."
        )
    if _flag(params, _EMPTY, False):
        warnings.append(
            "The emptyvaluematching parameter is not supported. Empty values have not been matched."
        )
    multiple = _flag(params, _MULTIPLE, True)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = search.level
    returned = [k for lv in search.default_levels for k in DEFAULT_KEYS[lv]]
    returned = [k for k in returned if k in held_keys(search.level)]
    for keyword in [*returned, *_include(params.get(_INCLUDE, []), search.level)]:
        identifier.add(_element(keyword, None))
    matched: set[str] = set()
    for name, values in params.items():
        if name in _NOT_KEYS:
            continue
        if "." in name:
            raise BadQuery(f"{name}: sequence attribute paths are not supported")
        keyword = attribute_keyword(name, "query parameter")
        if len(values) > 1 or keyword in matched:
            raise BadQuery(f"{keyword}: given more than once (a list of values: a\\b)")
        if keyword in path_uids:
            raise BadQuery(f"{keyword}: already given in the path")
        element = _element(keyword, values[0])
        if element.VM > 1 and not multiple:
            raise BadQuery(f"{keyword}: several values, and {_MULTIPLE}=false")
        for value in element.value if element.VM > 1 else [element.value]:
            problem = value_problem(keyword, str(value)) if value is not None else None
            if problem is not None:
                raise BadQuery(problem)
        identifier.add(element)
        matched.add(keyword)
    for keyword, uid in path_uids.items():
        identifier.add(_element(keyword, uid))
    try:
        query = parse_identifier(identifier, patient_root=False)
    except QueryRefused as refused:
        raise BadQuery(refused.comment) from None
    unmatched = sorted(k for k in matched if k not in MATCHING_KEYS[search.level])
    if unmatched:
        warnings.append(
            f"The following attributes were not used for matching: {', '.join(unmatched)}"
        )
    return Parsed(query, limit, offset, warnings)


def acceptable(accept: str) -> bool:
    """Whether an Accept header admits DICOM JSON (no header, or a range that covers it)."""
    return any(r.type in _ACCEPTED for r in accepted(accept))


def _retrieve_url(base: str, record: Mapping[str, Any], level: str) -> str:
    """The WADO-RS URL of a match."""
    url = f"{base}/studies/{record['StudyInstanceUID']}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{record['SeriesInstanceUID']}"
    if level == "IMAGE":
        url += f"/instances/{record['SOPInstanceUID']}"
    return url


def answer(parsed: Parsed, records: list[Mapping[str, Any]], base: str, ae_title: str) -> list:
    """The DICOM JSON of each match of a page."""
    out = []
    for record in records:
        ds = response(record, parsed.query, ae_title)
        del ds.QueryRetrieveLevel
        if "SpecificCharacterSet" in ds:  # JSON is UTF-8: no character set to declare
            del ds.SpecificCharacterSet
        ds.RetrieveURL = _retrieve_url(base, record, parsed.query.level)
        out.append(ds.to_json_dict())
    return out


def _search(search: Search) -> Any:
    """The endpoint of one QIDO-RS resource."""
    action = f"qido {search.name}"

    # Synchronous: Starlette runs it in a worker thread, where the index read, the audit
    # record and the JSON encoding belong (off the event loop, in one hop).
    def endpoint(request: Request) -> Response:
        require(request, "reader", action)
        served = context(request)
        params: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            params.setdefault(name, []).append(value)
        # The accept parameter, when given, stands for the Accept header (PS3.18 8.3.3.1).
        accept = request.headers.get("accept", "")
        if _ACCEPT in params:  # an unescaped "+" (dicom+json) arrives as a space
            accept = re.sub(r"(\w) (\w)", r"\1+\2", ",".join(params[_ACCEPT]))
        charsets = [
            c.split(";")[0].strip().lower() for v in params.get(_CHARSET, []) for c in v.split(",")
        ]
        if not acceptable(accept) or not all(c in ("utf-8", "utf8", "*") for c in charsets):
            audit(request, action, "not acceptable")
            raise HTTPException(
                406, f"QIDO-RS answers {DICOM_JSON} (or application/json), in UTF-8"
            )
        try:
            path_uids = {
                k: check_uid(request.path_params[_PATH_PARAMS[k]], k) for k in search.path_keys
            }
            parsed = parse(search, params, path_uids)
        except BadQuery as error:
            # Names the parameter, never its value (a patient's name or ID may be in it).
            audit(request, action, "bad request", detail=str(error).split(":")[0])
            raise HTTPException(400, str(error)) from None
        # One match past the page, to know whether to say there are more (PS3.18 8.3.4.4).
        try:
            records = list(find(served.archive, parsed.query, parsed.offset, parsed.limit + 1))
        except Exception as error:  # as C-FIND answers them: audited, by type only
            audit(request, action, "failed", detail=type(error).__name__)
            raise HTTPException(500, "cannot search the archive") from None
        page, more = records[: parsed.limit], len(records) > parsed.limit
        if more:
            parsed.warnings.append("There are additional results that can be requested")
        base = str(request.base_url).rstrip("/")
        headers = {"Warning": ", ".join(f'299 pacs-engine "{w}"' for w in parsed.warnings)}
        headers = headers if parsed.warnings else {}
        studies = list(dict.fromkeys(r["StudyInstanceUID"] for r in page))
        keys = ",".join(sorted(parsed.query.filters))
        detail = f"{len(page)}{' (more)' if more else ''} matches; keys {keys or '(none)'}"
        audit(request, action, "success", study=studies or None, detail=detail)
        if not page:
            return Response(status_code=204, headers=headers)
        body = answer(parsed, page, base, served.config.ae_title)
        return DicomJSONResponse(body, headers=headers)

    return endpoint


class DicomJSONResponse(Response):
    """A DICOM JSON body (PS3.18 F.2)."""

    media_type = DICOM_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def routes() -> list[BaseRoute]:
    """The QIDO-RS routes."""
    return [
        Route(_PATHS[s.name], _search(s), methods=["GET"], name=f"qido {s.name}") for s in SEARCHES
    ]
