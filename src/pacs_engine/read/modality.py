"""Where an instance's modality values come from when its index row does not say.

The index row holds the top-level Rescale Slope and Intercept, which is all that
pydicom's `apply_modality_lut` reads and all that a classic CT or PET image has. Two
other places hold the modality transform, and only the header has them:
- an enhanced multi-frame image (Enhanced CT, MR, PET, Legacy Converted) keeps Rescale
  Slope and Intercept in the Pixel Value Transformation of its functional groups, per
  frame or shared by all (PS3.3 C.7.6.16.2.9); its frames would otherwise come back as
  stored values (an Enhanced CT 1024 off its HU);
- a Modality LUT Sequence (PS3.3 C.11.1) maps stored values through a table instead.

`needs_header` tells from the row alone whether to look (classic MR and ultrasound,
colour images and every row with top-level coefficients never do); `header_transform`
reads the header once and gives the instance's transform, whose `row(base, frame)` is a
frame's rescale row, with its coefficients or its LUT, for `volume.convert` to apply
(`through_luts`). Top-level coefficients win over the header's: a file that has both
(which PS3.3 does not allow) is rescaled by its top-level ones (pydicom ignores functional
groups too, but applies a Modality LUT Sequence before any coefficients).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import Row

if TYPE_CHECKING:
    from pacs_engine.archive import Archive

#: The key of a frame's Modality LUT in a rescale row: (first mapped value, table).
LUT_KEY = "ModalityLUT"
#: Modality LUT tables read in this process, by (first mapped value, dtype, digest): one
#: array per distinct table, however many instances hold it.
_TABLES: dict[tuple[int, str, bytes], np.ndarray] = {}

#: SOP classes whose IOD has no Modality LUT Module and no functional groups: their
#: modality values are their stored values, read from the header or not.
_NO_MODALITY_TRANSFORM = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    }
)


class ModalityError(PacsEngineError, ValueError):
    """An instance's modality transform that cannot be applied: names it and says why."""


def has_coefficients(row: Mapping[str, Any]) -> bool:
    """Whether the row gives the top-level Rescale Slope and Intercept (pydicom needs both)."""
    return row.get("RescaleSlope") is not None and row.get("RescaleIntercept") is not None


def needs_header(row: Mapping[str, Any]) -> bool:
    """Whether the instance's modality transform may be in its header only: a grey image
    without top-level coefficients, of a class whose IOD may have one there."""
    if has_coefficients(row) or int(row.get("SamplesPerPixel") or 1) != 1:
        return False
    return row.get("SOPClassUID") not in _NO_MODALITY_TRANSFORM


@dataclass(frozen=True, eq=False)  # it holds an array: identity, not value, equality
class HeaderTransform:
    """An instance's modality transform as its header gives it: Rescale Slope and Intercept
    per frame (one pair for every frame when shared), or a Modality LUT."""

    coefficients: tuple[tuple[float | None, float | None], ...] = ()
    lut: tuple[int, np.ndarray] | None = None

    def row(self, base: Mapping[str, Any], frame: int) -> dict[str, Any]:
        """The rescale row of frame `frame`: `base` with the frame's transform."""
        if self.lut is not None:
            return {**base, LUT_KEY: self.lut}
        pairs = self.coefficients
        slope, intercept = pairs[frame if len(pairs) > 1 else 0]
        return {**base, "RescaleSlope": slope, "RescaleIntercept": intercept}


def header_transform(archive: Archive, row: Row) -> HeaderTransform | None:
    """The modality transform in the instance's header, None when it has none there.

    Raises ExportError (a header that cannot be read) or ModalityError (a Modality LUT that
    cannot be applied), each naming the instance.
    """
    ds = archive.header_dataset(row)
    if ds.get("ModalityLUTSequence"):
        try:
            return HeaderTransform(lut=_lut(ds))
        except Exception as error:  # a malformed LUT can fail in any layer
            raise ModalityError(
                f"instance {row['SOPInstanceUID']}: its Modality LUT Sequence cannot be "
                f"applied ({error!r})"
            ) from None
    try:
        return _functional_groups(ds, row)
    except (TypeError, ValueError) as error:  # a DS that is no number, several values
        raise ModalityError(
            f"instance {row['SOPInstanceUID']}: its functional groups' Rescale Slope and "
            f"Intercept cannot be read ({error})"
        ) from None


def _functional_groups(ds: Any, row: Row) -> HeaderTransform | None:
    """The per-frame (else shared) Pixel Value Transformation of each frame, None without."""
    shared = _transformation(ds.get("SharedFunctionalGroupsSequence"), 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    pixels = row.get("pixels")
    count = int(pixels["frames"]) if pixels else 1
    found = [_transformation(per_frame, f) or shared for f in range(count)]
    if all(item is None for item in found):
        return None
    distinct: dict[tuple[float | None, float | None], tuple[float | None, float | None]] = {}
    pairs = []
    for item in found:
        pair = (None, None) if item is None else _pair(item)
        pairs.append(distinct.setdefault(pair, pair))  # one tuple per distinct pair held
    return HeaderTransform(coefficients=tuple(pairs) if len(distinct) > 1 else tuple(pairs[:1]))


def _transformation(groups: Any, frame: int) -> Any:
    """The Pixel Value Transformation item of functional group `frame`, or None."""
    if not groups or len(groups) <= frame:
        return None
    found = groups[frame].get("PixelValueTransformationSequence")
    return found[0] if found else None


def _pair(item: Any) -> tuple[float | None, float | None]:
    """(Rescale Slope, Rescale Intercept) of a Pixel Value Transformation item."""
    slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    return _number(slope), _number(intercept)


def _number(value: Any) -> float | None:
    """A DS value as a float (None when absent or empty)."""
    return None if value is None or value == "" else float(value)


def _lut(ds: Any) -> tuple[int, np.ndarray]:
    """(first mapped value, table) of the data set's Modality LUT, the table as pydicom's
    `apply_modality_lut` gives it (US or OW data, either byte order, 8 or 16 bits)."""
    from pydicom.pixels import apply_modality_lut

    item = ds.ModalityLUTSequence[0]
    count, first, depth = (int(v) for v in item.LUTDescriptor)
    # The number of entries is always US (PS3.3 C.11.1.1.1); an implicit VR file of signed
    # pixels reads the descriptor as SS, so 32768 entries or more come out negative.
    entries = (count & 0xFFFF) or 2**16
    if count != entries:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom checks the value against SS
            item.LUTDescriptor = [entries, first, depth]
    # Each stored value first .. first + entries - 1 maps to its own entry: the table.
    table = np.ascontiguousarray(
        apply_modality_lut(np.arange(first, first + entries, dtype=np.int64), ds)
    )
    # The instances of a series usually hold one table: kept once per process, not each.
    key = (first, table.dtype.str, hashlib.blake2b(table.tobytes()).digest())
    return first, _TABLES.setdefault(key, table)


def through_luts(
    frames: np.ndarray, rows: Sequence[Mapping[str, Any]]
) -> tuple[np.ndarray, Sequence[Mapping[str, Any]]]:
    """Frames (n, rows, columns) mapped through their rows' Modality LUTs (one row per frame,
    or one for all), and rows that leave the mapped values as they are; unchanged without
    a LUT. A value below the first mapped one takes the first entry, one past the table the
    last, as pydicom's `apply_modality_lut` does."""
    if not any(LUT_KEY in row for row in rows):
        return frames, rows
    per_frame = len(rows) == len(frames)
    tables = [row[LUT_KEY][1] for row in rows if LUT_KEY in row]
    out = np.empty(frames.shape, np.result_type(frames.dtype, *tables))
    mapped: list[Mapping[str, Any]] = []
    for k in range(len(frames)):
        row = rows[k if per_frame else 0]
        if LUT_KEY not in row:
            out[k] = frames[k]
            mapped.append(row)
            continue
        first, table = row[LUT_KEY]
        index = np.clip(frames[k].astype(np.int64) - first, 0, len(table) - 1)
        out[k] = table[index]
        depth = table.dtype.itemsize * 8
        mapped.append({**_without_lut(row), "BitsStored": depth, "PixelRepresentation": 0})
    return out, mapped


def _without_lut(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row without its LUT nor coefficients: the mapped values are modality values."""
    keep = {k: v for k, v in row.items() if k != LUT_KEY}
    keep["RescaleSlope"] = keep["RescaleIntercept"] = None
    return keep
