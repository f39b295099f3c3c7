"""The executor seam's helpers: crash isolation and the per-process cache; the archive marker."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pacs_engine.archive import Archive, ArchiveError
from pacs_engine.archive.format import MARKER, is_pacs_archive, read_marker
from pacs_engine.executors import InlineExecutor
from pacs_engine.ingest import inputs
from pacs_engine.workers import CrashIsolation, Finished, PerProcess, alive, window

KILLER = 13  # the item whose task "kills its worker"


class DyingPool:
    """An executor whose worker dies on a task holding KILLER: every task in flight fails then.

    Tasks are started when submitted and end when waited for, so several are in
    flight at once, as on a pool; a death fails all of them, as it breaks a pool.
    """

    workers = 2

    def __init__(self) -> None:
        self.pending: dict[concurrent.futures.Future, tuple[int, ...]] = {}
        self.restarts = 0
        self.ran: list[tuple[int, ...]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.pending[future] = args[0]
        return future

    def wait_any(self, futures: set[Any]) -> tuple[set[Any], set[Any]]:
        tasks = [self.pending.pop(f) for f in futures]
        died = any(KILLER in task for task in tasks)
        for future, task in zip(futures, tasks, strict=True):
            self.ran.append(task)
            if died:
                future.set_exception(concurrent.futures.process.BrokenProcessPool("died"))
            else:
                future.set_result(sum(task))
        return set(futures), set()

    def restart(self) -> None:
        self.restarts += 1

    def close(self) -> None:
        pass


def run_isolated(batches: list[tuple[int, ...]]) -> tuple[list[Finished], DyingPool]:
    pool = DyingPool()
    ended: list[Finished] = []
    tasks: CrashIsolation[tuple[int, ...]] = CrashIsolation(
        pool,
        start=lambda task: pool.submit(sum, task),
        split=lambda task: [(item,) for item in task],
        handle=ended.append,
    )
    for batch in batches:
        tasks.make_room()
        tasks.submit(batch)
    tasks.finish()
    return ended, pool


def test_a_dead_worker_loses_only_the_item_that_killed_it() -> None:
    batches = [tuple(range(start, start + 5)) for start in range(0, 30, 5)]
    ended, pool = run_isolated(batches)
    killers = [f.task for f in ended if f.killer]
    assert killers == [(KILLER,)]
    results = {f.task: f.result for f in ended if not f.killer}
    assert all(f.error is None for f in ended if not f.killer)
    # Every other item comes back once, in its batch or retried alone.
    items = [item for task in results for item in task]
    assert sorted(items) == [i for i in range(30) if i != KILLER]
    assert all(results[task] == sum(task) for task in results)
    # The batches that died with the killer were retried one item at a time.
    assert (KILLER - 1,) in results and (10, 11, 12, 13, 14) not in results
    assert pool.restarts >= 2  # before the retries, and after the killer died alone


def test_a_task_that_fails_without_a_death_is_handed_on_not_retried() -> None:
    executor = InlineExecutor()
    ended: list[Finished] = []

    def fail(task: tuple[int, ...]) -> None:
        raise ValueError(f"bad {task}")

    tasks: CrashIsolation[tuple[int, ...]] = CrashIsolation(
        executor,
        start=lambda task: executor.submit(fail, task),
        split=lambda task: pytest.fail("split without a death"),
        handle=ended.append,
    )
    tasks.make_room()
    tasks.submit((1, 2))
    tasks.finish()
    assert [(f.task, type(f.error), f.killer) for f in ended] == [((1, 2), ValueError, False)]


def _child_sees(cache: PerProcess[str, object], queue: Any) -> None:
    queue.put((len(cache), cache.get("a", lambda: "child's") == "child's"))


def test_a_forked_child_never_reuses_its_parents_objects() -> None:
    cache: PerProcess[str, object] = PerProcess(limit=2)
    first = cache.get("a", lambda: object())
    assert cache.get("a", lambda: pytest.fail("made again")) is first
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_sees, args=(cache, queue))
    child.start()
    seen = queue.get(timeout=60)
    child.join(60)
    assert seen == (0, True)
    assert cache.get("a", lambda: pytest.fail("made again")) is first  # the parent keeps its own


def test_the_cache_is_bounded_and_remakes_what_is_not_current() -> None:
    cache: PerProcess[str, int] = PerProcess(limit=2)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.get(key, lambda value=value: value)
    assert len(cache) == 2
    assert cache.get("a", lambda: 10) == 10  # evicted first: made again
    assert cache.get("a", lambda: 11, current=lambda value: value != 10) == 11
    assert cache.pop("a") == 11 and cache.pop("a") is None


def test_a_slow_make_blocks_no_other_key_and_is_made_once_per_key() -> None:
    """make() runs outside the cache's lock: a get of another key completes while one
    key's make() is under way (a readahead thread opening a shard while another opens
    its own), and a concurrent get of the same key takes the object of that one make()."""
    cache: PerProcess[str, object] = PerProcess(limit=4)
    entered, other_done = threading.Event(), threading.Event()
    makes: list[str] = []

    def slow() -> object:
        makes.append("a")
        entered.set()
        assert other_done.wait(30), "a get of another key waited for this make()"
        return "slow"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.get, "a", slow)
        assert entered.wait(30)
        second = pool.submit(cache.get, "a", slow)  # the same key: waits for the first make()
        assert cache.get("b", lambda: "fast") == "fast"
        other_done.set()
        assert first.result(30) == second.result(30) == "slow"
    assert makes == ["a"]
    assert cache.get("a", lambda: pytest.fail("made again")) == "slow"
    with pytest.raises(ZeroDivisionError):  # a failed make() keeps nothing, blocks nothing
        cache.get("c", lambda: 1 / 0)
    assert cache.get("c", lambda: "made") == "made"


def test_the_marker_decision_is_one_function(tmp_path: Path) -> None:
    assert inputs.is_pacs_archive is is_pacs_archive
    archive = Archive.create(tmp_path / "a")
    archive.close()
    assert is_pacs_archive(tmp_path / "a")
    assert read_marker(tmp_path / "a")["codec"] == "auto"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MARKER).write_text(json.dumps({"format": "another tool"}))
    assert not is_pacs_archive(foreign)
    with pytest.raises(ArchiveError, match="unsupported archive format"):
        read_marker(foreign)
    with pytest.raises(ArchiveError, match=f"no {MARKER}"):
        read_marker(tmp_path)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / MARKER).write_bytes(b"{not json")
    assert is_pacs_archive(damaged)  # opening it says what is wrong
    with pytest.raises(ArchiveError, match="cannot be read"):
        read_marker(damaged)
    (tmp_path / "fifo-folder").mkdir()
    os.mkfifo(tmp_path / "fifo-folder" / MARKER)
    assert not is_pacs_archive(tmp_path / "fifo-folder")  # never opened: it would block


def test_alive_tells_a_running_process_from_an_ended_one() -> None:
    """Ended is ended, reaped or not (a zombie is not alive): the ingest's pool workers
    watch their parent with it, and Archive.create clears the builds of ended processes."""
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
        assert not alive(child.pid)
    finally:
        child.wait()
    assert not alive(child.pid)  # reaped


def test_the_window_keeps_every_worker_busy_and_one_task_inline() -> None:
    """Tasks in flight: twice the workers, one at least (an inline executor has none)."""
    assert window(InlineExecutor()) == 1
    assert window(DyingPool()) == 2 * DyingPool.workers == 4


def test_an_ingest_given_an_executor_and_a_scheduler_refuses_both(tmp_path: Path) -> None:
    """Which to use is not guessed: ValueError, before the scheduler is reached."""
    from pacs_engine.ingest.archive import Archive as IngestArchive

    with (
        IngestArchive.create(tmp_path / "archive") as archive,
        pytest.raises(ValueError, match="executor or a scheduler, not both"),
    ):
        archive.ingest([], executor=InlineExecutor(), scheduler="tcp://127.0.0.1:1")
