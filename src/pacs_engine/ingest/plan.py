"""Cut the planned inputs of a series into parts that never share a shard."""

from __future__ import annotations

from pacs_engine.archive.encoder import Part
from pacs_engine.archive.versions import version_rows
from pacs_engine.index import Index
from pacs_engine.ingest.journal import Planned


def align(frames: int, per_shard: int) -> int:
    """`frames` rounded up to a whole number of shards."""
    return -(-frames // per_shard) * per_shard


def committed_end(index: Index, series_uid: str) -> int:
    """The end of the frames committed rows of the series use, in any of its arrays."""
    end = 0
    for row in index.series(series_uid):
        for version in version_rows(row):  # earlier versions may have frames of their own
            pixels = version.get("pixels")
            if pixels:
                end = max(end, pixels["first_frame"] + pixels["frames"])
    return end


def plan_parts(planned: list[Planned], base: int, per_shard: int) -> list[Part]:
    """Parts of about one shard of frames each, in instance order, from frame `base` on.

    Inputs with the same SOP Instance UID stay in one part, so duplicates are
    told apart in one process. Each part starts on its own shard, so parts of
    one series can be written at the same time by different workers.
    """
    groups: dict[str, list[Planned]] = {}
    for entry in planned:
        groups.setdefault(entry.sop_instance_uid, []).append(entry)
    parts: list[Part] = []
    keys: list[str] = []
    frames = 0
    for group in groups.values():
        keys += [entry.key for entry in group]
        frames += sum(entry.frames for entry in group)  # each version may need its own
        if frames >= per_shard:
            parts.append(Part(group[0].series_uid, base, align(frames, per_shard), tuple(keys)))
            base += align(frames, per_shard)
            keys, frames = [], 0
    if keys:
        parts.append(Part(planned[0].series_uid, base, align(frames, per_shard), tuple(keys)))
    return parts
