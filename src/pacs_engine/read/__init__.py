"""Reading archived series for training: `Series` (frames, zarr arrays) and `volume()`."""

from pacs_engine.read.series import Frames, Series
from pacs_engine.read.volume import Volume, VolumeError, plan_volume, rescale

__all__ = ["Frames", "Series", "Volume", "VolumeError", "plan_volume", "rescale"]
