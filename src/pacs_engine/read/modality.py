"""Where an instance's modality values come from when its index row does not say.

The index row holds the top-level Rescale Slope and Intercept, which is all that
pydicom's `apply_modality_lut` reads and all that a classic CT or PET image has. Two
other places hold the modality transform, and only the header has them:
- an enhanced multi-frame image (Enhanced CT, MR, PET, Legacy Converted) keeps Rescale
  Slope and Intercept in the Pixel Value Transformation of its functional groups, per
  frame or shared by all (PS3.3 C.7.6.16.2.9); its frames would otherwise come back as
  stored values (an Enhanced CT 1024 off its HU);
- a Modality LUT Sequence (PS3.3 C.11.1) maps stored values through a table instead.

`needs_header` tells from the row alone whether to look (cheap: classic MR and every
row with top-level coefficients never do); `modality_rows` reads the header once and
gives one row per frame of the instance, with the frame's coefficients or its LUT, for
`volume.convert` to apply (`through_luts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pacs_engine.index.rows import Row

if TYPE_CHECKING:
    from pacs_engine.archive import Archive

#: The key of a frame's Modality LUT in a rescale row: (first mapped value, table).
LUT_KEY = "ModalityLUT"

#: SOP classes whose IOD has no Modality LUT Module and no functional groups: their
#: modality values are their stored values, read from the header or not.
_NO_MODALITY_TRANSFORM = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    }
)


def has_coefficients(row: Mapping[str, Any]) -> bool:
    """Whether the row gives the top-level Rescale Slope and Intercept (pydicom needs both)."""
    return row.get("RescaleSlope") is not None and row.get("RescaleIntercept") is not None


def needs_header(row: Mapping[str, Any]) -> bool:
    """Whether the instance's modality transform may be in its header only: no top-level
    coefficients, and a multi-frame instance or a class whose IOD may have a Modality LUT."""
    if has_coefficients(row):
        return False
    return "NumberOfFrames" in row or row.get("SOPClassUID") not in _NO_MODALITY_TRANSFORM


def modality_rows(archive: Archive, row: Row, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One rescale row per frame of the instance (`base` with the frame's Rescale Slope and
    Intercept, or its Modality LUT), from its header; `base` itself per frame when the
    header has neither. Raises ExportError naming the instance when its header cannot be read.
    """
    pixels = row.get("pixels")
    count = int(pixels["frames"]) if pixels else 1
    ds = archive.header_dataset(row)
    if ds.get("ModalityLUTSequence"):
        lut = {LUT_KEY: _lut(ds)}
        return [{**base, **lut} for _ in range(count)]
    shared = _transformation(ds.get("SharedFunctionalGroupsSequence"), 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    rows = []
    for f in range(count):
        found = _transformation(per_frame, f) or shared
        if found is None:
            rows.append(dict(base))
            continue
        slope, intercept = found.get("RescaleSlope"), found.get("RescaleIntercept")
        rows.append(
            {**base, "RescaleSlope": _number(slope), "RescaleIntercept": _number(intercept)}
        )
    return rows


def _transformation(groups: Any, frame: int) -> Any:
    """The Pixel Value Transformation item of functional group `frame`, or None."""
    if not groups or len(groups) <= frame:
        return None
    found = groups[frame].get("PixelValueTransformationSequence")
    return found[0] if found else None


def _number(value: Any) -> float | None:
    """A DS value as a float (None when absent or empty)."""
    return None if value is None or value == "" else float(value)


def _lut(ds: Any) -> tuple[int, np.ndarray]:
    """(first mapped value, table) of the data set's Modality LUT, the table as pydicom's
    `apply_modality_lut` gives it (US or OW data, either byte order, 8 or 16 bits)."""
    from pydicom.pixels import apply_modality_lut

    entries, first, _ = (int(v) for v in ds.ModalityLUTSequence[0].LUTDescriptor)
    entries = entries or 2**16
    # Each stored value first .. first + entries - 1 maps to its own entry: the table.
    table = apply_modality_lut(np.arange(first, first + entries, dtype=np.int64), ds)
    return first, np.ascontiguousarray(table)


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
