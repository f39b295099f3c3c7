"""`Series`: one archived series read as frames, its zarr arrays, and as a volume."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pacs_engine.index.rows import Row
from pacs_engine.read.modality import HeaderTransform, header_transform, needs_header
from pacs_engine.read.values import read_values
from pacs_engine.read.volume import (
    Volume,
    convert,
    named_instances,
    pixel_ref,
    plan_volume,
    read_stack,
)

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
        if not -len(self._where) <= index < len(self._where):
            raise IndexError(f"frame {index} of a series of {len(self._where)} frames")
        key, frame, row = self._where[index]

        def names() -> str:
            return named_instances([str(self._series.rows[row]["SOPInstanceUID"])])

        return read_values(self._series.archive.pixels, key, [frame], names=names)[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self[k]

    def instance(self, index: int) -> Row:
        """The index row of the instance that frame `index` belongs to."""
        return self._series.rows[self._where[index][2]]


class Series:
    """An archived series: its rows, frames, zarr arrays and `volume()`."""

    def __init__(self, archive: Archive | str | os.PathLike[str], series_uid: str) -> None:
        from pacs_engine.archive import open_archive

        if isinstance(archive, str | os.PathLike):  # a location, as the datasets take: read-only
            archive = open_archive(archive)
        self.archive: Archive = archive
        self.series_uid = series_uid
        self.rows: list[Row] = list(archive.index.series(series_uid))
        if not self.rows:
            raise KeyError(f"{series_uid}: no such series in the archive")
        self._arrays: dict[str, Any] = {}
        self._transforms: dict[str, HeaderTransform | None] = {}  # read from headers, by SOP UID
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
        keys = dict.fromkeys(p["array"] for r in self.rows if (p := r.get("pixels")))
        return {key: self._array(key) for key in keys}

    def volume(
        self,
        rescale: bool = False,
        subset: bool = False,
        threads: int | None = None,
        dtype: np.dtype | str | None = None,
        rows: list[Row] | None = None,
    ) -> Volume:
        """The slices of one geometry sorted along the normal; `VolumeError` if inconsistent.

        `rescale`: modality values (e.g. HU) instead of stored values. `subset`: the
        largest consistent part instead of an error (see `plan_volume`). `threads`:
        slices decoded in parallel (default: the CPUs this process may use). `dtype`: the
        array's dtype (a floating one rescales with one multiply-add in it; default: the
        stored dtype, or with `rescale` the dtype `rescale` gives). `rows`: the instances
        to stack, some of the series' (default: all of them).
        """
        plan = plan_volume(self.rows if rows is None else rows, subset=subset)
        array = self._read(plan.rows, default_threads() if threads is None else threads)
        modality = rescale and array.ndim == 3
        array = convert(
            array, self._rescale_rows(plan.rows) if modality else plan.rows, rescale, dtype
        )
        return Volume(
            array=array,
            spacing=plan.spacing,
            origin=plan.origin,
            direction=plan.direction,
            affine=plan.affine,
            sop_instance_uids=[str(r["SOPInstanceUID"]) for r in plan.rows],
            sheared=plan.sheared,
            rescaled=rescale and array.ndim == 3,  # colour frames are not rescaled
        )

    def _rescale_rows(self, rows: list[Row]) -> list[Mapping[str, Any]]:
        """The rescale row of each single-frame row: itself, or from its header (read once)."""
        out: list[Mapping[str, Any]] = []
        for row in rows:
            uid = str(row["SOPInstanceUID"])
            if needs_header(row) and uid not in self._transforms:
                self._transforms[uid] = header_transform(self.archive, row)
            found = self._transforms.get(uid)
            out.append(row if found is None else found.row(row, 0))
        return out

    def _read(self, rows: list[Row], threads: int) -> np.ndarray:
        """One frame per row, in the rows' order, decoded into one array."""
        where = [(pixel_ref(r)["array"], int(pixel_ref(r)["first_frame"])) for r in rows]
        return read_stack(self.archive.pixels, where, rows, threads=threads)


def default_threads() -> int:
    """Decode threads for a volume: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
