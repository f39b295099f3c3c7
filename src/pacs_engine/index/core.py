"""The archive's index: instances, series and studies in one LMDB environment.

Databases (keys are UTF-8; "\\0" separates the parts of a compound key, which
no UID contains):

- rows          SOPInstanceUID -> the row: JSON, deflated with a preset dictionary
- series_rows   SeriesInstanceUID \\0 order(InstanceNumber) SOPInstanceUID -> ""
- series        SeriesInstanceUID -> series record (series attributes, count), JSON
- studies       StudyInstanceUID -> study record (patient and study attributes,
                modalities, counts), JSON
- study_series  StudyInstanceUID \\0 SeriesInstanceUID -> ""
- by_<keyword>  value \\0 StudyInstanceUID -> "" for PatientID, AccessionNumber,
                PatientName (upper-cased) and StudyDate, the keys queries narrow by
- meta          "format" -> {"format", "version"}; "zdict" -> the rows' preset dictionary

A commit is one LMDB write transaction: pages are copied on write, written and
fsync'ed, and only then does the meta page point at the new root. A reader's
transaction sees the last root published when it began, so it sees a commit
whole or not at all, even when the writer dies mid-commit.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import lmdb

from pacs_engine.index import _lmdb
from pacs_engine.index.integrity import DATA_FILE, DamagedIndexError, check_trees, read_metas
from pacs_engine.index.matching import (
    LEVELS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    Condition,
    compile_query,
    fold,
    level_of,
    matches,
)
from pacs_engine.scanning import HEADER_KEYWORDS
from pacs_engine.storage import file_mode, make_dirs

FORMAT = {"format": "pacs_engine.index", "version": 1}
UID_KEYWORDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
#: Longest UID accepted, in bytes: DICOM allows 64; longer ones occur in the wild,
#: and two of them must fit in one LMDB key (511 bytes at most).
MAX_UID_BYTES = 200
#: Indexed values are cut to this many bytes; matching then checks the whole value.
_MAX_VALUE_BYTES = 200
#: Indexed study attributes, in the order the query planner prefers them.
INDEXED_KEYWORDS = ("AccessionNumber", "PatientID", "PatientName", "StudyDate")
_ARCHIVE_FIELDS = (
    "source_path",
    "source_sha256",
    "file_size",
    "status",
    "pixels",
    "header",
    "frame_hashes",
    "array",
    "frames",
    "blob",
    "offset",
    "length",
)
#: What rows of one archive have in common: deflating against it halves a row, so
#: twice as many rows share a 4 KiB page. Kept in each index, so it may change.
_ZDICT = (
    "".join(f'"{k}":' for k in HEADER_KEYWORDS + _ARCHIVE_FIELDS)
    + '"1.2.840.10008.1.2.1""1.2.840.10008.5.1.4.1.1.""ISO_IR 100""MONOCHROME2"'
).encode()
_ITER_CHUNK = 1024
_SEP = b"\0"
_NO_NUMBER = b"\1" + bytes(8)
_INT64_BIAS = 1 << 63


def _dump(record: dict[str, Any]) -> bytes:
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a path that is not UTF-8 (surrogate escapes): \u-escape it
        return json.dumps(record, separators=(",", ":")).encode()


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError as error:
        raise DamagedIndexError(f"{where}: cannot be decoded: {error}") from None
    if not isinstance(record, dict):
        raise DamagedIndexError(f"{where}: not a record")
    return record


class _RowCodec:
    """Rows as JSON deflated with the index's preset dictionary."""

    def __init__(self, zdict: bytes, path: Path) -> None:
        self.zdict = zdict
        self.path = path

    def dump(self, row: dict[str, Any]) -> bytes:
        """The row as stored."""
        # Level 1: level 6 saves 4 % more and takes twice the time.
        deflate = zlib.compressobj(1, zdict=self.zdict)
        return deflate.compress(_dump(row)) + deflate.flush()

    def load(self, data: bytes | None, key: bytes) -> dict[str, Any]:
        """The row stored under `key`; DamagedIndexError when it cannot be decoded or is
        another instance's (a damaged key)."""
        where = f"{self.path}: the row of {key.decode('utf-8', 'replace')!r}"
        if data is None:
            raise DamagedIndexError(f"{where}: missing, though series_rows lists it")
        try:
            text = zlib.decompressobj(zdict=self.zdict).decompress(data)
        except zlib.error as error:
            raise DamagedIndexError(f"{where}: cannot be decoded: {error}") from None
        row = _load(text, where)
        if not all(isinstance(row.get(k), str) for k in UID_KEYWORDS):
            raise DamagedIndexError(f"{where}: no UIDs")
        if row["SOPInstanceUID"].encode() != key:
            raise DamagedIndexError(f"{where}: stored under another instance's key")
        return row


def _meta_txnids(path: Path) -> set[int]:
    """The transactions the index file's meta pages name now."""
    return {meta.txnid for meta in read_metas(path / DATA_FILE)}


def _order(instance_number: Any) -> bytes:
    """Nine bytes that sort rows by InstanceNumber, those without an integer one last."""
    if (
        isinstance(instance_number, int)
        and not isinstance(instance_number, bool)
        and -_INT64_BIAS <= instance_number < _INT64_BIAS
    ):
        return b"\0" + (instance_number + _INT64_BIAS).to_bytes(8, "big")
    return _NO_NUMBER


def uid_problem(keyword: str, value: Any) -> str | None:
    """Why `value` cannot be the index's `keyword` UID, or None when it can."""
    if not isinstance(value, str) or not value:
        return f"no {keyword}"
    if len(value.encode("utf-8", "surrogateescape")) > MAX_UID_BYTES or "\0" in value:
        return f"{keyword} is longer than {MAX_UID_BYTES} bytes or holds a NUL"
    if "/" in value or "\\" in value or value.startswith("."):
        # Series UIDs name folders of the archive: "../x" would write outside it.
        return f"{keyword} {value!r} holds a path separator or starts with '.'"
    return None


def _uid(row: dict[str, Any], keyword: str) -> bytes:
    problem = uid_problem(keyword, row.get(keyword))
    if problem is not None:
        raise ValueError(f"{problem}: {row.get(keyword)!r}")
    return row[keyword].encode()


def _series_row_key(row: dict[str, Any]) -> bytes:
    return (
        _uid(row, "SeriesInstanceUID")
        + _SEP
        + _order(row.get("InstanceNumber"))
        + _uid(row, "SOPInstanceUID")
    )


def _index_value(keyword: str, value: str) -> bytes:
    text = fold(value) if keyword == "PatientName" else value
    return text.encode()[:_MAX_VALUE_BYTES]


def _index_keys(record: dict[str, Any] | None) -> set[tuple[str, bytes]]:
    """The (keyword, key) entries a study record has in the by_<keyword> databases."""
    if record is None:
        return set()
    study = record["StudyInstanceUID"].encode()
    keys = set()
    for keyword in INDEXED_KEYWORDS:
        value = record.get(keyword)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                keys.add((keyword, _index_value(keyword, v) + _SEP + study))
    return keys


def _last_part(key: bytes) -> str:
    return key.rpartition(_SEP)[2].decode()


def _series_order(record: dict[str, Any]) -> tuple[int, int, str]:
    number = record.get("SeriesNumber")
    if isinstance(number, int) and not isinstance(number, bool):
        return (0, number, record["SeriesInstanceUID"])
    return (1, 0, record["SeriesInstanceUID"])


class _View:
    """Reads within one transaction."""

    def __init__(self, txn: Any, dbs: dict[bytes, Any], codec: _RowCodec) -> None:
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

    def row(self, sop_uid: str) -> dict[str, Any] | None:
        """The row, or None."""
        data = self.txn.get(sop_uid.encode(), db=self.dbs[b"rows"])
        return None if data is None else self.codec.load(data, sop_uid.encode())

    def record(self, db: bytes, uid: str) -> dict[str, Any] | None:
        """The series or study record, or None."""
        data = self.txn.get(uid.encode(), db=self.dbs[db])
        return None if data is None else _load(data, f"{self.codec.path}: {db.decode()} {uid!r}")

    def series_rows(self, series_uid: str) -> list[dict[str, Any]]:
        """The rows of the series, in order."""
        prefix = series_uid.encode() + _SEP
        # Nine order bytes follow the series UID and separator; the SOP UID is the rest.
        start = len(prefix) + len(_NO_NUMBER)
        get, rows, load = self.txn.get, self.dbs[b"rows"], self.codec.load
        sops = [key[start:] for key in self.keys_with_prefix(b"series_rows", prefix)]
        return [load(get(sop, db=rows), sop) for sop in sops]

    def study_series(self, study_uid: str) -> list[dict[str, Any]]:
        """The series records of the study, by Series Instance UID."""
        keys = self.keys_with_prefix(b"study_series", study_uid.encode() + _SEP)
        get, series = self.txn.get, self.dbs[b"series"]
        where = f"{self.codec.path}: a series record"
        return [_load(get(key.rpartition(_SEP)[2], db=series), where) for key in keys]


class Index:
    """The archive's index of instance rows, with series and study records derived from them.

    A row is a JSON-serialisable dict keyed by DICOM keywords plus archive fields;
    SOPInstanceUID, SeriesInstanceUID and StudyInstanceUID are mandatory. Series
    and study records keep the series attributes and the patient/study attributes
    of the rows (the last committed row wins where rows disagree) and counts.
    Any number of processes may read while one writes; each call sees one
    committed state.
    """

    def __init__(self, path: str | os.PathLike[str], readonly: bool) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._store: _lmdb.Store | None = _lmdb.acquire(os.fspath(path), not readonly)
        not_index = f"{path}: not a {FORMAT['format']} v{FORMAT['version']} index"
        try:
            try:
                with self._transaction(write=False) as (txn, dbs):
                    found = txn.get(b"format", db=dbs[b"meta"])
                    zdict = txn.get(b"zdict", db=dbs[b"meta"])
            except lmdb.NotFoundError as error:  # an LMDB environment without our databases
                raise ValueError(not_index) from error
            if found is None or zdict is None or _load(found, not_index) != FORMAT:
                raise ValueError(not_index)
        except BaseException:
            self.close()
            raise
        self._codec = _RowCodec(zdict, self.path / DATA_FILE)

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Index:
        """Create an empty index in the folder `path` (made if missing), open for writing."""
        folder = Path(path)
        if (folder / "data.mdb").exists():
            raise FileExistsError(f"{folder}: an index already exists")
        make_dirs(folder)
        env = lmdb.open(
            os.fspath(folder),
            mode=file_mode(folder),  # the archive's permissions, whatever the umask
            map_size=_lmdb.MAP_SIZE,
            max_dbs=len(_lmdb.DB_NAMES),
            max_readers=_lmdb.MAX_READERS,
        )
        with env, env.begin(write=True) as txn:
            for name in _lmdb.DB_NAMES:
                env.open_db(name, txn=txn, create=True)
            meta = env.open_db(b"meta", txn=txn)
            txn.put(b"format", _dump(FORMAT), db=meta)
            txn.put(b"zdict", _ZDICT, db=meta)
        return cls(folder, readonly=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = True) -> Index:
        """Open an existing index; maps the file and reads nothing but its root pages."""
        if not (Path(path) / "data.mdb").is_file():
            raise FileNotFoundError(f"{path}: no index here")
        return cls(path, readonly)

    def close(self) -> None:
        """Release this handle; the environment closes with the process's last handle."""
        if self._store is not None:
            _lmdb.release(self._store)
            self._store = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Spawned processes (and pickling in general) reopen by path.
        return (Index.open, (os.fspath(self.path), self.readonly))

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "read-write"
        return f"<Index {os.fspath(self.path)!r} {mode}>"

    def _transaction(self, write: bool) -> AbstractContextManager[tuple[Any, dict[bytes, Any]]]:
        if self._store is None:
            raise ValueError("index is closed")
        return _lmdb.transaction(self._store, write)

    # --- writing --------------------------------------------------------------

    def commit(
        self,
        rows: Iterable[dict[str, Any]],
        remove: Iterable[str] = (),
        journal: Mapping[bytes, bytes | None] | None = None,
    ) -> None:
        """Add or replace `rows` and delete the `remove` SOP UIDs: all at once or not at all.

        A row whose SOPInstanceUID is already indexed replaces the old row; within
        one batch the last row with a UID wins. `journal` entries (None deletes)
        are written in the same transaction, so an ingest journal never disagrees
        with the rows. Returns once the batch is on disk.
        """
        with self.writing() as writer:
            writer.add(rows, remove, journal)

    @contextmanager
    def writing(self) -> Iterator[IndexWriter]:
        """One write transaction fed in pieces (`add`), visible all at once when the block ends.

        For changes too large to hold in memory at once (the rows of a million-instance
        series): each piece is written as it comes, nothing is visible to readers
        until the block ends without an exception, and an exception undoes every piece.
        """
        if self.readonly:
            raise PermissionError(f"{self.path}: index opened read-only")
        with self._transaction(write=True) as (txn, dbs):
            writer = IndexWriter(txn, dbs, self._codec)
            yield writer
            writer.finish()

    def journal_items(
        self, prefix: bytes, start: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Journal entries whose key starts with `prefix`, in key order, from `start` on."""
        out: list[tuple[bytes, bytes]] = []
        with self._transaction(write=False) as (txn, dbs):
            cursor = txn.cursor(dbs[b"journal"])
            if not cursor.set_range(start if start is not None else prefix):
                return out
            for key, value in cursor:
                if not key.startswith(prefix) or (limit is not None and len(out) >= limit):
                    break
                out.append((key, value))
        return out

    def journal_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The journal entries that exist among `keys`, read in one transaction."""
        with self._transaction(write=False) as (txn, dbs):
            db = dbs[b"journal"]
            return {k: v for k in keys if (v := txn.get(k, db=db)) is not None}

    def check(self) -> int:
        """Check the whole index: every page's structure, then every row and record decodes.

        Returns the rows checked; raises DamagedIndexError naming the file and the damage.
        """
        attempts = 0
        while True:
            with self._transaction(write=False) as (txn, dbs):
                try:
                    check_trees(self.path, txn.id())
                except DamagedIndexError:
                    attempts += 1
                    if attempts < 4 and txn.id() not in _meta_txnids(self.path):
                        continue  # a writer committed twice meanwhile: look again
                    raise
                for db in (b"series", b"studies"):
                    for key, value in txn.cursor(dbs[db]):
                        _load(value, f"{self._codec.path}: {db.decode()} record {key!r}")
                count = 0
                for key, value in txn.cursor(dbs[b"rows"]):
                    self._codec.load(value, key)
                    count += 1
                return count

    # --- reading --------------------------------------------------------------

    @contextmanager
    def _view(self) -> Iterator[_View]:
        with self._transaction(write=False) as (txn, dbs):
            yield _View(txn, dbs, self._codec)

    def __len__(self) -> int:
        with self._transaction(write=False) as (txn, dbs):
            return txn.stat(dbs[b"rows"])["entries"]

    def __contains__(self, sop_instance_uid: object) -> bool:
        if not isinstance(sop_instance_uid, str):
            return False
        with self._transaction(write=False) as (txn, dbs):
            return txn.get(sop_instance_uid.encode(), db=dbs[b"rows"]) is not None

    def get(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The row of the instance, or None."""
        with self._transaction(write=False) as (txn, dbs):
            data = txn.get(sop_instance_uid.encode(), db=dbs[b"rows"])
        return None if data is None else self._codec.load(data, sop_instance_uid.encode())

    def series(self, series_instance_uid: str) -> list[dict[str, Any]]:
        """The rows of the series, by InstanceNumber then SOPInstanceUID."""
        with self._view() as view:
            return view.series_rows(series_instance_uid)

    def iter_series(self, series_instance_uid: str) -> Iterator[dict[str, Any]]:
        """The rows of a series in instance order, read a chunk per transaction (as `__iter__`).

        Holds one chunk at a time, however large the series: for passes over every row.
        """
        prefix = series_instance_uid.encode() + _SEP
        start = len(prefix) + len(_NO_NUMBER)  # the SOP UID follows the order bytes
        after = prefix
        while True:
            with self._transaction(write=False) as (txn, dbs):
                keys = []
                cursor = txn.cursor(dbs[b"series_rows"])
                if cursor.set_range(after):
                    for key in cursor.iternext(values=False):
                        if key == after:
                            continue
                        if not key.startswith(prefix) or len(keys) == _ITER_CHUNK:
                            break
                        keys.append(key)
                chunk = [(key[start:], txn.get(key[start:], db=dbs[b"rows"])) for key in keys]
            yield from (self._codec.load(data, sop) for sop, data in chunk if data is not None)
            if len(keys) < _ITER_CHUNK:
                return
            after = keys[-1]

    def study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The rows of the study, series by series (SeriesNumber, then UID), each in order."""
        with self._view() as view:
            records = sorted(view.study_series(study_instance_uid), key=_series_order)
            return [row for r in records for row in view.series_rows(r["SeriesInstanceUID"])]

    def series_record(self, series_instance_uid: str) -> dict[str, Any] | None:
        """The series record (series attributes, StudyInstanceUID, instance count), or None."""
        with self._view() as view:
            return view.record(b"series", series_instance_uid)

    def study_record(self, study_instance_uid: str) -> dict[str, Any] | None:
        """The study record (patient and study attributes, modalities, counts), or None."""
        with self._view() as view:
            return view.record(b"studies", study_instance_uid)

    def all_series(self) -> list[dict[str, Any]]:
        """Every series record, by SeriesInstanceUID."""
        with self._transaction(write=False) as (txn, dbs):
            where = f"{self._codec.path}: a series record"
            return [_load(v, where) for v in txn.cursor(dbs[b"series"]).iternext(keys=False)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every row, by SOPInstanceUID, read a chunk per transaction.

        No transaction stays open between chunks, so a long pass neither pins an
        old snapshot nor crosses a fork; rows committed meanwhile may or may not
        appear, and none appears twice.
        """
        after = b""
        while True:
            chunk = []
            with self._transaction(write=False) as (txn, dbs):
                cursor = txn.cursor(dbs[b"rows"])
                if cursor.set_range(after):
                    for key, value in cursor:
                        if key == after:
                            continue
                        chunk.append((key, value))
                        if len(chunk) == _ITER_CHUNK:
                            after = key
                            break
            yield from (self._codec.load(value, key) for key, value in chunk)
            if len(chunk) < _ITER_CHUNK:
                return

    def query(self, level: str = "instance", **filters: Any) -> list[dict[str, Any]]:
        """Records at `level` ("study", "series" or "instance") matching `filters`, as C-FIND does.

        Keys are DICOM keywords (or archive fields at the instance level); the
        matching rules are in `pacs_engine.index.matching`. Patient and study keys
        are matched against the study record, series keys against the series
        record (at the study level: against any of the study's series), other
        keys against the row. Results come as study records, series records with
        their study's patient and study attributes, or rows; studies by UID,
        series by UID within a study, rows in series order (by UID when
        SOPInstanceUID is given).
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
        conditions = compile_query(filters)
        by_level: dict[str, list[Condition]] = {name: [] for name in LEVELS}
        for condition in conditions.values():
            by_level[level_of(condition.keyword)].append(condition)
        if by_level["instance"] and level != "instance":
            names = ", ".join(c.keyword for c in by_level["instance"])
            raise ValueError(f"{names}: instance attributes; query at level='instance'")
        with self._transaction(write=False) as (txn, dbs):
            return _Query(txn, dbs, self._codec, level, conditions, by_level).run()


class IndexWriter(_View):
    """The changes of one write transaction: rows piece by piece, then the records they touch."""

    def __init__(self, txn: Any, dbs: dict[bytes, Any], codec: _RowCodec) -> None:
        super().__init__(txn, dbs, codec)
        self.count_delta: dict[str, int] = defaultdict(int)
        self.series_row: dict[str, dict[str, Any]] = {}
        self.studies: dict[str, dict[str, Any] | None] = {}

    def add(
        self,
        rows: Iterable[dict[str, Any]],
        remove: Iterable[str] = (),
        journal: Mapping[bytes, bytes | None] | None = None,
    ) -> None:
        """Write rows, removals and journal entries (None deletes) as `Index.commit` does."""
        batch: dict[bytes, tuple[dict[str, Any], bytes]] = {}
        for row in rows:
            for keyword in UID_KEYWORDS:
                _uid(row, keyword)
            batch[row["SOPInstanceUID"].encode()] = (row, self.codec.dump(row))
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
            txn.put(_series_row_key(row), b"", db=series_rows_db)
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

    def _unlink(self, old: dict[str, Any]) -> None:
        self.txn.delete(_series_row_key(old), db=self.dbs[b"series_rows"])
        self.count_delta[old["SeriesInstanceUID"]] -= 1
        self.studies.setdefault(old["StudyInstanceUID"], None)

    def _update_series(self, series: str) -> None:
        txn, series_db, links = self.txn, self.dbs[b"series"], self.dbs[b"study_series"]
        key = series.encode()
        record = self.record(b"series", series) or {}
        count = record.get("NumberOfSeriesRelatedInstances", 0) + self.count_delta[series]
        old_study = record.get("StudyInstanceUID")
        row = self.series_row.get(series)
        if row is not None:
            record.update({k: row[k] for k in SERIES_KEYWORDS if k in row})
            record["StudyInstanceUID"] = row["StudyInstanceUID"]
        if old_study is not None and (count <= 0 or old_study != record["StudyInstanceUID"]):
            txn.delete(old_study.encode() + _SEP + key, db=links)
            self.studies.setdefault(old_study, None)
        if count <= 0:
            txn.delete(key, db=series_db)
            return
        record["NumberOfSeriesRelatedInstances"] = count
        txn.put(key, _dump(record), db=series_db)
        txn.put(record["StudyInstanceUID"].encode() + _SEP + key, b"", db=links)

    def _update_study(self, study: str, row: dict[str, Any] | None) -> None:
        txn, studies_db = self.txn, self.dbs[b"studies"]
        key = study.encode()
        old = self.record(b"studies", study)
        series = self.study_series(study)
        record: dict[str, Any] | None = None
        if series:
            record = dict(old or {})
            if row is not None:
                record.update({k: row[k] for k in STUDY_KEYWORDS if k in row})
            modalities = {s.get("Modality") for s in series}
            record["ModalitiesInStudy"] = sorted(m for m in modalities if isinstance(m, str) and m)
            record["NumberOfStudyRelatedSeries"] = len(series)
            record["NumberOfStudyRelatedInstances"] = sum(
                s["NumberOfSeriesRelatedInstances"] for s in series
            )
            txn.put(key, _dump(record), db=studies_db)
        elif old is not None:
            txn.delete(key, db=studies_db)
        old_keys, new_keys = _index_keys(old), _index_keys(record)
        for keyword, index_key in old_keys - new_keys:
            txn.delete(index_key, db=self.dbs[b"by_" + keyword.encode()])
        for keyword, index_key in new_keys - old_keys:
            txn.put(index_key, b"", db=self.dbs[b"by_" + keyword.encode()])


class _Query(_View):
    """One query in one read transaction: candidates from an index, then matching level by level."""

    def __init__(
        self,
        txn: Any,
        dbs: dict[bytes, Any],
        codec: _RowCodec,
        level: str,
        conditions: dict[str, Condition],
        by_level: dict[str, list[Condition]],
    ) -> None:
        super().__init__(txn, dbs, codec)
        self.level = level
        self.conditions = conditions
        self.by_level = by_level

    def run(self) -> list[dict[str, Any]]:
        """The matching records."""
        sop = self.conditions.get("SOPInstanceUID")
        if self.level == "instance" and sop is not None and sop.exact is not None:
            return self._from_rows(sorted(sop.exact))
        series = self.conditions.get("SeriesInstanceUID")
        if series is not None and series.exact is not None:
            return self._from_series(sorted(series.exact))
        out: list[dict[str, Any]] = []
        for study_uid in self._candidate_studies():
            study = self.record(b"studies", study_uid)
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
            prefix = _index_value(condition.keyword, value) + _SEP
            found.update(_last_part(k) for k in self.keys_with_prefix(db, prefix))
        return sorted(found)

    def _scan_ordered(self, condition: Condition) -> list[str]:
        db = b"by_" + condition.keyword.encode()
        if condition.prefix is not None:
            prefix = _index_value(condition.keyword, condition.prefix)
            return sorted({_last_part(k) for k in self.keys_with_prefix(db, prefix)})
        lo, hi = condition.bounds  # type: ignore[misc]
        cursor = self.txn.cursor(self.dbs[db])
        found = set()
        if cursor.set_range(lo.encode()):
            high = hi.encode()
            for key in cursor.iternext(values=False):
                if high and key.rpartition(_SEP)[0][: len(high)] > high:
                    break
                found.add(_last_part(key))
        return sorted(found)

    def _below_study(self, study: dict[str, Any]) -> list[dict[str, Any]]:
        """What a matching study contributes at the query's level."""
        if self.level == "study" and not self.by_level["series"]:
            return [study]
        series = self.study_series(study["StudyInstanceUID"])
        matching = [s for s in series if matches(s, self.by_level["series"])]
        if self.level == "study":
            return [study] if matching else []
        return self._at_level(study, matching)

    def _at_level(
        self, study: dict[str, Any], series: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Series records (with the study's attributes) or the matching rows of `series`."""
        if self.level == "series":
            head = {k: study[k] for k in STUDY_KEYWORDS if k in study}
            return [{**head, **s} for s in series]
        rows = []
        for record in series:
            rows.extend(
                row
                for row in self.series_rows(record["SeriesInstanceUID"])
                if matches(row, self.by_level["instance"])
            )
        return rows

    def _from_series(self, series_uids: list[str]) -> list[dict[str, Any]]:
        by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for uid in series_uids:
            record = self.record(b"series", uid)
            if record is not None and matches(record, self.by_level["series"]):
                by_study[record["StudyInstanceUID"]].append(record)
        out = []
        for study_uid in sorted(by_study):
            study = self.record(b"studies", study_uid)
            if study is None or not matches(study, self.by_level["study"]):
                continue
            if self.level == "study":
                out.append(study)
            else:
                out.extend(self._at_level(study, by_study[study_uid]))
        return out

    def _from_rows(self, sop_uids: list[str]) -> list[dict[str, Any]]:
        out = []
        for uid in sop_uids:
            row = self.row(uid)
            if row is None or not matches(row, self.by_level["instance"]):
                continue
            series = self.record(b"series", row["SeriesInstanceUID"])
            if series is None or not matches(series, self.by_level["series"]):
                continue
            study = self.record(b"studies", series["StudyInstanceUID"])
            if study is not None and matches(study, self.by_level["study"]):
                out.append(row)
        return out
