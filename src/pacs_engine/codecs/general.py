"""The general-purpose fallback: zarr's own BytesCodec + Blosc(zstd, bit-shuffle). Not rewritten."""

from __future__ import annotations

import numpy as np
from zarr.codecs import BloscCodec, BytesCodec

from pacs_engine.codecs.blosc import general_blosc


def general_purpose_codecs(dtype: np.dtype | str, clevel: int = 5) -> tuple[BytesCodec, BloscCodec]:
    """The (serializer, compressor) pair for frames no image codec can take (floats, >16 bits)."""
    return BytesCodec(), general_blosc(dtype, clevel).to_zarr()
