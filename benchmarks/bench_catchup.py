"""A catch-up ingest over files already ingested: its cost per file against `os.stat` (issue 16).

    PACS_ENGINE_BENCH_CATCHUP=100000 .venv/bin/python -m pytest benchmarks/bench_catchup.py \
        -q -s -p no:cacheprovider

PACS_ENGINE_BENCH_CATCHUP is the number of files (default 100,000): a `pacs_engine.synth`
tree of 16 x 16 CT/MR slices (100 per series; no JPEG 2000, which refuses that size),
ingested once with two workers, then ingested again in this process (`workers=0`:
nothing is left to hand out) three times, timed from the call to the report: each
catch-up run must skip every file unread. Its cost per file is compared with `os.stat`
of the same files (warm cache, best of three); the target is under 3x. Then the same
catch-up as a command (start and exit included). Each ingest command has a time limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from benchmarks.conftest import PACS_ENGINE, ingested_small_synth
from pacs_engine import open_archive

FILES = int(os.environ.get("PACS_ENGINE_BENCH_CATCHUP", "100000"))
LIMIT_S = 3600


def _best_of(repeats: int, step: callable) -> float:  # type: ignore[valid-type]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def test_catch_up_cost_per_file_against_stat(tmp_path: Path) -> None:
    built = ingested_small_synth(tmp_path, FILES, LIMIT_S)
    source, archive, written = built.source, built.archive, built.files
    command = [str(PACS_ENGINE), "ingest", str(source), "--archive", str(archive)]

    paths = [str(p) for p in written]
    stat_s = _best_of(3, lambda: [os.stat(p) for p in paths])
    runs = []
    with open_archive(archive, readonly=False) as opened:
        for _ in range(3):  # best of three, as for stat; the first is printed too
            started = time.perf_counter()
            report = opened.ingest([source], workers=0)
            runs.append(time.perf_counter() - started)
            assert report.unchanged == len(written) and report.inputs == 0
    catchup_s = min(runs)
    started = time.perf_counter()
    again = subprocess.run(
        [*command, "--workers", "0", "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    cli_s = time.perf_counter() - started
    assert again.returncode == 0 and json.loads(again.stdout)["unchanged"] == len(written)

    n = len(written)
    print(
        f"\n{n:,} files: synth {built.synth_s:.1f} s, first ingest {built.ingest_s:.1f} s "
        f"({1e3 * built.ingest_s / n:.2f} ms/file)\n"
        f"catch-up (in process, best of 3; first {runs[0]:.3f} s) {catchup_s:.3f} s = "
        f"{1e6 * catchup_s / n:.2f} us/file; "
        f"os.stat {stat_s:.3f} s = {1e6 * stat_s / n:.2f} us/file; "
        f"ratio {catchup_s / stat_s:.2f}x (target < 3x)\n"
        f"catch-up command (pacs-engine ingest --workers 0, start and exit included) "
        f"{cli_s:.2f} s"
    )
