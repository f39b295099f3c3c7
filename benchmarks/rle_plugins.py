"""RLE decode with and without pylibjpeg-rle: CPU per frame and the ingest's CPU.

Decode: every frame of the RLE files under the folders given, decoded by pydicom with its
own RLE plugin and with pylibjpeg-rle, alternating rounds in one process (the pixels
compared on every frame); median process CPU per frame of each. Ingest: `pacs-engine
ingest` of each folder (1 worker, a fresh archive) as installed and with pylibjpeg-rle
hidden (a dependency: `HIDE_PYLIBJPEG_RLE`, a sitecustomize on the command's PYTHONPATH),
alternating; medians of the report's seconds and of the summed stage CPU of its processes.

    PYTHONPATH=src python benchmarks/rle_plugins.py FOLDER...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import RLELossless

PLUGINS = ("pydicom", "pylibjpeg")

#: A sitecustomize.py: every process of the command (the CLI's, the forkserver and its
#: workers, which inherit PYTHONPATH) drops pylibjpeg-rle from pydicom's RLE decoder once
#: pydicom's decoders are imported (not before: that would add pydicom's import to each).
HIDE_PYLIBJPEG_RLE = """
from pacs_engine.lazy import when_imported

def _hide(decoders):
    decoders.RLELosslessDecoder._available.pop("pylibjpeg", None)

when_imported("pydicom.pixels.decoders", _hide)
"""


def rle_frames(folder: Path) -> list[tuple[bytes, dict[str, object]]]:
    """Every frame of the RLE files under `folder`, with pydicom's decoding options."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # not DICOM
            continue
        if ds.file_meta.get("TransferSyntaxUID") != RLELossless:
            continue
        options: dict[str, object] = {
            "rows": ds.Rows,
            "columns": ds.Columns,
            "samples_per_pixel": ds.SamplesPerPixel,
            "bits_allocated": ds.BitsAllocated,
            "bits_stored": ds.BitsStored,
            "pixel_representation": ds.PixelRepresentation,
            "photometric_interpretation": ds.PhotometricInterpretation,
            "number_of_frames": 1,
        }
        if ds.SamplesPerPixel > 1:
            options["planar_configuration"] = ds.PlanarConfiguration
        count = int(ds.get("NumberOfFrames", 1))
        out += [(f, options) for f in generate_frames(ds.PixelData, number_of_frames=count)]
    return out


def decode_cpu(frames: list[tuple[bytes, dict[str, object]]], rounds: int) -> dict[str, float]:
    """Median CPU ms per frame of each plugin, alternating rounds; pixels must be equal."""
    decoder = get_decoder(RLELossless)
    encoded = [(encapsulate([f]), o) for f, o in frames]
    first = {
        p: [decoder.as_array(e, decoding_plugin=p, **o)[0] for e, o in encoded] for p in PLUGINS
    }
    assert all(np.array_equal(a, b) for a, b in zip(*first.values(), strict=True))
    times: dict[str, list[float]] = {p: [] for p in PLUGINS}
    for _ in range(rounds):
        for plugin in PLUGINS:
            start = time.process_time()
            for data, options in encoded:
                decoder.as_array(data, decoding_plugin=plugin, **options)
            times[plugin].append((time.process_time() - start) * 1000 / len(encoded))
    return {p: statistics.median(t) for p, t in times.items()}


def ingest_cpu(folder: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (report seconds, stage CPU seconds of all processes) without / with."""
    hiding = Path(tempfile.mkdtemp(dir="/tmp"))
    (hiding / "sitecustomize.py").write_text(HIDE_PYLIBJPEG_RLE)
    base = os.environ.get("PYTHONPATH", "")
    paths = {"pydicom": f"{hiding}:{base}", "pylibjpeg": base}
    times: dict[str, list[tuple[float, float]]] = {p: [] for p in PLUGINS}
    for _ in range(rounds):
        for plugin, path in paths.items():
            archive = Path(tempfile.mkdtemp(dir="/tmp"))
            done = subprocess.run(
                [sys.executable, "-m", "pacs_engine.cli", "ingest", str(folder), "--archive",
                 str(archive / "a"), "--workers", "1", "--json", "--no-progress"],
                capture_output=True, text=True, check=True, timeout=600,
                env=os.environ | {"PYTHONPATH": path},
            )  # fmt: skip
            shutil.rmtree(archive)
            report = json.loads(done.stdout)
            assert report["quarantined"] == 0, report["quarantine_reasons"]
            stages = [s for each in report["stage_seconds"].values() for s in each.values()]
            cpu = sum(s["cpu"] for s in stages)
            times[plugin].append((report["seconds"], cpu))
    shutil.rmtree(hiding)
    medians = {}
    for plugin, measured in times.items():
        seconds, cpu = zip(*measured, strict=True)
        medians[plugin] = (statistics.median(seconds), statistics.median(cpu))
    return medians


def main() -> None:
    """Print both measurements for each folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if "pylibjpeg" not in get_decoder(RLELossless).available_plugins:
        sys.exit("pylibjpeg-rle is not installed: the decode compares both plugins")
    for folder in args.folders:
        frames = rle_frames(folder)
        cpu = decode_cpu(frames, args.rounds)
        each = ", ".join(f"{p} {ms:.3f}" for p, ms in cpu.items())
        ratio = cpu["pydicom"] / cpu["pylibjpeg"]
        print(f"{folder}: {len(frames)} RLE frames, CPU ms per frame {each}, ratio {ratio:.2f}")
        ingest = ingest_cpu(folder, args.rounds)
        each = ", ".join(f"{p} {s:.2f} s / {c:.2f} s CPU" for p, (s, c) in ingest.items())
        print(f"{folder}: ingest, 1 worker, report seconds / stage CPU: {each}")


if __name__ == "__main__":
    main()
