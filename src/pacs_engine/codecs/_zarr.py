"""The zarr side of the frame codecs: each frame coder wrapped as a zarr ArrayBytesCodec.

Imported only when zarr reads or creates an array (the ``zarr.codecs`` entry points name
these classes); the ingest workers encode with the frame coders and never import it.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from zarr.abc.codec import ArrayBytesCodec

from pacs_engine.codecs._base import FrameCodec, frame_of, image_shape, zarr_name

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer
    from zarr.core.chunk_grids import ChunkGrid
    from zarr.core.dtype.wrapper import TBaseDType, TBaseScalar, ZDType


class ZarrFrameCodec(ArrayBytesCodec):
    """zarr's codec interface over a frame coder's encode_frame / decode_frame."""

    is_fixed_size = False  # zarr's BaseCodec declares it (as an instance attribute)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that is not also a frame coder (`zarr_codec` makes them)."""
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, FrameCodec):
            raise TypeError(f"{cls.__name__} is not made from a frame coder")

    def validate(
        self,
        *,
        shape: tuple[int, ...],
        dtype: ZDType[TBaseDType, TBaseScalar],
        chunk_grid: ChunkGrid,
    ) -> None:
        """Reject, when the array is created, a data type the codec cannot store losslessly."""
        # Every subclass is a frame coder (checked once, in __init_subclass__): cast, not checked.
        cast(FrameCodec, self).check_dtype(np.dtype(dtype.to_native_dtype()).newbyteorder("="))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        """Encoded sizes depend on the pixels, so they cannot be computed in advance."""
        raise NotImplementedError

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        frame = frame_of(chunk_array.as_numpy_array())
        return chunk_spec.prototype.buffer.from_bytes(cast(FrameCodec, self).encode_frame(frame))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        dtype = chunk_spec.dtype.to_native_dtype()
        frame = cast(FrameCodec, self).decode_frame(
            chunk_bytes.to_bytes(), image_shape(chunk_spec.shape), dtype.newbyteorder("=")
        )
        out = frame.astype(dtype, copy=False).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        # The imagecodecs/CharLS calls release the GIL, so threads give real parallelism.
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


@cache
def zarr_codec(coder: type[FrameCodec]) -> type[FrameCodec]:
    """The zarr codec class of a frame coder: the coder first (its configuration, JSON and
    frames), zarr's interface after; one class per coder, named as the entry point says."""
    if issubclass(coder, ZarrFrameCodec):  # a zarr codec already
        return coder
    name = zarr_name(coder)
    namespace = {"__module__": coder.__module__, "__qualname__": name, "__doc__": coder.__doc__}
    return type(name, (coder, ZarrFrameCodec), namespace)
