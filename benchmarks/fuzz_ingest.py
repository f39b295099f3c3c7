"""Fuzz the ingest: mutated real files, ingested under a memory cap, every outcome checked.

    python benchmarks/fuzz_ingest.py [--seconds 600] [--batch 24] [--seed 1] [--cap-gib 2]
                                     [--workers 1] [--findings DIR] [SOURCE ...]

The sources default to the shared corpus ($PACS_ENGINE_CORPUS). A seeded mutation
loop in plain Python (atheris, when installed, drives the same
`check_batch` from fuzz/fuzz_ingest.py). Each round takes `--batch` real DICOM files
with pixel data (the shared corpus by default, files up to 1 MB; each transfer syntax
as likely, so the compressed ones are not drowned by the many native files), mutates each one
(flipped bytes, cuts around and inside the pixel data, declared sizes patched to
65535 in the data set or the bitstream, frame counts, inserted and deleted ranges,
splices), ingests them into a fresh archive with `--workers` worker processes, and
checks:

- the report: inputs = archived + duplicates + conflicts + quarantined = files given;
- every input is accounted for: archived, listed as a duplicate, or in the quarantine
  with its exact bytes;
- every archived instance exports byte for byte, and its frames equal pydicom's
  `pixel_array` where pydicom decodes the file; an archived compressed instance that
  pydicom refuses is a finding (Deflated Image Frame Compression excepted: pydicom
  cannot decode it);
- nothing escapes the ingest (an exception is a finding, with its input saved).

The whole process runs under RLIMIT_DATA (`--cap-gib`, inherited by the workers): a
decoder that allocates what a file declares fails there. RLIMIT_AS would also cap the
index's LMDB map, which reserves a large address range without using it.

At the end it prints inputs tried, rounds, outcomes, peak RSS of this process and of
the workers (getrusage RUSAGE_SELF / RUSAGE_CHILDREN ru_maxrss) and the findings; each
finding's inputs are saved under `--findings`. Not part of `pytest tests/`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import pixel_array

from pacs_engine import Archive, ScanError, scan
from pacs_engine.executors import make_executor

DEFLATED_FRAMES = "1.2.840.10008.1.2.8.1"  # Deflated Image Frame Compression: pydicom cannot
MAX_SEED_BYTES = 1 << 20
DEFAULT_CORPUS = Path(
    os.environ.get("PACS_ENGINE_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
)
HUGE = 65535
RENEW_POOL = 20  # rounds


def seeds(sources: list[Path]) -> dict[str, list[bytes]]:
    """Files with pixel data the scanner reads, up to MAX_SEED_BYTES, by transfer syntax."""
    out: dict[str, list[bytes]] = {}
    for source in sources:
        files = (
            [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        )
        for path in files:
            if path.stat().st_size > MAX_SEED_BYTES:
                continue
            data = path.read_bytes()
            try:
                header = scan(data)
            except ScanError:
                continue
            if header.pixel is not None:
                out.setdefault(header.transfer_syntax_uid or "", []).append(data)
    return out


# --- mutations: each takes the file, its pixel location and a Random ------------------


def _pixel_span(data: bytes) -> tuple[int, int, int]:
    """(element offset, value offset, value end) of the pixel data (0s when not found)."""
    try:
        pixel = scan(data).pixel
    except ScanError:
        pixel = None
    if pixel is None:
        return 0, 0, len(data)
    return pixel.element_offset, pixel.value_offset, min(pixel.value_end, len(data))


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    """XOR 1-8 bytes, half the time inside the pixel data."""
    out = bytearray(data)
    _, start, end = _pixel_span(data)
    for _ in range(rng.randint(1, 8)):
        lo, hi = (start, end) if rng.random() < 0.5 and end > start else (0, len(out))
        at = rng.randrange(lo, hi)
        out[at] ^= rng.randint(1, 255)
    return bytes(out)


def cut_near_pixels(data: bytes, rng: random.Random) -> bytes:
    """Cut the file 8 bytes before to 16 into its pixel element, or anywhere in its value."""
    element, start, end = _pixel_span(data)
    if rng.random() < 0.5:
        return data[: max(0, element + rng.randint(-8, 16))]
    return data[: rng.randrange(start, max(start + 1, end))]


def cut_anywhere(data: bytes, rng: random.Random) -> bytes:
    """Cut the file at a random length."""
    return data[: rng.randrange(len(data))]


def _dataset_with(data: bytes, change: Callable[[pydicom.Dataset], None]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    change(ds)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, force_encoding=True)
    return out.getvalue()


def huge_dataset(data: bytes, rng: random.Random) -> bytes:
    """Rows and/or Columns (or Number of Frames) of the data set set to a huge value."""
    keyword = rng.choice(["Rows", "Columns", "Rows+Columns", "NumberOfFrames"])

    def change(ds: pydicom.Dataset) -> None:
        for k in keyword.split("+"):
            setattr(ds, k, HUGE if k != "NumberOfFrames" else rng.choice([HUGE, 2**31 - 1]))

    return _dataset_with(data, change)


def huge_bitstream(data: bytes, rng: random.Random) -> bytes:
    """The first J2K SIZ or JPEG SOF in the pixel data declares 65535 x 65535 pixels."""
    _, start, end = _pixel_span(data)
    value = data[start:end]
    for marker, size_at, width in (
        (b"\xff\x4f\xff\x51", (8, 12), 4),
        (b"\xff\xc0", (5, 7), 2),
        (b"\xff\xc1", (5, 7), 2),
        (b"\xff\xc3", (5, 7), 2),
        (b"\xff\xf7", (5, 7), 2),
    ):
        at = value.find(marker)
        if at >= 0:
            out = bytearray(data)
            for offset in size_at:
                if rng.random() < 0.8:
                    pos = start + at + offset
                    out[pos : pos + width] = HUGE.to_bytes(width, "big")
            return bytes(out)
    return flip_bytes(data, rng)


def insert_or_delete(data: bytes, rng: random.Random) -> bytes:
    """Insert random bytes at, or delete a range from, a random place."""
    at = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]
    return data[:at] + data[at + rng.randint(1, 64) :]


def huge_length(data: bytes, rng: random.Random) -> bytes:
    """A 32-bit length field near the pixel data set to a large value."""
    element, start, _ = _pixel_span(data)
    at = max(0, rng.randrange(max(1, element - 64), max(2, start)) - 4)
    out = bytearray(data)
    out[at : at + 4] = struct.pack("<I", rng.choice([0xFFFFFFF0, 2**31, 1 << 24, 0xFFFFFFFF]))
    return bytes(out)


MUTATIONS: list[Callable[[bytes, random.Random], bytes]] = [
    flip_bytes,
    flip_bytes,
    cut_near_pixels,
    cut_anywhere,
    huge_dataset,
    huge_bitstream,
    huge_bitstream,
    insert_or_delete,
    huge_length,
]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of `data` (a failing one falls back to a byte flip): (its name, bytes)."""
    mutation = rng.choice(MUTATIONS)
    try:
        return mutation.__name__, mutation(data, rng)
    except Exception:  # pydicom may not rewrite a strange file: flip bytes instead
        return "flip_bytes", flip_bytes(data, rng)


# --- the checks --------------------------------------------------------------------


def _pydicom_pixels(data: bytes, as_rgb: bool) -> tuple[np.ndarray | None, str, int]:
    """pydicom's pixel_array of the file, or None and why it has none; and its BitsStored."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if syntax == DEFLATED_FRAMES:
            return None, "deflated frames", 0
        return pixel_array(ds, as_rgb=as_rgb), "", int(ds.get("BitsStored") or 0)
    except Exception as error:  # pydicom refuses it
        return None, f"pydicom: {type(error).__name__}: {error}"[:200], 0


def as_bits_stored(frames: np.ndarray, bits: int) -> np.ndarray:
    """Integer samples cut to their low `bits` (sign-extended when signed), as pydicom gives
    native pixels; the archive keeps the bits above BitsStored too."""
    if frames.dtype.kind not in "ui" or not 0 < bits < 8 * frames.dtype.itemsize:
        return frames
    wide = frames.astype(np.int64) & ((1 << bits) - 1)
    if frames.dtype.kind == "i":
        sign = 1 << (bits - 1)
        wide = (wide ^ sign) - sign
    return wide.astype(frames.dtype)


def check_batch(
    inputs: dict[str, bytes], workdir: Path, executor: Any, notes: list[str]
) -> tuple[Counter, list[str]]:
    """Ingest `inputs` (file name: bytes) into a new archive; (outcomes, findings).

    What is odd but no fault of the ingest goes to `notes`."""
    folder = workdir / "in"
    folder.mkdir()
    for name, data in inputs.items():
        (folder / name).write_bytes(data)
    archive = Archive.create(workdir / "archive")
    findings: list[str] = []
    outcomes: Counter = Counter()
    try:
        report = archive.ingest([folder], workers=0, executor=executor)
    except Exception as error:  # nothing may escape the ingest
        return outcomes, [f"ingest raised {error!r}: {traceback.format_exc(limit=3)}"]
    outcomes.update(
        archived=report.archived,
        duplicates=report.duplicates,
        conflicts=report.conflicts,
        quarantined=report.quarantined,
    )
    total = report.archived + report.duplicates + report.conflicts + report.quarantined
    if not report.inputs == total == len(inputs):
        findings.append(f"invariant: {len(inputs)} files, report {report.inputs} = {total}?")
    accounted: set[str] = set()
    for row in archive.index:
        name = Path(row["source_path"]).name
        accounted.add(name)
        accounted.update(Path(d["path"]).name for d in row.get("duplicates") or [])
        data = inputs.get(name)
        if data is None:
            findings.append(f"{name}: archived, but not an input")
            continue
        uid = row["SOPInstanceUID"]
        try:
            if archive.export_bytes(uid) != data:
                findings.append(f"{name}: the export differs from the input")
            if row.get("pixels"):
                as_rgb = row.get("color_conversion", "none") != "none"
                expected, why, bits = _pydicom_pixels(data, as_rgb)
                if expected is None:
                    if "Missing required element" in why:
                        # The archive's layout defaults it (docs/archive.md); not a decoding fault.
                        notes.append(f"{name}: archived, but {why}")
                    elif row.get("pixel_storage") == "bitstream" and why != "deflated frames":
                        findings.append(f"{name}: archived, but {why}")
                    continue
                frames = archive.frames(uid)
                if row.get("pixel_storage") == "native":
                    frames = as_bits_stored(frames, bits)
                if frames.size != expected.size or not np.array_equal(
                    frames.reshape(expected.shape), expected
                ):
                    findings.append(f"{name}: archived frames differ from pydicom's")
        except Exception as error:  # reading back what was archived must work
            findings.append(f"{name}: cannot read back: {error!r}"[:300])
    for record in archive.quarantine.records():
        kept = archive.quarantine.root / f"{record['sha256']}.dcm"
        names = [record["path"], *(a["path"] for a in record.get("also", []))]
        for path in names:
            name = Path(path).name
            accounted.add(name)
            data = inputs.get(name)
            if data is not None and hashlib.sha256(data).hexdigest() != record["sha256"]:
                findings.append(f"{name}: quarantined under another file's hash")
        if not kept.is_file():
            findings.append(f"{names[0]}: quarantine record without its bytes")
    missing = sorted(set(inputs) - accounted)
    if missing:
        findings.append(f"not archived, duplicate nor quarantined: {missing[:5]}")
    archive.close()
    return outcomes, findings


def workers_peak_mib(executor: Any) -> float:
    """The largest peak RSS (VmHWM) in MiB of the executor's live worker processes.

    The workers are forked by multiprocessing's forkserver, so they are not this process's
    children and RUSAGE_CHILDREN does not see them until the forkserver ends."""
    peak = 0.0
    for pid in list(getattr(getattr(executor, "pool", None), "_processes", None) or {}):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def run(
    sources: list[Path], seconds: float, batch: int, seed: int, workers: int, findings_dir: Path
) -> int:
    """The fuzz loop; prints its figures and returns the number of findings."""
    rng = random.Random(seed)
    corpus = seeds(sources)
    if not corpus:
        raise SystemExit(f"no seed files with pixel data in {[str(s) for s in sources]}")
    count = sum(map(len, corpus.values()))
    print(
        f"{count} seed files in {len(corpus)} transfer syntaxes (each as likely); "
        f"budget {seconds:.0f} s, {batch} inputs a round",
        flush=True,
    )
    syntaxes = sorted(corpus)
    # One pool for many rounds (started once); renewed now and then, as each worker keeps
    # every archive it wrote to open.
    executor = make_executor(workers) if workers else None
    start = time.monotonic()
    tried = rounds = 0
    workers_peak = 0.0
    outcomes: Counter = Counter()
    mutations: Counter = Counter()
    findings: list[str] = []
    notes: list[str] = []
    while time.monotonic() - start < seconds:
        inputs: dict[str, bytes] = {}
        for i in range(batch):
            name, data = mutate(rng.choice(corpus[rng.choice(syntaxes)]), rng)
            mutations[name] += 1
            inputs[f"r{rounds}_{i}_{name}.dcm"] = data
        with tempfile.TemporaryDirectory(prefix="pacs-fuzz-ingest-") as workdir:
            got, found = check_batch(inputs, Path(workdir), executor, notes)
        if executor is not None:
            workers_peak = max(workers_peak, workers_peak_mib(executor))
            if rounds % RENEW_POOL == RENEW_POOL - 1:
                executor.restart()
        outcomes.update(got)
        if found:
            saved = findings_dir / f"round{rounds}"
            saved.mkdir(parents=True, exist_ok=True)
            for name, data in inputs.items():
                (saved / name).write_bytes(data)
            findings += [f"round {rounds}: {f}" for f in found]
            print("\n".join(f"FINDING round {rounds}: {f}" for f in found), flush=True)
        tried += len(inputs)
        rounds += 1
        if rounds % 10 == 0:
            print(
                f"{time.monotonic() - start:7.0f} s  {tried} inputs  {dict(outcomes)}", flush=True
            )
    if executor is not None:
        executor.close()
    main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"inputs tried: {tried} in {rounds} rounds, {time.monotonic() - start:.0f} s")
    print(f"mutations: {dict(mutations)}")
    print(f"outcomes: {dict(outcomes)}")
    print(
        f"peak RSS: main {main:.0f} MiB, workers {workers_peak:.0f} MiB (VmHWM), "
        f"RUSAGE_CHILDREN {children:.0f} MiB (the forkserver)"
    )
    print(f"findings: {len(findings)}" + "".join(f"\n  {f}" for f in findings[:50]))
    print(f"notes: {len(notes)}" + "".join(f"\n  {n}" for n in notes[:10]))
    return len(findings)


def main() -> None:
    """Parse the command line, cap memory, fuzz."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, default=[DEFAULT_CORPUS])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cap-gib", type=float, default=2)
    parser.add_argument("--findings", type=Path, default=Path("/tmp/pacs-fuzz-ingest-findings"))
    args = parser.parse_args()
    cap = int(args.cap_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    warnings.simplefilter("ignore")  # pydicom warns about every odd value it meets
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    found = run(args.sources, args.seconds, args.batch, args.seed, args.workers, args.findings)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
