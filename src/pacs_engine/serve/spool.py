"""The receive spool: where a received instance is made durable before it is acknowledged,
and the one thread that ingests what it holds.

```
ARCHIVE/spool/incoming/   received instances, each written and fsynced, then renamed in
ARCHIVE/spool/batch/      the instances of the ingest run in hand (moved from incoming/)
```

A network handler calls `Spool.put` and answers Success only once it returns: the
file (file meta + the dataset's bytes as received) is fsynced and renamed into
`incoming/`, and the rename fsynced (`storage.write_atomic`). Its temporary is a
dot-file that nothing reads; a kill leaves it behind unacknowledged, and the next
start deletes it. STOW-RS, which acknowledges a whole request, writes each instance
under such a name (`Spool.stage`, fsynced) and renames them all in once the request
has been read whole (`Spool.admit`), so a request cut short leaves none of its instances.

`Drain` is the spool's one consumer (the archive has one writer): every `interval`
seconds, or as soon as `batch_size` instances wait, it moves up to `batch_size` of
them into `batch/` and runs the ordinary ingest over that folder (`run_ingest`), so
received instances take the same scan → plan → encode → commit path as files, with
the same duplicate, conflict and quarantine rules. When the run has finished, every
input of `batch/` has an outcome whose bytes the archive keeps (archived, duplicate,
version, conflict or quarantined), and the files are deleted. `batch/` only changes
between runs, so after a kill the next start resumes the same run over the same
files (the journal skips the inputs that have an outcome), and a kill between the
run's end and the deletions makes the next run see the files left as byte-identical
duplicates. The run records no identities of its files for catch-up runs
(`catch_up=False`): those never come to a spool file again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from pacs_engine.archive import Archive, IngestReport
from pacs_engine.ingest import IngestStopped, run_ingest
from pacs_engine.storage import (
    fsync_dir,
    make_dirs_durable,
    remove_stale_temporaries,
    write_atomic,
)
from pacs_engine.workers import Executor

LOG = logging.getLogger(__name__)

#: The suffix of a complete spool file; anything else in the spool is not an instance.
SUFFIX = ".dcm"


class Spool:
    """The durable spool of one archive: received instances waiting to be ingested."""

    def __init__(self, archive_root: str | os.PathLike) -> None:
        self.folder = Path(archive_root) / "spool"
        self.incoming = self.folder / "incoming"
        self.batch = self.folder / "batch"
        # Durable: instances received into them are acknowledged.
        make_dirs_durable(self.incoming)
        make_dirs_durable(self.batch)
        # Temporaries of a killed server: never acknowledged, so never anyone's data.
        remove_stale_temporaries(self.incoming)
        self.changed = threading.Condition()
        self._waiting = len(self.waiting_files())

    def put(self, data: bytes) -> Path:
        """Write one received instance durably (fsynced, renamed, rename fsynced); its path.

        Safe from many threads at once: each file has its own name, in arrival order.
        """
        path = self.incoming / f"{time.time_ns():020d}-{uuid.uuid4().hex}{SUFFIX}"
        write_atomic(path, data)
        with self.changed:
            self._waiting += 1
            self.changed.notify_all()
        return path

    def stage(self, data: bytes | bytearray) -> Path:
        """Write one received instance durably under a hidden name (nothing ingests it) until
        `admit`; its path. STOW-RS stages every part of a request before admitting any: a
        kill meanwhile leaves temporaries that the next start deletes, never a part of a request.
        """
        path = self.incoming / f".{time.time_ns():020d}-{uuid.uuid4().hex}{SUFFIX}.tmp"
        write_atomic(path, data, dirs=set())  # the folder is fsynced once, by `admit`
        return path

    def admit(self, staged: Sequence[Path]) -> None:
        """Rename staged instances into the spool and make the renames durable (one fsync)."""
        for path in staged:
            os.rename(path, path.with_name(path.name[1:].removesuffix(".tmp")))
        if staged:
            fsync_dir(self.incoming)
        with self.changed:
            self._waiting += len(staged)
            self.changed.notify_all()

    @staticmethod
    def discard(staged: Sequence[Path]) -> None:
        """Delete staged instances that will not be admitted."""
        for path in staged:
            path.unlink(missing_ok=True)

    @property
    def waiting(self) -> int:
        """How many received instances wait in `incoming/` (a count kept as they come and go,
        for deciding when to drain; the folder is what counts)."""
        with self.changed:
            return self._waiting

    def waiting_files(self) -> list[Path]:
        """The complete files in `incoming/`, oldest first."""
        return sorted(p for p in self.incoming.iterdir() if _complete(p))

    def batch_files(self) -> list[Path]:
        """The files of the batch in hand."""
        return sorted(p for p in self.batch.iterdir() if _complete(p))

    def take(self, limit: int) -> int:
        """Move up to `limit` waiting files into `batch/` (durably); how many moved."""
        moved = self.waiting_files()[:limit]
        for path in moved:
            os.rename(path, self.batch / path.name)
        if moved:
            fsync_dir(self.batch)  # the new names first: a file is never in neither folder
            fsync_dir(self.incoming)
        with self.changed:
            self._waiting = max(0, self._waiting - len(moved))
        return len(moved)

    def clear_batch(self) -> int:
        """Delete the batch's files, once its run has given each an outcome; how many."""
        files = self.batch_files()
        for path in files:
            path.unlink()
        if files:
            fsync_dir(self.batch)
        return len(files)


def _complete(path: Path) -> bool:
    return path.name.endswith(SUFFIX) and not path.name.startswith(".")


class Drain(threading.Thread):
    """The thread that ingests the spool, batch by batch, until `stop`."""

    def __init__(
        self,
        archive: Archive,
        spool: Spool,
        executor: Executor,
        *,
        interval: float = 2.0,
        batch_size: int = 256,
        on_report: Callable[[IngestReport], None] | None = None,
    ) -> None:
        super().__init__(name="pacs-spool-drain", daemon=True)
        self.archive = archive
        self.spool = spool
        self.executor = executor
        self.interval = interval
        self.batch_size = batch_size
        self.on_report = on_report or (lambda report: None)
        self.failure: str | None = None  # why the last run stopped, until one succeeds
        self._stopping = False

    def run(self) -> None:
        """Drain what the spool holds at start, then whenever the interval or a batch is due."""
        while not self._stopping:
            try:
                self.drain()
            except Exception as error:  # the spool's disk: keep serving, try again later
                self.failure = f"{type(error).__name__}: {error}"
                LOG.error("spool drain: %s", self.failure)
            with self.spool.changed:
                self.spool.changed.wait_for(
                    lambda: self._stopping or self.spool.waiting >= self.batch_size,
                    timeout=self.interval,
                )

    def stop(self, timeout: float | None = None) -> None:
        """Let the batch in hand finish, start no other, and wait for the thread."""
        with self.spool.changed:
            self._stopping = True
            self.spool.changed.notify_all()
        if self.is_alive():
            self.join(timeout)

    def drain(self) -> None:
        """Ingest batches until the spool is empty, the drain stops, or a run fails."""
        while not self._stopping:
            if not self.spool.batch_files() and not self.spool.take(self.batch_size):
                return
            try:
                # No catch-up records: a spool file's name never comes again.
                report = run_ingest(
                    self.archive, [self.spool.batch], executor=self.executor, catch_up=False
                )
            except IngestStopped as error:  # e.g. disk full: the files stay, tried again later
                self.failure = str(error)
                LOG.error("spool drain: %s", error)
                return
            self.failure = None
            self.spool.clear_batch()
            self.on_report(report)
