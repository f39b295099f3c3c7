"""The query planner: candidates from the narrowest usable index, then matching level by level."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from pacs_engine.index.codec import RowCodec
from pacs_engine.index.keys import INDEXED_KEYWORDS, SEP, index_value, last_part
from pacs_engine.index.matching import (
    LEVELS,
    Condition,
    compile_query,
    level_of,
    matches,
)
from pacs_engine.index.records import View
from pacs_engine.index.rows import SeriesRecord, StudyRecord
from pacs_engine.scanning import STUDY_KEYWORDS

#: A query's result: a study record, a series record with its study's attributes, or a row.
Found = Mapping[str, Any]


def run_query(
    txn: Any, dbs: dict[bytes, Any], codec: RowCodec, level: str, filters: dict[str, Any]
) -> list[Found]:
    """The records at `level` matching `filters`, read in the transaction `txn`."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    conditions = compile_query(filters)
    by_level: dict[str, list[Condition]] = {name: [] for name in LEVELS}
    for condition in conditions.values():
        by_level[level_of(condition.keyword)].append(condition)
    if by_level["instance"] and level != "instance":
        names = ", ".join(c.keyword for c in by_level["instance"])
        raise ValueError(f"{names}: instance attributes; query at level='instance'")
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

    def run(self) -> list[Found]:
        """The matching records."""
        sop = self.conditions.get("SOPInstanceUID")
        if self.level == "instance" and sop is not None and sop.exact is not None:
            return self._from_rows(sorted(sop.exact))
        series = self.conditions.get("SeriesInstanceUID")
        if series is not None and series.exact is not None:
            return self._from_series(sorted(series.exact))
        out: list[Found] = []
        for study_uid in self._candidate_studies():
            study = self.study_record(study_uid)
            if study is not None and matches(study, self.by_level["study"]):
                out.extend(self._below_study(study))
        return out

    def _candidate_studies(self) -> Iterable[str]:
        """Study UIDs that may match: from the most selective usable index, else all."""
        study = self.conditions.get("StudyInstanceUID")
        if study is not None and study.exact is not None:
            return sorted(study.exact)
        usable = [self.conditions[k] for k in INDEXED_KEYWORDS if k in self.conditions]
        for condition in usable:
            if condition.exact is not None:
                return self._scan_exact(condition)
        for condition in usable:
            if condition.prefix is not None or condition.bounds is not None:
                return self._scan_ordered(condition)
        cursor = self.txn.cursor(self.dbs[b"studies"])
        return [key.decode() for key in cursor.iternext(values=False)]

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

    def _below_study(self, study: StudyRecord) -> list[Found]:
        """What a matching study contributes at the query's level."""
        if self.level == "study" and not self.by_level["series"]:
            return [study]
        series = self.study_series(study["StudyInstanceUID"])
        matching = [s for s in series if matches(s, self.by_level["series"])]
        if self.level == "study":
            return [study] if matching else []
        return self._at_level(study, matching)

    def _at_level(self, study: StudyRecord, series: list[SeriesRecord]) -> list[Found]:
        """Series records (with the study's attributes) or the matching rows of `series`."""
        if self.level == "series":
            values: Mapping[str, Any] = study
            head = {k: values[k] for k in STUDY_KEYWORDS if k in values}
            return [{**head, **s} for s in series]
        rows: list[Found] = []
        for record in series:
            rows.extend(
                row
                for row in self.series_rows(record["SeriesInstanceUID"])
                if matches(row, self.by_level["instance"])
            )
        return rows

    def _from_series(self, series_uids: list[str]) -> list[Found]:
        by_study: dict[str, list[SeriesRecord]] = defaultdict(list)
        for uid in series_uids:
            record = self.series_record(uid)
            if record is not None and matches(record, self.by_level["series"]):
                by_study[record["StudyInstanceUID"]].append(record)
        out: list[Found] = []
        for study_uid in sorted(by_study):
            study = self.study_record(study_uid)
            if study is None or not matches(study, self.by_level["study"]):
                continue
            if self.level == "study":
                out.append(study)
            else:
                out.extend(self._at_level(study, by_study[study_uid]))
        return out

    def _from_rows(self, sop_uids: list[str]) -> list[Found]:
        out: list[Found] = []
        for uid in sop_uids:
            row = self.row(uid)
            if row is None or not matches(row, self.by_level["instance"]):
                continue
            series = self.series_record(row["SeriesInstanceUID"])
            if series is None or not matches(series, self.by_level["series"]):
                continue
            study = self.study_record(series["StudyInstanceUID"])
            if study is not None and matches(study, self.by_level["study"]):
                out.append(row)
        return out
