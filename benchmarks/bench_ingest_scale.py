"""Ingest cost per file at 1 k, 10 k and 100 k synthetic files: it must stay flat (issue 4).

    .venv/bin/python -m pytest benchmarks/bench_ingest_scale.py -q -s -p no:cacheprovider

PACS_ENGINE_BENCH_SCALE picks the sizes (default "1000,10000,100000"). Each size is a
fresh `pacs-engine synth` tree (64 x 64 CT/MR slices, 100 per series, 2 series per
study, every synthetic transfer syntax) ingested by `pacs-engine ingest --workers 2`
into a new archive. Printed per size: wall seconds, files/s, milliseconds per file,
and peak RSS: the ingesting process's own (wait4) and the sum over its process tree
(sampled), which must not grow with the number of files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.conftest import PACS_ENGINE, RSS_SAMPLE_S, run_measured
from pacs_engine.synth import write_studies

SIZES = [int(n) for n in os.environ.get("PACS_ENGINE_BENCH_SCALE", "1000,10000,100000").split(",")]
SLICES, SERIES = 100, 2
RESULTS: dict[int, dict[str, float]] = {}


@pytest.mark.parametrize("files", SIZES, ids=lambda n: f"{n}-files")
def test_cost_per_file(files: int, tmp_path: Path) -> None:
    studies = max(1, files // (SLICES * SERIES))
    source = tmp_path / "src"
    written = write_studies(source, studies, SERIES, SLICES, rows=64, columns=64, threads=2)
    archive = tmp_path / "archive"
    command = [str(PACS_ENGINE), "ingest", str(source), "--archive", str(archive)]
    done = run_measured([*command, "--workers", "2", "--json", "--no-progress"], tmp_path)
    assert done.code == 0, done.stderr.read_text()[-2000:]
    report = json.loads(done.stdout.read_text())
    assert report["archived"] == len(written)
    RESULTS[len(written)] = {
        "seconds": done.seconds,
        "ms_per_file": 1000 * done.seconds / len(written),
        "tree_mib": done.tree_peak_kib / 1024,
        "main_mib": done.largest_kib / 1024,
    }


def test_summary() -> None:
    """Print the table (run with -s) and how the cost per file moves with the size."""
    if not RESULTS:
        pytest.skip("no size was measured")
    print(
        f"\nfiles     wall s   files/s   ms/file   main RSS MiB   tree RSS MiB (/{RSS_SAMPLE_S}s)"
    )
    for n, r in sorted(RESULTS.items()):
        print(
            f"{n:>7,}  {r['seconds']:>7.1f}  {n / r['seconds']:>8.0f}  {r['ms_per_file']:>8.2f}"
            f"  {r['main_mib']:>13.0f}  {r['tree_mib']:>20.0f}"
        )
    smallest, largest = min(RESULTS), max(RESULTS)
    growth = RESULTS[largest]["ms_per_file"] / RESULTS[smallest]["ms_per_file"]
    print(f"cost per file at {largest:,} / at {smallest:,} files: {growth:.2f}x")
