"""Rescaling to modality values: what `rescale=True` costs a FrameDataset, per codec.

Run from the repository root:

    .venv/bin/python -m pytest benchmarks/bench_rescale.py -q -s -p no:cacheprovider

Synthetic CT (`write_studies`: 2 series of 48 512x512 slices, with the synthesiser's
stored dtypes, slopes and intercepts) is archived twice, with JPEG-LS and uncompressed
(`raw`, the read-optimised case where the rescale is the largest share). In the same
run, best of 5 interleaved passes over every frame in one process, frames/s of
`FrameDataset[i]` with `rescale=False` (stored values), `rescale=True` (float32 HU,
one multiply-add in float32) and `rescale=True, dtype="int16"` (the exact integer
route: float64, rint, astype, as `Series.volume(rescale=True)` gives, and as every
`rescale=True` dataset did before). Then the rescale alone on a decoded
512x512 frame, float32 multiply-add against the float64/rint route.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pacs_engine import Archive
from pacs_engine.read import FrameDataset
from pacs_engine.read.volume import rescale, rescale_as
from pacs_engine.synth import write_studies

PASSES = 5


def _best_rates(count: int, runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Items per second of the fastest of PASSES runs each, the runs interleaved per pass
    (so that load from other processes weighs on all of them alike)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(PASSES):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: count / seconds for name, seconds in best.items()}


def _each(get: Callable[[int], object], count: int) -> None:
    """get(0) ... get(count - 1), each result dropped at once (as a training step would)."""
    for k in range(count):
        get(k)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rescale")
    files = write_studies(tmp / "synth", 1, 2, 48, rows=512, columns=512, seed=3, modalities=["CT"])
    out = {}
    for codec in ("jpegls", "raw"):
        with Archive.create(tmp / codec, codec=codec, transcode=True) as archive:
            archive.ingest(files, workers=0)
        out[codec] = tmp / codec
    return out


def test_rescale_rates(archives: dict[str, Path]) -> None:
    lines = ["", "FrameDataset[i], one process, frames/s (best of 5 interleaved passes):"]
    for codec, path in archives.items():
        datasets = {
            "rescale=False": FrameDataset(path),
            "rescale=True (float32)": FrameDataset(path, rescale=True),
            "rescale=True, dtype=int16": FrameDataset(path, rescale=True, dtype="int16"),
        }
        count = len(datasets["rescale=False"])
        rates = _best_rates(
            count, {n: lambda d=d: _each(d.__getitem__, len(d)) for n, d in datasets.items()}
        )
        raw = rates["rescale=False"]
        lines.append(
            f"  {codec:7s}" + "".join(f"  {n}: {r:7.0f} ({r / raw:4.0%})" for n, r in rates.items())
        )
        assert rates["rescale=True (float32)"] > 0
    frame = FrameDataset(archives["raw"])[0]["pixels"][None]
    rows = [{"SOPInstanceUID": "1", "RescaleSlope": 1.0, "RescaleIntercept": -1024.0}]
    alone = _best_rates(
        200,
        {
            "fast": lambda: _each(lambda _: rescale_as(frame, rows, np.float32), 200),
            "exact": lambda: _each(lambda _: rescale(frame, rows), 200),
        },
    )
    fast, exact = alone["fast"], alone["exact"]
    lines.append(
        f"rescale alone, 512x512 {frame.dtype}: float32 multiply-add {fast:.0f}/s, "
        f"float64+rint+astype {exact:.0f}/s ({fast / exact:.1f}x)"
    )
    print("\n".join(lines))
