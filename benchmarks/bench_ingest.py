"""End-to-end ingest against peers (issue 4): pacs-engine, a naive loop, Orthanc, the codec.

Run from the repository root (the table is printed by the last test, so use -s):

    .venv/bin/python -m pytest benchmarks/bench_ingest.py -q -s -p no:cacheprovider

Every row takes the same files, in the same run, read once beforehand (page cache warm):
the corpus's CT, MR and CR files that pydicom decodes, from an uncompressed or lossless
transfer syntax, outside malformed/ (`corpus_inputs(..., lossless=True)`), or every file
under the folder named by PACS_ENGINE_BENCH_FILES. Files the scanner refuses are left out.

Rows:
- `pacs-engine ingest SRC --archive A --workers N [OPTION]`, N = 1, 2, as a
  subprocess; its report JSON gives the ratio. By default lossless compressed inputs are
  kept as their original bitstream (every file exports byte for byte), decoded once to
  hash their pixels; with --trust-bitstreams they are not decoded; with --transcode
  they are re-encoded with the archive codec, as Orthanc's ingest transcoding and the
  ceiling row do.
- naive: per file `pydicom.dcmread` + `pixel_array`, appended to one zarr v3 array per
  series and geometry (one frame per chunk, zarr's default compressor), in a fresh process.
- Orthanc (Debian) on loopback (benchmarks/orthanc.py), as received and with ingest
  transcoding to JPEG-LS lossless, fed by HTTP `POST /instances` on one keep-alive
  connection or by `storescu` on one association. When Orthanc crashes on a file, it is
  restarted on the same storage and sending resumes after that file; restart time is not
  counted, the files it crashed on count neither in its inst/s and MB/s nor in its ratio
  (it did not store them), and the row says how many crashes there were.
- codec ceiling: `choose_codec` per series on its middle frame, then `encode_frame` on
  every frame of the same pixels (decoded beforehand), one core, best of
  PACS_ENGINE_BENCH_REPEATS per frame (bench_codecs.measure_pick), in a fresh process.

- share of the ceiling (issue 18, `test_share_of_ceiling`): on the corpus's uncompressed
  CT and MR, and on a `pacs-engine synth` set (explicit and implicit VR, CT and MR,
  512 x 512, 100 slices a series; PACS_ENGINE_BENCH_SUSTAINED_FILES files, default 1,000,
  written once to PACS_ENGINE_BENCH_SUSTAINED_DIR), for 1 and 2 workers: the ingest's raw
  MB/s (wall time of the subprocess, start-up included, from compiled modules after an
  untimed warm-up on a few files) against the codec ceiling on as
  many cores (each core's share of the series decoded beforehand, a codec picked per
  array on its first frame as ingest does, then every frame encoded once, all cores at
  the same time, 256 MB of frames decoded at a time), and Orthanc HTTP with JPEG-LS
  ingest transcoding on the same files (for PACS_ENGINE_BENCH_PEER_S seconds at most,
  measured on the files it stored, with its CPU seconds). Each ingest row's note says
  where its workers' time went (the report's stage_seconds), and its CPU seconds (every
  process) are set against the ceiling's; a "codecs" line times DCMTK's JPEG-LS
  encoder (dcmcjpls, Orthanc's) against the archive's on 24 of the files, CPU per frame.
  The 1-minute load average is printed before each row. The ceiling's processes also
  time, on the same frames, the contract's fixed work: each file read whole, its SHA-256
  and its pixel data's BLAKE3, the frames encoded, written 64 files to a new file, synced:
  what any ingest keeping this archive's format does per file at the least; the row
  prints its share of the ceiling, and the ingest's share of it. A third set, compressed
  inputs (issue 18 asks the same of them; no target of its own): a `pacs-engine synth`
  set in JPEG-LS lossless (PACS_ENGINE_BENCH_COMPRESSED_FILES files, default 1,000, in
  PACS_ENGINE_BENCH_COMPRESSED_DIR), which ingest keeps as their bitstreams and decodes
  once; its ceiling is that decode, its fixed work the same with each decoded frame's
  BLAKE3 and the bitstreams written; no Orthanc row.
- cold sources (issue 18, `test_cold_sources`): `ingest --workers 2` of the sustained set
  with its files evicted from the page cache (posix_fadvise DONTNEED), against the same
  with them read beforehand, alternating, PACS_ENGINE_BENCH_COLD_ROUNDS rounds: a
  migration reads files that are not in memory; the rows say how long reads waited.

Per row: instances/s = files / wall seconds; raw MB/s = decoded pixel bytes of all the
files / wall seconds; ratio = decoded pixel bytes of the distinct instances kept /
bytes kept (pacs-engine: its report; Orthanc: file sizes in its storage folder, index
excluded; naive: file sizes in the zarr store); peak RSS (see `Measured.rss_note`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from statistics import median
from typing import Any

import pytest

from benchmarks import orthanc as orthanc_mod
from benchmarks.conftest import (
    PACS_ENGINE,
    RSS_SAMPLE_S,
    corpus_inputs,
    fadvise_dontneed,
    process_cpu_seconds,
    read_whole,
    run_measured,
)
from pacs_engine import ScanError, scan_many
from pacs_engine.archive.pixel_store import ArraySpec

MODALITIES = {"CT", "MR", "CR"}
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
STORESCU = shutil.which("storescu")
TARGET_VS_ORTHANC, TARGET_OF_CEILING, TARGET_SCALING = 5.0, 0.8, 1.8


@dataclass(frozen=True)
class IngestSet:
    """The files every row ingests, with the decoded pixel bytes of each and its SOP UID."""

    label: str
    source: str | None  # the folder given by PACS_ENGINE_BENCH_FILES, if any
    paths: list[str]
    file_bytes: int
    raw_bytes: dict[str, int]  # path -> decoded pixel bytes
    sop_uids: dict[str, str]  # path -> SOP Instance UID
    contexts: set[tuple[str, str]]  # (SOP Class UID, transfer syntax UID) of the files
    left_out: int

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def total_raw(self) -> int:
        return sum(self.raw_bytes.values())

    def raw_by_sop(self) -> dict[str, int]:
        """Decoded pixel bytes per distinct SOP Instance UID."""
        return {self.sop_uids[p]: self.raw_bytes[p] for p in self.paths}


@dataclass
class Measured:
    """One row of the table."""

    name: str
    seconds: float | None = None
    files: int = 0
    raw_bytes: int = 0
    ratio: float | None = None
    peak_rss_mib: float | None = None
    rss_note: str = ""
    note: str = ""
    cpu_seconds: float | None = None  # user + system, every process of the row
    report: dict[str, Any] | None = None  # pacs-engine's report of the run (ingest rows)
    # Raw pixel bytes per byte of the archive's pixels folder (ingest rows): `ratio` is the
    # report's, which counts the header packs too, and the codec ceiling's counts frames only.
    pixel_ratio: float | None = None

    @property
    def per_s(self) -> float | None:
        return self.files / self.seconds if self.seconds else None

    @property
    def mb_per_s(self) -> float | None:
        return self.raw_bytes / self.seconds / 1e6 if self.seconds else None


ROWS: dict[str, Measured] = {}


def _raw_pixel_bytes(header: Any) -> int:
    """Decoded pixel bytes as pydicom gives them (1-bit pixels unpacked to one byte)."""
    rows, cols = header.get("Rows"), header.get("Columns")
    if not rows or not cols or header.pixel is None:
        return 0
    frames = int(header.get("NumberOfFrames") or 1)
    itemsize = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}.get(
        (int(header.get("BitsAllocated") or 8) + 7) // 8, 8
    )
    return rows * cols * int(header.get("SamplesPerPixel") or 1) * frames * itemsize


def build_ingest_set(modalities: set[str] = MODALITIES) -> IngestSet:
    """The file set (see the module docstring), read once so it is in the page cache."""
    folder = os.environ.get("PACS_ENGINE_BENCH_FILES")
    if folder:
        candidates = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())
        label = f"every file under PACS_ENGINE_BENCH_FILES={folder}"
    else:
        candidates = corpus_inputs(modalities, lossless=True)
        label = (
            f"corpus {'/'.join(sorted(modalities))}, uncompressed or lossless, "
            "pydicom decodes, not malformed/"
        )
    paths, raw, sops, contexts = [], {}, {}, set()
    for path, header in zip(candidates, scan_many(candidates), strict=True):
        sop = None if isinstance(header, ScanError) else header.get("SOPInstanceUID")
        if not sop:
            continue
        paths.append(path)
        raw[path] = _raw_pixel_bytes(header)
        sops[path] = sop
        contexts.add((str(header.get("SOPClassUID")), header.transfer_syntax_uid))
    file_bytes = read_whole(paths)
    left_out = len(candidates) - len(paths)
    return IngestSet(label, folder, paths, file_bytes, raw, sops, contexts, left_out)


@pytest.fixture(scope="module")
def ingest_set() -> IngestSet:
    found = build_ingest_set()
    if not found.paths:
        pytest.skip(f"no files to ingest ({found.label})")
    return found


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary folder, removed after the test whatever happened in it."""
    with tempfile.TemporaryDirectory(prefix="pacs-bench-ingest-") as folder:
        yield Path(folder)


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Iterator[Measured]:
    """The test's row, recorded even when the test fails (the failure becomes its note)."""
    measured = Measured(request.node.callspec.id if hasattr(request.node, "callspec") else "")
    yield measured
    if measured.seconds is None and not measured.note:
        measured.note = "FAILED (see the pytest output)"
    ROWS[measured.name] = measured


@pytest.fixture(autouse=True)
def _warm(ingest_set: IngestSet) -> None:
    read_whole(ingest_set.paths)


def in_fresh_process(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a new spawned interpreter (so its peak RSS is its own)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def stored_file_bytes(folder: Path) -> int:
    """Apparent size of every file under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- (a) pacs-engine ------------------------------------------------------------------


def _pacs_engine_row(workers: int, option: str) -> str:
    return f"pacs-engine {workers} worker(s) {option}".rstrip()


MODES = ["", "--trust-bitstreams", "--transcode"]
PACS_ENGINE_ROWS = [(workers, option) for option in MODES for workers in (1, 2)]


@pytest.mark.parametrize(
    ("workers", "option"), PACS_ENGINE_ROWS, ids=[_pacs_engine_row(*r) for r in PACS_ENGINE_ROWS]
)
def test_pacs_engine(
    workers: int, option: str, ingest_set: IngestSet, scratch: Path, row: Measured
) -> None:
    """`pacs-engine ingest` as a subprocess; its report JSON and the measured process tree.

    With --transcode, lossless compressed inputs are re-encoded with the archive codec
    as Orthanc's ingest transcoding and the ceiling do (neither export byte-exact files).
    """
    row.name = _pacs_engine_row(workers, option)
    archive = scratch / "archive"
    sources = [ingest_set.source] if ingest_set.source else ingest_set.paths
    cmd = [str(PACS_ENGINE), "ingest", *sources, "--archive", str(archive), "--no-progress"]
    cmd += ["--workers", str(workers)] + ([option] if option else [])
    done = run_measured(cmd, scratch)
    assert done.code == 0, done.stderr.read_text()[-2000:]
    (report_path,) = (archive / "reports").glob("ingest-*.json")
    report = json.loads(report_path.read_text())
    row.seconds, row.files, row.raw_bytes = done.seconds, len(ingest_set), ingest_set.total_raw
    row.ratio = report["ratio"]
    row.peak_rss_mib = done.tree_peak_kib / 1024
    row.rss_note = (
        f"tree sum sampled /{RSS_SAMPLE_S}s; largest process {done.largest_kib / 1024:.0f}"
    )
    row.note += (
        f"report: {report['archived']} archived, {report['duplicates']} dup,"
        f" {report['conflicts']} conflicts, {report['quarantined']} quarantined,"
        f" {report['seconds']:.2f} s inside"
    )
    assert report["inputs"] == len(ingest_set)


# --- (b) the naive loop -----------------------------------------------------------------


def naive_loop(paths: list[str], out: str) -> dict[str, Any]:
    """dcmread + pixel_array per file, appended to one zarr v3 array per series/geometry."""
    import resource

    import pydicom
    import zarr

    started = time.perf_counter()
    group = zarr.open_group(out, mode="w", zarr_format=3)
    arrays: dict[tuple, Any] = {}
    raw, failed = 0, Counter()
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
                pixels = ds.pixel_array
        except Exception as exc:  # a scientist's loop skips what it cannot read
            failed[type(exc).__name__] += 1
            continue
        frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None]
        key = (str(ds.SeriesInstanceUID), frames.shape[1:], frames.dtype.str)
        if key not in arrays:
            name = f"{len(arrays)}_{'x'.join(map(str, frames.shape[1:]))}_{frames.dtype.name}"
            arrays[key] = group.create_array(
                name,
                shape=(0, *frames.shape[1:]),
                chunks=(1, *frames.shape[1:]),
                dtype=frames.dtype,
            )
        arrays[key].append(frames)
        raw += frames.nbytes
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "raw": raw,
        "failed": dict(failed),
        "arrays": len(arrays),
        "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def test_naive_loop(ingest_set: IngestSet, scratch: Path, row: Measured) -> None:
    """What one writes without pacs_engine: pydicom, numpy, zarr defaults, one process."""
    row.name = "naive pydicom+zarr loop"
    out = scratch / "naive.zarr"
    result = in_fresh_process(naive_loop, ingest_set.paths, str(out))
    row.seconds, row.files, row.raw_bytes = result["seconds"], len(ingest_set), ingest_set.total_raw
    row.ratio = result["raw"] / stored_file_bytes(out)
    row.peak_rss_mib = result["peak_kib"] / 1024
    row.rss_note = "its process (spawned; timing starts after imports)"
    row.note = f"{result['arrays']} arrays, pixel bytes {result['raw']:,}"
    if result["failed"]:
        row.note += f", failed: {result['failed']}"


# --- (c) Orthanc ------------------------------------------------------------------------


@dataclass
class Sent:
    """What a transport did: seconds spent sending, crashes, refusals."""

    seconds: float = 0.0
    crashes: list[str] = field(default_factory=list)
    crashed_paths: list[str] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)
    peak_kib: int = 0
    associations: int = 0
    attempted: int = 0  # files sent (all of them unless a time budget ran out)
    #: Orthanc's CPU seconds (all threads) from its start or restart to the last answer it
    #: gave: a crashed request's CPU is not counted (its wall time is).
    cpu_seconds: float = 0.0


def _orthanc_cpu(orthanc: orthanc_mod.Orthanc) -> float:
    """The running Orthanc's CPU seconds so far (0 if it has no process)."""
    pid = orthanc.process.pid if orthanc.process is not None else None
    return (process_cpu_seconds(pid) if pid is not None else None) or 0.0


def _crashed(orthanc: orthanc_mod.Orthanc, path: str, sent: Sent) -> None:
    """Record the crash on `path` and restart Orthanc on the same storage."""
    sent.crashes.append(f"{Path(path).name} (exit {orthanc.process.wait()})")
    sent.crashed_paths.append(path)
    orthanc.start()


def send_http(
    orthanc: orthanc_mod.Orthanc, paths: list[str], budget_s: float | None = None
) -> Sent:
    """POST /instances, one keep-alive connection; restarts Orthanc after a crash; stops
    after `budget_s` seconds of sending (restarts not counted), if given."""
    sent = Sent(associations=1)
    conn = orthanc.connection()
    started = time.perf_counter()
    cpu_from = cpu_to = _orthanc_cpu(orthanc)
    for path in paths:
        if budget_s is not None and sent.seconds + time.perf_counter() - started > budget_s:
            break
        sent.attempted += 1
        try:
            conn.request(
                "POST",
                "/instances",
                body=Path(path).read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            response = conn.getresponse()
            body = response.read()
        except OSError:
            if not orthanc.died():
                raise
            sent.seconds += time.perf_counter() - started
            sent.cpu_seconds += cpu_to - cpu_from
            sent.peak_kib = max(sent.peak_kib, orthanc.peak_rss_kib() or 0)
            _crashed(orthanc, path, sent)
            conn.close()
            conn, sent.associations = orthanc.connection(), sent.associations + 1
            started = time.perf_counter()
            cpu_from = cpu_to = _orthanc_cpu(orthanc)
            continue
        cpu_to = _orthanc_cpu(orthanc)
        if response.status != 200:
            sent.refused[f"{Path(path).name}: HTTP {response.status} {body[:60]!r}"] += 1
    sent.seconds += time.perf_counter() - started
    sent.cpu_seconds += _orthanc_cpu(orthanc) - cpu_from
    conn.close()
    return sent


def storescu_profile(contexts: set[tuple[str, str]], folder: Path) -> Path:
    """An association profile proposing each file's own transfer syntax, and uncompressed.

    storescu's -x options propose one compressed syntax at most, and it cannot decompress
    the rest itself: without this, JPEG 2000, RLE, JPEG-LS... files fail to send.
    """
    syntaxes = sorted({ts for _, ts in contexts})
    lines = ["[[TransferSyntaxes]]", "[Uncompressed]"]
    lines += ["TransferSyntax1 = LittleEndianExplicit", "TransferSyntax2 = LittleEndianImplicit"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Bench]"]
    pairs = sorted({(c, f"TS{syntaxes.index(ts)}") for c, ts in contexts})
    pairs += [(c, "Uncompressed") for c in sorted({c for c, _ in contexts})]
    if len(pairs) > 128:  # the protocol's limit per association
        pytest.skip(f"{len(pairs)} presentation contexts needed, 128 allowed in one association")
    lines += [f"PresentationContext{i + 1} = {c}\\{t}" for i, (c, t) in enumerate(pairs)]
    lines += ["[[Profiles]]", "[Bench]", "PresentationContexts = Bench"]
    path = folder / "storescu.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def send_storescu(orthanc: orthanc_mod.Orthanc, fs: IngestSet, scratch: Path) -> Sent:
    """storescu, one association for all files; after a crash, a new one from the next file."""
    assert STORESCU is not None
    profile = storescu_profile(fs.contexts, scratch)
    sent = Sent()
    todo = list(fs.paths)
    while todo:
        cmd = [STORESCU, "-v", "-nh", "-xf", str(profile), "Bench", "-aec", orthanc_mod.AET]
        cmd += ["127.0.0.1", str(orthanc.dicom_port), *todo]
        done = run_measured(cmd, scratch)
        sent.seconds += done.seconds
        sent.associations += 1
        log = done.stdout.read_text(errors="replace") + done.stderr.read_text(errors="replace")
        # The file being stored when the peer went away; storescu (-nh) goes on failing after.
        aborted = re.search(r"Store Failed, file: (.+):\n\S+ \S+ Peer aborted", log)
        failures = re.findall(r"Store Failed, file: (.+):\n\S+ (.+)", log)
        crash_at = todo.index(aborted[1]) if aborted and aborted[1] in todo else None
        for path, reason in failures:
            if crash_at is not None and todo.index(path) >= crash_at:
                break
            sent.refused[f"{Path(path).name}: {reason.strip()[:60]}"] += 1
        if crash_at is None or not orthanc.died(within=5.0):
            break
        sent.peak_kib = max(sent.peak_kib, orthanc.peak_rss_kib() or 0)
        _crashed(orthanc, todo[crash_at], sent)
        todo = todo[crash_at + 1 :]
    return sent


def _stored_instances(orthanc: orthanc_mod.Orthanc) -> dict[str, str]:
    """Orthanc's instance ID of every SOP Instance UID it holds."""
    return {
        instance["MainDicomTags"]["SOPInstanceUID"]: instance["ID"]
        for instance in orthanc.get("/instances?expand")
    }


def _stored_syntaxes(orthanc: orthanc_mod.Orthanc) -> tuple[set[str], Counter]:
    """SOP Instance UIDs Orthanc holds, and how many it stored in each transfer syntax."""
    instances, syntaxes = _stored_instances(orthanc), Counter()
    for identifier in instances.values():
        meta = orthanc.get(f"/instances/{identifier}/metadata?expand")
        syntaxes[meta.get("TransferSyntax")] += 1
    return set(instances), syntaxes


@pytest.mark.parametrize("transport", ["HTTP", "storescu"])
@pytest.mark.parametrize("transcode", [None, JPEG_LS_LOSSLESS], ids=["as received", "JPEG-LS"])
def test_orthanc(
    transport: str, transcode: str | None, ingest_set: IngestSet, scratch: Path, row: Measured
) -> None:
    """Orthanc from Debian receives the files (see the module docstring)."""
    row.name = f"Orthanc {transport}, {'JPEG-LS' if transcode else 'as received'}"
    if not orthanc_mod.installed():
        row.note = (
            f"skipped: Orthanc not installed ({orthanc_mod.ORTHANC}; apt-get install orthanc)"
        )
        pytest.skip(row.note)
    if transport == "storescu" and STORESCU is None:
        row.note = "skipped: storescu not installed (apt-get install dcmtk)"
        pytest.skip(row.note)
    with orthanc_mod.running_orthanc(transcode) as orthanc:
        if transport == "HTTP":
            sent = send_http(orthanc, ingest_set.paths)
        else:
            sent = send_storescu(orthanc, ingest_set, scratch)
        sent.peak_kib = max(sent.peak_kib, orthanc.peak_rss_kib() or 0)
        sops, syntaxes = _stored_syntaxes(orthanc)
        stored = orthanc.storage_bytes()
        log = orthanc.log.read_text(errors="replace")
    raw_by_sop = ingest_set.raw_by_sop()
    # A file Orthanc crashed on is not stored: it counts neither in the rates nor the ratio.
    row.seconds, row.files = sent.seconds, len(ingest_set) - len(sent.crashed_paths)
    row.raw_bytes = ingest_set.total_raw - sum(ingest_set.raw_bytes[p] for p in sent.crashed_paths)
    row.ratio = sum(raw_by_sop.get(s, 0) for s in sops) / stored
    row.peak_rss_mib = sent.peak_kib / 1024
    row.rss_note = "Orthanc's VmHWM (max over restarts), server only"
    parts = [f"{len(sops)} instances kept"]
    if transcode:
        parts.append(f"{syntaxes.get(transcode, 0)} as JPEG-LS")
    if sent.crashes:
        shown = ", ".join(sent.crashes[:3]) + (", ..." if len(sent.crashes) > 3 else "")
        parts.append(f"CRASHED {len(sent.crashes)}x: {shown}")
        asserts = sorted(set(re.findall(r"^Orthanc: .*Assertion.*$", log, re.MULTILINE)))
        parts += [a[:160] for a in asserts]
    if sent.refused:
        parts.append(f"refused: {dict(sent.refused)}")
    if transport == "storescu":
        parts.append(f"{sent.associations} association(s)")
    row.note = "; ".join(parts)


# --- (d) the codec ceiling ----------------------------------------------------------------


def codec_ceiling(paths: list[str]) -> dict[str, Any]:
    """Decode every frame (untimed), then choose a codec per series and encode every frame."""
    import resource

    import numpy as np
    import pydicom

    from benchmarks.bench_codecs import Image, measure_pick

    images, skipped = [], Counter()
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
                pixels = ds.pixel_array
            except Exception as exc:
                skipped[type(exc).__name__] += 1
                continue
        frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None]
        bits = int(ds.get("BitsStored", 8 * frames.dtype.itemsize))
        for frame in frames:
            if frame.dtype.kind not in "ui":
                skipped[f"{frame.dtype} pixels"] += 1
                continue
            frame = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
            images.append(Image(str(ds.Modality), str(ds.SeriesInstanceUID), bits, frame))
    m = measure_pick(tuple(images))
    # measure_pick keeps per-frame ratios; the pooled ratio needs sizes (an untimed pass).
    encoded = sum(len(m.series_codec[im.series].encode_frame(im.frame)) for im in images)
    raw = sum(m.raw.values())
    return {
        "seconds": sum(m.encode_s.values()),
        "raw": raw,
        "frames": len(images),
        "ratio": raw / encoded,
        "chosen": dict(m.chosen),
        "skipped": dict(skipped),
        "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def test_codec_ceiling(ingest_set: IngestSet, row: Measured) -> None:
    """The archive codec alone on the same pixels: what ingest could reach on one core."""
    row.name = "codec ceiling (1 core)"
    result = in_fresh_process(codec_ceiling, ingest_set.paths)
    row.seconds, row.files, row.raw_bytes = result["seconds"], len(ingest_set), result["raw"]
    row.ratio = result["ratio"]
    row.peak_rss_mib = result["peak_kib"] / 1024
    row.rss_note = "its process, holding every decoded frame"
    row.note = f"{result['frames']} frames; chosen: {result['chosen']}"
    if result["skipped"]:
        row.note += f"; skipped {result['skipped']}"


# --- (e) share of the codec ceiling on as many cores (issue 18) ----------------------------

#: Uncompressed transfer syntaxes: the corpus set of issue 18 (native frames only, so the
#: ceiling is the archive codec's encode, with nothing to decode).
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
#: Files of the sustained `pacs-engine synth` set (the issue asks >= 20,000, >= 5 GB:
#: 20,000 files of 512 x 512 x 16 bits are 10.5 GB); 100 slices a series.
SUSTAINED_FILES = int(os.environ.get("PACS_ENGINE_BENCH_SUSTAINED_FILES", "1000"))
SUSTAINED_SLICES = 100
#: Where the sustained set is written once and reused (the same seed: the same bytes).
SUSTAINED_DIR = Path(
    os.environ.get(
        "PACS_ENGINE_BENCH_SUSTAINED_DIR",
        Path(tempfile.gettempdir()) / f"pacs-bench-sustained-{SUSTAINED_FILES}",
    )
)
SHARE_TARGETS = {"corpus": 0.65, "sustained": 0.8}  # with 2 workers
#: The compressed set (issue 18's "the same for compressed inputs"; no target of its own):
#: `pacs-engine synth` files in JPEG-LS lossless, which ingest keeps as their bitstreams
#: and decodes once, to prove they decode and to hash their pixels.
COMPRESSED_FILES = int(os.environ.get("PACS_ENGINE_BENCH_COMPRESSED_FILES", "1000"))
COMPRESSED_DIR = Path(
    os.environ.get(
        "PACS_ENGINE_BENCH_COMPRESSED_DIR",
        Path(tempfile.gettempdir()) / f"pacs-bench-compressed-{COMPRESSED_FILES}",
    )
)
COMPRESSED_SYNTAXES = {"1.2.840.10008.1.2.4.80"}  # JPEG-LS lossless
TARGET_VS_ORTHANC_18 = 3.0
CEILING_BARRIER_S = 600.0  # bound on the wait for the other ceiling processes
#: Pixel bytes a ceiling process decodes before encoding them: its memory stays bounded on
#: a 10 GB sustained set.
CEILING_CHUNK_BYTES = 256 << 20
#: Files per shard in the contract's fixed work: the pixel store's frames per shard (the
#: sets' files hold one frame each).
SHARD_FILES = next(f.default for f in fields(ArraySpec) if f.name == "frames_per_shard")
#: Bounds on the share rows' run time: each ingest is killed (and fails) after
#: PACS_ENGINE_BENCH_TIMEOUT_S; Orthanc gets PACS_ENGINE_BENCH_PEER_S seconds of sending
#: (restarts not counted) and is measured on the files it got to.
INGEST_TIMEOUT_S = float(os.environ.get("PACS_ENGINE_BENCH_TIMEOUT_S", "3600"))
#: Files of the set an untimed ingest takes first, to compile what the measured run imports.
WARM_UP_FILES = 8
PEER_BUDGET_S = float(os.environ.get("PACS_ENGINE_BENCH_PEER_S", "600"))
#: Files (spread over the set) on which DCMTK's JPEG-LS encoder, Orthanc's, is timed
#: against the archive's.
CODEC_SAMPLE_FILES = 24
DCMCJPLS, DCMCONV = shutil.which("dcmcjpls"), shutil.which("dcmconv")


@dataclass
class Share:
    """One set's rows of issue 18: ingest and ceiling MB/s per core count, Orthanc's."""

    label: str
    files: int = 0
    raw_bytes: int = 0
    ingest: dict[int, Measured] = field(default_factory=dict)
    ceiling: dict[int, Measured] = field(default_factory=dict)
    fixed: dict[int, Measured] = field(default_factory=dict)  # the contract's fixed work
    orthanc: Measured | None = None
    codecs: str = ""  # DCMTK's JPEG-LS encoder against the archive's, per frame
    loads: list[float] = field(default_factory=list)  # 1-minute load average before each row


SHARES: dict[str, Share] = {}


def uncompressed_set(paths: list[str], label: str, syntaxes: set[str] = UNCOMPRESSED) -> IngestSet:
    """The files of `paths` the scanner reads in one of `syntaxes` (default: uncompressed)."""
    kept, raw, sops, contexts = [], {}, {}, set()
    for path, header in zip(paths, scan_many(paths), strict=True):
        if isinstance(header, ScanError) or header.transfer_syntax_uid not in syntaxes:
            continue
        if not header.get("SOPInstanceUID") or header.pixel is None:
            continue
        kept.append(path)
        raw[path] = _raw_pixel_bytes(header)
        sops[path] = header["SOPInstanceUID"]
        contexts.add((str(header.get("SOPClassUID")), header.transfer_syntax_uid))
    file_bytes = read_whole(kept)
    return IngestSet(label, None, kept, file_bytes, raw, sops, contexts, len(paths) - len(kept))


def sustained_paths(
    folder: Path = SUSTAINED_DIR, files: int = SUSTAINED_FILES, syntaxes: str = "explicit,implicit"
) -> list[str]:
    """A synth set's files (default: the sustained set), written by `pacs-engine synth`
    unless already there."""
    studies = max(1, files // (2 * SUSTAINED_SLICES))
    expected = studies * 2 * SUSTAINED_SLICES
    found = sorted(str(p) for p in folder.rglob("*.dcm"))
    if len(found) != expected:
        shutil.rmtree(folder, ignore_errors=True)
        cmd = [str(PACS_ENGINE), "synth", str(folder), "--studies", str(studies)]
        cmd += ["--series-per-study", "2", "--slices", str(SUSTAINED_SLICES)]
        cmd += ["--syntaxes", syntaxes, "--modalities", "CT,MR", "--no-progress"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=7200)
        found = sorted(str(p) for p in folder.rglob("*.dcm"))
    return found


def _wait_for_peers(folder: str, index: int, cores: int) -> None:
    """A barrier between the ceiling's processes: each encodes once all have decoded."""
    Path(folder, f"ready-{index}").touch()
    deadline = time.monotonic() + CEILING_BARRIER_S
    while len(list(Path(folder).glob("ready-*"))) < cores:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other ceiling processes were not ready in {folder}")
        time.sleep(0.005)


def ceiling_share(paths: list[str], folder: str, index: int, cores: int) -> dict[str, Any]:
    """One core's share of the ceiling: decode its native files (untimed), pick a codec per
    array as ingest does (on the first frame of each series and geometry, untimed), then,
    once every process is ready, encode each frame once with it (timed: wall and CPU). A
    compressed file is kept as its bitstreams, which the contract decodes once (to prove
    they decode and to hash their pixels): that decode is its timed work. Frames are done
    CEILING_CHUNK_BYTES at a time.

    Each chunk is then done again as the contract's fixed work (timed apart, "fixed_*"):
    each file read whole, its SHA-256 computed, its pixels' BLAKE3 (of the pixel data, or
    of each decoded frame of a bitstream), its frames encoded (or its bitstreams decoded),
    and the stored bytes written to a new file per SHARD_FILES files, synced, the folder
    synced at the end: what any ingest keeping this format must do per file, with no other
    work."""
    import hashlib

    import numpy as np
    import pydicom
    from blake3 import blake3
    from pydicom.encaps import generate_frames

    from pacs_engine.codecs import choose_codec, pass_through_codec
    from pacs_engine.scanning import scan

    codecs: dict[tuple[str, tuple[int, ...], str], Any] = {}
    totals = {"seconds": 0.0, "cpu": 0.0, "raw": 0, "stored": 0, "fixed_seconds": 0.0}
    totals["fixed_cpu"] = 0.0
    # Per frame: (codec, native frame) to encode, or (decoder, bitstream, shape) to decode.
    frames: list[tuple[Any, ...]] = []
    files: list[tuple[str, int, int, int]] = []  # path, pixel value offset and length, frames
    shards = Path(folder, f"shards-{index}")
    shards.mkdir()
    names = itertools.count()

    def stored(item: tuple[Any, ...], hashed: bool) -> bytes:
        """The frame as stored: encoded, or its bitstream once decoded (its pixels hashed)."""
        if len(item) == 2:
            return item[0].encode_frame(item[1])
        decoder, stream, shape = item
        decoded = decoder.decode_checked(stream, shape, decoder.pixel_dtype)
        if hashed:
            blake3(decoded.reshape(-1).view(np.uint8)).digest()
        return stream

    def fixed_work() -> None:
        started, cpu = time.perf_counter(), time.process_time()
        frame = 0
        for i in range(0, len(files), SHARD_FILES):
            encoded = []
            for path, offset, length, count in files[i : i + SHARD_FILES]:
                fd = os.open(path, os.O_RDONLY)
                try:
                    data = os.read(fd, os.fstat(fd).st_size)
                finally:
                    os.close(fd)
                hashlib.sha256(data).digest()
                if len(frames[frame]) == 2:  # native: the pixel data is the frames
                    blake3(memoryview(data)[offset : offset + length]).digest()
                encoded += [stored(item, True) for item in frames[frame : frame + count]]
                frame += count
            shard = os.open(shards / str(next(names)), os.O_WRONLY | os.O_CREAT)
            try:
                os.write(shard, b"".join(encoded))
                os.fsync(shard)
            finally:
                os.close(shard)
        totals["fixed_seconds"] += time.perf_counter() - started
        totals["fixed_cpu"] += time.process_time() - cpu

    def encode() -> None:
        if not totals["raw"]:  # the first chunk: start with the other processes
            _wait_for_peers(folder, index, cores)
        started, cpu = time.perf_counter(), time.process_time()
        totals["stored"] += sum(len(stored(item, False)) for item in frames)
        totals["seconds"] += time.perf_counter() - started
        totals["cpu"] += time.process_time() - cpu
        totals["raw"] += raw_bytes
        fixed_work()
        frames.clear()
        files.clear()

    raw_bytes = 0  # of the frames not yet encoded
    for path in paths:
        pixel = scan(path).pixel
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            count = int(ds.get("NumberOfFrames", 1) or 1)
            if pixel.encapsulated:
                samples = int(ds.SamplesPerPixel)
                decoder = pass_through_codec(
                    str(ds.file_meta.TransferSyntaxUID),
                    photometric_interpretation=str(ds.PhotometricInterpretation),
                    bits_allocated=int(ds.BitsAllocated),
                    bits_stored=int(ds.BitsStored),
                    pixel_representation=int(ds.PixelRepresentation),
                    samples_per_pixel=samples,
                    planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
                )
                shape = (int(ds.Rows), int(ds.Columns), samples)[: 2 if samples == 1 else 3]
                streams = list(generate_frames(ds.PixelData, number_of_frames=count))
                frames += [(decoder, stream, shape) for stream in streams]
                count = len(streams)  # the frames pydicom finds, whatever NumberOfFrames says
                size = int(np.prod(shape)) * decoder.pixel_dtype.itemsize * count
            else:
                pixels = ds.pixel_array
                stack = pixels if count > 1 else pixels[None]
                count, size = len(stack), 0
                for frame in stack:
                    frame = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
                    key = (str(ds.SeriesInstanceUID), frame.shape, frame.dtype.str)
                    if key not in codecs:
                        codecs[key] = choose_codec(frame)
                    frames.append((codecs[key], frame))
                    size += frame.nbytes
        files.append((path, pixel.value_offset, pixel.value_length, count))
        raw_bytes += size
        if raw_bytes >= CEILING_CHUNK_BYTES:
            encode()
            raw_bytes = 0
    if frames or not totals["raw"]:
        encode()
    started = time.perf_counter()
    fd = os.open(shards, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    totals["fixed_seconds"] += time.perf_counter() - started
    return totals


def parallel_ceiling(fs: IngestSet, cores: int, scratch: Path) -> tuple[Measured, Measured]:
    """The codec ceiling on `cores` cores: the set's series split in `cores` shares of about
    the same pixel bytes, each encoded in its own process at the same time; MB/s = all the
    pixel bytes / the slowest process's encode time. Second, the contract's fixed work on
    the same shares (`ceiling_share`), timed the same way."""
    by_series: dict[str, list[str]] = {}
    for path, header in zip(fs.paths, scan_many(fs.paths), strict=True):
        by_series.setdefault(str(header.get("SeriesInstanceUID")), []).append(path)
    shares: list[list[str]] = [[] for _ in range(cores)]
    loads = [0] * cores
    for members in sorted(by_series.values(), key=lambda m: -sum(fs.raw_bytes[p] for p in m)):
        least = loads.index(min(loads))
        shares[least] += members
        loads[least] += sum(fs.raw_bytes[p] for p in members)
    barrier = scratch / f"barrier-{cores}"
    barrier.mkdir()
    try:
        with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(ceiling_share, share, str(barrier), i, cores)
                for i, share in enumerate(shares)
            ]
            results = [f.result() for f in futures]
    finally:
        shutil.rmtree(barrier, ignore_errors=True)
    raw = sum(r["raw"] for r in results)
    plural = "s" if cores > 1 else ""
    measured = Measured(f"codec ceiling ({cores} core{plural})")
    measured.seconds = max(r["seconds"] for r in results)
    measured.cpu_seconds = sum(r["cpu"] for r in results)
    measured.files, measured.raw_bytes = len(fs), raw
    measured.ratio = raw / sum(r["stored"] for r in results)
    measured.note = "per process encode wall/CPU s: " + ", ".join(
        f"{r['seconds']:.2f}/{r['cpu']:.2f}" for r in results
    )
    fixed = Measured(f"the contract's fixed work ({cores} core{plural})")
    fixed.seconds = max(r["fixed_seconds"] for r in results)
    fixed.cpu_seconds = sum(r["fixed_cpu"] for r in results)
    fixed.files, fixed.raw_bytes, fixed.ratio = len(fs), raw, measured.ratio
    return measured, fixed


def _stage_bound(report: dict[str, Any]) -> str:
    """Where the workers' time went, from the report: codec CPU s, other CPU s, waits."""
    if "stage_seconds" not in report:  # an older tree (ab_compare.py)
        return "no stage times in this tree's report"
    codec = cpu = wall = idle = read_wait = 0.0
    for process, stages in report["stage_seconds"].items():
        if not process.startswith("worker"):
            continue
        for name, t in stages.items():
            if name == "idle":
                idle += t["wall"]
                continue
            cpu += t["cpu"]
            wall += t["wall"]
            codec += t["cpu"] if name in ("encode", "decode") else 0.0
            read_wait += t["wall"] - t["cpu"] if name == "read" else 0.0
    main = report["stage_seconds"].get("main", {})
    zero = {"cpu": 0.0, "wall": 0.0}
    commit, other = main.get("commit", zero), main.get("other", zero)
    return (
        f"workers: CPU {cpu:.2f} s ({codec:.2f} codec = {codec / cpu:.0%}), busy wall"
        f" {wall:.2f} s (CPU/wall {cpu / wall:.0%}), idle {idle:.2f} s, reads waited"
        f" {read_wait:.2f} s; main: commit"
        f" {commit['cpu']:.2f}/{commit['wall']:.2f} s, other CPU {other['cpu']:.2f} s;"
        f" report {report['seconds']:.2f} s (the rest of the wall: start-up and exit)"
    )


def _ingest_wall(fs: IngestSet, workers: int, scratch: Path, sources: list[str]) -> Measured:
    """`pacs-engine ingest` as a subprocess, wall time with its start-up; its report. The
    archive is removed afterwards (the scratch folder's removal covers a failure).

    It runs from compiled modules, as an installed package does (`_compiled_once`): an
    untimed ingest of a few of the files first compiles what the run imports, once (none
    when the bytecode cache exists). Without that, under PYTHONDONTWRITEBYTECODE the
    command and its forkserver compiled the package again at every run (about 0.15 s of
    CPU on the corpus set, 8 % of it)."""
    archive = scratch / f"archive-{workers}"
    env = _compiled_once(scratch)
    if not Path(env["PYTHONPYCACHEPREFIX"]).exists():
        warm = [str(PACS_ENGINE), "ingest", *fs.paths[:WARM_UP_FILES], "--archive"]
        warm += [str(scratch / "warm-up"), "--no-progress", "--workers", str(workers)]
        done = subprocess.run(
            warm, capture_output=True, text=True, env=env, timeout=INGEST_TIMEOUT_S, check=False
        )
        assert done.returncode == 0, f"warm-up exit {done.returncode}: {done.stderr[-2000:]}"
        shutil.rmtree(scratch / "warm-up")
    cmd = [str(PACS_ENGINE), "ingest", *sources, "--archive", str(archive), "--no-progress"]
    cmd += ["--workers", str(workers)]
    try:
        done = run_measured(cmd, scratch, timeout=INGEST_TIMEOUT_S, env=env)
        assert done.code == 0, (
            f"exit {done.code} (killed after {INGEST_TIMEOUT_S:.0f} s?)"
            f" {done.stderr.read_text()[-2000:]}"
        )
        (report_path,) = (archive / "reports").glob("ingest-*.json")
        report = json.loads(report_path.read_text())
        pixels = stored_file_bytes(archive / "pixels")
    finally:
        shutil.rmtree(archive, ignore_errors=True)
    assert report["inputs"] == len(fs) and report["balanced"]
    measured = Measured(f"pacs-engine {workers} worker(s)", done.seconds, len(fs), fs.total_raw)
    measured.ratio = report["ratio"]
    measured.pixel_ratio = _quotient(report["raw_pixel_bytes"], pixels)
    measured.cpu_seconds = done.cpu_seconds
    measured.note = _stage_bound(report)
    measured.report = report
    return measured


def _children_cpu() -> float:
    """User + system CPU seconds of this process's children that it has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_cpu(cmd: list[str]) -> tuple[int, float]:
    """Run `cmd` (bounded to 120 s); its exit code and its own CPU seconds (wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timer = threading.Timer(120.0, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def dcmtk_against_archive_codec(paths: list[str], scratch: Path) -> str:
    """Per frame CPU and ratio of DCMTK's JPEG-LS encoder (the one Orthanc's ingest
    transcoding runs) against the archive's, on CODEC_SAMPLE_FILES files spread over the set.

    DCMTK's: `dcmcjpls IN OUT` less `dcmconv +te IN OUT` (the same read, parse and write,
    no encode), CPU of each process (wait4), on the files dcmcjpls encodes. The archive's:
    `JpegLsCodec().encode_frame` on the frames pydicom decodes from the same files (CPU).
    """
    import numpy as np
    import pydicom

    from pacs_engine.codecs.jpegls import JpegLsCodec

    if DCMCJPLS is None or DCMCONV is None:
        return "DCMTK's dcmcjpls/dcmconv not installed (apt-get install dcmtk)"
    sample = paths[:: max(1, len(paths) // CODEC_SAMPLE_FILES)][:CODEC_SAMPLE_FILES]
    codec = JpegLsCodec()
    out = scratch / "dcmtk.dcm"
    dcmtk_cpu = ours_cpu = 0.0
    raw = dcmtk_bytes = ours_bytes = frames = 0
    failed = []
    for path in sample:
        code, encoding = _run_cpu([DCMCJPLS, path, str(out)])
        if code != 0:
            failed.append(f"{Path(path).name} (exit {code})")
            continue
        encapsulated = pydicom.dcmread(out).PixelData
        _, copying = _run_cpu([DCMCONV, "+te", path, str(out)])
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        stack = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None]
        started = time.process_time()
        for frame in stack:
            ours_bytes += len(codec.encode_frame(np.ascontiguousarray(frame)))
        ours_cpu += time.process_time() - started
        dcmtk_cpu += encoding - copying
        dcmtk_bytes += len(encapsulated)
        raw += pixels.nbytes
        frames += len(stack)
    out.unlink(missing_ok=True)
    if not frames:
        return f"dcmcjpls encoded none of {len(sample)} files: {', '.join(failed[:3])}"
    return (
        f"JPEG-LS per frame on {frames} frames of {len(sample)} files: DCMTK (Orthanc's)"
        f" {dcmtk_cpu / frames * 1e3:.1f} ms CPU, ratio {raw / dcmtk_bytes:.3f}; the archive's"
        f" {ours_cpu / frames * 1e3:.1f} ms CPU, ratio {raw / ours_bytes:.3f}"
        + (f"; dcmcjpls failed on {len(failed)}: {', '.join(failed[:3])}" if failed else "")
    )


def orthanc_share_row(fs: IngestSet) -> Measured:
    """Orthanc HTTP with JPEG-LS ingest transcoding on the set's files, for PEER_BUDGET_S s
    of sending at most: MB/s and ratio of the files it stored (those it crashed on count
    in neither, as in test_orthanc), and its CPU seconds (all threads) while it received
    them: the cores it used."""
    with orthanc_mod.running_orthanc(JPEG_LS_LOSSLESS) as orthanc:
        read_whole(fs.paths)
        sent = send_http(orthanc, fs.paths, PEER_BUDGET_S)
        sops = set(_stored_instances(orthanc))
        stored = orthanc.storage_bytes()
        log = orthanc.log.read_text(errors="replace")
    asserts = sorted(set(re.findall(r"^Orthanc: .*Assertion.*$", log, re.MULTILINE)))
    crashed = set(sent.crashed_paths)
    kept = [p for p in fs.paths[: sent.attempted] if p not in crashed]
    raw_by_sop = fs.raw_by_sop()
    peer = Measured("Orthanc HTTP, JPEG-LS", sent.seconds, len(kept))
    peer.raw_bytes = sum(fs.raw_bytes[p] for p in kept)
    peer.ratio = sum(raw_by_sop.get(s, 0) for s in sops) / stored if stored else None
    peer.cpu_seconds = sent.cpu_seconds
    crashes = f" ({', '.join(sent.crashes[:2])}, ...; {asserts[:1]})" if sent.crashes else ""
    peer.note = (
        f"{len(sops)} instances kept of {sent.attempted} sent"
        f"{' (time budget reached)' if sent.attempted < len(fs) else ''},"
        f" {len(sent.crashes)} crashes{crashes}; Orthanc CPU {sent.cpu_seconds:.1f} s over"
        f" {sent.seconds:.1f} s sending ({sent.cpu_seconds / max(sent.seconds, 1e-9):.2f} cores)"
    )
    return peer


@pytest.mark.parametrize("which", ["corpus", "sustained", "compressed"])
def test_share_of_ceiling(which: str, scratch: Path) -> None:
    """Issue 18: ingest MB/s (wall, start-up included) / the codec ceiling on as many cores,
    with 1 and 2 workers, and Orthanc with JPEG-LS ingest transcoding, in one run. On the
    compressed set (JPEG-LS inputs, kept as their bitstreams) the ceiling is their decode,
    and no Orthanc row (its JPEG-LS ingest transcoding has nothing to transcode there)."""
    if which == "corpus":
        fs = uncompressed_set(
            corpus_inputs({"CT", "MR"}, lossless=True), "corpus CT/MR, uncompressed"
        )
        sources = fs.paths
    elif which == "sustained":
        paths = sustained_paths()
        fs = uncompressed_set(paths, f"pacs-engine synth, {len(paths)} files")
        sources = [str(SUSTAINED_DIR)]
    else:
        paths = sustained_paths(COMPRESSED_DIR, COMPRESSED_FILES, "jpegls")
        label = f"pacs-engine synth, {len(paths)} files, JPEG-LS lossless (kept, decoded once)"
        fs = uncompressed_set(paths, label, COMPRESSED_SYNTAXES)
        sources = [str(COMPRESSED_DIR)]
    share = SHARES[which] = Share(fs.label, len(fs), fs.total_raw)
    for workers in (1, 2):
        read_whole(fs.paths)
        share.loads.append(os.getloadavg()[0])
        share.ingest[workers] = _ingest_wall(fs, workers, scratch, sources)
        share.loads.append(os.getloadavg()[0])
        share.ceiling[workers], share.fixed[workers] = parallel_ceiling(fs, workers, scratch)
    if which == "compressed":
        share.codecs = "the ceiling is the archive's decode of the kept bitstreams"
    else:
        share.codecs = dcmtk_against_archive_codec(fs.paths, scratch)
    if orthanc_mod.installed() and which != "compressed":
        share.loads.append(os.getloadavg()[0])
        share.orthanc = orthanc_share_row(fs)
    share.loads.append(os.getloadavg()[0])


def share_lines() -> list[str]:
    """The issue 18 table: per set, ingest and ceiling MB/s, the share, Orthanc."""
    out = []
    for which, share in SHARES.items():
        target = SHARE_TARGETS.get(which)
        loads = ", ".join(f"{load:.1f}" for load in share.loads)
        out.append(
            f"{which}: {share.label}: {share.files} files, {share.raw_bytes / 1e6:.1f} MB pixels"
            f" (1-minute load average before each row: {loads})"
        )
        for workers, ours in share.ingest.items():
            ceiling = share.ceiling[workers]
            of = _quotient(ours.mb_per_s, ceiling.mb_per_s)
            verdict = _check(of, target) if workers == 2 and target is not None else "-"
            out.append(
                f"  {workers} worker(s): ingest {_fmt(ours.mb_per_s, '.1f')} MB/s (wall"
                f" {_fmt(ours.seconds, '.2f')} s, ratio {_fmt(ours.ratio, '.3f')} with the"
                f" headers, {_fmt(ours.pixel_ratio, '.3f')} of the pixels folder alone), ceiling"
                f" {_fmt(ceiling.mb_per_s, '.1f')} MB/s on {workers} core(s) (ratio"
                f" {_fmt(ceiling.ratio, '.3f')} of the frames; {ceiling.note}):"
                f" {_fmt(of, '.2f')} of it"
                + (f" (target >= {target} with 2: {verdict})" if target is not None else "")
            )
            by_cpu = _quotient(ceiling.cpu_seconds, ours.cpu_seconds)
            out.append(
                f"    CPU: ingest {_fmt(ours.cpu_seconds, '.1f')} s (every process), ceiling"
                f" {_fmt(ceiling.cpu_seconds, '.1f')} s: the codec's share {_fmt(by_cpu, '.2f')}"
            )
            fixed = share.fixed[workers]
            out.append(
                "    the contract's fixed work alone (read, SHA-256, BLAKE3, encode or decode,"
                " write, sync)"
                f" on {workers} core(s): {_fmt(fixed.mb_per_s, '.1f')} MB/s,"
                f" {_fmt(_quotient(fixed.mb_per_s, ceiling.mb_per_s), '.2f')} of the ceiling;"
                f" the ingest {_fmt(_quotient(ours.mb_per_s, fixed.mb_per_s), '.2f')} of it"
            )
            out.append(f"    bound: {ours.note}")
            if ours.report is not None and ceiling.seconds:
                out.append(f"    bounds: {_share_bounds(ours.report, ceiling.seconds)}")
        out.append(f"  codecs: {share.codecs}")
        peer = share.orthanc
        two = share.ingest.get(2)
        if peer is not None and two is not None:
            x = _quotient(two.mb_per_s, peer.mb_per_s)
            ratio_ok = two.ratio is not None and peer.ratio is not None and two.ratio >= peer.ratio
            verdict = _check(x, TARGET_VS_ORTHANC_18) if ratio_ok else "MISSES (ratio)"
            ours_per_cpu = _quotient(two.raw_bytes, two.cpu_seconds)
            per_cpu = _quotient(ours_per_cpu, _quotient(peer.raw_bytes, peer.cpu_seconds))
            out.append(
                f"  vs Orthanc HTTP JPEG-LS ({_fmt(peer.mb_per_s, '.1f')} MB/s, ratio"
                f" {_fmt(peer.ratio, '.3f')}, {peer.note}): 2 workers {_fmt(x, '.2f')}x"
                f" (target >= {TARGET_VS_ORTHANC_18}x at an equal or better ratio: {verdict});"
                f" per CPU second {_fmt(per_cpu, '.2f')}x"
            )
    return out


def _share_bounds(report: dict[str, Any], ceiling_s: float) -> str:
    """The most the share could be, given what the ingest must do besides the codec: its
    start-up (the codec alone from the first encode to the end), and the contract's hashes
    (the file's SHA-256 and the frames' BLAKE3, which the ceiling does not compute)."""
    parts = []
    first = report.get("first_encode_seconds")
    if first is not None:
        parts.append(
            f"first encode at {first:.2f} s, then nothing but the codec: at most"
            f" {ceiling_s / (ceiling_s + first):.2f}"
        )
    workers = [t for p, t in report.get("stage_seconds", {}).items() if p.startswith("worker")]
    codec = sum(t[s]["cpu"] for t in workers for s in ("encode", "decode") if s in t)
    hashes = sum(t["hash"]["cpu"] for t in workers if "hash" in t)
    if codec:
        parts.append(
            f"the hashes alone ({hashes:.2f} s of CPU against the codec's {codec:.2f} s): at"
            f" most {codec / (codec + hashes):.2f}"
        )
    return "; ".join(parts) or "no stage times in this tree's report"


# --- the table ----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _quotient(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _check(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "meets" if value >= target else "MISSES"


def table_lines(fs: IngestSet) -> list[str]:
    """The rows, then the derived ratios against issue 4's targets."""
    out = [
        f"files: {fs.label}: {len(fs)} files ({fs.left_out} refused by the scanner left out),"
        f" {fs.file_bytes / 1e6:.1f} MB on disk, {fs.total_raw / 1e6:.1f} MB decoded pixels,"
        f" {len(set(fs.sop_uids.values()))} distinct SOP Instance UIDs",
        f"{'row':<44} {'inst/s':>8} {'raw MB/s':>9} {'ratio':>6} {'wall s':>7}"
        f" {'peak RSS MiB':>13}",
    ]
    for r in ROWS.values():
        out.append(
            f"{r.name:<44} {_fmt(r.per_s, '8.1f')} {_fmt(r.mb_per_s, '9.1f')}"
            f" {_fmt(r.ratio, '6.3f')} {_fmt(r.seconds, '7.2f')} {_fmt(r.peak_rss_mib, '13.0f')}"
        )
    out.append("notes:")
    out += [
        f"  {r.name}: {r.note}" + (f" [RSS: {r.rss_note}]" if r.rss_note else "")
        for r in ROWS.values()
    ]
    ceiling = ROWS.get("codec ceiling (1 core)", Measured(""))
    out.append("derived (issue 4 targets):")
    ours_rows = []
    for option in MODES:
        one = ROWS.get(_pacs_engine_row(1, option), Measured(""))
        two = ROWS.get(_pacs_engine_row(2, option), Measured(""))
        ours_rows += [one, two]
        scaling = _quotient(two.per_s, one.per_s)
        verdict = _check(scaling, TARGET_SCALING)
        out.append(
            f"  {two.name} / {one.name}: {_fmt(scaling, '.2f')}x inst/s"
            f" (target >= {TARGET_SCALING}x: {verdict})"
        )
        of_ceiling = _quotient(one.mb_per_s, ceiling.mb_per_s)
        out.append(
            f"  {one.name} / codec ceiling: {_fmt(of_ceiling, '.2f')} in MB/s"
            f" (target >= {TARGET_OF_CEILING}: {_check(of_ceiling, TARGET_OF_CEILING)})"
        )
    for transport in ("HTTP", "storescu"):
        peer = ROWS.get(f"Orthanc {transport}, JPEG-LS", Measured(""))
        for ours in ours_rows:
            if not ours.name:
                continue
            inst, mbs = _quotient(ours.per_s, peer.per_s), _quotient(ours.mb_per_s, peer.mb_per_s)
            ratio_ok = (
                ours.ratio is not None and peer.ratio is not None and ours.ratio >= peer.ratio
            )
            both = min(inst, mbs) if inst is not None and mbs is not None else None
            verdict = _check(both, TARGET_VS_ORTHANC) if ratio_ok or both is None else "MISSES"
            out.append(
                f"  {ours.name} / Orthanc {transport} JPEG-LS: {_fmt(inst, '.2f')}x inst/s,"
                f" {_fmt(mbs, '.2f')}x MB/s, ratio {_fmt(ours.ratio, '.3f')} vs"
                f" {_fmt(peer.ratio, '.3f')} (target >= {TARGET_VS_ORTHANC}x at an equal or"
                f" better ratio: {verdict})"
            )
    return out


def test_summary(ingest_set: IngestSet) -> None:
    """Print the table (the last test; run with -s)."""
    if not ROWS and not SHARES:
        pytest.skip("no rows measured")
    lines = table_lines(ingest_set) if ROWS else []
    if SHARES:
        lines += ["share of the codec ceiling on as many cores (issue 18):", *share_lines()]
    print("\n" + "\n".join(lines))


#: Written as `sitecustomize.py` on the ingest's PYTHONPATH by `test_start_up_and_end`: each
#: process appends "pid time" to ENCODE_TIMES whenever it enters its "encode" stage (the
#: stage clock of `pacs_engine.stages`; an older tree without it is not probed).
ENCODE_PROBE = """
import os, time
try:
    from pacs_engine import stages
except ImportError:
    stages = None
if stages is not None and os.environ.get("ENCODE_TIMES"):
    enter = stages.StageClock.enter
    def probed(self, name, enter=enter):
        if name == "encode":
            with open(os.environ["ENCODE_TIMES"], "a") as out:
                out.write(f"{os.getpid()} {time.time()}\\n")
        return enter(self, name)
    stages.StageClock.enter = probed
"""


def test_start_up_and_end(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: when the first encode starts after launch, how long the last worker runs
    alone, the workers' idle time; `ingest --workers 2` on the corpus's uncompressed CT/MR
    (or the uncompressed files under PACS_ENGINE_BENCH_FILES).

    One run per call: compare trees with ab_compare.py (several rounds, alternating).
    """
    folder = os.environ.get("PACS_ENGINE_BENCH_FILES")
    if folder:
        paths = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())
    else:
        paths = corpus_inputs({"CT", "MR"}, lossless=True)
    fs = uncompressed_set(paths, "files")
    probe, times = scratch / "probe", scratch / "encode-times.txt"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(ENCODE_PROBE)
    paths = [str(probe), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("ENCODE_TIMES", str(times))
    read_whole(fs.paths)
    archive = scratch / "archive"
    cmd = [str(PACS_ENGINE), "ingest", *fs.paths, "--archive", str(archive), "--no-progress"]
    launched = time.time()
    done = run_measured([*cmd, "--workers", "2"], scratch)
    assert done.code == 0, done.stderr.read_text()[-2000:]
    (report_path,) = (archive / "reports").glob("ingest-*.json")
    report = json.loads(report_path.read_text())
    assert report["inputs"] == len(fs) and report["balanced"]
    entered: dict[str, list[float]] = {}
    for line in times.read_text().splitlines() if times.exists() else []:
        pid, at = line.split()
        entered.setdefault(pid, []).append(float(at))
    first = f"{min(min(t) for t in entered.values()) - launched:.3f}" if entered else "-"
    lasts = sorted(max(t) for t in entered.values())
    alone = f"{lasts[-1] - lasts[0]:.3f}" if len(lasts) > 1 else "-"
    idle = sum(
        stages.get("idle", {"wall": 0.0})["wall"]
        for process, stages in report.get("stage_seconds", {}).items()
        if process.startswith("worker")
    )
    phases = report["phase_seconds"]
    print(f"\nstart-up and end of a run (issue 18): {len(fs)} files, {fs.total_raw / 1e6:.1f} MB")
    print(
        "run                wall s  first encode s  last worker alone s  idle s  scan s  encode s"
    )
    print(
        f"ingest 2 workers  {done.seconds:7.3f}  {first:>14}  {alone:>19}  {idle:6.3f}"
        f"  {phases.get('scan', 0.0):6.3f}  {phases.get('encode', 0.0):8.3f}"
    )


# --- (f) start-up: launch to the first encode (issue 18) -----------------------------------

#: The start-up set: 1,000 small files (64 x 64, explicit and implicit VR, CT and MR),
#: written once by `pacs-engine synth` to PACS_ENGINE_BENCH_STARTUP_DIR.
STARTUP_DIR = Path(
    os.environ.get(
        "PACS_ENGINE_BENCH_STARTUP_DIR", Path(tempfile.gettempdir()) / "pacs-bench-startup-1000"
    )
)
STARTUP_FILES = 1000
#: Launches measured (alternating with the `python -c pass` floor); medians are reported.
STARTUP_ROUNDS = int(os.environ.get("PACS_ENGINE_BENCH_STARTUP_ROUNDS", "5"))
STARTUP_TARGET_S = 0.3
STARTUP_LIMIT_S = 120.0  # bound on one launch


def startup_paths() -> list[str]:
    """The start-up set's files, written by `pacs-engine synth` unless already there."""
    found = sorted(str(p) for p in STARTUP_DIR.rglob("*.dcm"))
    if len(found) != STARTUP_FILES:
        shutil.rmtree(STARTUP_DIR, ignore_errors=True)
        cmd = [str(PACS_ENGINE), "synth", str(STARTUP_DIR), "--studies", "5"]
        cmd += ["--series-per-study", "2", "--slices", "100", "--rows", "64", "--columns", "64"]
        cmd += ["--syntaxes", "explicit,implicit", "--modalities", "CT,MR", "--no-progress"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        found = sorted(str(p) for p in STARTUP_DIR.rglob("*.dcm"))
    assert len(found) == STARTUP_FILES, f"{STARTUP_DIR}: {len(found)} files"
    return found


#: What each process of `pacs-engine ingest` imports before its first encode can start: the
#: command (its parser, then what `ingest` imports), the workers' forkserver (its preload).
STARTUP_IMPORTS = {
    "ingesting process imports": "from pacs_engine.cli import build_parser\n"
    "try:\n    build_parser('ingest')\n"
    "except TypeError:  # a tree that builds every command's parser\n    build_parser()\n"
    "import pacs_engine.ingest.archive, pacs_engine.executors",
    "forkserver preload imports": "from importlib import import_module\n"
    "from pacs_engine.executors import FORKSERVER_PRELOAD\n"
    "for name in [*FORKSERVER_PRELOAD, 'pacs_engine.cli']:  # and the command's main module\n"
    "    import_module(name)",
    "python -c pass": "pass",
}


def _child_cpu(code: str, env: dict[str, str]) -> float:
    """CPU seconds (user + system) of `python -c code` in a new interpreter."""
    before = _children_cpu()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=STARTUP_LIMIT_S)
    return _children_cpu() - before


def _compiled_once(scratch: Path) -> dict[str, str]:
    """This environment with Python's bytecode cache on, in `scratch` (PYTHONPYCACHEPREFIX):
    an installed package runs from compiled modules (pip compiles them), while a process
    started with PYTHONDONTWRITEBYTECODE compiles every module of the package again, about
    0.06 s of CPU in each of the command and its forkserver. The tree measured stays as it
    is (no __pycache__ is written beside its modules)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    return env


def test_startup(scratch: Path) -> None:
    """Issue 18: seconds from the launch of `pacs-engine ingest --workers 2` on 1,000 small
    files to the first encode's start (the stage clock's, probed in every process), median
    of STARTUP_ROUNDS launches, beside the launch of `python -c pass` in the same rounds;
    and the CPU seconds of what the ingesting process and the forkserver import before it
    (STARTUP_IMPORTS), which a loaded machine does not inflate as it does wall time. Every
    launch runs from compiled modules, as an installed package does (`_compiled_once`).

    One tree per call: compare trees with ab_compare.py (several rounds, alternating).
    """
    paths = startup_paths()
    read_whole(paths)
    probe, times = scratch / "probe", scratch / "encode-times.txt"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(ENCODE_PROBE)
    env = dict(_compiled_once(scratch), ENCODE_TIMES=str(times))
    env["PYTHONPATH"] = os.pathsep.join([str(probe), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [str(PACS_ENGINE), "ingest", str(STARTUP_DIR), "--no-progress", "--json"]
    cmd += ["--workers", "2"]
    # Untimed: compiles what the command and its workers import (the cache above).
    warm = [*cmd, "--archive", str(scratch / "warm")]
    warmed = subprocess.run(warm, env=env, capture_output=True, text=True, timeout=600)
    assert warmed.returncode == 0, warmed.stderr[-2000:]
    floors, firsts, walls, reported = [], [], [], []
    cpu: dict[str, list[float]] = {label: [] for label in STARTUP_IMPORTS}
    for round_ in range(STARTUP_ROUNDS):
        for label, code in STARTUP_IMPORTS.items():
            cpu[label].append(_child_cpu(code, env))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=STARTUP_LIMIT_S)
        floors.append(time.perf_counter() - started)
        archive = scratch / f"archive-{round_}"
        times.unlink(missing_ok=True)
        launched, started = time.time(), time.perf_counter()
        done = subprocess.run(
            [*cmd, "--archive", str(archive)],
            env=env,
            capture_output=True,
            text=True,
            timeout=STARTUP_LIMIT_S,
        )
        walls.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout)
        assert report["archived"] == STARTUP_FILES and report["balanced"]
        stamps = [float(line.split()[1]) for line in times.read_text().splitlines()]
        firsts.append(min(stamps) - launched)
        if report.get("first_encode_seconds") is not None:  # an older tree has none
            reported.append(report["first_encode_seconds"])
        shutil.rmtree(archive)
    verdict = "met" if median(firsts) < STARTUP_TARGET_S else "MISSED"
    print(
        f"\nstart-up (issue 18): ingest --workers 2 of {STARTUP_FILES:,} files (64 x 64), "
        f"{STARTUP_ROUNDS} launches, load {os.getloadavg()[0]:.2f}; first encode target "
        f"< {STARTUP_TARGET_S} s: {verdict} (modules compiled once, as installed)"
    )
    print("run                               median s   min s   max s")
    rows = [
        ("launch to first encode", firsts),
        ("report first_encode_seconds", reported),
        ("python -c pass (floor)", floors),
        ("whole ingest (wall)", walls),
    ]
    for label, values in rows:
        if values:
            print(f"{label:32}  {median(values):8.3f}  {min(values):6.3f}  {max(values):6.3f}")
    # CPU, not wall: what a process must do before the first encode, whatever the load.
    print("import CPU (user + system)        median s   min s   max s")
    for label, values in cpu.items():
        print(f"{label:32}  {median(values):8.3f}  {min(values):6.3f}  {max(values):6.3f}")


#: Rounds of the cold-source rows: each round one ingest of files in memory, one of
#: files evicted from it, alternating.
COLD_ROUNDS = int(os.environ.get("PACS_ENGINE_BENCH_COLD_ROUNDS", "2"))


def test_cold_sources(scratch: Path) -> None:
    """Issue 18: a migration reads files that are not in memory. `ingest --workers 2` of the
    sustained set once its files are evicted from the page cache (posix_fadvise DONTNEED)
    against the same ingest with them read beforehand, alternating, COLD_ROUNDS rounds:
    wall seconds and how long the workers' reads waited (the report's read stage, wall
    less CPU). A worker reads each file ahead while it encodes the ones before
    (`inputs.Readahead`): the reads' waits overlap the encodes. On a slower disk or a
    network file system the cold rows would wait longer; compare trees with ab_compare.py."""
    paths = sustained_paths()
    fs = uncompressed_set(paths, f"pacs-engine synth, {len(paths)} files")
    rows: dict[str, list[Measured]] = {"in memory": [], "evicted": []}
    loads = []
    for _ in range(COLD_ROUNDS):
        for kind, rows_of_kind in rows.items():
            if kind == "in memory":
                read_whole(fs.paths)
            else:
                fadvise_dontneed(fs.paths)
            loads.append(os.getloadavg()[0])
            rows_of_kind.append(_ingest_wall(fs, 2, scratch, [str(SUSTAINED_DIR)]))
    warm = median(m.seconds for m in rows["in memory"])
    cold = median(m.seconds for m in rows["evicted"])
    print(
        f"\ncold sources (issue 18): ingest --workers 2 of {len(fs):,} files,"
        f" {fs.total_raw / 1e6:.0f} MB of pixels, {COLD_ROUNDS} rounds alternating, load"
        f" {', '.join(f'{load:.1f}' for load in loads)}: median wall in memory {warm:.2f} s,"
        f" evicted {cold:.2f} s: evicted / in memory {cold / warm:.3f}"
    )
    for kind, measured in rows.items():
        for m in measured:
            print(f"  {kind}: wall {m.seconds:.2f} s; {m.note}")
