"""Blosc as the archive configures it, without zarr: zarr's ``blosc`` codec JSON, and the
numcodecs calls zarr makes with it (numcodecs imported when a chunk is compressed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from zarr.codecs import BloscCodec

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

        # numcodecs takes Blosc's type size from the buffer's items, as zarr passes them.
        items = np.frombuffer(data, f"u{self.typesize}") if self.typesize in (2, 4, 8) else data
        coder = numcodecs.Blosc(self.cname, self.clevel, SHUFFLES[self.shuffle], self.blocksize)
        return bytes(coder.encode(items))


def blosc_decompress(data: bytes | memoryview) -> bytes:
    """A Blosc frame's bytes: it carries its own shuffle and type size."""
    import numcodecs.blosc

    return bytes(numcodecs.blosc.decompress(data))


def general_blosc(dtype: np.dtype | str, clevel: int = 5) -> Blosc:
    """The compressor for frames no image codec can take (floats, >16 bits): zstd, bit-shuffle."""
    # Bit-shuffle groups the equal high bits of neighbouring pixels, which zstd then removes.
    return Blosc("zstd", clevel, "bitshuffle", np.dtype(dtype).itemsize)
