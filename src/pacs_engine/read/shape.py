"""A fixed frame shape for datasets: frames of another size skipped, padded, cropped or resampled.

PyTorch's default collate stacks the items of a batch, so every frame must have one
shape. `FrameShape((H, W), on_mismatch)` says what happens to a frame of another size:

- "skip": left out (counted, with its size, in the dataset's `excluded`);
- "pad": centred in an H x W frame of `pad_value`; frames larger than H x W in either
  dimension are left out (padding cannot shrink them);
- "crop": the centre H x W; frames smaller in either dimension are left out;
- "resample": bilinear interpolation to H x W (pixel centres aligned, as PyTorch's
  `interpolate(mode="bilinear", align_corners=False)` without antialiasing).

The item's spacing and affines follow the pixels: a crop or pad moves the origin by
the offset, a resample scales the row and column steps (and spacing) by the size ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ON_MISMATCH", "FrameShape"]

ON_MISMATCH = ("skip", "pad", "crop", "resample")


@dataclass(frozen=True)
class FrameShape:
    """The (rows, columns) every frame must have, and what to do with frames of another size."""

    shape: tuple[int, int]
    on_mismatch: str = "skip"
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (rows, columns) >= 1, not {tuple(self.shape)}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        if self.on_mismatch not in ON_MISMATCH:
            raise ValueError(f"on_mismatch must be one of {ON_MISMATCH}, not {self.on_mismatch!r}")

    def __str__(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"

    def exclusion(self, rows: int, columns: int) -> str:
        """Why a frame of rows x columns is left out ("" when it is kept, fitted or not)."""
        h, w = self.shape
        if (rows, columns) == self.shape:
            return ""
        size = f"{rows}x{columns}"
        if self.on_mismatch == "skip":
            return f"frame size {size}, not {self}"
        if self.on_mismatch == "pad" and (rows > h or columns > w):
            return f"frame size {size} larger than {self}: cannot pad"
        if self.on_mismatch == "crop" and (rows < h or columns < w):
            return f"frame size {size} smaller than {self}: cannot crop"
        return ""

    def fitted(self, rows: int, columns: int) -> str:
        """What happens to a kept frame of rows x columns, for the report ("" when it fits)."""
        if (rows, columns) == self.shape:
            return ""
        verb = {"pad": "padded", "crop": "cropped", "resample": "resampled"}[self.on_mismatch]
        return f"{verb} from {rows}x{columns} to {self}"

    def _offset(self, rows: int, columns: int) -> tuple[int, int]:
        """Index in the source frame of the output's (0, 0), for a pad or a crop (centred)."""
        return (rows - self.shape[0]) // 2, (columns - self.shape[1]) // 2

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The frame (rows, columns[, samples]) in this shape (one `exclusion` said is kept)."""
        rows, columns = pixels.shape[:2]
        if (rows, columns) == self.shape:
            return pixels
        h, w = self.shape
        if self.on_mismatch == "crop":
            top, left = self._offset(rows, columns)
            return pixels[top : top + h, left : left + w]
        if self.on_mismatch == "pad":
            self._check_pad_value(pixels.dtype)
            top, left = (-v for v in self._offset(rows, columns))
            out = np.full((h, w, *pixels.shape[2:]), self.pad_value, pixels.dtype)
            out[top : top + rows, left : left + columns] = pixels
            return out
        return _bilinear(pixels, self.shape)

    def _check_pad_value(self, dtype: np.dtype) -> None:
        """ValueError unless `pad_value` is a value of `dtype` (numpy would wrap -1024.0 to
        64512 in uint16)."""
        if dtype.kind not in "iu":
            return
        info = np.iinfo(dtype)
        value = self.pad_value
        if not (float(value).is_integer() and info.min <= value <= info.max):
            raise ValueError(f"pad_value {value} is no value of the frames' dtype {dtype}")

    def geometry(
        self, spacing: np.ndarray, affine: np.ndarray, rows: int, columns: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(spacing, affine) of a frame of rows x columns once `apply` fitted it (new arrays)."""
        spacing, affine = spacing.copy(), affine.copy()
        if (rows, columns) == self.shape or self.on_mismatch == "skip":
            return spacing, affine
        if self.on_mismatch == "resample":
            scale = np.array([rows / self.shape[0], columns / self.shape[1]])
            # Output index j is source index (j + 0.5) * scale - 0.5 (pixel centres aligned).
            origin = affine @ np.array([0.0, *(0.5 * scale - 0.5), 1.0])
            affine[:3, 1:3] *= scale
            affine[:, 3] = origin
            spacing[1:] *= scale
            return spacing, affine
        affine[:, 3] = affine @ np.array([0.0, *self._offset(rows, columns), 1.0])
        return spacing, affine


def _bilinear(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of (rows, columns[, samples]) to `shape`, in the pixels' dtype.

    Computed in float32 (float64 pixels stay float64); integer pixels are rounded back.
    """
    out = pixels if pixels.dtype.kind == "f" else pixels.astype(np.float32)
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        position = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0, m - 1)
        low = np.floor(position).astype(np.intp)
        high = np.minimum(low + 1, m - 1)
        weight = (position - low).astype(out.dtype)
        weight = weight.reshape((-1,) + (1,) * (out.ndim - axis - 1))
        a, b = np.take(out, low, axis=axis), np.take(out, high, axis=axis)
        out = a + (b - a) * weight
    if pixels.dtype.kind in "iu":
        info = np.iinfo(pixels.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(pixels.dtype)
    return out.astype(pixels.dtype, copy=False)
