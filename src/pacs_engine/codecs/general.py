"""The general-purpose fallback: zarr's own BytesCodec + Blosc(zstd, bit-shuffle). Not rewritten."""

from __future__ import annotations

import numpy as np
from zarr.codecs import BloscCodec, BytesCodec


def general_purpose_codecs(dtype: np.dtype | str, clevel: int = 5) -> tuple[BytesCodec, BloscCodec]:
    """The (serializer, compressor) pair for frames no image codec can take (floats, >16 bits)."""
    itemsize = np.dtype(dtype).itemsize
    # Bit-shuffle groups the equal high bits of neighbouring pixels, which zstd then removes.
    return BytesCodec(), BloscCodec(
        cname="zstd", clevel=clevel, shuffle="bitshuffle", typesize=itemsize
    )
