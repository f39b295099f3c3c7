"""The workers' forkserver, started with no more imports than multiprocessing's own.

`pacs-engine` starts it first thing (`start_forkserver`), so that its imports run on another
core while the command imports its own: each module imported before the start delays the
workers, and so the first encode, by its import time. The executors (executors.py, which
imports concurrent.futures and the crash isolation, about 0.02 s of CPU more) use it too.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import sys
import threading
import time
from types import TracebackType

__all__ = [
    "FORKSERVER_PRELOAD",
    "QUIET_BLAS",
    "exit_flushed",
    "quiet_blas",
    "start_forkserver",
    "stop_forkserver",
]

#: What each worker process imports once, in the forkserver, before it forks workers: the
#: ingest's tasks, which import the storage verify's tasks use too, and what encoding
#: native frames needs (the codecs, and numpy and imagecodecs, which the modules import
#: where they use them, so that the ingesting process does not before its tidy step; not
#: pydicom, which compressed inputs and rebuilds import when they need it, nor zarr); the
#: executors (each worker's initializer). Not numcodecs (~0.03 s of CPU before the first
#: fork): its Blosc compresses only kept bitstreams and general or lz4 chunks, and a
#: worker imports it at its first such chunk (`codecs.blosc`), not for the JPEG-LS frames
#: of CT and MR. Named, not imported, so that this module stays at the bottom of the layers.
FORKSERVER_PRELOAD = ["pacs_engine.ingest.tasks", "numpy", "imagecodecs", "pacs_engine.executors"]
#: Environment the workers' forkserver, and so every worker, starts with where the caller's
#: does not set it: OpenBLAS starts a thread per core as numpy is imported, which spin for
#: a while (about 0.07 s of CPU per process, taken from the cores the start-up needs), and
#: no task does linear algebra. `pacs-engine` sets it in its own process too (`quiet_blas`).
QUIET_BLAS = {"OPENBLAS_NUM_THREADS": "1"}
#: The main module a caller named to `start_forkserver`, preloaded again on each restart.
_main_module: str | None = None
#: The process that started this forkserver (in the forkserver `start_forkserver` started
#: and its workers), else None.
_caller: int | None = None
#: How long the forkserver, or a worker of it, that fails to start waits for its caller to
#: end before it says why (a pool whose worker fails to start learns it that much later).
CALLER_GRACE_S = 1.0
#: The same for a worker that finds its pool's queue semaphore gone, which its caller
#: unlinks as it shuts the pool down, and may take longer to end after (a Ctrl-C on a
#: loaded machine, waiting for its other workers): still said, this much later, when the
#: caller goes on (the semaphores removed by something else).
SEMAPHORE_GRACE_S = 10.0
#: How multiprocessing's command line for the forkserver's interpreter starts (3.11-3.13).
_FORKSERVER_COMMAND = "from multiprocessing.forkserver import main;"
#: Set in the environment while `start_forkserver` starts the forkserver (to the starting
#: process's id), taken out of it as this module is imported there: the forkserver it
#: marks is ours, and ends without its teardown (`_end_without_teardown`); a forkserver
#: a user's program started, whose preload imports pacs_engine, keeps its own exit.
_OUR_FORKSERVER = "PACS_ENGINE_FORKSERVER_OF"


def quiet_blas() -> dict[str, str]:
    """Set QUIET_BLAS in this process's environment where it is not set; what was set."""
    added = {name: value for name, value in QUIET_BLAS.items() if name not in os.environ}
    os.environ.update(added)
    return added


def start_forkserver(main_module: str | None = None) -> None:
    """Start the forkserver now, so that its imports overlap the caller's own start-up.

    Workers fork from it once a pool is made (`LocalExecutor`); started here, at the
    top of the CLI, its ~0.3 s (CPU) of imports run on another core while this
    process imports the archive and walks the sources. It starts with QUIET_BLAS.
    `main_module`, the module the caller's main module imports (the CLI's package), is
    preloaded too: each worker imports the caller's main module again as it starts. Without
    it, the one an earlier call named is kept: a forkserver that died restarts as it began.
    """
    global _main_module  # one per process, as multiprocessing's own preload
    _main_module = main_module or _main_module
    preload = [*FORKSERVER_PRELOAD, *([_main_module] if _main_module else [])]
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    added = quiet_blas()  # the forkserver inherits the environment as it is started
    os.environ[_OUR_FORKSERVER] = str(os.getpid())
    try:
        _ensure_forkserver()
    finally:
        for name in [*added, _OUR_FORKSERVER]:  # this process's own as the caller had it
            del os.environ[name]


def stop_forkserver() -> None:
    """Stop the forkserver, if one runs, leaving it for the next `start_forkserver` to start.

    For a pool closed before its first worker was forked (`executors._Pool.close`): the
    forkserver, still importing its preload, has not read that fork request yet, and would
    fork the worker once done, after the caller has gone, to fail with a traceback.
    """
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)  # private
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reaped already: multiprocessing restarts it
        # Dead, and left unreaped: multiprocessing's `ensure_running` reaps it and starts anew.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _ensure_forkserver() -> None:
    """Start the forkserver unless it runs, deaf to Ctrl-C (see below)."""
    if threading.current_thread() is not threading.main_thread():  # signals: main thread only
        multiprocessing.forkserver.ensure_running()
        return
    # Started with SIGINT ignored, the forkserver keeps it ignored (Python installs its
    # Ctrl-C handler only over the default) and so does every worker it forks, from its
    # first instruction: Ctrl-C while a worker still imports prints no traceback. Blocked
    # meanwhile, a Ctrl-C to this process waits (Linux keeps a blocked signal pending even
    # when ignored) and reaches its own handler afterwards, instead of being lost.
    # The resource tracker first: starting it unblocks SIGINT, which would drop a pending one.
    multiprocessing.resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def exit_flushed(status: int) -> None:
    """End this process with `status` at once, its output flushed, skipping the teardown.

    Returns, to let Python's own exit say so, when the output cannot be flushed (a closed
    pipe, a full disk).
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(status)


def _end_without_teardown() -> None:
    """End the forkserver without the interpreter's teardown: an exit function, run after
    those registered after it (the preload's later modules', the caller's main module's).

    The forkserver ends when its caller has gone. Its teardown of numpy, the codecs and
    LMDB took 0.1-0.2 s (under load), during which it still held the caller's stdout and
    stderr: a program that reads the output of `pacs-engine ingest` (a script, the
    benchmarks) saw its end that much after the command's own (which skips its teardown
    too, `cli._exit_at_once`). The exit functions registered before it are skipped, with
    nothing to do there: multiprocessing's joins the Process objects a process started
    (the forkserver forks its workers by hand; they end with `os._exit`) and logging's
    flushes handlers (the forkserver logs nothing).
    """
    exit_flushed(0)


def _quiet_if_caller_ends(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    """`sys.excepthook` of the forkserver and the workers it forks (a worker's failure to
    start; a started worker reports its own): Python's, unless the process that started
    the forkserver ends within CALLER_GRACE_S.

    A worker forked as its caller ends (an ingest whose archive cannot be opened, ending as
    its pool forks the first worker) finds the caller's data cut short or its queues'
    semaphores gone (the caller's exit functions unlink them just before it ends), and
    multiprocessing printed that on the caller's stderr after the caller's own one-line
    error. Nobody is left to start it for: it ends without a traceback. For a semaphore
    gone the grace is SEMAPHORE_GRACE_S: the caller unlinks them as it shuts its pool down
    and may take longer than CALLER_GRACE_S to end then (CI saw one such traceback).
    """
    grace = SEMAPHORE_GRACE_S if _semaphore_gone(kind, traceback) else CALLER_GRACE_S
    if _caller is not None and not _outlives(_caller, grace):
        return
    sys.__excepthook__(kind, value, traceback)


def _semaphore_gone(kind: type[BaseException], traceback: TracebackType | None) -> bool:
    """Whether the error is a pool queue's semaphore that no longer exists, met as the
    worker unpickles its queues (`SemLock.__setstate__`)."""
    if not issubclass(kind, FileNotFoundError) or traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    code = traceback.tb_frame.f_code
    where = os.path.join("multiprocessing", "synchronize.py")
    return code.co_name == "__setstate__" and code.co_filename.endswith(where)


def _outlives(pid: int, seconds: float) -> bool:
    """True when process `pid` still runs `seconds` from now (polled), False once it ends."""
    try:
        from pacs_engine.workers import alive  # imported already here: the preload's executors
    except Exception:  # raised out of an excepthook, it would hide the traceback it was for
        return True
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.02)
    return False


# In the forkserver `start_forkserver` started alone (its mark, taken out of the environment
# in any process that imports this module, so that none passes it on), which imports this
# module with its preload (through the executors): not in a process that imports it
# otherwise, nor in a forkserver of the caller's own.
if os.environ.pop(_OUR_FORKSERVER, None) == str(os.getppid()) and (
    sys.orig_argv[-1:] and sys.orig_argv[-1].startswith(_FORKSERVER_COMMAND)
):
    atexit.register(_end_without_teardown)
    _caller = os.getppid()
    sys.excepthook = _quiet_if_caller_ends
