"""Verify an archive: every frame decodes (to its recorded hash), every file rebuilds exactly.

Instances are checked in batches, in the calling process or on an executor's
workers (the ingest's seam: a local process pool or a Dask cluster). A decoder
that crashes on damaged data kills only its worker: the batches in flight are
checked again one instance at a time on fresh workers, and the instance whose
check kills a worker again is reported as a mismatch, not a crash of `verify`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacs_engine.archive.prepare import frame_hashes_like
from pacs_engine.archive.verify_plan import confidence
from pacs_engine.archive.versions import version_rows
from pacs_engine.index.rows import Row
from pacs_engine.workers import CrashIsolation, Executor, Finished, PerProcess

if TYPE_CHECKING:
    from pacs_engine.archive.archive import Archive

BATCH = 32  # instances per task: enough to amortise a task, few to redo after a crash
DIED = "the checking process died on this instance (a decoder crash?)"


@dataclass
class VerifyReport:
    """The result of `Archive.verify`: instances checked and what did not match."""

    instances: int = 0
    frames: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    population: int = 0  # instances selected before sampling (the archive's, unselected)
    checked: list[str] | None = None  # the SOP Instance UIDs asked for (None: every one)
    sampled: bool = False
    seed: int | None = None
    started: str = ""  # UTC, as the rows' ingested_at
    seconds: float = 0.0
    record: Path | None = None  # where this verify was recorded (reports/verify-*.json)
    unrecorded: str | None = None  # why it could not be recorded

    @property
    def ok(self) -> bool:
        """True when every stored frame decodes to its recorded hash."""
        return not self.mismatches

    def add(self, instances: int, frames: int, mismatches: list[dict[str, Any]]) -> None:
        """Count a checked batch."""
        self.instances += instances
        self.frames += frames
        self.mismatches += mismatches

    def proves(self) -> str | None:
        """What the sample says about the instances it was drawn from (None: not a sample)."""
        if not self.sampled:
            return None
        return confidence(self.instances, len(self.mismatches), self.population)


def check_instance(archive: Archive, row: Row) -> tuple[int, str | None]:
    """Frames checked and what is wrong with one instance, every kept version (None: nothing)."""
    problems = []
    frames = 0
    checked: set[str] = set()  # pixel references already decoded (versions share them)
    versions = version_rows(row)
    for number, version in enumerate(versions):
        count, problem = _check_version(archive, version, checked)
        frames += count
        if problem:
            which = f"version {number} ({version['source_sha256'][:12]}): " * (len(versions) > 1)
            problems.append(which + problem)
    return frames, "; ".join(problems) or None


def _check_version(archive: Archive, row: Row, checked: set[str]) -> tuple[int, str | None]:
    """Frames checked and what is wrong with one version of an instance (None: nothing)."""
    problems = []
    frames = 0
    try:
        reference = json.dumps(row.get("pixels"), sort_keys=True)
        pixels = row.get("pixels")
        if pixels:
            # A rebuild-index keeps only the rows whose frames lie within the count.
            counted = archive.pixels.frames(pixels["array"])
            if pixels["first_frame"] + pixels["frames"] > counted:
                problems.append(
                    f"its array's zarr.json counts {counted} frames, short of its last: "
                    "rebuild-index would leave it out"
                )
        # No decoder reads the frames of a row flagged not verified: its bytes are the check.
        if row.get("pixels") and reference not in checked and not row.get("not_verified"):
            checked.add(reference)
            # Hashed as the row's were (BLAKE3, or BLAKE2b for rows written before it).
            hashes = frame_hashes_like(archive.frames_of(row), row["frame_hashes"])
            frames = len(hashes)
            # Original bitstreams kept undecoded have no recorded hashes: decoding them is
            # the check, and the rebuilt file's sha256 below proves their bytes.
            recorded = row["frame_hashes"] or hashes
            bad = [i for i, (a, b) in enumerate(zip(hashes, recorded, strict=True)) if a != b]
            if bad:
                problems.append(f"frames {bad} do not decode to the source pixels")
        rebuilt = archive.rebuild(row)
        if (
            not row.get("transcoded")
            and row["source_sha256"]  # "": a copy's native frames, checked above
            and hashlib.sha256(rebuilt).hexdigest() != row["source_sha256"]
        ):
            problems.append("the rebuilt file differs from the original")
    except Exception as error:  # a failure to read back is a finding, not a crash
        problems.append(f"cannot read back: {error!r}")
    return frames, "; ".join(problems) or None


def check_batch(archive: Archive, uids: list[str]) -> tuple[int, int, list[dict[str, Any]]]:
    """(instances, frames, mismatches) of the instances `uids` (gone ones are skipped)."""
    instances = frames = 0
    mismatches = []
    for uid in uids:
        row = archive.index.get(uid)
        if row is None:
            continue
        instances += 1
        count, problem = check_instance(archive, row)
        frames += count
        if problem:
            mismatches.append(_mismatch(row, problem))
    return instances, frames, mismatches


_OPEN: PerProcess[str, Archive] = PerProcess()


def verify_task(root: str, uids: list[str]) -> tuple[int, int, list[dict[str, Any]]]:
    """`check_batch` in a worker process, on its own read-only opening of the archive."""
    from pacs_engine.archive.archive import open_archive

    return check_batch(_OPEN.get(root, lambda: open_archive(root)), uids)


def verify_here(
    archive: Archive,
    progress: Callable[[str, bool], None] | None,
    uids: Iterable[str] | None = None,
) -> VerifyReport:
    """Check the instances `uids` (None: every one) in this process."""
    report = VerifyReport()
    rows = archive.index if uids is None else (archive.index.get(uid) for uid in uids)
    for row in rows:
        if row is None:  # gone since it was selected
            continue
        frames, problem = check_instance(archive, row)
        report.add(1, frames, [_mismatch(row, problem)] if problem else [])
        if progress:
            progress(row["SOPInstanceUID"], problem is None)
    return report


def verify_on(
    archive: Archive,
    executor: Executor,
    progress: Callable[[str, bool], None] | None = None,
    uids: Iterable[str] | None = None,
) -> VerifyReport:
    """Check the instances `uids` (None: every one) in batches on `executor`; see the module
    docstring."""
    report = VerifyReport()
    root = str(archive.path)

    def handle(done: Finished[tuple[str, ...]]) -> None:
        if done.killer:
            uid = done.task[0]
            row = archive.index.get(uid) or {"SOPInstanceUID": uid}
            result: tuple[int, int, list[dict[str, Any]]] = (1, 0, [_mismatch(row, DIED)])
        elif done.error is not None:
            raise done.error
        else:
            result = done.result
        report.add(*result)
        if progress:
            bad = {m["SOPInstanceUID"] for m in result[2]}
            for uid in done.task:
                progress(uid, uid not in bad)

    tasks = CrashIsolation(
        executor,
        start=lambda uids: executor.submit(verify_task, root, list(uids)),
        split=lambda uids: [(uid,) for uid in uids],
        handle=handle,
    )
    every = (row["SOPInstanceUID"] for row in archive.index)
    for batch in _batches(every if uids is None else uids, BATCH):
        tasks.make_room()
        tasks.submit(tuple(batch))
    tasks.finish()
    return report


def _batches(uids: Iterable[str], size: int) -> Iterator[list[str]]:
    """`uids`, `size` at a time."""
    batch: list[str] = []
    for uid in uids:
        batch.append(uid)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_rows_files(archive: Archive) -> list[dict[str, Any]]:
    """What is wrong with the rows files `rebuild-index` restores the index from: one that
    does not load (damaged: its SHA-256, its compression), and an archived version's header
    pack without one (its rows would be lost). A mismatch each, named by the file or the
    instance."""
    from pacs_engine.archive.blobs import ROWS_FILE_SUFFIXES, BlobError, load_rows

    root = archive.path
    problems = []
    for path in sorted((root / "headers").rglob("*")):
        if path.suffix in ROWS_FILE_SUFFIXES and path.is_file():
            try:
                load_rows(path.read_bytes())
            except (BlobError, OSError) as error:
                problem = f"{error}: rebuild-index would lose its rows"
                named = {"SOPInstanceUID": "-", "source_path": str(path)}
                problems.append(_mismatch(named, problem))
    packs: set[str] = set()
    for row in archive.index:
        for version in version_rows(row):
            header: Mapping[str, Any] = version.get("header") or {}
            pack = header.get("pack")
            if not pack or pack in packs:
                continue
            packs.add(pack)
            if not any((root / pack).with_suffix(s).is_file() for s in ROWS_FILE_SUFFIXES):
                reason = f"no rows file beside its header pack {pack}: rebuild-index would lose it"
                problems.append(_mismatch(row, reason))
    return problems


def _mismatch(row: Mapping[str, Any], problem: str) -> dict[str, Any]:
    return {
        "SOPInstanceUID": row["SOPInstanceUID"],
        "source_path": row.get("source_path"),
        "problem": problem,
    }
