"""Predict what an ingest would do with each input, without writing anything.

The prediction calls the functions the ingest decides with (read_input, scan,
check_uids, prepare, kept_sha256s, conflict_reason, with_version) in the order the
ingest sends its inputs (the largest series first, each in `plan_order`), so that it
names the same outcome and the same reason. Inputs are read twice (once to plan, once
to prepare), as the ingest does.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pacs_engine.archive.format import read_marker
from pacs_engine.archive.pixel_store import PixelStore
from pacs_engine.archive.prepare import Prepared, PrepareError, check_uids, hash_kind, prepare
from pacs_engine.archive.quarantine import NOT_DICOM
from pacs_engine.archive.versions import kept_sha256s, version_rows, with_version
from pacs_engine.errors import ScanError
from pacs_engine.index import Index
from pacs_engine.index.rows import Row
from pacs_engine.ingest.encode import (
    Checks,
    conflict_reason,
    new_row,
    recorded_reason,
    stored_pixel_hash,
)
from pacs_engine.ingest.inputs import (
    InputError,
    InputRef,
    is_media_directory,
    iter_inputs,
    media_directory_reason,
    read_input,
)
from pacs_engine.ingest.journal import Planned, plan_order
from pacs_engine.ingest.tasks import planned_input
from pacs_engine.scanning import scan


@dataclass
class Prediction:
    """What the ingest would do with one input, and why."""

    key: str
    outcome: str  # one of report.OUTCOMES
    reason: str | None = None  # as the ingest would record it (conflicts, quarantined)
    sop: str | None = None
    storage: str | None = None  # archived: "native", "bitstream" or "none" (no pixel data)
    transcoded: bool = False  # archived: lossless bitstreams decoded, stored with the codec
    decoded: bool = False  # archived: its frames were decoded (else "not checked")
    not_verified: str | None = None  # archived, but no decoder reads its frames: why
    version: bool = False  # archived as a new version of an instance
    same_as: str | None = None  # the input or archived source it duplicates / conflicts with
    media_directory: bool = False  # a DICOMDIR
    not_dicom: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (fields left at their default are left out)."""
        return {k: v for k, v in asdict(self).items() if v or k == "outcome"}

    @property
    def category(self) -> str:
        """What the summary counts it under: its outcome and kind of reason."""
        if self.media_directory:
            return f"{self.outcome}: DICOMDIR (media directory)"
        if self.not_dicom:
            return f"{self.outcome}: not DICOM"
        if self.outcome == "archived":
            how = "transcoded" if self.transcoded else self.storage
            if self.not_verified:
                how = f"{how}, {self.not_verified}"
            return f"archived{' (version)' if self.version else ''}: {how}"
        # The reason without what differs per file: tags, offsets, sizes, frame numbers.
        reason = self.reason or ""
        if self.outcome == "conflict":  # what differs
            reason = reason.split(", but ")[-1]
        reason = re.sub(r"\b[0-9]+\b", "N", re.sub(r"\([0-9A-F]{4},[0-9A-F]{4}\)", "(tag)", reason))
        return f"{self.outcome}: {reason}"


class _Archive:
    """What the preflight reads of an existing archive (nothing when there is none)."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = None if root is None else Path(root)
        self.config: dict[str, Any] = {}
        self.index: Index | None = None
        self.pixels: PixelStore | None = None
        if self.root is not None:
            self.config = read_marker(self.root)  # a folder the user named: checked
            self.index = Index.open(self.root / "index", readonly=True)
            self.pixels = PixelStore(self.root / "pixels")

    def row(self, sop: str) -> Row | None:
        """The archived row of an instance, if any."""
        return None if self.index is None else self.index.get(sop)

    def close(self) -> None:
        """Release the index."""
        if self.index is not None:
            self.index.close()


def preflight(
    sources: Iterable[str | os.PathLike],
    archive: str | os.PathLike | None = None,
    checks: Checks | None = None,
    follow_links: bool = False,
    transcode: bool = False,
) -> list[Prediction]:
    """Predict the ingest's outcome of every input under the sources (into `archive`, or a
    new archive made with `transcode`); with `checks.decode_bitstreams` off, bitstreams
    are not decoded (as `ingest --trust-bitstreams`)."""
    checks = checks or Checks()
    target = _Archive(archive)
    target.config.setdefault("transcode", transcode)
    try:
        walked: list[Prediction] = []

        def on_error(key: str, reason: str) -> None:
            walked.append(Prediction(key, "quarantined", reason))

        exclude = [] if archive is None else [archive]
        refs = iter_inputs(sources, on_error, exclude, follow_links)
        rejected, planned = _plan(refs, checks)
        # As the ingest sends them: the series with the most frames first, each in plan order.
        frames: Counter[str] = Counter()
        for entry in planned:
            frames[entry.series_uid] += entry.frames
        planned.sort(key=lambda entry: (-frames[entry.series_uid], plan_order(entry)))
        return walked + rejected + list(_judge(planned, target, checks))
    finally:
        target.close()


def _plan(refs: Iterable[InputRef], checks: Checks) -> tuple[list[Prediction], list[Planned]]:
    """The scan phase: inputs refused before planning, and the plan entries of the others."""
    rejected: list[Prediction] = []
    planned: list[Planned] = []
    for ref in refs:
        key = ref.key
        data = b""
        try:
            data = read_input(ref, checks.inputs)
            header = scan(data)
            check_uids(header)
        except InputError as error:
            rejected.append(Prediction(key, "quarantined", recorded_reason(key, str(error))))
            continue
        except ScanError as error:
            reason = str(error.reason)
            rejected.append(
                Prediction(key, "quarantined", reason, not_dicom=reason.startswith(NOT_DICOM))
            )
            continue
        except PrepareError as error:
            reason = media_directory_reason(ref, data, str(error), checks.inputs)
            directory = is_media_directory(data)
            rejected.append(Prediction(key, "quarantined", reason, media_directory=directory))
            continue
        planned.append(planned_input(key, header))
    return rejected, planned


def _judge(planned: list[Planned], target: _Archive, checks: Checks) -> Iterator[Prediction]:
    """The encode phase, input by input in plan order: archived, duplicate, conflict or
    quarantined, against the archive's rows and the inputs judged before."""
    rows: dict[str, Row | None] = {}  # each instance as it would stand, by SOP Instance UID
    transcode = target.config.get("transcode", False)
    for entry in planned:
        key, sop = entry.key, entry.sop_instance_uid
        try:
            data = read_input(InputRef.from_key(key), checks.inputs)
            header = scan(data)
            prepared = prepare(
                key,
                data,
                header,
                transcode,
                checks.decode_bitstreams,
                checks.max_frame_bytes,
                checks.inputs.max_bytes,
            )
        except InputError as error:
            yield Prediction(key, "quarantined", recorded_reason(key, str(error)))
            continue
        except (ScanError, PrepareError) as error:
            reason = str(error.reason) if isinstance(error, ScanError) else str(error)
            yield Prediction(key, "quarantined", reason, sop=sop)
            continue
        if sop not in rows:
            rows[sop] = target.row(sop)
        prior = rows[sop]
        if prior is not None:
            if prepared.sha256 in kept_sha256s(prior):
                same = [v for v in version_rows(prior) if v["source_sha256"] == prepared.sha256]
                yield Prediction(key, "duplicate", sop=sop, same_as=same[0]["source_path"])
                continue

            def same_pixels(prior: Row = prior, new: Prepared = prepared) -> bool:
                archived = _prior_pixel_hash(prior, target, checks)
                return archived == new.pixel_hash(hash_kind(archived))  # like with like

            try:
                conflict = conflict_reason(prior, header.attributes, same_pixels)
            except PrepareError as error:  # its bitstreams do not decode
                yield Prediction(key, "quarantined", str(error), sop=sop)
                continue
            if conflict is not None:
                yield Prediction(key, "conflict", conflict, sop=sop, same_as=prior["source_path"])
                continue
        row = new_row(prepared, None, 0)
        rows[sop] = row if prior is None else with_version(prior, row)
        yield Prediction(
            key,
            "archived",
            sop=sop,
            storage=prepared.storage,
            transcoded=prepared.transcoded,
            decoded=prepared.frame_hashes is not None,
            not_verified=prepared.not_verified,
            version=prior is not None,
            same_as=None if prior is None else prior["source_path"],
        )


def _prior_pixel_hash(prior: Row, target: _Archive, checks: Checks) -> str | None:
    """The pixel hash of the instance as it stands: recorded, from the archive's frames, or
    (an input judged before, left undecoded) from its file prepared again."""
    if prior.get("pixel_hash") is not None:
        return prior["pixel_hash"]
    if target.pixels is not None and prior.get("pixels"):  # archived: its frames are stored
        return stored_pixel_hash(target.pixels, prior)
    path = prior["source_path"]
    try:
        data = read_input(InputRef.from_key(path), checks.inputs)
        return prepare(path, data, scan(data), decode=False).pixel_hash()
    except (InputError, ScanError, PrepareError):
        return None


def summary(predictions: Iterable[Prediction]) -> Counter[str]:
    """How many inputs fall in each category (outcome and kind of reason)."""
    return Counter(p.category for p in predictions)
