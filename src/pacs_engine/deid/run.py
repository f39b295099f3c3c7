"""Make a de-identified research archive from an archive of record, without decoding a pixel.

Series by series of the source, in parts of BATCH instances (INLINE_BATCH in process; a
part may hold the end of one series and the start of the next): each instance's header blob is
de-identified (`engine.Deidentifier.apply_header`, in the worker processes), its stored
chunks are read as they are, and the part is written into the research archive by
`pacs_engine.archive.copies`: the same chunk bytes in the research series' arrays (the
source arrays' codec and metadata), the new header blobs in a pack per series, index rows naming
the new UIDs with the source's frame hashes, committed in one transaction. No codec
decodes or encodes anything. Resumable: an instance is copied once its row is
committed; a part killed before its commit is invisible, and the next run tidies the
research archive (`ingest.tidy.tidy_archive`) and redoes it.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from pacs_engine.archive.blobs import WHOLE, HeaderBlob, PackReader
from pacs_engine.archive.copies import (
    CopiedInstance,
    file_sha256,
    read_stored_many,
    write_copied_part,
)
from pacs_engine.archive.format import ArchiveError, is_pacs_archive
from pacs_engine.archive.verify import VerifyReport
from pacs_engine.codecs.sharding import Chunk
from pacs_engine.deid.engine import Deidentifier, DeidError, HeaderResult
from pacs_engine.deid.key import Key, KeyFileError
from pacs_engine.deid.profile import table
from pacs_engine.errors import PacsEngineError, ScanError
from pacs_engine.executors import make_executor
from pacs_engine.index.keys import UID_KEYWORDS, uid_problem
from pacs_engine.index.rows import Row
from pacs_engine.ingest.archive import Archive, open_archive
from pacs_engine.ingest.tidy import tidy_archive
from pacs_engine.scanning import scan
from pacs_engine.stages import Times, add_times, stage, task
from pacs_engine.storage import folder_identity, write_atomic
from pacs_engine.workers import Executor

#: What a research archive was made with: a later run must use the same, or UIDs and
#: pseudonyms of one archive would come from two keys.
SETTINGS = "deid.json"
#: Instances a task de-identifies, and a part commits: 128 rather than 64 halves the
#: commits and their fsyncs (the copy's wall time on a loaded machine: -15 %).
BATCH = 128
#: The same in a copy made in this process (`Executor.workers` 0), where parts need not be
#: small for workers to share them: fewer commits and fsync rounds again (a copy of the
#: corpus's 490 CT and MR instances: one part, not four; fsyncs 285 -> 264).
INLINE_BATCH = 512
#: A part also ends once its stored pixel bytes reach this: the parent holds a part's
#: chunks in memory, and large multi-frame instances must not make that unbounded.
PART_BYTES = 128 * 1024 * 1024
#: A source of fewer instances is copied in this process whatever `workers` says (an
#: `executor` given is used as it is): in process the copy runs at about 1,000 instances/s
#: of one core, and starting worker processes (their imports)
#: costs more than they save below a few seconds of work (docs/deidentify.md, Performance).
IN_PROCESS_BELOW = 2000
#: The fields of a source row a copy keeps: what its pixels are (no identity in them).
PIXEL_FIELDS = (
    "transfer_syntax_uid",
    "little_endian",
    "pixel_keyword",
    "pixel_vr",
    "pixel_storage",
    "transcoded",
    "color_conversion",
    "frame_hashes",
    "pixel_hash",
    "raw_pixel_bytes",
)
#: The source path of a copied instance: its new UID (nothing names a source file).
SOURCE_PATH = "deidentified:{}"


@dataclass
class DeidReport:
    """What a de-identified copy did; holds no identifying value (new UIDs only)."""

    source_instances: int = 0
    already_copied: int = 0  # in the research archive from an earlier run
    staged: int = 0  # de-identified and copied by this run
    withheld: dict[str, str] = field(default_factory=dict)  # new SOP UID -> why (burned-in)
    refused: dict[str, str] = field(default_factory=dict)  # new SOP UID -> why
    source_quarantined: int = 0  # files the source refused: identified bytes, not copied
    actions: Counter[str] = field(default_factory=Counter)  # per action, attributes changed
    #: Copied instances the byte-level rewrite left to pydicom (slower), by reason.
    fallbacks: Counter[str] = field(default_factory=Counter)
    #: Where the time went: [CPU, wall] seconds per stage, of the header rewrites (summed
    #: over the workers' tasks) and of the process writing the parts.
    stages: dict[str, Times] = field(default_factory=lambda: {"headers": {}, "parts": {}})
    verify: VerifyReport | None = None  # with verify=True: the research archive checked
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        """Every source instance copied, withheld or refused (and verified, when asked)."""
        accounted = self.already_copied + self.staged + len(self.withheld) + len(self.refused)
        return self.source_instances == accounted and (self.verify is None or self.verify.ok)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "source_instances": self.source_instances,
            "already_copied": self.already_copied,
            "staged": self.staged,
            "withheld": len(self.withheld),
            "refused": len(self.refused),
            "withheld_instances": self.withheld,
            "refused_instances": self.refused,
            "source_quarantined_not_copied": self.source_quarantined,
            "actions": dict(sorted(self.actions.items())),
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "stages": {
                process: {name: [round(c, 3), round(w, 3)] for name, (c, w) in times.items()}
                for process, times in self.stages.items()
            },
            "balanced": self.balanced,
            "seconds": round(self.seconds, 3),
            "verify_mismatches": None if self.verify is None else self.verify.mismatches,
        }


def deidentify(
    source: str | os.PathLike,
    research: str | os.PathLike,
    key_file: str | os.PathLike,
    options: Iterable[str] = (),
    profile: str = "basic",
    burned_in: str = "leave-out",
    safe_private: Iterable[tuple[str, int]] = (),
    workers: int | None = None,
    executor: Executor | None = None,
    codec: str | None = None,
    transcode: bool = False,
    group: str | None = None,
    verify: bool = False,
    trust_bitstreams: bool = False,
    scheduler: str | None = None,
) -> DeidReport:
    """Copy every instance of the archive `source` into the archive `research`,
    de-identified by PS3.15 Annex E with `options`; resumable; see the module doc.

    `workers` (None: one per core) applies from `IN_PROCESS_BELOW` source instances.
    `codec`, `transcode` and `group` are options of a new research archive (copied
    pixels keep the source arrays' codec: they are not encoded again); `verify` checks
    the research archive afterwards (`Archive.verify`); `trust_bitstreams` is accepted
    for the command's sake and changes nothing, since nothing is decoded. Without an
    `executor`, a `scheduler` (a dask.distributed address) is reached only once both
    archives are open and checked: what is wrong with them is said first; an `executor`
    and a `scheduler` both given: ValueError (which to use is not guessed)."""
    if executor is not None and scheduler is not None:
        raise ValueError("deidentify: give an executor or a scheduler, not both")
    del trust_bitstreams  # nothing is decoded: there is nothing to trust or check
    start = time.monotonic()
    key = Key.load(key_file)
    for folder in (source, research):
        if Path(key_file).resolve().is_relative_to(Path(folder).resolve()):
            raise KeyFileError(
                f"{key_file}: the key is inside the archive {folder}: keep it apart (it "
                "would go wherever the archive goes, and tells pseudonyms apart)"
            )
    deidentifier = Deidentifier(key, options, profile, burned_in, safe_private)
    if not is_pacs_archive(source):
        raise ArchiveError(
            f"{source}: not a pacs_engine archive (de-identified copies are made "
            "from an archive of record)"
        )
    if folder_identity(source) == folder_identity(research):
        raise ArchiveError(f"{research}: the research archive cannot be its own source")
    target = Archive.open_or_create(research, codec=codec, transcode=transcode, group=group)
    report = DeidReport()
    own = executor is None
    try:
        with target, open_archive(source) as archive:
            _check_settings(target.path, deidentifier, profile)
            if executor is None:
                local = 0 if len(archive.index) < IN_PROCESS_BELOW else workers
                executor = make_executor(None if scheduler else local, scheduler)
            folder = archive.quarantine.root
            report.source_quarantined = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
            _copy(archive, target, deidentifier, executor, report)
            if verify:
                report.verify = target.verify(executor=executor)
            report.seconds = time.monotonic() - start
            write_atomic(
                target.path / "reports" / f"deid-{datetime.now().strftime('%Y%m%dT%H%M%S%f')}.json",
                json.dumps(report.to_dict(), indent=2).encode(),
            )
    finally:
        if own and executor is not None:
            executor.close()
    return report


def _check_settings(root: Path, deidentifier: Deidentifier, profile: str) -> None:
    """Record the key (by fingerprint), profile and options; refuse others later."""
    settings = {
        "key": deidentifier.key.fingerprint(),
        "profile": profile,
        "options": list(deidentifier.options),
        "burned_in": deidentifier.burned_in,
        "safe_private": sorted([c, e] for c, e in deidentifier.safe_private),
        "table": table().edition,
    }
    path = root / SETTINGS
    if path.exists():
        before = json.loads(path.read_bytes())
        if before != settings:
            raise ArchiveError(
                f"{root}: made with another key, profile, option set or burned-in policy "
                f"({path.name}); "
                "a research archive holds one de-identification: make a new one"
            )
        return
    write_atomic(path, json.dumps(settings, indent=2).encode())


def _copy(
    source: Archive,
    target: Archive,
    deidentifier: Deidentifier,
    executor: Executor,
    report: DeidReport,
) -> None:
    """De-identify the source's instances not copied yet into the research archive."""
    run = f"deid-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    # What a killed run left goes first: files no committed row uses are removed, array
    # frame counts fitted to the committed frames (lowered where a part raised them
    # before a commit that never came), and the pending rows files of a part killed
    # after its commit renamed.
    tidy_archive(target)

    batch = BATCH if executor.workers else INLINE_BATCH

    def parts() -> Iterator[list[Row]]:
        # Series after series; a part may end one and begin the next (small series would
        # otherwise cost a commit and its fsyncs each).
        todo: list[Row] = []
        stored = 0
        for record in source.index.all_series():
            for row in source.index.iter_series(record["SeriesInstanceUID"]):
                report.source_instances += 1
                if deidentifier.new_sop_instance_uid(row["SOPInstanceUID"]) in target.index:
                    report.already_copied += 1
                else:
                    todo.append(row)
                    stored += row.get("stored_bytes") or 0
                if len(todo) == batch or stored >= PART_BYTES:
                    yield todo
                    todo, stored = [], 0
        if todo:
            yield todo

    window = 2 * (os.cpu_count() or 1)
    tasks = _bounded(executor, parts(), window, str(source.path), deidentifier, run)
    for rows, (results, times) in tasks:
        add_times(report.stages["headers"], times)
        with task() as spent:
            _write_part(source, target, rows, results, report)
        add_times(report.stages["parts"], spent)


def _write_part(
    source: Archive, target: Archive, rows: list[Row], results: list[Outcome], report: DeidReport
) -> None:
    """Copy one part's de-identified instances into the research archive."""
    todo: list[tuple[Row, HeaderResult, Row]] = []
    for row, (new, outcome, reason, result, new_row) in zip(rows, results, strict=True):
        if outcome == "withheld":
            report.withheld[new] = reason
        elif outcome == "refused":
            report.refused[new] = reason
        else:
            assert result is not None and new_row is not None
            todo.append((row, result, new_row))
    with stage("copy chunks"):
        try:
            stored = read_stored_many(source, [row for row, _, _ in todo])
        except (OSError, ValueError, PacsEngineError):  # damaged: its message names UIDs
            todo, stored = _readable(source, todo, report)
        copied = [
            _instance(source, row, result, new_row, *chunks)
            for (row, result, new_row), chunks in zip(todo, stored, strict=True)
        ]
    for _, result, _ in todo:
        report.actions.update(result.actions)
        if result.fallback is not None:
            report.fallbacks[result.fallback] += 1
    if copied:
        write_copied_part(target, source.pixels, copied)
        report.staged += len(copied)


def _readable(
    source: Archive, todo: list[tuple[Row, HeaderResult, Row]], report: DeidReport
) -> tuple[list[tuple[Row, HeaderResult, Row]], list[Any]]:
    """The instances of a part whose stored pixels can be read, with them, read one by one;
    the others refused, named by their new UID and the error's type only."""
    kept, stored = [], []
    for entry in todo:
        try:
            stored += read_stored_many(source, [entry[0]])
        except (OSError, ValueError, PacsEngineError) as error:  # the run goes on without it
            report.refused[entry[2]["SOPInstanceUID"]] = (
                f"cannot read its pixels ({type(error).__name__})"
            )
            continue
        kept.append(entry)
    return kept, stored


def _instance(
    source: Archive,
    row: Row,
    result: HeaderResult,
    new: Row,
    array: str | None,
    chunks: Sequence[Chunk],
    frames: int,
) -> CopiedInstance:
    """A copied instance: its new row and blob, and the source's stored chunks (`array`,
    `chunks`, `frames`: `read_stored_many`), undecoded."""
    assert result.blob is not None
    instance = CopiedInstance(new, result.blob, array, chunks, frames)
    instance.row["source_sha256"] = file_sha256(
        source.pixels, instance, bool(row.get("little_endian", True)), row.get("pixel_vr")
    )
    return instance


def _new_row(
    row: Row, before: HeaderBlob, result: HeaderResult, attributes: dict[str, Any], run: str
) -> Row:
    """The research row of a source row: the de-identified header's attributes (as the
    scanner reads them), the source's pixel fields and frame hashes, a new file size."""
    assert result.blob is not None
    after = result.blob
    new: dict[str, Any] = dict(attributes)
    new |= {f: row[f] for f in PIXEL_FIELDS if f in row}  # type: ignore[literal-required]
    change = len(after.prefix) + len(after.suffix) - len(before.prefix) - len(before.suffix)
    new |= {
        "source_path": SOURCE_PATH.format(result.sop_instance_uid),
        "file_size": len(after.prefix) if after.kind == WHOLE else row["file_size"] + change,
        "duplicates": [],
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": run,
    }
    return cast(Row, new)


def _bounded(
    executor: Executor, parts: Iterator[list[Row]], window: int, *args: Any
) -> Iterator[tuple[list[Row], tuple[list[Outcome], Times]]]:
    """(rows, results of `deid_task`) per part, in order, at most `window` tasks in flight."""
    pending: list[Any] = []
    for rows in parts:
        pending.append((rows, executor.submit(deid_task, *args, rows)))
        if len(pending) >= window:
            done, future = pending.pop(0)
            yield done, future.result()
    for done, future in pending:
        yield done, future.result()


#: What `deid_task` says of one source row: (new SOP UID, 'copied' | 'withheld' |
#: 'refused', reason, the de-identified header, the new row without its pixels).
Outcome = tuple[str, str, str, HeaderResult | None, Row | None]


def deid_task(
    source: str, deidentifier: Deidentifier, run: str, rows: list[Row]
) -> tuple[list[Outcome], Times]:
    """De-identify the header blobs of source rows (a worker's task): per row (new SOP UID,
    'copied' | 'withheld' | 'refused', reason, the result, the new row but its pixels),
    and the task's stage times."""
    with task() as times, PackReader(Path(source)) as packs:  # a part's rows share few packs
        results = [_deidentify_row(packs, deidentifier, run, row) for row in rows]
    return results, times


def _deidentify_row(packs: PackReader, deidentifier: Deidentifier, run: str, row: Row) -> Outcome:
    new = deidentifier.new_sop_instance_uid(row["SOPInstanceUID"])
    try:
        with stage("read header"):
            blob = packs.blob(row)
    except Exception as error:  # a damaged pack: its message may name the source's UIDs
        return (new, "refused", f"cannot read its header ({type(error).__name__})", None, None)
    try:
        with stage("deidentify"):
            result = deidentifier.apply_header(blob)
    except DeidError as error:
        return (new, "refused", str(error), None, None)
    if result.blob is None:
        return (new, "withheld", result.withheld or "", None, None)
    try:
        with stage("scan"):
            header = scan(result.header_bytes())
    except ScanError as error:
        return (new, "refused", f"de-identified header: {error.reason}", None, None)
    if header.attributes.get("SOPInstanceUID") != new:
        return (new, "refused", "de-identified header: SOP UID not mapped", None, None)
    for keyword in UID_KEYWORDS:  # the copy's index keys it by them (one bad row, not the run)
        problem = uid_problem(keyword, header.attributes.get(keyword))
        if problem is not None:
            return (new, "refused", f"de-identified header: {problem}", None, None)
    new_row = _new_row(row, blob, result, dict(header.attributes), run)
    return (new, "copied", "", result, new_row)
