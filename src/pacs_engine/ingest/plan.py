"""Cut the planned inputs of a series into parts that never share a shard."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pacs_engine.archive.corrections import trashed_rows
from pacs_engine.archive.versions import version_rows
from pacs_engine.ingest.journal import Planned
from pacs_engine.storage import series_folders

if TYPE_CHECKING:
    from pacs_engine.archive import Archive


def align(frames: int, per_shard: int) -> int:
    """`frames` rounded up to a whole number of shards."""
    return -(-frames // per_shard) * per_shard


def committed_end(archive: Archive, series_uid: str) -> int:
    """The end of the frames committed rows of the series use, in any of its arrays, and
    instances of it deleted in place (their frames wait in their shards for a restore)."""
    end = 0
    trashed = trashed_rows(archive.path, sorted(series_folders(series_uid)))
    for row in itertools.chain(archive.index.iter_series(series_uid), trashed):
        for version in version_rows(row):  # earlier versions may have frames of their own
            pixels = version.get("pixels")
            if pixels:
                end = max(end, pixels["first_frame"] + pixels["frames"])
    return end


def plan_parts(planned: Iterable[Planned], per_shard: int) -> Iterator[tuple[list[Planned], int]]:
    """Parts of about one shard of frames each, in instance order: (inputs, span in frames).

    Reads `planned` (in instance order) lazily and holds one part at a time, so a
    series of any size is cut in memory of one part. Inputs with the same SOP
    Instance UID next to each other in the plan (the same Instance Number) stay in
    one part, so duplicates and versions are told apart in one process; one under
    another Instance Number may land in another part and is judged at commit. The
    span is a whole number of shards, so that each part, placed on its own shard
    boundary, can be written at the same time as the others by different workers.
    """
    part: list[Planned] = []
    frames = 0
    group: list[Planned] = []  # the inputs of one SOP Instance UID, so far
    for entry in planned:
        if group and entry.sop_instance_uid != group[0].sop_instance_uid:
            part += group
            frames += sum(e.frames for e in group)  # each version may need its own
            group = []
            if frames >= per_shard:
                yield part, align(frames, per_shard)
                part, frames = [], 0
        group.append(entry)
    if group:
        part += group
        frames += sum(e.frames for e in group)
    if part:
        yield part, align(frames, per_shard)
