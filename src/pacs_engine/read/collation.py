"""`collate`: the DataLoader batch torch's default collate makes, in one shared-memory block.

In a DataLoader worker, the default collate stacks every numeric key of the items into
a new shared-memory tensor, and each one reaches the main process as a file descriptor
of its own, handed over by a connection to the worker's resource sharer: on this machine
about 0.7 ms of CPU per tensor and batch, as much per frame item as reading it from a
read-optimised copy (docs/read.md). A dataset item carries five or six numeric keys
("pixels", "frame" and/or "offset", "spacing", "affine_lps", "affine_ras"); `collate`
stacks them all into one block, so a batch is one descriptor whatever the item carries.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["collate"]

#: The dtypes `collate` packs, named alike in numpy and torch: those torch holds with
#: the same bytes (the unsigned ones past uint8 since torch 2.3, as its default collate
#: makes them).
_PACKED_NAMES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "uint16",
    "uint32",
    "uint64",
)
_ALIGN = 64  # each key's part of the block starts on a cache line


@functools.cache
def _packed() -> dict[str, Any]:
    """torch's dtype of each numpy dtype (by its `str`) that `collate` packs."""
    import torch

    names = (name for name in _PACKED_NAMES if hasattr(torch, name))
    return {np.dtype(name).str: getattr(torch, name) for name in names}


def _stackable(values: list[Any]) -> np.dtype | None:
    """The dtype of these values when they stack as one packed array (else None).

    Arrays of one shape and one packed dtype, or Python ints (int64, as torch collates
    them); anything else goes to the default collate, with its own results and errors.
    """
    first = values[0]
    if isinstance(first, np.ndarray):
        if first.dtype.str not in _packed():
            return None
        same = all(
            isinstance(v, np.ndarray) and v.shape == first.shape and v.dtype == first.dtype
            for v in values
        )
        return first.dtype if same else None
    if all(type(v) is int for v in values):  # not bool: torch collates bools as bool
        return np.dtype(np.int64)
    return None


def collate(batch: Sequence[Any]) -> Any:
    """torch's `default_collate` of `batch`, with the numeric keys of dict items in one
    shared-memory block: equal tensors (dtype, shape, values), one descriptor a batch.

    Each key is a view of the whole block: one kept keeps all the batch's pixels alive
    (`torch.save` of it writes the block) and a `resize_` grows into the other keys, so
    `.clone()` what you keep past the batch.
    """
    import torch
    from torch.utils.data import default_collate, get_worker_info

    first = batch[0] if len(batch) else None
    if type(first) is not dict:  # other mappings keep their type in the default collate
        return default_collate(list(batch))
    columns = {key: [item[key] for item in batch] for key in first}
    # key -> torch dtype, shape, its bytes' start and end in the block
    packed: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
    size = 0
    # "pixels" first: the batch's pixels start the block, as a tensor of their own would.
    for key in sorted(columns, key=lambda k: k != "pixels"):
        values = columns[key]
        dtype = _stackable(values)
        if dtype is None:
            continue
        shape = (len(values), *np.shape(values[0]))
        nbytes = dtype.itemsize * int(np.prod(shape))
        packed[key] = (_packed()[dtype.str], shape, size, size + nbytes)
        size += -(-nbytes // _ALIGN) * _ALIGN
    if get_worker_info() is not None and size:  # shared memory, as the default collate's
        shared = torch.UntypedStorage._new_shared(size)  # type: ignore[no-untyped-call]
        block = torch.empty(0, dtype=torch.uint8).set_(shared)
    else:
        block = torch.empty(size, dtype=torch.uint8)
    out: dict[str, Any] = {}
    for key, values in columns.items():
        if key not in packed:
            out[key] = default_collate(values)
            continue
        kind, shape, start, end = packed[key]
        tensor = block[start:end].view(kind).view(shape)
        if isinstance(values[0], np.ndarray):
            # torch.stack, as the default collate: numpy's stack into the block left the
            # worker's next items on fresh pages (~190 more page faults an item).
            torch.stack([torch.as_tensor(v) for v in values], out=tensor)
        else:
            tensor.copy_(torch.tensor(values))
        out[key] = tensor
    return out
