"""Native (uncompressed) pixel data: its layout, and the exact mapping to and from arrays.

Arrays hold what pydicom's `pixel_array(ds, as_rgb=False)` gives: the stored
container values (no masking of unused bits), colour planes interleaved, YBR
4:2:2 chroma expanded, 1-bit pixels unpacked to uint8. `to_bytes` inverts
`to_array` exactly for well-formed data; the archive checks that at ingest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.errors import PacsEngineError

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class LayoutError(PacsEngineError, ValueError):
    """The header does not describe pixel data that can be laid out as an array."""


def _int(attributes: Mapping[str, Any], keyword: str, default: int | None = None) -> int:
    value = attributes.get(keyword, default)
    if isinstance(value, list):
        value = value[0] if value else default
    if not isinstance(value, int) or isinstance(value, bool):
        if default is not None and value in (None, ""):
            return default
        raise LayoutError(f"{keyword} is {value!r}, not a number")
    return value


def frame_shape(rows: int, columns: int, samples: int) -> tuple[int, ...]:
    """The shape of one frame: (rows, columns), or (rows, columns, samples) for colour."""
    return (rows, columns) if samples == 1 else (rows, columns, samples)


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """How the pixel data of one instance maps to an array of frames."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    planar_configuration: int
    photometric: str
    keyword: str

    @classmethod
    def from_attributes(
        cls, attributes: Mapping[str, Any], keyword: str = "PixelData"
    ) -> PixelLayout:
        """The layout the header attributes describe; raises LayoutError when they cannot."""
        rows = _int(attributes, "Rows")
        columns = _int(attributes, "Columns")
        samples = _int(attributes, "SamplesPerPixel", 1)
        frames = _int(attributes, "NumberOfFrames", 1) or 1
        if keyword == "FloatPixelData":
            bits_allocated, representation = 32, 0
        elif keyword == "DoubleFloatPixelData":
            bits_allocated, representation = 64, 0
        else:
            bits_allocated = _int(attributes, "BitsAllocated")
            representation = _int(attributes, "PixelRepresentation", 0)
        bits_stored = _int(attributes, "BitsStored", bits_allocated)
        planar = _int(attributes, "PlanarConfiguration", 0) if samples > 1 else 0
        photometric = str(attributes.get("PhotometricInterpretation") or "")
        if rows <= 0 or columns <= 0 or samples not in (1, 3, 4) or frames <= 0:
            raise LayoutError(f"{rows}x{columns} pixels, {samples} samples, {frames} frames")
        if bits_allocated not in (1, 8, 16, 32, 64):
            raise LayoutError(f"BitsAllocated {bits_allocated} is not 1, 8, 16, 32 or 64")
        if bits_allocated == 1 and samples != 1:
            raise LayoutError("1-bit pixel data with more than one sample")
        return cls(
            rows,
            columns,
            samples,
            frames,
            bits_allocated,
            bits_stored,
            representation,
            planar,
            photometric,
            keyword,
        )

    @property
    def dtype(self) -> np.dtype:
        """The array's dtype (native byte order)."""
        import numpy as np

        if self.keyword == "FloatPixelData":
            return np.dtype(np.float32)
        if self.keyword == "DoubleFloatPixelData":
            return np.dtype(np.float64)
        if self.bits_allocated == 1:
            return np.dtype(np.uint8)
        kind = "i" if self.pixel_representation else "u"
        return np.dtype(f"{kind}{self.bits_allocated // 8}")

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """(rows, columns), or (rows, columns, samples) for colour."""
        return frame_shape(self.rows, self.columns, self.samples)

    @property
    def ybr422(self) -> bool:
        """Native YBR_FULL_422: two luma samples share one pair of chroma samples."""
        return self.photometric == "YBR_FULL_422" and self.samples == 3

    @property
    def encoded_bytes(self) -> int:
        """Bytes the pixel data value needs for every frame, before any padding."""
        pixels = self.rows * self.columns * self.frames
        if self.bits_allocated == 1:
            return (pixels + 7) // 8
        samples = 2 if self.ybr422 else self.samples
        return pixels * samples * self.bits_allocated // 8


def _swap_words(data: bytes | memoryview) -> bytes:
    """Swap the bytes of each 16-bit word: OW values are words, also when pixels are bytes."""
    import numpy as np

    words = np.frombuffer(data[: len(data) // 2 * 2], np.uint16).byteswap().tobytes()
    return words + bytes(data[len(data) // 2 * 2 :])


def to_array(
    value: bytes | memoryview, layout: PixelLayout, little_endian: bool, vr: str | None = "OW"
) -> np.ndarray:
    """The frames of a native pixel data value, shaped (frames, rows, columns[, samples])."""
    import numpy as np

    need = layout.encoded_bytes
    if len(value) < need:
        raise LayoutError(
            f"pixel data holds {len(value)} bytes, {need} are needed for "
            f"{layout.frames} frame(s) of {layout.rows}x{layout.columns}"
        )
    if not little_endian and vr == "OW" and layout.bits_allocated <= 8:
        value = _swap_words(value)
    data = memoryview(value)[:need]
    shape = (layout.frames, *layout.frame_shape)
    if layout.bits_allocated == 1:
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[: layout.frames * layout.rows * layout.columns].reshape(shape)
    dtype = layout.dtype.newbyteorder("<" if little_endian else ">")
    flat = np.frombuffer(data, dtype).astype(layout.dtype, copy=False)
    if layout.ybr422:
        pairs = flat.reshape(layout.frames, layout.rows, layout.columns // 2, 4)
        out = np.empty(shape, layout.dtype)
        out[..., 0] = pairs[..., [0, 1]].reshape(layout.frames, layout.rows, layout.columns)
        out[..., 1] = np.repeat(pairs[..., 2], 2, axis=-1)
        out[..., 2] = np.repeat(pairs[..., 3], 2, axis=-1)
        return out
    if layout.samples > 1 and layout.planar_configuration == 1:
        planes = flat.reshape(layout.frames, layout.samples, layout.rows, layout.columns)
        return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
    return flat.reshape(shape)


def to_bytes(
    frames: np.ndarray, layout: PixelLayout, little_endian: bool, vr: str | None = "OW"
) -> bytes:
    """The pixel data value bytes of `frames`: the inverse of `to_array` (without padding)."""
    import numpy as np

    if not little_endian and vr == "OW" and layout.bits_allocated <= 8:
        value = to_bytes(frames, layout, True, None)
        return _swap_words(value + b"\0" * (len(value) % 2))
    if layout.bits_allocated == 1:
        return np.packbits(frames.reshape(-1), bitorder="little").tobytes()
    dtype = layout.dtype.newbyteorder("<" if little_endian else ">")
    data = frames.astype(dtype, copy=False)
    if layout.ybr422:
        out = np.empty((*data.shape[:-2], data.shape[-2] // 2, 4), dtype)
        luma = data[..., 0].reshape(*data.shape[:-2], data.shape[-2] // 2, 2)
        out[..., 0:2] = luma
        out[..., 2] = data[..., 0::2, 1]
        out[..., 3] = data[..., 0::2, 2]
        return out.tobytes()
    if layout.samples > 1 and layout.planar_configuration == 1:
        return np.ascontiguousarray(data.transpose(0, 3, 1, 2)).tobytes()
    return data.tobytes()
