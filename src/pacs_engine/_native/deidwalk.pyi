"""Types of the byte-level de-identification's native walk (deidwalk.pyx)."""

from collections import Counter
from collections.abc import Callable

VRS: dict[bytes, str]
LONG_VRS: frozenset[str]

class Element:
    """One element where it lies, its items (a sequence's, else None) and action."""

    source: bytes
    tag: int
    vr: str
    start: int
    value: int
    end: int
    length: int
    items: list[Item] | None
    action: str

class Item:
    """A sequence item: whether of undefined length, and its elements."""

    undefined: bool
    elements: list[Element]
    dropped: int

class Walker:
    """Walks one buffer; items nested deeper than `max_depth` (the top data set is 0) are
    an `error`, raised as they are met: the walk recurses once per level."""

    def __init__(
        self,
        data: bytes,
        explicit: bool,
        fallback: type[Exception],
        error: type[Exception],
        actions: dict[tuple[int, str], str],
        decide: Callable[[int, str], str],
        implicit_vrs: dict[int, str],
        implicit_vr: Callable[[int], str],
        dropped: str | None,
        max_depth: int,
    ) -> None: ...
    def elements(
        self, pos: int, end: int, depth: int, delimited: bool
    ) -> tuple[list[Element], int]: ...

def splice(
    elements: list[Element],
    out: bytearray,
    split: int,
    top: bool,
    data: bytes,
    suffix: bytes,
    pending: list[tuple[int, bytes]],
    mark_vrs: dict[int, str],
    sequence_undefined: bytes,
    dropped: dict[str, str | None],
    served: dict[tuple[int, str], tuple[str, bytes]],
    mapped: dict[bytes, bytes],
    counts: Counter[str],
    element_value: Callable[[Element, str, list[Element], int], bytes | bool | None],
    depth: int,
    fallback: type[Exception],
    unlisted: str,
    overlay: str,
) -> int:
    """Write a data set's elements de-identified into `out`; the offset of element `split`."""
