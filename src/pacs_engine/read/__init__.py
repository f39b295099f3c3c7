"""Reading archived series for training: `Series` (frames, zarr arrays), `volume()`, datasets."""

from typing import Any

from pacs_engine.read.series import Frames, Series
from pacs_engine.read.volume import Volume, VolumeError, plan_volume, rescale

_DATASETS = ("FrameChunks", "FrameDataset", "PatchDataset", "VolumeDataset", "worker_share")

__all__ = [
    "FrameChunks",
    "FrameDataset",
    "Frames",
    "PatchDataset",
    "Series",
    "Volume",
    "VolumeDataset",
    "VolumeError",
    "plan_volume",
    "rescale",
    "worker_share",
]


def __getattr__(name: str) -> Any:
    """The datasets, imported on first use (they import torch when it is installed)."""
    if name in _DATASETS:
        from pacs_engine.read import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
