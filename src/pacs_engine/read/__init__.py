"""Reading archived series for training: `Series` (frames, zarr arrays), `volume()`, datasets."""

from typing import Any

from pacs_engine.read.series import Frames, Series
from pacs_engine.read.volume import Volume, VolumeError, plan_volume, rescale

_DATASETS = ("FrameChunks", "FrameDataset", "PatchDataset", "VolumeDataset", "worker_share")
_READAHEAD = ("ReadAhead", "read_ahead")
_BENCH = ("read_bench",)
_COLLATE = ("collate",)

__all__ = [
    "FrameChunks",
    "FrameDataset",
    "Frames",
    "PatchDataset",
    "ReadAhead",
    "Series",
    "Volume",
    "VolumeDataset",
    "VolumeError",
    "collate",
    "plan_volume",
    "read_ahead",
    "read_bench",
    "rescale",
    "worker_share",
]


def __getattr__(name: str) -> Any:
    """The datasets, read-ahead, collate and read benchmark, imported on first use (the
    datasets import torch when it is installed; collate needs it)."""
    if name in _DATASETS:
        from pacs_engine.read import datasets

        return getattr(datasets, name)
    if name in _READAHEAD:
        from pacs_engine.read import readahead

        return getattr(readahead, name)
    if name in _COLLATE:
        from pacs_engine.read import collation

        return collation.collate
    if name in _BENCH:
        from pacs_engine.read import bench

        return getattr(bench, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
