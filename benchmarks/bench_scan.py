"""Header scanning speed: pacs_engine's scanner against pydicom and against the I/O floor.

All figures are over the same file set (the shared corpus without malformed/,
or pydicom's bundled test files when the corpus is absent):

  warm  page cache warm: scan_many (threads 1, 2), pydicom dcmread(stop_before_pixels),
        and the I/O floor (open + pread of the bytes before the pixel data + close).
  ratio per file, best of N interleaved repeats: pydicom / scanner and scanner / floor,
        median over files.
  cold  page cache evicted before each round: scan_many (threads 1, 2, 4, 8) against a
        cat-like read of the same header bytes (the disk's speed). Corpus only.

Every test records files/s and ratios in `benchmark.extra_info` (so they land in
--benchmark-json); benchmarks/conftest.py prints a summary table at the end.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pydicom
import pytest

from benchmarks.conftest import Evictor, FileSet, Results, disk_read_bytes
from pacs_engine import ScanError, scan, scan_many
from pacs_engine.scanning import _SCANNER, _make_scanner

COLD_ROUNDS = 5
REPEATS = int(os.environ.get("PACS_ENGINE_BENCH_REPEATS", "5"))


# --- the workloads ----------------------------------------------------------


def floor_read(paths: list[str], ends: list[int]) -> None:
    """The I/O floor: open, pread exactly the header bytes, close."""
    for path, n in zip(paths, ends, strict=True):
        fd = os.open(path, os.O_RDONLY)
        os.pread(fd, n, 0)
        os.close(fd)


def floor_read_threads(paths: list[str], ends: list[int], threads: int, batch: int = 64) -> None:
    """floor_read on a thread pool, in batches like scan_many (pread releases the GIL)."""
    if threads == 1:
        floor_read(paths, ends)
        return
    chunks = [(paths[i : i + batch], ends[i : i + batch]) for i in range(0, len(paths), batch)]
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda c: floor_read(*c), chunks):
            pass


def scan_all(paths: list[str], threads: int) -> list:
    out = list(scan_many(paths, threads=threads))
    errors = [r for r in out if isinstance(r, ScanError)]
    assert not errors, errors[:3]
    return out


def pydicom_all(paths: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            pydicom.dcmread(path, stop_before_pixels=True, force=True)


# --- recording --------------------------------------------------------------


def record(benchmark: Any, results: Results, key: str, fs: FileSet, **extra: Any) -> dict:
    """files/s (from the median round) and friends into extra_info and the summary."""
    stats = benchmark.stats.stats if benchmark.stats else None
    median_s = stats.median if stats else None
    row = {
        "files": len(fs),
        "header_bytes": fs.header_bytes,
        "median_s": median_s,
        "min_s": stats.min if stats else None,
        "rounds": stats.rounds if stats else 0,
        "files_per_s": len(fs) / median_s if median_s else None,
        "files_per_s_best": len(fs) / stats.min if stats and stats.min else None,
        "header_mb_per_s": fs.header_bytes / median_s / 1e6 if median_s else None,
        **extra,
    }
    floor = results.rows.get("warm floor", {}).get("median_s")
    if key.startswith("warm") and floor and median_s:
        row["time_over_floor"] = median_s / floor
    cold_floor = results.rows.get("cold floor threads=1", {}).get("median_s")
    if key.startswith("cold") and cold_floor and median_s:
        row["time_over_cold_cat_read"] = median_s / cold_floor
    results.rows[key] = row
    benchmark.extra_info.update({k: v for k, v in row.items() if v is not None})
    return row


# --- (a, b, c) warm page cache ---------------------------------------------


def test_warm_floor(benchmark: Any, warm: FileSet, results: Results) -> None:
    benchmark.group = "warm"
    benchmark(floor_read, warm.paths, warm.header_ends)
    record(benchmark, results, "warm floor", warm)


@pytest.mark.parametrize("threads", [1, 2])
def test_warm_scan_many(benchmark: Any, warm: FileSet, results: Results, threads: int) -> None:
    benchmark.group = "warm"
    out = benchmark(scan_all, warm.paths, threads)
    assert len(out) == len(warm)
    record(benchmark, results, f"warm scan_many threads={threads}", warm)


def test_warm_pydicom(benchmark: Any, warm: FileSet, results: Results) -> None:
    benchmark.group = "warm"
    benchmark.pedantic(pydicom_all, args=(warm.paths,), rounds=5, warmup_rounds=1)
    row = record(benchmark, results, "warm pydicom dcmread", warm)
    scan1 = results.rows.get("warm scan_many threads=1", {}).get("median_s")
    if scan1 and row["median_s"]:
        benchmark.extra_info["pydicom_over_scan_many_threads1"] = row["median_s"] / scan1


# --- (d) per-file ratios ----------------------------------------------------


def per_file_best(fs: FileSet, repeats: int) -> list[tuple[int, int, int]]:
    """Per file, the best of `repeats` interleaved timings (ns) of scan, dcmread, floor."""
    clock = time.perf_counter_ns
    best = []
    for path, n in zip(fs.paths, fs.header_ends, strict=True):
        s = p = f = math.inf
        for _ in range(repeats):
            t0 = clock()
            scan(path)
            t1 = clock()
            pydicom.dcmread(path, stop_before_pixels=True, force=True)
            t2 = clock()
            fd = os.open(path, os.O_RDONLY)
            os.pread(fd, n, 0)
            os.close(fd)
            t3 = clock()
            s, p, f = min(s, t1 - t0), min(p, t2 - t1), min(f, t3 - t2)
        best.append((s, p, f))
    return best


def _quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
    return {"p10": q[0], "median": statistics.median(values), "p90": q[-1]}


def test_per_file_ratios(benchmark: Any, warm: FileSet, results: Results) -> None:
    benchmark.group = "per-file"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = benchmark.pedantic(per_file_best, args=(warm, REPEATS), rounds=1)
    pyd_over_scan = _quantiles([p / s for s, p, _ in best])
    scan_over_floor = _quantiles([s / f for s, _, f in best])
    totals = [sum(col) / 1e9 for col in zip(*best, strict=True)]
    info = {
        "repeats": REPEATS,
        "files": len(warm),
        "pydicom_over_scanner_median": pyd_over_scan["median"],
        "pydicom_over_scanner_p10": pyd_over_scan["p10"],
        "pydicom_over_scanner_p90": pyd_over_scan["p90"],
        "scanner_over_floor_median": scan_over_floor["median"],
        "scanner_over_floor_p10": scan_over_floor["p10"],
        "scanner_over_floor_p90": scan_over_floor["p90"],
        "scan_files_per_s_best_each": len(warm) / totals[0],
        "pydicom_files_per_s_best_each": len(warm) / totals[1],
        "floor_files_per_s_best_each": len(warm) / totals[2],
    }
    benchmark.extra_info.update(info)
    results.ratios.update(
        repeats=REPEATS,
        pydicom_over_scanner=pyd_over_scan["median"],
        scanner_over_floor=scan_over_floor["median"],
    )


def cost_breakdown(fs: FileSet, repeats: int) -> dict[str, float]:
    """Median over files of each stage's best time / the floor's: where a scan's time goes.

    Stages: the native parse with one requested attribute (I/O + walking the
    elements), with all of HEADER_KEYWORDS (+ copying their values, and converting
    those left to pydicom), the whole `scan()` (+ building the Header),
    and `scan()` then reading every attribute (+ converting the values, which
    `Attributes` does on first read).
    """
    clock = time.perf_counter_ns
    one = _make_scanner(("SOPInstanceUID",))
    ratios: dict[str, list[float]] = {"parse": [], "convert": [], "scan": [], "read_all": []}
    for path, n in zip(fs.paths, fs.header_ends, strict=True):
        best = [math.inf] * 5
        for _ in range(repeats):
            t0 = clock()
            one.scan_path(path)
            t1 = clock()
            _SCANNER.scan_path(path)
            t2 = clock()
            scan(path)
            t3 = clock()
            list(scan(path).attributes.values())
            t4 = clock()
            fd = os.open(path, os.O_RDONLY)
            os.pread(fd, n, 0)
            os.close(fd)
            t5 = clock()
            for i, took in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                best[i] = min(best[i], took)
        for name, took in zip(ratios, best[:4], strict=True):
            ratios[name].append(took / best[4])
    return {name: statistics.median(values) for name, values in ratios.items()}


def test_per_file_cost_breakdown(benchmark: Any, warm: FileSet, results: Results) -> None:
    """Each stage of a scan against the I/O floor, per file, medians."""
    benchmark.group = "per-file"
    medians = benchmark.pedantic(cost_breakdown, args=(warm, REPEATS), rounds=1)
    benchmark.extra_info.update({f"{name}_over_floor_median": v for name, v in medians.items()})
    results.ratios.update({f"{name}_over_floor": v for name, v in medians.items()})


# --- (e) cold page cache ----------------------------------------------------


def cold_pedantic(
    benchmark: Any, evictor: Evictor, target: Callable[[], Any], paired: bool = False
) -> tuple[Any, float | None, list[float]]:
    """Run target COLD_ROUNDS times on a cold cache (eviction untimed).

    Returns the result, the MB fetched from storage per round (median), and, when
    `paired`, the time of a cold cat-like read of the header bytes measured just
    before each round (in its own setup, evicting again after it), so each round
    has its own disk reference and drift on a shared machine cancels out.
    """
    fetched: list[int] = []
    cat_s: list[float] = []
    start: list[int | None] = [None]
    fs = evictor.fs

    def setup() -> None:
        if paired:
            evictor()
            t0 = time.perf_counter()
            floor_read(fs.paths, fs.header_ends)
            cat_s.append(time.perf_counter() - t0)
        evictor()
        start[0] = disk_read_bytes()

    def teardown(*_: Any) -> None:
        end = disk_read_bytes()
        if start[0] is not None and end is not None:
            fetched.append(end - start[0])

    out = benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=COLD_ROUNDS)
    return out, (statistics.median(fetched) / 1e6 if fetched else None), cat_s


@pytest.mark.corpus
@pytest.mark.parametrize("threads", [1, 8])
def test_cold_floor(benchmark: Any, evictor: Evictor, results: Results, threads: int) -> None:
    """The disk's speed for the header bytes; threads=1 is the cat-like read."""
    benchmark.group = "cold"
    fs = evictor.fs
    target = partial(floor_read_threads, fs.paths, fs.header_ends, threads)
    _, mb, _ = cold_pedantic(benchmark, evictor, target)
    record(
        benchmark, results, f"cold floor threads={threads}", fs, disk_mb=mb, evict=evictor.method
    )


@pytest.mark.corpus
@pytest.mark.parametrize("threads", [1, 2, 4, 8])
def test_cold_scan_many(benchmark: Any, evictor: Evictor, results: Results, threads: int) -> None:
    benchmark.group = "cold"
    fs = evictor.fs
    out, mb, cat_s = cold_pedantic(benchmark, evictor, partial(scan_all, fs.paths, threads), True)
    assert len(out) == len(fs)
    data = benchmark.stats.stats.data if benchmark.stats else []
    paired = {}
    if data and cat_s:
        ratios = [t / c for t, c in zip(data, cat_s, strict=True)]
        paired = {
            "paired_cat_read_median_s": statistics.median(cat_s),
            "paired_over_cat_read_median": statistics.median(ratios),
            "paired_over_cat_read_max": max(ratios),
        }
    record(
        benchmark,
        results,
        f"cold scan_many threads={threads}",
        fs,
        disk_mb=mb,
        evict=evictor.method,
        **paired,
    )
