"""Blosc as the archive configures it, without zarr: zarr's ``blosc`` codec JSON, the
numcodecs calls zarr makes with it (numcodecs imported when a chunk is compressed), and
decompression by imagecodecs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacs_engine.codecs._base import CodecError

if TYPE_CHECKING:
    import numpy as np
    from zarr.codecs import BloscCodec

#: A Blosc frame's header: version, codec version, flags, type size, then its bytes
#: uncompressed, its block size and its own length (c-blosc's blosc.h).
BLOSC_HEADER = struct.Struct("<BBBBIII")
#: zarr's names of Blosc's shuffles, by numcodecs' numbers (numcodecs.Blosc.NOSHUFFLE...).
SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True, slots=True)
class Blosc:
    """One Blosc compressor of an array's chunks: zarr's BloscCodec settings, as on disk."""

    cname: str
    clevel: int
    shuffle: str
    typesize: int
    blocksize: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Blosc:
        """The compressor of zarr's ``{"name": "blosc", "configuration": {...}}`` JSON."""
        if data.get("name") != "blosc":
            raise ValueError(f"only Blosc compresses archive chunks, not {data.get('name')!r}")
        config = data["configuration"]
        blosc = cls(
            str(config["cname"]),
            int(config["clevel"]),
            str(config["shuffle"]),
            int(config["typesize"]),
            int(config.get("blocksize", 0)),
        )
        if blosc.shuffle not in SHUFFLES:
            raise ValueError(f"unknown Blosc shuffle {blosc.shuffle!r}")
        return blosc

    def to_dict(self) -> dict[str, Any]:
        """zarr's JSON of this compressor, keys in zarr's order."""
        configuration = {
            "typesize": self.typesize,
            "cname": self.cname,
            "clevel": self.clevel,
            "shuffle": self.shuffle,
            "blocksize": self.blocksize,
        }
        return {"name": "blosc", "configuration": configuration}

    def to_zarr(self) -> BloscCodec:
        """zarr's BloscCodec of these settings (imports zarr)."""
        from zarr.codecs import BloscCodec

        return BloscCodec.from_dict(self.to_dict())

    def encode(self, data: bytes) -> bytes:
        """Serialized chunk bytes compressed as zarr's BloscCodec compresses them."""
        import numcodecs
        import numpy as np

        # numcodecs takes Blosc's type size from the buffer's items, as zarr passes them.
        items = np.frombuffer(data, f"u{self.typesize}") if self.typesize in (2, 4, 8) else data
        coder = numcodecs.Blosc(self.cname, self.clevel, SHUFFLES[self.shuffle], self.blocksize)
        return bytes(coder.encode(items))


def _frame_header(data: bytes | memoryview) -> tuple[int, ...]:
    """A Blosc frame's header (BLOSC_HEADER's fields); CodecError unless it records the
    frame's own length."""
    # c-blosc decodes a cut frame without an error, into bytes it never wrote (so does
    # numcodecs): the length its header records is checked first.
    header = BLOSC_HEADER.unpack_from(data) if len(data) >= BLOSC_HEADER.size else None
    if header is None or header[-1] != len(data):
        raise CodecError(f"a damaged Blosc frame: {len(data)} bytes, not what its header says")
    return header


def blosc_decompress(data: bytes | memoryview) -> bytes:
    """A Blosc frame's bytes: it carries its own shuffle and type size; CodecError for a
    damaged frame."""
    import imagecodecs

    _frame_header(data)
    # imagecodecs' c-blosc on this thread: the same bytes as numcodecs' decompress (tested),
    # a quarter of its CPU on a 512x512 frame (numcodecs hands each call to Blosc's
    # threads), and no numcodecs import (~0.07 s) for a process that only reads.
    try:
        # imagecodecs reads any buffer; its stubs name bytes, bytearray and mmap only.
        return bytes(imagecodecs.blosc_decode(data, numthreads=1))  # type: ignore[arg-type]
    except (imagecodecs.BloscError, SystemError) as error:  # SystemError: a huge size
        raise CodecError(f"a damaged Blosc frame: {error}") from None


def blosc_decompress_into(data: bytes | memoryview, out: np.ndarray) -> None:
    """A Blosc frame's bytes written into `out` (C-contiguous, writeable), which must be
    their size: no intermediate bytes object (CodecError for a damaged frame or another
    size, ValueError for another `out`)."""
    import imagecodecs
    import numpy as np

    # c-blosc writes into any buffer, read-only too, and reshape copies a non-contiguous
    # array: the frame would go into the copy, leaving `out` as it was.
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("a Blosc frame decodes into a C-contiguous writeable array only")
    # c-blosc does not check the size against a larger buffer (it fills a part of it).
    header = _frame_header(data)
    if header[4] != out.nbytes:
        raise CodecError(f"a Blosc frame of {header[4]} bytes, not the {out.nbytes} of its chunk")
    try:
        # imagecodecs writes into any buffer; its stubs name bytes, bytearray and mmap only.
        imagecodecs.blosc_decode(data, numthreads=1, out=out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    except (imagecodecs.BloscError, SystemError) as error:
        raise CodecError(f"a damaged Blosc frame: {error}") from None


def general_blosc(dtype: np.dtype | str, clevel: int = 5) -> Blosc:
    """The compressor for frames no image codec can take (floats, >16 bits): zstd, bit-shuffle."""
    import numpy as np

    # Bit-shuffle groups the equal high bits of neighbouring pixels, which zstd then removes.
    return Blosc("zstd", clevel, "bitshuffle", np.dtype(dtype).itemsize)
