"""A local worker pool whose worker dies, as on a codec or decoder crash, on one input.

Its own module, importing nothing of the tests' others: a worker process imports it by
name to run `crash_on_poison`.
"""

from __future__ import annotations

import os
from typing import Any

from pacs_engine.ingest import LocalExecutor
from pacs_engine.ingest.encode import Part

#: The exit status of a worker killed on purpose.
CRASH_STATUS = 70


def is_poisoned(args: tuple, poison: str) -> bool:
    """True for a task that holds `poison`: an ingest part of an input key ending so, or a
    list (a verify batch of SOP Instance UIDs) holding it."""
    for arg in args:
        if isinstance(arg, list) and poison in arg:
            return True
        for item in arg if isinstance(arg, tuple) else (arg,):  # an encode task's batch
            if isinstance(item, Part) and any(k.endswith(poison) for k in item.keys):
                return True
    return False


def crash_on_poison(poison: str, fn: Any, *args: Any) -> Any:
    """Run a task as the executor would, but end the process on a task holding `poison`."""
    if is_poisoned(args, poison):
        os._exit(CRASH_STATUS)
    return fn(*args)


class Crashing(LocalExecutor):
    """A local pool whose worker dies on a task holding `poison` (see `is_poisoned`)."""

    def __init__(self, workers: int, poison: str) -> None:
        super().__init__(workers)
        self.poison = poison

    def submit(self, fn: Any, *args: Any) -> Any:
        """Queue the task, wrapped to crash its worker on the poison."""
        return super().submit(crash_on_poison, self.poison, fn, *args)
