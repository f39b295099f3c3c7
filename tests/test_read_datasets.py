"""pacs_engine.read.datasets: frames, volumes and patches, in one process and across fork/spawn."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import corpus_files, require_corpus
from pydicom.errors import InvalidDicomError

from pacs_engine import Archive, open_archive
from pacs_engine.cli import main
from pacs_engine.index.query import QueryError
from pacs_engine.read import (
    FrameDataset,
    PatchDataset,
    Series,
    VolumeDataset,
    VolumeError,
)
from pacs_engine.read.datasets import NONE_SELECTED, NOT_SELECTED
from pacs_engine.read.volume import read_stack
from pacs_engine.synth import write_studies

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Single-frame CT and MR; multi-frame: a 15-frame 10x10 RT dose, a 2-frame RGB in RLE.
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "SC_rgb_rle_2frame.dcm"]


@pytest.fixture(scope="module")
def archive_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An archive of two synthetic 8-slice series and pydicom's small CT/MR files."""
    tmp = tmp_path_factory.mktemp("datasets")
    files = write_studies(tmp / "synth", 2, 1, 8, rows=64, columns=64, seed=1)
    files += [TEST_FILES / name for name in PYDICOM_FILES if (TEST_FILES / name).is_file()]
    # Small shards, so the synthetic series span several shards.
    with Archive.create(tmp / "archive", codec="jpegls", frames_per_shard=3) as archive:
        archive.ingest(files, workers=0)
    return str(tmp / "archive")


@pytest.fixture(scope="module")
def archive(archive_path: str) -> Archive:
    arc = open_archive(archive_path)
    yield arc
    arc.close()


def _volume_series(archive: Archive) -> list[str]:
    """The synthetic series: 8 single-frame instances each."""
    return [
        r["SeriesInstanceUID"]
        for r in archive.query(level="series")
        if len(archive.index.series(r["SeriesInstanceUID"])) == 8
    ]


def _frames(archive: Archive, record: dict) -> int:
    rows = archive.index.series(record["SeriesInstanceUID"])
    return sum(r["pixels"]["frames"] for r in rows if r.get("pixels"))


def _key(item: dict) -> tuple:
    return (item["series_instance_uid"], item["sop_instance_uid"], item["frame"])


# --- FrameDataset ------------------------------------------------------------------------


def test_frames_equal_archive_frames(archive: Archive, archive_path: str) -> None:
    dataset = FrameDataset(archive_path)
    expected = sum(_frames(archive, r) for r in archive.query(level="series"))
    assert len(dataset) == expected >= 16 + 2
    keys = [_key(dataset[k]) for k in range(len(dataset))]
    assert len(set(keys)) == len(keys)
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)
    for k in range(len(dataset)):
        item = dataset[k]
        frame = archive.frames(item["sop_instance_uid"])[item["frame"]]
        assert item["pixels"].dtype == frame.dtype
        np.testing.assert_array_equal(item["pixels"], frame)
    assert _key(dataset[-1]) == keys[-1]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_frames_selected_series_and_rescale(archive: Archive, archive_path: str) -> None:
    uid = _volume_series(archive)[0]
    dataset = FrameDataset(archive_path, [uid], rescale=True)
    assert len(dataset) == 8
    volume = Series(archive, uid).volume(rescale=True)
    assert volume.array.dtype == np.int16  # the integer HU `rescale` gives
    by_sop = dict(zip(volume.sop_instance_uids, volume.array, strict=True))
    as_int16 = FrameDataset(archive, [uid], rescale=True, dtype="int16")
    for k in range(len(dataset)):
        item = dataset[k]
        assert item["series_instance_uid"] == uid
        assert item["pixels"].dtype == np.float32  # the default with rescale
        np.testing.assert_array_equal(item["pixels"], by_sop[item["sop_instance_uid"]])
        exact = as_int16[k]["pixels"]
        assert exact.dtype == np.int16
        np.testing.assert_array_equal(exact, by_sop[item["sop_instance_uid"]])
    with pytest.raises(ValueError, match="do not fit"):
        FrameDataset(archive, [uid], rescale=True, dtype="uint8")[0]
    with pytest.raises(KeyError):
        FrameDataset(archive_path, ["1.2.3.4"])


def test_iter_chunks_yields_the_same_frames(archive_path: str) -> None:
    dataset = FrameDataset(archive_path)
    chunks = dataset.iter_chunks()
    runs = chunks.runs
    assert sum(b - a for a, b in runs) == len(dataset)
    assert max(b - a for a, b in runs) <= 3  # never more than one shard per read
    assert max(b - a for a, b in runs) > 1  # several frames per read
    streamed = list(chunks)
    mapped = [dataset[k] for k in range(len(dataset))]
    assert Counter(map(_key, streamed)) == Counter(map(_key, mapped))
    # Array order is the map order: same items, same pixels, same order.
    for a, b in zip(streamed, mapped, strict=True):
        assert _key(a) == _key(b)
        assert a["pixels"].dtype == b["pixels"].dtype
        np.testing.assert_array_equal(a["pixels"], b["pixels"])


# --- VolumeDataset -----------------------------------------------------------------------


def test_volumes(archive: Archive, archive_path: str) -> None:
    uids = _volume_series(archive)
    dataset = VolumeDataset(archive_path, uids, rescale=True)
    assert len(dataset) == len(uids) == 2
    for k, uid in enumerate(uids):
        item = dataset[k]
        volume = Series(archive, uid).volume(rescale=True)
        assert item["series_instance_uid"] == uid
        assert item["pixels"].dtype == np.float32 != volume.array.dtype
        np.testing.assert_array_equal(item["pixels"], volume.array)
        np.testing.assert_allclose(item["affine"], volume.affine)
        np.testing.assert_array_equal(item["affine_lps"], item["affine"])
        assert item["sop_instance_uids"] == volume.sop_instance_uids


def test_volumes_invalid_series(archive: Archive, archive_path: str) -> None:
    multiframe = [
        r["SeriesInstanceUID"]
        for r in archive.query(level="instance")
        if r.get("pixels") and r["pixels"]["frames"] > 1
    ]
    assert len(multiframe) == 2  # multi-frame instances are not volumes yet
    with pytest.raises(VolumeError):
        VolumeDataset(archive_path, multiframe[:1])
    dataset = VolumeDataset(archive_path, skip_invalid=True)
    assert set(multiframe) <= set(dataset.skipped)
    assert set(_volume_series(archive)) <= set(dataset.series_uids)


# --- PatchDataset ------------------------------------------------------------------------


def test_patches_3d_deterministic_and_inside(archive: Archive, archive_path: str) -> None:
    uids = _volume_series(archive)
    dataset = PatchDataset(archive_path, (4, 16, 24), samples=20, seed=7, series_uids=uids)
    again = PatchDataset(archive_path, (4, 16, 24), samples=20, seed=7, series_uids=uids)
    other = PatchDataset(archive_path, (4, 16, 24), samples=20, seed=8, series_uids=uids)
    volumes = {uid: Series(archive, uid).volume() for uid in uids}
    differ = 0
    for k in range(len(dataset)):
        item = dataset[k]
        assert item["pixels"].shape == (4, 16, 24)
        z, y, x = item["offset"]
        volume = volumes[item["series_instance_uid"]].array
        assert 0 <= z <= volume.shape[0] - 4 and 0 <= y <= 64 - 16 and 0 <= x <= 64 - 24
        expected = volume[z : z + 4, y : y + 16, x : x + 24]
        assert item["pixels"].dtype == expected.dtype
        np.testing.assert_array_equal(item["pixels"], expected)
        twin = again[k]
        assert twin["series_instance_uid"] == item["series_instance_uid"]
        np.testing.assert_array_equal(twin["offset"], item["offset"])
        np.testing.assert_array_equal(twin["pixels"], item["pixels"])
        o = other[k]
        differ += o["series_instance_uid"] != item["series_instance_uid"] or not np.array_equal(
            o["offset"], item["offset"]
        )
    assert differ >= 10
    # Both series are drawn, and item i does not depend on what was read before.
    assert len({dataset.draw(k)[0] for k in range(len(dataset))}) == 2
    assert dataset.draw(5) == PatchDataset(
        archive_path, (4, 16, 24), samples=20, seed=7, series_uids=uids
    ).draw(5)


def test_patches_3d_rescale_and_weights(archive: Archive, archive_path: str) -> None:
    uids = _volume_series(archive)
    dataset = PatchDataset(
        archive_path, (8, 64, 64), samples=6, seed=3, weights={uids[1]: 1.0}, rescale=True
    )
    assert dataset.series_uids == uids  # 8x64x64 only fits the synthetic series
    volume = Series(archive, uids[1]).volume(rescale=True).array
    for k in range(len(dataset)):
        item = dataset[k]
        assert item["series_instance_uid"] == uids[1]
        assert item["pixels"].dtype == np.float32
        np.testing.assert_array_equal(item["pixels"], volume)
    with pytest.raises(ValueError):
        PatchDataset(archive_path, (9, 64, 64), samples=1)


def test_patches_2d(archive: Archive, archive_path: str) -> None:
    dataset = PatchDataset(archive_path, (32, 48), samples=30, seed=1)
    large = [
        r["SeriesInstanceUID"]
        for r in archive.query(level="series")
        if archive.index.series(r["SeriesInstanceUID"])[0]["Rows"] >= 32
    ]
    assert dataset.series_uids == large  # all but the 10x10 RT dose
    assert any(dataset[k]["pixels"].shape == (32, 48, 3) for k in range(len(dataset)))
    for k in range(len(dataset)):
        item = dataset[k]
        y, x = item["offset"]
        frame = archive.frames(item["sop_instance_uid"])[item["frame"]]
        np.testing.assert_array_equal(item["pixels"], frame[y : y + 32, x : x + 48])
    assert [dataset.draw(k) for k in range(30)] == [
        PatchDataset(archive_path, (32, 48), samples=30, seed=1).draw(k) for k in range(30)
    ]


@pytest.mark.parametrize("codec", ["record", "lz4", "raw", "lz4 tiled", "raw tiled"])
def test_patches_of_each_store_equal_pydicom_crops(
    archive: Archive, archive_path: str, tmp_path: Path, codec: str
) -> None:
    """3-D and 2-D patches (stored values: CT int16, MR uint16, RGB) from the archive of
    record (JPEG-LS, shards of 3 frames: a patch spans shards) and from lz4 and raw copies,
    whole frames or tiles of 16 (a raw patch's slices are cut from the shard's bytes without
    a decode) equal pydicom's pixel_array of the source files, cropped."""
    path = archive_path
    if codec != "record":
        path = str(tmp_path / codec.replace(" ", "-"))
        name, *tiled = codec.split()
        argv = ["ingest", archive_path, "--archive", path, "--codec", name, "--transcode"]
        argv += ["--tile", "16"] if tiled else []
        assert main([*argv, "--workers", "0", "--no-progress"]) == 0
    sources = {r["SOPInstanceUID"]: r["source_path"] for r in archive.index if r.get("pixels")}
    volumes = {
        uid: Series(archive, uid).volume().sop_instance_uids for uid in _volume_series(archive)
    }

    def source(uid: str) -> np.ndarray:
        return pydicom.dcmread(sources[uid]).pixel_array

    cubes = PatchDataset(path, (5, 20, 28), samples=8, seed=2, series_uids=list(volumes))
    for k in range(len(cubes)):
        item = cubes[k]
        z, y, x = (int(v) for v in item["offset"])
        slices = volumes[item["series_instance_uid"]][z : z + 5]
        expected = np.stack([source(uid)[y : y + 20, x : x + 28] for uid in slices])
        assert item["pixels"].dtype == expected.dtype
        np.testing.assert_array_equal(item["pixels"], expected)
    planes = PatchDataset(path, (24, 30), samples=12, seed=4)
    for k in range(len(planes)):
        item = planes[k]
        y, x = (int(v) for v in item["offset"])
        pixels = source(item["sop_instance_uid"])
        if pixels.ndim > 2 + (pixels.shape[-1] in (3, 4)):  # a multi-frame instance
            pixels = pixels[item["frame"]]
        np.testing.assert_array_equal(item["pixels"], pixels[y : y + 24, x : x + 30])


def test_read_stack_interleaves_arrays_and_refuses_mixed_frames(tmp_path: Path) -> None:
    """Frames of two arrays, interleaved, cut to a window, in the order asked; frames of
    arrays of different sizes are a VolumeError naming the instances of the odd array."""
    files = write_studies(tmp_path / "a", 1, 2, 4, rows=32, columns=32, seed=5, modalities=["CT"])
    files += write_studies(tmp_path / "b", 1, 1, 2, rows=16, columns=16, seed=6, modalities=["CT"])
    with Archive.create(tmp_path / "archive", codec="jpegls", frames_per_shard=3) as archive:
        assert archive.ingest(files, workers=0).archived == 10
        arrays = sorted({r["pixels"]["array"]: r["Rows"] for r in archive.index}.items())
        (one, _), (two, _) = [(a, n) for a, n in arrays if n == 32]
        (odd,) = [a for a, n in arrays if n == 16]
        where = [(one, 3), (two, 1), (one, 0), (two, 2), (one, 1)]
        window = (slice(3, 30), slice(10, 32))
        rows = [{"SOPInstanceUID": name} for name in "abcdex"]
        got = read_stack(archive.pixels, where, rows[:5], window)
        for k, (array, frame) in enumerate(where):
            alone = archive.pixels.read_frames(array, [frame])[0]
            np.testing.assert_array_equal(got[k], alone[window])
        with pytest.raises(VolumeError, match="differ in shape") as refused:
            read_stack(archive.pixels, [*where[:2], (odd, 0)], [*rows[:2], rows[5]])
        assert refused.value.sop_instance_uids == ["x"]
        with pytest.raises(ValueError, match="read into an array"):
            archive.pixels.read_frames(one, [0, 1], out=np.empty((1, 32, 32), got.dtype))


def test_patches_of_a_tiled_copy_equal_pydicom(
    archive: Archive, archive_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A training copy made with --tile stores 64x64 frames as 16 chunks of 16x16; its
    patches (which decode only the chunks they overlap) hold pydicom's pixels; `info`
    says the tile size and how many instances are stored in tiles."""
    copy = tmp_path / "copy"
    argv = ["ingest", archive_path, "--archive", str(copy), "--codec", "lz4", "--transcode"]
    assert main([*argv, "--tile", "16", "--workers", "0", "--no-progress"]) == 0
    uids = _volume_series(archive)
    with open_archive(copy) as tiled:
        spec = tiled.pixels.spec(tiled.index.series(uids[0])[0]["pixels"]["array"])
        assert (spec.tile, spec.tiles_per_frame) == (16, 16)
        info = tiled.info()
        tiled_rows = [
            r
            for r in tiled.index
            if r.get("pixels") and tiled.pixels.spec(r["pixels"]["array"]).tiles_per_frame > 1
        ]
    assert info["storage"]["tile"] == 16 and info["storage"]["codec"] == "lz4"
    assert info["by_chunks"]["tiles of 16x16, 64 frames a shard"]["instances"] == len(tiled_rows)
    assert len(tiled_rows) >= 16  # both synthetic series, and pydicom's larger frames
    assert main(["info", str(copy)]) == 0
    shown = capsys.readouterr().out
    assert "in tiles of 16" in shown and "tiles of 16x16, 64 frames a shard" in shown
    plain = archive.info()  # an archive made without --tile
    assert plain["storage"]["tile"] == 1024
    assert set(plain["by_chunks"]) - {"no pixel data"} == {"whole frames, 3 a shard"}
    by_uid = {r["SOPInstanceUID"]: r for r in archive.index if r.get("pixels")}
    files = {uid: by_uid[uid]["source_path"] for uid in by_uid}
    dataset = PatchDataset(copy, (4, 20, 24), samples=12, seed=5, series_uids=uids, rescale=True)
    record = PatchDataset(archive_path, (4, 20, 24), samples=12, seed=5, series_uids=uids)
    volumes = {uid: Series(archive, uid).volume() for uid in uids}
    for k in range(len(dataset)):
        item, z, (_, y, x) = dataset[k], dataset.draw(k)[2][0], dataset.draw(k)[2]
        instances = volumes[item["series_instance_uid"]].sop_instance_uids[z : z + 4]
        expected = []
        for uid in instances:
            ds = pydicom.dcmread(files[uid])
            hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
            expected.append(hu[y : y + 20, x : x + 24])
        np.testing.assert_array_equal(item["pixels"], np.stack(expected))
        assert record.draw(k) == dataset.draw(k)
    # A copy's tile size is chosen when it is made: asked again differently, it is refused.
    assert main([*argv, "--tile", "32", "--workers", "0", "--no-progress"]) == 2
    with pytest.raises(ValueError, match="tile must be"):
        Archive.create(tmp_path / "bad", tile=8)


# --- processes ---------------------------------------------------------------------------


def _datasets(archive_path: str) -> list:
    return [
        FrameDataset(archive_path, rescale=True),
        FrameDataset(archive_path, instance_query={"ImageType": "ORIGINAL\\PRIMARY*"}),
        VolumeDataset(archive_path, skip_invalid=True),
        VolumeDataset(archive_path, skip_invalid=True, instance_query={"ImageType": "*AXIAL"}),
        PatchDataset(archive_path, (3, 20, 20), samples=12, seed=11),
        PatchDataset(archive_path, (20, 20), samples=12, seed=11, rescale=True),
    ]


def _pixels(item: dict) -> tuple[str, tuple, bytes]:
    array = np.asarray(item["pixels"])  # a DataLoader hands over torch tensors
    return array.dtype.str, array.shape, array.tobytes()


def _chunk_keys(chunks: object) -> list[tuple]:
    return [(*_key(item), np.asarray(item["pixels"]).tobytes()) for item in chunks]  # type: ignore[attr-defined]


def test_datasets_pickle_small(archive_path: str) -> None:
    for dataset in _datasets(archive_path):
        data = pickle.dumps(dataset)
        assert b"lmdb" not in data.lower() and b"zarr" not in data.lower()
        clone = pickle.loads(data)
        assert _pixels(clone[0]) == _pixels(dataset[0])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_matches_one_process(archive_path: str, method: str) -> None:
    context = multiprocessing.get_context(method)
    datasets = _datasets(archive_path)
    chunks = datasets[0].iter_chunks()
    with context.Pool(2) as pool:
        for dataset in datasets:
            local = [_pixels(dataset[k]) for k in range(len(dataset))]
            remote = pool.map(dataset.__getitem__, range(len(dataset)))
            assert [_pixels(item) for item in remote] == local
        assert pool.apply(_chunk_keys, (chunks,)) == _chunk_keys(chunks)


def test_iter_chunks_split_between_workers(
    archive_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pacs_engine.read import datasets

    dataset = FrameDataset(archive_path)
    chunks = dataset.iter_chunks()
    everything = _chunk_keys(chunks)
    shares = []
    for worker in range(3):
        monkeypatch.setattr(datasets, "worker_share", lambda n, w=worker: range(w, n, 3))
        shares.append(_chunk_keys(chunks))
    assert all(shares)
    assert sorted(k for share in shares for k in share) == sorted(everything)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_torch_dataloader_with_two_workers_matches_one_process(
    archive_path: str, method: str
) -> None:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from torch.utils.data import DataLoader

    for dataset in _datasets(archive_path):
        assert isinstance(dataset, torch.utils.data.Dataset)
        local = [_pixels(dataset[k]) for k in range(len(dataset))]
        loader = DataLoader(
            dataset,
            batch_size=None,  # items as the dataset gives them
            num_workers=2,
            multiprocessing_context=method,
        )
        assert [_pixels(item) for item in loader] == local
    chunks = FrameDataset(archive_path).iter_chunks()
    streamed = DataLoader(chunks, batch_size=None, num_workers=2, multiprocessing_context=method)
    # Each worker streams its share of the shard runs; together every frame once.
    assert sorted(_chunk_keys(streamed)) == sorted(_chunk_keys(chunks))


class _WithOpenShards:
    """A FrameDataset's items with their index, the reading process and its open shards."""

    def __init__(self, dataset: FrameDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        from pacs_engine.read.datasets import _handle

        pixels = self.dataset[index]["pixels"]
        kept = len(_handle(self.dataset.archive_path).archive.pixels._shards)  # after the read
        return {"index": index, "pixels": pixels, "pid": os.getpid(), "kept": kept}


def test_open_shards_are_per_process_in_dataloader_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two shard files kept open per process: forked workers start with none of the
    parent's, stay within two while a shuffled epoch evicts and reopens shards, read
    the parent's frames, and the parent reads on through its own afterwards."""
    pytest.importorskip("torch", reason="the torch extra is not installed")
    from torch import Generator
    from torch.utils.data import DataLoader

    from pacs_engine.archive import pixel_store

    monkeypatch.setattr(pixel_store, "SHARD_CACHE", 2)
    files = write_studies(tmp_path / "src", 2, 1, 6, rows=16, columns=16, syntaxes=("explicit",))
    with Archive.create(tmp_path / "archive", codec="lz4", frames_per_shard=2) as archive:
        archive.ingest(files, workers=0)
    dataset = _WithOpenShards(FrameDataset(tmp_path / "archive"))
    local = [dataset[k] for k in range(len(dataset))]  # 12 frames in 6 shards
    assert [item["kept"] for item in local] == [1, 1] + [2] * 10  # frames 0, 1: shard 0
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=True,
        generator=Generator().manual_seed(3),
        num_workers=2,
        multiprocessing_context="fork",
    )
    items = list(loader)
    assert sorted(item["index"] for item in items) == list(range(len(dataset)))
    for item in items:
        assert np.array_equal(np.asarray(item["pixels"]), local[item["index"]]["pixels"])
    workers = {item["pid"] for item in items}
    assert len(workers) == 2 and os.getpid() not in workers
    for pid in workers:
        kept = [item["kept"] for item in items if item["pid"] == pid]
        assert kept[0] == 1 and max(kept) <= 2  # its first read's shard, none of the parent's
    again = [dataset[k] for k in range(len(dataset))]
    assert all(np.array_equal(a["pixels"], b["pixels"]) for a, b in zip(again, local, strict=True))


# --- selection by a query ----------------------------------------------------------------


def test_from_query_selects_series_and_counts_exclusions(
    archive: Archive, archive_path: str
) -> None:
    ct_series = {r["SeriesInstanceUID"] for r in archive.query(level="series", Modality="CT")}
    assert 1 <= len(ct_series) < len(archive.query(level="series"))
    ct = FrameDataset.from_query(archive, Modality="CT", rescale=True)
    assert set(ct.series_uids) == ct_series
    assert ct.query == {"Modality": "CT"} and ct.rescale
    assert {ct[k]["series_instance_uid"] for k in range(len(ct))} == ct_series
    assert "selected by the series query {'Modality': 'CT'}" in ct.report()
    # Colour instances are left out when grayscale is asked, and counted.
    rgb = [r for r in archive.query(level="instance") if (r.get("SamplesPerPixel") or 1) > 1]
    assert len(rgb) == 1
    every, gray = FrameDataset(archive_path), FrameDataset.from_query(archive, grayscale=True)
    assert len(gray) == len(every) - rgb[0]["pixels"]["frames"]
    assert gray.excluded == {"not grayscale (SamplesPerPixel > 1)": 1}
    assert "excluded: 1 instances, not grayscale" in gray.report()
    assert "excluded_instances=1" in repr(gray)
    with pytest.raises(QueryError):
        FrameDataset.from_query(archive, NoSuchKeyword="x")
    volumes = VolumeDataset.from_query(archive_path, Modality="CT", skip_invalid=True)
    assert set(volumes.series_uids) | set(volumes.skipped) == ct_series
    patches = PatchDataset.from_query(archive, patch_size=(16, 16), samples=4, Modality="CT")
    assert set(patches.series_uids) <= ct_series
    assert {patches[k]["series_instance_uid"] for k in range(4)} <= ct_series


def test_from_query_selects_instances_by_image_type_and_kernel(tmp_path: Path) -> None:
    """The issue's selection on the corpus CT: from_query(archive, Modality="CT", ImageType=
    "ORIGINAL\\PRIMARY*", ConvolutionKernel=K) holds the frames of exactly the instances
    whose pydicom values match; the others of the selected series are left out and
    counted; one ImageType value matches any of an instance's values; a volume stacks only
    the instances that match, and a series with none is skipped, saying why."""
    require_corpus()
    files = {}
    for path in corpus_files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, AttributeError, OSError):
            continue
        if ds.get("Modality") == "CT" and "SOPInstanceUID" in ds:
            files[str(ds.SOPInstanceUID)] = (path, ds)
    with Archive.create(tmp_path / "archive", codec="jpegls") as archive:
        archive.ingest([p for p, _ in files.values()], workers=0)
        held = {r["SOPInstanceUID"] for r in archive.query("instance")}
    files = {uid: f for uid, f in files.items() if uid in held}
    joined = {uid: "\\".join(ds.get("ImageType") or []) for uid, (_, ds) in files.items()}
    kernels = Counter(str(ds.get("ConvolutionKernel")) for _, ds in files.values())
    kernel_name = kernels.most_common(1)[0][0]
    dataset = FrameDataset.from_query(
        tmp_path / "archive", Modality="CT", ImageType="ORIGINAL\\PRIMARY*",
        ConvolutionKernel=kernel_name, rescale=True,
    )  # fmt: skip
    want = {
        uid
        for uid, (_, ds) in files.items()
        if joined[uid].startswith("ORIGINAL\\PRIMARY")
        and ds.get("ConvolutionKernel") == kernel_name
    }
    assert 10 <= len(want) < len(files)
    assert set(dataset.instances) == want
    assert {dataset[k]["sop_instance_uid"] for k in range(len(dataset))} == want
    assert dataset.query == {"Modality": "CT"}
    assert dataset.instance_query == {
        "ImageType": "ORIGINAL\\PRIMARY*", "ConvolutionKernel": kernel_name
    }  # fmt: skip
    assert dataset.excluded[NOT_SELECTED] == len(files) - len(want)
    assert "instances selected by the instance query" in dataset.report()
    localizers = FrameDataset.from_query(tmp_path / "archive", ImageType="LOCALIZER")
    assert set(localizers.instances) == {
        u for u, v in joined.items() if "LOCALIZER" in v.split("\\")
    }
    assert localizers.instances
    # Only the series with an instance that matched are listed (the others had all left out).
    series_of = {uid: str(ds.SeriesInstanceUID) for uid, (_, ds) in files.items()}
    assert set(dataset.series_uids) == {series_of[uid] for uid in want}
    assert set(localizers.series_uids) == {series_of[uid] for uid in localizers.instances}
    assert len(localizers.series_uids) < len(set(series_of.values()))
    with pytest.raises(QueryError, match="ImageType"):
        FrameDataset.from_query(tmp_path / "archive", ImageTyp="ORIGINAL")
    volumes = VolumeDataset.from_query(
        tmp_path / "archive", ImageType="ORIGINAL\\PRIMARY\\AXIAL", skip_invalid=True
    )
    axial = {u for u, v in joined.items() if v == "ORIGINAL\\PRIMARY\\AXIAL"}
    assert len(volumes) >= 2
    for k in range(len(volumes)):
        assert set(volumes[k]["sop_instance_uids"]) <= axial
    assert NONE_SELECTED in volumes.skipped.values()  # the series of derived screens
