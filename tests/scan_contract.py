"""The scan() contract, checked three ways; shared by test_scan_fuzz.py and its child runs.

The contract: ANY bytes given to `scan(bytes)`, or to `scan(path)` for a file
holding them, give a Header or a ScanError that names the file (for a path),
a byte offset in 0..len(data) and a non-empty reason; never another
exception, a crash, a hang or a read past the buffer.

`Checker` runs scan on the bytes, on a copy that ends exactly at an unreadable
page (a read past the end faults at once), and on a file holding them.
`run_isolated` does the same in a child process, so that a case that hangs or
crashes the interpreter fails one test instead of killing the test run; the
child is this module run as a script.
"""

from __future__ import annotations

import ctypes
import faulthandler
import mmap
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pacs_engine import Header, ScanError, scan

#: A single scan slower than this is reported as a hang.
HANG_SECONDS = 10.0


class GuardedBuffer:
    """A buffer followed by a PROT_NONE page: a read one byte past the data faults."""

    def __init__(self, capacity: int):
        page = mmap.PAGESIZE
        self.size = max(page, -(-capacity // page) * page)
        self._map = mmap.mmap(-1, self.size + page)
        anchor = ctypes.c_char.from_buffer(self._map)
        address = ctypes.addressof(anchor)
        del anchor  # release the export so the map can be closed later
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(address + self.size, page, 0) != 0:  # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect failed")

    def view(self, data: bytes) -> memoryview:
        """data, placed so that its last byte is the last readable one."""
        start = self.size - len(data)
        self._map[start : self.size] = data
        return memoryview(self._map)[start : self.size]


@dataclass
class Failure:
    """The first case of one kind of contract breach."""

    what: str
    how: str
    size: int
    detail: str
    saved: Path


def failure_kind(error: BaseException) -> str:
    """Exception type and the line that raised it: one bug, however many inputs hit it."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(error).__module__}.{type(error).__name__} raised at {where}"


class Checker:
    """Runs scan on bytes, on guarded memory and on a file; records contract breaches.

    A test makes many cases and calls report() at the end, which fails with
    every distinct breach (the first input of each is saved in tmp_path).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / "case.dcm"
        self._guard: GuardedBuffer | None = None
        self._guard_ok = sys.platform.startswith("linux")
        self.scans = 0
        self.broken = 0
        self.failures: dict[str, Failure] = {}

    def guarded(self, data: bytes) -> memoryview | None:
        if not self._guard_ok:
            return None
        if self._guard is None or self._guard.size < len(data):
            try:
                self._guard = GuardedBuffer(max(len(data), 1 << 20))
            except (OSError, AttributeError, ValueError):
                self._guard_ok = False
                return None
        return self._guard.view(data)

    def __call__(self, data: bytes, what: str) -> Header | ScanError | None:
        """The outcome of scan(data) (None if it broke the contract); checks all three ways."""
        data = bytes(data)
        outcome = self._one(lambda: scan(data), data, None, what, "bytes")
        view = self.guarded(data)
        if view is not None:
            self._one(lambda: scan(view), data, None, what, "guarded memory")
            view.release()
        # A new file each time: truncating and rewriting one makes ext4 flush it on close.
        self.file.unlink(missing_ok=True)
        self.file.write_bytes(data)
        self._one(lambda: scan(self.file), data, str(self.file), what, "path")
        return outcome

    def _one(
        self, run: Callable[[], Header], data: bytes, path: str | None, what: str, how: str
    ) -> Header | ScanError | None:
        self.scans += 1
        start = time.perf_counter()
        try:
            result: Header | ScanError = run()
        except ScanError as error:
            result = error
        except Exception as error:
            detail = f"{type(error).__name__}: {str(error)[:300]}"
            self._breach(failure_kind(error), what, how, data, detail)
            return None
        elapsed = time.perf_counter() - start
        if elapsed > HANG_SECONDS:
            self._breach("scan too slow (a hang?)", what, how, data, f"took {elapsed:.1f} s")
        if isinstance(result, ScanError):
            problem = contract_problem(result, len(data), path)
            if problem:
                self._breach(problem[0], what, how, data, problem[1])
                return None
        elif not isinstance(result, Header):
            self._breach(
                "scan returned neither Header nor ScanError", what, how, data, repr(result)[:300]
            )
            return None
        return result

    def _breach(self, kind: str, what: str, how: str, data: bytes, detail: str) -> None:
        self.broken += 1
        if kind not in self.failures:
            saved = self.folder / f"failure-{len(self.failures)}.dcm"
            saved.write_bytes(data)
            self.failures[kind] = Failure(what, how, len(data), detail, saved)

    def report(self) -> None:
        """Fail with every distinct breach seen since the last report."""
        __tracebackhide__ = True
        if not self.failures:
            return
        lines = [
            f"{self.broken} of {self.scans} scans broke the contract, "
            f"{len(self.failures)} distinct way(s):"
        ]
        for kind, f in self.failures.items():
            lines += [
                f"* {kind}",
                f"    first case: {f.what} ({f.how}, {f.size} bytes)",
                f"    {f.detail}",
                f"    input saved as {f.saved}",
            ]
        self.failures.clear()
        raise AssertionError("\n".join(lines))


def contract_problem(error: ScanError, size: int, path: str | None) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with a ScanError for `size` bytes, or None."""
    if type(error.offset) is not int:
        return "ScanError offset is not an int", f"{error.offset!r}: {error}"
    if not 0 <= error.offset <= size:
        return "ScanError offset outside 0..len(data)", f"offset {error.offset}: {error}"
    if not isinstance(error.reason, str) or not error.reason.strip():
        return "ScanError without a reason", repr(error)
    if error.path != path:
        return "ScanError names the wrong path", f"{error.path!r}, not {path!r}: {error}"
    return None


def run_isolated(folder: Path, cases: dict[str, bytes], hang_seconds: float = HANG_SECONDS) -> None:
    """Check each case in a child process; fail (AssertionError) on any breach, hang or crash."""
    __tracebackhide__ = True
    names = []
    for i, (name, data) in enumerate(cases.items()):
        file = folder / f"isolated-{i:03d}.dcm"
        file.write_bytes(data)
        names.append((file.name, name))
    args = [sys.executable, __file__, str(folder), str(hang_seconds)]
    args += [f"{file}={name}" for file, name in names]
    try:
        child = subprocess.run(
            args,
            capture_output=True,
            text=True,
            check=False,
            timeout=hang_seconds * 2 * len(names) + 60,
        )
    except subprocess.TimeoutExpired as timeout:
        raise AssertionError(f"child process did not finish: {timeout}") from None
    if child.returncode == 0 and "ALL DONE" in child.stdout:
        return
    started = [line[5:] for line in child.stdout.splitlines() if line.startswith("CASE ")]
    last = started[-1] if started else "?"
    if child.returncode < 0:
        problem = f"the child died of signal {-child.returncode} during case {last!r}"
    elif "Timeout (" in child.stderr:
        problem = f"case {last!r} ran past {hang_seconds:.0f} s (a hang)"
    else:
        problem = f"the child exited with status {child.returncode}"
    raise AssertionError(f"{problem}\n--- child stderr (tail) ---\n{child.stderr[-3000:]}")


def _child(folder: Path, hang_seconds: float, cases: list[str]) -> None:
    checker = Checker(folder)
    for case in cases:
        file, _, name = case.partition("=")
        print(f"CASE {name}", flush=True)
        faulthandler.dump_traceback_later(hang_seconds, exit=True)
        checker((folder / file).read_bytes(), name)
        faulthandler.cancel_dump_traceback_later()
    print("ALL DONE", flush=True)
    checker.report()


if __name__ == "__main__":
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    faulthandler.enable()
    _child(Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:])
