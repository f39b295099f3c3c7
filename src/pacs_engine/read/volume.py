"""Volumes: the frames of one geometry, sorted along the slice normal, with their affine.

Conventions (see `Volume`): LPS patient coordinates in mm, as DICOM gives them; array
shape (slices, rows, columns[, samples]); voxel index (k, j, i) = (slice, row, column).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import PixelRef, Row
from pacs_engine.read.modality import through_luts

if TYPE_CHECKING:
    from pacs_engine.archive.pixel_store import PixelStore

# Direction cosines and pixel spacings that differ by less than this are the same geometry
# (scanners write cosines with float noise of ~1e-7).
ORIENTATION_TOL = 1e-4
SPACING_RTOL = 1e-4
# Two positions closer than this along the normal are the same position (mm).
DUPLICATE_TOL = 0.01
# Gaps equal to the slice spacing within max(GAP_ATOL, GAP_RTOL * spacing) are regular.
GAP_ATOL = 0.01
GAP_RTOL = 0.01


class VolumeError(PacsEngineError, ValueError):
    """A series that is not one regular stack of slices; names the instances at fault."""

    def __init__(self, reason: str, sop_instance_uids: Sequence[str] = ()) -> None:
        self.reason = reason
        self.sop_instance_uids = list(sop_instance_uids)
        named = ", ".join(self.sop_instance_uids[:20])
        more = len(self.sop_instance_uids) - 20
        if more > 0:
            named += f" and {more} more"
        super().__init__(f"{reason}: {named}" if named else reason)


@dataclass
class Volume:
    """A stack of parallel slices of one geometry and its mapping to patient coordinates.

    - `array`: shape (slices, rows, columns) or (slices, rows, columns, samples).
    - `spacing`: (slice, row, column) in mm: the distance between slices along the
      normal (from the positions, not SliceThickness; SliceThickness, else 1.0, for a
      single slice), then PixelSpacing (between rows, between columns).
    - `origin`: ImagePositionPatient of the first slice, the centre of voxel (0, 0, 0).
    - `direction`: 3x3, columns in array axis order: the slice normal (row cosine x
      column cosine; slices are sorted along it, increasing), the column direction
      cosine (ImageOrientationPatient[3:], the way the row index j grows) and the row
      direction cosine (ImageOrientationPatient[:3], the way the column index i grows).
    - `affine`: 4x4, maps (k, j, i, 1) to (x, y, z, 1) in LPS mm. Its first column is the
      step between consecutive slice positions, so it stays exact for sheared stacks
      (gantry tilt, `sheared` true), where it is not parallel to the normal; otherwise
      `affine[:3, :3] == direction @ diag(spacing)` and `affine[:3, 3] == origin`.
    - `sop_instance_uids`: the instance of each slice, in array order.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    affine: np.ndarray
    sop_instance_uids: list[str] = field(default_factory=list)
    sheared: bool = False
    rescaled: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return tuple(self.array.shape)


@dataclass
class Plan:
    """The chosen instances of a volume, in slice order, and their geometry."""

    rows: list[Row]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    affine: np.ndarray
    sheared: bool


def _uid(row: Mapping[str, Any]) -> str:
    return str(row["SOPInstanceUID"])


def pixel_ref(row: Row) -> PixelRef:
    """Where a row's frames are; VolumeError for a row without pixel data."""
    pixels = row.get("pixels")
    if pixels is None:
        raise VolumeError("the instance has no pixel data", [_uid(row)])
    return pixels


def read_stack(
    pixels: PixelStore,
    where: Sequence[tuple[str, int]],
    rows: Sequence[Mapping[str, Any]],
    window: tuple[slice, slice] | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Frames given as (array path, frame), cut to `window` (None: whole), decoded in that
    order into one new array (`read_values`): each array's frames with one read, straight into
    their part of the output when they are consecutive there (a stack from one array
    always is).

    `rows`: the row of each frame, whose SOPInstanceUID names it in the VolumeError raised
    when two arrays hold frames of different shapes or dtypes (read only then: a patch
    reader need not build the names per patch).
    """
    # Here, not at the top: this module needs numpy only until it reads (no zarr import).
    from pacs_engine.archive.pixel_store import FULL_FRAME, window_shape
    from pacs_engine.read.values import read_values

    window = window or FULL_FRAME
    if not where:
        raise ValueError("no frames to read")
    by_array: dict[str, list[int]] = {}
    for k, (path, _) in enumerate(where):
        by_array.setdefault(path, []).append(k)
    specs = {path: pixels.spec(path) for path in by_array}
    first = next(iter(specs.values()))
    shape, dtype = window_shape(first, window), first.dtype
    for path, spec in specs.items():
        if (window_shape(spec, window), spec.dtype) != (shape, dtype):
            raise VolumeError(
                f"decoded frames differ in shape or dtype ({window_shape(spec, window)} "
                f"{spec.dtype} vs {shape} {dtype})",
                [_uid(rows[k]) for k in by_array[path]],
            )
    out = np.empty((len(where), *shape), dtype)
    for path, slots in by_array.items():
        frames = [where[k][1] for k in slots]
        start, stop = slots[0], slots[-1] + 1

        def names(slots: list[int] = slots) -> str:
            return named_instances([_uid(rows[k]) for k in slots])

        if stop - start == len(slots):
            read_values(pixels, path, frames, window, threads, out=out[start:stop], names=names)
        else:  # interleaved with another array's frames: decoded, then copied into place
            out[slots] = read_values(pixels, path, frames, window, threads, names=names)
    return out


def named_instances(uids: Sequence[str]) -> str:
    """Instances for an error: "instance UID", or "instances UID, UID, ... (N)"."""
    if len(uids) == 1:
        return f"instance {uids[0]}"
    shown = ", ".join(uids[:3]) + (", ..." if len(uids) > 3 else "")
    return f"instances {shown} ({len(uids)})"


def _order(row: Row) -> tuple:
    number = row.get("InstanceNumber")
    return (number is None, number if isinstance(number, int | float) else 0, _uid(row))


def _frames(row: Row) -> int:
    pixels = row.get("pixels")
    count = (pixels["frames"] if pixels else None) or row.get("NumberOfFrames") or 1
    return int(count)


def _geometry_key(row: Row) -> tuple:
    """What must be equal, exactly, for two instances to stack (cosines/spacing aside)."""
    return (
        row.get("Rows"),
        row.get("Columns"),
        row.get("SamplesPerPixel") or 1,
        row.get("BitsAllocated"),
        row.get("PixelRepresentation"),
        row.get("PhotometricInterpretation"),
    )


def _same_geometry(a: Row, b: Row) -> bool:
    """Equal pixel format, orientation and spacing (rows already checked by `_valid`)."""
    if _geometry_key(a) != _geometry_key(b):
        return False
    # Plain Python on these 6 and 2 numbers: numpy's per-call cost was most of a
    # fast-codec volume's load time (one call per slice).
    oa, ob = a["ImageOrientationPatient"], b["ImageOrientationPatient"]
    if any(abs(float(x) - float(y)) > ORIENTATION_TOL for x, y in zip(oa, ob, strict=True)):
        return False
    sa, sb = a["PixelSpacing"], b["PixelSpacing"]
    pairs = zip(sa, sb, strict=True)
    return all(abs(float(x) - float(y)) <= SPACING_RTOL * abs(float(y)) for x, y in pairs)


def _describe(row: Row) -> str:
    return (
        f"{row.get('Rows')}x{row.get('Columns')}, orientation "
        f"{row.get('ImageOrientationPatient')}, spacing {row.get('PixelSpacing')}, "
        f"{row.get('PhotometricInterpretation')} {row.get('BitsAllocated')}-bit "
        f"representation {row.get('PixelRepresentation')}"
    )


def _usable(rows: list[Row], subset: bool) -> list[Row]:
    """The rows with pixels, one frame and full position information."""
    rows = [r for r in rows if r.get("pixels")]
    if not rows:
        raise VolumeError("the series has no instances with pixel data")
    multi = [r for r in rows if _frames(r) > 1]
    if multi and not subset:
        raise VolumeError(
            "multi-frame instances without per-frame positions in the index row "
            "(enhanced multi-frame volumes are not supported yet)",
            [_uid(r) for r in multi],
        )
    rows = [r for r in rows if _frames(r) == 1]
    missing = [
        r
        for r in rows
        if not _valid(r.get("ImagePositionPatient"), 3)
        or not _valid(r.get("ImageOrientationPatient"), 6)
        or not _valid(r.get("PixelSpacing"), 2)
    ]
    if missing and not subset:
        raise VolumeError(
            "instances without ImagePositionPatient, ImageOrientationPatient or PixelSpacing",
            [_uid(r) for r in missing],
        )
    ids = {id(r) for r in missing}
    rows = [r for r in rows if id(r) not in ids]
    if not rows:
        raise VolumeError(
            "no single-frame instance of the series has position information",
            [_uid(r) for r in multi + missing],
        )
    return rows


def _valid(value: Any, n: int) -> bool:
    """`n` finite numbers; for an orientation, two cosines that are not parallel."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        return False  # index rows hold lists; pydicom MultiValue and arrays also pass
    if len(value) != n:
        return False
    try:
        v = [float(x) for x in value]
    except (TypeError, ValueError, OverflowError):
        return False
    if not all(math.isfinite(x) for x in v):
        return False
    if n != 6:
        return True
    cross = (v[1] * v[5] - v[2] * v[4], v[2] * v[3] - v[0] * v[5], v[0] * v[4] - v[1] * v[3])
    return math.hypot(*cross) > 0.5


def _groups(rows: list[Row]) -> list[list[Row]]:
    """Rows grouped by geometry, largest group first (ties: the earliest in series order)."""
    groups: list[list[Row]] = []
    for row in rows:
        for group in groups:
            if _same_geometry(group[0], row):
                group.append(row)
                break
        else:
            groups.append([row])
    return sorted(groups, key=lambda g: -len(g))  # stable: earlier groups win ties


def _normal(row: Row) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = np.asarray(row["ImageOrientationPatient"], float)
    r, c = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    n = np.cross(r, c)
    return r, c, n / np.linalg.norm(n)


def _gap_tol(step: float) -> float:
    return max(GAP_ATOL, GAP_RTOL * abs(step))


def _longest_run(count: int, breaks: Callable[[int, int], bool]) -> tuple[int, int]:
    """[start, stop) of the longest run of `count` slices that no step breaks (ties: the
    first): `breaks(k, first)` says whether step k (slice k to k + 1) ends a run whose first
    step is `first`."""
    if count <= 2:
        return 0, count
    best = (0, 2)
    start = 0
    for k in range(1, count - 1):  # extend the run with step k
        if breaks(k, start):
            start = k
        if k + 2 - start > best[1] - best[0]:
            best = (start, k + 2)
    return best


def _longest_regular_run(distances: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the longest run of slices with equal gaps (ties: the first)."""
    gaps = np.diff(distances)
    return _longest_run(len(distances), lambda k, s: abs(gaps[k] - gaps[s]) > _gap_tol(gaps[s]))


def _longest_straight_run(positions: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the longest run of positions each the same step (vector) from the
    one before (ties: the first)."""
    steps = np.diff(positions, axis=0)
    if not len(steps):
        return 0, len(positions)
    tolerance = _gap_tol(float(np.median(np.linalg.norm(steps, axis=1))))
    return _longest_run(
        len(positions), lambda k, _: bool(np.linalg.norm(steps[k] - steps[k - 1]) > tolerance)
    )


def plan_volume(rows: list[Row], subset: bool = False) -> Plan:
    """Choose and order the instances of a volume, or raise `VolumeError` naming the culprits.

    With `subset`, instead of raising: drop instances without pixels, with several frames
    or without position information; keep the largest group of one geometry (ties: the
    group of the earliest instance by InstanceNumber); of instances at the same position
    keep the earliest by (InstanceNumber, SOPInstanceUID); then keep the longest run of
    slices with a regular gap (ties: the run nearest the lowest position along the normal),
    and of it the longest run whose positions lie on one line.
    """
    rows = sorted(_usable(rows, subset), key=_order)
    groups = _groups(rows)
    if len(groups) > 1 and not subset:
        main = groups[0][0]
        others = [r for g in groups[1:] for r in g]
        detail = "; ".join(f"{_describe(g[0])} ({len(g)})" for g in groups[1:4])
        raise VolumeError(
            f"mixed geometry: {len(groups[0])} instances are {_describe(main)}, "
            f"{len(others)} differ ({detail}); non-parallel slices or mixed Rows/Columns, "
            "orientation, pixel spacing or pixel format",
            [_uid(r) for r in others],
        )
    rows = groups[0]
    row_cos, col_cos, normal = _normal(rows[0])
    positions = np.array([r["ImagePositionPatient"] for r in rows], float)
    distance = positions @ normal
    order = sorted(range(len(rows)), key=lambda k: (distance[k], _order(rows[k])))
    rows = [rows[k] for k in order]
    positions, distance = positions[order], distance[order]

    # duplicated positions
    same = np.flatnonzero(np.diff(distance) < DUPLICATE_TOL)
    if len(same):
        if not subset:
            dup: list[str] = []
            for at in same:
                for r in (rows[at], rows[at + 1]):
                    if _uid(r) not in dup:
                        dup.append(_uid(r))
            raise VolumeError(
                f"duplicated positions: {len(dup)} instances share "
                f"{len(np.unique(np.round(distance[np.r_[same, same + 1]], 2)))} slice "
                "positions (several acquisitions or time points in one series?)",
                dup,
            )
        keep: list[int] = []
        for k in range(len(rows)):
            if keep and distance[k] - distance[keep[-1]] < DUPLICATE_TOL:
                if _order(rows[k]) < _order(rows[keep[-1]]):
                    keep[-1] = k
            else:
                keep.append(k)
        rows, positions, distance = [rows[k] for k in keep], positions[keep], distance[keep]

    # irregular gaps (missing slices)
    start, stop = _longest_regular_run(distance)
    if (start, stop) != (0, len(rows)):
        if not subset:
            gaps = np.diff(distance)
            step = float(np.median(gaps))
            bad = [k for k in range(len(gaps)) if abs(gaps[k] - step) > _gap_tol(step)]
            if not bad:  # gaps that drift, each near the median but not near each other
                bad = [k for k in (start - 1, stop - 1) if 0 <= k < len(gaps)]
            named: list[str] = []
            for k in bad:
                named += [u for u in (_uid(rows[k]), _uid(rows[k + 1])) if u not in named]
            found = ", ".join(f"{gaps[k]:.4g}" for k in bad[:5])
            raise VolumeError(
                f"irregular slice gaps (missing slices?): the usual gap is {step:.4g} mm, "
                f"found {found} mm between the instances",
                named,
            )
        rows, positions, distance = rows[start:stop], positions[start:stop], distance[start:stop]

    if subset:  # positions on one line: the longest run that is
        start, stop = _longest_straight_run(positions)
        rows, positions, distance = rows[start:stop], positions[start:stop], distance[start:stop]
    n = len(rows)
    if n > 1:
        step_vector = (positions[-1] - positions[0]) / (n - 1)
        step = float(step_vector @ normal)
        off_line = np.linalg.norm(
            positions - (positions[0] + np.arange(n)[:, None] * step_vector), axis=1
        )
        bad_line = [_uid(rows[k]) for k in np.flatnonzero(off_line > _gap_tol(step))]
        if bad_line:
            raise VolumeError("slice positions are not on one line", bad_line)
    else:
        step = float(rows[0].get("SliceThickness") or 1.0)  # one slice: no gap to measure
        step_vector = step * normal
    sheared = bool(np.linalg.norm(step_vector - step * normal) > 1e-3)
    pixel_spacing = [float(v) for v in rows[0]["PixelSpacing"]]
    spacing = (step, pixel_spacing[0], pixel_spacing[1])
    direction = np.stack([normal, col_cos, row_cos], axis=1)
    affine = np.eye(4)
    affine[:3, 0] = step_vector
    affine[:3, 1] = col_cos * spacing[1]
    affine[:3, 2] = row_cos * spacing[2]
    affine[:3, 3] = positions[0]
    return Plan(rows, spacing, positions[0].copy(), direction, affine, sheared)


def _int_dtype(lo: float, hi: float) -> np.dtype | None:
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return np.dtype(name)
    return None


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS (NIfTI) = LPS with x and y negated


def frame_geometry(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(spacing, LPS affine) of the frame of a single-frame instance, both in (slice, row, column).

    spacing: (SliceThickness, PixelSpacing row, PixelSpacing column), NaN where absent.
    The affine maps (0, j, i, 1) to the patient position of row j, column i, like
    `Volume.affine`; its slice column is the unit normal times SliceThickness (1 mm when
    absent). NaN throughout without a valid position, orientation and pixel spacing, or
    for a multi-frame instance (whose frames' positions the index does not hold).
    """
    spacing = np.full(3, np.nan)
    if _valid(row.get("PixelSpacing"), 2):
        spacing[1:] = [float(v) for v in row["PixelSpacing"]]
    if _valid([row.get("SliceThickness")], 1):
        spacing[0] = float(row["SliceThickness"])
    affine = np.full((4, 4), np.nan)
    single = int(row.get("NumberOfFrames") or 1) == 1
    position, orientation = row.get("ImagePositionPatient"), row.get("ImageOrientationPatient")
    if single and _valid(position, 3) and _valid(orientation, 6) and np.isfinite(spacing[1]):
        row_cos, col_cos, normal = _normal(row)  # type: ignore[arg-type]
        affine = np.eye(4)
        affine[:3, 0] = normal * (spacing[0] if np.isfinite(spacing[0]) else 1.0)
        affine[:3, 1] = col_cos * spacing[1]
        affine[:3, 2] = row_cos * spacing[2]
        affine[:3, 3] = [float(v) for v in position]  # type: ignore[union-attr]
    return spacing, affine


def _coefficients(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice (slope, intercept) as float64 arrays shaped (n, 1, 1)."""
    slopes, intercepts = [], []
    for r in rows:
        slope, intercept = r.get("RescaleSlope"), r.get("RescaleIntercept")
        if slope is None or intercept is None:  # pydicom: no rescale without both
            slope, intercept = 1.0, 0.0
        slopes.append(float(slope))
        intercepts.append(float(intercept))
    return np.array(slopes)[:, None, None], np.array(intercepts)[:, None, None]


def rescale_as(
    frames: np.ndarray, rows: Sequence[Mapping[str, Any]], dtype: np.dtype | str
) -> np.ndarray:
    """Modality values in a floating `dtype`: one conversion and one multiply-add in it."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"rescale_as needs a floating dtype, not {dtype}")
    if frames.ndim != 3:
        raise VolumeError("rescaling needs one sample per pixel", [_uid(r) for r in rows])
    out = np.empty(frames.shape, dtype)
    _rescale_into(frames, rows, out)
    return out


def _rescale_into(frames: np.ndarray, rows: Sequence[Mapping[str, Any]], out: np.ndarray) -> None:
    """`rescale_as(frames, rows, out.dtype)` written into `out` (floating, frames' shape)."""
    dtype = out.dtype
    s, i = _coefficients(rows)
    # The multiply casts the stored values to `dtype` first, as astype would: the same
    # float32 values as a conversion then an in-place multiply, in one pass.
    if not s.size or np.all(s == 1.0):
        np.copyto(out, frames, casting="unsafe")
    elif np.all(s == s.flat[0]):  # one scalar per volume in the usual case: no broadcast array
        np.multiply(frames, dtype.type(s.flat[0]), out=out, dtype=dtype, casting="unsafe")
    else:
        np.multiply(frames, s.astype(dtype), out=out, dtype=dtype, casting="unsafe")
    if not i.size:
        return
    if np.all(i == i.flat[0]):
        if i.flat[0] != 0.0:
            out += dtype.type(i.flat[0])
    else:
        out += i.astype(dtype)


def convert(
    frames: np.ndarray,
    rows: Sequence[Mapping[str, Any]],
    modality: bool,
    dtype: np.dtype | str | None,
) -> np.ndarray:
    """Frames (n, rows, columns[, samples]), or their modality values, in `dtype`.

    `modality`: `rescale` grey frames (colour ones have no modality values: as stored, as
    pydicom's modality LUT leaves them). `dtype` None keeps what `rescale` gives; a floating
    dtype rescales with `rescale_as`; an integer dtype must hold every value, else ValueError.
    """
    if modality and frames.ndim == 3:
        frames, rows = through_luts(frames, rows)
        if dtype is not None and np.dtype(dtype).kind == "f":
            return rescale_as(frames, rows, dtype)
        if dtype is not None and np.dtype(dtype).kind in "iu":
            exact = _integer_rescale(frames, rows, np.dtype(dtype))
            if exact is not None:
                return exact
        frames = rescale(frames, rows)
    if dtype is None or frames.dtype == np.dtype(dtype):
        return frames
    target = np.dtype(dtype)
    if target.kind in "iu" and frames.size:
        info = np.iinfo(target)
        lo, hi = frames.min(), frames.max()
        whole = frames.dtype.kind != "f" or bool(np.all(frames == np.round(frames)))
        if lo < info.min or hi > info.max or not whole:
            fits = info.min <= lo and hi <= info.max
            what = f"are not all whole numbers, for {target}" if fits else f"do not fit {target}"

            def wrong(frame: np.ndarray) -> bool:
                if not fits:
                    return bool(frame.min() < info.min or frame.max() > info.max)
                return bool(np.any(frame != np.round(frame)))

            raise ValueError(f"values {lo}..{hi} of {_at_fault(frames, rows, wrong)} {what}")
    return frames.astype(target)


def convert_into(
    frames: np.ndarray, rows: Sequence[Mapping[str, Any]], modality: bool, out: np.ndarray
) -> None:
    """`convert(frames, rows, modality, out.dtype)` written into `out` (frames' shape).

    A floating `out`, or one of the frames' dtype, takes the values without a new array
    (the rescale a multiply-add in its dtype); an integer one goes through `convert`
    (its range checks, its errors).
    """
    if modality and out.dtype.kind == "f" and frames.ndim == 3:
        _rescale_into(*through_luts(frames, rows), out)
    elif not modality and (out.dtype.kind == "f" or out.dtype == frames.dtype):
        np.copyto(out, frames, casting="unsafe")  # what astype gives
    else:
        out[...] = convert(frames, rows, modality, out.dtype)


def _integer_rescale(
    frames: np.ndarray, rows: Sequence[Mapping[str, Any]], target: np.dtype
) -> np.ndarray | None:
    """Modality values of integer frames in integer `target`, in integer arithmetic.

    For one integer slope and intercept for every frame (CT): the values `rescale` then
    a cast give, without its float64 pass (8x the cost of a frame read from a copy).
    ValueError as `convert` when they do not fit `target`; None for other coefficients.
    """
    if frames.ndim != 3 or not frames.size or frames.dtype.kind not in "iu" or not rows:
        return None
    s, i = _coefficients(rows)
    slope, intercept = float(s.flat[0]), float(i.flat[0])
    if not (np.all(s == slope) and np.all(i == intercept)):
        return None
    if not (slope.is_integer() and intercept.is_integer()):
        return None
    slope_int, intercept_int = int(slope), int(intercept)
    lo, hi = int(frames.min()), int(frames.max())
    first, last = sorted((lo * slope_int + intercept_int, hi * slope_int + intercept_int))
    info = np.iinfo(target)
    if first < info.min or last > info.max:

        def wrong(frame: np.ndarray) -> bool:
            ends = (int(frame.min()) * slope_int, int(frame.max()) * slope_int)
            return any(not info.min <= v + intercept_int <= info.max for v in ends)

        where = _at_fault(frames, rows, wrong)
        raise ValueError(f"values {first}..{last} of {where} do not fit {target}")
    steps = (slope_int, intercept_int, lo * slope_int, hi * slope_int)
    if all(info.min <= v <= info.max for v in steps):  # no step overflows `target`
        out = frames.astype(target)
    else:
        out = frames.astype(np.int64)
    if slope_int != 1:
        out *= slope_int
    if intercept_int != 0:
        out += intercept_int
    return out.astype(target, copy=False)


def _at_fault(
    frames: np.ndarray, rows: Sequence[Mapping[str, Any]], wrong: Callable[[np.ndarray], bool]
) -> str:
    """The instances (one row per frame, else the one row of them all) whose frames are
    `wrong`, for an error: "instance UID", or "instances UID, UID, ... (N)"."""
    if len(rows) != len(frames):
        return f"instance {_uid(rows[0])}" if rows else "instance ?"
    return named_instances([_uid(r) for frame, r in zip(frames, rows, strict=True) if wrong(frame)])


def rescale(frames: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Modality values (value * RescaleSlope + RescaleIntercept per slice), as pydicom gives.

    float32 when a slope or intercept is not an integer; else the smallest integer dtype
    that holds every value the stored bits allow (and every value present).
    """
    if frames.ndim != 3:
        raise VolumeError("rescaling needs one sample per pixel", [_uid(r) for r in rows])
    s, i = _coefficients(rows)
    values = frames.astype(np.float64) * s + i
    if not (np.all(s == np.round(s)) and np.all(i == np.round(i))):
        return values.astype(np.float32)
    bits = int(rows[0].get("BitsStored") or frames.dtype.itemsize * 8)
    if rows[0].get("PixelRepresentation") == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    if frames.size:
        lo, hi = min(lo, int(frames.min())), max(hi, int(frames.max()))
    ends = np.concatenate([lo * s.ravel() + i.ravel(), hi * s.ravel() + i.ravel()])
    dtype = _int_dtype(float(ends.min()), float(ends.max()))
    if dtype is None:
        return values
    return np.rint(values).astype(dtype)
