"""Read-ahead: decode the next items in background threads while the consumer works.

`ReadAhead(dataset, indices, depth=8, threads=2)` yields `dataset[i]` for each index,
in order, with up to `depth` items requested ahead on a pool of `threads` threads
(the archive's codecs release the GIL, so the threads decode in parallel).
`ReadAhead(iterable, depth=8)` (no indices) pulls the iterable, e.g.
`FrameDataset.iter_chunks()`, in one background thread into a queue of `depth` items.

Order is preserved; an exception raised by an item is re-raised in the consumer at
that item's position (the items before it are yielded first) and ends the
iteration. Stopping early (`break`, `close()`, leaving a `with` block, or dropping
the iterator) cancels what was not started and joins the threads: items already
being read finish, then no thread is left running.

`read_ahead(source, indices=None, prefetch=0, threads=1)` is the same as a plain
loop when `prefetch` is 0, so a training loop can take `prefetch` as an option.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["ReadAhead", "read_ahead"]

THREAD_PREFIX = "pacs-readahead"
_names = itertools.count()


def _put(
    out: queue.Queue[tuple[str, Any]], stop: threading.Event, message: tuple[str, Any]
) -> bool:
    """Queue a message unless the consumer has stopped; False once it has."""
    while not stop.is_set():
        try:
            out.put(message, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(
    iterator: Iterator[Any], out: queue.Queue[tuple[str, Any]], stop: threading.Event
) -> None:
    """Pull the iterator into the queue (a thread; holds no reference to the ReadAhead,
    so dropping the ReadAhead closes it)."""
    try:
        while not stop.is_set():
            try:
                item = next(iterator)
            except StopIteration:
                _put(out, stop, ("done", None))
                return
            except BaseException as error:  # re-raised in the consumer
                _put(out, stop, ("error", error))
                return
            if not _put(out, stop, ("item", item)):
                return
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a generator is closed in the thread that ran it
            with contextlib.suppress(Exception):
                close()


class ReadAhead(Iterator[Any]):
    """Iterate `source[i]` for `i` in `indices` (or `source` itself), `depth` items ahead.

    `source`: a map-style dataset (anything with `__getitem__`) or a one-argument
    callable, with `indices`; or any iterable without. `depth` >= 1 items are
    requested ahead of the consumer; `threads` >= 1 read them (map-style only: an
    iterable is pulled by one thread, as iterators are not thread-safe).
    """

    def __init__(
        self,
        source: Any,
        indices: Iterable[Any] | None = None,
        *,
        depth: int = 8,
        threads: int = 2,
    ) -> None:
        if depth < 1 or threads < 1:
            raise ValueError(f"depth and threads must be at least 1, not {depth}, {threads}")
        self.depth = int(depth)
        self.threads = int(threads) if indices is not None else 1
        self._closed = False
        self._name = f"{THREAD_PREFIX}-{next(_names)}"
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        if indices is not None:
            fetch: Callable[[Any], Any] = (
                source.__getitem__ if hasattr(source, "__getitem__") else source
            )
            if not callable(fetch):
                raise TypeError("source must be map-style (__getitem__) or callable")
            self._fetch = fetch
            self._indices = iter(indices)
            self._pending: deque[Future[Any]] = deque()
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)
            self._fill()
        else:
            self._iterator = iter(source)
            self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(self.depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=_produce,
                args=(self._iterator, self._queue, self._stop),
                name=self._name,
                daemon=True,
            )
            self._thread.start()

    # --- map-style: a window of futures ------------------------------------------------

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self.depth:
            try:
                index = next(self._indices)
            except StopIteration:
                return
            self._pending.append(self._pool.submit(self._fetch, index))

    # --- the consumer ------------------------------------------------------------------

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        if self._pool is not None:
            if not self._pending:
                self.close()
                raise StopIteration
            future = self._pending.popleft()
            try:
                item = future.result()
            except BaseException:
                self.close()
                raise
            self._fill()
            return item
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop reading ahead: cancel what has not started, wait for the threads to end."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            for future in self._pending:
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
        elif self._thread is not None:
            self._stop.set()
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            if self._thread is not threading.current_thread():
                self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def read_ahead(
    source: Any,
    indices: Iterable[Any] | None = None,
    *,
    prefetch: int = 0,
    threads: int = 1,
) -> Iterator[Any]:
    """`source[i]` for `i` in `indices` (or `source` iterated), `prefetch` items ahead.

    `prefetch=0` reads in the calling thread, as a plain loop would; otherwise a
    `ReadAhead` with depth `prefetch` and `threads` threads (close it, or use it in
    a `with` block, when stopping early: dropping it also stops its threads).
    """
    if prefetch < 0:
        raise ValueError(f"prefetch must not be negative, not {prefetch}")
    if prefetch:
        return ReadAhead(source, indices, depth=prefetch, threads=threads)
    if indices is None:
        return iter(source)
    fetch = source.__getitem__ if hasattr(source, "__getitem__") else source
    return (fetch(i) for i in indices)
