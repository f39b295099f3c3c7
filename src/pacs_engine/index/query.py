"""The query planner: candidates from the narrowest usable index, then matching level by level.

Also what a query may ask (`check_query`): the user-facing API (`Archive.query`, the
`query` command) is strict, so a misspelled keyword, a keyword of another level or a
malformed date is an error saying what would be valid rather than an empty result;
C-FIND (`pacs_engine.serve.find`) is lenient where PS3.4 says so and skips the check.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pacs_engine.errors import PacsEngineError
from pacs_engine.index.codec import RowCodec
from pacs_engine.index.keys import INDEXED_KEYWORDS, SEP, index_value, last_part, uid_problem
from pacs_engine.index.matching import (
    LEVELS,
    SERIES_COMPUTED,
    STUDY_COMPUTED,
    Condition,
    compile_query,
    level_of,
    matches,
    time_bounds,
    vr_of,
)
from pacs_engine.index.records import View
from pacs_engine.index.rows import Row, SeriesRecord, StudyRecord
from pacs_engine.scanning import HEADER_KEYWORDS, INSTANCE_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS

#: A query's result: a patient, a study record, a series record with its study's
#: attributes, or a row.
Found = Mapping[str, Any]

#: The levels a query may ask for: the index's, and patients (studies grouped by patient).
QUERY_LEVELS: tuple[str, ...] = ("patient", *LEVELS)

#: The patient attributes of the index's study records (the keys of a patient query).
PATIENT_KEYWORDS: tuple[str, ...] = tuple(k for k in STUDY_KEYWORDS if "Patient" in k)

#: Patient attributes computed from the studies of a patient.
PATIENT_COMPUTED: tuple[str, ...] = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)

_STUDY_SERIES = STUDY_KEYWORDS + STUDY_COMPUTED + SERIES_KEYWORDS + SERIES_COMPUTED
#: The archive's own fields of a row (source_path, pixel_storage, ...), queryable too.
ROW_FIELDS = tuple(
    sorted((Row.__required_keys__ | Row.__optional_keys__) - frozenset(HEADER_KEYWORDS))
)

#: The keys a query may match on, by level (series keys at the study level: a study
#: matches when one of its series does).
QUERY_KEYS: dict[str, frozenset[str]] = {
    "patient": frozenset(PATIENT_KEYWORDS),
    "study": frozenset(_STUDY_SERIES),
    "series": frozenset(_STUDY_SERIES),
    "instance": frozenset(_STUDY_SERIES + INSTANCE_KEYWORDS + ROW_FIELDS),
}

#: The keys of the records a query returns at each level, absent values as None.
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "patient": PATIENT_KEYWORDS + PATIENT_COMPUTED,
    "study": STUDY_KEYWORDS + STUDY_COMPUTED,
    "series": STUDY_KEYWORDS + SERIES_KEYWORDS + SERIES_COMPUTED,
    "instance": HEADER_KEYWORDS,
}

#: The DICOM forms of dates and times (PS3.5 6.2), as a query may give them: a time
#: or date-time may stop after any component.
_FORMS = {
    "DA": (re.compile(r"\d{8}"), "a date YYYYMMDD (20000101)"),
    "TM": (re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"), "a time HHMMSS (0930, 093000)"),
    "DT": (
        re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?"),
        "a date-time YYYYMMDDHHMMSS (20000101093000)",
    ),
}


class QueryError(PacsEngineError, ValueError):
    """A query that cannot be right: an unknown keyword, one of another level, a bad value."""


def check_query(level: str, filters: Mapping[str, Any]) -> None:
    """Raise QueryError when `filters` asks for what `level` cannot match, saying what can."""
    if level not in QUERY_LEVELS:
        raise QueryError(f"level must be one of {', '.join(QUERY_LEVELS)}, not {level!r}")
    for keyword, value in filters.items():
        if keyword not in QUERY_KEYS[level]:
            raise QueryError(key_problem(keyword, level))
        for one in value if isinstance(value, list | tuple) else [value]:
            problem = value_problem(keyword, one)
            if problem is not None:
                raise QueryError(problem)


def key_problem(keyword: str, level: str, known: Iterable[str] | None = None) -> str:
    """Why `keyword` is not a key at `level` (of `known`, default the level's query keys)."""
    valid = set(QUERY_KEYS[level] if known is None else known)
    levels = [lv for lv in QUERY_LEVELS if keyword in QUERY_KEYS[lv]]
    if levels:
        return f"{keyword} is not queryable at the {level} level, only at: {', '.join(levels)}"
    everything = set().union(valid, *QUERY_KEYS.values())
    lowered = {k.lower(): k for k in everything}
    close = difflib.get_close_matches(keyword.lower(), list(lowered), n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(lowered[c] for c in close)}?" if close else ""
    return f"{keyword}: not a keyword the archive's index holds{hint}"


def _ends_before_it_starts(vr: str, lo: str, hi: str) -> bool:
    """Whether a range's upper bound comes before its lower one (times at the precision
    each is given in: 101530-1015 is 10:15:30 to 10:15:59.999999)."""
    if vr == "TM":
        first, last = time_bounds(lo), time_bounds(hi)
        if first is not None and last is not None:
            return first[0] > last[1]
    return lo > hi[: len(lo)]


def value_problem(keyword: str, value: Any) -> str | None:
    """Why `value` cannot match `keyword` (a malformed date, a wildcard UID), or None."""
    if not isinstance(value, str) or value in ("", "*"):
        return None
    vr = vr_of(keyword)
    if vr == "UI" and ("*" in value or "?" in value):
        return f"{keyword}: {value!r}: UIDs match exactly (a list: uid1\\uid2), no wildcards"
    if vr not in _FORMS:
        return None
    form, said = _FORMS[vr]
    parts = value.split("-")
    ranged = len(parts) == 2 and any(parts)
    if (ranged or len(parts) == 1) and all(p == "" or form.fullmatch(p) for p in parts):
        if ranged and all(parts) and _ends_before_it_starts(vr, parts[0], parts[1]):
            return f"{keyword}: {value!r}: the range ends before it starts"
        return None
    digits = re.sub(r"[-:T ]", "", value) if vr in ("DA", "DT") else value.replace(":", "")
    hint = f" (did you mean {digits}?)" if form.fullmatch(digits) else ""
    return (
        f"{keyword}: {value!r} is not {said} or a range of them (A-B, A-, -B) in DICOM form{hint}"
    )


def run_query(
    txn: Any,
    dbs: dict[bytes, Any],
    codec: RowCodec,
    level: str,
    filters: dict[str, Any],
    strict: bool = False,
    offset: int = 0,
    limit: int | None = None,
) -> list[Found]:
    """The records at `level` matching `filters`, read in the transaction `txn`.

    With `strict`, `check_query` first. Records of one level have the same keys
    (`RECORD_KEYS`, absent values None) whatever their files held. `offset` and
    `limit` page the matches in their stable order: below the patient level the
    matches are read lazily, so reading stops after offset + limit of them.
    """
    if offset < 0 or (limit is not None and limit < 0):
        raise QueryError(f"offset and limit must be 0 or more, not {offset} and {limit}")
    if strict:
        check_query(level, filters)
    stop = None if limit is None else offset + limit
    if level == "patient":
        unknown = [k for k in filters if k not in QUERY_KEYS["patient"]]
        if unknown:
            raise QueryError(key_problem(unknown[0], "patient"))
        # A patient's counts need all of its studies: grouped first, then paged.
        matched = run_query(txn, dbs, codec, "study", filters)

        def all_studies(pid: str, issuer: Any) -> list[Found]:
            studies = run_query(txn, dbs, codec, "study", {"PatientID": pid})
            return same_patient(studies, pid, issuer)

        return patients(matched, all_studies)[offset:stop]
    if level not in LEVELS:
        raise QueryError(f"level must be one of {', '.join(QUERY_LEVELS)}, not {level!r}")
    found = itertools.islice(_run(txn, dbs, codec, level, filters), offset, stop)
    keys = RECORD_KEYS[level]
    return [{**dict.fromkeys(keys), **record} for record in found]


def _keyable(uids: Iterable[str]) -> list[str]:
    """The UIDs of a list that could be an index key, sorted: no other is archived (one
    longer than LMDB's keys would be an error, not a miss)."""
    return sorted(uid for uid in uids if uid_problem("UID", uid) is None)


def patient_counts(studies: list[Found]) -> dict[str, int]:
    """The patient's computed counts, from the study records of that patient."""
    return {
        "NumberOfPatientRelatedStudies": len(studies),
        "NumberOfPatientRelatedSeries": sum(
            s.get("NumberOfStudyRelatedSeries") or 0 for s in studies
        ),
        "NumberOfPatientRelatedInstances": sum(
            s.get("NumberOfStudyRelatedInstances") or 0 for s in studies
        ),
    }


def patients(
    studies: list[Found], all_studies: Callable[[str, Any], list[Found]] | None = None
) -> list[Found]:
    """One record per patient (PatientID and IssuerOfPatientID) of `studies`, with the
    counts of all of that patient's studies (`all_studies(id, issuer)`; without it, of
    those given). A study without a Patient ID is a patient of its own: nothing says
    whose it is."""
    by_patient: dict[tuple[Any, Any], list[Found]] = {}
    for study in studies:
        pid = study.get("PatientID")
        key = (pid, study.get("IssuerOfPatientID")) if pid else (None, study["StudyInstanceUID"])
        by_patient.setdefault(key, []).append(study)
    out: list[Found] = []
    for (pid, issuer), group in by_patient.items():
        counted = all_studies(pid, issuer) if pid and all_studies is not None else group
        last = group[-1]
        out.append({**{k: last.get(k) for k in PATIENT_KEYWORDS}, **patient_counts(counted)})
    return out


def same_patient(studies: list[Found], pid: str, issuer: Any) -> list[Found]:
    """The studies of the patient (`pid`, `issuer`) among `studies` (a query by PatientID
    matches wildcards in it, and no issuer)."""
    return [
        s for s in studies if s.get("PatientID") == pid and s.get("IssuerOfPatientID") == issuer
    ]


def _run(
    txn: Any, dbs: dict[bytes, Any], codec: RowCodec, level: str, filters: dict[str, Any]
) -> Iterator[Found]:
    """The records at one of the index's levels matching `filters`, as stored, as read."""
    conditions = compile_query(filters)
    by_level: dict[str, list[Condition]] = {name: [] for name in LEVELS}
    for condition in conditions.values():
        by_level[level_of(condition.keyword)].append(condition)
    if by_level["instance"] and level != "instance":
        names = ", ".join(c.keyword for c in by_level["instance"])
        raise QueryError(f"{names}: instance attributes; query at level='instance'")
    return _Query(txn, dbs, codec, level, conditions, by_level).run()


class _Query(View):
    """One query in one read transaction: candidates from an index, then matching level by level."""

    def __init__(
        self,
        txn: Any,
        dbs: dict[bytes, Any],
        codec: RowCodec,
        level: str,
        conditions: dict[str, Condition],
        by_level: dict[str, list[Condition]],
    ) -> None:
        super().__init__(txn, dbs, codec)
        self.level = level
        self.conditions = conditions
        self.by_level = by_level

    def run(self) -> Iterator[Found]:
        """The matching records, each read when the one before has been taken."""
        sop = self.conditions.get("SOPInstanceUID")
        if self.level == "instance" and sop is not None and sop.exact is not None:
            return self._from_rows(_keyable(sop.exact))
        series = self.conditions.get("SeriesInstanceUID")
        if series is not None and series.exact is not None:
            return self._from_series(_keyable(series.exact))
        return self._from_studies()

    def _from_studies(self) -> Iterator[Found]:
        for study_uid in self._candidate_studies():
            study = self.study_record(study_uid)
            if study is not None and matches(study, self.by_level["study"]):
                yield from self._below_study(study)

    def _candidate_studies(self) -> Iterable[str]:
        """Study UIDs that may match: from the most selective usable index, else all."""
        study = self.conditions.get("StudyInstanceUID")
        if study is not None and study.exact is not None:
            return _keyable(study.exact)
        usable = [self.conditions[k] for k in INDEXED_KEYWORDS if k in self.conditions]
        for condition in usable:
            if condition.exact is not None:
                return self._scan_exact(condition)
        for condition in usable:
            if condition.prefix is not None or condition.bounds is not None:
                return self._scan_ordered(condition)
        cursor = self.txn.cursor(self.dbs[b"studies"])
        return (key.decode() for key in cursor.iternext(values=False))

    def _scan_exact(self, condition: Condition) -> list[str]:
        db = b"by_" + condition.keyword.encode()
        found: set[str] = set()
        for value in condition.exact or ():
            prefix = index_value(condition.keyword, value) + SEP
            found.update(last_part(k) for k in self.keys_with_prefix(db, prefix))
        return sorted(found)

    def _scan_ordered(self, condition: Condition) -> list[str]:
        db = b"by_" + condition.keyword.encode()
        if condition.prefix is not None:
            prefix = index_value(condition.keyword, condition.prefix)
            return sorted({last_part(k) for k in self.keys_with_prefix(db, prefix)})
        if condition.bounds is None:  # the caller picks conditions with a prefix or bounds
            raise ValueError(f"{condition.keyword}: no prefix or bounds to scan by")
        lo, hi = condition.bounds
        cursor = self.txn.cursor(self.dbs[db])
        found = set()
        if cursor.set_range(lo.encode()):
            high = hi.encode()
            for key in cursor.iternext(values=False):
                if high and key.rpartition(SEP)[0][: len(high)] > high:
                    break
                found.add(last_part(key))
        return sorted(found)

    def _below_study(self, study: StudyRecord) -> Iterable[Found]:
        """What a matching study contributes at the query's level."""
        if self.level == "study" and not self.by_level["series"]:
            return [study]
        series = self.study_series(study["StudyInstanceUID"])
        matching = [s for s in series if matches(s, self.by_level["series"])]
        if self.level == "study":
            return [study] if matching else []
        return self._at_level(study, matching)

    def _at_level(self, study: StudyRecord, series: list[SeriesRecord]) -> Iterator[Found]:
        """Series records (with the study's attributes) or the matching rows of `series`."""
        if self.level == "series":
            values: Mapping[str, Any] = study
            head = {k: values[k] for k in STUDY_KEYWORDS if k in values}
            yield from ({**head, **s} for s in series)
            return
        for record in series:
            yield from (
                row
                for row in self.iter_series_rows(record["SeriesInstanceUID"])
                if matches(row, self.by_level["instance"])
            )

    def _from_series(self, series_uids: list[str]) -> Iterator[Found]:
        by_study: dict[str, list[SeriesRecord]] = defaultdict(list)
        for uid in series_uids:
            record = self.series_record(uid)
            if record is not None and matches(record, self.by_level["series"]):
                by_study[record["StudyInstanceUID"]].append(record)
        for study_uid in sorted(by_study):
            study = self.study_record(study_uid)
            if study is None or not matches(study, self.by_level["study"]):
                continue
            if self.level == "study":
                yield study
            else:
                yield from self._at_level(study, by_study[study_uid])

    def _from_rows(self, sop_uids: list[str]) -> Iterator[Found]:
        for uid in sop_uids:
            row = self.row(uid)
            if row is None or not matches(row, self.by_level["instance"]):
                continue
            series = self.series_record(row["SeriesInstanceUID"])
            if series is None or not matches(series, self.by_level["series"]):
                continue
            study = self.study_record(series["StudyInstanceUID"])
            if study is not None and matches(study, self.by_level["study"]):
                yield row
