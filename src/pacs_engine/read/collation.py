"""`collate`: the DataLoader batch torch's default collate makes, in one shared-memory block.

In a DataLoader worker, the default collate stacks every numeric key of the items into
a new shared-memory tensor, and each one reaches the main process as a file descriptor
of its own, handed over by a connection to the worker's resource sharer: on this machine
about 0.7 ms of CPU per tensor and batch, as much per frame item as reading it from a
read-optimised copy (docs/read.md). A dataset item carries five or six numeric keys
("pixels", "frame" and/or "offset", "spacing", "affine_lps", "affine_ras"); `collate`
stacks them all into one block, so a batch is one descriptor whatever the item carries.

A dataset's `__getitems__` (`FrameDataset`, `PatchDataset`) decodes a batch's items
straight into such a block (`batch_arrays`, laid out as `collate` lays out the batch),
each item's values views of it; `collate` finds them there and hands the block over as
the batch, without a copy.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["batch_arrays", "collate", "worker_info"]

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


#: Set in a DataLoader worker while `collate` gets items that are the rows of one
#: `batch_arrays` block: from then on the worker's blocks are made in shared memory,
#: which `collate` hands over as the batch. Cleared when it gets any other items (a
#: wrapper's transformed ones, say), which it copies into a shared block of its own; so
#: until then, and with any other collate (torch's default copies too), the blocks stay
#: in private memory: filling shared memory twice costs ~1 ms of CPU per 512x512 float32
#: item here (a new segment's pages each batch).
_COLLATING = threading.Event()

#: Where a key's (count, *shape) array lies in a batch's block: dtype, shape, start, end.
Layout = dict[str, tuple[np.dtype, tuple[int, ...], int, int]]


def _block_layout(
    count: int, specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]
) -> tuple[Layout, int]:
    """Where each key (dtype, item shape) of `count` items lies in one block, and its size.

    "pixels" first (the batch's pixels start the block, as a tensor of their own would),
    then the other keys by name, each on a cache line: a dataset and `collate` given the
    same keys lay them out alike, whatever the order of the items' keys.
    """
    layout: Layout = {}
    size = 0
    for key in sorted(specs, key=lambda k: (k != "pixels", k)):
        dtype, shape = np.dtype(specs[key][0]), (count, *specs[key][1])
        nbytes = dtype.itemsize * int(np.prod(shape))
        layout[key] = (dtype, shape, size, size + nbytes)
        size += -(-nbytes // _ALIGN) * _ALIGN
    return layout, size


def worker_info() -> Any:
    """torch's `get_worker_info()`: None outside a DataLoader worker (or without torch)."""
    if importlib.util.find_spec("torch") is None:  # pragma: no cover - torch is optional
        return None
    from torch.utils.data import get_worker_info

    return get_worker_info()


def _new_block(size: int, *, in_worker: bool) -> Any:
    """A new uint8 tensor of `size` bytes: in shared memory in a DataLoader worker (the
    caller's `worker_info()`), as the default collate's batches are (the main process maps
    it, no copy through the pipe)."""
    import torch

    if in_worker and size:
        shared = torch.UntypedStorage._new_shared(size)  # type: ignore[no-untyped-call]
        return torch.empty(0, dtype=torch.uint8).set_(shared)
    return torch.empty(size, dtype=torch.uint8)


def batch_arrays(
    count: int, specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]
) -> dict[str, np.ndarray]:
    """One new (count, *shape) array per key (dtype, item shape), all views of one block
    laid out as `collate` lays out a batch: in a DataLoader worker whose last `collate`
    got the rows of such a block, a shared-memory block that `collate` hands over as the
    batch when the items' values are its rows; else plain numpy memory (no torch needed).

    A new block per call: a batch handed to the main process is never written again.
    """
    layout, size = _block_layout(count, specs)
    shared = _COLLATING.is_set() and worker_info() is not None
    raw = _new_block(size, in_worker=True).numpy() if shared else np.empty(size, np.uint8)
    return {
        key: raw[start:end].view(dtype).reshape(shape)
        for key, (dtype, shape, start, end) in layout.items()
    }


def _laid_out(columns: dict[str, list[Any]], layout: Layout, size: int) -> np.ndarray | None:
    """The uint8 block `batch_arrays` made whose rows the items' values are (else None).

    Every packed key must be there: arrays as the consecutive rows of their key's part
    of the block (the same memory, in batch order), ints equal to the values written
    there. Anything else (items reordered, replaced, or from elsewhere) is None: `collate`
    then copies, as for any items.
    """
    first = next(
        (columns[key][0] for key in layout if isinstance(columns[key][0], np.ndarray)), None
    )
    raw = getattr(first, "base", None)
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.shape != (size,):
        return None
    address = raw.__array_interface__["data"][0]
    for key, (dtype, shape, start, end) in layout.items():
        values = columns[key]
        if not isinstance(values[0], np.ndarray):  # ints: their part must hold them already
            if raw[start:end].view(dtype).tolist() != values:
                return None
            continue
        step = (end - start) // shape[0]
        for k, value in enumerate(values):
            if (
                value.base is not raw
                or not value.flags.c_contiguous
                or value.__array_interface__["data"][0] != address + start + k * step
            ):
                return None
    return raw


def _shared_tensor(raw: np.ndarray | None) -> Any:
    """The shared-memory torch block whose memory `raw` is (else None): one to hand over."""
    import torch

    tensor = getattr(raw, "base", None)  # a `Tensor.numpy()` array's base is its tensor
    if not isinstance(tensor, torch.Tensor):
        return None
    return tensor if tensor.is_shared() else None  # type: ignore[no-untyped-call]


def collate(batch: Sequence[Any]) -> Any:
    """torch's `default_collate` of `batch`, with the numeric keys of dict items in one
    shared-memory block: equal tensors (dtype, shape, values), one descriptor a batch.

    Items a dataset's `__getitems__` decoded into one block (`batch_arrays`) give that
    block as it is, without a copy (in a worker, from the batch after the first such). Each key is
    a view of the whole block: one kept keeps all the batch's pixels alive (`torch.save`
    of it writes the block) and a `resize_` grows into the other keys, so `.clone()`
    what you keep past the batch.
    """
    import torch
    from torch.utils.data import default_collate

    in_worker = worker_info() is not None
    first = batch[0] if len(batch) else None
    if type(first) is not dict:  # other mappings keep their type in the default collate
        _COLLATING.clear()
        return default_collate(list(batch))
    columns = {key: [item[key] for item in batch] for key in first}
    specs = {}
    for key, values in columns.items():
        dtype = _stackable(values)
        if dtype is not None:
            specs[key] = (dtype, np.shape(values[0]))
    layout, size = _block_layout(len(batch), specs)
    raw = _laid_out(columns, layout, size) if size else None
    # The worker's next blocks in shared memory only while its items are their rows: a
    # block whose items were transformed would be filled, then copied, in shared memory.
    if in_worker and raw is not None:
        _COLLATING.set()
    else:
        _COLLATING.clear()
    block = _shared_tensor(raw)
    copy = block is None
    if copy:
        block = _new_block(size, in_worker=in_worker)
    out: dict[str, Any] = {}
    for key, values in columns.items():
        if key not in layout:
            out[key] = default_collate(values)
            continue
        dtype, shape, start, end = layout[key]
        tensor = block[start:end].view(_packed()[dtype.str]).view(shape)
        if copy and isinstance(values[0], np.ndarray):
            # torch.stack, as the default collate: numpy's stack into the block left the
            # worker's next items on fresh pages (~190 more page faults an item).
            torch.stack([torch.as_tensor(v) for v in values], out=tensor)
        elif copy:
            tensor.copy_(torch.tensor(values))
        out[key] = tensor
    return out
