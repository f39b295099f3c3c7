"""Where a process's time goes: CPU and wall seconds per stage of its work, for the reports.

Stages nest (`stage("hash")` inside `stage("prepare")`) and each second is charged
to the innermost stage open at the time, so the stages of a task never sum to more
than its wall time. One clock per process (tasks of a process run one at a time);
a task takes what its stages added with `take()`. CPU time is the process's
(`time.process_time`), so a codec's or zarr's own threads are counted too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

#: Stage name -> [CPU seconds, wall seconds].
Times = dict[str, list[float]]


class StageClock:
    """Exclusive CPU and wall time per stage name, since the last `take()`."""

    def __init__(self) -> None:
        self.times: Times = {}
        self._open: list[str] = []  # the stages open, innermost last
        self._mark = (0.0, 0.0)  # (wall, CPU) when the innermost stage was last charged
        self._stages: dict[str, _Stage] = {}  # one context manager per name, reused

    def _charge(self, now: tuple[float, float]) -> None:
        """Charge the innermost open stage with the time since the mark."""
        if self._open:
            spent = self.times.setdefault(self._open[-1], [0.0, 0.0])
            spent[0] += now[1] - self._mark[1]
            spent[1] += now[0] - self._mark[0]
        self._mark = now

    def stage(self, name: str) -> AbstractContextManager[None]:
        """Charge the time inside the block (less its inner stages') to `name`."""
        entered = self._stages.get(name)
        if entered is None:
            entered = self._stages[name] = _Stage(self, name)
        return entered

    def enter(self, name: str) -> None:
        """Open stage `name` (inside the stages open)."""
        self._charge((time.perf_counter(), time.process_time()))
        self._open.append(name)

    def leave(self) -> None:
        """Close the innermost stage."""
        self._charge((time.perf_counter(), time.process_time()))
        self._open.pop()

    def charge_open(self) -> None:
        """Charge the stage open with its time until now, so that `times` counts it so far
        (a checkpoint written from inside a stage); it goes on counting until it closes."""
        self._charge((time.perf_counter(), time.process_time()))

    def take(self) -> Times:
        """The times charged since the last call, rounded to microseconds; starts again."""
        taken = {name: [round(c, 6), round(w, 6)] for name, (c, w) in self.times.items()}
        self.times = {}
        return taken


class _Stage:
    """A stage of a clock as a context manager (a class: cheaper than a generator's)."""

    __slots__ = ("clock", "name")

    def __init__(self, clock: StageClock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        self.clock.enter(self.name)

    def __exit__(self, *exc: object) -> None:
        self.clock.leave()


CLOCK = StageClock()


def stage(name: str) -> AbstractContextManager[None]:
    """This process's clock's `stage(name)`."""
    return CLOCK.stage(name)


@contextmanager
def task() -> Iterator[Times]:
    """Time one task: the dict yielded is filled, at the end, with its stages' times.

    What no stage inside took is charged to "other", so the stages sum to the
    task's wall time. Time charged before the task (outside any task) is dropped.
    """
    CLOCK.take()
    times: Times = {}
    with CLOCK.stage("other"):
        yield times
    times.update(CLOCK.take())


def process_started() -> float:
    """When this process started (epoch seconds, to 10 ms; Linux), else now."""
    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])  # field 22: starttime
            since_boot = float(uptime.read().split()[0])
        return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def add_times(total: Times, more: Times) -> None:
    """Add the stage times `more` into `total`."""
    for name, (cpu, wall) in more.items():
        spent = total.setdefault(name, [0.0, 0.0])
        spent[0] += cpu
        spent[1] += wall
