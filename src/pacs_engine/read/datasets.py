"""Datasets for training loops: frames, volumes and random patches of an archive.

The datasets hold only the archive's path and plain data (lists, numpy arrays of
integers), so they pickle small and work across `fork` and `spawn`: each process
opens the archive (read-only) on first use and caches it by process id; the LMDB
index is memory-mapped by every process, never copied, and no LMDB handle or zarr
object is ever pickled. They need numpy only. With PyTorch installed they subclass
`torch.utils.data.Dataset` / `IterableDataset`, so a `DataLoader` takes them as they are:
`FrameDataset`, `VolumeDataset` and `PatchDataset` are map-style (`__len__`,
`__getitem__`), `FrameDataset.iter_chunks()` is iterable and splits its work between
DataLoader workers by `torch.utils.data.get_worker_info()`.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from pacs_engine.index.matching import Condition, compile_query, level_of, matches
from pacs_engine.index.query import check_query
from pacs_engine.index.rows import Attributes, Row
from pacs_engine.read.modality import HeaderTransform, header_transform, needs_header
from pacs_engine.read.shape import FrameShape
from pacs_engine.read.values import read_values
from pacs_engine.read.volume import (
    LPS_TO_RAS,
    VolumeError,
    convert,
    convert_into,
    frame_geometry,
    named_instances,
    pixel_ref,
    plan_volume,
    read_stack,
)
from pacs_engine.workers import PerProcess

if TYPE_CHECKING:
    from pacs_engine.archive import Archive
    from pacs_engine.read.series import Series

if importlib.util.find_spec("torch") is not None:  # pragma: no cover - torch is optional
    from torch.utils.data import Dataset as _MapBase
    from torch.utils.data import IterableDataset as _IterableBase
else:
    # Without torch the data sets are plain classes; mypy sees torch's bases (the torch extra).
    _MapBase = object  # type: ignore[assignment,misc]
    _IterableBase = object  # type: ignore[assignment,misc]

__all__ = [
    "GEOMETRY_KEYS",
    "FrameChunks",
    "FrameDataset",
    "PatchDataset",
    "VolumeDataset",
    "worker_share",
]

# Row attributes kept (as plain data) for rescaling.
_RESCALE_KEYS = (
    "SOPInstanceUID",
    "RescaleSlope",
    "RescaleIntercept",
    "BitsStored",
    "PixelRepresentation",
)
_SERIES_CACHE = 64  # Series objects kept open per process (VolumeDataset)
#: Instances whose modality transform was read from their header, kept per process: about
#: 100 bytes each (a transform shared by every frame, per-frame values held once per value),
#: so a pass over a dataset reads each header once, up to this many instances.
_MODALITY_CACHE = 1 << 20
#: The key of a rescale row that says its instance's modality transform is in its header.
_FROM_HEADER = "from_header"
#: The item keys `geometry=False` leaves out: each numeric key of an item is one more
#: shared-memory tensor, and file-descriptor hand-over, per DataLoader batch.
GEOMETRY_KEYS = ("spacing", "affine_lps", "affine_ras")


# --- one archive per path per process --------------------------------------------------


class _Handle:
    """A read-only archive and its Series, for one process."""

    def __init__(self, path: str) -> None:
        from pacs_engine.archive import open_archive

        self.archive: Archive = open_archive(path)
        self.series: OrderedDict[str, Series] = OrderedDict()
        self.transforms: dict[str, HeaderTransform | None] = {}

    def transform(self, uid: str) -> HeaderTransform | None:
        """The instance's modality transform from its header, read once (None: none there)."""
        if uid in self.transforms:
            return self.transforms[uid]
        row = self.archive.index.get(uid)
        if row is None:
            raise KeyError(f"{uid}: no longer in the archive")
        found = header_transform(self.archive, row)
        if len(self.transforms) >= _MODALITY_CACHE:
            self.transforms.pop(next(iter(self.transforms)))  # the oldest
        self.transforms[uid] = found
        return found

    def series_of(self, uid: str) -> Series:
        """A cached `Series` (its rows are read once per process)."""
        from pacs_engine.read.series import Series

        series = self.series.pop(uid, None) or Series(self.archive, uid)
        self.series[uid] = series
        while len(self.series) > _SERIES_CACHE:
            self.series.popitem(last=False)
        return series


_HANDLES: PerProcess[str, _Handle] = PerProcess()


def _handle(path: str) -> _Handle:
    """This process's handle on the archive at `path` (a forked child opens its own)."""
    return _HANDLES.get(path, lambda: _Handle(path))


def worker_share(count: int) -> range:
    """The indices in range(count) this DataLoader worker handles (all of them outside one)."""
    from pacs_engine.read.collation import worker_info

    info = worker_info()
    if info is None:
        return range(count)
    return range(info.id, count, info.num_workers)


# --- helpers -----------------------------------------------------------------------------


def _series_uids(archive: Archive, series_uids: Sequence[str] | None) -> list[str]:
    """The given UIDs (duplicates dropped, order kept), or every series by UID."""
    if series_uids is None:
        return sorted(str(r["SeriesInstanceUID"]) for r in archive.index.all_series())
    if isinstance(series_uids, str):
        raise TypeError("series_uids must be a sequence of UIDs, not one string")
    return list(dict.fromkeys(str(uid) for uid in series_uids))


def _rows(archive: Archive, uid: str) -> list[Row]:
    rows = archive.index.series(uid)
    if not rows:
        raise KeyError(f"{uid}: no such series in the archive")
    return rows


def _slim(row: Row) -> dict[str, Any]:
    """The attributes rescaling needs, and nothing else; whether its header has the rest."""
    slim = {k: row.get(k) for k in _RESCALE_KEYS}
    slim[_FROM_HEADER] = needs_header(row)
    return slim


def _rescale_row(path: str, slim: dict[str, Any], frame: int) -> dict[str, Any]:
    """The rescale row of frame `frame` of an instance: its index row's, or its header's
    (`modality.header_transform`, read once per instance per process)."""
    if not slim[_FROM_HEADER]:
        return slim
    found = _handle(path).transform(str(slim["SOPInstanceUID"]))
    return slim if found is None else found.row(slim, frame)


def _archive_path(archive: Archive | str | os.PathLike[str]) -> str:
    """The location of an archive given as an `Archive` or as its path."""
    from pacs_engine.archive import Archive

    return os.fspath(archive.path if isinstance(archive, Archive) else archive)


def _output_dtype(dtype: np.dtype | str | None, rescale: bool) -> str | None:
    """The items' dtype: as asked, else float32 with `rescale`, else None (as stored)."""
    if dtype is None:
        return np.dtype(np.float32).str if rescale else None
    return np.dtype(dtype).str


def _item_dtype(dtype: str | None, stored: np.dtype) -> np.dtype:
    """The dtype of an item's pixels: the dataset's (`_output_dtype`), else as stored."""
    return np.dtype(dtype) if dtype else stored


def _fields(fields: Sequence[str]) -> tuple[str, ...]:
    """The requested attribute keywords, checked against those the index holds."""
    if isinstance(fields, str):
        raise TypeError("fields must be a sequence of keywords, not one string")
    unknown = [k for k in fields if k not in Attributes.__annotations__]
    if unknown:
        raise ValueError(f"fields {unknown} are not attributes the index holds")
    return tuple(fields)


def _text(value: Any) -> str:
    """An index value as text ("" when absent, multiple values joined by backslash)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _meta(row: Row, fields: Sequence[str]) -> dict[str, Any]:
    """Study UID, PatientID and the requested fields of a row, as text (collates as a list)."""
    meta = {
        "study_instance_uid": _text(row.get("StudyInstanceUID")),
        "patient_id": _text(row.get("PatientID")),
    }
    meta.update({k: _text(row.get(k)) for k in fields})
    return meta


def _geometry(spacing: np.ndarray, affine: np.ndarray, corner: Sequence[int]) -> dict[str, Any]:
    """spacing and the LPS and RAS affines of an item whose index (0, 0, 0) is `corner`."""
    lps = affine.copy()
    lps[:3, 3] = affine[:3, :3] @ np.asarray(corner, np.float64) + affine[:3, 3]
    return dict(zip(GEOMETRY_KEYS, (spacing.copy(), lps, LPS_TO_RAS @ lps), strict=True))


def _instance_conditions(instance_query: Mapping[str, Any] | None) -> list[Condition]:
    """The compiled instance query (checked as `Archive.query` checks one; QueryError)."""
    if not instance_query:
        return []
    check_query("instance", instance_query)
    return list(compile_query(dict(instance_query)).values())


#: Why an instance left out by `instance_query` is not used, and a series with none.
NOT_SELECTED = "not matching the instance query"
NONE_SELECTED = "no instance matches the instance query"


def _selected(rows: list[Row], conditions: list[Condition]) -> list[Row]:
    """The rows that match every condition (all of them without conditions)."""
    return [r for r in rows if matches(r, conditions)] if conditions else rows


def _check_index(index: int, length: int) -> int:
    if not isinstance(index, int | np.integer):
        raise TypeError(f"index must be an integer, not {type(index).__name__}")
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for {length} items")
    return index


class _FromQuery:
    """`from_query`: a dataset of the series (and instances) an index query selects."""

    query: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance, never mutated
    instance_query: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance, never mutated

    @classmethod
    def from_query(cls, archive: Archive | str | os.PathLike[str], **kwargs: Any) -> Self:
        """The dataset of the series and instances a query selects.

        Keyword arguments named like the dataset's parameters (rescale, dtype, fields,
        ...) go to the dataset, the others (DICOM keywords, matched as `Archive.query`
        matches them: Modality="CT", BodyPartExamined="CHEST", ImageType="ORIGINAL\\
        PRIMARY*") to the query, which is strict: an unknown keyword raises QueryError.
        Patient, study and series keys select the series (`archive.query(level=
        "series", ...)`); instance keys (ImageType, ConvolutionKernel, ...) become the
        dataset's `instance_query`, which leaves out, and counts, the instances of those
        series that do not match.
        """
        params = inspect.signature(cls.__init__).parameters
        if "series_uids" in kwargs:
            raise TypeError("from_query selects the series: do not pass series_uids")
        options = {k: v for k, v in kwargs.items() if k in params}
        filters = {k: v for k, v in kwargs.items() if k not in params}
        below = {k: v for k, v in filters.items() if level_of(k) == "instance"}
        above = {k: v for k, v in filters.items() if k not in below}
        path = _archive_path(archive)
        # The instance keys are checked once, by the dataset (QueryError for a misspelling).
        found = _handle(path).archive.query(level="series", **above)
        uids = [str(r["SeriesInstanceUID"]) for r in found]
        if below:
            options["instance_query"] = {**options.get("instance_query", {}), **below}
        dataset = cls(path, series_uids=uids, **options)  # type: ignore[call-arg]
        dataset.query = above
        return dataset


def _selection(dataset: Any) -> list[str]:
    """The report's lines on the queries that selected the series and instances."""
    lines = []
    if dataset.query:
        lines.append(f"selected by the series query {dataset.query}")
    if dataset.instance_query:
        lines.append(f"instances selected by the instance query {dataset.instance_query}")
    return lines


def _series_report(holds: str, dataset: Any) -> str:
    """The report of a dataset that leaves out whole series (`skipped`: UID -> reason)."""
    lines = [f"{holds} from {len(dataset.series_uids)} series in {dataset.archive_path}"]
    lines += _selection(dataset)
    lines.append(
        f"pixels: {'modality values' if dataset.rescale else 'stored values'}, "
        f"dtype {dataset.dtype or 'as stored'}"
    )
    lines += [f"skipped series {uid}: {reason}" for uid, reason in dataset.skipped.items()]
    return "\n".join(lines)


def _exclusion(row: Row, grayscale: bool) -> str:
    """Why an instance gives no frame items ("" when it gives some)."""
    if not row.get("pixels"):
        return "no pixel data"
    if grayscale and int(row.get("SamplesPerPixel") or 1) != 1:
        return "not grayscale (SamplesPerPixel > 1)"
    return ""


# --- frames ------------------------------------------------------------------------------


class FrameDataset(_FromQuery, _MapBase):
    """Every frame of the given series (default: all), by series UID, then array frame order.

    `archive`: an `Archive` or its path. Items (docs/read.md): {"pixels",
    "sop_instance_uid", "series_instance_uid", "frame", "study_instance_uid",
    "patient_id", "spacing", "affine_lps", "affine_ras"} and one text entry per keyword
    of `fields`; "frame" is the frame's number within its instance (0 for single-frame
    instances) and "pixels" equals the frame of `Archive.frames(sop_instance_uid)`,
    rescaled and cast as asked. With `rescale`, monochrome frames hold modality values
    (e.g. HU); colour frames are never rescaled. `dtype`: the dtype of every item's
    pixels (default float32 with `rescale`, else as stored). `grayscale`: leave out
    colour instances. `shape` (rows, columns): every item's frame size, frames of
    another size skipped, padded (with `pad_value`), cropped or resampled as
    `on_mismatch` says (`pacs_engine.read.shape`; spacing and affines follow).
    Instances left out are counted by reason in `excluded`, those fitted to `shape`
    in `fitted`; `report()` says both. `instance_query`: keys (matched as
    `Archive.query` matches them at the instance level, e.g. {"ImageType":
    "ORIGINAL\\PRIMARY*"}) an instance must match to be used; the others are
    excluded and counted (`NOT_SELECTED`), and a series with none is not in `series_uids`.
    `geometry=False` leaves "spacing", "affine_lps" and "affine_ras" out of the items
    (`GEOMETRY_KEYS`: what they cost a DataLoader in `docs/read.md`).
    """

    def __init__(
        self,
        archive_path: Archive | str | os.PathLike[str],
        series_uids: Sequence[str] | None = None,
        rescale: bool = False,
        dtype: np.dtype | str | None = None,
        fields: Sequence[str] = (),
        grayscale: bool = False,
        shape: Sequence[int] | None = None,
        on_mismatch: str = "skip",
        pad_value: float = 0.0,
        instance_query: Mapping[str, Any] | None = None,
        geometry: bool = True,
    ) -> None:
        self.archive_path = _archive_path(archive_path)
        self.geometry = geometry
        self.rescale = rescale
        self.dtype = _output_dtype(dtype, rescale)
        self.fields = _fields(fields)
        conditions = _instance_conditions(instance_query)
        self.instance_query = dict(instance_query or {})
        self.shape = None if shape is None else FrameShape(tuple(shape), on_mismatch, pad_value)  # type: ignore[arg-type]
        archive = _handle(self.archive_path).archive
        self.series_uids: list[str] = []  # those with an instance the instance query selects
        self.arrays: list[str] = []
        self.instances: list[str] = []
        self.rescale_rows: list[dict[str, Any]] = []  # per instance
        self.meta: list[dict[str, Any]] = []  # per instance
        self.reshape: list[bool] = []  # per instance: its frames go through `shape.apply`
        self.excluded: Counter[str] = Counter()  # instances left out, by reason
        self.fitted: Counter[str] = Counter()  # instances fitted to `shape`, by what was done
        geometries: list[tuple[np.ndarray, np.ndarray]] = []  # per instance
        # One row per frame: series, array, frame in array, instance, frame in instance.
        table: list[tuple[int, int, int, int, int]] = []
        array_ids: dict[str, int] = {}
        for uid in sorted(_series_uids(archive, series_uids)):
            rows = _rows(archive, uid)
            selected = _selected(rows, conditions)
            if len(selected) < len(rows):
                self.excluded[NOT_SELECTED] += len(rows) - len(selected)
            if not selected:
                continue
            s = len(self.series_uids)
            self.series_uids.append(uid)
            for row in selected:
                reason = _exclusion(row, grayscale)
                size = int(row.get("Rows") or 0), int(row.get("Columns") or 0)
                if not reason and self.shape is not None:
                    reason = self.shape.exclusion(*size)
                if reason:
                    self.excluded[reason] += 1
                    continue
                pixels = row["pixels"]
                assert pixels is not None  # _exclusion checked it
                a = array_ids.setdefault(pixels["array"], len(array_ids))
                if a == len(self.arrays):
                    self.arrays.append(pixels["array"])
                i = len(self.instances)
                self.instances.append(str(row["SOPInstanceUID"]))
                self.rescale_rows.append(_slim(row))
                self.meta.append(_meta(row, self.fields))
                spacing_affine, fit = frame_geometry(row), ""
                if self.shape is not None:
                    fit = self.shape.fitted(*size)
                    spacing_affine = self.shape.geometry(*spacing_affine, *size)
                geometries.append(spacing_affine)
                self.reshape.append(bool(fit))
                if fit:
                    self.fitted[fit] += 1
                first = int(pixels["first_frame"])
                table += [(s, a, first + f, i, f) for f in range(int(pixels["frames"]))]
        self.table = np.array(sorted(table), dtype=np.int64).reshape(-1, 5)
        self.spacings = np.array([g[0] for g in geometries], np.float64).reshape(-1, 3)
        self.affines = np.array([g[1] for g in geometries], np.float64).reshape(-1, 4, 4)
        # Per instance once here, not per item: an item's geometry is its instance's.
        self.affines_ras = LPS_TO_RAS @ self.affines

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        series = len(self.series_uids)
        excluded = sum(self.excluded.values())
        return (
            f"FrameDataset({self.archive_path!r}, series={series}, frames={len(self)}, "
            f"excluded_instances={excluded})"
        )

    def report(self) -> str:
        """What the dataset holds, how it was selected, and what it left out and why."""
        lines = [
            f"{len(self)} frames of {len(self.instances)} instances, "
            f"{len(self.series_uids)} series in {self.archive_path}"
        ]
        lines += _selection(self)
        lines.append(
            f"pixels: {'modality values' if self.rescale else 'stored values'}, "
            f"dtype {self.dtype or 'as stored'}"
        )
        if self.shape is not None:
            lines.append(f"frame size {self.shape}, other sizes: {self.shape.on_mismatch}")
        for reason, count in sorted(self.excluded.items()):
            lines.append(f"excluded: {count} instances, {reason}")
        for fit, count in sorted(self.fitted.items()):
            lines.append(f"fitted: {count} instances {fit}")
        return "\n".join(lines)

    def _pixels(self, entry: list[int], pixels: np.ndarray) -> np.ndarray:
        """A decoded frame as item `entry`'s pixels: rescaled, cast and fitted as asked."""
        i = entry[3]
        if self.rescale or self.dtype is not None:
            modality = self.rescale and pixels.ndim == 2
            rows = [self._rescale_row(entry) if modality else self.rescale_rows[i]]
            pixels = convert(pixels[None], rows, modality, self.dtype)[0]
        if self.shape is not None and self.reshape[i]:
            try:
                pixels = self.shape.apply(pixels)
            except ValueError as error:  # a pad value the item's dtype cannot hold
                raise ValueError(f"instance {self.instances[i]}: {error}") from None
        return pixels

    def _item(
        self, entry: list[int], pixels: np.ndarray, geometry: Sequence[np.ndarray] = ()
    ) -> dict[str, Any]:
        """Item `entry` with these pixels (and these geometry values: default copies)."""
        # Per item only copies of what the constructor prepared: reading a frame from a
        # read-optimised copy takes ~0.1 ms, so microseconds here show in frames/s.
        s, _, _, i, f = entry
        item = {
            "pixels": pixels,
            "sop_instance_uid": self.instances[i],
            "series_instance_uid": self.series_uids[s],
            "frame": f,
            **self.meta[i],
        }
        if self.geometry:
            geometry = geometry or [a[i].copy() for a in self._geometries()]
            item.update(zip(GEOMETRY_KEYS, geometry, strict=True))
        return item

    def _geometries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per instance, in `GEOMETRY_KEYS` order: spacings, LPS and RAS affines."""
        return self.spacings, self.affines, self.affines_ras

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One frame and where it comes from."""
        entry = self.table[_check_index(index, len(self))].tolist()
        path, frame = self.arrays[entry[1]], entry[2]
        store = _handle(self.archive_path).archive.pixels
        pixels = read_values(store, path, [frame], names=self._names([entry]))[0]
        return self._item(entry, self._pixels(entry, pixels))

    def _names(self, entries: list[list[int]]) -> Callable[[], str]:
        """What names the frames of `entries` in a read error: their instances and frames."""

        def names() -> str:
            return named_instances([f"{self.instances[e[3]]} frame {e[4]}" for e in entries])

        return names

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """`[self[i] for i in indices]`, decoded into one block (DataLoader batches).

        The items' pixels, "frame" and geometry are rows of one new block per call
        (`collation.batch_arrays`: shared memory in a DataLoader worker), which
        `collate` hands over as the batch without a copy. Each frame decodes straight
        into its row, or into a scratch array of the stored dtype reused for the batch
        and rescaled from there into the row. Items of different shapes or dtypes
        (which no collate batches) are read one by one.
        """
        from pacs_engine.read.collation import batch_arrays

        entries = [self.table[_check_index(i, len(self))].tolist() for i in indices]
        store = _handle(self.archive_path).archive.pixels
        kinds = {self._output(store, entry) for entry in entries}
        if len(kinds) != 1:
            return [self[i] for i in indices]
        ((dtype, shape),) = kinds
        specs = {"pixels": (dtype, shape), "frame": (np.dtype(np.int64), ())}
        if self.geometry:
            geometries = dict(zip(GEOMETRY_KEYS, self._geometries(), strict=True))
            specs.update((key, (a.dtype, a.shape[1:])) for key, a in geometries.items())
        arrays = batch_arrays(len(entries), specs)
        arrays["frame"][:] = [entry[4] for entry in entries]
        instances = [entry[3] for entry in entries]
        if self.geometry:
            for key, values in geometries.items():
                np.take(values, instances, axis=0, out=arrays[key])
        scratch: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}  # by stored dtype, shape
        items = []
        for k, entry in enumerate(entries):
            self._read_into(store, entry, arrays["pixels"][k], scratch)
            geometry = [arrays[key][k] for key in GEOMETRY_KEYS] if self.geometry else []
            items.append(self._item(entry, arrays["pixels"][k], geometry))
        return items

    def _output(self, store: Any, entry: list[int]) -> tuple[np.dtype, tuple[int, ...]]:
        """The dtype and shape of item `entry`'s pixels, without reading them."""
        spec = store.spec(self.arrays[entry[1]])
        shape = spec.frame_shape
        if self.shape is not None and self.reshape[entry[3]]:
            shape = (*self.shape.shape, *shape[2:])
        return _item_dtype(self.dtype, spec.dtype), shape

    def _read_into(
        self,
        store: Any,
        entry: list[int],
        out: np.ndarray,
        scratch: dict[tuple[str, tuple[int, ...]], np.ndarray],
    ) -> None:
        """Item `entry`'s pixels written into `out` (of their dtype and shape)."""
        _, a, frame, i, _ = entry
        path = self.arrays[a]
        names = self._names([entry])
        if self.shape is not None and self.reshape[i]:  # fitted: as `__getitem__` does
            out[...] = self._pixels(entry, read_values(store, path, [frame], names=names)[0])
            return
        spec = store.spec(path)
        modality = self.rescale and out.ndim == 2
        if out.dtype == spec.dtype and not modality:
            read_values(store, path, [frame], out=out[None], names=names)
            return
        # Decoded frames of one dtype and shape share one scratch array: it never leaves here.
        key = (spec.dtype.str, spec.frame_shape)
        if key not in scratch:
            scratch[key] = np.empty((1, *spec.frame_shape), spec.dtype)
        read_values(store, path, [frame], out=scratch[key], names=names)
        rows = [self._rescale_row(entry) if modality else self.rescale_rows[i]]
        convert_into(scratch[key], rows, modality, out[None])

    def _rescale_row(self, entry: list[int]) -> dict[str, Any]:
        """The rescale row of item `entry`'s frame."""
        return _rescale_row(self.archive_path, self.rescale_rows[entry[3]], entry[4])

    def runs(self) -> list[tuple[int, int]]:
        """[start, stop) ranges of items that are consecutive frames of one shard of one array."""
        if not len(self):
            return []
        handle = _handle(self.archive_path)
        per_shard = {a: handle.archive.pixels.grid(p)[0] for a, p in enumerate(self.arrays)}
        runs: list[tuple[int, int]] = []
        start = 0
        for k in range(1, len(self) + 1):
            if k < len(self):
                prev, cur = self.table[k - 1], self.table[k]
                a = int(cur[1])
                if (
                    a == int(prev[1])
                    and int(cur[2]) == int(prev[2]) + 1
                    and int(cur[2]) // per_shard[a] == int(prev[2]) // per_shard[a]
                ):
                    continue
            runs.append((start, k))
            start = k
        return runs

    def iter_chunks(self) -> FrameChunks:
        """The same items, streamed a shard-sized run of consecutive frames per read."""
        return FrameChunks(self)


class FrameChunks(_IterableBase):
    """Iterable over a `FrameDataset` in array order, one read per run of a shard.

    In a DataLoader worker it yields every num_workers-th run only, so the workers
    together yield each item once.
    """

    def __init__(self, dataset: FrameDataset) -> None:
        self.dataset = dataset
        self.runs = dataset.runs()

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = self.dataset
        handle = _handle(dataset.archive_path)
        for r in worker_share(len(self.runs)):
            start, stop = self.runs[r]
            entries = dataset.table[start:stop].tolist()
            lo, hi = entries[0][2], entries[-1][2] + 1
            path = dataset.arrays[entries[0][1]]
            names = dataset._names(entries)
            block = read_values(handle.archive.pixels, path, range(lo, hi), names=names)
            for entry, pixels in zip(entries, block, strict=True):
                yield dataset._item(entry, dataset._pixels(entry, pixels))


# --- volumes -----------------------------------------------------------------------------


class VolumeDataset(_FromQuery, _MapBase):
    """One item per series volume (`Series.volume(rescale, subset)`), in the given order.

    `archive`: an `Archive` or its path. Items: {"pixels", "series_instance_uid",
    "sop_instance_uids", "spacing", "origin", "direction", "affine" (= "affine_lps"),
    "affine_ras", "sheared", "study_instance_uid", "patient_id"} and one text entry per
    keyword of `fields`. `dtype`: the pixels' dtype (default float32 with `rescale`,
    else as stored). Series that are not one volume (checked on the
    index when the dataset is made) raise `VolumeError`, or with `skip_invalid` are left
    out and listed in `skipped` (UID -> reason). Series without pixel data are left out
    of the default selection (all series). `threads`: slices decoded in parallel per
    volume (default: the CPUs the process may use; with several DataLoader workers,
    about CPUs / workers). `instance_query`: keys (as `Archive.query` matches them at the
    instance level, e.g. {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}) the instances of a
    volume must match; the others are left out of it, and a series with none is
    left out and listed in `skipped`.
    """

    def __init__(
        self,
        archive_path: Archive | str | os.PathLike[str],
        series_uids: Sequence[str] | None = None,
        rescale: bool = True,
        subset: bool = False,
        skip_invalid: bool = False,
        threads: int | None = None,
        dtype: np.dtype | str | None = None,
        fields: Sequence[str] = (),
        instance_query: Mapping[str, Any] | None = None,
    ) -> None:
        self.archive_path = _archive_path(archive_path)
        self.rescale = rescale
        self.dtype = _output_dtype(dtype, rescale)
        self.fields = _fields(fields)
        self.subset = subset
        self.threads = threads
        conditions = _instance_conditions(instance_query)
        self.instance_query = dict(instance_query or {})
        archive = _handle(self.archive_path).archive
        self.skipped: dict[str, str] = {}
        self.series_uids: list[str] = []
        # Per series, with an instance query: the instances it selected (plain data, which
        # pickles: conditions hold functions), so items neither compile nor match it again.
        self.selected: dict[str, frozenset[str]] = {}
        for uid in _series_uids(archive, series_uids):
            rows = _rows(archive, uid)
            if series_uids is None and not any(r.get("pixels") for r in rows):
                continue
            rows = _selected(rows, conditions)
            if not rows:
                self.skipped[uid] = NONE_SELECTED
                continue
            if conditions:
                self.selected[uid] = frozenset(str(r["SOPInstanceUID"]) for r in rows)
            try:
                plan_volume(rows, subset=subset)
            except VolumeError as error:
                if not skip_invalid:
                    raise VolumeError(
                        f"series {uid}: {error.reason}", error.sop_instance_uids
                    ) from error
                self.skipped[uid] = str(error)
                continue
            self.series_uids.append(uid)

    def __len__(self) -> int:
        return len(self.series_uids)

    def __repr__(self) -> str:
        return (
            f"VolumeDataset({self.archive_path!r}, volumes={len(self)}, "
            f"skipped_series={len(self.skipped)})"
        )

    def report(self) -> str:
        """What the dataset holds, how it was selected, and the series left out and why."""
        return _series_report(f"{len(self)} volumes", self)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One series' volume and its geometry."""
        uid = self.series_uids[_check_index(index, len(self))]
        series = _handle(self.archive_path).series_of(uid)
        selected = self.selected.get(uid)
        volume = series.volume(
            rescale=self.rescale,
            subset=self.subset,
            threads=self.threads,
            dtype=self.dtype,
            rows=None
            if selected is None
            else [r for r in series.rows if str(r["SOPInstanceUID"]) in selected],
        )
        spacing = np.asarray(volume.spacing, np.float64)
        affine = np.asarray(volume.affine, np.float64)
        return {
            "pixels": volume.array,
            "series_instance_uid": uid,
            "sop_instance_uids": list(volume.sop_instance_uids),
            "origin": np.asarray(volume.origin, np.float64),
            "direction": np.asarray(volume.direction, np.float64),
            "affine": affine,
            "sheared": bool(volume.sheared),
            **_meta(series.rows[0], self.fields),
            **_geometry(spacing, affine, (0, 0, 0)),
        }


# --- patches -----------------------------------------------------------------------------


class PatchDataset(_FromQuery, _MapBase):
    """`samples` random patches of `patch_size`, item i fully determined by (seed, i).

    A 3-D `patch_size` (z, y, x) cuts patches from series volumes (`plan_volume`, with
    `subset`), a 2-D one (y, x) from single frames. Item i draws, from
    `numpy.random.default_rng([seed, i])`, a series (by `weights`: a mapping UID ->
    weight or a sequence aligned with `series_uids`; default uniform), then a frame for
    2-D, then the corner. Series with no volume (3-D) or no frame (2-D) at least as
    large as the patch are left out and listed in `skipped`. Items: {"pixels",
    "series_instance_uid", "offset"} (the corner: (slice, row, column) in the volume,
    or (row, column) in the frame) and, for 2-D, "sop_instance_uid" and "frame"; and
    "study_instance_uid", "patient_id", "spacing", "affine_lps", "affine_ras" (of the
    patch: index (0, 0, 0) is its corner) and one text entry per keyword of `fields`.
    With `rescale`, monochrome pixels are modality values. `dtype`: the pixels' dtype
    (default float32 with `rescale`, else as stored). `archive`: an `Archive` or its path.
    `instance_query`: keys (as `Archive.query` matches them at the instance level) the
    instances patches are cut from must match; a series with none is listed in `skipped`.
    `geometry=False` leaves `GEOMETRY_KEYS` out of the items ("offset" stays).
    """

    def __init__(
        self,
        archive_path: Archive | str | os.PathLike[str],
        patch_size: Sequence[int],
        samples: int,
        seed: int = 0,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        series_uids: Sequence[str] | None = None,
        rescale: bool = False,
        subset: bool = False,
        dtype: np.dtype | str | None = None,
        fields: Sequence[str] = (),
        instance_query: Mapping[str, Any] | None = None,
        geometry: bool = True,
    ) -> None:
        self.archive_path = _archive_path(archive_path)
        self.geometry = geometry
        conditions = _instance_conditions(instance_query)
        self.instance_query = dict(instance_query or {})
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ValueError(
                f"patch_size must be (z, y, x) or (y, x) of positive ints, not {patch_size}"
            )
        if samples < 0 or seed < 0:
            raise ValueError("samples and seed must not be negative")
        self.samples = int(samples)
        self.seed = int(seed)
        self.rescale = rescale
        self.dtype = _output_dtype(dtype, rescale)
        self.fields = _fields(fields)
        archive = _handle(self.archive_path).archive
        uids = _series_uids(archive, series_uids)
        given = self._weights(uids, weights)
        self.skipped: dict[str, str] = {}
        self.series_uids: list[str] = []
        self.arrays: list[str] = []
        # Per series: (array id, frame) per slice (3-D) or per frame (2-D), its shape(s),
        # the rows for rescaling, (2-D) the instance UID and frame number of each frame,
        # and (metadata, spacing, affine) of the volume (3-D) or of each frame (2-D).
        self.where: list[np.ndarray] = []
        self.shapes: list[np.ndarray] = []
        self.rescale_rows: list[list[dict[str, Any]]] = []
        self.frame_names: list[list[tuple[str, int]]] = []
        self.extra: list[list[tuple[dict[str, Any], np.ndarray, np.ndarray]]] = []
        kept: list[float] = []
        array_ids: dict[str, int] = {}

        def array_id(path: str) -> int:
            if path not in array_ids:
                array_ids[path] = len(self.arrays)
                self.arrays.append(path)
            return array_ids[path]

        for uid, weight in zip(uids, given, strict=True):
            rows = _selected(_rows(archive, uid), conditions)
            if not rows:
                reason = NONE_SELECTED
            elif len(self.patch_size) == 3:
                reason = self._add_volume(uid, rows, subset, array_id)
            else:
                reason = self._add_frames(uid, rows, array_id)
            if reason:
                self.skipped[uid] = reason
                continue
            self.series_uids.append(uid)
            kept.append(weight)
        if not self.series_uids:
            raise ValueError(f"no series holds a patch of {self.patch_size}: {self.skipped}")
        total = float(sum(kept))
        if total <= 0:
            raise ValueError("the weights of the usable series sum to zero")
        self.probabilities = np.asarray(kept, np.float64) / total

    @staticmethod
    def _weights(
        uids: list[str], weights: Mapping[str, float] | Sequence[float] | None
    ) -> list[float]:
        if weights is None:
            return [1.0] * len(uids)
        if isinstance(weights, Mapping):
            values = [float(weights.get(uid, 0.0)) for uid in uids]
        else:
            values = [float(w) for w in weights]
            if len(values) != len(uids):
                raise ValueError(f"{len(values)} weights for {len(uids)} series")
        if any(not np.isfinite(w) or w < 0 for w in values):
            raise ValueError("weights must be finite and not negative")
        return values

    def _add_volume(self, uid: str, rows: list[Row], subset: bool, array_id: Any) -> str:
        try:
            plan = plan_volume(rows, subset=subset)
        except VolumeError as error:
            return str(error)
        first = plan.rows[0]
        shape = (len(plan.rows), int(first["Rows"]), int(first["Columns"]))
        if any(s < p for s, p in zip(shape, self.patch_size, strict=True)):
            return f"volume {shape} smaller than the patch"
        where = [
            (array_id(pixel_ref(r)["array"]), int(pixel_ref(r)["first_frame"])) for r in plan.rows
        ]
        self.where.append(np.array(where, np.int64))
        self.shapes.append(np.array([shape], np.int64))
        self.rescale_rows.append([_slim(r) for r in plan.rows])
        self.frame_names.append([])
        spacing = np.asarray(plan.spacing, np.float64)
        self.extra.append([(_meta(first, self.fields), spacing, plan.affine)])
        return ""

    def _add_frames(self, uid: str, rows: list[Row], array_id: Any) -> str:
        py, px = self.patch_size
        where, shapes, slim, names, extra = [], [], [], [], []
        for row in rows:
            pixels = row.get("pixels")
            if not pixels or int(row["Rows"]) < py or int(row["Columns"]) < px:
                continue
            a = array_id(pixels["array"])
            first = int(pixels["first_frame"])
            row_slim, row_extra = _slim(row), (_meta(row, self.fields), *frame_geometry(row))
            for f in range(int(pixels["frames"])):
                where.append((a, first + f))
                shapes.append((int(row["Rows"]), int(row["Columns"])))
                slim.append(row_slim)
                names.append((str(row["SOPInstanceUID"]), f))
                extra.append(row_extra)
        if not where:
            return "no frame as large as the patch"
        self.where.append(np.array(where, np.int64))
        self.shapes.append(np.array(shapes, np.int64))
        self.rescale_rows.append(slim)
        self.frame_names.append(names)
        self.extra.append(extra)
        return ""

    def __len__(self) -> int:
        return self.samples

    def __repr__(self) -> str:
        return (
            f"PatchDataset({self.archive_path!r}, patch_size={self.patch_size}, "
            f"samples={self.samples}, seed={self.seed}, series={len(self.series_uids)}, "
            f"skipped_series={len(self.skipped)})"
        )

    def report(self) -> str:
        """What the dataset holds, how it was selected, and the series left out and why."""
        return _series_report(f"{self.samples} patches of {self.patch_size}", self)

    def draw(self, index: int) -> tuple[int, int, tuple[int, ...]]:
        """(series number, frame number or -1 for 3-D, corner) of item `index`, without reading."""
        index = _check_index(index, len(self))
        rng = np.random.default_rng([self.seed, index])
        s = int(rng.choice(len(self.series_uids), p=self.probabilities))
        if len(self.patch_size) == 3:
            frame, shape = -1, self.shapes[s][0]
        else:
            frame = int(rng.integers(len(self.where[s])))
            shape = self.shapes[s][frame]
        corner = tuple(
            int(rng.integers(0, int(n) - p + 1))
            for n, p in zip(shape, self.patch_size, strict=True)
        )
        return s, frame, corner

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Patch `index`: the same for the same (seed, index) in any process."""
        return self._patch(*self.draw(index))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """`[self[i] for i in indices]`, converted into one block (DataLoader batches).

        The patches' pixels and other numeric values are rows of one new block per call
        (`collation.batch_arrays`: shared memory in a DataLoader worker), which
        `collate` hands over as the batch without a copy. A 2-D patch kept as stored is
        decoded straight into its row; other patches are decoded into an array of their
        own, then converted into their row (the rescale a multiply-add there). Patches of
        different dtypes or shapes (which no collate batches) are read one by one.
        """
        from pacs_engine.read.collation import batch_arrays

        draws = [self.draw(i) for i in indices]
        store = _handle(self.archive_path).archive.pixels
        kinds = {self._output(store, s, frame) for s, frame, _ in draws}
        if len(kinds) != 1:
            return [self._patch(*draw) for draw in draws]
        ((dtype, shape),) = kinds
        int64 = np.dtype(np.int64)
        specs = {"pixels": (dtype, shape), "offset": (int64, (len(self.patch_size),))}
        if len(self.patch_size) == 2:
            specs["frame"] = (int64, ())
        if self.geometry:  # the first patch's geometry's dtypes and shapes: every patch's
            s, frame, _ = draws[0]
            _, spacing, affine = self.extra[s][max(frame, 0)]
            geometry = _geometry(spacing, affine, (0, 0, 0))
            specs.update((key, (a.dtype, a.shape)) for key, a in geometry.items())
        arrays = batch_arrays(len(draws), specs)
        items = []
        for k, draw in enumerate(draws):
            item = self._patch(*draw, out=arrays["pixels"][k])
            for key, block in arrays.items():  # the other numeric values: rows of the block
                if key != "pixels":
                    block[k] = item[key]
                    if isinstance(item[key], np.ndarray):  # "frame" stays an int
                        item[key] = block[k]
            items.append(item)
        return items

    def _output(self, store: Any, s: int, frame: int) -> tuple[np.dtype, tuple[int, ...]]:
        """The dtype and shape of the pixels of a patch of series `s` (2-D: of `frame`)."""
        spec = store.spec(self.arrays[int(self.where[s][max(frame, 0)][0])])
        return _item_dtype(self.dtype, spec.dtype), (*self.patch_size, *spec.frame_shape[2:])

    def _patch(
        self, s: int, frame: int, corner: tuple[int, ...], out: np.ndarray | None = None
    ) -> dict[str, Any]:
        """The patch `draw` gave, its pixels written into `out` when given (of their dtype
        and shape: `_output`)."""
        store = _handle(self.archive_path).archive.pixels
        window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size, strict=True))
        plane = (window[-2], window[-1])
        item: dict[str, Any] = {"series_instance_uid": self.series_uids[s]}
        if frame < 0:
            z = window[0]
            rows = self.rescale_rows[s][z]
            where = [(self.arrays[a], f) for a, f in self.where[s][z].tolist()]
            stack = read_stack(store, where, rows, plane)
            if self.rescale and stack.ndim == 3:  # grey single-frame slices: frame 0 of each
                rows = [_rescale_row(self.archive_path, row, 0) for row in rows]
            pixels = self._converted(stack, rows, self.rescale, out)
            meta, spacing, affine = self.extra[s][0]
            start = corner
        else:
            a, f = (int(v) for v in self.where[s][frame])
            path = self.arrays[a]
            spec = store.spec(path)
            modality = self.rescale and len(spec.frame_shape) == 2  # grey frames only
            uid, number = self.frame_names[s][frame]

            def names() -> str:
                return named_instances([f"{uid} frame {number}"])

            if out is not None and out.dtype == spec.dtype and not modality:
                # What convert would give (a copy as stored): decoded straight into `out`.
                pixels = read_values(store, path, [f], plane, out=out[None], names=names)[0]
            else:
                pixels = read_values(store, path, [f], plane, names=names)[0]
                rows = [self.rescale_rows[s][frame]]
                if modality:
                    rows = [_rescale_row(self.archive_path, rows[0], self.frame_names[s][frame][1])]
                one = None if out is None else out[None]
                pixels = self._converted(pixels[None], rows, modality, one)[0]
            item["sop_instance_uid"], item["frame"] = self.frame_names[s][frame]
            meta, spacing, affine = self.extra[s][frame]
            start = (0, *corner)
        item["pixels"] = pixels
        item["offset"] = np.asarray(corner, np.int64)
        item.update(meta)
        if self.geometry:
            item.update(_geometry(spacing, affine, start))
        return item

    def _converted(
        self,
        frames: np.ndarray,
        rows: Sequence[Mapping[str, Any]],
        modality: bool,
        out: np.ndarray | None,
    ) -> np.ndarray:
        """`convert` of the frames to the items' dtype: a new array, or written into `out`."""
        if out is None:
            return convert(frames, rows, modality, self.dtype)
        convert_into(frames, rows, modality, out)
        return out
