"""`__getitems__`: a batch's items decoded into one block, handed over by `collate` uncopied."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from batch_helpers import assert_same_batch, storages
from conftest import CORPUS, require_corpus
from torch.utils.data import DataLoader, Subset, default_collate

from pacs_engine import Archive, open_archive
from pacs_engine.archive.pixel_store import CodecError, PixelStore
from pacs_engine.read import FrameDataset, PatchDataset, collate
from pacs_engine.read.collation import batch_arrays
from pacs_engine.read.volume import convert, convert_into
from pacs_engine.synth import write_studies

# 512x512 CT stored as uint16 (Philips) and int16 (signed JPEG-LS), 256x512 scouts, a
# 128x128 CT, an RGB secondary capture (RLE) and a small MR.
CORPUS_FILES = [
    *(f"dcm_qa_ct/Philips/S21570/S2010/I{n}" for n in (10, 20, 30, 40)),
    *(f"dcm_qa_ct/Philips/S21570/S4010/I{n}" for n in (10, 20)),
    "pylibjpeg-data/JPEGLS/CT1_JLSN.dcm",
    "pydicom/test_files/CT_small.dcm",
    "pydicom/test_files/SC_rgb_rle.dcm",
    "pydicom/test_files/MR_small.dcm",
]
INDICES = [3, 0, 5, 5, -1, 2]  # shuffled, a repeat and a negative index


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The corpus files in an archive of record; synthetic CT and MR in lz4 copies."""
    require_corpus()
    tmp = tmp_path_factory.mktemp("getitems")
    with Archive.create(tmp / "corpus") as archive:
        assert archive.ingest([CORPUS / name for name in CORPUS_FILES], workers=0).balanced
    out = {"corpus": tmp / "corpus"}
    for modality, size in (("CT", 64), ("MR", 32)):
        files = write_studies(
            tmp / modality, 2, 1, 8, rows=size, columns=size, modalities=(modality,), seed=3
        )
        with Archive.create(tmp / f"{modality} copy", codec="lz4", transcode=True) as archive:
            assert archive.ingest(files, workers=0).balanced
        out[modality] = tmp / f"{modality} copy"
    return out


def _series(path: Path, modality: str | None = None, samples: int = 1) -> list[str]:
    with open_archive(path) as archive:
        uids = [str(r["SeriesInstanceUID"]) for r in archive.index.all_series()]
        rows = [r for uid in uids for r in archive.index.series(uid)]
    return sorted(
        {
            str(r["SeriesInstanceUID"])
            for r in rows
            if r.get("pixels")
            and modality in (None, r.get("Modality"))
            and int(r.get("SamplesPerPixel") or 1) == samples
        }
    )


def _datasets(paths: dict[str, Path]) -> dict[str, tuple[Any, bool]]:
    """name -> (dataset, whether its batches of INDICES are one block)."""
    corpus, ct, mr = paths["corpus"], paths["CT"], paths["MR"]
    grey_ct = _series(corpus, "CT")
    rgb = _series(corpus, samples=3)
    assert grey_ct and rgb
    return {
        # int16 and uint16 stored frames, one float32 HU block
        "CT HU float32": (FrameDataset(corpus, grey_ct, rescale=True, shape=(512, 512)), True),
        "CT HU int16": (
            FrameDataset(corpus, grey_ct, rescale=True, dtype="int16", shape=(512, 512)),
            True,
        ),
        "CT resampled": (
            FrameDataset(corpus, grey_ct, rescale=True, shape=(96, 80), on_mismatch="resample"),
            True,
        ),
        "CT padded": (
            FrameDataset(
                corpus, grey_ct, rescale=True, shape=(512, 512), on_mismatch="pad", pad_value=-1024
            ),
            True,
        ),
        "CT cropped, stored": (
            FrameDataset(corpus, grey_ct, shape=(256, 256), on_mismatch="crop", dtype="int32"),
            True,
        ),
        "mixed sizes": (FrameDataset(corpus, rescale=True, fields=("Modality",)), False),
        "RGB as stored": (FrameDataset(corpus, rgb), True),
        "RGB float32": (FrameDataset(corpus, rgb, rescale=True, geometry=False), True),
        "MR uint16": (FrameDataset(mr), True),
        "MR float32": (FrameDataset(mr, rescale=True), True),
        "synth CT HU": (FrameDataset(ct, rescale=True), True),
        "3-d patches HU": (PatchDataset(ct, (4, 16, 16), samples=12, seed=2, rescale=True), True),
        "3-d patches int16": (
            PatchDataset(ct, (4, 16, 16), samples=12, seed=2, rescale=True, dtype="int16"),
            True,
        ),
        "2-d patches": (PatchDataset(ct, (16, 16), samples=12, seed=2, geometry=False), True),
        "2-d patches HU": (PatchDataset(ct, (16, 16), samples=12, seed=2, rescale=True), True),
        "2-d MR patches uint16": (PatchDataset(mr, (16, 16), samples=12, seed=2), True),
        "2-d corpus patches": (PatchDataset(corpus, (32, 32), samples=12, seed=2), False),
    }


def _assert_same_items(got: list[dict], expected: list[dict]) -> None:
    """The same keys in the same order; arrays of equal dtype, shape and values."""
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            if isinstance(value, np.ndarray):
                assert (ours[key].dtype, ours[key].shape) == (value.dtype, value.shape), key
                np.testing.assert_array_equal(ours[key], value)  # NaN affines equal too
            else:
                assert type(ours[key]) is type(value) and ours[key] == value, key


def test_getitems_equal_getitem_item_by_item(paths: dict[str, Path]) -> None:
    for name, (dataset, one_block) in _datasets(paths).items():
        indices = [i % len(dataset) if i >= 0 else i for i in INDICES]
        items = dataset.__getitems__(indices)
        _assert_same_items(items, [dataset[i] for i in indices])
        bases = {id(item["pixels"].base) for item in items}
        assert (len(bases) == 1 and items[0]["pixels"].base is not None) == one_block, name
        # Subset (a DataLoader over a split) forwards the batch to it.
        subset = Subset(dataset, list(range(len(dataset)))[::-1])
        k = min(2, len(dataset) - 1)
        _assert_same_items(subset.__getitems__([0, k]), [dataset[-1], dataset[-1 - k]])
        with pytest.raises(IndexError):
            dataset.__getitems__([0, len(dataset)])


def test_convert_into_equals_convert() -> None:
    """Fractional, per-slice and absent coefficients; float, integer and colour frames."""
    rng = np.random.default_rng(0)
    rows = [
        {"RescaleSlope": 0.5, "RescaleIntercept": -1024.25, "SOPInstanceUID": "1.2.1"},
        {"RescaleSlope": 2.0, "RescaleIntercept": 3.0, "SOPInstanceUID": "1.2.2"},
        {"SOPInstanceUID": "1.2.3"},  # no rescale: slope 1, intercept 0
    ]
    for stored in ("int16", "uint16", "int32", "float64"):
        frames = (rng.random((3, 5, 7)) * 4000).astype(stored)
        for chosen in (rows, rows[:1], rows[1:2] * 3, rows[2:]):
            part = frames[: len(chosen)]
            for modality in (True, False):
                for dtype in ("float32", "float64", "float16", stored):
                    out = np.empty(part.shape, dtype)
                    try:
                        expected = convert(part, chosen, modality, dtype)
                    except ValueError as error:  # values that do not fit: the same error
                        with pytest.raises(ValueError, match=re.escape(str(error))):
                            convert_into(part, chosen, modality, out)
                        continue
                    convert_into(part, chosen, modality, out)
                    assert out.dtype == expected.dtype
                    np.testing.assert_array_equal(out, expected)
    colour = rng.integers(0, 255, (2, 4, 4, 3), dtype=np.uint8)
    out = np.empty(colour.shape, np.float32)
    convert_into(colour, rows[:2], False, out)
    np.testing.assert_array_equal(out, colour.astype(np.float32))
    with pytest.raises(ValueError, match="do not fit"):  # convert's checks, its message
        convert_into(frames.astype(np.int32) * 100, rows[1:2] * 3, True, np.empty((3, 5, 7), "u1"))


def test_2d_patches_as_stored_decode_into_their_rows(
    paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A patch kept as stored is decoded into its row of the block; a rescaled one into
    an array of its own (then rescaled into its row)."""
    calls: list[np.ndarray | None] = []
    read_frames = PixelStore.read_frames

    def recording(self: PixelStore, *args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(kwargs.get("out"))
        return read_frames(self, *args, **kwargs)

    monkeypatch.setattr(PixelStore, "read_frames", recording)
    for rescale in (False, True):
        dataset = PatchDataset(paths["MR"], (16, 16), samples=12, seed=2, rescale=rescale)
        calls.clear()
        items = dataset.__getitems__([4, 1, 7])
        rows = [item["pixels"].__array_interface__["data"][0] for item in items]
        into = [None if out is None else out.__array_interface__["data"][0] for out in calls]
        assert into == ([None] * 3 if rescale else rows)
        _assert_same_items(items, [dataset[i] for i in (4, 1, 7)])


def _in_worker(items: list[dict]) -> dict[str, Any]:
    """In a DataLoader worker: `collate` of the items reversed and as given, and whether
    each batch's pixels are the items' own block (no copy)."""
    address = items[0]["pixels"].__array_interface__["data"][0]
    # Reversed first: the items as given, last, keep the worker's next blocks shared.
    backwards, batch = collate(items[::-1]), collate(items)
    return {
        "batch": batch,
        "handed over": batch["pixels"].data_ptr() == address,
        "backwards": backwards,
        "backwards handed over": backwards["pixels"].data_ptr() == address,
        "backwards default": default_collate(items[::-1]),
    }


def test_collate_in_workers_hands_the_block_over_and_equals_default_collate(
    paths: dict[str, Path],
) -> None:
    datasets = _datasets(paths)
    names = ("CT HU float32", "RGB float32", "MR uint16", "3-d patches HU", "2-d patches")
    for name in names:
        dataset, _ = datasets[name]
        order = np.resize(np.random.default_rng(1).permutation(len(dataset)), 24).tolist()
        loader = DataLoader(
            dataset,
            batch_size=4,
            sampler=order,
            num_workers=2,
            collate_fn=_in_worker,
            multiprocessing_context="fork",
        )
        seen = 0
        kept = []
        for k, got in enumerate(loader):
            indices = order[4 * k : 4 * k + 4]
            expected = default_collate([dataset[i] for i in indices])
            assert_same_batch(got["batch"], expected)
            # The worker's block, not a copy of it, once `collate` ran in that worker:
            # batches 0 and 1 are the workers' first (the blocks were private memory).
            assert got["handed over"] == (k >= 2), name
            assert len(storages(got["batch"])) == 1, name  # one descriptor a batch
            # Items out of the block's order are copied, into a batch of their own.
            assert_same_batch(got["backwards"], got["backwards default"])
            assert not got["backwards handed over"], name
            clone = {
                k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in got["batch"].items()
            }
            kept.append((got["batch"], clone))
            seen += len(indices)
        assert seen == len(order), name
        # No worker wrote into a batch it had handed over: each is its own memory, intact.
        for batch, clone in kept:
            assert_same_batch(batch, clone)
        assert len(set().union(*(storages(batch) for batch, _ in kept))) == len(kept), name


class _Recording(torch.utils.data.Dataset):
    """A dataset's batches with "source shared" (whether its block was shared memory)
    and, when `transform`, their pixels doubled (an augmentation: new arrays)."""

    def __init__(self, dataset: Any, transform: bool) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        items = self.dataset.__getitems__(indices)
        block = getattr(items[0]["pixels"].base, "base", None)  # a torch block's tensor
        shared = isinstance(block, torch.Tensor) and block.is_shared()
        for item in items:
            item["source shared"] = shared
            if self.transform:
                item["pixels"] = item["pixels"] * 2
        return items


def _collate_recording(items: list[dict]) -> dict[str, Any]:
    """`collate` of the items, and whether the batch's pixels are the items' own block."""
    address = items[0]["pixels"].__array_interface__["data"][0]
    batch = collate(items)
    batch["handed over"] = batch["pixels"].data_ptr() == address
    return batch


def test_collate_makes_shared_blocks_only_for_items_it_hands_over(
    paths: dict[str, Path],
) -> None:
    """Transformed items are copied: their source blocks stay private memory (one fill of
    shared memory a batch), while the dataset's own items are handed over from each
    worker's second batch on."""
    datasets = _datasets(paths)
    for name in ("MR float32", "2-d patches"):
        dataset, _ = datasets[name]
        order = [i % len(dataset) for i in range(24)]
        for transform in (True, False):
            loader = DataLoader(
                _Recording(dataset, transform),
                batch_size=4,
                sampler=order,
                num_workers=2,
                collate_fn=_collate_recording,
                multiprocessing_context="fork",
            )
            count = 0
            for k, batch in enumerate(loader):
                expected = default_collate([dataset[i] for i in order[4 * k : 4 * k + 4]])
                torch.testing.assert_close(batch["pixels"], expected["pixels"] * (1 + transform))
                handed = not transform and k >= 2  # batches 0 and 1: the workers' first
                assert batch["source shared"].tolist() == [handed] * 4, (name, transform, k)
                assert batch["handed over"] == handed, (name, transform, k)
                count += 1
            assert count == 6, (name, transform)


def test_collate_copies_items_outside_a_worker_or_not_from_one_block(
    paths: dict[str, Path],
) -> None:
    dataset = FrameDataset(paths["MR"], rescale=True)
    for items in (dataset.__getitems__([1, 2, 3]), [dataset[i] for i in (1, 2, 3)]):
        address = items[0]["pixels"].__array_interface__["data"][0]
        batch = collate(items)
        assert_same_batch(batch, default_collate(items))
        assert batch["pixels"].data_ptr() != address
    # Rows of one block made by hand, outside a worker: numpy memory, never handed over.
    arrays = batch_arrays(2, {"pixels": (np.dtype(np.float32), (2, 2))})
    arrays["pixels"][:] = 7
    batch = collate([{"pixels": arrays["pixels"][k]} for k in range(2)])
    assert batch["pixels"].data_ptr() != arrays["pixels"].__array_interface__["data"][0]
    assert torch.equal(batch["pixels"], torch.full((2, 2, 2), 7.0))


def test_a_failing_item_of_a_batch_names_its_source(paths: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(paths["CT"], damaged)
    dataset = FrameDataset(damaged, rescale=True)
    bad = 0  # the first frame of the first array: its shard's first chunk
    path = dataset.arrays[int(dataset.table[bad][1])]
    shard = next((damaged / "pixels" / path / "c").rglob("*"), None)
    while shard is not None and shard.is_dir():
        shard = next(shard.iterdir())
    assert shard is not None
    data = bytearray(shard.read_bytes())
    data[100:4000] = bytes(3900)  # the first frame's Blosc chunk
    shard.write_bytes(bytes(data))
    with pytest.raises(CodecError) as one:
        dataset[bad]
    assert path in str(one.value) and "frame 0" in str(one.value)
    good = len(dataset) - 1
    with pytest.raises(CodecError) as batch:
        dataset.__getitems__([good, bad])
    assert str(batch.value) == str(one.value)
    loader = DataLoader(
        dataset, batch_size=2, sampler=[good, bad], num_workers=2, collate_fn=collate
    )
    with pytest.raises(CodecError, match=re.escape(str(one.value))):
        list(loader)
