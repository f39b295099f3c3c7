"""Read-ahead (`pacs_engine.read.readahead`) and `read_bench` / `pacs-engine read-bench`."""

from __future__ import annotations

import gc
import json
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs_engine import Archive
from pacs_engine.read import ReadAhead, read_ahead, read_bench
from pacs_engine.read.bench import render_read_bench
from pacs_engine.read.datasets import FrameDataset
from pacs_engine.read.readahead import THREAD_PREFIX
from tests.conftest import run_cli


def readahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    gc.collect()
    assert not readahead_threads()


class SlowDataset:
    """Items take `delay` seconds (time.sleep releases the GIL); records when each ran."""

    def __init__(self, n: int, delay: float = 0.0, fail: int | None = None) -> None:
        self.n, self.delay, self.fail = n, delay, fail
        self.lock = threading.Lock()
        self.events: list[tuple[str, int]] = []
        self.active = 0
        self.max_active = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        with self.lock:
            self.events.append(("start", i))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            if i == self.fail:
                raise ValueError(f"item {i} is broken")
            return {"i": i, "pixels": np.full((4, 4), i, np.int16)}
        finally:
            with self.lock:
                self.active -= 1
                self.events.append(("end", i))


# --- read-ahead ---------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_same_items_in_the_same_order(threads: int) -> None:
    data = SlowDataset(50)
    order = list(np.random.default_rng(3).permutation(50))
    plain = [data[i]["i"] for i in order]
    with ReadAhead(data, order, depth=6, threads=threads) as ahead:
        got = [item["i"] for item in ahead]
    assert got == plain == [int(i) for i in order]


def test_iterable_source_and_prefetch_zero() -> None:
    assert [x * 2 for x in ReadAhead(iter(range(100)), depth=3)] == list(range(0, 200, 2))
    assert list(read_ahead(range(10))) == list(range(10))
    got = [d["i"] for d in read_ahead(SlowDataset(5), [4, 0, 2], prefetch=0)]
    assert got == [4, 0, 2]
    got = [d["i"] for d in read_ahead(SlowDataset(5), [4, 0, 2], prefetch=2, threads=2)]
    assert got == [4, 0, 2]
    assert list(read_ahead(lambda i: i + 1, [1, 2, 3], prefetch=2)) == [2, 3, 4]


@pytest.mark.parametrize("threads", [1, 2])
def test_an_exception_surfaces_at_its_position(threads: int) -> None:
    data = SlowDataset(20, fail=7)
    got = []
    with pytest.raises(ValueError, match="item 7 is broken"):
        for item in ReadAhead(data, range(20), depth=4, threads=threads):
            got.append(item["i"])
    assert got == list(range(7))
    assert not readahead_threads()


def test_an_exception_in_an_iterable_surfaces_at_its_position() -> None:
    def items():
        yield from range(5)
        raise KeyError("boom")

    got = []
    ahead = ReadAhead(items(), depth=2)
    with pytest.raises(KeyError, match="boom"):
        for x in ahead:
            got.append(x)
    assert got == list(range(5))
    assert not readahead_threads()


def test_early_break_leaves_no_threads_running() -> None:
    data = SlowDataset(1000, delay=0.002)
    ahead = ReadAhead(data, range(1000), depth=8, threads=2)
    for item in ahead:
        if item["i"] == 3:
            break
    ahead.close()
    assert not readahead_threads()
    started = {i for kind, i in data.events if kind == "start"}
    assert max(started) < 3 + 1 + 8 + 2  # only the window ahead was ever requested

    # dropped without close(): the iterator's finaliser stops the threads
    for item in ReadAhead(data, range(1000), depth=8, threads=2):
        if item["i"] == 2:
            break
    gc.collect()
    assert not readahead_threads()

    # an iterable source blocked on its full queue, and a `with` block
    stopped = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            stopped.set()

    with ReadAhead(endless(), depth=2) as ahead:
        assert next(ahead) == 0
        time.sleep(0.05)  # let the producer fill the queue and block
    assert stopped.is_set()  # the generator was closed
    assert not readahead_threads()
    for x in ReadAhead(endless(), depth=2):
        if x == 1:
            break
    gc.collect()
    assert not readahead_threads()


def test_two_threads_overlap_and_stay_within_depth() -> None:
    data = SlowDataset(24, delay=0.02)
    consumed_before_started: dict[int, int] = {}
    consumed = 0
    with ReadAhead(data, range(24), depth=4, threads=2) as ahead:
        for item in ahead:
            consumed += 1
            with data.lock:
                for kind, i in data.events:
                    if kind == "start":
                        consumed_before_started.setdefault(i, consumed)
            assert item["i"] == consumed - 1
    # two items were read at the same time: item k+1 started before item k ended
    assert data.max_active == 2
    starts_and_ends = data.events
    overlaps = 0
    for k in range(23):
        if starts_and_ends.index(("start", k + 1)) < starts_and_ends.index(("end", k)):
            overlaps += 1
    assert overlaps >= 6
    # never more than `depth` items requested ahead of the consumer
    for kind, i in data.events:
        if kind == "start":
            assert i < consumed_before_started[i] + 4

    one = SlowDataset(8, delay=0.005)
    assert [d["i"] for d in ReadAhead(one, range(8), depth=4, threads=1)] == list(range(8))
    assert one.max_active == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ReadAhead([1], [0], depth=0)
    with pytest.raises(ValueError):
        read_ahead([1], [0], prefetch=-1)


def test_read_ahead_on_frame_dataset(small_archive: Path) -> None:
    dataset = FrameDataset(small_archive)
    order = list(np.random.default_rng(0).permutation(len(dataset)))
    with ReadAhead(dataset, order, depth=8, threads=2) as ahead:
        got = list(ahead)
    assert [g["sop_instance_uid"] for g in got] == [
        dataset[int(i)]["sop_instance_uid"] for i in order
    ]
    for g, i in zip(got, order, strict=True):
        assert np.array_equal(g["pixels"], dataset[int(i)]["pixels"])
    chunks = list(read_ahead(dataset.iter_chunks(), prefetch=4))
    plain = list(dataset.iter_chunks())
    assert len(chunks) == len(plain) == len(dataset)
    for a, b in zip(chunks, plain, strict=True):
        assert a["sop_instance_uid"] == b["sop_instance_uid"] and a["frame"] == b["frame"]
        assert np.array_equal(a["pixels"], b["pixels"])


# --- read-bench ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pacs_engine.synth import write_studies

    root = tmp_path_factory.mktemp("readbench")
    files = write_studies(
        root / "src", 1, 2, 16, rows=128, columns=128, seed=1, syntaxes=("explicit",)
    )
    archive = Archive.create(root / "archive")
    with archive:
        report = archive.ingest([str(p) for p in files], workers=0)
    assert report.balanced and report.archived == 32
    return root / "archive"


def check_report(report: dict, frames: int, workers: list[int]) -> None:
    assert report["frames"] == frames
    assert report["dataset_frames"] == 32
    rows = report["results"]
    assert [(r["mode"], r["workers"]) for r in rows] == [
        (mode, w) for w in workers for mode in ("random", "sequential", "dataloader")
    ]
    for row in rows:
        assert set(row) == {
            "mode",
            "workers",
            "frames",
            "bytes",
            "seconds",
            "frames_per_s",
            "mb_per_s",
        }
        assert row["frames"] == frames
        assert row["bytes"] == frames * 128 * 128 * 2
        assert row["seconds"] > 0 and row["frames_per_s"] > 0 and row["mb_per_s"] > 0


def test_read_bench_function(small_archive: Path) -> None:
    # more frames than stored: random repeats, sequential wraps round; 3 workers split 45
    report = read_bench(small_archive, frames=45, workers=[1, 3], seed=2)
    check_report(report, 45, [1, 3])


def test_read_bench_cli_json_and_table(small_archive: Path) -> None:
    # fork: spawned workers (each importing torch for the DataLoader row) are covered above
    fork = ("--start-method", "fork")
    done = run_cli(
        "read-bench", str(small_archive), "--frames", "20", "--workers", "2", "--json", *fork
    )
    assert done.returncode == 0, done.stderr
    check_report(json.loads(done.stdout), 20, [2])
    done = run_cli("read-bench", str(small_archive), "--frames", "8", "--workers", "1", *fork)
    assert done.returncode == 0, done.stderr
    assert "frames/s" in done.stdout and "sequential" in done.stdout
    done = run_cli("read-bench", str(small_archive.parent / "nothing"))
    assert done.returncode == 2 and "not an archive" in done.stderr


def test_read_bench_compare_measures_pydicom_in_the_same_run(small_archive: Path) -> None:
    report = read_bench(small_archive, frames=6, workers=[1], compare=True, start_method="fork")
    assert [(r["mode"], r["workers"]) for r in report["results"]] == [
        ("random", 1),
        ("sequential", 1),
        ("pydicom", 1),
        ("dataloader", 1),
    ]
    assert all(r["frames"] == 6 and r["bytes"] == 6 * 128 * 128 * 2 for r in report["results"])
    assert "archive / pydicom" in render_read_bench(report)
    without = read_bench(small_archive, 2, [1], start_method="fork")
    assert "archive / pydicom" not in render_read_bench(without)
    done = run_cli(
        "read-bench", str(small_archive), "--frames", "4", "--workers", "1", "--compare",
        "--start-method", "fork",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "archive / pydicom" in done.stdout


def test_read_bench_compare_needs_the_original_files(tmp_path: Path) -> None:
    """The pydicom baseline reads the files the rows name: gone, read-bench says which."""
    from pacs_engine.synth import write_studies

    files = write_studies(tmp_path / "src", 1, 1, 2, rows=16, columns=16, seed=3)
    with Archive.create(tmp_path / "archive") as archive:
        assert archive.ingest([str(p) for p in files], workers=0).archived == 2
    for path in files:
        path.unlink()
    done = run_cli("read-bench", str(tmp_path / "archive"), "--frames", "2", "--compare")
    assert done.returncode == 2, done.stderr
    assert "cannot compare item" in done.stderr and "is not readable" in done.stderr
    again = run_cli("read-bench", str(tmp_path / "archive"), "--frames", "2", "--workers", "1")
    assert again.returncode == 0, again.stderr


def test_the_benchmark_comparisons_per_codec_and_volume(small_archive: Path) -> None:
    """`benchmarks/read_compare.py` (kept out of the product): per codec and per volume."""
    from benchmarks.read_compare import by_codec, frame_costs, render_comparison, volume_comparison

    dataset = FrameDataset(small_archive)
    report = read_bench(small_archive, frames=6, workers=[1], compare=True)
    report["by_codec"] = by_codec(frame_costs(dataset, list(range(6))))
    *groups, total = report["by_codec"]
    assert (total["modality"], total["codec"], total["frames"]) == ("all", "all", 6)
    assert sum(g["frames"] for g in groups) == 6
    assert all(g["vs_pydicom"] > 0 and g["of_codec"] > 0 for g in report["by_codec"])
    report["volumes"] = volume_comparison(small_archive, [1])
    volumes = report["volumes"]  # two 16-slice series, checked equal to pydicom's
    assert (volumes["series"], volumes["slices"]) == (2, 32)
    assert set(volumes["archive_s"]) == {1}
    table = "\n".join(render_comparison(report))
    assert "archive / pydicom" in table and "of codec" in table and "decode thread" in table


class _SleepyReader:
    """A reader whose part is how long it takes (seconds): one worker ends long before the other."""

    def read(self, part: float) -> tuple[int, int]:
        time.sleep(part)
        return 1, 8


def test_a_worker_that_finishes_first_is_not_taken_for_dead() -> None:
    from pacs_engine.read.bench import run_tasks

    (result,) = run_tasks([("uneven", _SleepyReader(), [0.0, 2.5])], 2, start_method="fork")
    assert result["frames"] == 2 and result["bytes"] == 16


def test_compare_on_a_copy_finds_the_originals_through_the_archive_of_record(
    small_archive: Path, tmp_path: Path
) -> None:
    """A read-optimised copy names `<archive>::<uid>`: the archive of record names the file."""
    from pacs_engine.read.bench import original_file, sources

    copy = tmp_path / "copy"
    with Archive.create(copy, codec="lz4", transcode=True) as archive:
        assert archive.ingest([str(small_archive)], workers=0).archived == 32
    dataset = FrameDataset(copy)
    with Archive(small_archive) as of_record, Archive(copy) as copied:
        for uid in dataset.instances:
            assert str(copied.index.get(uid)["source_path"]) == f"{small_archive}::{uid}"
            assert original_file(str(copy), uid) == of_record.index.get(uid)["source_path"]
    where = sources(dataset, range(len(dataset)))
    for k, (path, frame) in enumerate(where):  # the very pixels the archive holds
        assert frame == 0
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, dataset[k]["pixels"])
    report = read_bench(copy, frames=4, workers=[1], compare=True, start_method="fork")
    assert [r["mode"] for r in report["results"]] == [
        "random",
        "sequential",
        "pydicom",
        "dataloader",
    ]
    # Without the archive of record, read-bench says why it cannot compare.
    moved = tmp_path / "moved"
    small_archive.rename(moved)
    try:
        done = run_cli("read-bench", str(copy), "--frames", "2", "--compare", "--workers", "1")
    finally:
        moved.rename(small_archive)
    assert done.returncode == 2
    assert f"{small_archive}, which it was copied from, is gone" in done.stderr, done.stderr


def test_read_bench_query_filter_progress_and_what_a_dataloader_sees(
    small_archive: Path, tmp_path: Path
) -> None:
    with Archive(small_archive) as archive:
        series = archive.query(level="series")
    assert len(series) == 2
    uid = series[0]["SeriesInstanceUID"]
    done = run_cli(
        "read-bench", str(small_archive), "--frames", "20", "--workers", "2", "--json",
        "--query", f"SeriesInstanceUID={uid}", "--rescale", "--batch", "4",
        "--start-method", "fork",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dataset_frames"] == 16  # one series of two
    assert f"selected by the series query {{'SeriesInstanceUID': '{uid}'}}" in report["dataset"]
    assert report["dataloader"] == "the random frames in batches of 4, default collate"
    loader = [r for r in report["results"] if r["mode"] == "dataloader"]
    assert [(r["workers"], r["frames"]) for r in loader] == [(2, 20)]
    assert loader[0]["bytes"] == 20 * 128 * 128 * 4  # float32 modality values, collated
    assert "read-bench: 100%" in done.stderr  # the progress bar, on stderr
    done = run_cli("read-bench", str(small_archive), "--query", "NoSuchKey=1")
    assert done.returncode == 2 and "NoSuchKey" in done.stderr
    done = run_cli("read-bench", str(small_archive), "--query", "Modality")
    assert done.returncode == 2 and "KEY=VALUE" in done.stderr


def test_read_bench_says_why_a_dataloader_cannot_batch_mixed_sizes(tmp_path: Path) -> None:
    from pacs_engine.synth import write_studies

    files = write_studies(tmp_path / "a", 1, 1, 2, rows=16, columns=16, seed=3)
    files += write_studies(tmp_path / "b", 1, 1, 2, rows=24, columns=16, seed=4)
    with Archive.create(tmp_path / "archive") as archive:
        assert archive.ingest([str(p) for p in files], workers=0).archived == 4
    report = read_bench(tmp_path / "archive", frames=4, workers=[1], start_method="fork")
    assert report["dataloader"] == (
        "not measured: frames of 2 sizes (16x16, 24x16): give one frame size (shape)"
    )
    assert [r["mode"] for r in report["results"]] == ["random", "sequential"]
    report = read_bench(
        tmp_path / "archive", frames=4, workers=[1], shape=(24, 16), start_method="fork"
    )
    assert report["dataset_frames"] == 2
    assert [r["mode"] for r in report["results"]][-1] == "dataloader"
