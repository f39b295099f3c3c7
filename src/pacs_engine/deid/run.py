"""Make a de-identified research archive from an archive of record.

Two steps, both resumable. Each instance of the source is exported in memory (its
original bytes, checked against their sha256), de-identified (`engine.Deidentifier`)
and written, under its new SOP Instance UID, to `RESEARCH/deid-staging/`; then that
folder is ingested into RESEARCH by the ordinary ingest (`Archive.ingest`), so the
research archive gets the usual report, invariant and resume, and its journal names
only staged files, never an identifying key. Staged files go once the ingest balanced.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pacs_engine.archive.format import ArchiveError, is_pacs_archive
from pacs_engine.archive.report import IngestReport
from pacs_engine.deid.engine import Deidentifier, DeidError
from pacs_engine.deid.key import Key
from pacs_engine.deid.profile import table
from pacs_engine.executors import make_executor
from pacs_engine.ingest.archive import Archive, open_archive
from pacs_engine.ingest.inputs import InputError, InputRef, read_input
from pacs_engine.storage import fsync_dirs, write_atomic
from pacs_engine.workers import Executor

STAGING = "deid-staging"
#: What a research archive was made with: a later run must use the same, or UIDs and
#: pseudonyms of one archive would come from two keys.
SETTINGS = "deid.json"
BATCH = 32  # instances a task de-identifies


@dataclass
class DeidReport:
    """What a de-identified copy did; holds no identifying value (new UIDs only)."""

    source_instances: int = 0
    already_copied: int = 0  # in the research archive from an earlier run
    staged: int = 0  # de-identified and handed to the ingest
    withheld: dict[str, str] = field(default_factory=dict)  # new SOP UID -> why (burned-in)
    refused: dict[str, str] = field(default_factory=dict)  # new SOP UID -> why
    source_quarantined: int = 0  # files the source refused: identified bytes, not copied
    actions: Counter[str] = field(default_factory=Counter)  # per action, attributes changed
    ingest: IngestReport | None = None
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        """Every source instance copied, withheld or refused, and the ingest balanced."""
        accounted = self.already_copied + self.staged + len(self.withheld) + len(self.refused)
        ingest = self.ingest is None or self.ingest.balanced
        return self.source_instances == accounted and ingest

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
            "balanced": self.balanced,
            "seconds": round(self.seconds, 3),
            "ingest": self.ingest.to_dict() if self.ingest is not None else None,
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
) -> DeidReport:
    """Copy every instance of the archive `source` into the archive `research`,
    de-identified by PS3.15 Annex E with `options`; resumable; see the module doc.

    `codec`, `transcode` and `group` are options of a new research archive, `verify`
    and `trust_bitstreams` of its ingest (`Archive.open_or_create`, `Archive.ingest`)."""
    start = time.monotonic()
    deidentifier = Deidentifier(Key.load(key_file), options, profile, burned_in, safe_private)
    if not is_pacs_archive(source):
        raise ArchiveError(
            f"{source}: not a pacs_engine archive (de-identified copies are made "
            "from an archive of record)"
        )
    if Path(source).resolve() == Path(research).resolve():
        raise ArchiveError(f"{research}: the research archive cannot be its own source")
    target = Archive.open_or_create(research, codec=codec, transcode=transcode, group=group)
    report = DeidReport()
    own = executor is None
    executor = executor or make_executor(workers)
    try:
        with target:
            _check_settings(target.path, deidentifier, profile)
            staging = target.path / STAGING
            staging.mkdir(exist_ok=True)
            _stage(Path(source), target, staging, deidentifier, executor, report)
            report.ingest = target.ingest(
                [staging], executor=executor, verify=verify, trust_bitstreams=trust_bitstreams
            )
            if report.ingest.balanced:  # every staged file has its outcome: they can go
                shutil.rmtree(staging)
            report.seconds = time.monotonic() - start
            write_atomic(
                target.path / "reports" / f"deid-{datetime.now().strftime('%Y%m%dT%H%M%S%f')}.json",
                json.dumps(report.to_dict(), indent=2).encode(),
            )
    finally:
        if own:
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


def _stage(
    source: Path,
    target: Archive,
    staging: Path,
    deidentifier: Deidentifier,
    executor: Executor,
    report: DeidReport,
) -> None:
    """De-identify the source's instances not copied yet into the staging folder."""
    with open_archive(source) as archive:
        sops = [row["SOPInstanceUID"] for row in archive.index]
        folder = archive.quarantine.root
        report.source_quarantined = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
    report.source_instances = len(sops)
    todo = []
    for sop in sops:
        new = deidentifier.key.uid(sop)
        if target.index.get(new) is not None:
            report.already_copied += 1
        elif (staging / f"{new}.dcm").exists():  # staged by a session that stopped
            report.staged += 1
        else:
            todo.append(sop)
    window = 2 * (os.cpu_count() or 1)
    for results in _bounded(executor, _batches(todo), window, str(source), staging, deidentifier):
        for new, outcome, reason, actions in results:
            if outcome == "staged":
                report.staged += 1
                report.actions.update(actions)
            elif outcome == "withheld":
                report.withheld[new] = reason
            else:
                report.refused[new] = reason


def _batches(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def _bounded(
    executor: Executor, batches: Iterator[list[str]], window: int, *args: Any
) -> Iterator[list[tuple[str, str, str, Counter[str]]]]:
    """Results of `deid_task` over the batches, at most `window` tasks in flight."""
    pending: list[Any] = []
    for batch in batches:
        pending.append(executor.submit(deid_task, *args, batch))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def deid_task(
    source: str, staging: Path, deidentifier: Deidentifier, sops: list[str]
) -> list[tuple[str, str, str, Counter[str]]]:
    """De-identify instances of the source into the staging folder (a worker's task):
    (new SOP UID, 'staged' | 'withheld' | 'refused', reason, actions) of each."""
    results: list[tuple[str, str, str, Counter[str]]] = []
    dirs: set[Path] = set()
    for sop in sops:
        new = deidentifier.key.uid(sop)
        try:
            data = read_input(InputRef(source, sop))
            result = deidentifier.apply(data)
        except InputError as error:  # its key names the original UID: only the reason
            results.append((new, "refused", f"cannot export: {error.reason}", Counter()))
            continue
        except DeidError as error:
            results.append((new, "refused", str(error), Counter()))
            continue
        if result.data is None:
            results.append((new, "withheld", result.withheld or "", Counter()))
            continue
        write_atomic(staging / f"{result.sop_instance_uid}.dcm", result.data, dirs)
        results.append((new, "staged", "", result.actions))
    fsync_dirs(dirs)  # the renames of the batch made durable at once
    return results
