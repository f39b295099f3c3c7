"""Peak RSS of an ingest of N instances in ONE series: main process and workers (issue 11, 14).

    PACS_ENGINE_BENCH_SERIES=100000 .venv/bin/python -m pytest \
        benchmarks/bench_ingest_series.py -q -s -p no:cacheprovider

PACS_ENGINE_BENCH_SERIES picks the sizes (default "2000", so that `pytest benchmarks/`
stays quick; "10000,100000" for the figures in docs/ingest.md). Each size is one series
of 8 x 8 MR slices, written once under /tmp/pacs-series-N (from one pydicom file, its
UIDs, Instance Number and first pixel patched per copy) and reused; the ingest is
`pacs-engine ingest --workers 2` into a new archive. Printed per size: wall seconds,
the main process's exact peak RSS (its own `ru_maxrss`, taken as it exits, which counts
the index pages it mapped), its own memory without them (RssAnon, polled every 50 ms),
and the largest worker's peak RSS (VmHWM of every process under it, polled).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

SIZES = [int(n) for n in os.environ.get("PACS_ENGINE_BENCH_SERIES", "2000").split(",")]
PER_FOLDER = 1000
POLL_S = 0.05
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
SERIES_UID = f"{UID_ROOT}.1"
RESULTS: dict[int, dict[str, float]] = {}

# Runs the CLI in this interpreter and prints its own peak RSS once it returns.
_MAIN = (
    "import json, resource, sys\n"
    "from pacs_engine.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(json.dumps({'main_kib': peak}), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _sop_uid(number: int) -> str:
    """A SOP Instance UID of fixed length, so that a copy is the template with bytes changed."""
    return f"{UID_ROOT}.2.{10**9 + number}"


def _template() -> bytes:
    """One 8 x 8 MR file of the series, instance 0."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = _sop_uid(0)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = _sop_uid(0)
    ds.StudyInstanceUID = f"{UID_ROOT}.3"
    ds.SeriesInstanceUID = SERIES_UID
    ds.PatientID = "SERIES-BENCH"
    ds.Modality = "MR"
    ds.InstanceNumber = 10**8  # fixed width (9 digits and a pad): patched per copy
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype="<u2").tobytes()
    path = Path(f"/tmp/pacs-series-template-{os.getpid()}.dcm")
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    return data


def series_files(count: int) -> Path:
    """/tmp/pacs-series-N: `count` instances of one series (written once, then reused)."""
    folder = Path(f"/tmp/pacs-series-{count}")
    if (folder / "complete").exists():
        return folder
    template = bytearray(_template())
    uid = _sop_uid(0).encode()
    uid_at = [m.start() for m in re.finditer(re.escape(uid), template)]
    number_at = template.index(b"\x20\x00\x13\x00IS\x0a\x00") + 8  # (0020,0013), 10 bytes
    pixel_at = len(template) - 128  # the first pixel: Pixel Data is the last element
    assert len(uid_at) == 2, "the SOP Instance UID is in the file meta and the data set"
    for number in range(count):
        for at in uid_at:
            template[at : at + len(uid)] = _sop_uid(number).encode()
        template[number_at : number_at + 9] = str(10**8 + number).encode()
        template[pixel_at : pixel_at + 2] = (number % 65536).to_bytes(2, "little")
        sub = folder / f"{number // PER_FOLDER:05d}"
        if number % PER_FOLDER == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{number:09d}.dcm").write_bytes(template)
    (folder / "complete").touch()
    return folder


def _status_kib(pid: int, field: str) -> int:
    """A field of the process's /proc status, in KiB (VmHWM: its peak RSS so far); 0 once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _descendants(pid: int) -> list[int]:
    """Every process under `pid` (forkserver and its workers)."""
    found, todo = [], [pid]
    while todo:
        try:
            for task in Path(f"/proc/{todo.pop()}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                todo += children
        except OSError:
            continue
    return found


@pytest.mark.parametrize("count", SIZES, ids=lambda n: f"{n}-instances")
def test_one_series_peak_rss(count: int, tmp_path: Path) -> None:
    source = series_files(count)
    archive = tmp_path / "archive"
    command = [sys.executable, "-c", _MAIN, "ingest", str(source), "--archive", str(archive)]
    command += ["--workers", "2", "--json", "--no-progress"]
    workers: dict[int, int] = {}
    heap_kib = 0  # the main process's own memory (RssAnon), without the index's mapped pages
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def poll() -> None:
        nonlocal heap_kib
        while not done.wait(POLL_S):
            heap_kib = max(heap_kib, _status_kib(proc.pid, "RssAnon"))
            for pid in _descendants(proc.pid):
                workers[pid] = max(workers.get(pid, 0), _status_kib(pid, "VmHWM"))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        stdout, stderr = proc.communicate(timeout=3600)
    finally:
        done.set()
        poller.join()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, stderr[-2000:]
    report = json.loads(stdout)
    assert report["archived"] == count
    main_kib = json.loads(stderr.strip().splitlines()[-1])["main_kib"]
    RESULTS[count] = {
        "seconds": seconds,
        "main_mib": main_kib / 1024,
        "heap_mib": heap_kib / 1024,
        "worker_mib": max(workers.values(), default=0) / 1024,
    }


def test_summary() -> None:
    """Print the table (run with -s)."""
    if not RESULTS:
        pytest.skip("no size was measured")
    print(
        "\ninstances (1 series)   wall s   main peak RSS MiB   main RssAnon MiB (polled)"
        "   largest worker peak RSS MiB"
    )
    for n, r in sorted(RESULTS.items()):
        print(
            f"{n:>20,}  {r['seconds']:>7.1f}  {r['main_mib']:>18.0f}  {r['heap_mib']:>25.0f}"
            f"  {r['worker_mib']:>28.0f}"
        )
