"""Work in worker processes: the executor seam, crash isolation, and per-process caches.

At the bottom of the layers (it imports nothing of the package), so that both the
ingest (ingest/run.py) and `verify` (archive/verify.py, a lower layer) use the same
crash isolation, and every layer keeps its open handles the same way. The
executors themselves are in executors.py (the bottom layer too: verify makes one).
"""

from __future__ import annotations

import concurrent.futures.process
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class Future(Protocol):
    """What an executor's `submit` returns: a concurrent or a dask.distributed future."""

    def result(self) -> Any:
        """The task's return value, or raise its exception."""
        ...


class Executor(Protocol):
    """Where tasks run: this process, a local process pool, or a Dask cluster."""

    workers: int  # tasks it runs at once (0: inline, in this process)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue fn(*args); a task whose worker died fails with an error `worker_died` knows."""
        ...

    def wait_any(self, futures: set[Any]) -> tuple[set[Any], set[Any]]:
        """(done, not done) once at least one of `futures` is done."""
        ...

    def restart(self) -> None:
        """Working workers again after one died."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


def worker_died(error: BaseException) -> bool:
    """True when a task failed because its worker process died (a crash, the OOM killer)."""
    return isinstance(error, concurrent.futures.process.BrokenProcessPool) or (
        type(error).__name__ == "KilledWorker"  # dask.distributed's, without importing it
    )


def window(executor: Executor) -> int:
    """Tasks to keep in flight: enough to keep every worker busy while results are taken."""
    return max(1, 2 * executor.workers)


def alive(pid: int) -> bool:
    """True while the process `pid` runs (a killed one not yet reaped by its parent is not)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, PermissionError):  # no /proc, or another user's: it runs
        return True
    except ProcessLookupError:
        return False


Task = TypeVar("Task", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Finished(Generic[Task]):
    """A task that ended: its result, or its error (`killer`: it ran alone and its worker died)."""

    task: Task
    result: Any = None
    error: BaseException | None = None
    killer: bool = False


class CrashIsolation(Generic[Task]):
    """Tasks in flight on an executor, where a worker that dies loses no item but its killer.

    A dead worker fails every task in flight (a process pool breaks whole), so each
    of them is `split` into tasks of one item, queued; the queue runs one task at a
    time on fresh workers once what is in flight has ended, so a task whose worker
    dies again holds the item that kills workers: it is handed back as `killer`.
    Every ended task goes to `handle`; `running()` False stops the retries.
    """

    def __init__(
        self,
        executor: Executor,
        start: Callable[[Task], Future],
        split: Callable[[Task], Iterable[Task]],
        handle: Callable[[Finished[Task]], None],
        running: Callable[[], bool] = lambda: True,
    ) -> None:
        self.executor = executor
        self.start, self.split, self.handle, self.running = start, split, handle, running
        self.in_flight: dict[Any, Task] = {}
        self.retries: deque[Task] = deque()  # one item each, to run alone
        self._alone: set[Task] = set()

    def make_room(self) -> None:
        """Wait until the window has room for a task (running the queued retries, if any)."""
        while len(self.in_flight) >= window(self.executor):
            self.collect()
        if self.retries and self.running():
            self.isolate()

    def submit(self, task: Task) -> None:
        """Send a task now (call `make_room` first)."""
        self.in_flight[self.start(task)] = task

    def collect(self) -> None:
        """Wait until a task in flight ends; hand on each that did (a dead worker's: split)."""
        done, _ = self.executor.wait_any(set(self.in_flight))
        for future in done:
            task = self.in_flight.pop(future)
            try:
                result = future.result()
            except Exception as error:
                if not worker_died(error):
                    self.handle(Finished(task, error=error))
                elif task in self._alone:
                    self._alone.discard(task)
                    self.executor.restart()  # only a death breaks the pool
                    self.handle(Finished(task, error=error, killer=True))
                elif self.running():
                    self.retries.extend(self.split(task))
                else:
                    self.handle(Finished(task, error=error))
                continue
            self._alone.discard(task)
            self.handle(Finished(task, result=result))

    def isolate(self) -> None:
        """Let what is in flight end, then run the queued retries one at a time."""
        while self.in_flight:
            self.collect()
        self.executor.restart()
        while self.retries and self.running():
            task = self.retries.popleft()
            self._alone.add(task)
            self.in_flight[self.start(task)] = task
            while self.in_flight:
                self.collect()

    def finish(self) -> None:
        """Run everything sent, and every retry, to its end."""
        while self.in_flight or (self.retries and self.running()):
            if self.in_flight:
                self.collect()
            if self.retries and self.running():
                self.isolate()


Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class PerProcess(Generic[Key, Value]):
    """Objects this process opened (archives, encoders), by key; never a forked parent's.

    A fork copies the objects but not the right to use them (file offsets, LMDB
    environments), so a child finds the cache empty: the parent's objects are
    dropped, not closed. Evicted objects are not closed either: a thread may still
    read through one, and dropping the last reference closes it.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit  # objects kept at most, the least recently used dropped first
        self._objects: OrderedDict[Key, Value] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._making: dict[Key, threading.Lock] = {}  # per key being made: its maker holds it

    def get(
        self,
        key: Key,
        make: Callable[[], Value],
        current: Callable[[Value], bool] = lambda value: True,
    ) -> Value:
        """The object kept for `key`, or make()'s when there is none or it is not `current`.

        make() runs outside the cache's lock, so threads getting other keys (readahead
        threads opening shards) do not wait for it; a thread getting the same key waits
        for that one make() and takes its object.
        """
        self._forget_parent()
        with self._lock:
            value = self._kept(key, current)
            if value is not None:
                return value
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                value = self._kept(key, current)  # made by the thread this one waited for
            if value is not None:
                return value
            try:
                made = make()
            except BaseException:
                with self._lock:
                    self._done_making(key, making)
                raise
            with self._lock:  # kept and no longer being made at once: no second make()
                self._objects[key] = made
                self._objects.move_to_end(key)
                while self.limit is not None and len(self._objects) > self.limit:
                    self._objects.popitem(last=False)
                self._done_making(key, making)
            return made

    def _done_making(self, key: Key, making: threading.Lock) -> None:
        """Forget the lock of a key whose make() ended (lock held)."""
        if self._making.get(key) is making:
            del self._making[key]

    def _kept(self, key: Key, current: Callable[[Value], bool]) -> Value | None:
        """The object kept for `key` if it is `current`, made the most recently used (lock held)."""
        value = self._objects.get(key)
        if value is None or not current(value):
            return None
        self._objects.move_to_end(key)
        return value

    def __len__(self) -> int:
        """Objects kept for this process."""
        self._forget_parent()
        with self._lock:
            return len(self._objects)

    def pop(self, key: Key) -> Value | None:
        """Take the object kept for `key` out of the cache (None: there is none)."""
        self._forget_parent()
        with self._lock:
            return self._objects.pop(key, None)

    def _forget_parent(self) -> None:
        """In a forked child, start empty, with a lock of its own (the parent's may be held)."""
        if self._pid != os.getpid():
            self._objects = OrderedDict()
            self._lock = threading.Lock()
            self._making = {}
            self._pid = os.getpid()
