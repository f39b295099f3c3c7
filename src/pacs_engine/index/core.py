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

The modules of the package, by concern: `rows` (the TypedDicts of a row and its
parts), `codec` (rows as stored), `keys` (key encoding), `records` (series and
study records kept up to date by a write), `query` (the planner), `matching`
(C-FIND matching); this one holds the `Index`.

A commit is one LMDB write transaction: pages are copied on write, written and
fsync'ed, and only then does the meta page point at the new root. A reader's
transaction sees the last root published when it began, so it sees a commit
whole or not at all, even when the writer dies mid-commit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

import lmdb

from pacs_engine.index import _lmdb
from pacs_engine.index.codec import ZDICT, RowCodec, dump_json, load_json
from pacs_engine.index.integrity import DATA_FILE, DamagedIndexError, check_trees, read_metas
from pacs_engine.index.keys import NO_NUMBER, SEP, UID_KEYWORDS, uid_problem
from pacs_engine.index.query import Found, run_query
from pacs_engine.index.records import IndexWriter, View, series_order
from pacs_engine.index.rows import Row, SeriesRecord, StudyRecord
from pacs_engine.storage import file_mode, make_dirs

# Imported from here by other modules: the index's UID rules and its writer.
__all__ = ["UID_KEYWORDS", "Index", "IndexWriter", "uid_problem"]

FORMAT = {"format": "pacs_engine.index", "version": 1}
_ITER_CHUNK = 1024


def _meta_txnids(path: Path) -> set[int]:
    """The transactions the index file's meta pages name now."""
    return {meta.txnid for meta in read_metas(path / DATA_FILE)}


class Index:
    """The archive's index of instance rows, with series and study records derived from them.

    A row is a JSON-serialisable dict keyed by DICOM keywords plus archive fields;
    SOPInstanceUID, SeriesInstanceUID and StudyInstanceUID are mandatory. Series
    and study records keep the series attributes and the patient/study attributes
    of the rows (the last committed row wins where rows disagree; where the rows a commit
    touches were only removed or moved away, a row left) and counts.
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
            if found is None or zdict is None or load_json(found, not_index) != FORMAT:
                raise ValueError(not_index)
        except BaseException:
            self.close()
            raise
        self._codec = RowCodec(zdict, self.path / DATA_FILE)

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
            txn.put(b"format", dump_json(FORMAT), db=meta)
            txn.put(b"zdict", ZDICT, db=meta)
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
        rows: Iterable[Row],
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
                        load_json(value, f"{self._codec.path}: {db.decode()} record {key!r}")
                count = 0
                for key, value in txn.cursor(dbs[b"rows"]):
                    self._codec.load(value, key)
                    count += 1
                return count

    # --- reading --------------------------------------------------------------

    @contextmanager
    def _view(self) -> Iterator[View]:
        with self._transaction(write=False) as (txn, dbs):
            yield View(txn, dbs, self._codec)

    def __len__(self) -> int:
        with self._transaction(write=False) as (txn, dbs):
            return txn.stat(dbs[b"rows"])["entries"]

    def __contains__(self, sop_instance_uid: object) -> bool:
        if not isinstance(sop_instance_uid, str):
            return False
        with self._transaction(write=False) as (txn, dbs):
            return txn.get(sop_instance_uid.encode(), db=dbs[b"rows"]) is not None

    def get(self, sop_instance_uid: str) -> Row | None:
        """The row of the instance, or None (an empty UID, which LMDB cannot take as a key,
        names none)."""
        if not sop_instance_uid:
            return None
        with self._transaction(write=False) as (txn, dbs):
            data = txn.get(sop_instance_uid.encode(), db=dbs[b"rows"])
        return None if data is None else self._codec.load(data, sop_instance_uid.encode())

    def series(self, series_instance_uid: str) -> list[Row]:
        """The rows of the series, by InstanceNumber then SOPInstanceUID."""
        with self._view() as view:
            return view.series_rows(series_instance_uid)

    def iter_series(self, series_instance_uid: str) -> Iterator[Row]:
        """The rows of a series in instance order, read a chunk per transaction (as `__iter__`).

        Holds one chunk at a time, however large the series: for passes over every row.
        """
        prefix = series_instance_uid.encode() + SEP
        start = len(prefix) + len(NO_NUMBER)  # the SOP UID follows the order bytes
        after = prefix
        while True:
            with self._transaction(write=False) as (txn, dbs):
                keys: list[bytes] = []
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

    def study(self, study_instance_uid: str) -> list[Row]:
        """The rows of the study, series by series (SeriesNumber, then UID), each in order."""
        with self._view() as view:
            records = sorted(view.study_series(study_instance_uid), key=series_order)
            return [row for r in records for row in view.series_rows(r["SeriesInstanceUID"])]

    def series_record(self, series_instance_uid: str) -> SeriesRecord | None:
        """The series record (series attributes, StudyInstanceUID, instance count), or None."""
        with self._view() as view:
            return view.series_record(series_instance_uid)

    def study_record(self, study_instance_uid: str) -> StudyRecord | None:
        """The study record (patient and study attributes, modalities, counts), or None."""
        with self._view() as view:
            return view.study_record(study_instance_uid)

    def all_series(self) -> list[SeriesRecord]:
        """Every series record, by SeriesInstanceUID."""
        with self._transaction(write=False) as (txn, dbs):
            where = f"{self._codec.path}: a series record"
            return [
                cast(SeriesRecord, load_json(v, where))
                for v in txn.cursor(dbs[b"series"]).iternext(keys=False)
            ]

    def __iter__(self) -> Iterator[Row]:
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

    def query(
        self,
        level: str = "instance",
        strict: bool = False,
        *,
        offset: int = 0,
        limit: int | None = None,
        **filters: Any,
    ) -> list[Found]:
        """Records at `level` ("patient", "study", "series" or "instance") matching `filters`.

        Keys are DICOM keywords (or archive fields at the instance level); the
        matching rules are in `pacs_engine.index.matching`. Patient and study keys
        are matched against the study record, series keys against the series
        record (at the study level: against any of the study's series), other
        keys against the row. Results come as study records, series records with
        their study's patient and study attributes, or rows; studies by UID,
        series by UID within a study, rows in series order (by UID when
        SOPInstanceUID is given); patients (studies grouped by PatientID and
        IssuerOfPatientID, with their counts) in the order of their first study.
        Records of one level have the same keys, absent values None
        (`pacs_engine.index.query.RECORD_KEYS`). With `strict`, unknown keywords,
        keywords of another level and malformed dates raise QueryError (`check_query`).
        `offset` and `limit` page the matches in that order; below the patient level
        reading stops once offset + limit matches are found.
        """
        with self._transaction(write=False) as (txn, dbs):
            return run_query(txn, dbs, self._codec, level, filters, strict, offset, limit)
