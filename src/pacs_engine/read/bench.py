"""What a training loop sees when it reads an archive: frames/s and decoded MB/s.

`read_bench(path, frames, workers, seed)` reads `frames` frames of a `FrameDataset`
over the whole archive two ways, with 1..N worker processes each opening the
archive itself (as DataLoader workers do):

- random: map-style `dataset[i]` for random indices (without repetition while the
  archive has enough frames);
- sequential: `iter_chunks()`, one read per run of consecutive frames of a shard,
  from the first frame on (wrapping round when more frames are asked than stored);
- dataloader (with torch): the random frames through a torch `DataLoader` with the
  same worker count, batched by the default collate, as a training loop sees them
  (not measured, and the report says why, when the frames differ in size or dtype).

The dataset may be selected by a series query and rescaled (`query`, `rescale`,
`shape`), so the figures are those of the loop's own dataset.

The work is split evenly between the workers; every worker sets itself up (starts,
imports, opens the archive) before a common start (a barrier), and the time is
from the first worker's start to the last worker's end. `run_tasks` is the same
harness for any picklable reader.

With `compare`, the baseline is measured in the same run: the same random frames
read with pydicom from the original files the index rows name (`source_path`; for
a copy made from an archive, the file that archive's row names: `original_file`;
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
        seconds = max(g[5] for g in rows) - min(g[4] for g in rows)
        out.append(rates(name, workers, frames, nbytes, seconds))
    return out


def rates(mode: str, workers: int, frames: int, nbytes: int, seconds: float) -> dict[str, Any]:
    """One row of read-bench's results: what was read, in how long, and its rates."""
    seconds = max(seconds, 1e-9)
    return {
        "mode": mode,
        "workers": workers,
        "frames": frames,
        "bytes": nbytes,
        "seconds": round(seconds, 6),
        "frames_per_s": frames / seconds,
        "mb_per_s": nbytes / seconds / 1e6,
    }


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


#: Copies of copies followed to the original file at most (a loop of archives stops here).
MAX_COPY_DEPTH = 8


def original_file(archive_path: str, sop_instance_uid: str) -> str:
    """The original file an archived instance was ingested from; ValueError says why not.

    A read-optimised copy made from an archive records `<archive>::<SOP Instance
    UID>` as its source: the instance's row in that archive (the archive of record)
    names the file, followed through copies of copies.
    """
    from pacs_engine.archive.input_keys import SEPARATOR, container_kind, split_key
    from pacs_engine.read.datasets import _handle

    where, uid = archive_path, sop_instance_uid
    for _ in range(MAX_COPY_DEPTH):
        row = _handle(where).archive.index.get(uid)
        if row is None:
            raise ValueError(f"instance {uid} is not in the archive {where}")
        source = str(row.get("source_path") or "")
        container, member = split_key(source)
        if member is None:
            if os.path.isfile(source):
                return source
            # A key splits only while its container exists: `<archive>::<uid>` whose
            # archive is gone reads as one missing path.
            gone = source.rpartition(SEPARATOR)[0]
            if gone and not os.path.exists(gone):
                raise ValueError(f"instance {uid}: {gone}, which it was copied from, is gone")
            raise ValueError(f"instance {uid}: its original file is not readable: {source!r}")
        if container_kind(container) != "pacs":
            raise ValueError(
                f"instance {uid}: its original is a member of {container} "
                "(pydicom reads files, not members of zip or tar archives)"
            )
        where, uid = container, member
    raise ValueError(f"instance {sop_instance_uid}: more than {MAX_COPY_DEPTH} copies of copies")


def sources(dataset: Any, indices: Sequence[int]) -> list[tuple[str, int]]:
    """The original file (`original_file`) and frame number of each item; ValueError if not."""
    out = []
    for i in indices:
        _, _, _, instance, frame = dataset.table[i].tolist()
        uid = dataset.instances[instance]
        try:
            path = original_file(dataset.archive_path, uid)
        except ValueError as error:
            raise ValueError(f"cannot compare item {i} with pydicom: {error}") from None
        out.append((path, frame))
    return out


def dataloader_rate(
    dataset: Any,
    indices: Sequence[int],
    workers: int,
    batch_size: int,
    start_method: str,
    seed: int = 0,
) -> dict[str, Any]:
    """`indices` read through a torch DataLoader (default collate) with `workers` processes.

    Each worker first reads one warm-up batch of other random items, untimed: the
    workers' start (paid once per epoch, or once with persistent workers) is left out,
    as `run_tasks` leaves it out. Timed from the last warm-up batch to the last
    batch. Needs torch.
    """
    from torch.utils.data import DataLoader

    warm_up = random_indices(len(dataset), batch_size * workers, seed + 1).tolist()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=warm_up + list(indices),
        num_workers=workers,
        multiprocessing_context=start_method,
    )
    frames = nbytes = 0
    started = 0.0
    for k, batch in enumerate(loader):
        if k < workers:  # batches go to the workers in turn: one each
            started = time.monotonic()
            continue
        frames += len(batch["pixels"])
        nbytes += batch["pixels"].numel() * batch["pixels"].element_size()
    return rates("dataloader", workers, frames, nbytes, time.monotonic() - started)


def unbatchable(dataset: Any) -> str:
    """Why PyTorch's default collate cannot batch the dataset's frames ("" when it can)."""
    from pacs_engine.read.datasets import _handle

    pixels = _handle(dataset.archive_path).archive.pixels
    specs = [pixels.spec(path) for path in dataset.arrays]
    sizes = {(s.rows, s.columns, s.samples) for s in specs}
    if dataset.shape is None and len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" + (f"x{n}" if n > 1 else "") for r, c, n in sorted(sizes))
        return f"frames of {len(sizes)} sizes ({shown}): give one frame size (shape)"
    dtypes = {str(s.dtype) for s in specs}
    if dataset.dtype is None and len(dtypes) > 1:
        return f"frames of {len(dtypes)} dtypes ({', '.join(sorted(dtypes))}): rescale or a dtype"
    return ""


def read_bench(
    archive_path: str | os.PathLike[str],
    frames: int = 512,
    workers: Sequence[int] = (1, 2),
    seed: int = 0,
    start_method: str = "spawn",
    compare: bool = False,
    query: dict[str, str] | None = None,
    rescale: bool = False,
    shape: tuple[int, int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Random and sequential frame reads of the archive with each worker count.

    The dataset is `FrameDataset(archive, rescale=rescale, shape=shape)` (frames of
    another size skipped), or with `query` its `from_query(archive, **query)`. Per
    worker count: random `dataset[i]`, sequential `iter_chunks()`, with torch the
    same random frames through a DataLoader (`batch_size`, default collate; what a
    training loop sees), and with `compare` pydicom on the original files
    (`original_file`). `progress`: a tqdm bar on stderr.

    Returns {"archive", "dataset", "dataset_frames", "frames", "seed", "start_method",
    "cpus", "results": [{"mode", "workers", "frames", "bytes", "seconds",
    "frames_per_s", "mb_per_s"}, ...]}.
    """
    import importlib.util

    from tqdm import tqdm

    from pacs_engine.read.datasets import FrameDataset

    if frames < 1:
        raise ValueError(f"frames must be at least 1, not {frames}")
    if not workers or min(workers) < 1:
        raise ValueError(f"workers must be positive counts, not {list(workers)}")
    options: dict[str, Any] = {"rescale": rescale, "shape": shape}
    if query:
        dataset = FrameDataset.from_query(archive_path, **query, **options)
    else:
        dataset = FrameDataset(archive_path, **options)
    if not len(dataset):
        raise ValueError(f"{os.fspath(archive_path)}: no frames to read\n{dataset.report()}")
    indices = random_indices(len(dataset), frames, seed).tolist()
    runs = sequential_runs(dataset.runs(), frames)
    where = sources(dataset, indices) if compare else []
    loader_note = "" if importlib.util.find_spec("torch") else "torch is not installed"
    loader_note = loader_note or unbatchable(dataset)
    results: list[dict[str, Any]] = []
    steps = len(workers) * (2 if not loader_note else 1)
    with tqdm(total=steps, desc="read-bench", unit="step", disable=not progress) as bar:
        for count in workers:
            tasks = [
                ("random", RandomFrames(dataset), [indices[k::count] for k in range(count)]),
                ("sequential", SequentialFrames(dataset), [runs[k::count] for k in range(count)]),
            ]
            if compare:
                tasks.append(("pydicom", PydicomFrames(), [where[k::count] for k in range(count)]))
            bar.set_postfix_str(f"{count} worker(s): {', '.join(t[0] for t in tasks)}")
            results += run_tasks(tasks, count, start_method)
            bar.update()
            if not loader_note:
                bar.set_postfix_str(f"{count} worker(s): dataloader")
                results.append(
                    dataloader_rate(dataset, indices, count, batch_size, start_method, seed)
                )
                bar.update()
    return {
        "archive": dataset.archive_path,
        "dataset": dataset.report(),
        "dataloader": f"not measured: {loader_note}"
        if loader_note
        else f"the random frames in batches of {batch_size}, default collate",
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
        *(f"  {line}" for line in report.get("dataset", "").splitlines()),
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
    if report.get("dataloader"):
        lines.append(f"  dataloader: {report['dataloader']}")
    lines += render_baseline(report)
    return "\n".join(lines)


def render_baseline(report: dict[str, Any]) -> list[str]:
    """The pydicom baseline of a `compare` report, as table lines: random frames' speed-up."""
    lines = []
    rows = {(r["mode"], r["workers"]): r for r in report.get("results", [])}
    for (mode, count), row in rows.items():
        theirs = rows.get(("pydicom", count))
        if mode in ("random", "dataloader") and theirs:
            ratio = row["frames_per_s"] / theirs["frames_per_s"]
            lines.append(f"  {mode} frames, {count} worker(s): archive / pydicom = {ratio:.1f}x")
    return lines
