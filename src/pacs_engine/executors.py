"""Where tasks run (the ingest's, verify's): this process, a local process pool, or Dask.

Each satisfies `pacs_engine.workers.Executor`: `submit(fn, *args)` returns a future
with `.result()`, `wait_any(futures)` returns (done, not done) once one has finished,
`restart()` gives working workers again after one died, and `close()` ends them.
"""

from __future__ import annotations

import ast
import concurrent.futures
import concurrent.futures.process
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import tokenize
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext
from types import FrameType
from typing import Any

from pacs_engine.errors import PacsEngineError
from pacs_engine.forkserver import FORKSERVER_PRELOAD, start_forkserver, stop_forkserver
from pacs_engine.workers import Executor, alive, worker_died

__all__ = [
    "FORKSERVER_PRELOAD",
    "DaskExecutor",
    "ExecutorError",
    "InlineExecutor",
    "LocalExecutor",
    "keep_freed_memory",
    "make_executor",
    "refuse_unguarded_main",
    "start_forkserver",
    "worker_died",
]


class InlineExecutor:
    """Runs each task at once in this process (workers=0): for tests and tiny inputs."""

    workers = 0

    def submit(self, fn: Callable, *args: Any) -> concurrent.futures.Future:
        """Run fn(*args) now; the returned future holds its result or exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:  # delivered through the future, as a pool would
            future.set_exception(error)
        return future

    def wait_any(self, futures: set) -> tuple[set, set]:
        """Every inline future is done."""
        return set(futures), set()

    def restart(self) -> None:
        """Nothing to restart."""

    def close(self) -> None:
        """Nothing to release."""


class LocalExecutor:
    """A pool of up to `workers` processes on this machine (started with forkserver): the
    first forks as soon as the pool is made, the others as tasks need them (`_Pool`)."""

    def __init__(self, workers: int | None = None) -> None:
        refuse_unguarded_main()
        self.workers = workers or os.cpu_count() or 1
        start_forkserver()  # if not started yet: its workers are born deaf to Ctrl-C
        # forkserver: workers start from a clean process, not a fork of one that holds
        # LMDB environments, threads and a progress bar.
        self.pool = self._new_pool()

    def _new_pool(self) -> _Pool:
        context = multiprocessing.get_context("forkserver")
        pool = _Pool(
            self.workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
        )
        threading.Thread(target=pool.fork_first, daemon=True).start()
        return pool

    def submit(self, fn: Callable, *args: Any) -> concurrent.futures.Future:
        """Queue fn(*args) on the pool; on a pool a dead worker broke, a failed future."""
        try:
            with _interrupt_deferred():
                return self.pool.submit(fn, *args)
        except concurrent.futures.process.BrokenProcessPool as error:
            # As if the task had been in flight: the caller retries it after `restart`.
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_exception(error)
            return future

    def restart(self) -> None:
        """A new pool, for after a worker died (which breaks the whole pool)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        start_forkserver()  # if it died too: as it first began (preload, QUIET_BLAS, no SIGINT)
        self.pool = self._new_pool()

    def wait_any(self, futures: set) -> tuple[set, set]:
        """Block until at least one future is done."""
        done, pending = concurrent.futures.wait(
            futures, return_when=concurrent.futures.FIRST_COMPLETED
        )
        return done, pending

    def close(self) -> None:
        """Stop the workers (tasks not started are cancelled); at once when no task was sent
        (`_Pool.close`)."""
        self.pool.close()


class _Pool(concurrent.futures.ProcessPoolExecutor):
    """The local pool's processes: the first forked from a thread as soon as the pool is made
    (`fork_first`), each other one when a task is sent while every worker has one.

    A one-file ingest forks one worker, not one per core: the base class forks one at each
    task sent while its count of idle workers is zero, and it counts a worker idle only
    after the caller could see its last result, so a task sent on that result forked
    another. Here the tasks in flight decide (`_adjust_process_count`).
    """

    def __init__(
        self,
        workers: int,
        mp_context: BaseContext,
        initializer: Callable[[int], None],
        initargs: tuple[int],
    ) -> None:
        super().__init__(workers, mp_context, initializer, initargs)
        self._size = workers  # the base class's own count is not typed (typeshed)
        self._first_forked = False  # by `fork_first`, done (or failed)
        self._closing = False  # by `close`, before it may stop the forkserver

    def fork_first(self) -> None:
        """Fork the first worker now, as the forkserver is ready, not at the caller's first
        task.

        Forking waits until the forkserver has imported what the workers need (its preload,
        ~0.2 s of CPU): from a thread, the caller goes on meanwhile (an ingest imports, opens
        the archive, walks its sources), and its first task finds a worker started.
        """
        # Closed or broken meanwhile, or no process could be spawned (OSError): the caller's
        # own submit says so; from this thread it would print "Exception in thread". EOFError:
        # the forkserver stopped by `close`.
        with contextlib.suppress(RuntimeError, OSError, EOFError):
            # Past a `close` that stopped the forkserver, multiprocessing would start another
            # from this thread (not deaf to Ctrl-C) and `close` would wait for its preload.
            # This narrows that window, not closes it: `close` may come just after the test.
            if not self._closing:
                self.submit(_first_task)
        self._first_forked = True

    def close(self) -> None:
        """Stop the workers (tasks not started are cancelled).

        Closed while the first one is still forking, with no task sent (an ingest whose
        archive cannot be opened), it stops the forkserver first (`stop_forkserver`), which
        has forked no worker yet: the fork holds the pool's lock until the forkserver's
        preload is done, which the caller need not wait for. Not while another child process
        of this process is alive (another pool's worker, a user's forkserver process, a
        DataLoader's): one the forkserver started has a pipe it holds for its sentinel, which
        stopping it closes, and a child of another start method cannot be told apart here.
        """
        self._closing = True
        # No worker yet: none forked by `fork_first`, nor by a task of the caller's (whose
        # submit returns once the worker it forks has started).
        early = not self._first_forked and not self._processes
        if early and not multiprocessing.active_children():
            stop_forkserver()  # the fork then ends at once (or, forked just now, starts)
        self.shutdown(wait=True, cancel_futures=True)

    def _adjust_process_count(self) -> None:
        """Fork a worker when the caller's tasks in flight outnumber the workers (one for the
        first task), up to the pool's size; called by `submit` as it queues a task."""
        if len(self._processes) >= self._size:  # full: no copy of the tasks per submit
            return
        # Copied first, by one C call the GIL keeps whole: the manager thread pops finished
        # items from the dict without the pool's lock, which would end a walk over it
        # ("dictionary changed size during iteration").
        items = list(self._pending_work_items.values())
        tasks = sum(item.fn is not _first_task for item in items)
        if len(self._processes) < max(tasks, 1):
            # The base class forks one unless its count of idle workers is above zero:
            # emptied, that count (which this pool does not otherwise read) lets it fork.
            while self._idle_worker_semaphore.acquire(blocking=False):
                pass
            super()._adjust_process_count()


def _first_task() -> None:
    """What forks a pool's first worker (`_Pool.fork_first`): nothing."""


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends, then hand it to the handler it was for.

    A submit may start a worker: the pool sends it its queues, then records it. A Ctrl-C
    in between left a worker the pool's shutdown does not wait for, which then found
    its queue's semaphore gone (the interrupted process had exited) and printed a
    FileNotFoundError traceback. Held back, the worker is recorded and waited for.
    """
    if threading.current_thread() is not threading.main_thread():  # signals: main thread only
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):  # Python's own handler raises KeyboardInterrupt
        previous(signal.SIGINT, None)
    elif caught and previous == signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGINT)


def refuse_unguarded_main() -> None:
    """Raise RuntimeError, saying what to do, when called from a script's unguarded top level.

    Each forkserver worker first re-runs the main script (as multiprocessing does to
    find its functions), so a script that starts workers outside `if __name__ ==
    "__main__":` would have every worker start the same ingest again, and the pool
    would break (BrokenProcessPool).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:  # python -c, a REPL: workers re-run nothing
        return
    if not os.path.isfile(path):  # `python - < script`: a worker cannot re-run it and dies
        raise RuntimeError(
            f"{path}: worker processes cannot start from a script that is not a file (read "
            "from standard input); save it as a file, or pass workers=0 to work in this process."
        )
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and not (
        frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)
    ):
        frame = frame.f_back
    if frame is None:  # not under the script's top level (another thread, say)
        return
    line = frame.f_lineno
    try:
        with tokenize.open(path) as source:
            statements = ast.parse(source.read()).body
    except (OSError, SyntaxError, ValueError):  # no readable source: nothing to tell
        return
    statement = next((s for s in statements if s.lineno <= line <= (s.end_lineno or 0)), None)
    if statement is None or _is_main_guard(statement):
        return
    raise RuntimeError(
        f"{path}, line {line}: worker processes started from the top level of the script; "
        "each worker re-runs the script when it starts. Put the call under "
        '`if __name__ == "__main__":` (or pass workers=0 to work in this process).'
    )


def _is_main_guard(statement: ast.stmt) -> bool:
    """True for `if __name__ == "__main__":` (either way round)."""
    if not isinstance(statement, ast.If) or not isinstance(statement.test, ast.Compare):
        return False
    test = statement.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, *test.comparators]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    texts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and texts == ["__main__"]


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: An ingest worker allocates and frees a few MB per instance (the file, its frames, the
#: codec's output): with glibc's defaults much of it is mapped and unmapped, or trimmed off
#: the heap, again and again, each time paying a page fault per 4 KiB of fresh memory.
#: Blocks under MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of free heap
#: is kept: on the 400-file synth set, half the worker's page faults and 3-4 % of its CPU.
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 64 << 20


def keep_freed_memory() -> bool:
    """Make this process's allocator reuse the memory it frees (`MMAP_THRESHOLD`,
    `TRIM_THRESHOLD`); False where it cannot (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _start_worker(parent: int) -> None:
    """Set up a pool worker: deaf to Ctrl-C, gone when `parent` dies, even by kill -9, and
    with an allocator that keeps the memory it frees (`keep_freed_memory`).

    Ctrl-C reaches every process of the terminal's group: the parent stops the run
    and then its workers (each finishes its task), so a worker must not die of it
    mid-write nor print a KeyboardInterrupt traceback (here for a forkserver that
    another caller started: ours starts its workers with SIGINT ignored). A pool
    worker holds both ends of its task queue, so it never sees the parent go and
    would wait for work forever (holding the parent's stdout open). The allocator is set
    here, in the workers of our own pools only: the ingesting process (a server, a
    notebook) and a Dask cluster's workers, shared with others, keep theirs as they are.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()


def _watch(parent: int) -> None:
    while alive(parent):
        time.sleep(0.5)
    os._exit(1)


class ExecutorError(PacsEngineError, RuntimeError):
    """An executor that cannot be made here (dask.distributed not installed)."""


class DaskExecutor:
    """Tasks on a dask.distributed cluster; its workers must see the archive path."""

    def __init__(self, scheduler: str | Any) -> None:
        try:
            from distributed import Client
        except ImportError as error:
            raise ExecutorError(
                "the Dask executor needs dask.distributed: pip install 'pacs_engine[dask]'"
            ) from error
        self._own = isinstance(scheduler, str)
        self.client: Client = Client(scheduler) if isinstance(scheduler, str) else scheduler
        self.workers = max(1, len(self.client.scheduler_info()["workers"]))

    def submit(self, fn: Callable, *args: Any) -> Any:
        """Queue fn(*args) on the cluster (never cached: every task writes files)."""
        return self.client.submit(fn, *args, pure=False)

    def wait_any(self, futures: set) -> tuple[set, set]:
        """Block until at least one future is done."""
        from distributed import wait

        done, pending = wait(list(futures), return_when="FIRST_COMPLETED")
        return set(done), set(pending)

    def restart(self) -> None:
        """The cluster replaces dead workers itself."""

    def close(self) -> None:
        """Close the client if this executor made it."""
        if self._own:
            self.client.close()


def make_executor(workers: int | None, scheduler: str | None = None) -> Executor:
    """The executor for `workers` (0: this process; None: one per core) or a Dask scheduler."""
    if scheduler is not None:
        return DaskExecutor(scheduler)
    if workers == 0:
        return InlineExecutor()
    return LocalExecutor(workers)
