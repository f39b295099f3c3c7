"""`verify --sample 0.01` on a large archive: its seconds against a full verify's (issue 16).

    PACS_ENGINE_BENCH_VERIFY=100000 .venv/bin/python -m pytest benchmarks/bench_verify.py \
        -q -s -p no:cacheprovider

PACS_ENGINE_BENCH_VERIFY is the number of instances (default 100,000): a `pacs_engine.synth`
tree of 16 x 16 CT/MR slices (100 per series; no JPEG 2000, which refuses that size),
ingested with two workers. Verify reads real pixels, so the archive holds real instances.
Then `pacs-engine verify --sample 0.01` and `--sample 0.05` (two workers, start and exit
included, best of two: the first warms the page cache, each with a time limit), and a full
verify (once). The full verify's time is also extrapolated from the two samples, whose
difference gives the cost per checked instance without the fixed cost (start, index check,
selection) both share: what a full verify of a larger archive would take.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from benchmarks.conftest import PACS_ENGINE, ingested_small_synth

INSTANCES = int(os.environ.get("PACS_ENGINE_BENCH_VERIFY", "100000"))
LIMIT_S = 3600


def _verify(archive: Path, *options: str) -> tuple[float, dict]:
    """Wall seconds of `pacs-engine verify ARCHIVE OPTIONS --workers 2`, and its record."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(PACS_ENGINE), "verify", str(archive), *options, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    print("\n" + result.stdout.strip())
    (record,) = [line.split()[-1] for line in result.stdout.splitlines() if "recorded in" in line]
    return seconds, json.loads(Path(record).read_text())


def _best_of_two(archive: Path, *options: str) -> tuple[float, dict]:
    return min(_verify(archive, *options), _verify(archive, *options), key=lambda r: r[0])


def test_verify_a_sample_of_a_large_archive(tmp_path: Path) -> None:
    built = ingested_small_synth(tmp_path, INSTANCES, LIMIT_S)
    archive, n = built.archive, len(built)

    small_s, small = _best_of_two(archive, "--sample", "0.01")
    large_s, large = _best_of_two(archive, "--sample", "0.05")
    whole_s, whole = _verify(archive)
    assert whole["instances"] == n
    assert small["instances"] == -(-n // 100) and small["population"] == n
    per_instance = (large_s - small_s) / (large["instances"] - small["instances"])
    fixed_s = small_s - per_instance * small["instances"]
    full_s = fixed_s + per_instance * n
    print(
        f"{n:,} instances: synth {built.synth_s:.1f} s, ingest {built.ingest_s:.1f} s\n"
        f"verify --sample 0.01: {small['instances']:,} instances in {small_s:.2f} s "
        f"(command; {small['seconds']:.2f} s inside verify)\n"
        f"verify --sample 0.05: {large['instances']:,} instances in {large_s:.2f} s\n"
        f"per checked instance {1e3 * per_instance:.2f} ms, fixed {fixed_s:.2f} s: "
        f"full verify extrapolated {full_s:.1f} s, measured {whole_s:.1f} s "
        f"({whole['seconds']:.1f} s inside verify); the 1 % sample takes "
        f"{100 * small_s / whole_s:.1f} % of the full verify's time"
    )
