"""Where an ingest's time goes (issue 18): the per-process stage times of the report.

Also the shortcut that lets ingest skip copying native pixels to compare them
(`plain_layout`), checked against the round trip it stands for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import zarr
from conftest import corpus_files, pydicom_test_files, require_corpus

from pacs_engine import Archive, ScanError, storage
from pacs_engine.archive import pixel_store
from pacs_engine.archive.pixel_store import READ_OPTIMISED, ArraySpec, PixelStore
from pacs_engine.archive.prepare import plain_layout
from pacs_engine.archive.quarantine import NOT_DICOM
from pacs_engine.archive.report import IngestReport, Outcome
from pacs_engine.cli.ingest import _render_report
from pacs_engine.codecs import (
    JpegLsCodec,
    JpegXlCodec,
    choose_codec,
    pass_through_codec,
)
from pacs_engine.codecs.blosc import general_blosc
from pacs_engine.codecs.native import PixelLayout, to_array, to_bytes
from pacs_engine.codecs.registry import ARCHIVE_BY_NAME, as_zarr
from pacs_engine.executors import InlineExecutor
from pacs_engine.index import Index
from pacs_engine.ingest import Progress, encode, inputs, run, tasks
from pacs_engine.ingest.journal import Journal, Planned, _key, plan_order
from pacs_engine.scanning import scan
from pacs_engine.stages import StageClock
from pacs_engine.storage import DeferredWrites, fsync_dirs, unused_path, write_atomic
from pacs_engine.synth import write_series

#: Stages every worker of a run on uncompressed corpus files goes through.
WORKER_STAGES = {"read", "scan", "prepare", "hash", "encode", "header", "write", "fsync"}


def _uncompressed_corpus(count: int) -> list[Path]:
    """Up to `count` uncompressed CT and MR corpus files (not malformed/), in manifest order."""
    require_corpus()
    found = []
    for path in corpus_files():
        if "malformed" in path.parts or not path.is_file():
            continue
        try:
            header = scan(path)
        except ScanError:  # not every corpus file scans: those are other tests' business
            continue
        explicit_or_implicit = header.transfer_syntax_uid in (
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2",
        )
        if header.get("Modality") in ("CT", "MR") and explicit_or_implicit and header.pixel:
            found.append(path)
        if len(found) == count:
            break
    return found


def test_a_real_run_reports_each_workers_stages(tmp_path: Path) -> None:
    files = _uncompressed_corpus(60)
    assert len(files) == 60
    source = tmp_path / "in"
    source.mkdir()
    for i, path in enumerate(files):
        shutil.copyfile(path, source / f"{i:03d}.dcm")
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([source], workers=2).to_dict()
        assert archive.verify().ok
    assert report["archived"] + report["duplicates"] == 60
    stages = report["stage_seconds"]
    workers = [p for p in stages if p.startswith("worker ")]
    assert workers and set(workers) <= {"worker 1", "worker 2"}
    assert set(stages) == {*workers, "main"}
    working = report["phase_seconds"]["scan"] + report["phase_seconds"]["encode"]
    for worker in workers:
        times = stages[worker]
        assert set(times) >= WORKER_STAGES
        assert all(t["cpu"] >= 0 and t["wall"] >= 0 for t in times.values())
        busy = sum(t["wall"] for name, t in times.items() if name != "idle")
        # A worker's tasks run inside the scan and encode phases; rounding: 1 ms a stage.
        assert busy <= working + 0.001 * len(times)
        assert busy + times.get("idle", {"wall": 0})["wall"] >= working - 0.001 * len(times)
    every = {name for worker in workers for name in stages[worker]}
    assert {"arrays", "choose"} <= every  # a new archive: each array created, a codec chosen
    assert "commit" in stages["main"]
    assert stages["main"]["commit"]["wall"] <= report["seconds"]
    text = _render_report(report)
    for worker in workers:
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{worker}:"))
        assert "encode " in line and "fsync " in line
    # Stages are listed largest first: main's commit need not lead its line.
    main_line = next(line for line in text.splitlines() if line.strip().startswith("main:"))
    assert "commit " in main_line


def test_a_run_in_this_process_counts_its_tasks_apart_from_its_own_work(tmp_path: Path) -> None:
    files = _uncompressed_corpus(5)
    source = tmp_path / "in"
    source.mkdir()
    for i, path in enumerate(files):
        shutil.copyfile(path, source / f"{i}.dcm")
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([source], workers=0).to_dict()
    stages = report["stage_seconds"]
    assert set(stages) == {"this process", "main"}
    assert "idle" not in stages["this process"]
    assert {"read", "encode", "fsync"} <= set(stages["this process"])


def test_nested_stages_are_charged_exclusively() -> None:
    clock = StageClock()
    started = time.perf_counter()
    with clock.stage("outer"):
        time.sleep(0.01)
        with clock.stage("inner"):
            time.sleep(0.02)
        with clock.stage("outer"):  # the same name again, nested: one total
            time.sleep(0.01)
    total = time.perf_counter() - started
    times = clock.take()
    assert set(times) == {"outer", "inner"}
    assert times["inner"][1] >= 0.02
    assert times["outer"][1] >= 0.02
    assert times["outer"][1] + times["inner"][1] <= total + 1e-6
    assert clock.take() == {}  # taken: the clock starts again


LAYOUTS = [
    PixelLayout.from_attributes(
        {
            "Rows": 4,
            "Columns": 6,
            "NumberOfFrames": 2,
            "SamplesPerPixel": samples,
            "BitsAllocated": bits,
            "BitsStored": min(bits, 12) if bits > 1 else 1,
            "PixelRepresentation": signed,
            "PlanarConfiguration": planar,
            "PhotometricInterpretation": photometric,
        },
        keyword,
    )
    for bits, signed, (samples, planar, photometric), keyword in itertools.product(
        (1, 8, 16, 32),
        (0, 1),
        ((1, 0, "MONOCHROME2"), (3, 0, "RGB"), (3, 1, "RGB"), (3, 0, "YBR_FULL_422")),
        ("PixelData",),
    )
    if not (bits == 1 and samples == 3)
]


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: repr(layout)[:90])
def test_a_plain_layout_round_trips_every_value(layout: PixelLayout, little_endian: bool) -> None:
    """Where `plain_layout` says so, to_bytes(to_array(v)) is v's first bytes, for any v."""
    value = np.random.default_rng(7).integers(0, 256, layout.encoded_bytes + 3, np.uint8)
    data = value.tobytes()
    rebuilt = to_bytes(to_array(data, layout, little_endian), layout, little_endian)
    if plain_layout(layout, little_endian):
        assert rebuilt == data[: layout.encoded_bytes]


def test_the_usual_layouts_are_plain_and_the_others_are_not() -> None:
    def layout(**changes: object) -> PixelLayout:
        attributes = {"Rows": 2, "Columns": 2, "BitsAllocated": 16, "BitsStored": 12}
        return PixelLayout.from_attributes({**attributes, **changes}, "PixelData")

    assert plain_layout(layout(), True)  # CT, MR
    assert plain_layout(layout(BitsAllocated=8, BitsStored=8, SamplesPerPixel=3), True)
    assert not plain_layout(layout(), False)
    assert not plain_layout(layout(BitsAllocated=1, BitsStored=1), True)
    assert not plain_layout(layout(SamplesPerPixel=3, PlanarConfiguration=1), True)
    ybr = layout(SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL_422", BitsAllocated=8)
    assert not plain_layout(ybr, True)


def _specs() -> list[ArraySpec]:
    """Array specs as ingest makes them: each archive codec, Blosc, the read-optimised ones."""
    sample = np.random.default_rng(3).integers(0, 4096, (64, 64), np.uint16)
    specs = []
    for name in ARCHIVE_BY_NAME:
        specs.append(ArraySpec(64, 64, 1, np.dtype("u2"), ARCHIVE_BY_NAME[name](), (), 64))
    specs.append(ArraySpec(64, 64, 1, np.dtype("u2"), choose_codec(sample), (), 32))
    blosc = general_blosc(np.dtype("i2"))
    specs.append(ArraySpec(512, 512, 1, np.dtype("i2"), None, (blosc,), 64))
    specs.append(ArraySpec(48, 40, 3, np.dtype("u1"), None, READ_OPTIMISED["lz4"](np.dtype("u1"))))
    specs.append(ArraySpec(2048, 3000, 1, np.dtype("u2"), None, (), 16, 1024))  # tiled
    specs.append(ArraySpec(8, 8, 1, np.dtype("f4"), None, (), 64))
    # The same codecs in other geometries (zarr's metadata is made once per codec): the
    # geometry set in it must be what zarr would have written.
    for name in ARCHIVE_BY_NAME:
        specs.append(ArraySpec(100, 50, 1, np.dtype("u2"), ARCHIVE_BY_NAME[name](), (), 64))
    specs.append(ArraySpec(512, 256, 1, np.dtype("i2"), None, (blosc,), 64))
    specs.append(ArraySpec(30, 20, 3, np.dtype("u1"), None, READ_OPTIMISED["lz4"](np.dtype("u1"))))
    specs.append(ArraySpec(3000, 2500, 1, np.dtype("u2"), None, (), 16, 512))
    specs.append(ArraySpec(20, 30, 1, np.dtype("u2"), None, (), 16))  # untiled, after tiled
    specs.append(ArraySpec(20, 30, 1, np.dtype("u2"), None, (), 16, separator="."))  # copies'
    # Every dtype the archive holds, codecs with a non-default configuration, a
    # pass-through codec with its compressor: the JSON is built without zarr for each.
    for dtype in ("i1", "u4", "i4", "f8"):
        specs.append(ArraySpec(6, 5, 1, np.dtype(dtype), None, (), 8))
    specs.append(ArraySpec(9, 7, 1, np.dtype("i2"), JpegLsCodec(precision="dtype"), (), 4))
    specs.append(ArraySpec(9, 7, 4, np.dtype("u1"), JpegXlCodec(effort=7), (), 4))
    rle = pass_through_codec(
        "1.2.840.10008.1.2.5",
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        bits_stored=12,
        pixel_representation=1,
        samples_per_pixel=1,
        planar_configuration=0,
    )
    compressors = encode.BITSTREAM_COMPRESSORS[rle.codec_name]
    specs.append(ArraySpec(9, 7, 1, np.dtype("i2"), rle, compressors, 64))
    return specs


@pytest.mark.parametrize(
    "spec", _specs(), ids=lambda s: f"{s.codec}-{s.compressors}-{s.tile}-{s.separator}"
)
def test_an_array_is_created_with_the_metadata_zarr_writes(spec: ArraySpec, tmp_path: Path) -> None:
    """ensure_array writes zarr.json itself: byte for byte what zarr's create_array writes."""
    attributes = {"photometric_interpretation": "MONOCHROME2", "bits_stored": 12, "é": [1]}
    ours = PixelStore(tmp_path / "ours")
    ours.create()
    ours.ensure_array("1.2.3", "k", spec, attributes)
    theirs = zarr.open_group(tmp_path / "theirs", mode="w", zarr_format=3).require_group("1.2.3")
    options: dict = {"compressors": [blosc.to_zarr() for blosc in spec.compressors] or None}
    if spec.codec is not None:
        options["serializer"] = as_zarr(spec.codec)
    theirs.create_array(
        "k",
        shape=(0, *spec.frame_shape),
        chunks=spec.chunk_shape,
        shards=spec.shard_shape,
        dtype=spec.dtype,
        fill_value=0,
        attributes=attributes,
        chunk_key_encoding={"name": "default", "separator": spec.separator},
        **options,
    )
    for name in ("zarr.json", "1.2.3/zarr.json", "1.2.3/k/zarr.json"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes()
    array = zarr.open_array(tmp_path / "ours" / "1.2.3" / "k", mode="r")
    assert array.shape == (0, *spec.frame_shape) and dict(array.attrs) == attributes
    assert ours.spec("1.2.3/k") == spec


def test_the_largest_series_is_encoded_first(tmp_path: Path) -> None:
    # Sent largest first, the last tasks of a run are small ones, so the workers end
    # together. A small series' part is held for a batch: the batch lists them in the
    # order they went out. One index transaction commits the series a batch completes.
    sizes = {0: 2, 1: 7, 2: 4, 3: 3}  # series number -> slices
    uids = {
        number: _series(tmp_path / "in", number, slices, modality="CT")
        for number, slices in sizes.items()
    }
    archived_after_each_commit: list[int] = []

    def seen(progress: Progress) -> None:
        if progress.phase == "encoding":
            archived_after_each_commit.append(progress.report.to_dict()["archived"])

    executor = _Counting()
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([tmp_path / "in"], executor=executor, progress=seen).to_dict()
        assert archive.verify().ok
    assert report["archived"] == sum(sizes.values()) == 16
    assert executor.batches == [[uids[1], uids[2], uids[3], uids[0]]]
    assert archived_after_each_commit == [16]


class _Counting(InlineExecutor):
    """Runs tasks in this process, noting the parts of each encode task sent."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []  # per encode task, the series of its parts

    def submit(self, fn: Any, *args: Any) -> Any:
        task, _, _, *task_args = args  # session.guarded(task, root, session, *task_args)
        if task is tasks.encode_batch:
            self.batches.append([part.series_uid for part in task_args[0]])
        return super().submit(fn, *args)


def _series(folder: Path, number: int, slices: int, modality: str = "MR", size: int = 32) -> str:
    """Write one synthetic series; its Series Instance UID."""
    paths = write_series(
        folder, 5, 0, number, slices, modality=modality, syntax="explicit", rows=size, columns=size
    )
    return str(scan(paths[0])["SeriesInstanceUID"])


def test_a_resumed_session_checkpoints_its_own_stages_beside_the_earlier_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's checkpoints hold its own stage times, and the run record they rewrite the
    earlier sessions' as saved (with this session's added there too, a kill -9 would count
    them twice when the run resumes); its report sums both."""
    for number in range(5):
        _series(tmp_path / "in", number, 64)  # a part, a commit each
    write, calls = pixel_store.write_atomic, {"n": 0}

    def fills_up(path: Any, data: bytes, dirs: Any = None, **options: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data, dirs, **options)

    monkeypatch.setattr(pixel_store, "write_atomic", fills_up)
    with Archive.create(tmp_path / "a") as archive, pytest.raises(run.IngestStopped):
        archive.ingest([tmp_path / "in"], workers=0)
    monkeypatch.setattr(pixel_store, "write_atomic", write)
    checkpoints: list[dict] = []
    checkpoint = Journal.checkpoint

    def kept(self: Journal, *args: Any) -> dict[bytes, bytes | None]:
        entries = checkpoint(self, *args)
        checkpoints.extend(json.loads(value) for value in entries.values() if value is not None)
        return entries

    monkeypatch.setattr(Journal, "checkpoint", kept)
    monkeypatch.setattr(run, "CHECKPOINT_SECONDS", 0.0)  # one with every commit
    with Archive.open_or_create(tmp_path / "a") as archive:
        (saved,) = Journal(archive.index).unfinished()
        report = archive.ingest([tmp_path / "in"], workers=0).to_dict()
    assert report["resumed"] == 1 and report["archived"] == 5 * 64
    earlier = saved["stages"]  # [CPU, wall] by process and stage
    assert earlier["this process"]["encode"][0] > 0
    assert len(checkpoints) >= 2
    assert all(entry["stages"] == earlier for entry in checkpoints)
    last = checkpoints[-1]["session"]["stages"]
    assert last["this process"]["encode"][0] > 0 and "commit" in last["main"]
    for process, times in last.items():
        for name, (cpu, wall) in times.items():
            summed = earlier.get(process, {}).get(name, [0.0, 0.0])
            reported = report["stage_seconds"][process][name]
            assert reported["cpu"] >= round(summed[0] + cpu, 3) - 0.001, (process, name)
            assert reported["wall"] >= round(summed[1] + wall, 3) - 0.001, (process, name)


def test_small_series_and_the_end_of_a_large_one_go_to_a_worker_in_one_task(
    tmp_path: Path,
) -> None:
    # A task per series would cost each small series a round trip and the fixed
    # costs of a task: parts of less than a shard's frames are sent together, about a
    # shard's frames a task; whole parts still go alone.
    large = _series(tmp_path / "in", 0, 70)  # a whole part (64 frames) and a tail of 6
    small = [_series(tmp_path / "in", number, 3) for number in range(1, 7)]
    executor = _Counting()
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([tmp_path / "in"], executor=executor).to_dict()
        assert archive.verify().ok
        assert len(archive.index) == 70 + 6 * 3
    assert report["archived"] == 88 and report["balanced"]
    assert executor.batches == [[large], [large, *sorted(small)]]


def test_a_batch_chooses_a_codec_once_per_modality_and_kind_of_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[int] = []

    def counted(sample: np.ndarray, *args: Any, **options: Any) -> Any:
        chosen.append(sample.size)
        return choose_codec(sample, *args, **options)

    monkeypatch.setattr(encode, "choose_codec", counted)
    mr = [_series(tmp_path / "in", number, 2) for number in range(3)]
    ct = _series(tmp_path / "in", 3, 2, modality="CT")
    executor = _Counting()
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], executor=executor)
        assert archive.verify().ok
        codecs = {
            s: {archive.pixels.spec(p).codec_name for p in archive.pixels.arrays(s)}
            for s in [*mr, ct]
        }
    assert len(executor.batches) == 1  # 8 frames: one task
    assert len(chosen) == 2  # once for the MR series, once for the CT one
    assert all(len(names) == 1 for names in codecs.values())  # one array, one codec each
    assert len({name for s in mr for name in codecs[s]}) == 1  # the MR series share theirs


def test_a_choice_on_the_whole_frame_gives_that_frame_its_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small series' codec choice encodes its first frame with each candidate: the chosen
    # one's encoding is that frame's chunk, not encoded a fourth time.
    encoded: list[int] = []

    def counted(spec: ArraySpec, tile: np.ndarray) -> bytes:
        encoded.append(tile.size)
        return pixel_store.encode_chunk(spec, tile)

    monkeypatch.setattr(encode, "encode_chunk", counted)
    mr = [_series(tmp_path / "in", number, 2) for number in range(3)]
    ct = _series(tmp_path / "in", 3, 2, modality="CT")
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], executor=_Counting())
        assert archive.verify().ok
        for series in [*mr, ct]:
            (path,) = archive.pixels.arrays(series)
            spec = archive.pixels.spec(path)
            first = archive.pixels.read_frames(path, [0])[0]
            # Byte for byte the chunk a fresh encode of the frame gives
            assert archive.pixels.read_chunks(path, 0, 1) == [pixel_store.encode_chunk(spec, first)]
    # 8 frames of 32 x 32, two choices (MR, CT) judged on the whole frame: 6 encodes
    assert encoded == [32 * 32] * 6


@pytest.mark.parametrize(
    ("shape", "frames", "pixels"),
    [
        ((512, 512), 1, 512 * 512 // 4),  # one frame: a quarter of it
        ((512, 512), 2, 256 * 256),  # never more than 256 x 256
        ((512, 512), 64, 256 * 256),
        ((256, 256), 4, 256 * 256),  # as many frames as CHOICE_SHARE: the whole sample
        ((256, 256), 2, 256 * 256 // 2),
        ((1024, 1024), 64, 256 * 256),
        ((64, 64), 1, 64 * 64),  # never less than 64 x 64
        ((16, 16), 1, 64 * 64),
    ],
)
def test_a_codec_for_a_few_frames_is_chosen_on_part_of_the_sample(
    shape: tuple[int, int], frames: int, pixels: int
) -> None:
    assert encode.choice_pixels(np.zeros(shape, np.uint16), frames) == pixels


def test_a_one_frame_series_chooses_its_codec_on_a_central_part_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    def counted(sample: np.ndarray, *args: Any, max_pixels: int = 512 * 512, **options: Any) -> Any:
        asked.append(max_pixels)
        return choose_codec(sample, *args, max_pixels=max_pixels, **options)

    monkeypatch.setattr(encode, "choose_codec", counted)
    _series(tmp_path / "in", 0, 1, modality="CT", size=256)
    _series(tmp_path / "in", 1, 8, modality="MR", size=256)
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], workers=0)
        assert archive.verify().ok
    assert sorted(asked) == [256 * 256 // 4, 256 * 256]  # 8 frames: capped at 256 x 256


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome("a.dcm", "archived", 10, raw=20, stored=5, sop="1.2", version=True),
        Outcome("b.dcm", "quarantined", 3, reason="not DICOM: é"),
        Outcome("c.dcm", "archived", 10, undecoded=True, not_verified="no decoder"),
        Outcome("d.dcm", "duplicate"),
    ],
)
def test_an_outcome_is_journaled_as_its_fields_that_are_set(outcome: Outcome) -> None:
    # Written without dataclasses.asdict (a deep copy per input): the same bytes.
    expected = json.dumps({k: v for k, v in dataclasses.asdict(outcome).items() if v}).encode()
    assert outcome.to_bytes() == expected
    assert Outcome.from_bytes(outcome.to_bytes()) == outcome


def test_outcomes_counted_in_a_block_that_fails_are_uncounted() -> None:
    """What a commit's outcomes added is put back when its transaction fails, every count
    `count` changes (an outcome of each kind touches them all); kept when it commits."""
    report = IngestReport()
    report.count(Outcome("0.dcm", "archived", 7, raw=8, stored=4))
    report.count(Outcome("1.dcm", "quarantined", 2, reason=f"{NOT_DICOM}: no preamble"))
    before = report.to_dict()
    outcomes = [
        Outcome("a.dcm", "archived", 10, raw=20, stored=5, version=True, undecoded=True),
        Outcome("b.dcm", "archived", 9, raw=9, stored=9, not_verified="no decoder"),
        Outcome("c.dcm", "quarantined", 3, reason=f"{NOT_DICOM}: too short"),
        Outcome("d.dcm", "quarantined", 3, reason="truncated: at 12"),
        Outcome("e.dcm", "conflict", 4, reason="conflict: different pixels"),
        Outcome("f.dcm", "duplicate", 5),
    ]
    with pytest.raises(OSError), report.counting():
        for outcome in outcomes:
            report.count(outcome)
        raise OSError(errno.ENOSPC, "No space left on device")
    assert report.to_dict() == before
    with report.counting():
        for outcome in outcomes:
            report.count(outcome)
    after = report.to_dict()
    changed = {key for key in after if after[key] != before[key]}
    assert changed >= {
        "inputs",
        "input_bytes",
        "archived",
        "versions",
        "archived_undecoded",
        "not_verified",
        "raw_pixel_bytes",
        "stored_bytes",
        "duplicates",
        "conflicts",
        "quarantined",
        "quarantine_reasons",
        "not_dicom",
    }
    assert after["inputs"] == 8 and after["not_dicom"] == ["1.dcm", "c.dcm"]


def test_series_are_sent_largest_in_pixel_bytes_first(tmp_path: Path) -> None:
    # By frames, six 16 x 16 slices would go before two 128 x 128 ones, which hold 10x
    # their bytes: a run of many small frames would end on a worker alone with large ones.
    few_large = _series(tmp_path / "in", 0, 2, size=128)
    many_small = _series(tmp_path / "in", 1, 6, size=16)
    executor = _Counting()
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], executor=executor)
        assert archive.verify().ok
    assert executor.batches == [[few_large, many_small]]


def test_a_plan_written_before_pixel_bytes_were_planned_is_read(tmp_path: Path) -> None:
    with Archive.create(tmp_path / "a") as archive:
        journal = Journal(archive.index)
        run = journal.start(["/nowhere"])["run"]
        planned = Planned("/nowhere/1.dcm", "1.2.3", "1.2.3.4", 1, 2, 2048)
        journal.record(run, [], [planned])
        assert list(journal.series(run, "1.2.3")) == [planned]
        old = json.dumps({"frames": 2, "key": planned.key}).encode()  # no pixel_bytes
        archive.index.commit([], journal={_key(b"p", run, *plan_order(planned)): old})
        assert list(journal.series(run, "1.2.3")) == [dataclasses.replace(planned, pixel_bytes=0)]


def test_deferred_writes_appear_whole_once_all_are_synced(tmp_path: Path) -> None:
    writes = DeferredWrites()
    for n in range(5):
        write_atomic(tmp_path / f"d{n}" / "f", f"file {n}".encode(), writes)
    assert not any((tmp_path / f"d{n}" / "f").exists() for n in range(5))  # not yet durable
    with pytest.raises(ValueError, match="written twice"):
        write_atomic(tmp_path / "d0" / "f", b"again", writes)
    writes.discard_since(3)  # the last two: a failed part's
    fsync_dirs(writes)
    assert [(tmp_path / f"d{n}" / "f").exists() for n in range(5)] == [True] * 3 + [False] * 2
    assert (tmp_path / "d2" / "f").read_bytes() == b"file 2"
    assert not list(tmp_path.rglob("*.tmp")) and not writes and not writes.files


def test_a_deferred_write_starts_its_writeback_before_the_batch_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file left for its batch's sync has its writeback started as it is written (so
    the sync waits for less); a file synced at once does not need it."""
    started: list[tuple[str, int, int, int]] = []

    def recorded(fd: int, offset: int, count: int, flags: int) -> int:
        started.append((os.readlink(f"/proc/self/fd/{fd}"), offset, count, flags))
        return 0

    monkeypatch.setattr(storage, "_sync_file_range", lambda: recorded)
    write_atomic(tmp_path / "now", b"synced at once")
    assert started == []
    writes = DeferredWrites()
    write_atomic(tmp_path / "later", [b"a shard's ", b"chunks"], writes)
    temporary = writes.files[tmp_path / "later"]
    assert started == [(str(temporary), 0, 0, 2)]  # 2: SYNC_FILE_RANGE_WRITE, sync_file_range(2)
    fsync_dirs(writes)
    assert (tmp_path / "later").read_bytes() == b"a shard's chunks"


def test_writeback_is_started_through_the_c_librarys_sync_file_range(tmp_path: Path) -> None:
    """On Linux the hint is the real call, which succeeds on a file with SYNC_FILE_RANGE_WRITE
    (2, from the man page) and fails on what has no pages to write back (a pipe)."""
    call = storage._sync_file_range()
    assert call is not None and call.__name__ == "sync_file_range"  # type: ignore[attr-defined]
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100000)
    with open(path, "rb+") as file:
        assert call(file.fileno(), 0, 0, 2) == 0
        storage.start_writeback(file.fileno())
    reading, writing = os.pipe()
    try:
        assert call(reading, 0, 0, 2) == -1  # ESPIPE: a result that says something
    finally:
        os.close(reading)
        os.close(writing)
    assert path.read_bytes() == b"x" * 100000


def _open_fds() -> set[str]:
    """The descriptors this process has open, with what each is open on."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
            found.add(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}")
    return found


def test_a_deferred_file_is_synced_through_the_descriptor_that_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's fsync is on the descriptor the file was written with, held open since:
    one opened anew once its pages were written back (and the inode evicted) would not
    report a write error that happened meanwhile, and the file, lost, would count as
    durable. Nothing opens the temporaries again; every held descriptor ends closed."""
    before = _open_fds()
    writes = DeferredWrites()
    for n in range(3):
        write_atomic(tmp_path / f"f{n}", f"file {n}".encode(), writes)
    held = dict(writes.fds)
    assert list(held) == [tmp_path / f"f{n}" for n in range(3)]
    for path, fd in held.items():  # each open on its temporary, written, not yet synced
        assert os.readlink(f"/proc/self/fd/{fd}") == str(writes.files[path])
    synced: list[tuple[int, str]] = []
    opened: list[str] = []
    fsync, open_ = os.fsync, os.open

    def recorded_fsync(fd: int) -> None:
        synced.append((fd, os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return open_(path, *args, **kwargs)

    monkeypatch.setattr(storage.os, "fsync", recorded_fsync)
    monkeypatch.setattr(storage.os, "open", recorded_open)
    temporaries = {str(writes.files[path]): fd for path, fd in held.items()}
    fsync_dirs(writes)
    assert sorted(fd for fd, name in synced if name in temporaries) == sorted(held.values())
    assert all(temporaries[name] == fd for fd, name in synced if name in temporaries)
    assert not any(name.endswith(".tmp") for name in opened)  # folders only
    assert [(tmp_path / f"f{n}").read_bytes() for n in range(3)] == [
        b"file 0",
        b"file 1",
        b"file 2",
    ]
    assert not writes.fds and storage._held == 0 and _open_fds() == before


@pytest.mark.parametrize("files", [1, 5])
def test_deferred_writes_close_their_descriptors_on_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int
) -> None:
    """Synced, failing their sync, discarded (a failed part's), or abandoned (an error in the
    batch): every descriptor a batch held is closed, and no temporary stays."""
    before = _open_fds()

    def batch(name: str) -> DeferredWrites:
        writes = DeferredWrites()
        for n in range(files):
            write_atomic(tmp_path / name / f"f{n}", b"x" * 5000, writes)
        assert len(_open_fds()) == len(before) + files  # held until the batch's sync
        return writes

    fsync_dirs(batch("synced"))
    assert _open_fds() == before
    writes = batch("discarded")
    writes.discard_since(0)
    assert _open_fds() == before and not writes.files and not writes.fds
    with pytest.raises(RuntimeError, match="a part failed"), DeferredWrites() as writes:
        for n in range(files):
            write_atomic(tmp_path / "abandoned" / f"f{n}", b"x", writes)
        raise RuntimeError("a part failed")
    assert _open_fds() == before
    writes = batch("unsynced")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(storage.os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output error"):
        fsync_dirs(writes)
    assert _open_fds() == before and storage._held == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"synced/f{n}" for n in range(files)]  # no temporary stays


@pytest.mark.parametrize("failing", ["first", "every"])
def test_a_discarded_batch_whose_deletes_fail_still_closes_every_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A failed part's files discarded where deletes fail (the first one, or each on a file
    system gone read-only): in one call every other temporary is still deleted, every
    descriptor closed and released, and the first error raised; a write interrupted just
    as the batch kept its file leaves nothing in it."""
    before = _open_fds()
    writes = DeferredWrites()
    for n in range(3):
        write_atomic(tmp_path / f"f{n}", b"x" * 5000, writes)
    assert len(_open_fds()) == len(before) + 3 and storage._held == 3
    temporaries = [writes.files[tmp_path / f"f{n}"] for n in range(3)]
    unlink = Path.unlink
    tried: list[Path] = []

    def read_only(self: Path, missing_ok: bool = False) -> None:
        tried.append(self)
        if failing == "every" or self == temporaries[0]:
            raise OSError(errno.EROFS, f"{os.strerror(errno.EROFS)}: {self.name}")
        unlink(self, missing_ok)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "unlink", read_only)
        with pytest.raises(
            OSError, match=re.escape(f"Read-only file system: {temporaries[0].name}")
        ):
            writes.discard_since(0)
    assert tried == temporaries
    assert _open_fds() == before and storage._held == 0 and not writes.files and not writes.fds
    left = temporaries if failing == "every" else temporaries[:1]
    assert sorted(tmp_path.iterdir()) == sorted(left)
    writes.discard_since(0)  # nothing left to discard: nothing raised

    class Interrupted(dict):  # a Ctrl-C once the batch has the file, before its descriptor
        def __setitem__(self, key: Path, fd: int) -> None:
            raise KeyboardInterrupt

    writes.fds = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "g", b"y" * 5000, writes)
    assert _open_fds() == before and storage._held == 0 and not writes.files and not writes.fds
    assert not list(tmp_path.glob(".g.*"))


def test_deferred_writes_hold_at_most_a_share_of_the_descriptor_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a quarter of the soft RLIMIT_NOFILE held (a batch of many small series, against
    a limit of 1,024), a file is synced as it is written and its descriptor closed: the
    batch still makes every file durable, without running out of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = _open_fds()
    limit = len(before) + 64
    synced: list[str] = []
    fsync = os.fsync

    def recorded(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", recorded)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        budget = storage.held_budget()
        assert budget == limit // 4
        writes = DeferredWrites()
        for n in range(budget + 3):
            write_atomic(tmp_path / f"f{n}", f"file {n}".encode(), writes)
        assert len(writes.fds) == budget and len(_open_fds()) == len(before) + budget
        late = [str(writes.files[tmp_path / f"f{n}"]) for n in range(budget, budget + 3)]
        assert synced == late  # synced as written, each through its own descriptor
        assert list(writes.fds) == [tmp_path / f"f{n}" for n in range(budget)]
        fsync_dirs(writes)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [(tmp_path / f"f{n}").read_bytes() for n in range(budget + 3)] == [
        f"file {n}".encode() for n in range(budget + 3)
    ]
    assert _open_fds() == before and storage._held == 0


def test_a_batch_reads_the_descriptor_budget_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held-descriptor budget is read as a batch begins, not once per file written."""
    calls: list[int] = []
    getrlimit = resource.getrlimit

    def counted(which: int) -> tuple[int, int]:
        calls.append(which)
        return getrlimit(which)

    monkeypatch.setattr(storage.resource, "getrlimit", counted)
    writes = DeferredWrites()
    for n in range(5):
        write_atomic(tmp_path / f"f{n}", b"x", writes)
    assert len(writes.fds) == 5
    fsync_dirs(writes)
    assert calls == [resource.RLIMIT_NOFILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{n}" for n in range(5)]


def test_unused_path_is_the_first_name_not_taken(tmp_path: Path) -> None:
    """Names from `first` on, the first that does not exist (taken ones skipped, not reused)."""

    def name(n: int) -> Path:
        return tmp_path / f"f-{n}"

    assert unused_path(name) == name(0) and unused_path(name, 1) == name(1)
    for n in (0, 1, 3):
        name(n).write_bytes(b"")
    assert unused_path(name) == name(2) and unused_path(name, 3) == name(4)


def test_write_atomic_writes_a_list_of_parts_one_after_another(tmp_path: Path) -> None:
    """Parts (a shard's chunks and index) land as their concatenation, synced at once or
    deferred, and a shard the store writes from its chunks' buffers reads back in zarr."""
    parts = [b"a" * 70000, b"", b"bc", bytes(range(256)) * 40]
    write_atomic(tmp_path / "now", parts)
    writes = DeferredWrites()
    write_atomic(tmp_path / "later", parts, writes)
    fsync_dirs(writes)
    for name in ("now", "later"):
        assert (tmp_path / name).read_bytes() == b"".join(parts)
    # One buffer of any kind is one part (a memoryview is a Sequence, but of ints).
    write_atomic(tmp_path / "view", memoryview(parts[3])[1:])
    write_atomic(tmp_path / "array", bytearray(parts[0]))
    assert (tmp_path / "view").read_bytes() == parts[3][1:]
    assert (tmp_path / "array").read_bytes() == parts[0]
    spec = ArraySpec(4, 4, 1, np.dtype("uint16"), None, frames_per_shard=2)
    pixels = PixelStore(tmp_path / "pixels")
    pixels.create()
    pixels.create_array("s/a", pixel_store.array_metadata(spec, {}))
    frames = np.arange(3 * 16, dtype="uint16").reshape(3, 4, 4)
    pixels.write_frames("s/a", 0, [f.tobytes() for f in frames])
    pixels.set_frames("s/a", 3)
    assert np.array_equal(pixels.open_array("s/a")[:], frames)


_REALLOCATING = """
import ctypes, os, resource, sys
PR_SET_THP_DISABLE = 41  # <linux/prctl.h>
# Transparent huge pages would back 8 MiB with four faults where they are on for all
# (a CI machine measured 5): off, every 4 KiB page faults once and the count says it.
assert ctypes.CDLL(None).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
import numpy as np
from pacs_engine import executors
if sys.argv[1] == "worker":
    executors._start_worker(os.getppid())  # as a local pool starts each worker
np.ones(8 << 20, np.uint8)  # allocated, every page touched, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(8 << 20, np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_worker_reuses_the_memory_it_frees() -> None:
    """In a fresh process, 8 MiB allocated again after being freed costs hundreds of page
    faults with glibc's defaults (fresh heap), next to none once a pool worker's start-up
    (`keep_freed_memory`) ran; the importing process keeps its allocator as it was."""
    # glibc raises its mmap threshold as it frees large blocks, so what the imports freed
    # would decide the default case: fixing the threshold at glibc's default (which also
    # stops the raises) makes it the same in every environment; a worker's start-up
    # setting overrides it.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    faults = {}
    for how in ("default", "worker"):
        done = subprocess.run(
            [sys.executable, "-c", _REALLOCATING, how],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        faults[how] = int(done.stdout)
    assert faults["worker"] * 10 < faults["default"] and faults["default"] > 100, faults


def test_deferred_writes_that_cannot_be_synced_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = DeferredWrites()
    for n in range(3):
        write_atomic(tmp_path / f"f{n}", b"x", writes)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(storage.os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output error"):
        fsync_dirs(writes)
    assert list(tmp_path.iterdir()) == []  # neither renamed nor left as temporaries


def test_a_batch_syncs_its_files_in_one_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One fsync after another waits for a journal commit each (5 ms here under load):
    # a batch of small series syncs all its files at once, at its end.
    rounds: list[int] = []
    sync = storage._sync_held

    def counted(fds: list[int]) -> None:
        rounds.append(len(fds))
        sync(fds)

    monkeypatch.setattr(storage, "_sync_held", counted)
    for number in range(6):
        _series(tmp_path / "in", number, 2)
    executor = _Counting()
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], executor=executor)
        assert archive.verify().ok
    assert len(executor.batches) == 1
    # Each series: a shard, a header pack and its rows file; then the commit's six counts.
    assert [n for n in rounds if n] == [6 * 3, 6]


def test_a_plan_key_stays_within_lmdb_for_any_instance_number() -> None:
    # An IS of 2 ** 200 (a hostile file) with 200-byte UIDs made a 523-byte key: LMDB takes
    # 511, the scan record failed and so did every resume. Outside int64/2, it sorts last.
    uid = "1." + "2" * 198

    def key(number: int | None) -> bytes:
        return _key(b"p", "run", *plan_order(Planned("k", uid, uid, number, 1, 0)))

    numbers = [-(2**62), -1, 0, 5, 2**62 - 1]
    keys = [key(n) for n in numbers]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for outside in (2**200, -(2**200), 2**62, -(2**62) - 1):
        assert key(outside) == key(None) > keys[-1]
    assert max(len(key(n)) for n in (2**200, -(2**200), None, -1)) <= 511


def test_a_new_arrays_metadata_and_folders_are_durable_before_its_rows_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The commit rewrites each array's zarr.json (its frame count) only after the rows;
    # a power cut in between must find the zarr.json the array was made with, and the
    # folders holding it, on disk: synced before the commit, not after.
    events: list[str] = []
    fsync, writing = os.fsync, Index.writing

    def noted_fsync(fd: int) -> None:
        events.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    @contextlib.contextmanager
    def noted_writing(index: Index) -> Any:
        with writing(index) as writer:
            yield writer
        events.append("commit")

    monkeypatch.setattr(storage.os, "fsync", noted_fsync)
    monkeypatch.setattr(Index, "writing", noted_writing)
    for number in range(2):
        _series(tmp_path / "in", number, 2)
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], workers=0)
        arrays = {row["pixels"]["array"] for row in archive.index}
        pixels = archive.pixels.root.resolve()
    assert len(arrays) == 2
    # The rows' commit: the first after the first shard's sync.
    shard = next(n for n, e in enumerate(events) if "/c/" in e)
    before = events[: events.index("commit", shard)]
    for array in arrays:
        folder = pixels / array
        temporary = rf"{re.escape(str(folder))}/\.zarr\.json\.\d+\.tmp"
        assert any(re.fullmatch(temporary, e) for e in before), array
        # Each folder holding an entry this ingest made: the array's (its zarr.json's, its
        # c/), the series' (the array's), pixels/ (the series'), c/0/0 (the shard's)...
        shards = folder / "c" / "0" / "0"
        for synced in (folder, folder.parent, pixels, folder / "c", shards.parent, shards):
            assert str(synced) in before, (array, synced)
        # ... and the header pack's: headers/<series>/, headers/.
        headers = pixels.parent / "headers"
        assert {str(headers), str(headers / folder.parent.name)} <= set(before)


def test_a_commit_raises_its_arrays_frame_counts_in_one_round_of_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The main process sends no work while it commits: a batch of six small series is
    # one commit, and its six zarr.json counts are synced at once (then their folders at
    # once), not with two fsyncs one after another per array.
    rounds: list[list[str]] = []
    sync = storage._sync_held

    def counted(fds: list[int]) -> None:
        rounds.append([os.readlink(f"/proc/self/fd/{fd}") for fd in fds])
        sync(fds)

    monkeypatch.setattr(storage, "_sync_held", counted)
    for number in range(6):
        _series(tmp_path / "in", number, 2)
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], executor=_Counting())
        assert archive.verify().ok
        assert [archive.pixels.frames(row["pixels"]["array"]) for row in archive.index] == [2] * 12
    zarr_rounds = [names for names in rounds if any("zarr.json" in n for n in names)]
    assert [len(names) for names in zarr_rounds] == [6]  # the commit's: all six at once


def test_a_batch_is_sent_once_it_reaches_batch_bytes_of_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # By frames alone, two large CT series of 58 and 28 slices made one task of 45 MB:
    # one worker encoded it while the other had ended.
    monkeypatch.setattr(run, "BATCH_BYTES", 10_000)
    large = _series(tmp_path / "in", 0, 6)  # 6 x 32 x 32 x 2 = 12,288 bytes: alone
    small = sorted(_series(tmp_path / "in", number, 2) for number in range(1, 5))  # 4,096
    executor = _Counting()
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], executor=executor)
        assert archive.verify().ok
    assert executor.batches == [[large], small[:3], small[3:]]


@pytest.mark.parametrize(("kind", "files"), [("without pixels", 2), ("tiny", 3)])
def test_a_batch_holds_no_more_files_than_the_descriptor_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, files: int
) -> None:
    # Series without pixels (SR) add no frames nor bytes to a batch, and tiny ones few: by
    # those alone, 30 of them made one batch, whose files past the held-descriptor budget
    # were synced one by one as written. Each here writes `files`: a header pack, its
    # rows file and (tiny) a shard.
    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "without pixels":
        source = next(p for p in pydicom_test_files() if p.name == "test-SR.dcm")
        for number in range(30):
            sr = pydicom.dcmread(source)
            sr.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{number}"
            sr.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.2.{number}"
            sr.save_as(folder / f"{number}.dcm")
    else:
        for number in range(30):
            _series(folder, number, 1, size=8)
    batches: list[tuple[int, int]] = []  # per encode task: its files, and those held
    sync = tasks.fsync_dirs

    def counted(writes: DeferredWrites) -> None:
        batches.append((len(writes.files), len(writes.fds)))
        sync(writes)

    monkeypatch.setattr(tasks, "fsync_dirs", counted)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(_open_fds()) + 64, hard))
    executor = _Counting()
    try:
        budget = storage.held_budget()
        with Archive.create(tmp_path / "a") as archive:
            report = archive.ingest([folder], executor=executor).to_dict()
            assert archive.verify().ok
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert report["archived"] == 30 and report["balanced"]
    per_batch = budget // files  # series a batch takes: as many as the budget holds
    assert per_batch < 30  # the budget cuts (~20 descriptors: open ones + 64, a quarter)
    assert [len(series) for series in executor.batches] == [per_batch] * (30 // per_batch) + (
        [30 % per_batch] if 30 % per_batch else []
    )
    assert batches == [(len(series) * files,) * 2 for series in executor.batches]  # all held


class _Windowed(InlineExecutor):
    """Runs tasks in this process, with the window of two workers (4 tasks in flight)."""

    workers = 2


@pytest.mark.parametrize(("held", "expected"), [(None, [10]), (4, [8, 2])])
def test_scan_results_are_journaled_together_the_last_with_the_scans_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: int | None, expected: list[int]
) -> None:
    # While the main process records scan results it sends no work, and each record is an
    # index transaction, synced: results are held up to SCAN_RECORD inputs (or a second),
    # and the last ones are recorded with the run record that ends the scan.
    _series(tmp_path / "in", 0, 10)
    monkeypatch.setattr(run, "SCAN_BATCH", 2)  # 5 batches of 2 files
    if held is not None:
        monkeypatch.setattr(run, "SCAN_RECORD", held)
    recorded: list[int] = []  # plan entries per journal record
    states: list[str | None] = []  # the run record's state in each record, if in it
    record = Journal.record

    def counted(journal: Journal, run_id: str, outcomes: Any, planned: Any, *args: Any) -> None:
        planned = list(planned)
        recorded.append(len(planned))
        more = args[1] if len(args) > 1 else {}
        states.append(next((json.loads(v)["state"] for v in more.values() if v), None))
        record(journal, run_id, outcomes, planned, *args)

    monkeypatch.setattr(Journal, "record", counted)
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([tmp_path / "in"], executor=_Windowed()).to_dict()
        assert len(archive.index) == 10
    assert report["archived"] == 10 and report["balanced"]
    # SCAN_RECORD 4: the window's 4 batches once the 5th waited, then the 5th with the end.
    assert recorded == expected
    assert states[-1] == "encoding"


@pytest.mark.parametrize(
    ("stop", "raised"),
    [
        (functools.partial(OSError, errno.ENOSPC, "No space left on device"), run.IngestStopped),
        (KeyboardInterrupt, KeyboardInterrupt),
    ],
)
def test_a_scan_whose_end_record_fails_resumes_scanning_not_encoding(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop: Callable[[], BaseException],
    raised: type[BaseException],
) -> None:
    # The record that ends the scan carries the last plan entries held: if it is not
    # committed, the run record saved as the session stops must still say "scanning"
    # (saying "encoding", the resumed run would encode a plan without them). The error is
    # made anew each run: one parameter raised would keep its traceback's frames, and
    # their plan entries, alive for the rest of the test session.
    _series(tmp_path / "in", 0, 10)
    record = Journal.record

    def end_fails(journal: Journal, run_id: str, outcomes: Any, planned: Any, *args: Any) -> None:
        more = args[1] if len(args) > 1 else {}
        if any(v and json.loads(v)["state"] == "encoding" for v in more.values()):
            raise stop()
        record(journal, run_id, outcomes, planned, *args)

    monkeypatch.setattr(Journal, "record", end_fails)
    with Archive.create(tmp_path / "a") as archive:
        with pytest.raises(raised):
            archive.ingest([tmp_path / "in"], workers=0)
        monkeypatch.setattr(Journal, "record", record)
        report = archive.ingest([tmp_path / "in"], workers=0).to_dict()
        assert len(archive.index) == 10
    assert (report["inputs"], report["archived"], report["resumed"]) == (10, 10, 1)
    assert report["balanced"]


def test_zip_identities_and_walk_errors_go_with_the_scan_results_not_a_commit_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each journal record is a synced index transaction: a catch-up run over many zips, or
    # a folder of links, made one per zip and one per unread input met by the walk.
    source = tmp_path / "in"
    source.mkdir()
    for number in range(3):
        paths = write_series(
            tmp_path / f"s{number}",
            5,
            0,
            number,
            2,
            modality="MR",
            syntax="explicit",
            rows=16,
            columns=16,
        )
        with zipfile.ZipFile(source / f"study{number}.zip", "w") as bundle:
            for path in paths:
                bundle.write(path, Path(path).name)
    for number in range(2):  # not followed: quarantined unread
        (source / f"link{number}.dcm").symlink_to(tmp_path / "s0")
    monkeypatch.setattr(run, "CHECKPOINT_SECONDS", 3600.0)  # not a second's worth
    record, records = Journal.record, {"n": 0}

    def counted(journal: Journal, *args: Any) -> None:
        records["n"] += 1
        record(journal, *args)

    monkeypatch.setattr(Journal, "record", counted)
    with Archive.create(tmp_path / "a") as archive:
        first = archive.ingest([source], workers=0).to_dict()
        assert records["n"] == 1  # the record that ends the scan
        again = archive.ingest([source], workers=0).to_dict()
    assert (first["archived"], first["quarantined"], first["balanced"]) == (6, 2, True)
    assert again["unchanged"] == 3  # the zips' identities were recorded
    assert (again["quarantined"], again["balanced"]) == (2, True)


def test_a_batch_reads_its_inputs_ahead_across_its_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each input of an encode task but its first is hinted to the kernel (`Readahead`) a few
    inputs before it is read, the next part's first ones while the last part ends."""
    for number, slices in enumerate((3, 2, 4)):  # small series: one batch
        _series(tmp_path / "in", number, slices, size=16)
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(inputs, "prefetch", lambda ref, policy: events.append(("hint", ref.key)))
    read = encode.read_input

    def reads(ref: Any, policy: Any) -> bytes:
        events.append(("read", ref.key))
        return read(ref, policy)

    monkeypatch.setattr(encode, "read_input", reads)
    executor = _Counting()
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([tmp_path / "in"], executor=executor).to_dict()
    assert report["archived"] == 9 and len(executor.batches) == 1
    order = [key for kind, key in events if kind == "read"]
    assert len(order) == 9
    assert [key for kind, key in events if kind == "hint"] == order[1:]
    for n, key in enumerate(order[1:], 1):  # hinted just before the read READAHEAD_FILES earlier
        hint, m = events.index(("hint", key)), max(0, n - inputs.READAHEAD_FILES)
        assert hint < events.index(("read", order[m]))
        assert m == 0 or events.index(("read", order[m - 1])) < hint
