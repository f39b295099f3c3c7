"""Versions of one instance: files with one SOP Instance UID and the same pixels, other bytes.

An index row describes the current version at its top level, as rows always did. Once
an instance has a second version the row also holds `versions`, oldest first: each
earlier version as a complete record (its header attributes, header blob, pixel
reference, sha256, ...), enough to rebuild its file, and last a summary of the
current one (`"current": true`), plus `current_reason`. A row without `versions`
(every row of an instance seen once, and every row written before versions existed)
has one version: itself.

Every row records the ingest `run` that received its current version (rows written
before this have none). A part names its run to the worker, which writes it (rows files
keep it for rebuild-index); a row made without one has PENDING, and the commit puts the run
in its place (`with_run`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pacs_engine.index.rows import Row, Version

#: Fields of a row that belong to the instance, not to one of its versions.
INSTANCE_FIELDS = ("versions", "current_reason", "duplicates", "source_duplicates")
#: Fields of the summary of the current version in `versions` (the row holds the rest).
SUMMARY_FIELDS = ("source_path", "source_sha256", "file_size", "ingested_at", "stored_bytes")
PENDING = ""  # the run of a version not committed yet
CURRENT_REASON = (
    "received last: the version of the latest ingest run (within one run, the last in "
    "the run's plan order)"
)


def version_rows(row: Row) -> list[Row]:
    """Each kept version of the instance as a row of its own, oldest first; the current last."""
    earlier = [v for v in row.get("versions", []) if not v.get("current")]
    # An earlier version is a complete record (UIDs and all): a row of its own.
    return [*cast("list[Row]", earlier), row]


def kept_sha256s(row: Row) -> set[str]:
    """The sha256 of every version whose bytes the archive keeps."""
    return {v["source_sha256"] for v in version_rows(row)}


def with_version(row: Row, new: Row) -> Row:
    """A copy of `row` whose current version is `new` (the row of a newly received version).

    The version that was current becomes a complete record in `versions`; the
    instance's own fields (duplicates, ...) stay; `stored_bytes` counts every version.
    The reason it is current is `new`'s own when it has one (a correction's row, as
    its rows file keeps it for rebuild-index), else CURRENT_REASON.
    """
    earlier = [v for v in row.get("versions", []) if not v.get("current")]
    own_stored = own_stored_bytes(row)
    demoted: dict[str, Any] = {k: v for k, v in row.items() if k not in INSTANCE_FIELDS}
    demoted |= {"stored_bytes": own_stored, "run": row.get("run")}
    versions = [*earlier, cast(Version, demoted), _summary(new)]
    merged: dict[str, Any] = {k: v for k, v in new.items() if k not in INSTANCE_FIELDS}
    own: Mapping[str, Any] = row  # read by field name, not by a literal key
    merged |= {k: own[k] for k in INSTANCE_FIELDS if k in own}
    merged |= {
        "versions": versions,
        "current_reason": new.get("current_reason", CURRENT_REASON),
        "stored_bytes": sum(v["stored_bytes"] for v in versions),
    }
    return cast(Row, merged)


def with_run(row: Row, run: str) -> Row:
    """A copy of `row` whose versions received by this run (PENDING) name it."""
    stamped: dict[str, Any] = {**row, "run": run} if row.get("run") == PENDING else dict(row)
    if "versions" in row:
        stamped["versions"] = [
            {**v, "run": run} if v.get("run") == PENDING else v for v in row["versions"]
        ]
    return cast(Row, stamped)


def _summary(row: Row) -> Version:
    """The entry of the current version in `versions`."""
    summary = {**{k: row.get(k) for k in SUMMARY_FIELDS}, "run": row.get("run"), "current": True}
    return cast(Version, summary)


def own_stored_bytes(row: Row) -> int:
    """Bytes stored for the current version alone."""
    versions = row.get("versions")
    return versions[-1]["stored_bytes"] if versions else row.get("stored_bytes", 0)
