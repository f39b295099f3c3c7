"""The shared part of every pacs_engine Zarr v3 codec: one chunk is one frame (or tile)."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration

from pacs_engine.errors import PacsEngineError

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer
    from zarr.core.chunk_grids import ChunkGrid
    from zarr.core.dtype.wrapper import TBaseDType, TBaseScalar, ZDType


class CodecError(PacsEngineError, ValueError):
    """A frame that a codec cannot encode or decode (wrong shape, dtype, range or bitstream)."""


class NoDecoderError(CodecError):
    """No installed decoder reads these frames (not a damaged bitstream): names what is missing."""


def image_shape(chunk_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The image shape (rows, cols) or (rows, cols, samples) of a one-frame chunk shape."""
    # The archive lays pixels out as (frames, rows, cols[, samples]) with one frame per
    # chunk, so a 3-D chunk is (1, rows, cols) and a 4-D chunk is (1, rows, cols, samples).
    if len(chunk_shape) == 2:
        return chunk_shape
    if len(chunk_shape) in (3, 4) and chunk_shape[0] == 1:
        return chunk_shape[1:]
    raise CodecError(
        f"chunk shape {chunk_shape} is not one frame: expected (rows, cols), (1, rows, cols) "
        "or (1, rows, cols, samples)"
    )


def frame_of(chunk: np.ndarray) -> np.ndarray:
    """The chunk as one C-contiguous, native-endian image (rows, cols[, samples])."""
    frame = chunk.reshape(image_shape(chunk.shape))
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))


def value_range(frame: np.ndarray) -> tuple[int, int]:
    """The smallest and largest sample of an integer frame (0, 0 when it is empty)."""
    if frame.size == 0:
        return 0, 0
    return int(frame.min()), int(frame.max())


def unsigned_precision(low: int, high: int) -> int:
    """Bits needed to hold [low, high] as unsigned values (low must be >= 0)."""
    return max(high.bit_length(), 1)


def signed_precision(low: int, high: int) -> int:
    """Bits needed to hold [low, high] as two's complement values."""
    return max(high.bit_length(), (-low - 1).bit_length() if low < 0 else 0) + 1


def sign_extend(values: np.ndarray, bits: int, dtype: np.dtype) -> np.ndarray:
    """Reinterpret unsigned `bits`-bit two's complement samples as signed values of `dtype`."""
    wide = values.astype(np.int64)
    sign = np.int64(1) << (bits - 1)
    # (v ^ sign) - sign maps [0, 2**bits) onto [-2**(bits-1), 2**(bits-1)) without branches.
    return ((wide ^ sign) - sign).astype(dtype)


def cast_exact(decoded: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`decoded` as `dtype`, refusing any cast that would change a value."""
    if decoded.dtype == dtype:
        return decoded
    out = decoded.astype(dtype)
    if decoded.size and not np.array_equal(out, decoded):
        raise CodecError(f"decoded {decoded.dtype} values do not fit the array dtype {dtype}")
    return out


@dataclass(frozen=True)
class FrameCodec(ArrayBytesCodec):
    """Base of the frame codecs: JSON configuration, one-frame chunks, threads for the work."""

    codec_name: ClassVar[str]  # the zarr name: the entry point in pyproject.toml, on disk
    # What the codec is for, read by the registry (codecs/registry.py), the one list of codecs:
    short_name: ClassVar[str]  # the name users give (``codec="jpegls"``)
    archive_candidate: ClassVar[bool] = False  # codec="auto" tries it (`choose_codec`)
    candidate_colour: ClassVar[bool] = True  # ... on colour frames too (else grey only)
    rank: ClassVar[int] = 0  # order of preference among archive codecs: 0 first (the default)
    transfer_syntaxes: ClassVar[tuple[str, ...]] = ()  # pass-through codecs: the syntaxes served
    is_fixed_size = False  # zarr's BaseCodec declares it (as an instance attribute)
    # numpy dtype kinds/sizes the codec accepts, e.g. {"u1", "u2", "i2"}
    supported_dtypes: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        """The codec described by its array-metadata JSON."""
        _, configuration = parse_named_configuration(
            data, cls.codec_name, require_configuration=False
        )
        return cls(**(configuration or {}))

    def to_dict(self) -> dict[str, JSON]:
        """The codec's array-metadata JSON: its name and every configuration field."""
        configuration = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"name": self.codec_name, "configuration": configuration}

    def validate(
        self,
        *,
        shape: tuple[int, ...],
        dtype: ZDType[TBaseDType, TBaseScalar],
        chunk_grid: ChunkGrid,
    ) -> None:
        """Reject, when the array is created, a data type the codec cannot store losslessly."""
        native = dtype.to_native_dtype()
        if f"{native.kind}{native.itemsize}" not in self.supported_dtypes:
            supported = ", ".join(sorted(self.supported_dtypes))
            raise CodecError(f"{self.codec_name} cannot store {native}; supported: {supported}")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        """Encoded sizes depend on the pixels, so they cannot be computed in advance."""
        raise NotImplementedError

    @abstractmethod
    def encode_frame(self, frame: np.ndarray) -> bytes:
        """The encoded bytes of one image (rows, cols[, samples])."""

    @abstractmethod
    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image of the given shape and dtype decoded from `data`."""

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        frame = frame_of(chunk_array.as_numpy_array())
        return chunk_spec.prototype.buffer.from_bytes(self.encode_frame(frame))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        dtype = chunk_spec.dtype.to_native_dtype()
        frame = self.decode_frame(
            chunk_bytes.to_bytes(), image_shape(chunk_spec.shape), dtype.newbyteorder("=")
        )
        out = frame.astype(dtype, copy=False).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        # The imagecodecs/CharLS calls release the GIL, so threads give real parallelism.
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


def check_frame(codec: FrameCodec, frame: np.ndarray) -> None:
    """Raise CodecError unless the codec supports the frame's dtype and layout."""
    key = f"{frame.dtype.kind}{frame.dtype.itemsize}"
    if key not in codec.supported_dtypes:
        raise CodecError(f"{codec.codec_name} cannot encode {frame.dtype} frames")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        raise CodecError(f"{codec.codec_name}: {frame.shape[2]} samples per pixel")
    if frame.ndim not in (2, 3):
        raise CodecError(f"{codec.codec_name}: frame shape {frame.shape} is not an image")


def expect_shape(decoded: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`decoded` reshaped to `shape`, or CodecError when its size does not match."""
    if decoded.size != int(np.prod(shape)):
        raise CodecError(f"{name}: decoded {decoded.shape} does not fit the chunk {shape}")
    return decoded.reshape(shape)


def config_value(value: Any, allowed: tuple[Any, ...], name: str) -> Any:
    """`value` if it is one of `allowed`, else CodecError naming the setting."""
    if value not in allowed:
        raise CodecError(f"{name} must be one of {allowed}, not {value!r}")
    return value
