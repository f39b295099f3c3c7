"""Versions of one instance: files with one SOP Instance UID and the same pixels, other bytes.

An index row describes the current version at its top level, as rows always did. Once
an instance has a second version the row also holds `versions`, oldest first: each
earlier version as a complete record (its header attributes, header blob, pixel
reference, sha256, ...), enough to rebuild its file, and last a summary of the
current one (`"current": true`), plus `current_reason`. A row without `versions`
(every row of an instance seen once, and every row written before versions existed)
has one version: itself.
"""

from __future__ import annotations

from typing import Any

#: Fields of a row that belong to the instance, not to one of its versions.
INSTANCE_FIELDS = ("versions", "current_reason", "duplicates", "source_duplicates")
#: Fields of the summary of the current version in `versions` (the row holds the rest).
SUMMARY_FIELDS = ("source_path", "source_sha256", "file_size", "ingested_at", "stored_bytes")
CURRENT_REASON = (
    "received last: the version of the latest ingest run (within one run, the last in "
    "the run's plan order)"
)


def version_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each kept version of the instance as a row of its own, oldest first; the current last."""
    earlier = [v for v in row.get("versions", []) if not v.get("current")]
    return [*earlier, row]


def current_version(row: dict[str, Any]) -> int:
    """The position of the current version in `version_rows(row)` (always the last)."""
    return len(row.get("versions", [row])) - 1


def kept_sha256s(row: dict[str, Any]) -> set[str]:
    """The sha256 of every version whose bytes the archive keeps."""
    return {v["source_sha256"] for v in version_rows(row)}


def with_version(row: dict[str, Any], new: dict[str, Any], run: str | None) -> dict[str, Any]:
    """A copy of `row` whose current version is `new` (the row of a newly received version).

    The version that was current becomes a complete record in `versions`; the
    instance's own fields (duplicates, ...) stay; `stored_bytes` counts every version.
    """
    earlier = [v for v in row.get("versions", []) if not v.get("current")]
    own_stored = _own_stored_bytes(row)
    demoted = {k: v for k, v in row.items() if k not in INSTANCE_FIELDS}
    demoted |= {"stored_bytes": own_stored, "run": _current_run(row)}
    versions = [*earlier, demoted, _summary(new, run)]
    merged = {k: v for k, v in new.items() if k not in INSTANCE_FIELDS}
    merged |= {k: row[k] for k in INSTANCE_FIELDS if k in row}
    merged |= {
        "versions": versions,
        "current_reason": CURRENT_REASON,
        "stored_bytes": sum(v["stored_bytes"] for v in versions),
    }
    return merged


def with_run(row: dict[str, Any], run: str) -> dict[str, Any]:
    """A copy of `row` whose versions received in this run (no run recorded yet) name it."""
    if "versions" not in row:
        return row
    versions = [v if v.get("run") else {**v, "run": run} for v in row["versions"]]
    return {**row, "versions": versions}


def _summary(row: dict[str, Any], run: str | None) -> dict[str, Any]:
    """The entry of the current version in `versions`."""
    return {**{k: row.get(k) for k in SUMMARY_FIELDS}, "run": run, "current": True}


def _own_stored_bytes(row: dict[str, Any]) -> int:
    """Bytes stored for the current version alone."""
    versions = row.get("versions")
    return versions[-1]["stored_bytes"] if versions else row.get("stored_bytes", 0)


def _current_run(row: dict[str, Any]) -> str | None:
    """The ingest run that received the current version, when recorded."""
    versions = row.get("versions")
    return versions[-1].get("run") if versions else None
