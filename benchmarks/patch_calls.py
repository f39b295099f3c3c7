"""Noise-free cost of reading 3-D patches: calls per patch (cProfile) and traced peak memory.

    PYTHONPATH=<tree>/src .venv/bin/python -m benchmarks.patch_calls

One synthetic CT series (40 slices of 256x256) ingested as an archive of record
(JPEG-LS) and copied to lz4, lz4 with tiles of 32 and raw; per store and with and
without rescaling, 20 patches of 16x96x96 (seed 1): the calls per patch of the read
path's functions and of numpy's allocating ones (`empty`, `stack`, `concatenate`,
`astype`), and the median peak of traced memory during one patch. The counts repeat
exactly, so two source trees compare on a loaded machine (run it once with each).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import statistics
import tempfile
import tracemalloc
from pathlib import Path

from pacs_engine import Archive
from pacs_engine.cli import main as cli
from pacs_engine.read import PatchDataset
from pacs_engine.synth import write_studies

PATCH = (16, 96, 96)
PATCHES = 20
COUNTED = (
    "read_frames",
    "read_stack",
    "_read_frames",
    "decode_chunk",
    "stack",
    "empty",
    "concatenate",
    "astype",
)


def stores(root: Path) -> dict[str, Path]:
    """The archive of record and its lz4, tiled lz4 and raw copies."""
    files = write_studies(root / "synth", 1, 1, 40, rows=256, columns=256, seed=3)
    with Archive.create(root / "record", codec="jpegls") as archive:
        archive.ingest(files, workers=0)
    made = {"record": root / "record"}
    for name, codec, extra in (("lz4", "lz4", []), ("lz4-tile32", "lz4", ["--tile", "32"])):
        made[name] = root / name
        argv = ["ingest", str(made["record"]), "--archive", str(made[name]), "--codec", codec]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli([*argv, "--transcode", "--workers", "0", "--no-progress", *extra]) == 0
    made["raw"] = root / "raw"
    argv = ["ingest", str(made["record"]), "--archive", str(made["raw"]), "--codec", "raw"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli([*argv, "--transcode", "--workers", "0", "--no-progress"]) == 0
    return made


def calls(dataset: PatchDataset) -> tuple[float, dict[str, float]]:
    """All calls per patch, and those of the COUNTED functions by name."""
    profile = cProfile.Profile()
    profile.enable()
    for k in range(PATCHES):
        dataset[k]
    profile.disable()
    total, counted = 0, dict.fromkeys(COUNTED, 0)
    for (_, _, function), (_, ncalls, *_) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        total += ncalls
        for name in COUNTED:
            # Python functions by name; numpy's as "<built-in method numpy.empty>" and the like.
            if function == name or f"numpy.{name}" in function or f"'{name}'" in function:
                counted[name] += ncalls
    return total / PATCHES, {k: v / PATCHES for k, v in counted.items() if v}


def peak(dataset: PatchDataset) -> float:
    """The median peak of traced memory above the start of one patch's read, in KiB."""
    peaks = []
    tracemalloc.start()
    try:
        for k in range(PATCHES):
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            item = dataset[k]
            peaks.append(tracemalloc.get_traced_memory()[1] - start)
            del item
    finally:
        tracemalloc.stop()
    return statistics.median(peaks) / 1024


def main() -> None:
    """Print one line per store and rescale setting."""
    with tempfile.TemporaryDirectory(prefix="patch_calls") as tmp:
        for name, path in stores(Path(tmp)).items():
            for rescale in (False, True):
                dataset = PatchDataset(path, PATCH, samples=PATCHES, seed=1, rescale=rescale)
                dataset[0]  # opens the archive and reads the arrays' metadata
                total, counted = calls(dataset)
                named = ", ".join(f"{k} {v:g}" for k, v in sorted(counted.items()))
                print(
                    f"{name:11} rescale={rescale!s:5} per patch: {total:7.1f} calls ({named}); "
                    f"peak traced {peak(dataset):.0f} KiB"
                )


if __name__ == "__main__":
    main()
