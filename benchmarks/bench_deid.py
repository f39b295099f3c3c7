"""De-identified research copies (issue 17): pacs_engine.deid against dicom-anonymizer.

Run from the repository root (the table is printed, so use -s):

    .venv/bin/python -m pytest benchmarks/bench_deid.py -q -s -p no:cacheprovider

Files: the corpus's CT and MR files that pydicom decodes, from an uncompressed or lossless
transfer syntax, outside malformed/ (`corpus_inputs({"CT", "MR"}, lossless=True)`), first
ingested into an archive of record (default codec; not timed). Rows, in one run, over the
same instances, MB/s of the source files' bytes and instances/s:
- dicom-anonymizer 2.1 (its PS3.15 2026c Basic Profile table): per file, pydicom reads it,
  `anonymize_dataset` rewrites it, pydicom writes it to memory; one process.
- pacs_engine header rewrite: `Deidentifier.apply` on each file's bytes (exported from the
  archive beforehand, not timed), Basic Profile, at the byte level (pydicom where that
  does not apply); one process. The like-for-like row.
- pacs_engine `deidentify` archive to archive, in process (workers 0) and with 2 workers
  asked (a set under `IN_PROCESS_BELOW` instances is still copied in process: then a
  second copy in a warm process): each instance's header blob
  de-identified (`Deidentifier.apply_header`), its stored chunks copied as they are (no
  decode, no encode), parts written and committed: what `ingest --deidentify` costs end to
  end. The research archive is then verified (not timed).
Ratios are against dicom-anonymizer's row of the same run, of wall time (x) and of this
process's CPU seconds (x CPU; none for a row run in worker processes). Only correctness is asserted.
After the table, per `deidentify` row: how many instances the byte-level rewrite left to
pydicom, by reason, and the report's stage times (CPU/wall seconds) of the header
rewrites and of writing the parts (where the time goes: fsync, commit, chunk copy ...).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from io import BytesIO
from pathlib import Path

import pydicom
from dicomanonymizer import anonymize_dataset
from dicomanonymizer.simpledicomanonymizer import initialize_actions

from benchmarks.conftest import corpus_inputs
from pacs_engine.deid import Deidentifier, Key, deidentify, make_key
from pacs_engine.deid.run import IN_PROCESS_BELOW
from pacs_engine.ingest.archive import Archive, open_archive


def _rules() -> dict:
    return initialize_actions("dicomfields_2026c")


def _dicom_anonymizer(files: list[bytes]) -> None:
    for data in files:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        anonymize_dataset(ds, base_rules_gen=_rules)
        ds.save_as(BytesIO(), enforce_file_format=False)


def _engine(engine: Deidentifier, files: list[bytes]) -> None:
    for data in files:
        engine.apply(data)


def _since(start: float, cpu: float) -> tuple[float, float]:
    """(wall, CPU) seconds of this process since `start`, `cpu`: on a loaded machine the
    CPU seconds vary less than the wall time, which waits for the other processes."""
    return time.perf_counter() - start, time.process_time() - cpu


def test_bench_deid() -> None:
    paths = corpus_inputs({"CT", "MR"}, lossless=True)
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        root = Path(tmp)
        inputs = root / "inputs"
        inputs.mkdir()
        for number, path in enumerate(paths):
            shutil.copy(path, inputs / f"{number}.dcm")
        with Archive.open_or_create(root / "record") as record:
            assert record.ingest([inputs], workers=2).balanced
        with open_archive(root / "record") as record:
            files = [record.export_bytes(row["SOPInstanceUID"]) for row in record.index]
        megabytes = sum(len(f) for f in files) / 1e6
        key = make_key(root / "key")
        rows: list[tuple[str, float, float]] = []  # label, wall s, CPU s (0: not measured)
        fallbacks: dict[int, dict[str, int]] = {}
        stages: dict[int, dict[str, dict[str, list[float]]]] = {}  # CPU, wall s per stage

        start, cpu = time.perf_counter(), time.process_time()
        _dicom_anonymizer(copy.copy(files))
        rows.append(("dicom-anonymizer 2.1, 1 process", *_since(start, cpu)))

        engine = Deidentifier(Key.load(key))
        start, cpu = time.perf_counter(), time.process_time()
        _engine(engine, files)
        rows.append(("pacs_engine header rewrite, 1 process", *_since(start, cpu)))

        for workers in (0, 2):
            start, cpu = time.perf_counter(), time.process_time()
            research = root / f"research{workers}"
            report = deidentify(root / "record", research, key, workers=workers)
            # The label ends in a word: benchmarks/ab_compare.py reads a trailing number as
            # a figure, and both rows would get one label.
            # A source under IN_PROCESS_BELOW instances is copied in this process whatever
            # `workers` says: that row is then a second copy in a warm process.
            here = not workers or len(files) < IN_PROCESS_BELOW
            label = "in process" if not workers else f"{workers} workers asked"
            label += ", run here as a second copy" if workers and here else ""
            wall, cpu = _since(start, cpu)
            # Worker processes' CPU is not this process's (they are the forkserver's
            # children): no CPU figure for a row that ran in them.
            rows.append((f"pacs_engine deidentify, {label}", wall, cpu if here else 0.0))
            assert report.balanced and report.staged + len(report.withheld) == len(files)
            # Instances the byte-level rewrite left to pydicom, by reason (none on main).
            fallbacks[workers] = report.to_dict().get("fallbacks", {})
            stages[workers] = report.to_dict().get("stages", {})
            with open_archive(research) as copied:
                assert copied.verify(workers=2, record=False).ok

    base, base_cpu = rows[0][1:]
    print(f"\n{len(files)} instances, {megabytes:.1f} MB (CT and MR of the corpus)")
    print(f"{'row':<58}{'s':>8}{'MB/s':>9}{'inst/s':>9}{'x':>7}{'CPU s':>8}{'x CPU':>8}")
    for name, seconds, cpu_seconds in rows:
        print(
            f"{name:<58}{seconds:>8.2f}{megabytes / seconds:>9.1f}"
            f"{len(files) / seconds:>9.1f}{base / seconds:>7.2f}"
            + (
                f"{cpu_seconds:>8.2f}{base_cpu / cpu_seconds:>8.2f}"
                if cpu_seconds
                else f"{'-':>8}" * 2
            )
        )
    for workers, reasons in fallbacks.items():
        print(f"workers {workers}: left to pydicom {sum(reasons.values())} {reasons}")
        for process, times in stages.get(workers, {}).items():
            spent = ", ".join(f"{n} {c:.2f}/{w:.2f}" for n, (c, w) in sorted(times.items()))
            print(f"  {process} (CPU/wall s): {spent}")
