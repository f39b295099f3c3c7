"""Reading for training: the archive against pydicom on the original files, and the codec.

Run from the repository root:

    /work/venv/bin/python -m pytest benchmarks/bench_read.py -s -p no:randomly

One archive (default codec policy) is built per session from the corpus's CT and
MR files outside `malformed/` (their files read once beforehand, so everything is
in the page cache). In the same run:

(a) random frames: the same random frames read as `FrameDataset[i]` and with
    pydicom from the original files (`dcmread` + `pixel_array`, the frame taken
    from it; the row's `source_path` names the file), with 1 and 2 worker processes
    (`pacs_engine.read.bench.run_tasks`: each worker opens the archive itself);
(b) volumes: `Series.volume()` against pydicom reading every file of the series,
    sorting by position along the normal and stacking, for every series that is one
    volume; the arrays are checked equal;
(c) the codec: `decode_frame` on the raw chunk bytes of the random frames (read
    beforehand), one thread, against `FrameDataset[i]` on the same frames in the same
    thread: the archive's read speed as a fraction of the codec's decode speed.

Targets (the "Reading for training" issue): >= 20x pydicom for random frames,
>= 80 % of the codec's decode speed, >= 10x pydicom for volumes.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pydicom
import pytest

from benchmarks.conftest import corpus_inputs
from pacs_engine import Archive, open_archive
from pacs_engine.read import Series, VolumeDataset
from pacs_engine.read.bench import RandomFrames, random_indices, run_tasks
from pacs_engine.read.datasets import FrameDataset

MODALITIES = {"CT", "MR"}
RANDOM_FRAMES = 300
WORKERS = (1, 2)
_RESULTS: dict[str, Any] = {}


def inputs() -> list[str]:
    """Corpus CT and MR files outside malformed/."""
    return corpus_inputs(MODALITIES)


class PydicomFrames:
    """Reads (file, frame) pairs with pydicom: dcmread + pixel_array, one frame kept."""

    def read(self, part: list[tuple[str, int]]) -> tuple[int, int]:
        frames = nbytes = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path, frame in part:
                ds = pydicom.dcmread(path)
                pixels = ds.pixel_array
                if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
                    pixels = pixels[frame]
                frames += 1
                nbytes += pixels.nbytes
        return frames, nbytes


@pytest.fixture(scope="session")
def corpus_archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    files = inputs()
    for path in files:  # page cache
        with open(path, "rb") as f:
            f.read()
    folder = tmp_path_factory.mktemp("read") / "archive"
    archive = Archive.create(folder)
    with archive:
        report = archive.ingest(files, workers=0)
    assert report.balanced
    dataset = FrameDataset(folder)
    with open_archive(folder) as archive:
        source = {str(r["SOPInstanceUID"]): str(r["source_path"]) for r in archive.index}
    indices = random_indices(len(dataset), RANDOM_FRAMES, seed=0).tolist()
    where = []
    for i in indices:
        entry = dataset.table[i]
        where.append((source[dataset.instances[int(entry[3])]], int(entry[4])))
    return {"folder": folder, "dataset": dataset, "indices": indices, "where": where}


def test_random_frames(benchmark: Any, corpus_archive: dict[str, Any]) -> None:
    dataset, indices, where = (corpus_archive[k] for k in ("dataset", "indices", "where"))

    def run() -> list[dict[str, Any]]:
        rows = []
        for count in WORKERS:
            tasks = [
                ("archive", RandomFrames(dataset), [indices[k::count] for k in range(count)]),
                ("pydicom", PydicomFrames(), [where[k::count] for k in range(count)]),
            ]
            rows += run_tasks(tasks, count)
        return rows

    rows = benchmark.pedantic(run, rounds=1, iterations=1)
    for row in rows:
        assert row["frames"] == len(indices)
        _RESULTS[f"random {row['mode']} w{row['workers']}"] = row
    benchmark.extra_info["rows"] = rows


def test_volumes(benchmark: Any, corpus_archive: dict[str, Any]) -> None:
    folder = corpus_archive["folder"]
    volumes = VolumeDataset(folder, rescale=False, skip_invalid=True)
    archive = open_archive(folder)
    uids = [u for u in volumes.series_uids if len(Series(archive, u).volume().array) > 1]

    def by_pydicom(series: Series) -> np.ndarray:
        slices = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for row in series.rows:
                ds = pydicom.dcmread(row["source_path"])
                cosines = np.asarray(ds.ImageOrientationPatient, np.float64)
                normal = np.cross(cosines[:3], cosines[3:])
                position = float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float)))
                slices.append((position, ds.pixel_array))
        slices.sort(key=lambda s: s[0])
        return np.stack([s[1] for s in slices])

    def run() -> dict[str, Any]:
        opened = {uid: Series(archive, uid) for uid in uids}
        started = time.perf_counter()
        ours = {uid: s.volume().array for uid, s in opened.items()}
        mid = time.perf_counter()
        theirs = {uid: by_pydicom(s) for uid, s in opened.items()}
        end = time.perf_counter()
        return {"archive_s": mid - started, "pydicom_s": end - mid, "ours": ours, "pd": theirs}

    got = benchmark.pedantic(run, rounds=1, iterations=1)
    same = sum(np.array_equal(got["ours"][u], got["pd"][u]) for u in uids)
    slices = sum(len(v) for v in got["ours"].values())
    nbytes = sum(v.nbytes for v in got["ours"].values())
    archive.close()
    _RESULTS["volumes"] = {
        "series": len(uids),
        "slices": slices,
        "equal": same,
        "archive_s": got["archive_s"],
        "pydicom_s": got["pydicom_s"],
        "archive_mb_s": nbytes / got["archive_s"] / 1e6,
        "pydicom_mb_s": nbytes / got["pydicom_s"] / 1e6,
    }
    benchmark.extra_info.update({k: v for k, v in _RESULTS["volumes"].items()})
    assert uids


def test_codec_decode(benchmark: Any, corpus_archive: dict[str, Any]) -> None:
    folder, dataset, indices = (corpus_archive[k] for k in ("folder", "dataset", "indices"))
    archive = open_archive(folder)
    jobs = []  # (dataset index, serializer, raw bytes, shape, dtype)
    for i in indices:
        entry = dataset.table[i]
        path, frame = dataset.arrays[int(entry[1])], int(entry[2])
        if archive.pixels.grid(path)[1] != 1:
            continue  # tiled frames: several chunks each
        array = archive.pixels.open_array(path)
        serializer = array.metadata.codecs[0].codecs[0]
        if not hasattr(serializer, "decode_frame") or len(array.metadata.codecs[0].codecs) > 1:
            continue  # bytes + blosc arrays: no frame codec
        (raw,) = archive.pixels.read_chunks(path, frame, frame + 1)
        jobs.append((i, serializer, raw, array.shape[1:], np.dtype(array.dtype)))
    archive.close()
    subset = [j[0] for j in jobs]

    def run() -> dict[str, float]:
        started = time.perf_counter()
        nbytes = 0
        for _, serializer, raw, shape, dtype in jobs:
            nbytes += serializer.decode_frame(raw, shape, dtype).nbytes
        mid = time.perf_counter()
        for i in subset:
            dataset[i]
        end = time.perf_counter()
        return {"codec_s": mid - started, "archive_s": end - mid, "bytes": nbytes}

    dataset[subset[0]]  # archive opened in this process
    got = benchmark.pedantic(run, rounds=3, iterations=1)
    _RESULTS["codec"] = {"frames": len(jobs), **got}
    benchmark.extra_info.update(_RESULTS["codec"])
    assert jobs


def test_summary(corpus_archive: dict[str, Any]) -> None:
    r = _RESULTS
    lines = ["", f"read benchmark: {len(corpus_archive['dataset'])} frames archived"]
    lines.append(f"  {'what':<28} {'frames/s':>10} {'MB/s':>9}")
    for name in sorted(k for k in r if k.startswith("random")):
        row = r[name]
        lines.append(f"  {name:<28} {row['frames_per_s']:>10,.1f} {row['mb_per_s']:>9.1f}")
    for w in WORKERS:
        a, p = r.get(f"random archive w{w}"), r.get(f"random pydicom w{w}")
        if a and p:
            ratio = a["frames_per_s"] / p["frames_per_s"]
            lines.append(f"  random frames, {w} worker(s): archive / pydicom = {ratio:.1f}x")
    if "codec" in r:
        c = r["codec"]
        lines.append(
            f"  codec decode only ({c['frames']} frames, 1 thread): "
            f"{c['frames'] / c['codec_s']:,.1f} frames/s {c['bytes'] / c['codec_s'] / 1e6:.1f}"
            f" MB/s; FrameDataset[i] same frames {c['frames'] / c['archive_s']:,.1f} frames/s"
            f" = {c['codec_s'] / c['archive_s'] * 100:.0f} % of the codec"
        )
    if "volumes" in r:
        v = r["volumes"]
        lines.append(
            f"  volumes ({v['series']} series, {v['slices']} slices, {v['equal']} equal to "
            f"pydicom's): archive {v['archive_s']:.2f} s ({v['archive_mb_s']:.1f} MB/s), "
            f"pydicom {v['pydicom_s']:.2f} s ({v['pydicom_mb_s']:.1f} MB/s) = "
            f"{v['pydicom_s'] / v['archive_s']:.1f}x"
        )
    print("\n".join(lines))
