"""DICOM C-FIND / QIDO-RS attribute matching, and which level of the hierarchy owns a keyword.

The rules (PS3.4 C.2.2.2), by the attribute's VR in pydicom's data dictionary:

- universal: a query value of None, "" or "*" matches everything, absent values too;
- UI: list of UID matching, "uid1\\uid2" matches either;
- DA, TM, DT: range matching "A-B", "-B", "A-" (lexical, so chronological for
  well-formed values; an upper bound is inclusive of everything it is a prefix
  of, so StudyDate "-2020" takes 2020-12-31); otherwise single value matching. A
  range never matches an empty value (with an open end or not). Times (TM) are
  compared at the precision each is given in: a value stands for its earliest
  instant ("1015" is 10:15:00), a query value for every instant it names, so
  StudyTime "092815" matches 09:28:15.672, "132645.921" matches 132645.921000 and
  "-1000" takes 10:00:59.9;
- PN: wildcard matching ("*" any run, "?" one character), case-insensitive, as
  the standard allows for person names. A query value without "=" is matched
  against the name's first (alphabetic) component group, so "Yamada^Tarou" and
  "*^Tarou" match "Yamada^Tarou=山田^太郎=やまだ^たろう"; one with "=" against the
  whole name; empty trailing components ("Doe^Peter^", "OB^^^^") are ignored on
  both sides;
- numbers (IS, DS, US, ...): numeric equality ("5" matches 5 and 5.0); a value
  that is not a number (a malformed IS kept as text) is matched as text;
- other strings, and keywords outside the dictionary (archive fields such as
  "pixel_storage"): wildcard matching when the value has "*" or "?", else exact;
- a list or tuple of query values matches any of them.

A multi-valued attribute (ImageType ["ORIGINAL", "PRIMARY", "AXIAL"]) matches a
single query value when any of its values does (PS3.4 C.2.2.2). A query value with
backslashes is, for an attribute the dictionary lets hold several values
(`whole_value`: ImageType, ConvolutionKernel, OtherPatientIDs, ...), one pattern for
the whole value, its values joined by backslashes: "ORIGINAL\\PRIMARY*" matches
ORIGINAL\\PRIMARY\\AXIAL ("*" runs across backslashes), "ORIGINAL\\PRIMARY" only
that pair, numbers compare value by value. For a single-valued attribute the parts
are alternatives, as UID lists are ("CT\\MR": either). An absent or None value
matches only universal matching.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

# The scanner's lists are the index's: every key matched at a level is one the scanner
# records (a key it did not record would match nothing).
from pacs_engine.scanning import HEADER_TAGS, MULTI_VALUED_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS

#: Attributes the index computes for a study.
STUDY_COMPUTED: tuple[str, ...] = (
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)

#: Attributes the index computes for a series.
SERIES_COMPUTED: tuple[str, ...] = ("NumberOfSeriesRelatedInstances",)

LEVELS: tuple[str, ...] = ("study", "series", "instance")

_STUDY_LEVEL = frozenset(STUDY_KEYWORDS + STUDY_COMPUTED)
_SERIES_LEVEL = frozenset(SERIES_KEYWORDS + SERIES_COMPUTED)
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})


def level_of(keyword: str) -> str:
    """The level whose record holds `keyword`: "study", "series" or "instance"."""
    if keyword in _STUDY_LEVEL:
        return "study"
    if keyword in _SERIES_LEVEL:
        return "series"
    return "instance"


def fold(text: str) -> str:
    """The case-insensitive form of a person name, for matching and for the name index."""
    return text.upper()


@cache
def vr_of(keyword: str) -> str | None:
    """The keyword's VR from the data dictionary (the first of "US or SS"); None if not DICOM."""
    if keyword in HEADER_TAGS:  # the indexed keywords: without importing pydicom
        return HEADER_TAGS[keyword][1]
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return None if tag is None else dictionary_VR(tag)[:2]


def whole_value(keyword: str) -> bool:
    """Whether backslashes in a query value of `keyword` separate the values of one
    multi-valued value, matched whole (ImageType), rather than alternatives (Modality)."""
    return keyword in MULTI_VALUED_KEYWORDS


@dataclass(frozen=True, slots=True)
class Condition:
    """One query key compiled: a predicate on a record's value, and what an index can use.

    `exact`: every matching value is one of these; `prefix`: every matching value
    starts with it; `bounds`: every matching value v has lo <= v and v[:len(hi)] <= hi
    (hi "" is open). Values are folded first when `folded` (person names). With
    `whole`, the predicate takes the record's value as it is (a list whole), else
    each of its values.
    """

    keyword: str
    predicate: Callable[[Any], bool]
    folded: bool = False
    exact: tuple[str, ...] | None = None
    prefix: str | None = None
    bounds: tuple[str, str] | None = None
    whole: bool = False

    def __call__(self, value: Any) -> bool:
        if self.whole:
            return self.predicate(value)
        if isinstance(value, list):
            return any(v is not None and self.predicate(v) for v in value)
        return value is not None and self.predicate(value)


def _wildcard(pattern: str, folded: bool) -> Callable[[Any], bool]:
    regex = re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
        re.DOTALL,
    )
    if folded:
        groups = "=" in pattern
        return lambda v: isinstance(v, str) and regex.fullmatch(_name(v, groups)) is not None
    return lambda v: isinstance(v, str) and regex.fullmatch(v) is not None


def _name(value: str, groups: bool) -> str:
    """A person name as a query compares it: folded, its empty trailing components
    dropped, and only its first component group unless the query gives `groups`."""
    parts = fold(value).split("=")
    kept = [part.rstrip("^") for part in (parts if groups else parts[:1])]
    return "=".join(kept).rstrip("=")


def time_bounds(text: str) -> tuple[str, str] | None:
    """The first and last instants a TM value stands for at its precision, as strings
    HHMMSS.FFFFFF that sort in time order (None: not a time)."""
    main, _, fraction = text.strip().replace(":", "").partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        return None
    if fraction and (len(main) != 6 or not fraction.isdigit() or len(fraction) > 6):
        return None
    return (
        f"{main.ljust(6, '0')}.{fraction.ljust(6, '0')}",
        f"{main.ljust(6, '9')}.{fraction.ljust(6, '9')}",
    )


def _time_range(lo: str, hi: str) -> Callable[[Any], bool] | None:
    """TM range matching at each value's precision (None: a bound that is not a time)."""
    first = time_bounds(lo) if lo else ("", "")
    last = time_bounds(hi) if hi else ("", "")
    if first is None or last is None:
        return None
    start, end = first[0], last[1]
    as_text = _range(lo, hi)

    def predicate(v: Any) -> bool:
        instant = time_bounds(v) if isinstance(v, str) and v else None
        if instant is None:  # empty, or not a time: compared as text, as other ranges are
            return as_text(v)
        return instant[0] >= start and (not end or instant[0] <= end)

    return predicate


def _number(value: Any) -> Callable[[Any], bool]:
    wanted = float(value)

    def predicate(v: Any) -> bool:
        try:
            return not isinstance(v, bool) and float(v) == wanted
        except (TypeError, ValueError):
            return False

    return predicate


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:  # a malformed IS or DS, kept as text by the scanner: matched as text
        return False
    return True


def _range(lo: str, hi: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v != "" and v >= lo and (not hi or v[: len(hi)] <= hi)


def _literal_prefix(pattern: str) -> str:
    return re.split(r"[*?]", pattern, maxsplit=1)[0]


def _whole(keyword: str, pattern: str) -> Condition:
    """A backslash-joined pattern matched against the whole value (`whole_value` keywords)."""
    vr = vr_of(keyword)
    parts = pattern.split("\\")
    if vr in _NUMERIC_VRS and all(_is_number(p) for p in parts):
        wanted = [_number(p) for p in parts]

        def numbers(v: Any) -> bool:
            values = v if isinstance(v, list) else [v]
            return len(values) == len(wanted) and all(
                w(x) for w, x in zip(wanted, values, strict=True)
            )

        return Condition(keyword, numbers, whole=True)
    text = _text(keyword, pattern, vr)

    def joined(v: Any) -> bool:
        values = v if isinstance(v, list) else [v]
        return all(isinstance(x, str) for x in values) and text.predicate("\\".join(values))

    return Condition(keyword, joined, text.folded, whole=True)


def _text(keyword: str, value: str, vr: str | None) -> Condition:
    """Text matching: wildcards when the value has "*" or "?" (not for dates), else exact;
    person names case-insensitive."""
    folded = vr == "PN"
    text = _name(value, groups=True) if folded else value
    if vr not in _RANGE_VRS and ("*" in text or "?" in text):
        # A name's index key is the whole name: its first group is a prefix of it.
        prefix = _literal_prefix(text.split("=")[0] if folded else text)
        return Condition(keyword, _wildcard(text, folded), folded, prefix=prefix or None)
    if folded:
        groups = "=" in text
        return Condition(
            keyword,
            lambda v: isinstance(v, str) and _name(v, groups) == text,
            True,
            prefix=text.split("=")[0] or None,
        )
    if vr == "TM":
        times = _time_range(text, text)
        if times is not None:
            return Condition(keyword, times)
    return Condition(keyword, lambda v: v == text, exact=(text,))


def compile_condition(keyword: str, value: Any) -> Condition | None:
    """Compile one query key; None when it is universal matching (constrains nothing)."""
    if isinstance(value, list | tuple):
        parts = [compile_condition(keyword, v) for v in value]
        conditions = [p for p in parts if p is not None]
        if not parts or len(conditions) < len(parts):
            return None
        return _any_of(keyword, conditions)
    if value is None or value == "" or value == "*":
        return None
    vr = vr_of(keyword)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return Condition(keyword, lambda v: v == value)
    if not isinstance(value, str) or (vr in _NUMERIC_VRS and _is_number(value)):
        return Condition(keyword, _number(value))
    if vr == "UI":
        # An empty value in the list names no UID (and would be an empty index key).
        uids = tuple(dict.fromkeys(uid for uid in value.split("\\") if uid))
        wanted = frozenset(uids)
        return Condition(keyword, lambda v: v in wanted, exact=uids)
    if "\\" in value:
        if whole_value(keyword):
            return _whole(keyword, value)
        return compile_condition(keyword, value.split("\\"))
    if vr in _RANGE_VRS and value.count("-") == 1:
        lo, hi = value.split("-")
        if vr == "TM":  # no index of times: no bounds needed
            times = _time_range(lo, hi)
            if times is not None:
                return Condition(keyword, times)
        return Condition(keyword, _range(lo, hi), bounds=(lo, hi))
    return _text(keyword, value, vr)


def _any_of(keyword: str, parts: list[Condition]) -> Condition:
    if any(p.whole for p in parts):  # each part takes the value as it wants it
        return Condition(keyword, lambda v: any(p(v) for p in parts), parts[0].folded, whole=True)
    exacts = [p.exact for p in parts if p.exact is not None]
    exact = None
    if len(exacts) == len(parts):
        exact = tuple(dict.fromkeys(v for e in exacts for v in e))
    return Condition(
        keyword,
        lambda v: any(p.predicate(v) for p in parts),
        folded=parts[0].folded,
        exact=exact,
    )


def compile_query(filters: dict[str, Any]) -> dict[str, Condition]:
    """Compile every query key, leaving out those that are universal matching."""
    compiled = {k: compile_condition(k, v) for k, v in filters.items()}
    return {k: c for k, c in compiled.items() if c is not None}


def matches(record: Mapping[str, Any], conditions: Iterable[Condition]) -> bool:
    """True when the record satisfies every condition."""
    return all(c(record.get(c.keyword)) for c in conditions)
