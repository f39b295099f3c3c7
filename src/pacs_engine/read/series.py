"""`Series`: one archived series read as frames, its zarr arrays, and as a volume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pacs_engine.read.volume import Volume, VolumeError, plan_volume
from pacs_engine.read.volume import rescale as modality_values

if TYPE_CHECKING:
    from pacs_engine.archive import Archive


class Frames:
    """The decoded frames of a series in index order (InstanceNumber, SOP UID), by position."""

    def __init__(self, series: Series) -> None:
        self._series = series
        self._where: list[tuple[str, int, int]] = []  # (array key, frame in array, row index)
        for k, row in enumerate(series.rows):
            pixels = row.get("pixels")
            if pixels:
                first = int(pixels["first_frame"])
                self._where += [(pixels["array"], first + f, k) for f in range(pixels["frames"])]

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, index: int) -> np.ndarray:
        """One decoded frame, shaped (rows, columns[, samples])."""
        if not isinstance(index, int | np.integer):
            raise TypeError(f"frame index must be an integer, not {type(index).__name__}")
        key, frame, _ = self._where[index]
        return np.asarray(self._series._array(key)[frame])

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self[k]

    def instance(self, index: int) -> dict[str, Any]:
        """The index row of the instance that frame `index` belongs to."""
        return self._series.rows[self._where[index][2]]


class Series:
    """An archived series: its rows, frames, zarr arrays and `volume()`."""

    def __init__(self, archive: Archive, series_uid: str) -> None:
        self.archive = archive
        self.series_uid = series_uid
        self.rows: list[dict[str, Any]] = list(archive.index.series(series_uid))
        if not self.rows:
            raise KeyError(f"{series_uid}: no such series in the archive")
        self._arrays: dict[str, Any] = {}
        self.frames = Frames(self)

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"Series({self.series_uid!r}, instances={len(self.rows)}, frames={len(self)})"

    def _array(self, key: str) -> Any:
        if key not in self._arrays:
            self._arrays[key] = self.archive.pixels.open_array(key)
        return self._arrays[key]

    @property
    def pixels(self) -> dict[str, Any]:
        """The zarr arrays holding the series' frames, by array key (rows refer to them)."""
        keys = dict.fromkeys(r["pixels"]["array"] for r in self.rows if r.get("pixels"))
        return {key: self._array(key) for key in keys}

    def volume(self, rescale: bool = False, subset: bool = False) -> Volume:
        """The slices of one geometry sorted along the normal; `VolumeError` if inconsistent.

        `rescale`: modality values (e.g. HU) instead of stored values. `subset`: the
        largest consistent part instead of an error (see `plan_volume`).
        """
        plan = plan_volume(self.rows, subset=subset)
        array = self._read(plan.rows)
        if rescale:
            array = modality_values(array, plan.rows)
        return Volume(
            array=array,
            spacing=plan.spacing,
            origin=plan.origin,
            direction=plan.direction,
            affine=plan.affine,
            sop_instance_uids=[str(r["SOPInstanceUID"]) for r in plan.rows],
            sheared=plan.sheared,
            rescaled=rescale,
        )

    def _read(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """One frame per row, in the rows' order; contiguous runs read in one zarr call."""
        by_array: dict[str, list[tuple[int, int]]] = {}
        for k, row in enumerate(rows):
            pixels = row["pixels"]
            by_array.setdefault(pixels["array"], []).append((int(pixels["first_frame"]), k))
        out: np.ndarray | None = None
        for key, items in by_array.items():
            array = self._array(key)
            lo = min(f for f, _ in items)
            hi = max(f for f, _ in items) + 1
            if hi > array.shape[0]:  # grown since it was opened
                array = self._arrays[key] = self.archive.pixels.open_array(key)
            if hi - lo <= 2 * len(items):
                block = np.asarray(array[lo:hi])
                frames = [block[f - lo] for f, _ in items]
            else:
                frames = [np.asarray(array[f]) for f, _ in items]
            if out is None:
                out = np.empty((len(rows), *frames[0].shape), frames[0].dtype)
            for (_, k), frame in zip(items, frames, strict=True):
                if frame.shape != out.shape[1:] or frame.dtype != out.dtype:
                    raise VolumeError(
                        f"decoded frames differ in shape or dtype ({frame.shape} {frame.dtype}"
                        f" vs {out.shape[1:]} {out.dtype})",
                        [str(rows[k]["SOPInstanceUID"])],
                    )
                out[k] = frame
        assert out is not None
        return out
