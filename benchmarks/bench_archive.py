"""Archiving the corpus: throughput and compression, the archive's codec policy vs JPEG-LS.

Run from the repository root:

    .venv/bin/python -m pytest benchmarks/bench_archive.py -s

One process (`Archive.add`; the parallel orchestrator is measured by the
bulk-migration benchmarks). Inputs: the corpus's CT, MR and CR files outside
`malformed/`, read once beforehand so they are in page cache. Each policy archives
the same files into a fresh archive, in the same run:

- `auto`: the archive's default, a codec chosen per series from a sample frame;
- `jpegls`: every uncompressed frame encoded with JPEG-LS (minimal precision).

Reported per policy: instances/s, raw pixel MB/s, ratio = raw pixel bytes /
stored bytes (chunks + header blobs), the original files' size / stored size,
and, over the frames that arrived uncompressed (the ones the codec encodes), the
geometric-mean ratio per instance against the JPEG-LS archive's.
"""

from __future__ import annotations

import math
import time

import pytest

from benchmarks.conftest import corpus_inputs
from pacs_engine import Archive

MODALITIES = {"CT", "MR", "CR"}
POLICIES = ("auto", "jpegls")
_RESULTS: dict[str, dict] = {}


def inputs() -> list[str]:
    """Corpus files of the benchmarked modalities, outside malformed/."""
    return corpus_inputs(MODALITIES)


@pytest.mark.parametrize("policy", POLICIES)
def test_archive_the_corpus(benchmark, tmp_path_factory, policy: str) -> None:
    files = inputs()
    for path in files:  # page cache
        with open(path, "rb") as f:
            f.read()

    def run() -> tuple:
        folder = tmp_path_factory.mktemp(policy) / "archive"
        archive = Archive.create(folder, codec=policy)
        started = time.perf_counter()
        report = archive.ingest(files, workers=0)
        seconds = time.perf_counter() - started
        ratios = {}
        for row in archive.index:
            if row["pixels"] and row["pixel_storage"] == "native" and row["raw_pixel_bytes"]:
                ratios[row["SOPInstanceUID"]] = row["raw_pixel_bytes"] / row["stored_bytes"]
        archive.close()
        return report, seconds, ratios

    report, seconds, ratios = benchmark.pedantic(run, rounds=1, iterations=1)
    assert report.balanced
    _RESULTS[policy] = {
        "instances/s": report.inputs / seconds,
        "raw MB/s": report.raw_bytes / seconds / 1e6,
        "ratio": report.raw_bytes / report.stored_bytes,
        "files/stored": report.input_bytes / report.stored_bytes,
        "per_instance": ratios,
    }
    benchmark.extra_info.update({k: v for k, v in _RESULTS[policy].items() if k != "per_instance"})


def test_summary() -> None:
    """Print the side-by-side table (runs after both policies)."""
    if set(_RESULTS) != set(POLICIES):
        pytest.skip("run with both policies")
    base = _RESULTS["jpegls"]["per_instance"]
    print("\npolicy   instances/s   raw MB/s   ratio   files/stored   geomean vs JPEG-LS")
    for policy in POLICIES:
        r = _RESULTS[policy]
        common = [u for u in r["per_instance"] if u in base]
        logs = [math.log(r["per_instance"][u] / base[u]) for u in common]
        versus = math.exp(sum(logs) / len(logs)) if logs else float("nan")
        print(
            f"{policy:<8} {r['instances/s']:>11.1f} {r['raw MB/s']:>10.1f} {r['ratio']:>7.3f}"
            f" {r['files/stored']:>14.3f} {versus:>19.3f}"
        )
