"""What a DataLoader's default collate costs, and what a dataset can change about it.

Run from the repository root:

    .venv/bin/python -m pytest benchmarks/bench_collate.py -q -s -p no:cacheprovider

No archive: items are fresh float32 arrays of 16 x 512x512 frames (16 MiB a batch).
(a) In a forked DataLoader worker (2 workers, batch 16), per batch, median ms: the
parts of `default_collate` (creating the shared-memory segment the batch goes into,
`torch.stack` into it, the same stack again into the now touched pages), a stack
into fresh private memory (`torch.empty`), and `np.stack` of the same items.
(b) Items/s of a shuffled 2-worker DataLoader over items that cost nothing, with what
a dataset controls: numpy items (the datasets' form), torch tensor items, the
`file_system` sharing strategy set in `worker_init_fn`, int16 items (half the bytes),
and `np.stack` as the collate (the batch then crosses to the main process pickled).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from torch.utils.data import DataLoader, Dataset  # noqa: E402

BATCH = 16
FRAME = (512, 512)
BATCHES = 30
ROUNDS = 3


class Fresh(Dataset):
    """A new array (or tensor) of one frame per item."""

    def __init__(self, dtype: str = "float32", tensor: bool = False) -> None:
        self.dtype, self.tensor = dtype, tensor

    def __len__(self) -> int:
        return BATCH * BATCHES

    def __getitem__(self, i: int) -> Any:
        frame = np.full(FRAME, i, self.dtype)
        return torch.from_numpy(frame) if self.tensor else frame


def collate_parts(batch: list[np.ndarray]) -> Any:
    """ms of: new shared segment, stack into it, stack again, stack into torch.empty, np.stack."""
    items = [torch.as_tensor(b) for b in batch]
    numel = BATCH * items[0].numel()
    t0 = time.perf_counter()
    shared = items[0].new(items[0]._typed_storage()._new_shared(numel, device="cpu"))
    out = shared.resize_(BATCH, *FRAME)
    t1 = time.perf_counter()
    torch.stack(items, out=out)
    t2 = time.perf_counter()
    torch.stack(items, out=out)
    t3 = time.perf_counter()
    torch.stack(items, out=torch.empty(BATCH, *FRAME))
    t4 = time.perf_counter()
    np.stack(batch)
    t5 = time.perf_counter()
    return torch.tensor([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]) * 1000


def np_collate(batch: list[np.ndarray]) -> np.ndarray:
    return np.stack(batch)


def file_system(_: int) -> None:
    torch.multiprocessing.set_sharing_strategy("file_system")


def rate(dataset: Dataset, **options: Any) -> float:
    """Items/s after 2 untimed batches (the batches are not read: as bench_training)."""
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        multiprocessing_context="fork",
        **options,
    )
    items, started = 0, 0.0
    for k, batch in enumerate(loader):
        if k == 2:
            started = time.monotonic()
        if k >= 2:
            items += len(batch)
    return items / (time.monotonic() - started)


def test_collate_costs() -> None:
    loader = DataLoader(
        Fresh(),
        batch_size=BATCH,
        num_workers=2,
        collate_fn=collate_parts,
        multiprocessing_context="fork",
    )
    parts = np.median(np.stack([ms.numpy() for ms in loader][2:]), axis=0)
    names = [
        "new shared-memory segment",
        "torch.stack into it",
        "torch.stack into it again",
        "torch.stack into torch.empty",
        "np.stack",
    ]
    lines = ["", f"in a DataLoader worker, {BATCH} x {FRAME} float32, median ms per batch:"]
    lines += [f"  {name:<32} {ms:>7.1f}" for name, ms in zip(names, parts, strict=True)]
    variants = {
        "numpy items (default collate)": (Fresh(), {}),
        "torch tensor items": (Fresh(tensor=True), {}),
        "file_system sharing strategy": (Fresh(), {"worker_init_fn": file_system}),
        "int16 items": (Fresh("int16"), {}),
        "np.stack collate (pickled)": (Fresh(), {"collate_fn": np_collate}),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):  # interleaved rounds: the machine's load moves
        for name, (dataset, options) in variants.items():
            rates[name].append(rate(dataset, **options))
    lines.append(f"DataLoader over items that cost nothing, items/s ({ROUNDS} rounds):")
    lines += [
        f"  {name:<32} " + " ".join(f"{r:>8,.0f}" for r in values) for name, values in rates.items()
    ]
    print("\n".join(lines))
    assert all(r > 0 for values in rates.values() for r in values)
