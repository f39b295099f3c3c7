"""libFuzzer harness (atheris) for `pacs_engine.scan(bytes)`.

The contract under test: for ANY bytes, `scan(data)` returns a Header or raises
a ScanError whose offset is an int in 0..len(data) and whose reason is not
empty. Every other exception is a crash, and so is a signal (segfault), a
timeout (`-timeout=`) or memory over `-rss_limit_mb=`.

    python fuzz/fuzz_scan.py CORPUS_DIR [SEED_DIR ...] [libFuzzer flags]

With PACS_FUZZ_KEEP_GOING=1 a non-ScanError exception does not stop the run:
each distinct one (by exception type and raising line) is printed once and its
input saved as `crash-<type>-<sha1>` under PACS_FUZZ_ARTIFACTS (default: the
current directory), so a long run is not cut short by one known bug. Without
it, the first such exception stops the fuzzer as a crash, as usual.

On Linux each input is scanned from memory that ends at an unreadable page
(the same code path as bytes), so a read past the end of the data faults at
once even without AddressSanitizer; PACS_FUZZ_GUARD=0 scans plain bytes.

PACS_FUZZ_PATH=1 also writes each input to a file (in PACS_FUZZ_TMP, default
/dev/shm or the temp folder) and checks `scan(path)` on it the same way, which
exercises the scanner's file windows (slower). libFuzzer exits without
cleaning up, so that one file per run stays behind: delete it after.

PACS_FUZZ_SKIP=TEXT skips inputs that contain TEXT (e.g. a transfer syntax
UID): a way to fuzz on past a known hang, which no exception handler can catch.

PACS_FUZZ_BUILD=DIR imports pacs_engine from DIR first: a copy whose native
scanner was built for coverage (and AddressSanitizer) by build_instrumented.sh.
See fuzz/README.md.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import sys
import tempfile
import traceback
import warnings

import atheris

# The guarded buffer is the one the tests use, so both check the same contract.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from scan_contract import GuardedBuffer

if os.environ.get("PACS_FUZZ_BUILD"):
    sys.path.insert(0, os.environ["PACS_FUZZ_BUILD"])

# pydicom warns (and logs) about every odd value it is handed; that is not a failure.
warnings.simplefilter("ignore")
logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)

KEEP_GOING = os.environ.get("PACS_FUZZ_KEEP_GOING", "") not in ("", "0")
BY_PATH = os.environ.get("PACS_FUZZ_PATH", "") not in ("", "0")
GUARD = os.environ.get("PACS_FUZZ_GUARD", "1") != "0" and sys.platform.startswith("linux")
_TMP = os.environ.get("PACS_FUZZ_TMP") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
CASE_FILE = os.path.join(_TMP or tempfile.gettempdir(), f"pacs-fuzz-{os.getpid()}.dcm")
ARTIFACTS = os.environ.get("PACS_FUZZ_ARTIFACTS", ".")
SKIP = os.environ.get("PACS_FUZZ_SKIP", "").encode() or None
_seen: set[tuple[str, str]] = set()
Header = ScanError = scan = None  # imported by _import_scanner


_guard: GuardedBuffer | None = None


def guarded(data: bytes) -> memoryview:
    global _guard
    if _guard is None or _guard.size < len(data):
        _guard = GuardedBuffer(max(len(data), 1 << 20))
    return _guard.view(data)


class ContractViolation(AssertionError):
    """scan() returned or raised something the contract does not allow."""


def check(data: bytes) -> None:
    """Scan data (and, with PACS_FUZZ_PATH, a file of it); raise what breaks the contract."""
    if GUARD:
        view = guarded(data)
        try:
            check_one(view, data, None)
        finally:
            view.release()
    else:
        check_one(data, data, None)
    if BY_PATH:
        with open(CASE_FILE, "wb") as out:
            out.write(data)
        check_one(CASE_FILE, data, CASE_FILE)


def check_one(source: bytes | memoryview | str, data: bytes, path: str | None) -> None:
    try:
        header = scan(source)
    except ScanError as error:
        if type(error.offset) is not int or not 0 <= error.offset <= len(data):
            raise ContractViolation(
                f"ScanError offset {error.offset!r} outside 0..{len(data)}: {error}"
            ) from error
        if not isinstance(error.reason, str) or not error.reason:
            raise ContractViolation(f"ScanError without a reason: {error!r}") from error
        if error.path != path:
            raise ContractViolation(f"ScanError names {error.path!r}, not {path!r}") from error
        return
    if not isinstance(header, Header):
        raise ContractViolation(f"scan returned {type(header).__name__}, not a Header")


def _signature(error: BaseException) -> tuple[str, str]:
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return type(error).__name__, where


def test_one_input(data: bytes) -> None:
    if scan is None:
        _import_scanner()
    if SKIP is not None and SKIP in data:
        return
    if not KEEP_GOING:
        check(data)
        return
    try:
        check(data)
    except Exception as error:  # a crash, recorded once per kind
        signature = _signature(error)
        if signature in _seen:
            return
        _seen.add(signature)
        name = f"crash-{signature[0]}-{hashlib.sha1(data).hexdigest()}"
        with open(os.path.join(ARTIFACTS, name), "wb") as out:
            out.write(data)
        print(
            f"\n=== CRASH {signature[0]} at {signature[1]} ({len(data)} bytes) -> {name}",
            file=sys.stderr,
        )
        traceback.print_exception(error, file=sys.stderr)
        sys.stderr.flush()


def _import_scanner() -> None:
    """Import pacs_engine, its Python code instrumented for coverage.

    Done at the first input, once atheris.Fuzz has loaded libFuzzer: a scanner
    built for coverage (PACS_FUZZ_BUILD) needs libFuzzer's symbols to load.
    """
    global Header, ScanError, scan
    core = sys.modules.get("atheris.core_with_libfuzzer")
    if os.environ.get("PACS_FUZZ_BUILD") and core is not None:
        # atheris loads libFuzzer privately; the extension's coverage hooks need its symbols.
        ctypes.CDLL(core.__file__, mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
    with atheris.instrument_imports(include=["pacs_engine"]):
        import pacs_engine
        from pacs_engine import Header, ScanError, scan
    print(f"pacs_engine from {os.path.dirname(pacs_engine.__file__)}", file=sys.stderr)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
