"""What a training loop sees when it reads an archive: frames/s and decoded MB/s.

`read_bench(path, frames, workers, seed)` reads `frames` frames of a `FrameDataset`
over the whole archive two ways, with 1..N worker processes each opening the
archive itself (as DataLoader workers do):

- random: map-style `dataset[i]` for random indices (without repetition while the
  archive has enough frames);
- sequential: `iter_chunks()`, one read per run of consecutive frames of a shard,
  from the first frame on (wrapping round when more frames are asked than stored).

The work is split evenly between the workers; every worker sets itself up (starts,
imports, opens the archive) before a common start (a barrier), and the time is
from the first worker's start to the last worker's end. `run_tasks` is the same
harness for any picklable reader.

With `compare`, the baseline is measured in the same run: the same random frames
read with pydicom from the original files the index rows name (`source_path`;
`PydicomFrames`: `dcmread` + `pixel_array`), with the same worker counts. The
per-codec and per-volume comparisons against pydicom and the codec alone are
benchmarks, not product: `benchmarks/read_compare.py`, run by `benchmarks/bench_read.py`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "PydicomFrames",
    "RandomFrames",
    "SequentialFrames",
    "random_indices",
    "read_bench",
    "render_baseline",
    "render_read_bench",
    "run_tasks",
    "sources",
]


class RandomFrames:
    """Reads `dataset[i]` for each index of a part; returns (frames, decoded bytes)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def prepare(self) -> None:
        from pacs_engine.read.datasets import _handle

        _handle(self.dataset.archive_path)

    def read(self, indices: Sequence[int]) -> tuple[int, int]:
        frames = nbytes = 0
        for i in indices:
            pixels = self.dataset[int(i)]["pixels"]
            frames += 1
            nbytes += pixels.nbytes
        return frames, nbytes


class SequentialFrames:
    """Streams `dataset.iter_chunks()` over the given [start, stop) runs of items."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._chunks: Any = None

    def prepare(self) -> None:
        self._chunks = self.dataset.iter_chunks()  # opens the archive, finds the runs

    def read(self, runs: Sequence[tuple[int, int]]) -> tuple[int, int]:
        chunks = self._chunks if self._chunks is not None else self.dataset.iter_chunks()
        chunks.runs = list(runs)
        frames = nbytes = 0
        for item in chunks:
            frames += 1
            nbytes += item["pixels"].nbytes
        return frames, nbytes


class PydicomFrames:
    """Reads (file, frame) pairs with pydicom: `dcmread` + `pixel_array`, one frame kept."""

    def read(self, part: Sequence[tuple[str, int]]) -> tuple[int, int]:
        frames = nbytes = 0
        for path, frame in part:
            frames += 1
            nbytes += pydicom_frame(path, frame).nbytes
        return frames, nbytes


def pydicom_frame(path: str, frame: int) -> np.ndarray:
    """Frame `frame` of a file as pydicom gives it (the whole file read and decoded)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    return pixels[frame] if int(ds.get("NumberOfFrames") or 1) > 1 else pixels


def _worker(k: int, tasks: list[tuple[str, Any, list[Any]]], barrier: Any, results: Any) -> None:
    for t, (_, reader, parts) in enumerate(tasks):
        error = ""
        try:
            prepare = getattr(reader, "prepare", None)
            if prepare is not None:
                prepare()
        except Exception as exc:  # reported, after the barrier so no one waits forever
            error = f"{type(exc).__name__}: {exc}"
        barrier.wait()
        started = time.monotonic()
        frames = nbytes = 0
        if not error:
            try:
                frames, nbytes = reader.read(parts[k])
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        results.put((t, k, frames, nbytes, started, time.monotonic(), error))


def run_tasks(
    tasks: Sequence[tuple[str, Any, list[Any]]],
    workers: int,
    start_method: str = "spawn",
) -> list[dict[str, Any]]:
    """Run each task (name, reader, one part per worker) on `workers` processes, in turn.

    `reader.prepare()` (optional) runs in each worker before the common start,
    `reader.read(part) -> (frames, decoded bytes)` is timed. One process set runs
    every task; each task starts at a barrier. Returns per task: name, workers,
    frames, bytes, seconds, frames_per_s, mb_per_s.
    """
    tasks = list(tasks)
    for name, _, parts in tasks:
        if len(parts) != workers:
            raise ValueError(f"task {name}: {len(parts)} parts for {workers} workers")
    context = multiprocessing.get_context(start_method)
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        # Every concrete context has Process; typeshed declares it on the subclasses only.
        context.Process(target=_worker, args=(k, tasks, barrier, results), daemon=True)  # type: ignore[attr-defined]
        for k in range(workers)
    ]
    for process in processes:
        process.start()
    got: list[tuple] = []
    try:
        while len(got) < workers * len(tasks):
            try:
                got.append(results.get(timeout=1.0))
            except Exception:
                # A worker that finished its share has exited 0 while the others still
                # run: only a failed exit, or every worker gone with results missing, is
                # a death (a finished worker's results were put before it exited).
                codes = [p.exitcode for p in processes]
                failed = any(code not in (None, 0) for code in codes)
                if failed or (None not in codes and results.empty()):
                    raise RuntimeError(f"a read worker died (exit codes {codes})") from None
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():  # pragma: no cover - only if a worker hangs
                process.terminate()
                process.join()
    out = []
    for t, (name, _, _) in enumerate(tasks):
        rows = [g for g in got if g[0] == t]
        errors = [g[6] for g in rows if g[6]]
        if errors:
            raise RuntimeError(f"task {name}: {errors[0]}")
        frames = sum(g[2] for g in rows)
        nbytes = sum(g[3] for g in rows)
        seconds = max(max(g[5] for g in rows) - min(g[4] for g in rows), 1e-9)
        out.append(
            {
                "mode": name,
                "workers": workers,
                "frames": frames,
                "bytes": nbytes,
                "seconds": round(seconds, 6),
                "frames_per_s": frames / seconds,
                "mb_per_s": nbytes / seconds / 1e6,
            }
        )
    return out


def random_indices(length: int, frames: int, seed: int) -> np.ndarray:
    """`frames` random item indices: a permutation's head, or with repetition if too few."""
    rng = np.random.default_rng(seed)
    if frames <= length:
        return rng.permutation(length)[:frames]
    return rng.integers(0, length, frames)


def sequential_runs(runs: Sequence[tuple[int, int]], frames: int) -> list[tuple[int, int]]:
    """The dataset's runs from the first on, cut to `frames` items (wrapping round)."""
    out: list[tuple[int, int]] = []
    left = frames
    while left > 0:
        for start, stop in runs:
            take = min(stop - start, left)
            out.append((start, start + take))
            left -= take
            if not left:
                break
    return out


def sources(dataset: Any, indices: Sequence[int]) -> list[tuple[str, int]]:
    """The original file (the row's `source_path`) and frame number of each item."""
    from pacs_engine.read.datasets import _handle

    index = _handle(dataset.archive_path).archive.index
    out = []
    for i in indices:
        entry = dataset.table[i]
        row = index.get(dataset.instances[int(entry[3])]) or {}
        path = str(row.get("source_path") or "")
        if not os.path.isfile(path):
            raise ValueError(f"the original file of item {i} is not readable: {path!r}")
        out.append((path, int(entry[4])))
    return out


def read_bench(
    archive_path: str | os.PathLike[str],
    frames: int = 512,
    workers: Sequence[int] = (1, 2),
    seed: int = 0,
    start_method: str = "spawn",
    compare: bool = False,
) -> dict[str, Any]:
    """Random and sequential frame reads of the archive with each worker count.

    Returns {"archive", "dataset_frames", "frames", "seed", "start_method", "cpus",
    "results": [{"mode", "workers", "frames", "bytes", "seconds", "frames_per_s",
    "mb_per_s"}, ...]}, random then sequential (then pydicom, with `compare`) for each
    worker count.
    """
    from pacs_engine.read.datasets import FrameDataset

    if frames < 1:
        raise ValueError(f"frames must be at least 1, not {frames}")
    if not workers or min(workers) < 1:
        raise ValueError(f"workers must be positive counts, not {list(workers)}")
    dataset = FrameDataset(archive_path)
    if not len(dataset):
        raise ValueError(f"{os.fspath(archive_path)}: the archive holds no frames")
    indices = random_indices(len(dataset), frames, seed).tolist()
    runs = sequential_runs(dataset.runs(), frames)
    where = sources(dataset, indices) if compare else []
    results: list[dict[str, Any]] = []
    for count in workers:
        tasks = [
            ("random", RandomFrames(dataset), [indices[k::count] for k in range(count)]),
            ("sequential", SequentialFrames(dataset), [runs[k::count] for k in range(count)]),
        ]
        if compare:
            tasks.append(("pydicom", PydicomFrames(), [where[k::count] for k in range(count)]))
        results += run_tasks(tasks, count, start_method)
    return {
        "archive": dataset.archive_path,
        "dataset_frames": len(dataset),
        "frames": frames,
        "seed": seed,
        "start_method": start_method,
        "cpus": os.cpu_count(),
        "results": results,
    }


def render_read_bench(report: dict[str, Any]) -> str:
    """The report as a table for people."""
    lines = [
        f"{report['archive']}: {report['dataset_frames']:,} frames; read {report['frames']:,} "
        f"per row (seed {report['seed']}, {report['start_method']} workers, "
        f"{report['cpus']} cpus)",
        f"  {'mode':<11} {'workers':>7} {'frames':>8} {'seconds':>9} {'frames/s':>10} {'MB/s':>9}",
    ]
    for row in report["results"]:
        lines.append(
            f"  {row['mode']:<11} {row['workers']:>7} {row['frames']:>8,} "
            f"{row['seconds']:>9.3f} {row['frames_per_s']:>10,.1f} {row['mb_per_s']:>9.1f}"
        )
    lines += render_baseline(report)
    return "\n".join(lines)


def render_baseline(report: dict[str, Any]) -> list[str]:
    """The pydicom baseline of a `compare` report, as table lines: random frames' speed-up."""
    lines = []
    rows = {(r["mode"], r["workers"]): r for r in report.get("results", [])}
    for (mode, count), row in rows.items():
        theirs = rows.get(("pydicom", count))
        if mode == "random" and theirs:
            ratio = row["frames_per_s"] / theirs["frames_per_s"]
            lines.append(f"  random frames, {count} worker(s): archive / pydicom = {ratio:.1f}x")
    return lines
