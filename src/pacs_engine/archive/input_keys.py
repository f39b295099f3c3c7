"""The text that names an input: a path, or `container::member` for a member of a zip or tar
archive or an instance of another pacs_engine archive.

Here, below ingest, because the archive records these keys too (each version's source
path, its duplicates'), and a correction must read them back exactly as ingest wrote them.
"""

from __future__ import annotations

from collections.abc import Callable

from pacs_engine.archive.format import is_pacs_archive

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
SEPARATOR = "::"


def archive_kind(path: str) -> str | None:
    """'zip', 'tar' or 'tgz' by the name's suffix (any case), else None."""
    name = path[-7:].lower()  # the longest suffix: no need to lower the whole path
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".tar"):
        return "tar"
    if name.endswith((".tar.gz", ".tgz")):
        return "tgz"
    return None


def container_kind(path: str) -> str | None:
    """'zip', 'tar', 'tgz' (by suffix), 'pacs' (an archive folder), or None."""
    kind = archive_kind(path)
    if kind is None and is_pacs_archive(path):
        return "pacs"
    return kind


def join_key(container: str, member: str | None) -> str:
    """The key of an input: the path, or `container::member` (the inverse of `split_key`)."""
    if member is None:
        return container
    return f"{container}{SEPARATOR}{member}"


def split_key(key: str) -> tuple[str, str | None]:
    """(container, member) of a key: split at the first `::` that follows an archive suffix
    or an archive folder (which it stats: `split_archive_key` reads the name alone)."""
    return _split(key, container_kind)


def split_archive_key(key: str) -> tuple[str, str | None]:
    """(zip or tar, member) of a key, by its name alone (no file is looked at): split at
    the first `::` that follows a zip or tar suffix; (key, None) for any other key."""
    return _split(key, archive_kind)


def _split(key: str, kind: Callable[[str], str | None]) -> tuple[str, str | None]:
    """(container, member) of a key: split at the first `::` after which `kind` names the
    text before it a container."""
    # Containers always end in an archive suffix, so member names may hold `::` freely
    # and a container path may hold `::` anywhere but right after `.zip`, `.tar`...
    start = key.find(SEPARATOR)
    while start != -1:
        if kind(key[:start]) is not None:
            return key[:start], key[start + len(SEPARATOR) :]
        start = key.find(SEPARATOR, start + 1)
    return key, None
