"""Reads within one transaction, and record maintenance: the series and study records and
the by_<keyword> indexes kept up to date with the rows a write transaction adds or removes."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

from pacs_engine.index.codec import RowCodec, dump_json, load_json
from pacs_engine.index.keys import (
    NO_NUMBER,
    SEP,
    UID_KEYWORDS,
    checked_uid,
    index_keys,
    series_row_key,
)
from pacs_engine.index.rows import Row, SeriesRecord, StudyRecord
from pacs_engine.scanning import SERIES_KEYWORDS, STUDY_KEYWORDS


def series_order(record: SeriesRecord) -> tuple[int, int, str]:
    """Sorts series by SeriesNumber (those without an integer one last), then UID."""
    number = record.get("SeriesNumber")
    if isinstance(number, int) and not isinstance(number, bool):
        return (0, number, record["SeriesInstanceUID"])
    return (1, 0, record["SeriesInstanceUID"])


#: Rows `IndexWriter._row_left` reads at most to find one in a record's study.
_ROWS_LEFT_READ = 1024


def _picked(row: Mapping[str, Any], keywords: tuple[str, ...]) -> dict[str, Any]:
    """The row's values of `keywords`, in their order, those it has."""
    return {k: row[k] for k in keywords if k in row}


def _replaced(
    record: Mapping[str, Any], row: Mapping[str, Any], keywords: tuple[str, ...]
) -> dict[str, Any]:
    """The record with the row's values of `keywords` in place of its own: those the row
    lacks dropped, so that nothing of a removed row stays."""
    kept = {k: v for k, v in record.items() if k not in keywords}
    return {**kept, **_picked(row, keywords)}


class View:
    """Reads within one transaction."""

    def __init__(self, txn: Any, dbs: dict[bytes, Any], codec: RowCodec) -> None:
        self.txn = txn
        self.dbs = dbs
        self.codec = codec

    def keys_with_prefix(self, db: bytes, prefix: bytes) -> Iterator[bytes]:
        """The keys of `db` that start with `prefix`, in order."""
        cursor = self.txn.cursor(self.dbs[db])
        if not cursor.set_range(prefix):
            return
        for key in cursor.iternext(values=False):
            if not key.startswith(prefix):
                return
            yield key

    def row(self, sop_uid: str) -> Row | None:
        """The row, or None."""
        data = self.txn.get(sop_uid.encode(), db=self.dbs[b"rows"])
        return None if data is None else self.codec.load(data, sop_uid.encode())

    def record(self, db: bytes, uid: str) -> dict[str, Any] | None:
        """The series or study record (as `db` says), or None."""
        data = self.txn.get(uid.encode(), db=self.dbs[db])
        if data is None:
            return None
        return load_json(data, f"{self.codec.path}: {db.decode()} {uid!r}")

    def series_record(self, uid: str) -> SeriesRecord | None:
        """The series record, or None."""
        return cast("SeriesRecord | None", self.record(b"series", uid))

    def study_record(self, uid: str) -> StudyRecord | None:
        """The study record, or None."""
        return cast("StudyRecord | None", self.record(b"studies", uid))

    def series_rows(self, series_uid: str) -> list[Row]:
        """The rows of the series, in order."""
        return list(self.iter_series_rows(series_uid))

    def iter_series_rows(self, series_uid: str) -> Iterator[Row]:
        """The rows of the series, in order, each read when asked for (a query that stops early)."""
        prefix = series_uid.encode() + SEP
        # Nine order bytes follow the series UID and separator; the SOP UID is the rest.
        start = len(prefix) + len(NO_NUMBER)
        get, rows, load = self.txn.get, self.dbs[b"rows"], self.codec.load
        for key in self.keys_with_prefix(b"series_rows", prefix):
            sop = key[start:]
            yield load(get(sop, db=rows), sop)

    def study_series(self, study_uid: str) -> list[SeriesRecord]:
        """The series records of the study, by Series Instance UID."""
        keys = self.keys_with_prefix(b"study_series", study_uid.encode() + SEP)
        get, series = self.txn.get, self.dbs[b"series"]
        where = f"{self.codec.path}: a series record"
        return [
            cast(SeriesRecord, load_json(get(key.rpartition(SEP)[2], db=series), where))
            for key in keys
        ]


class IndexWriter(View):
    """The changes of one write transaction: rows piece by piece, then the records they touch."""

    def __init__(self, txn: Any, dbs: dict[bytes, Any], codec: RowCodec) -> None:
        super().__init__(txn, dbs, codec)
        self.count_delta: dict[str, int] = defaultdict(int)
        self.series_row: dict[str, Row] = {}
        self.studies: dict[str, Row | None] = {}

    def add(
        self,
        rows: Iterable[Row],
        remove: Iterable[str] = (),
        journal: Mapping[bytes, bytes | None] | None = None,
    ) -> None:
        """Write rows, removals and journal entries (None deletes) as `Index.commit` does."""
        batch: dict[bytes, tuple[Row, bytes]] = {}
        for row in rows:
            for keyword in UID_KEYWORDS:
                checked_uid(row, keyword)
            sop = row["SOPInstanceUID"].encode()
            batch.pop(sop, None)  # a repeated UID: its last row, at its last place in the order
            batch[sop] = (row, self.codec.dump(row))
        txn, rows_db, series_rows_db = self.txn, self.dbs[b"rows"], self.dbs[b"series_rows"]
        for sop in (uid.encode() for uid in remove):
            old = txn.pop(sop, db=rows_db)
            if old is not None:
                self._unlink(self.codec.load(old, sop))
        # Sorted keys keep the B+tree's writes local.
        for sop in sorted(batch):
            row, data = batch[sop]
            old = txn.replace(sop, data, db=rows_db)
            if old is not None:
                self._unlink(self.codec.load(old, sop))
            txn.put(series_row_key(row), b"", db=series_rows_db)
            self.count_delta[row["SeriesInstanceUID"]] += 1
        # Records take their attributes from the last row added of each series and study.
        for row, _ in batch.values():
            self.series_row[row["SeriesInstanceUID"]] = row
            self.studies[row["StudyInstanceUID"]] = row
        for key, value in (journal or {}).items():
            if value is None:
                txn.delete(key, db=self.dbs[b"journal"])
            else:
                txn.put(key, value, db=self.dbs[b"journal"])

    def finish(self) -> None:
        """Bring the series and study records and indexes up to date with what was added."""
        for series in self.count_delta:
            self._update_series(series)
        for study, row in self.studies.items():
            self._update_study(study, row)

    def _unlink(self, old: Row) -> None:
        self.txn.delete(series_row_key(old), db=self.dbs[b"series_rows"])
        series, study, sop = (
            old["SeriesInstanceUID"],
            old["StudyInstanceUID"],
            old["SOPInstanceUID"],
        )
        self.count_delta[series] -= 1
        # A row an earlier `add` of this transaction gave the records, gone now: not theirs.
        if (given := self.series_row.get(series)) is not None and given["SOPInstanceUID"] == sop:
            del self.series_row[series]
        if (given := self.studies.get(study)) is not None and given["SOPInstanceUID"] == sop:
            self.studies[study] = None
        self.studies.setdefault(study, None)

    def _row_left(self, series: str, study: str | None) -> Row | None:
        """The series' first row in `study`, else its first row (None: it has none). Looks
        at _ROWS_LEFT_READ rows at most: more only in a series of two studies (archives
        made before such a series was a conflict), whose record may then move study."""
        first = None
        for row in itertools.islice(self.iter_series_rows(series), _ROWS_LEFT_READ):
            if row["StudyInstanceUID"] == study:
                return row
            first = first or row
        return first

    def _update_series(self, series: str) -> None:
        txn, series_db, links = self.txn, self.dbs[b"series"], self.dbs[b"study_series"]
        key = series.encode()
        record: dict[str, Any] = self.record(b"series", series) or {}
        count = record.get("NumberOfSeriesRelatedInstances", 0) + self.count_delta[series]
        old_study = record.get("StudyInstanceUID")
        row = self.series_row.get(series)
        if row is not None:
            record.update(_picked(row, SERIES_KEYWORDS))
            record["StudyInstanceUID"] = row["StudyInstanceUID"]
        elif record and count > 0:
            # Rows removed or moved away only: a row left gives the attributes, not one gone.
            left = self._row_left(series, old_study)
            if left is not None:
                record = _replaced(record, left, SERIES_KEYWORDS)
                record["StudyInstanceUID"] = left["StudyInstanceUID"]
                if left["StudyInstanceUID"] != old_study:  # no row of it left in that study
                    self.studies.setdefault(left["StudyInstanceUID"], None)
        if old_study is not None and (count <= 0 or old_study != record["StudyInstanceUID"]):
            txn.delete(old_study.encode() + SEP + key, db=links)
            self.studies.setdefault(old_study, None)
        if count <= 0:
            txn.delete(key, db=series_db)
            return
        record["NumberOfSeriesRelatedInstances"] = count
        txn.put(key, dump_json(record), db=series_db)
        txn.put(record["StudyInstanceUID"].encode() + SEP + key, b"", db=links)

    def _update_study(self, study: str, row: Row | None) -> None:
        txn, studies_db = self.txn, self.dbs[b"studies"]
        key = study.encode()
        old = self.study_record(study)
        series = self.study_series(study)
        record: dict[str, Any] | None = None
        if series:
            record = dict(old or {})
            if row is not None:
                record.update(_picked(row, STUDY_KEYWORDS))
            else:
                # Rows removed or moved away only: a row left gives the attributes, not one
                # gone (a series of two studies may come to a study without a record).
                first = min(series, key=series_order)["SeriesInstanceUID"]
                left = self._row_left(first, study)
                if left is not None:
                    record = {**_replaced(record, left, STUDY_KEYWORDS), "StudyInstanceUID": study}
            modalities = {s.get("Modality") for s in series}
            record["ModalitiesInStudy"] = sorted(m for m in modalities if isinstance(m, str) and m)
            record["NumberOfStudyRelatedSeries"] = len(series)
            record["NumberOfStudyRelatedInstances"] = sum(
                s["NumberOfSeriesRelatedInstances"] for s in series
            )
            txn.put(key, dump_json(record), db=studies_db)
        elif old is not None:
            txn.delete(key, db=studies_db)
        old_keys, new_keys = index_keys(old), index_keys(cast("StudyRecord | None", record))
        for keyword, index_key in old_keys - new_keys:
            txn.delete(index_key, db=self.dbs[b"by_" + keyword.encode()])
        for keyword, index_key in new_keys - old_keys:
            txn.put(index_key, b"", db=self.dbs[b"by_" + keyword.encode()])
