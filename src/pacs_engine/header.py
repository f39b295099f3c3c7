"""What the scanner returns: the header of one instance and the location of its pixel data."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from pacs_engine._native.scanner import Attributes


@cache
def _empty() -> np.ndarray:
    """An empty int64 array, read-only: the tables of every location that has none (numpy
    imported when first needed: the ingesting process, which locates no pixels, does not
    before its tidy step)."""
    import numpy as np

    empty = np.empty(0, dtype=np.int64)
    empty.flags.writeable = False
    return empty


#: The keyword of each pixel data tag the scanner locates.
PIXEL_TAG_KEYWORDS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}


@dataclass(slots=True, eq=False)  # not frozen: a frozen __init__ costs ~1 us per file
class PixelLocation:
    """Where the pixel data value sits in the file (in the inflated data set if deflated).

    For native data the value is `value_offset`..`value_offset + value_length`.
    For encapsulated data the value runs from the Basic Offset Table item to the
    end of the Sequence Delimitation Item; each fragment's bytes are
    `fragment_offsets[i]`..`+ fragment_lengths[i]` and belong to frame
    `fragment_frames[i]`.
    """

    tag: int
    vr: str | None
    element_offset: int
    value_offset: int
    value_length: int
    encapsulated: bool
    basic_offset_table_offset: int
    basic_offset_table: np.ndarray
    extended_offset_table: tuple[np.ndarray, ...] | None  # (offsets, lengths)
    fragment_offsets: np.ndarray
    fragment_lengths: np.ndarray
    fragment_frames: np.ndarray

    @classmethod
    def native(
        cls, tag: int, vr: str | None, element_offset: int, value_offset: int, value_length: int
    ) -> PixelLocation:
        """The location of native (not encapsulated) pixel data."""
        empty = _empty()
        return cls(
            tag,
            vr,
            element_offset,
            value_offset,
            value_length,
            False,
            -1,
            empty,
            None,
            empty,
            empty,
            empty,
        )

    @property
    def keyword(self) -> str:
        """PixelData, FloatPixelData or DoubleFloatPixelData."""
        return PIXEL_TAG_KEYWORDS[self.tag]

    @property
    def value_end(self) -> int:
        """First byte after the pixel data value."""
        return self.value_offset + self.value_length

    @property
    def number_of_fragments(self) -> int:
        """Fragments of encapsulated data; 0 for native data."""
        return len(self.fragment_offsets)


@dataclass(slots=True, eq=False)
class Header:
    """The header of one DICOM instance: requested attributes by keyword, and layout facts.

    `attributes` is a read-only mapping (`pacs_engine._native.scanner.Attributes`)
    whose values become Python objects when first read; `dict(attributes)` or
    `attributes.copy()` gives a plain dict.
    """

    path: str | None
    attributes: Attributes | dict[str, Any]  # a dict once unpickled
    transfer_syntax_uid: str | None
    has_preamble: bool
    has_file_meta: bool
    dataset_offset: int
    explicit_vr: bool
    little_endian: bool
    deflated: bool
    file_size: int
    pixel: PixelLocation | None
    data_size: int  # bytes the offsets count in: the file, or the inflated data of a deflated one

    def __getitem__(self, keyword: str) -> Any:
        return self.attributes[keyword]

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.attributes

    def get(self, keyword: str, default: Any = None) -> Any:
        """The attribute's value, or `default` when the file does not have it."""
        return self.attributes.get(keyword, default)

    def __getattr__(self, keyword: str) -> Any:
        if keyword == "attributes":  # not set yet (unpickling): no recursion through itself
            raise AttributeError(keyword)
        try:
            return self.attributes[keyword]
        except KeyError:
            raise AttributeError(keyword) from None

    @property
    def before_pixels(self) -> tuple[int, int]:
        """Byte range (start, end) of everything before the pixel data value."""
        end = self.pixel.value_offset if self.pixel else self.data_size
        return 0, end

    @property
    def after_pixels(self) -> tuple[int, int]:
        """Byte range (start, end) of everything after the pixel data value."""
        start = self.pixel.value_end if self.pixel else self.data_size
        return start, self.data_size


def fragment_frames(
    fragment_offsets: np.ndarray,
    first_item_offset: int,
    basic_offsets: np.ndarray,
    extended_offsets: np.ndarray | None,
    ends_with_eoi: np.ndarray,
    number_of_frames: int,
) -> np.ndarray:
    """Assign each fragment to a frame, with the rules pydicom's generate_frames uses.

    Offsets in both tables count from the first byte of the first fragment's
    item tag (`first_item_offset`).
    """
    import numpy as np

    count = len(fragment_offsets)
    if count == 0:
        return _empty()
    item_offsets = fragment_offsets - 8 - first_item_offset
    table = extended_offsets if extended_offsets is not None and len(extended_offsets) else None
    if table is None and len(basic_offsets):
        table = basic_offsets
    if table is not None:
        frames = np.searchsorted(table.astype(np.int64), item_offsets, side="right") - 1
        return np.maximum(frames, 0)
    if count == 1 or number_of_frames <= 1:
        return np.zeros(count, dtype=np.int64)
    if count <= number_of_frames:
        return np.arange(count, dtype=np.int64)
    # More fragments than frames and no table: a frame ends at a JPEG EOI marker.
    frames = np.zeros(count, dtype=np.int64)
    np.cumsum(ends_with_eoi[:-1], out=frames[1:])
    return frames
