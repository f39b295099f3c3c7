"""Index benchmarks: open time and UID lookup at 1 k and 1 M synthetic rows, queries, commits.

Run with `python -m pytest benchmarks/bench_index.py`. The 1 M-row index is built
once per session in a temporary folder (about a minute). A table is printed at the end.

PACS_ENGINE_BENCH_INDEX_COMPARE=1 also measures the alternative that was weighed
against LMDB, sorted Arrow IPC segments (needs pyarrow), on the same 1 M rows:
the figures behind the choice in docs/index.md.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import fadvise_dontneed
from pacs_engine.index import Index

ROOT = "1.2.826.0.1.3680043.8.498.1"
SERIES_PER_STUDY = 2
ROWS_PER_SERIES = 250
COMMIT_ROWS = 1000  # four series per commit, as an ingest of small studies would
SCALES = {"1k": 1_000, "1M": 1_000_000}
MODALITIES = ("CT", "MR", "PT", "CR")
COMPARE = os.environ.get("PACS_ENGINE_BENCH_INDEX_COMPARE") == "1"


# --- synthetic rows -------------------------------------------------------------------


def study_rows(
    study: int, series_count: int = SERIES_PER_STUDY, rows_per_series: int = ROWS_PER_SERIES
) -> list[dict[str, Any]]:
    """The rows of one synthetic CT/MR study: what the scanner and the ingest would store."""
    rnd = random.Random(study)
    patient = study // 2
    study_uid = f"{ROOT}.{study}"
    common = {
        "StudyInstanceUID": study_uid,
        "PatientID": f"PID{patient:07d}",
        "PatientName": f"NAME{patient % 997}^GIVEN{patient}",
        "PatientBirthDate": "19700101",
        "PatientSex": "MF"[patient % 2],
        "StudyDate": f"{2015 + study % 10}{1 + study % 12:02d}{1 + study % 28:02d}",
        "StudyTime": "101500",
        "StudyDescription": "CHEST ABDOMEN PELVIS",
        "AccessionNumber": f"ACC{study:08d}",
        "ReferringPhysicianName": "REF^DOC",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "TransferSyntaxUID": "1.2.840.10008.1.2.1",
        "SpecificCharacterSet": "ISO_IR 100",
        "Rows": 512,
        "Columns": 512,
        "NumberOfFrames": None,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 12,
        "HighBit": 11,
        "PixelRepresentation": 1,
        "RescaleSlope": 1.0,
        "RescaleIntercept": -1024.0,
        "RescaleType": "HU",
        "WindowCenter": [40.0, 400.0],
        "WindowWidth": [400.0, 1500.0],
        "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "PixelSpacing": [0.9765625, 0.9765625],
        "SliceThickness": 1.25,
        "BodyPartExamined": "CHEST",
        "FrameOfReferenceUID": f"{study_uid}.99",
        "SeriesDescription": "AXIAL 1.25MM",
        "AcquisitionNumber": 1,
        "status": "archived",
    }
    rows = []
    for series in range(series_count):
        series_uid = f"{study_uid}.{series}"
        for i in range(rows_per_series):
            rows.append(
                {
                    **common,
                    "SOPInstanceUID": f"{series_uid}.{i}",
                    "SeriesInstanceUID": series_uid,
                    "SeriesNumber": series + 1,
                    "Modality": MODALITIES[(study + series) % 4],
                    "InstanceNumber": i + 1,
                    "ImagePositionPatient": [-250.0, -250.0, -1.25 * i],
                    "SliceLocation": -1.25 * i,
                    "source_path": f"/mnt/legacy/{patient}/{study}/{series}/IM{i:05d}.dcm",
                    "source_sha256": f"{rnd.getrandbits(256):064x}",
                    "file_size": 526_000 + i,
                    "pixels": {"array": f"series/{series_uid}", "frames": [i]},
                    "header": {
                        "blob": f"headers/{study % 64:02d}.bin",
                        "offset": 4096 * i,
                        "length": 2630,
                    },
                    "frame_hashes": [f"{rnd.getrandbits(128):032x}"],
                }
            )
    return rows


def batches(n_rows: int) -> Iterator[list[dict[str, Any]]]:
    """The synthetic rows in commits of COMMIT_ROWS (or fewer, for a small index)."""
    per_study = SERIES_PER_STUDY * ROWS_PER_SERIES
    studies = (study_rows(s) for s in range(-(-n_rows // per_study)))
    rows = itertools.islice(itertools.chain.from_iterable(studies), n_rows)
    while batch := list(itertools.islice(rows, COMMIT_ROWS)):
        yield batch


def random_uids(n_rows: int, count: int, seed: int = 0) -> list[str]:
    """SOP Instance UIDs of `count` random rows of the synthetic index of `n_rows`."""
    rnd = random.Random(seed)
    per_study = SERIES_PER_STUDY * ROWS_PER_SERIES
    out = []
    for r in (rnd.randrange(n_rows) for _ in range(count)):
        study, rest = divmod(r, per_study)
        series, i = divmod(rest, ROWS_PER_SERIES)
        out.append(f"{ROOT}.{study}.{series}.{i}")
    return out


def read_whole(path: Path) -> None:
    """Put the whole file in the page cache, as a warm index would be."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 24):
            pass


# --- the indexes ---------------------------------------------------------------------


class Built:
    """An index built once per session, and what building it cost."""

    def __init__(self, path: Path, n_rows: int) -> None:
        self.path = path
        self.n_rows = n_rows
        commit_s = 0.0
        started = time.perf_counter()
        with Index.create(path) as index:
            for batch in batches(n_rows):
                t = time.perf_counter()
                index.commit(batch)
                commit_s += time.perf_counter() - t
        self.build_s = time.perf_counter() - started
        self.commit_s = commit_s
        self.bytes = (path / "data.mdb").stat().st_size


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Scale name -> Built, building each index on first use."""
    cache: dict[str, Built] = {}

    def get(scale: str) -> Built:
        if scale not in cache:
            folder = tmp_path_factory.mktemp(f"index-{scale}")
            cache[scale] = Built(folder / "index", SCALES[scale])
            summary.builds[scale] = cache[scale]
        return cache[scale]

    return get


class Summary:
    """What the benchmarks measured, printed as a table at the end of the session."""

    def __init__(self) -> None:
        self.medians: dict[tuple[str, str], float] = {}
        self.builds: dict[str, Built] = {}
        self.comparison: list[tuple[str, str, str]] = []

    def record(self, what: str, scale: str, benchmark: Any) -> None:
        self.medians[(what, scale)] = benchmark.stats.stats.median

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if not (self.medians or self.comparison):
            return
        tr.write_sep("=", "pacs_engine index benchmark summary (median)")
        scales = [s for s in SCALES if any(k[1] == s for k in self.medians)]
        tr.write_line(f"  {'':<44}" + "".join(f"{s + ' rows':>14}" for s in scales))
        for what in dict.fromkeys(k[0] for k in self.medians):
            cells = [self.medians.get((what, s)) for s in scales]
            tr.write_line(f"  {what:<44}" + "".join(f"{_time(c):>14}" for c in cells))
        for scale, b in self.builds.items():
            tr.write_line(
                f"  build {scale}: {b.n_rows:,} rows in {b.build_s:.1f} s; commits of"
                f" {COMMIT_ROWS} rows {b.n_rows / b.commit_s:,.0f} rows/s"
                f" ({b.commit_s / -(-b.n_rows // COMMIT_ROWS) * 1e3:.1f} ms each, fsync'ed);"
                f" data.mdb {b.bytes / 1e6:,.0f} MB ({b.bytes / b.n_rows:,.0f} B/row)"
            )
        if self.comparison:
            tr.write_line("storage comparison at 1M rows (median of repeats):")
            tr.write_line(f"  {'':<44}{'LMDB':>16}{'Arrow segments':>22}")
            for what, lmdb_cell, arrow_cell in self.comparison:
                tr.write_line(f"  {what:<44}{lmdb_cell:>16}{arrow_cell:>22}")


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


summary = Summary()


@pytest.fixture(scope="session", autouse=True)
def _print_summary(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.is_registered(summary):
        request.config.pluginmanager.register(summary, "pacs_engine_index_summary")


# --- benchmarks -------------------------------------------------------------------------


@pytest.mark.parametrize("scale", list(SCALES))
def test_open(benchmark: Any, built: Any, scale: str) -> None:
    b = built(scale)
    opened: list[Index] = []

    def close_previous() -> None:
        while opened:
            opened.pop().close()

    benchmark.pedantic(
        lambda: opened.append(Index.open(b.path)), setup=close_previous, rounds=300, warmup_rounds=5
    )
    close_previous()
    summary.record("open (warm page cache)", scale, benchmark)


@pytest.mark.parametrize("scale", list(SCALES))
def test_open_and_first_get_cold(benchmark: Any, built: Any, scale: str) -> None:
    b = built(scale)
    uids = iter(random_uids(b.n_rows, 100, seed=1))
    opened: list[Index] = []

    def close_and_evict() -> None:
        while opened:
            opened.pop().close()
        fadvise_dontneed([b.path / "data.mdb"])

    def open_and_get() -> None:
        index = Index.open(b.path)
        opened.append(index)
        assert index.get(next(uids)) is not None

    benchmark.pedantic(open_and_get, setup=close_and_evict, rounds=30)
    close_and_evict()
    read_whole(b.path / "data.mdb")  # the benchmarks after this one are warm
    summary.record("open + first get (cold page cache)", scale, benchmark)


@pytest.mark.parametrize("scale", list(SCALES))
def test_get(benchmark: Any, built: Any, scale: str) -> None:
    b = built(scale)
    uids = itertools.cycle(random_uids(b.n_rows, 10_000, seed=2))
    with Index.open(b.path) as index:
        for uid in random_uids(b.n_rows, 10_000, seed=2):
            index.get(uid)  # the pages of these rows are now in the page cache

        def get() -> None:
            assert index.get(next(uids)) is not None

        benchmark.pedantic(get, rounds=20_000, warmup_rounds=100)
    summary.record("get by SOP Instance UID (warm)", scale, benchmark)


@pytest.mark.parametrize("scale", list(SCALES))
def test_series(benchmark: Any, built: Any, scale: str) -> None:
    b = built(scale)
    series = itertools.cycle({u.rsplit(".", 1)[0] for u in random_uids(b.n_rows, 200, seed=3)})
    with Index.open(b.path) as index:
        benchmark.pedantic(lambda: index.series(next(series)), rounds=200, warmup_rounds=5)
    summary.record(f"series: {min(ROWS_PER_SERIES, b.n_rows)} rows in order", scale, benchmark)


QUERIES = {
    "query study PatientID=": ("study", lambda s: {"PatientID": f"PID{s // 2:07d}"}),
    "query study StudyDate=<one year>": ("study", lambda s: {"StudyDate": "20200101-20201231"}),
    "query study PatientName=NAME12^*": ("study", lambda s: {"PatientName": "NAME12^*"}),
    "query series Modality=MR, StudyDate=<1 mo>": (
        "series",
        lambda s: {"Modality": "MR", "StudyDate": "20200201-20200229"},
    ),
    "query instance AccessionNumber= (500 rows)": (
        "instance",
        lambda s: {"AccessionNumber": f"ACC{s:08d}"},
    ),
}


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("name", list(QUERIES))
def test_query(benchmark: Any, built: Any, scale: str, name: str) -> None:
    b = built(scale)
    level, make = QUERIES[name]
    n_studies = -(-b.n_rows // (SERIES_PER_STUDY * ROWS_PER_SERIES))
    studies = itertools.cycle(random.Random(4).sample(range(n_studies), min(50, n_studies)))
    with Index.open(b.path) as index:
        benchmark.pedantic(
            lambda: index.query(level, **make(next(studies))), rounds=50, warmup_rounds=2
        )
    summary.record(name, scale, benchmark)


# --- the alternative: sorted Arrow IPC segments --------------------------------------------


class ArrowSegments:
    """Rows in immutable Arrow IPC files, one sorted segment per commit, listed by a manifest.

    A commit writes its segment and a new manifest, each by write, fsync, rename;
    readers memory-map the segments the manifest names and binary-search the
    sorted fixed-width SOP UID column of each, newest first. Replacing a row would
    need tombstones and compaction; the prototype measures adds and compaction.
    """

    def __init__(self, folder: Path) -> None:
        import pyarrow as pa

        self.folder = folder
        names = json.loads((folder / "manifest.json").read_text())
        self.segments = []
        for name in names:
            table = pa.ipc.open_file(pa.memory_map(str(folder / name))).read_all()
            sop = table.column("sop").chunk(0)
            keys = np.frombuffer(sop.buffers()[1], dtype="S64", count=len(sop))
            self.segments.append((table, keys))

    @staticmethod
    def create(folder: Path) -> None:
        folder.mkdir(parents=True)
        ArrowSegments._publish(folder, "manifest.json", b"[]")

    @staticmethod
    def _publish(folder: Path, name: str, data: bytes) -> None:
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, folder / name)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def table(rows: list[dict[str, Any]], blobs: list[bytes]) -> Any:
        import pyarrow as pa

        order = sorted(range(len(rows)), key=lambda i: rows[i]["SOPInstanceUID"])
        pick = [rows[i] for i in order]
        return pa.table(
            {
                "sop": pa.array(
                    [r["SOPInstanceUID"].encode().ljust(64, b"\0") for r in pick], pa.binary(64)
                ),
                "study": [r["StudyInstanceUID"] for r in pick],
                "PatientID": [r["PatientID"] for r in pick],
                "StudyDate": [r["StudyDate"] for r in pick],
                "row": pa.array([blobs[i] for i in order], pa.binary()),
            }
        )

    @staticmethod
    def commit(folder: Path, table: Any) -> None:
        import pyarrow as pa

        names = json.loads((folder / "manifest.json").read_text())
        name = f"seg-{len(names):06d}.arrow"
        buffer = pa.BufferOutputStream()
        with pa.ipc.new_file(buffer, table.schema) as writer:
            writer.write_table(table)
        ArrowSegments._publish(folder, name, buffer.getvalue().to_pybytes())
        ArrowSegments._publish(folder, "manifest.json", json.dumps([*names, name]).encode())

    def get(self, uid: str) -> bytes | None:
        key = uid.encode()
        for table, keys in reversed(self.segments):
            i = int(np.searchsorted(keys, key))
            if i < len(keys) and keys[i] == key:
                return table.column("row")[i].as_py()
        return None

    def study_uids(self, **equal_or_range: Any) -> set[str]:
        import pyarrow.compute as pc

        found: set[str] = set()
        for table, _ in self.segments:
            masks = []
            for column, value in equal_or_range.items():
                if isinstance(value, tuple):
                    lo, hi = value
                    col = table.column(column)
                    masks.append(pc.and_(pc.greater_equal(col, lo), pc.less_equal(col, hi)))
                else:
                    masks.append(pc.equal(table.column(column), value))
            mask = masks[0]
            for m in masks[1:]:
                mask = pc.and_(mask, m)
            found.update(pc.unique(table.column("study").filter(mask)).to_pylist())
        return found


def _paired(first: Any, second: Any, repeats: int) -> tuple[float, float]:
    """Median times of two functions run alternately, so both meet the same machine load."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times, strict=True):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return float(np.median(times[0])), float(np.median(times[1]))


def _open_lmdb(path: Path) -> None:
    Index.open(path).close()


@pytest.mark.skipif(not COMPARE, reason="set PACS_ENGINE_BENCH_INDEX_COMPARE=1")
def test_compare_lmdb_with_arrow_segments(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.compute as pc

    from pacs_engine.index.codec import ZDICT, RowCodec

    n_rows = SCALES["1M"]
    lmdb_path, folder, compact = tmp_path / "lmdb", tmp_path / "arrow", tmp_path / "compact"
    codec = RowCodec(ZDICT, lmdb_path / "data.mdb")  # the path only names it in errors
    ArrowSegments.create(folder)
    commits = [0.0, 0.0]
    tables = []
    # Both stores take the same batches in turn: the same rows, the same machine load.
    with Index.create(lmdb_path) as index:
        for batch in batches(n_rows):
            t = time.perf_counter()
            index.commit(batch)
            commits[0] += time.perf_counter() - t
            t = time.perf_counter()
            blobs = [codec.dump(r) for r in batch]  # the same deflated JSON rows as the index
            table = ArrowSegments.table(batch, blobs)
            ArrowSegments.commit(folder, table)
            commits[1] += time.perf_counter() - t
            tables.append(table)
    # Compacted: one sorted segment holding every row.
    ArrowSegments.create(compact)
    whole = pa.concat_tables(tables).combine_chunks()
    ArrowSegments.commit(compact, whole.take(pc.sort_indices(whole, [("sop", "ascending")])))
    del tables, whole
    uids = random_uids(n_rows, 2000, seed=5)
    open_lmdb, open_one = _paired(
        lambda: _open_lmdb(lmdb_path), lambda: ArrowSegments(compact), 200
    )
    _, open_many = _paired(lambda: None, lambda: ArrowSegments(folder), 5)
    one, many = ArrowSegments(compact), ArrowSegments(folder)
    with Index.open(lmdb_path) as index:
        get_lmdb, get_one = _paired(
            lambda: [index.get(u) for u in uids], lambda: [codec.load(one.get(u)) for u in uids], 7
        )
        _, get_many = _paired(
            lambda: None, lambda: [codec.load(many.get(u)) for u in uids[:200]], 5
        )
        q_pid, q_pid_one = _paired(
            lambda: index.query("study", PatientID="PID0000123"),
            lambda: one.study_uids(PatientID="PID0000123"),
            20,
        )
        q_date, q_date_one = _paired(
            lambda: index.query("study", StudyDate="20200101-20201231"),
            lambda: one.study_uids(StudyDate=("20200101", "20201231")),
            20,
        )
    n_commits = -(-n_rows // COMMIT_ROWS)
    size_lmdb = (lmdb_path / "data.mdb").stat().st_size
    size_one = (compact / "seg-000000.arrow").stat().st_size
    size_many = sum(p.stat().st_size for p in folder.iterdir())
    summary.comparison = [
        (
            "open (1 segment | 1000 segments)",
            _time(open_lmdb),
            f"{_time(open_one)} | {_time(open_many)}",
        ),
        (
            "get by UID, row decoded (1 | 1000 seg.)",
            _time(get_lmdb / len(uids)),
            f"{_time(get_one / len(uids))} | {_time(get_many / 200)}",
        ),
        ("query study PatientID= (1 segment)", _time(q_pid), _time(q_pid_one)),
        ("query study StudyDate= 1 year (1 seg.)", _time(q_date), _time(q_date_one)),
        (
            f"commit {COMMIT_ROWS} rows, fsync'ed",
            _time(commits[0] / n_commits),
            _time(commits[1] / n_commits),
        ),
        (
            "size on disk (1 | 1000 segments)",
            f"{size_lmdb / 1e6:,.0f} MB",
            f"{size_one / 1e6:,.0f} | {size_many / 1e6:,.0f} MB",
        ),
    ]
