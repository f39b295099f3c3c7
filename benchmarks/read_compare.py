"""Reading against pydicom and the codec alone: the read benchmark's comparisons.

`benchmarks/bench_read.py` runs these on the corpus; `pacs-engine read-bench
--compare` measures only the random-frames baseline (`pacs_engine.read.bench`).

- `frame_costs`, summed by `by_codec`: per frame, interleaved in one process, best
  of 3, `FrameDataset[i]` against the array's codec alone on the frame's chunk bytes
  and against pydicom on the original file, per modality and codec;
- `volume_comparison`: every multi-slice volume, `Series(archive, uid).volume()`
  against pydicom reading, sorting and stacking the series' files, best of 5 passes,
  the arrays checked equal;
- `best_of`: the fastest of some calls, for any benchmark.
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pacs_engine.archive.pixel_store import ArraySpec, decode_chunk
from pacs_engine.read.bench import pydicom_frame, render_baseline, sources


def frame_costs(dataset: Any, indices: Sequence[int], repeats: int = 3) -> list[dict[str, Any]]:
    """Per item, the best of `repeats` seconds of three reads interleaved in this process.

    "archive": `dataset[i]`; "codec": the array's codec alone on the frame's chunk
    bytes (read beforehand); "pydicom": `pydicom_frame` on the original file. With
    "modality" and "codec_name" (`ArraySpec.codec_name`).
    """
    from pacs_engine.read.datasets import _handle

    archive = _handle(dataset.archive_path).archive
    where = sources(dataset, indices)
    costs = []
    for i, (path, number) in zip(indices, where, strict=True):
        entry = dataset.table[i]
        array, frame = dataset.arrays[int(entry[1])], int(entry[2])
        spec = archive.pixels.spec(array)
        chunks = archive.pixels.read_chunks(array, frame, frame + 1)
        _, r, c, *_ = spec.chunk_shape
        tile = (r, c, *spec.frame_shape[2:])
        best = {"archive": np.inf, "codec": np.inf, "pydicom": np.inf}
        reads: list[tuple[str, Any, tuple]] = [
            ("archive", dataset.__getitem__, (i,)),
            ("codec", _decode_chunks, (spec, chunks, tile)),
            ("pydicom", pydicom_frame, (path, number)),
        ]
        for _ in range(repeats):
            for name, read, args in reads:
                started = time.perf_counter()
                read(*args)
                best[name] = min(best[name], time.perf_counter() - started)
        row = archive.index.get(dataset.instances[int(entry[3])]) or {}
        codec_name = spec.codec_name
        costs.append(
            {
                "modality": str(row.get("Modality") or ""),
                "codec_name": codec_name.removeprefix("pacs_engine."),
                "size": (spec.rows, spec.columns),
                **best,
            }
        )
    return costs


def _decode_chunks(spec: ArraySpec, chunks: list[bytes], shape: tuple[int, ...]) -> list:
    return [decode_chunk(spec, chunk, shape) for chunk in chunks]


def by_codec(costs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`frame_costs` summed per (modality, codec, frame size class), then over all.

    The size class is the frame's larger edge rounded up to a power of two (up to 64,
    128, 256, 512, 1024... pixels): frames of one class cost about the same to read.

    "vs_pydicom": pydicom's time / the archive's; "of_codec": the codec's time / the
    archive's (the share of the codec's own speed the archive reaches); "sizes": the
    smallest and largest frame (rows x columns, by pixels) of the group.
    """
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for cost in costs:
        edge = max(64, 1 << (max(cost["size"]) - 1).bit_length())
        groups.setdefault((cost["modality"], cost["codec_name"], edge), []).append(cost)
    rows = []
    for (modality, codec, _), items in [
        *sorted(groups.items()),
        (("all", "all", 0), list(costs)),
    ]:
        sums = {k: float(sum(c[k] for c in items)) for k in ("archive", "codec", "pydicom")}
        sizes = sorted({c["size"] for c in items}, key=lambda s: s[0] * s[1])
        rows.append(
            {
                "modality": modality,
                "codec": codec,
                "sizes": "-".join(f"{r}x{c}" for r, c in dict.fromkeys([sizes[0], sizes[-1]])),
                "frames": len(items),
                **{f"{k}_s": round(v, 6) for k, v in sums.items()},
                "vs_pydicom": sums["pydicom"] / sums["archive"],
                "of_codec": sums["codec"] / sums["archive"],
            }
        )
    return rows


def volume_comparison(
    archive_path: str | os.PathLike[str], threads: Sequence[int] = (1, 2), repeats: int = 5
) -> dict[str, Any]:
    """Every multi-slice volume of the archive: `Series(archive, uid).volume()` against pydicom.

    pydicom reads each file of the series (`dcmread` + `pixel_array`), sorts the
    slices along the normal and stacks them; its arrays must equal ours. Each side's
    time is the best of `repeats` passes over all the series. Returns {"series",
    "slices", "bytes", "pydicom_s", "archive_s": {threads: seconds}}.
    """
    from pacs_engine.read.datasets import VolumeDataset, _handle
    from pacs_engine.read.series import Series

    archive = _handle(os.fspath(archive_path)).archive
    volumes = VolumeDataset(archive_path, rescale=False, skip_invalid=True)
    series = [Series(archive, uid) for uid in volumes.series_uids]
    series = [s for s in series if len(s.volume(threads=1).sop_instance_uids) > 1]
    for s in series:
        for row in s.rows:
            if not os.path.isfile(str(row.get("source_path") or "")):
                raise ValueError(f"the original file of {row['SOPInstanceUID']} is not readable")
    uids = [s.series_uid for s in series]

    def load(count: int) -> list[np.ndarray]:
        return [Series(archive, uid).volume(threads=count).array for uid in uids]

    archive_s = {}
    for count in threads:
        archive_s[count], ours = best_of(functools.partial(load, count), repeats)
    pydicom_s, theirs = best_of(lambda: [_pydicom_volume(s.rows) for s in series], repeats)
    for s, a, b in zip(series, ours, theirs, strict=True):
        if a.dtype != b.dtype or not np.array_equal(a, b):
            raise AssertionError(f"series {s.series_uid}: the volume differs from pydicom's")
    return {
        "series": len(series),
        "slices": sum(len(a) for a in ours),
        "bytes": sum(a.nbytes for a in ours),
        "pydicom_s": pydicom_s,
        "archive_s": archive_s,
    }


def best_of(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The fastest of `repeats` calls of `run`, in seconds, and its (last) result."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    best, result = math.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def _pydicom_volume(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """The series' files read with pydicom, sorted along the slice normal and stacked."""
    import pydicom

    slices = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in rows:
            ds = pydicom.dcmread(row["source_path"])
            cosines = np.asarray(ds.ImageOrientationPatient, np.float64)
            normal = np.cross(cosines[:3], cosines[3:])
            position = float(normal @ np.asarray(ds.ImagePositionPatient, np.float64))
            slices.append((position, ds.pixel_array))
    slices.sort(key=lambda s: s[0])
    return np.stack([pixels for _, pixels in slices])


def render_comparison(report: dict[str, Any]) -> list[str]:
    """The baselines of a read benchmark report (random frames, per codec, volumes) as lines."""
    lines = render_baseline(report)
    if report.get("by_codec"):
        lines.append("  per frame, interleaved in one process, best of 3:")
        lines.append(
            f"  {'modality':<8} {'codec':<20} {'frame sizes':<17} {'frames':>6} {'archive ms':>10} "
            f"{'vs pydicom':>10} {'of codec':>8}"
        )
        for row in report["by_codec"]:
            lines.append(
                f"  {row['modality']:<8} {row['codec']:<20} {row['sizes']:<17} {row['frames']:>6} "
                f"{row['archive_s'] / row['frames'] * 1e3:>10.2f} "
                f"{row['vs_pydicom']:>9.1f}x {row['of_codec'] * 100:>7.0f}%"
            )
    volumes = report.get("volumes")
    if volumes:
        for count, seconds in volumes["archive_s"].items():
            lines.append(
                f"  volumes ({volumes['series']} series, {volumes['slices']} slices, equal to "
                f"pydicom's), {count} decode thread(s): archive {seconds:.2f} s, pydicom "
                f"{volumes['pydicom_s']:.2f} s = {volumes['pydicom_s'] / seconds:.1f}x"
            )
    return lines
