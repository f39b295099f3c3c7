"""pacs_engine.read.collate: default_collate's batches, the numeric keys in one block."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from batch_helpers import assert_same_batch, storages
from torch.utils.data import DataLoader, default_collate

from pacs_engine import Archive
from pacs_engine.read import FrameDataset, PatchDataset, collate, collation
from pacs_engine.synth import write_studies


def _lz4_copy(factory: pytest.TempPathFactory, modality: str, size: int, seed: int) -> Path:
    """An lz4 copy of two synthetic 8-slice series of `modality`, `size` pixels square."""
    tmp = factory.mktemp(f"collate_{modality}")
    files = write_studies(
        tmp / "synth", 2, 1, 8, rows=size, columns=size, modalities=(modality,), seed=seed
    )
    with Archive.create(tmp / "copy", codec="lz4", transcode=True) as archive:
        assert archive.ingest(files, workers=0).balanced
    return tmp / "copy"


@pytest.fixture(scope="module")
def copy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An lz4 copy of two synthetic 8-slice CT series, as a training loop reads one."""
    return _lz4_copy(tmp_path_factory, "CT", 64, 3)


@pytest.fixture(scope="module")
def mr_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An lz4 copy of two synthetic 8-slice MR series: uint16 pixels, torch.uint16 batches."""
    return _lz4_copy(tmp_path_factory, "MR", 32, 4)


def _datasets(path: Path, mr_path: Path) -> dict[str, Any]:
    return {
        "frames": FrameDataset(path, rescale=True, fields=("SeriesDescription",)),
        "frames int16": FrameDataset(path, rescale=True, dtype="int16", geometry=False),
        "patches": PatchDataset(path, (4, 16, 16), samples=12, seed=2, rescale=True),
        "2-d patches": PatchDataset(path, (16, 16), samples=12, seed=2),
        "MR frames uint16": FrameDataset(mr_path),
        "MR 2-d patches uint16": PatchDataset(mr_path, (16, 16), samples=12, seed=2),
    }


def test_collate_equals_default_collate_in_one_block(copy_path: Path, mr_path: Path) -> None:
    for name, dataset in _datasets(copy_path, mr_path).items():
        items = [dataset[k] for k in range(min(len(dataset), 6))]
        if name.endswith("uint16"):  # a torch.uint16 batch (torch >= 2.3), packed too
            assert items[0]["pixels"].dtype == np.uint16, name
        batch = collate(items)
        assert_same_batch(batch, default_collate(items))
        numeric = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        assert len(numeric) >= 2 if name == "frames int16" else len(numeric) >= 5, name
        assert len(storages(batch)) == 1, name
        assert batch["pixels"].storage_offset() == 0  # pixels first: the block starts with them


def test_collate_in_dataloader_workers_equals_default_collate(
    copy_path: Path, mr_path: Path
) -> None:
    for name, dataset in _datasets(copy_path, mr_path).items():
        batches = {}
        for fn in (default_collate, collate):
            loader = DataLoader(
                dataset, batch_size=4, num_workers=2, collate_fn=fn, multiprocessing_context="fork"
            )
            batches[fn] = list(loader)
        assert len(batches[collate]) == len(batches[default_collate]) >= 3, name
        for ours, default in zip(batches[collate], batches[default_collate], strict=True):
            assert_same_batch(ours, default)
            # One shared-memory block came from the worker: one descriptor, not five.
            assert len(storages(ours)) == 1 < len(storages(default)), name


def test_collate_leaves_other_values_and_mismatches_to_default_collate() -> None:
    items = [
        {
            "pixels": np.full((2, 3), k, np.float32),
            "flag": k % 2 == 0,  # bool: a bool tensor, as the default collate makes
            "weight": 0.5 * k,  # float: float64
            "size": np.uint16(k),  # a numpy scalar, not an array
            "name": f"item {k}",
            "pair": (k, -k),
        }
        for k in range(3)
    ]
    assert_same_batch(collate(items), default_collate(items))
    assert_same_batch(collate([(1, 2), (3, 4)]), default_collate([(1, 2), (3, 4)]))
    ordered = [OrderedDict(pixels=np.zeros(2, np.float32), frame=k) for k in range(2)]
    assert type(collate(ordered)) is OrderedDict
    uneven = [{"pixels": np.zeros((2, 2), np.float32)}, {"pixels": np.zeros((3, 2), np.float32)}]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate(uneven)
    with pytest.raises(RuntimeError, match="equal size"):
        collate(uneven)
    mixed = [{"pixels": np.zeros(2, np.int16)}, {"pixels": np.zeros(2, np.float32)}]
    assert_same_batch(collate(mixed), default_collate(mixed))


def test_a_worker_asks_torch_for_its_worker_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a DataLoader worker (torch's `worker_info()` faked), `batch_arrays` and `collate`
    each ask torch once per batch, not again for the block they make: a shared-memory block
    handed over as it is, then plain items copied into a shared block of their own."""
    calls: list[None] = []
    info = SimpleNamespace(id=0, num_workers=1)
    monkeypatch.setattr(collation, "worker_info", lambda: calls.append(None) or info)
    monkeypatch.setattr(collation, "_COLLATING", threading.Event())
    collation._COLLATING.set()  # the worker's last collate got the rows of a block
    specs = {"pixels": (np.dtype(np.float32), (2, 3)), "frame": (np.dtype(np.int64), ())}
    arrays = collation.batch_arrays(4, specs)
    assert len(calls) == 1
    arrays["pixels"][:] = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    arrays["frame"][:] = range(4)
    rows = [{"pixels": arrays["pixels"][k], "frame": k} for k in range(4)]
    batch = collate(rows)
    assert len(calls) == 2 and batch["pixels"].is_shared()
    assert batch["pixels"].data_ptr() == arrays["pixels"].ctypes.data  # no copy
    plain = [{"pixels": np.full((2, 3), k, np.float32), "frame": k} for k in range(4)]
    batch = collate(plain)
    assert len(calls) == 3 and batch["pixels"].is_shared()
    assert_same_batch(batch, default_collate(plain))
