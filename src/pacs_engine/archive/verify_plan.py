"""Which instances `verify` checks, what a random sample of them proves, and the record of
each verify kept in the archive (reports/verify-*.json), so a large archive can be
verified a part at a time: `--not-verified-since` picks what no recent verify checked.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import Row
from pacs_engine.storage import unused_path, write_atomic

if TYPE_CHECKING:
    from pacs_engine.archive.archive import Archive
    from pacs_engine.archive.verify import VerifyReport

DEFAULT_SEED = 20261206  # fixed, and printed: the same sample again unless asked otherwise
STAMP = "%Y-%m-%dT%H:%M:%SZ"  # the rows' `ingested_at`: strings in this form sort as times
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?Z?)?")


class VerifySelectionError(PacsEngineError, ValueError):
    """A verify selector is malformed or names what is not in the archive."""


@dataclass(frozen=True)
class Selection:
    """The instances `Archive.verify` checks: every one, unless narrowed.

    Studies and series add up; every other selector narrows what they (or the archive) give.
    """

    since: str | None = None  # ingested at or after this UTC time (STAMP form)
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    not_verified_since: str | None = None  # not checked clean by a verify started since
    sample: float | None = None  # a random fraction of the rest, in (0, 1]
    seed: int = DEFAULT_SEED
    limit: int | None = None  # at most this many (the first by SOP Instance UID)

    @property
    def everything(self) -> bool:
        """True when nothing narrows the selection."""
        return self == Selection(seed=self.seed)


def utc_time(text: str, option: str) -> str:
    """`YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS][Z]` (UTC) in STAMP form; a one-line error if not."""
    match = _DATE.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError(text)
        year, month, day, hour, minute, second = (int(part or 0) for part in match.groups())
        return datetime(year, month, day, hour, minute, second).strftime(STAMP)
    except ValueError:  # the wrong form, or impossible numbers (month 13)
        raise VerifySelectionError(
            f"{option}: {text!r} is not a UTC date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)"
        ) from None


def check_selection(selection: Selection) -> None:
    """Refuse a sample fraction outside (0, 1] or a limit below 1, in one line."""
    if selection.sample is not None and not 0 < selection.sample <= 1:
        raise VerifySelectionError(f"--sample: {selection.sample} is not in (0, 1]")
    if selection.limit is not None and selection.limit < 1:
        raise VerifySelectionError(f"--limit: {selection.limit} is not 1 or more")


def select(archive: Archive, selection: Selection) -> tuple[list[str] | None, int]:
    """(SOP Instance UIDs to check, how many matched before sampling); None: every instance."""
    check_selection(selection)
    if selection.everything:
        return None, len(archive.index)
    index = archive.index
    rows: Iterable[Row] = index  # read a chunk at a time: the whole archive need not fit
    if selection.studies or selection.series:
        rows = []
        for uid in selection.studies:
            if index.study_record(uid) is None:
                raise VerifySelectionError(f"--study {uid}: not in the archive")
            rows += index.study(uid)
        for uid in selection.series:
            if index.series_record(uid) is None:
                raise VerifySelectionError(f"--series {uid}: not in the archive")
            rows += index.series(uid)
    covered = verified_since(archive, selection.not_verified_since)
    picked = sorted(
        {
            row["SOPInstanceUID"]
            for row in rows
            if (selection.since is None or row["ingested_at"] >= selection.since)
            and not covered(row["SOPInstanceUID"], row["ingested_at"])
        }
    )
    population = len(picked)
    if selection.sample is not None:
        size = math.ceil(selection.sample * population)
        picked = sorted(random.Random(selection.seed).sample(picked, size))
    return picked[: selection.limit], population


def verified_since(archive: Archive, start: str | None) -> Callable[[str, str], bool]:
    """A test (uid, ingested_at) -> True when the latest verify started at or after `start`
    that checked the instance found it clean, and started after its current version was
    ingested (a version a correction or a file sent again made since was not checked).

    A record of a whole-archive verify covers the instances ingested before it started.
    """
    # (clean, when that verify started), by the latest record listing the instance
    latest: dict[str, tuple[bool, str]] = {}
    whole = ""  # the start of the latest whole-archive verify ("": none)
    for record in read_records(archive) if start is not None else []:
        if record["started"] < start:
            continue
        damaged = {m["SOPInstanceUID"] for m in record["mismatches"]}
        started = record["started"]
        if record["checked"] is None:  # it supersedes what earlier records found
            whole, latest = started, dict.fromkeys(damaged, (False, started))
        else:
            latest |= {uid: (uid not in damaged, started) for uid in record["checked"]}

    def covered(uid: str, ingested: str) -> bool:
        clean, started = latest.get(uid, (True, whole))
        return clean and ingested < started

    return covered


def confidence(checked: int, damaged: int, population: int) -> str:
    """What a random sample of `checked` out of `population` instances says about the rest."""
    if checked == 0:
        return "no instance sampled: the sample proves nothing"
    if damaged:
        return (
            f"{damaged:,} of {checked:,} sampled instances damaged: about "
            f"{100 * damaged / checked:.3g} % of the {population:,} selected instances may be"
        )
    # The rule of three: if a fraction p were damaged, n clean draws happen with probability
    # (1 - p)^n < e^(-pn), which is under 5 % for p >= 3/n.
    return (
        f"none of {checked:,} sampled instances damaged: with 95 % confidence fewer than "
        f"3/{checked:,} = {100 * rule_of_three(checked):.3g} % of the {population:,} selected "
        "instances are damaged (rule of three)"
    )


def rule_of_three(checked: int) -> float:
    """The 95 % upper bound on the damaged fraction after `checked` clean random draws."""
    return min(1.0, 3 / checked)


def write_record(archive: Archive, selection: Selection, report: VerifyReport) -> Path:
    """Keep what this verify checked and found in reports/verify-<start>.json."""
    record = {
        "started": report.started,
        "seconds": round(report.seconds, 3),
        "selection": asdict(selection),
        "population": report.population,
        "instances": report.instances,
        "frames": report.frames,
        "mismatches": report.mismatches,
        "checked": report.checked,  # None: every instance in the archive
    }
    stamp = report.started.replace(":", "")
    # Two verifies started in the same second keep both records, in order.
    path = unused_path(lambda n: archive.path / "reports" / f"verify-{stamp}-{n}.json")
    write_atomic(path, json.dumps(record, indent=1).encode())
    return path


def read_records(archive: Archive) -> list[dict[str, Any]]:
    """Every verify record of the archive, oldest first."""
    paths = (archive.path / "reports").glob("verify-*-*.json")
    # verify-<start>-<n>.json: by start, then by n (the order of the same second's records)
    order = sorted(paths, key=lambda p: (p.stem.rsplit("-", 1)[0], int(p.stem.rsplit("-", 1)[1])))
    return [json.loads(path.read_text()) for path in order]
