"""Checks of collated batches shared by the collate and batched-fetch tests (torch tests only)."""

from __future__ import annotations

from typing import Any

import torch


def assert_same_batch(ours: Any, default: Any) -> None:
    """The same keys in the same order, tensors of equal dtype, shape and values (NaN equal
    to NaN), lists of tensors element by element, anything else equal."""
    assert type(ours) is type(default)
    if isinstance(default, dict):
        assert list(ours) == list(default)
        for key, expected in default.items():
            assert_same_batch(ours[key], expected)
    elif isinstance(default, list) and default and isinstance(default[0], torch.Tensor):
        assert len(ours) == len(default)
        for got, expected in zip(ours, default, strict=True):
            assert_same_batch(got, expected)
    elif isinstance(default, torch.Tensor):
        torch.testing.assert_close(ours, default, rtol=0, atol=0, equal_nan=True)
    else:
        assert ours == default


def storages(batch: dict[str, Any]) -> set[int]:
    """The addresses of the storages a batch's tensors are views of."""
    return {v.untyped_storage().data_ptr() for v in batch.values() if isinstance(v, torch.Tensor)}
