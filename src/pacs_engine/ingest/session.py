"""Keep workers of a killed run from writing into the archive after a new run starts.

`kill -9` of an ingest stops its main process, not always its workers: a pool or
Dask worker may still be encoding a part, and would write shards where the next
run is writing. So every task runs holding a shared lock on `.workers.lock` and
first checks that `.session` still names its run's session; a new session writes
its id, then takes the lock exclusively once, which waits for any task of an
old session still running. Afterwards old tasks see the new id and stop.
`retire` (tidy) does the same by deleting `.session`, which needs no free space.
"""

from __future__ import annotations

import fcntl
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacs_engine.errors import PacsEngineError
from pacs_engine.storage import adopt_permissions, write_atomic

LOCK = ".workers.lock"
SESSION = ".session"


class StaleSession(PacsEngineError, RuntimeError):
    """A task of an ingest session that another session has replaced."""


def claim(root: str | Path) -> str:
    """Start a new session: name it, then wait until no task of an older one runs."""
    session = uuid.uuid4().hex
    write_atomic(Path(root) / SESSION, session.encode())
    with open(Path(root) / LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
    return session


def retire(root: str | Path) -> None:
    """End every session without writing (a tidy on a full disk): wait for their tasks."""
    (Path(root) / SESSION).unlink(missing_ok=True)
    try:
        lock = open(Path(root) / LOCK, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return  # no task ever ran: none can be running
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)


@contextmanager
def guard(root: str | Path, session: str) -> Iterator[None]:
    """Run a task only while `session` is the archive's current session."""
    with open(Path(root) / LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            current = (Path(root) / SESSION).read_bytes().decode()
        except FileNotFoundError:
            current = None  # retired by a tidy
        if current != session:
            raise StaleSession(f"{root}: a newer ingest session has started")
        yield


def guarded(fn: Callable[..., Any], root: str, session: str, *args: Any) -> Any:
    """fn(root, *args) under `guard`: what executors run.

    Sets the worker's umask from the archive first, so that what zarr and LMDB
    create there gets the archive's permissions (storage.adopt_permissions).
    """
    adopt_permissions(root)
    with guard(root, session):
        return fn(root, *args)
