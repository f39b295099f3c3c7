"""Benchmark fixtures: the file set, page-cache control, and the end-of-session summary.

Run with `python -m pytest benchmarks/` from the repository root. The benchmark
modules are named bench_*.py; `pytest_collect_file` below collects them, so the
repository's `testpaths = ["tests"]` and its other settings stay in force.

Environment:
  PACS_ENGINE_CORPUS        the shared corpus (default ../shared/corpus from the repo root)
  PACS_ENGINE_BENCH_EVICT   auto (default) | drop_caches | fadvise: how cold-cache runs evict
  PACS_ENGINE_BENCH_REPEATS best-of-N repeats per file for the per-file ratios (default 5)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pacs_engine import ScanError, scan_many
from pacs_engine.synth import write_studies

#: The `pacs-engine` command of this interpreter's environment.
PACS_ENGINE = Path(sys.executable).parent / "pacs-engine"
#: How often the process-tree RSS of a measured command is sampled.
RSS_SAMPLE_S = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("PACS_ENGINE_CORPUS", ROOT.parent / "shared" / "corpus"))
PYDICOM_NOT_DICOM = {".py", ".txt", ".dump", ".json", ".gz", ".bz2", ".zip", ".md", ".pyc"}
NO_CORPUS = f"shared corpus not found at {CORPUS} (set PACS_ENGINE_CORPUS)"
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect bench_*.py (files named on the command line are collected by pytest itself)."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# --- the file set -----------------------------------------------------------


def corpus_files() -> list[Path]:
    """The corpus files listed in MANIFEST.tsv, without malformed/ (empty when absent)."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    paths = [line.split("\t", 1)[0] for line in manifest.read_text().splitlines()[1:]]
    return [CORPUS / p for p in paths if p.strip() and not p.startswith("malformed/")]


def pydicom_test_files() -> list[Path]:
    """The DICOM test files that ship inside the pydicom package (no download)."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in PYDICOM_NOT_DICOM)


def read_whole(paths: list[str]) -> int:
    """Read every file once, start to end (puts them in the page cache); returns bytes read."""
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    return total


@dataclass
class FileSet:
    """The files every benchmark runs over, and how many header bytes each one has."""

    label: str
    is_corpus: bool
    paths: list[str]
    header_ends: list[int]  # bytes before the pixel data value (whole file if none / deflated)
    file_bytes: int
    dropped: int  # files left out: the scanner or pydicom could not read them

    @property
    def header_bytes(self) -> int:
        return sum(self.header_ends)

    def __len__(self) -> int:
        return len(self.paths)


def _pydicom_reads(path: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return False
    return True


def build_file_set() -> FileSet:
    corpus = corpus_files()
    if corpus:
        label, candidates = f"corpus {CORPUS}", [str(p) for p in corpus]
    else:
        label, candidates = (
            f"pydicom test_files ({NO_CORPUS})",
            [str(p) for p in pydicom_test_files()],
        )
    paths, ends = [], []
    for path, header in zip(candidates, scan_many(candidates, threads=1), strict=True):
        if isinstance(header, ScanError) or not _pydicom_reads(path):
            continue
        # Deflated files: the pixel offset is in the inflated stream; the scanner reads it all.
        end = (
            header.file_size if header.deflated else min(header.before_pixels[1], header.file_size)
        )
        paths.append(path)
        ends.append(end)
    file_bytes = read_whole(paths)
    dropped = len(candidates) - len(paths)
    return FileSet(label, bool(corpus), paths, ends, file_bytes, dropped)


@pytest.fixture(scope="session")
def file_set() -> FileSet:
    fs = build_file_set()
    if not fs.paths:
        pytest.skip(f"no readable DICOM files ({fs.label})")
    return fs


@pytest.fixture
def warm(file_set: FileSet) -> FileSet:
    """The file set, every file read once just before the test (page cache warm)."""
    read_whole(file_set.paths)
    return file_set


@pytest.fixture(scope="session")
def corpus_file_set(file_set: FileSet) -> FileSet:
    """The file set, but skip when it is not the shared corpus."""
    if not file_set.is_corpus:
        pytest.skip(NO_CORPUS + "; cold-cache figures on pydicom's small test files mean little")
    return file_set


# --- page cache eviction ----------------------------------------------------


def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes (root only); False if refused."""
    os.sync()
    try:
        with DROP_CACHES.open("w") as fh:
            fh.write("3\n")
    except OSError:
        return False
    return True


def fadvise_dontneed(paths: Sequence[str | Path]) -> None:
    """Drop each file's cached pages, written back first (dirty pages are not dropped);
    metadata stays."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def resident_fraction(paths: list[str], ends: list[int]) -> float | None:
    """Fraction of the header pages that are in the page cache (mincore); None if unsupported."""
    if _LIBC is None:
        return None
    page = mmap.PAGESIZE
    resident = total = 0
    for path, end in zip(paths, ends, strict=True):
        if end <= 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _LIBC.mmap(None, end, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                pages = (end + page - 1) // page
                vec = (ctypes.c_ubyte * pages)()
                if _LIBC.mincore(addr, end, vec) != 0:
                    return None
                resident += sum(v & 1 for v in vec)
                total += pages
            finally:
                _LIBC.munmap(addr, end)
        finally:
            os.close(fd)
    return resident / total if total else None


def disk_read_bytes() -> int | None:
    """Bytes this process has caused to be fetched from storage (/proc/self/io read_bytes)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Evictor:
    """Makes the file set cold before each cold-cache round, by drop_caches or fadvise."""

    def __init__(self, fs: FileSet) -> None:
        self.fs = fs
        wanted = os.environ.get("PACS_ENGINE_BENCH_EVICT", "auto")
        if wanted not in {"auto", "drop_caches", "fadvise"}:
            raise pytest.UsageError(f"PACS_ENGINE_BENCH_EVICT={wanted!r}: auto|drop_caches|fadvise")
        self.method = "fadvise"
        self.note = ""
        if wanted != "fadvise":
            if drop_caches():
                self.method = "drop_caches"
            else:
                self.note = f"writing {DROP_CACHES} refused; fell back to fadvise(DONTNEED)"
                if wanted == "drop_caches":
                    pytest.skip(self.note)
        self.resident: list[float] = []

    def __call__(self) -> None:
        if self.method == "drop_caches":
            drop_caches()
        else:
            fadvise_dontneed(self.fs.paths)
        frac = resident_fraction(self.fs.paths, self.fs.header_ends)
        if frac is not None:
            self.resident.append(frac)


@pytest.fixture(scope="session")
def evictor(corpus_file_set: FileSet, results: Results) -> Evictor:
    ev = Evictor(corpus_file_set)
    results.evict_method = ev.method
    results.evict_note = ev.note
    results.evictor = ev
    return ev


# --- results and the summary --------------------------------------------------


@dataclass
class Results:
    """What the benchmarks measured, for the summary at the end of the session."""

    file_set: FileSet | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    evict_method: str | None = None
    evict_note: str = ""
    evictor: Evictor | None = None


_RESULTS_KEY = pytest.StashKey[Results]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS_KEY] = Results()


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest, file_set: FileSet) -> Results:
    res = request.config.stash[_RESULTS_KEY]
    res.file_set = file_set
    return res


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(tr: Any, name: str, row: dict[str, Any], fs: FileSet, against: float | None) -> None:
    seconds = row.get("median_s")
    rel = f"{seconds / against:7.2f}x" if seconds and against else "       -"
    mb = fs.header_bytes / seconds / 1e6 if seconds else None
    line = (
        f"  {name:<22} {_fmt(row.get('files_per_s'), '9,.0f')} files/s"
        f" {_fmt(seconds and seconds * 1e3, '8.1f')} ms {_fmt(mb, '7.1f')} MB/s {rel}"
    )
    if row.get("disk_mb") is not None:
        line += f"  {row['disk_mb']:5.1f} MB"
    tr.write_line(line)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    res = config.stash.get(_RESULTS_KEY, None)
    if res is None or res.file_set is None or not (res.rows or res.ratios):
        return
    tr, fs, rows, r = terminalreporter, res.file_set, res.rows, res.ratios
    tr.write_sep("=", "pacs_engine scan benchmark summary")
    tr.write_line(
        f"{fs.label}: {len(fs)} files ({fs.dropped} unreadable left out), "
        f"{fs.file_bytes / 1e6:.1f} MB, {fs.header_bytes / 1e6:.1f} MB before pixel data"
    )
    tr.write_line("(median round; MB/s = header bytes / time; x = time / that section's floor)")
    floor = rows.get("warm floor", {}).get("median_s")
    warm = {k.removeprefix("warm "): v for k, v in rows.items() if k.startswith("warm")}
    if warm:
        tr.write_line("warm page cache:")
        for name, row in warm.items():
            _row(tr, name, row, fs, floor)
        scan1 = warm.get("scan_many threads=1", {}).get("median_s")
        pyd = warm.get("pydicom dcmread", {}).get("median_s")
        if scan1 and pyd:
            tr.write_line(f"  whole set: pydicom / scan_many(threads=1) = {pyd / scan1:.1f}x")
    if r:
        tr.write_line(
            f"per file (best of {int(r.get('repeats', 0))}, interleaved), median over files:"
            f" pydicom / scanner = {_fmt(r.get('pydicom_over_scanner'), '.1f')}x,"
            f" scanner / I/O floor = {_fmt(r.get('scanner_over_floor'), '.2f')}x"
        )
    if "parse_over_floor" in r:
        tr.write_line(
            "  cost over the I/O floor, per file, medians: native parse (one attribute) "
            f"{r['parse_over_floor']:.2f}x, + copying HEADER_KEYWORDS' values "
            f"{r['convert_over_floor']:.2f}x, + the Python Header (scan()) "
            f"{r['scan_over_floor']:.2f}x; scan() then reading every attribute "
            f"{r['read_all_over_floor']:.2f}x"
        )
    cold = {k.removeprefix("cold "): v for k, v in rows.items() if k.startswith("cold")}
    if not cold:
        return
    cold_floor = cold.get("floor threads=1", {}).get("median_s")
    note = f"; {res.evict_note}" if res.evict_note else ""
    tr.write_line(
        f"cold page cache (evicted by {res.evict_method} before each round{note};"
        " floor threads=1 is the cat-like read; last column = MB fetched from storage):"
    )
    for name, row in cold.items():
        _row(tr, name, row, fs, cold_floor)
    ev = res.evictor
    checks = []
    if ev is not None and ev.resident:
        checks.append(f"header pages resident after eviction <= {max(ev.resident) * 100:.1f}%")
    if floor and cold_floor:
        slow = cold_floor / floor
        checks.append(f"cold floor = {slow:.0f}x warm floor")
        checks.append("reads were cold" if slow > 3 else "reads may NOT have been cold")
    if checks:
        tr.write_line("  check: " + ", ".join(checks))
    for name, row in cold.items():
        paired = row.get("paired_over_cat_read_median")
        if paired is None:
            continue
        keeps = "keeps up with" if paired <= 1.1 else "does NOT keep up with"
        tr.write_line(
            f"  {name} {keeps} the disk: {paired:.2f}x a cold cat-like read"
            f" (paired per round, median of {row['rounds']})"
        )


# Sources whose pixels went through a lossy codec (their artefacts would bias ratios).
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.203",
    }
)


def corpus_inputs(modalities: set[str], *, lossless: bool = False) -> list[str]:
    """Corpus files of the given modalities, outside malformed/ (skips without the corpus).

    `lossless`: only files whose pixels pydicom decodes, from a transfer syntax that is
    uncompressed or lossless.
    """
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip(NO_CORPUS)
    lines = manifest.read_text().splitlines()
    names = lines[0].split("\t")
    rows = [dict(zip(names, line.split("\t"), strict=True)) for line in lines[1:] if line]
    return [
        str(CORPUS / r["path"])
        for r in rows
        if r["modality"] in modalities
        and not r["path"].startswith("malformed/")
        and not (
            lossless
            and (r["pydicom_decodes"] != "yes" or r["transfer_syntax_uid"] in LOSSY_SYNTAXES)
        )
    ]


# --- process trees: wall time and peak RSS (ingest benchmarks) ---------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the process so far (all its threads); None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime: the 14th and 15th fields, the 12th and 13th after "pid (comm)".
    return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS


def _tree_rss_kib(pid: int, cpu: dict[int, float]) -> int:
    """Sum of VmRSS over `pid` and its descendants (processes gone meanwhile count 0); each
    one's own CPU seconds so far (user + system) are put in `cpu` by process id."""
    total, todo = 0, [pid]
    while todo:
        child = todo.pop()
        proc = Path(f"/proc/{child}")
        seconds = process_cpu_seconds(child)
        try:
            status = (proc / "status").read_text()
            for task in (proc / "task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
        if seconds is not None:
            cpu[child] = seconds
        match = re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


@dataclass
class Finished:
    """A finished subprocess: exit code, wall seconds, peak RSS figures, output files."""

    code: int
    seconds: float
    tree_peak_kib: int  # sampled sum over the process tree
    largest_kib: int  # wait4: the largest single process of the tree (exact)
    stdout: Path
    stderr: Path
    cpu_seconds: float = 0.0  # user + system of every process of the tree, sampled


def run_measured(
    cmd: list[str],
    out: Path,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> Finished:
    """Run `cmd` (in `env`, by default this one), timing it and sampling its process tree's
    RSS every RSS_SAMPLE_S; after `timeout` seconds its process group is killed (and the
    exit code says so)."""
    stdout, stderr = out / "stdout.txt", out / "stderr.txt"
    with stdout.open("wb") as so, stderr.open("wb") as se:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, start_new_session=True, env=env)
    peak, done, cpu = 0, threading.Event(), dict[int, float]()

    def sample() -> None:
        nonlocal peak
        while not done.wait(RSS_SAMPLE_S):
            peak = max(peak, _tree_rss_kib(proc.pid, cpu))
            if timeout is not None and time.perf_counter() - started > timeout:
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.killpg(proc.pid, signal.SIGKILL)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # wait4 rather than Popen.wait: its rusage is this child's, not all children's.
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        done.set()
        sampler.join()
        if proc.returncode is None:  # interrupted: take the whole tree down
            os.killpg(proc.pid, 9)
            proc.wait()
    # Each process's last sample: up to RSS_SAMPLE_S before its end is missed.
    finished = (proc.returncode, seconds, peak, usage.ru_maxrss, stdout, stderr)
    return Finished(*finished, sum(cpu.values()))


# --- a large archive of small synthetic instances (catch-up and verify benchmarks) --


#: Syntaxes whose encoders take 16 x 16 frames (OpenJPEG refuses them).
SMALL_SYNTAXES = ("explicit", "implicit", "deflate", "rle")
SMALL_SLICES, SMALL_SERIES = 100, 2
INGEST_QUIET_2 = ("--workers", "2", "--json", "--no-progress")


@dataclass
class SmallArchive:
    """A `pacs_engine.synth` tree, the archive made from it, and what each step took."""

    source: Path
    archive: Path
    files: list[Path]
    synth_s: float
    ingest_s: float

    def __len__(self) -> int:
        return len(self.files)


def ingested_small_synth(root: Path, instances: int, limit_s: float) -> SmallArchive:
    """About `instances` 16 x 16 CT/MR slices under root/src, ingested into root/archive.

    100 slices per series, two series per study; ingested by `pacs-engine ingest
    --workers 2` within `limit_s`, and every file checked to be archived.
    """
    studies = max(1, instances // (SMALL_SLICES * SMALL_SERIES))
    source, archive = root / "src", root / "archive"
    started = time.perf_counter()
    files = write_studies(
        source,
        studies,
        SMALL_SERIES,
        SMALL_SLICES,
        rows=16,
        columns=16,
        threads=2,
        syntaxes=SMALL_SYNTAXES,
    )
    synth_s = time.perf_counter() - started
    started = time.perf_counter()
    ingest = subprocess.run(
        [str(PACS_ENGINE), "ingest", str(source), "--archive", str(archive), *INGEST_QUIET_2],
        capture_output=True,
        text=True,
        timeout=limit_s,
    )
    ingest_s = time.perf_counter() - started
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    assert json.loads(ingest.stdout)["archived"] == len(files)
    return SmallArchive(source, archive, list(files), synth_s, ingest_s)
