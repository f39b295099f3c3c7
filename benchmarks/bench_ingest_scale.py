"""Ingest cost per file at 1 k, 10 k and 100 k synthetic files: it must stay flat (issue 4).

    .venv/bin/python -m pytest benchmarks/bench_ingest_scale.py -q -s -p no:cacheprovider

PACS_ENGINE_BENCH_SCALE picks the sizes (default "1000,10000,100000"). Each size is a
fresh `pacs-engine synth` tree (64 x 64 CT/MR slices, 100 per series, 2 series per
study, every synthetic transfer syntax) ingested by `pacs-engine ingest --workers 2`
into a new archive. Printed per size: wall seconds, files/s, milliseconds per file,
and the peak RSS of the ingesting process and of its largest worker, which must not
grow with the number of files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacs_engine.synth import write_studies

SIZES = [int(n) for n in os.environ.get("PACS_ENGINE_BENCH_SCALE", "1000,10000,100000").split(",")]
SLICES, SERIES = 100, 2
RESULTS: dict[int, dict[str, float]] = {}

# The ingesting process reports its own peak RSS and its largest child's (both in KiB).
RUN = """
import json, resource, sys
from pacs_engine.cli import main
code = main(sys.argv[1:])
usage = {
    "main_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "worker_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}
print(json.dumps(usage), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("files", SIZES, ids=lambda n: f"{n}-files")
def test_cost_per_file(files: int, tmp_path: Path) -> None:
    studies = max(1, files // (SLICES * SERIES))
    source = tmp_path / "src"
    written = write_studies(source, studies, SERIES, SLICES, rows=64, columns=64, threads=2)
    archive = tmp_path / "archive"
    command = [sys.executable, "-c", RUN, "ingest", str(source), "--archive", str(archive)]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--workers", "2", "--json", "--no-progress"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    usage = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["archived"] == len(written)
    RESULTS[len(written)] = {
        "seconds": seconds,
        "ms_per_file": 1000 * seconds / len(written),
        "main_mib": usage["main_kib"] / 1024,
        "worker_mib": usage["worker_kib"] / 1024,
    }


def test_summary() -> None:
    """Print the table (run with -s) and how the cost per file moves with the size."""
    if not RESULTS:
        pytest.skip("no size was measured")
    print("\nfiles     wall s   files/s   ms/file   main RSS MiB   largest worker RSS MiB")
    for n, r in sorted(RESULTS.items()):
        print(
            f"{n:>7,}  {r['seconds']:>7.1f}  {n / r['seconds']:>8.0f}  {r['ms_per_file']:>8.2f}"
            f"  {r['main_mib']:>13.0f}  {r['worker_mib']:>23.0f}"
        )
    smallest, largest = min(RESULTS), max(RESULTS)
    growth = RESULTS[largest]["ms_per_file"] / RESULTS[smallest]["ms_per_file"]
    print(f"cost per file at {largest:,} / at {smallest:,} files: {growth:.2f}x")
