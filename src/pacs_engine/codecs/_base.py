"""The shared part of every pacs_engine codec, without zarr: one chunk is one frame (or tile)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from pacs_engine.errors import PacsEngineError

if TYPE_CHECKING:
    from typing import Self

    import numpy as np


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
    import numpy as np

    frame = chunk.reshape(image_shape(chunk.shape))
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))


def value_range(frame: np.ndarray) -> tuple[int, int]:
    """The smallest and largest sample of an integer frame (0, 0 when it is empty)."""
    if frame.size == 0:
        return 0, 0
    return int(frame.min()), int(frame.max())


def largest(frame: np.ndarray) -> int:
    """The largest sample of an integer frame (0 when it is empty): one pass, where the
    precision of unsigned samples needs no smallest."""
    return int(frame.max()) if frame.size else 0


def unsigned_precision(high: int) -> int:
    """Bits needed to hold [0, high] as unsigned values."""
    return max(high.bit_length(), 1)


def signed_precision(low: int, high: int) -> int:
    """Bits needed to hold [low, high] as two's complement values (a negative `high`
    needs no bit of its own: [-128, -128] is 8 bits, not 9)."""
    positive = high.bit_length() if high > 0 else 0
    return max(positive, (-low - 1).bit_length() if low < 0 else 0) + 1


def unused_bits(
    bits_stored: object, pixel_representation: object, dtype: np.dtype
) -> tuple[int, bool] | None:
    """(Bits Stored, signed) of frames of `dtype` whose bits above Bits Stored a DICOM reader
    corrects (pydicom's `pixel_array`: cleared, or set from a signed value's sign bit), else
    None (Bits Stored fills the integers; floating values)."""
    if dtype.kind not in "iu" or not isinstance(bits_stored, int):
        return None
    if not 0 < bits_stored < dtype.itemsize * 8:
        return None
    return bits_stored, pixel_representation == 1 and dtype.kind == "i"


def correct_unused_bits(frames: np.ndarray, bits: tuple[int, bool] | None) -> np.ndarray:
    """`frames` with the bits above `bits` = (Bits Stored, signed) cleared, or set from the
    sign bit of a signed value, as pydicom's `pixel_array` gives them (in place when the
    array is writeable); as they are for None."""
    import numpy as np

    if bits is None or not frames.size:
        return frames
    if not frames.flags.writeable:
        frames = frames.copy()
    stored, signed = bits
    if signed:
        shift = frames.dtype.itemsize * 8 - stored
        np.left_shift(frames, shift, out=frames)
        np.right_shift(frames, shift, out=frames)  # arithmetic: the sign bit fills them
    else:
        np.bitwise_and(frames, frames.dtype.type((1 << stored) - 1), out=frames)
    return frames


def sign_extend(values: np.ndarray, bits: int, dtype: np.dtype) -> np.ndarray:
    """Reinterpret unsigned `bits`-bit two's complement samples as signed values of `dtype`."""
    import numpy as np

    wide = values.astype(np.int64)
    sign = np.int64(1) << (bits - 1)
    # (v ^ sign) - sign maps [0, 2**bits) onto [-2**(bits-1), 2**(bits-1)) without branches.
    return ((wide ^ sign) - sign).astype(dtype)


def cast_exact(decoded: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`decoded` as `dtype`, refusing any cast that would change a value."""
    import numpy as np

    if decoded.dtype == dtype:
        return decoded
    out = decoded.astype(dtype)
    if decoded.size and not np.array_equal(out, decoded):
        raise CodecError(f"decoded {decoded.dtype} values do not fit the array dtype {dtype}")
    return out


@dataclass(frozen=True, eq=False)
class FrameCodec(ABC):
    """Base of the frame codecs (zarr-free): JSON configuration, one frame in, bytes out.

    A concrete codec is written once, as a frame coder (``JpegLsCoder``): what the ingest
    workers call, without importing zarr. Its zarr codec (``JpegLsCodec``, the class the
    ``zarr.codecs`` entry point names) is made from it on first use (`zarr_codecs`).
    """

    codec_name: ClassVar[str]  # the zarr name: the entry point in pyproject.toml, on disk
    # What the codec is for, read by the registry (codecs/registry.py), the one list of codecs:
    short_name: ClassVar[str]  # the name users give (``codec="jpegls"``)
    archive_candidate: ClassVar[bool] = False  # codec="auto" tries it (`choose_codec`)
    candidate_colour: ClassVar[bool] = True  # ... on colour frames too (else grey only)
    rank: ClassVar[int] = 0  # order of preference among archive codecs: 0 first (the default)
    transfer_syntaxes: ClassVar[tuple[str, ...]] = ()  # pass-through codecs: the syntaxes served
    # numpy dtype kinds/sizes the codec accepts, e.g. {"u1", "u2", "i2"}
    supported_dtypes: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The codec described by its array-metadata JSON."""
        if data.get("name") != cls.codec_name:
            raise CodecError(f"expected codec {cls.codec_name}, not {data.get('name')!r}")
        configuration = data.get("configuration") or {}
        if not isinstance(configuration, dict):
            raise CodecError(f"{cls.codec_name}: configuration is not an object")
        return cls(**configuration)

    def to_dict(self) -> dict[str, Any]:
        """The codec's array-metadata JSON: its name and every configuration field."""
        configuration = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"name": self.codec_name, "configuration": configuration}

    # A frame coder equals its zarr codec of the same configuration: an array's spec is
    # the same whether it was read with zarr or without.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameCodec):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def check_dtype(self, dtype: np.dtype) -> None:
        """Reject, when the array is created, a data type the codec cannot store losslessly."""
        if f"{dtype.kind}{dtype.itemsize}" not in self.supported_dtypes:
            supported = ", ".join(sorted(self.supported_dtypes))
            raise CodecError(f"{self.codec_name} cannot store {dtype}; supported: {supported}")

    @abstractmethod
    def encode_frame(self, frame: np.ndarray) -> bytes:
        """The encoded bytes of one image (rows, cols[, samples])."""

    @abstractmethod
    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image of the given shape and dtype decoded from `data`."""

    def decode_into(
        self,
        data: bytes | memoryview,
        shape: tuple[int, ...],
        out: np.ndarray,
        top: int = 0,
        left: int = 0,
    ) -> None:
        """Decode the image of `shape`; write its part at (top, left) of out's size into `out`."""
        frame = self.decode_frame(bytes(data), shape, out.dtype)
        out[...] = frame[top : top + out.shape[0], left : left + out.shape[1]]

    def decode_tiles(
        self,
        tiles: Sequence[bytes | memoryview],
        tile_shape: tuple[int, ...],
        across: int,
        out: np.ndarray,
        top: int,
        left: int,
    ) -> bool:
        """Decode the part at (top, left) of out's size of a frame stored as `tiles` (C
        order, `across` a row) into `out` in one call, when the codec can (True); False:
        the caller decodes the tiles one by one (`decode_into`)."""
        return False


def zarr_name(coder: type[FrameCodec]) -> str:
    """The name of a frame coder's zarr codec class: ``JpegLsCoder`` -> ``JpegLsCodec``."""
    return coder.__name__.removesuffix("Coder") + "Codec"


def coder_name(zarr_class_name: str) -> str:
    """The name of the frame coder a zarr codec class is made from (`zarr_name` inverted)."""
    return zarr_class_name.removesuffix("Codec") + "Coder"


def zarr_codecs(module: str, *coders: type[FrameCodec]) -> Callable[[str], type[FrameCodec]]:
    """The ``__getattr__`` of `module` (a codec module, or the package): the zarr codec class
    of each of `coders`, made on first use, so that importing the module (and encoding
    frames) imports no zarr."""
    by_name = {zarr_name(coder): coder for coder in coders}

    def __getattr__(name: str) -> type[FrameCodec]:
        coder = by_name.get(name)
        if coder is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        from pacs_engine.codecs._zarr import zarr_codec

        return zarr_codec(coder)

    return __getattr__


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
    import numpy as np

    if decoded.size != int(np.prod(shape)):
        raise CodecError(f"{name}: decoded {decoded.shape} does not fit the chunk {shape}")
    return decoded.reshape(shape)


def config_value(value: Any, allowed: tuple[Any, ...], name: str) -> Any:
    """`value` if it is one of `allowed`, else CodecError naming the setting."""
    if value not in allowed:
        raise CodecError(f"{name} must be one of {allowed}, not {value!r}")
    return value
