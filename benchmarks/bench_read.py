"""Reading for training: the archive against pydicom on the original files, and the codec.

Run from the repository root:

    .venv/bin/python -m pytest benchmarks/bench_read.py -q -s -p no:cacheprovider

Three archives are built per session from the corpus's CT and MR files outside
`malformed/` (their files read once beforehand, so everything is in the page cache):
the default codec policy (original bitstreams kept, uncompressed frames encoded per
series, mostly JPEG-LS), and two read-optimised archives made with `--codec lz4
--transcode` and `--codec raw --transcode` (every lossless frame stored with Blosc
LZ4, or uncompressed). For each, in the same run, with the harness `pacs-engine
read-bench` uses (`pacs_engine.read.bench`) and the comparisons of `read_compare.py`:

(a) random frames: the same random frames read as `FrameDataset[i]` and with
    pydicom from the original files (`dcmread` + `pixel_array`, the frame taken
    from it; the row's `source_path` names the file), with 1 and 2 worker processes
    (`run_tasks`: each worker opens the archive itself);
(b) per frame, interleaved in one process, best of 3: `FrameDataset[i]`, the array's
    codec alone on the frame's chunk bytes (read beforehand), and pydicom, summed per
    modality and codec (`frame_costs`, `by_codec`): the archive's share of the codec's
    own speed, and what bounds the ratio to pydicom for each codec;
(c) volumes, best of 5 passes each: `Series(archive, uid).volume()` with 1 and 2
    decode threads against pydicom reading every file of the series, sorting by
    position along the normal and stacking, for every series that is one volume; the
    arrays are checked equal.

Targets (the "Reading for training" issue): >= 20x pydicom for random frames,
>= 80 % of the codec's decode speed, >= 10x pydicom for volumes.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.conftest import corpus_inputs
from benchmarks.read_compare import by_codec, frame_costs, render_comparison, volume_comparison
from pacs_engine import Archive
from pacs_engine.read.bench import PydicomFrames, RandomFrames, random_indices, run_tasks, sources
from pacs_engine.read.datasets import FrameDataset

MODALITIES = {"CT", "MR"}
RANDOM_FRAMES = 300
WORKERS = (1, 2)
POLICIES: dict[str, dict[str, Any]] = {
    "default": {},
    "lz4": {"codec": "lz4", "transcode": True},
    "raw": {"codec": "raw", "transcode": True},
}
_RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="session", params=list(POLICIES))
def corpus_archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    files = corpus_inputs(MODALITIES)
    for path in files:  # page cache
        with open(path, "rb") as f:
            f.read()
    folder = tmp_path_factory.mktemp("read") / "archive"
    archive = Archive.create(folder, **POLICIES[request.param])
    with archive:
        report = archive.ingest(files, workers=0)
        assert report.balanced
        stored = archive.info()
    dataset = FrameDataset(folder)
    indices = random_indices(len(dataset), RANDOM_FRAMES, seed=0).tolist()
    _RESULTS[request.param] = {"ratio": stored["ratio"]}
    return {"policy": request.param, "folder": folder, "dataset": dataset, "indices": indices}


def test_random_frames(benchmark: Any, corpus_archive: dict[str, Any]) -> None:
    dataset, indices = corpus_archive["dataset"], corpus_archive["indices"]
    where = sources(dataset, indices)

    def run() -> list[dict[str, Any]]:
        rows = []
        for count in WORKERS:
            tasks = [
                ("random", RandomFrames(dataset), [indices[k::count] for k in range(count)]),
                ("pydicom", PydicomFrames(), [where[k::count] for k in range(count)]),
            ]
            rows += run_tasks(tasks, count)
        return rows

    rows = benchmark.pedantic(run, rounds=1, iterations=1)
    for row in rows:
        assert row["frames"] == len(indices)
    _RESULTS[corpus_archive["policy"]]["results"] = rows
    benchmark.extra_info["rows"] = rows


def test_frame_costs(benchmark: Any, corpus_archive: dict[str, Any]) -> None:
    dataset, indices = corpus_archive["dataset"], corpus_archive["indices"]
    costs = benchmark.pedantic(frame_costs, args=(dataset, indices), rounds=1, iterations=1)
    results = _RESULTS[corpus_archive["policy"]]
    results["by_codec"] = by_codec(costs)
    benchmark.extra_info["by_codec"] = results["by_codec"]


def test_volumes(benchmark: Any, corpus_archive: dict[str, Any]) -> None:
    got = benchmark.pedantic(
        volume_comparison, args=(corpus_archive["folder"], WORKERS), rounds=1, iterations=1
    )
    assert got["series"]
    _RESULTS[corpus_archive["policy"]]["volumes"] = got
    benchmark.extra_info.update(got)


def test_summary(corpus_archive: dict[str, Any]) -> None:
    """Print the table of this archive's policy (run with -s)."""
    results = _RESULTS[corpus_archive["policy"]]
    lines = [
        "",
        f"read benchmark, {corpus_archive['policy']} archive: "
        f"{len(corpus_archive['dataset'])} frames, ratio {results['ratio']}",
    ]
    lines.append(f"  {'what':<28} {'frames/s':>10} {'MB/s':>9}")
    for row in results.get("results", []):
        name = f"{row['mode']} w{row['workers']}"
        lines.append(f"  {name:<28} {row['frames_per_s']:>10,.1f} {row['mb_per_s']:>9.1f}")
    print("\n".join(lines + render_comparison(results)))
