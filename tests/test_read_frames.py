"""PixelStore.read_frames: shards read and decoded directly equal zarr, pydicom and each other."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import resource
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import google_crc32c
import numpy as np
import pydicom
import pytest
import zarr

from pacs_engine import Archive, open_archive
from pacs_engine.archive import pixel_store
from pacs_engine.archive.format import ArchiveError
from pacs_engine.archive.pixel_store import ShardError
from pacs_engine.errors import PacsEngineError
from pacs_engine.read import Series
from pacs_engine.storage import write_atomic
from pacs_engine.synth import write_studies

# (codec, rows, columns, max_chunk_pixels, tile): one frame per chunk, blosc, lz4 and raw
# arrays, frames cut into 1024-pixel tiles with padded edge tiles (2 x 2 tiles, and 1 x 2
# for a wide one), and small tiles asked for when the archive is made (a training copy's
# `--tile`: 4 x 3 tiles of 32 with padded edges).
LAYOUTS = [
    ("jpegls", 64, 48, 4096 * 4096, None),
    ("blosc", 64, 48, 4096 * 4096, None),
    ("lz4", 64, 48, 4096 * 4096, None),
    ("raw", 64, 48, 4096 * 4096, None),
    ("jpegls", 1100, 1030, 1_000_000, None),
    ("blosc", 300, 1500, 100_000, None),
    ("raw", 300, 1500, 100_000, None),
    ("lz4", 100, 90, 4096 * 4096, 32),
    ("jpegls", 100, 90, 4096 * 4096, 32),
    ("raw", 100, 90, 4096 * 4096, 32),
    ("raw", 100, 30, 4096 * 4096, 32),  # tiles as wide as the frame: 4 tile rows
]


@pytest.fixture(
    scope="module",
    params=LAYOUTS,
    ids=lambda p: f"{p[0]}-{p[1]}x{p[2]}" + (f"-tile{p[4]}" if p[4] else ""),
)
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    codec, rows, columns, max_chunk_pixels, tile = request.param
    tmp = tmp_path_factory.mktemp("frames")
    files = write_studies(
        tmp / "src", 1, 1, 7, rows=rows, columns=columns, seed=3, syntaxes=("explicit",)
    )
    # Three frames per shard: the seven slices span three shards.
    arc = Archive.create(
        tmp / "archive",
        codec=codec,
        frames_per_shard=3,
        max_chunk_pixels=max_chunk_pixels,
        tile=tile,
    )
    arc.ingest(files, workers=0)
    yield arc
    arc.close()


def _array_path(archive: Archive) -> str:
    (path,) = {r["pixels"]["array"] for r in archive.index}
    return path


def _pydicom_frames(archive: Archive) -> np.ndarray:
    """The frames with pydicom, from the original files, in array order."""
    rows = sorted(archive.index, key=lambda r: r["pixels"]["first_frame"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.stack([pydicom.dcmread(r["source_path"]).pixel_array for r in rows])


def test_layout_is_the_one_asked_for(archive: Archive) -> None:
    spec = archive.pixels.spec(_array_path(archive))
    zarr_array = archive.pixels.open_array(_array_path(archive))
    assert spec.chunk_shape == zarr_array.metadata.codecs[0].chunk_shape
    assert spec.shard_shape == zarr_array.metadata.chunk_grid.chunk_shape
    assert spec.dtype == zarr_array.dtype


def test_read_frames_equal_zarr_and_pydicom(archive: Archive) -> None:
    path = _array_path(archive)
    expected = _pydicom_frames(archive)
    assert np.array_equal(archive.pixels.open_array(path)[:], expected)
    got = archive.pixels.read_frames(path, range(len(expected)))
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    for row in archive.index:
        assert np.array_equal(
            archive.frames(row["SOPInstanceUID"]),
            archive.pixels.read_frames(path, [row["pixels"]["first_frame"]]),
        )


def _windows(rows: int, columns: int) -> list[tuple[slice, slice]]:
    """Windows inside one tile, across tile edges, reaching the padded edge, on each side
    of the frame, of 1 pixel (at the frame's first and last), full bands, the whole frame
    given as a window, and empty."""
    boxes = [
        (1, 2, 5, 7),
        (rows // 2 - 3, columns // 2 - 5, rows // 2, columns // 2 + 9),
        (rows - 9, columns - 4, 9, 4),
        (0, 5, 4, 6),  # the top side
        (rows - 4, 5, 4, 6),  # the bottom side
        (5, 0, 6, 4),  # the left side
        (5, columns - 4, 6, 4),  # the right side
        (0, 0, 1, 1),
        (rows - 1, columns - 1, 1, 1),
        (rows // 2, 0, 1, columns),  # one full row
        (0, columns - 1, rows, 1),  # the last column
        (3, 0, 7, columns),
        (0, 0, rows, columns),
        (3, 3, 0, 5),
    ]
    return [(slice(t, t + h), slice(x, x + w)) for t, x, h, w in boxes]


@pytest.mark.parametrize("threads", [1, 3])
def test_any_order_duplicates_windows_and_threads(archive: Archive, threads: int) -> None:
    path = _array_path(archive)
    expected = _pydicom_frames(archive)
    rows, columns = expected.shape[1:3]
    order = [6, 0, 3, 3, 1]  # across shards, out of order, a repeat, far apart in a shard
    got = archive.pixels.read_frames(path, order, threads=threads)
    assert np.array_equal(got, expected[order])
    for window in _windows(rows, columns):
        got = archive.pixels.read_frames(path, order, window, threads=threads)
        assert np.array_equal(got, expected[order][:, window[0], window[1]]), window
    with pytest.raises(ValueError, match="contiguous"):
        archive.pixels.read_frames(path, [0], (slice(0, 4, 2), slice(None)))


def test_a_window_of_a_tiled_frame_reads_and_decodes_only_its_tiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """128x128 frames in 32x32 tiles: a window over tile rows 1-2 and tile columns 0-1
    decodes those 4 tiles and reads the run of chunks 4..9 (C order), not the frame."""
    files = write_studies(
        tmp_path / "src", 1, 1, 3, rows=128, columns=128, seed=4, syntaxes=("explicit",)
    )
    with Archive.create(tmp_path / "archive", codec="lz4", tile=32) as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        assert archive.pixels.spec(path).tiles_per_frame == 16
        expected = _pydicom_frames(archive)
        stored = [archive.pixels.read_chunks(path, f, f + 1) for f in (0, 2)]
        decoded: list[tuple] = []
        reads: list[int] = []
        decode, pread = pixel_store.decode_chunk, os.pread
        monkeypatch.setattr(
            pixel_store, "decode_chunk", lambda *a: decoded.append(a[2]) or decode(*a)
        )
        monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(n) or pread(fd, n, at))
        window = (slice(40, 70), slice(10, 40))
        got = archive.pixels.read_frames(path, [0, 2], window)
    assert np.array_equal(got, expected[[0, 2], 40:70, 10:40])
    assert len(decoded) == 8  # 4 tiles a frame
    index_bytes = 16 * 64 * 16 + 4  # the shard's index: (offset, length) per chunk + crc32c
    assert [n for n in reads if n != index_bytes] == [
        sum(len(c) for c in chunks[4:10]) for chunks in stored
    ]


def test_volume_threads_equal_one_thread_and_frames(archive: Archive) -> None:
    (record,) = archive.query(level="series")
    series = Series(archive, record["SeriesInstanceUID"])
    one = series.volume(threads=1)
    many = series.volume(threads=4)
    assert np.array_equal(one.array, many.array) and one.array.dtype == many.array.dtype
    by_frame = {
        uid: series.frames[k] for k, uid in enumerate(r["SOPInstanceUID"] for r in series.rows)
    }
    assert np.array_equal(one.array, np.stack([by_frame[u] for u in one.sop_instance_uids]))


@pytest.mark.parametrize("codec", ["auto", "raw"])
def test_a_missing_frame_is_an_error(codec: str, tmp_path: Path) -> None:
    """Encoded and uncompressed arrays (read straight into the output) alike."""
    files = write_studies(tmp_path / "src", 1, 1, 2, rows=16, columns=16, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec=codec, frames_per_shard=4) as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        with pytest.raises(ValueError, match="missing from"):
            archive.pixels.read_frames(path, [2])
        assert zarr.open_array(archive.pixels.root / path, mode="r").shape[0] == 2


@pytest.mark.parametrize("codec", ["raw", "lz4"])
def test_a_damaged_chunk_that_still_decodes_is_an_error_naming_the_instance(
    codec: str, tmp_path: Path
) -> None:
    """A flipped bit in an uncompressed or LZ4 chunk decodes to other pixels: `frames`
    compares them with the hashes recorded at ingest (it returned them); a missing shard
    and a frame below zero are a ShardError naming the array, not a bare OSError."""
    files = write_studies(tmp_path / "src", 1, 1, 2, rows=32, columns=32, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec=codec, frames_per_shard=4) as archive:
        archive.ingest(files, workers=0)
        row = min(archive.index, key=lambda r: r["pixels"]["first_frame"])
        sop, path = row["SOPInstanceUID"], row["pixels"]["array"]
        before = archive.frames(sop)
        (shard,) = [p for p in (archive.pixels.root / path / "c").rglob("*") if p.is_file()]
        data = bytearray(shard.read_bytes())
        data[len(data) // 8] ^= 0x10  # inside the first frame's chunk, before the index
        shard.write_bytes(bytes(data))
        with pytest.raises(ArchiveError, match=f"{sop}: its frames do not decode"):
            archive.frames(sop)
        assert not np.array_equal(archive.frames(sop, check=False), before)
        with pytest.raises(ShardError, match="no frame of the array"):
            archive.pixels.read_frames(path, [-1])
        shard.unlink()
        with pytest.raises(ShardError, match=f"{re.escape(path)}: .*shard file is missing"):
            archive.pixels.read_frames(path, [0])
        assert isinstance(ShardError("x"), PacsEngineError)


def test_a_raw_frame_of_the_wrong_size_is_an_error(tmp_path: Path) -> None:
    """Uncompressed frames are read straight into the output: a shard index entry that
    gives another length is refused, not read into a frame."""
    files = write_studies(tmp_path / "src", 1, 1, 2, rows=16, columns=16, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="raw", frames_per_shard=4) as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        (shard,) = (p for p in (archive.pixels.root / path / "c").rglob("*") if p.is_file())
        data = bytearray(shard.read_bytes())
        entry = len(data) - 4 - 4 * 16  # frame 0's (offset, length), before the CRC32C
        length = int.from_bytes(data[entry + 8 : entry + 16], "little")
        data[entry + 8 : entry + 16] = (length - 2).to_bytes(8, "little")
        # A valid checksum over the changed index: only the length itself is wrong.
        data[-4:] = google_crc32c.value(bytes(data[-4 - 4 * 16 : -4])).to_bytes(4, "little")
        shard.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=f"stored as {length - 2} bytes, not {length}"):
            archive.pixels.read_frames(path, [0])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_shards_are_bounded_and_right_after_eviction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One frame per shard, two shards kept open: every read in an order that evicts and
    reopens shards gives pydicom's frame, a shard still kept is not opened again, no
    more than two shard files stay open, a forked child keeps its own, and closing the
    archive closes them."""
    files = write_studies(tmp_path / "src", 1, 1, 6, rows=16, columns=16, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="lz4", frames_per_shard=1) as archive:
        archive.ingest(files, workers=0)
    monkeypatch.setattr(pixel_store, "SHARD_CACHE", 2)
    with open_archive(tmp_path / "archive") as archive:
        path = _array_path(archive)
        expected = _pydicom_frames(archive)
        before = _open_fds()
        opened: list[str] = []
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda f, *a: opened.append(str(f)) or real_open(f, *a))
        # kept after each read (least recent first): 0 | 0 1 | 1 0 (hit) | 0 2 | 2 1 | 1 0 |
        # 0 5 | 0 5 (hit) | 5 3 | 3 0: 8 opens for 10 reads
        order = [0, 1, 0, 2, 1, 0, 5, 5, 3, 0]
        for f in order:
            assert np.array_equal(archive.pixels.read_frames(path, [f])[0], expected[f])
            assert len(archive.pixels._shards) <= 2
            assert _open_fds() <= before + 2
        assert len([f for f in opened if "/pixels/" in f and "/c/" in f]) == 8
        # A forked child (a DataLoader worker) starts with none of the parent's open shards.
        receive, send = multiprocessing.Pipe(duplex=False)

        def child() -> None:
            kept = len(archive.pixels._shards)
            same = [
                np.array_equal(archive.pixels.read_frames(path, [f])[0], expected[f]) for f in order
            ]
            send.send((kept, same, len(archive.pixels._shards)))

        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        assert receive.poll(60), "the forked reader did not answer"
        assert receive.recv() == (0, [True] * len(order), 2)
        process.join(10)
        assert process.exitcode == 0
        for end in (receive, send, process):
            end.close()
        assert np.array_equal(archive.pixels.read_frames(path, [3, 0]), expected[[3, 0]])
    assert _open_fds() <= before  # closing the archive closed the shards it kept open


def test_a_shard_rewritten_after_a_read_is_read_again(tmp_path: Path) -> None:
    """Writers replace a shard whole (a new file): a reader that kept the old file open
    reads the new one's frames. Here frames 2 and 3 are rewritten as copies of 0 and 1."""
    files = write_studies(tmp_path / "src", 1, 1, 4, rows=16, columns=16, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="lz4", frames_per_shard=4) as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        expected = _pydicom_frames(archive)
        assert not np.array_equal(expected[2:], expected[:2])
        assert np.array_equal(archive.pixels.read_frames(path, [3, 0, 2]), expected[[3, 0, 2]])
        archive.pixels.write_frames(path, 2, archive.pixels.read_chunks(path, 0, 2))
        assert np.array_equal(archive.pixels.read_frames(path, [3, 0, 2]), expected[[1, 0, 0]])


def test_a_shard_appended_to_is_the_shard_written_in_one_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard appended to is rewritten from its kept chunks, passed on as views of the
    bytes read (no copy of each), and is byte for byte the shard the same chunks make
    when written at once; zarr reads it."""
    files = write_studies(tmp_path / "src", 1, 1, 4, rows=16, columns=16, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="lz4", frames_per_shard=4) as archive:
        archive.ingest(files, workers=0)
        path, pixels = _array_path(archive), archive.pixels
        chunks = pixels.read_chunks(path, 0, 4)
        assert len(set(chunks)) == 4
        pixels.write_frames(path, 4, chunks)  # shard 1 in one go
        passed: list[list] = []
        real_parts = pixel_store.shard_parts

        def spied(inner: list, *args: object) -> list:
            passed.append(list(inner))
            return real_parts(inner, *args)

        monkeypatch.setattr(pixel_store, "shard_parts", spied)
        for first, stop in ((8, 9), (9, 11), (11, 12)):  # shard 2 a frame or two at a time
            pixels.write_frames(path, first, chunks[first - 8 : stop - 8])
        monkeypatch.undo()
        # Each write after the first passed the frames before it on as views.
        assert [sum(isinstance(c, memoryview) for c in inner) for inner in passed] == [0, 1, 3]
        one_go, appended = (Path(pixels._shard_file(path, n)).read_bytes() for n in (1, 2))
        assert appended == one_go
        pixels.set_frames(path, 12)
        array = zarr.open_array(pixels.root / path, mode="r")
        assert np.array_equal(array[8:12], array[0:4])


def test_a_shard_rewritten_by_its_writer_is_not_kept_open(tmp_path: Path) -> None:
    """Appending to a shard reads its frames, then replaces the file: the reader's open
    copy is dropped, so no deleted shard holds its disk space in the writing process."""
    files = write_studies(tmp_path / "src", 1, 1, 4, rows=16, columns=16, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="lz4", frames_per_shard=4) as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        for first in (4, 5, 6):  # frames 4-7 share a shard: each write reads the ones before
            archive.pixels.write_frames(path, first, archive.pixels.read_chunks(path, 0, 1))
        folder = Path("/proc/self/fd")
        held = [os.readlink(folder / fd) for fd in os.listdir(folder) if _readable(folder / fd)]
        archive_files = [target for target in held if target.startswith(str(tmp_path))]
        assert archive_files  # the shard read last is kept open, as readers want
        assert not [target for target in archive_files if target.endswith("(deleted)")], held


def _readable(link: Path) -> bool:
    try:
        os.readlink(link)
    except OSError:  # the listing's own descriptor, closed since
        return False
    return True


def test_whole_blosc_frames_decode_into_the_output_and_refuse_damaged_chunks(
    tmp_path: Path,
) -> None:
    """A whole lz4 frame decodes straight into its place in the output (pydicom's pixels,
    into a slice of a larger array too); a cut chunk or one of another size is a CodecError,
    never a frame of stale bytes."""
    files = write_studies(tmp_path / "src", 1, 1, 3, rows=32, columns=24, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="lz4") as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        expected = _pydicom_frames(archive)
        spec = archive.pixels.spec(path)
        out = np.full((5, 32, 24), -1, spec.dtype)
        archive.pixels.read_frames(path, [2, 0, 1], out=out[1:4])
        assert np.array_equal(out[1:4], expected[[2, 0, 1]])
        assert (out[[0, 4]] == -1).all()
        (chunk,) = archive.pixels.read_chunks(path, 1, 2)
        frame = np.full((32, 24), -1, spec.dtype)
        for damaged in (chunk[:-1], chunk[: len(chunk) // 2]):
            with pytest.raises(pixel_store.CodecError, match="damaged Blosc frame"):
                pixel_store.decode_frame(spec, [damaged], frame)
        smaller = dataclasses.replace(spec, rows=31)
        with pytest.raises(pixel_store.CodecError, match="not the 1488 of its chunk"):
            pixel_store.decode_frame(smaller, [chunk], np.empty((31, 24), spec.dtype))
        pixel_store.decode_frame(spec, [chunk], frame)
        assert np.array_equal(frame, expected[1])


@pytest.mark.parametrize("codec", ["lz4", "raw"])
def test_a_read_only_output_is_refused_and_left_as_it_was(codec: str, tmp_path: Path) -> None:
    """c-blosc writes into a read-only buffer (it changed a bytes object, it crashed on a
    read-only memmap): read_frames refuses such an `out` first, for every codec."""
    files = write_studies(tmp_path / "src", 1, 1, 3, rows=32, columns=24, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec=codec) as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        dtype = archive.pixels.spec(path).dtype
        frozen = bytes(3 * 32 * 24 * dtype.itemsize)
        out = np.frombuffer(frozen, dtype).reshape(3, 32, 24)
        with pytest.raises(ValueError, match="read-only array"):
            archive.pixels.read_frames(path, [0, 1, 2], out=out)
        assert not any(frozen)
        (tmp_path / "frames").write_bytes(frozen)
        mapped = np.memmap(tmp_path / "frames", dtype, "r", shape=(3, 32, 24))
        with pytest.raises(ValueError, match="read-only array"):
            archive.pixels.read_frames(path, [0, 1, 2], out=mapped)
        assert np.array_equal(archive.pixels.read_frames(path, [0, 1, 2]), _pydicom_frames(archive))


@pytest.mark.parametrize(("modality", "tile"), [("CT", None), ("MR", 32)])
def test_a_window_of_a_raw_frame_reads_its_bytes_without_a_decode(
    modality: str, tile: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncompressed 128x96 frames (CT int16 whole, MR uint16 in 32x32 tiles): a window of
    rows 40..69, columns 10..39 is read without a decode, per frame as one read of its rows
    (untiled) or one read per row of tiles of the 2 tiles it overlaps there (of 3 a row);
    frames given out of order and repeated are read once each, each shard opened once."""
    files = write_studies(
        tmp_path / "src", 1, 1, 3, rows=128, columns=96, seed=4, modalities=[modality]
    )
    policy = {"codec": "raw", "transcode": True, "tile": tile, "frames_per_shard": 2}
    with Archive.create(tmp_path / "archive", **policy) as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        expected = _pydicom_frames(archive)
        assert expected.dtype == ("int16" if modality == "CT" else "uint16")
        reads: list[int] = []
        preadv = os.preadv
        monkeypatch.setattr(pixel_store, "decode_chunk", None)  # any decode fails
        monkeypatch.setattr(
            os, "preadv", lambda fd, bufs, at: reads.append(len(bufs[0])) or preadv(fd, bufs, at)
        )
        opened: list[int] = []
        open_shard = pixel_store.PixelStore._open_shard
        monkeypatch.setattr(
            pixel_store.PixelStore,
            "_open_shard",
            lambda self, *a: opened.append(a[1]) or open_shard(self, *a),
        )
        order = [2, 0, 2, 1, 0]  # shards 1, 0, 1, 0, 0
        got = archive.pixels.read_frames(path, order, (slice(40, 70), slice(10, 40)))
    assert np.array_equal(got, expected[order, 40:70, 10:40]) and got.dtype == expected.dtype
    assert reads == ([30 * 96 * 2] * 3 if tile is None else [2 * 32 * 32 * 2] * 6)
    assert opened == [0, 1]


def test_whole_raw_frames_into_a_strided_output_are_read_without_a_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole uncompressed frames into an `out` that is not contiguous (the middle columns of
    a wider array) are read as a window of the whole frame, not decoded: pydicom's pixels,
    a repeat too, and the columns around them untouched."""
    files = write_studies(tmp_path / "src", 1, 1, 3, rows=32, columns=24, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="raw") as archive:
        archive.ingest(files, workers=0)
        path = _array_path(archive)
        expected = _pydicom_frames(archive)
        wide = np.full((3, 32, 28), 7, archive.pixels.spec(path).dtype)
        monkeypatch.setattr(pixel_store, "decode_chunk", None)  # any decode fails
        archive.pixels.read_frames(path, [2, 0, 2], out=wide[:, :, 2:26])
    assert np.array_equal(wide[:, :, 2:26], expected[[2, 0, 2]])
    assert (wide[:, :, [0, 1, 26, 27]] == 7).all()


def _raw_tiled_array(
    tmp_path: Path, frames: np.ndarray, reversed_shards: set[int]
) -> tuple[pixel_store.PixelStore, list[Path]]:
    """An uncompressed array "s/a" of these 4x6 int16 frames in 2x2 tiles, 2 frames a shard,
    and its shard files: those of `reversed_shards` hold their tiles stored last to first
    (their index lists them so; zarr allows any order), the others as we write them."""
    spec = pixel_store.ArraySpec(4, 6, 1, np.dtype("int16"), None, frames_per_shard=2, tile=2)
    tiles = [t.tobytes() for f in frames for t in pixel_store.split_tiles(f, spec)]
    pixels = pixel_store.PixelStore(tmp_path / "pixels")
    pixels.create()
    meta = json.loads(pixel_store.array_metadata(spec, {}))
    write_atomic(*pixels.new_array_file("s/a", meta, len(frames)))
    files = []
    for shard, (file, parts) in enumerate(pixels.shard_files("s/a", 0, tiles)):
        if shard in reversed_shards:  # 12 tiles of 8 bytes a shard
            table = np.array([(8 * (11 - k), 8) for k in range(12)], "<u8")
            index = table.tobytes() + google_crc32c.value(table.tobytes()).to_bytes(4, "little")
            parts = [*tiles[12 * shard : 12 * (shard + 1)][::-1], index]
        write_atomic(file, parts)
        files.append(file)
    return pixels, files


def test_raw_tiles_listed_out_of_order_are_read_one_by_one(tmp_path: Path) -> None:
    """Zarr lets a shard list its chunks in any order: a raw tiled frame whose tiles are not
    back to back is read tile by tile (not as one run), and its windows are right."""
    frames = np.arange(2 * 4 * 6, dtype="<i2").reshape(2, 4, 6) - 20
    pixels, _ = _raw_tiled_array(tmp_path, frames, {0})
    for window in _windows(4, 6):
        got = pixels.read_frames("s/a", [1, 0], window)
        assert np.array_equal(got, frames[[1, 0]][:, window[0], window[1]]), window


def test_a_later_shard_out_of_order_gives_the_right_windows(tmp_path: Path) -> None:
    """Raw tiled frames over two shards, the second's tiles out of order: every window
    (frames of both shards, out of order, a repeat) is right."""
    frames = np.arange(4 * 4 * 6, dtype="<i2").reshape(4, 4, 6) * 3 - 50
    pixels, _ = _raw_tiled_array(tmp_path, frames, {1})
    order = [3, 0, 2, 1, 0]
    for window in _windows(4, 6):
        got = pixels.read_frames("s/a", order, window)
        assert np.array_equal(got, frames[order][:, window[0], window[1]]), window


def test_a_window_over_many_raw_shards_holds_one_open_at_a_time(tmp_path: Path) -> None:
    """A window read of a series spanning more shards than the process may open at once
    (150 shards, 100 descriptors to spare) is read shard by shard, not all held open, and
    opens each shard once."""
    frames = np.arange(300 * 4 * 6, dtype="<i4").reshape(300, 4, 6).astype("<i2")
    pixels, files = _raw_tiled_array(tmp_path, frames, set())
    opened = Counter()
    open_file = os.open

    def counted(path: Any, *args: Any, **kwargs: Any) -> int:
        opened[str(path)] += 1
        return open_file(path, *args, **kwargs)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 100, hard))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "open", counted)
            got = pixels.read_frames("s/a", range(300), (slice(1, 3), slice(1, 5)))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert np.array_equal(got, frames[:, 1:3, 1:5])
    assert {opened[str(file)] for file in files} == {1}


def _raw_tiled(tmp_path: Path) -> tuple[Archive, str, Path]:
    """A raw archive of 2 frames of 64x64 in tiles of 32, its array and its shard file."""
    files = write_studies(tmp_path / "src", 1, 1, 2, rows=64, columns=64, syntaxes=("explicit",))
    archive = Archive.create(tmp_path / "archive", codec="raw", frames_per_shard=4, tile=32)
    archive.ingest(files, workers=0)
    path = _array_path(archive)
    (shard,) = (p for p in (archive.pixels.root / path / "c").rglob("*") if p.is_file())
    return archive, path, shard


def test_a_damaged_raw_tiled_shard_is_an_error_naming_the_array_and_frame(
    tmp_path: Path,
) -> None:
    """A window of a raw tiled frame is read without a decode, with the store's checks
    kept: a tile whose index entry gives another length (under a valid checksum), an index
    failing its checksum, a shard cut short (its index's checksum fails: the index read
    from its end is pixel bytes)."""
    archive, path, shard = _raw_tiled(tmp_path)
    window = (slice(10, 50), slice(20, 40))
    with archive:
        assert archive.pixels.read_frames(path, [1], window).shape == (1, 40, 20)
        good = shard.read_bytes()
        data = bytearray(good)
        index = len(data) - 4 - 16 * 16
        entry = index + 16 * (4 + 3) + 8  # frame 1's last tile's length
        data[entry : entry + 8] = (2046).to_bytes(8, "little")
        data[-4:] = google_crc32c.value(bytes(data[index:-4])).to_bytes(4, "little")
        shard.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=f"{path}: frame 1 .*stored as 2046 bytes, not 2048"):
            archive.pixels.read_frames(path, [0, 1], window)
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=f"{path}: frames 0..1: .*fails its checksum"):
            archive.pixels.read_frames(path, [0, 1], window)
        shard.write_bytes(good[:-100])
        with pytest.raises(ValueError, match=f"{path}: frames 0..1: .*fails its checksum"):
            archive.pixels.read_frames(path, [0, 1], window)


@pytest.mark.parametrize(
    ("tile", "whole"), [(None, True), (None, False), (32, False)], ids=["whole", "window", "tiled"]
)
def test_a_raw_shard_cut_short_while_open_is_an_error_naming_the_array_and_frame(
    tile: int | None, whole: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard truncated in place by another process between the open shard's freshness
    check and the read (the only way to reach it: a changed file is opened again and its
    index checked) gives a short read of raw frame 1 and an error naming it, not a frame
    of stale bytes or a SIGBUS; frame 0, before the cut, still reads right."""
    window = pixel_store.FULL_FRAME if whole else (slice(10, 50), slice(20, 40))
    files = write_studies(tmp_path / "src", 1, 1, 2, rows=64, columns=64, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="raw", frames_per_shard=4, tile=tile) as arc:
        arc.ingest(files, workers=0)
        path = _array_path(arc)
        expected = _pydicom_frames(arc)[:, window[0], window[1]]
        assert np.array_equal(arc.pixels.read_frames(path, [1, 0], window), expected[[1, 0]])
        (shard,) = (p for p in (arc.pixels.root / path / "c").rglob("*") if p.is_file())
        monkeypatch.setattr(pixel_store._OpenShard, "current", lambda self, file: True)
        os.truncate(shard, 64 * 64 * 2 + 100)  # frame 1's first 100 bytes left
        with pytest.raises(ValueError, match=f"{path}: frame 1 is cut short in its shard"):
            arc.pixels.read_frames(path, [0, 1], window)
        assert np.array_equal(arc.pixels.read_frames(path, [0], window), expected[[0]])


def test_raw_windows_on_a_big_endian_machine_are_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw chunks are little-endian: on a big-endian machine a window is not read as the
    machine's values straight from the shard but decoded (swapped) like any chunk."""
    archive, path, _ = _raw_tiled(tmp_path)
    with archive:
        expected = archive.pixels.read_frames(path, [0, 1])[:, 10:50, 20:40]
        monkeypatch.setattr(pixel_store, "sys", SimpleNamespace(byteorder="big"))
        monkeypatch.setattr(pixel_store.PixelStore, "_read_raw_windows", None)  # not called
        decoded: list[tuple] = []
        decode = pixel_store.decode_chunk
        monkeypatch.setattr(
            pixel_store, "decode_chunk", lambda *a: decoded.append(a[2]) or decode(*a)
        )
        got = archive.pixels.read_frames(path, [0, 1], (slice(10, 50), slice(20, 40)))
    assert np.array_equal(got, expected) and len(decoded) == 2 * 4
