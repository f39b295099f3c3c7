"""One LMDB environment per index per process, shared by its Index objects, and fork safety.

LMDB forbids two environments on the same files in one process (its fcntl locks
belong to the process; py-lmdb refuses the second open), and forbids using an
environment after fork(). So every Index on a path shares one `Store`, and
before any fork the environments are closed, once no transaction is in flight;
parent and child each reopen theirs on next use. Closing in the parent, rather
than in the child, matters: a child closing an inherited environment would abort
the parent's read transactions and free their slots in the shared reader table.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lmdb

from pacs_engine.index.integrity import DATA_FILE, DamagedIndexError, check_file
from pacs_engine.storage import file_mode

#: What LMDB raises on a file it finds damaged.
DAMAGE_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError)

#: Address space reserved for the map. LMDB grows the file as it fills, never
#: beyond this; 1 TiB of address space costs nothing on 64-bit and every process
#: maps the same size, so readers never meet MDB_MAP_RESIZED.
MAP_SIZE = 1 << 40
#: Read transactions in flight across all processes (DataLoader workers x threads).
MAX_READERS = 1024
DB_NAMES: tuple[bytes, ...] = (
    b"meta",
    b"rows",
    b"series_rows",
    b"series",
    b"studies",
    b"study_series",
    b"by_PatientID",
    b"by_AccessionNumber",
    b"by_PatientName",
    b"by_StudyDate",
    # The ingest journal (pacs_engine.ingest.journal): committed with the rows it describes.
    b"journal",
)


def _damaged(path: str, error: Exception) -> DamagedIndexError:
    """LMDB's complaint about the file as the package's error, naming the index once."""
    text = str(error).removeprefix(f"{path}: ")
    return DamagedIndexError(f"{os.path.join(path, DATA_FILE)}: {text}")


class Store:
    """The LMDB environment of one index directory in this process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.writable = False
        self.users = 0
        self.env: lmdb.Environment | None = None
        self.dbs: dict[bytes, Any] = {}

    def ensure_open(self) -> None:
        """Open the environment and its databases if they are not open in this process."""
        if self.env is not None:
            return
        check_file(self.path)  # a damaged file would crash LMDB (integrity.py)
        try:
            env = lmdb.open(
                self.path,
                map_size=MAP_SIZE,
                readonly=not self.writable,
                create=False,
                max_dbs=len(DB_NAMES),
                max_readers=MAX_READERS,
                # Lookups are random: readahead would fetch pages nobody asked for.
                readahead=False,
                mode=file_mode(self.path),  # a lock.mdb made here: the archive's permissions
            )
        except DAMAGE_ERRORS as error:
            raise _damaged(self.path, error) from None
        try:
            self.dbs = {name: env.open_db(name, create=False) for name in DB_NAMES}
        except DAMAGE_ERRORS as error:
            env.close()
            raise _damaged(self.path, error) from None
        except BaseException:
            env.close()
            raise
        self.env = env

    def close(self) -> None:
        """Close the environment (reopened on next use)."""
        if self.env is not None:
            self.env.close()
        self.env = None
        self.dbs = {}


class _ProcessState:
    """This process's stores, and the count of transactions in flight on them."""

    def __init__(self, stores: dict[str, Store] | None = None) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.exclusive = False
        self.stores: dict[str, Store] = stores if stores is not None else {}

    def begin_exclusive(self) -> None:
        """Wait until no transaction is in flight and hold new ones back."""
        with self.cond:
            self.cond.wait_for(lambda: not self.exclusive)
            self.exclusive = True
            self.cond.wait_for(lambda: self.active == 0)

    def end_exclusive(self) -> None:
        """Let transactions start again."""
        with self.cond:
            self.exclusive = False
            self.cond.notify_all()


_STATE = _ProcessState()


def acquire(path: str, writable: bool) -> Store:
    """The store of the index at `path` (opened lazily), registered as used once more."""
    key = os.path.realpath(path)
    state = _STATE
    with state.cond:
        store = state.stores.setdefault(key, Store(key))
        store.users += 1
        upgrade = writable and not store.writable
    if upgrade:
        # The environment was opened read-only for an earlier reader in this process.
        state.begin_exclusive()
        try:
            store.close()
            store.writable = True
        finally:
            state.end_exclusive()
    return store


def release(store: Store) -> None:
    """Drop one use of the store; the last one closes its environment."""
    state = _STATE
    # Exclusive, so that no new Store on the same files opens before this one is closed.
    state.begin_exclusive()
    try:
        with state.cond:
            store.users -= 1
            last = store.users == 0
            if last:
                state.stores.pop(store.path, None)
        if last:
            store.close()
    finally:
        state.end_exclusive()


@contextmanager
def transaction(store: Store, write: bool = False) -> Iterator[tuple[Any, dict[bytes, Any]]]:
    """A transaction on the store and its database handles; commits unless an exception escapes."""
    state = _STATE
    with state.cond:
        state.cond.wait_for(lambda: not state.exclusive)
        state.active += 1
        try:
            store.ensure_open()
        except BaseException:
            state.active -= 1
            state.cond.notify_all()
            raise
        env, dbs = store.env, store.dbs
    try:
        assert env is not None
        if write:
            # Frees the reader slots of processes that died mid-read (SIGKILLed
            # workers): their snapshots would keep the writer from reusing pages.
            env.reader_check()
        with env.begin(write=write) as txn:
            yield txn, dbs
    except DAMAGE_ERRORS as error:
        raise _damaged(store.path, error) from None
    finally:
        with state.cond:
            state.active -= 1
            state.cond.notify_all()


def _before_fork() -> None:
    _STATE.begin_exclusive()
    for store in _STATE.stores.values():
        store.close()


def _after_fork_in_parent() -> None:
    _STATE.end_exclusive()


def _after_fork_in_child() -> None:
    # A fresh condition: another thread of the parent may have held the old one's lock.
    global _STATE
    _STATE = _ProcessState(_STATE.stores)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
