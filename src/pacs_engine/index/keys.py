"""Key encoding: the UIDs a row must have, the LMDB keys built from rows and records, and
the ingest journal's file identity keys (a delete drops them too: archive/corrections.py).

Keys are UTF-8; "\\0" separates the parts of a compound key, which no UID contains.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pacs_engine.index.matching import fold
from pacs_engine.index.rows import Row, StudyRecord

UID_KEYWORDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
#: Longest UID accepted, in bytes: DICOM allows 64; longer ones occur in the wild,
#: and two of them must fit in one LMDB key (511 bytes at most).
MAX_UID_BYTES = 200
#: Indexed values are cut to this many bytes; matching then checks the whole value.
_MAX_VALUE_BYTES = 200
#: Indexed study attributes, in the order the query planner prefers them.
INDEXED_KEYWORDS = ("AccessionNumber", "PatientID", "PatientName", "StudyDate")
SEP = b"\0"
#: The order bytes of a row without an integer InstanceNumber (sorted last).
NO_NUMBER = b"\1" + bytes(8)
_INT64_BIAS = 1 << 63
#: The longest input key kept as itself in an `s` entry's key (LMDB keys: 511 bytes).
_LONGEST_NAME = 500


def _order(instance_number: Any) -> bytes:
    """Nine bytes that sort rows by InstanceNumber, those without an integer one last."""
    if (
        isinstance(instance_number, int)
        and not isinstance(instance_number, bool)
        and -_INT64_BIAS <= instance_number < _INT64_BIAS
    ):
        return b"\0" + (instance_number + _INT64_BIAS).to_bytes(8, "big")
    return NO_NUMBER


def uid_problem(keyword: str, value: Any) -> str | None:
    """Why `value` cannot be the index's `keyword` UID, or None when it can."""
    if not isinstance(value, str) or not value:
        return f"no {keyword}"
    if len(value.encode("utf-8", "surrogateescape")) > MAX_UID_BYTES or "\0" in value:
        return f"{keyword} is longer than {MAX_UID_BYTES} bytes or holds a NUL"
    if "/" in value or "\\" in value or value.startswith("."):
        # Series UIDs name folders of the archive: "../x" would write outside it.
        return f"{keyword} {value!r} holds a path separator or starts with '.'"
    return None


def checked_uid(row: Row, keyword: str) -> bytes:
    """The row's `keyword` UID as a key; ValueError saying why it cannot be one."""
    value = row.get(keyword)
    problem = uid_problem(keyword, value)
    if problem is not None:
        raise ValueError(f"{problem}: {value!r}")
    return str(value).encode()


def series_row_key(row: Row) -> bytes:
    """The row's key in series_rows: Series UID, separator, order bytes, SOP UID."""
    return (
        checked_uid(row, "SeriesInstanceUID")
        + SEP
        + _order(row.get("InstanceNumber"))
        + checked_uid(row, "SOPInstanceUID")
    )


def index_value(keyword: str, value: str) -> bytes:
    """The part of a by_<keyword> key that holds the value (names upper-cased, cut short)."""
    text = fold(value) if keyword == "PatientName" else value
    return text.encode()[:_MAX_VALUE_BYTES]


def index_keys(record: StudyRecord | None) -> set[tuple[str, bytes]]:
    """The (keyword, key) entries a study record has in the by_<keyword> databases."""
    if record is None:
        return set()
    study = record["StudyInstanceUID"].encode()
    keys = set()
    for keyword in INDEXED_KEYWORDS:
        value = record.get(keyword)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                keys.add((keyword, index_value(keyword, v) + SEP + study))
    return keys


def last_part(key: bytes) -> str:
    """The last part of a compound key (the UID it points to)."""
    return key.rpartition(SEP)[2].decode()


def identity_key(key: str) -> bytes:
    """The ingest journal's `s` entry of an input key (ingest/journal.py): the key itself,
    or (too long for LMDB) its raw digest.

    The two cannot meet: the digest is 16 bytes after `s\x01`, a key follows `s\x00`.
    Read by key only, so no hex and no parsing: it is on a catch-up run's path per file.
    """
    name = key.encode("utf-8", "surrogateescape")
    if len(name) <= _LONGEST_NAME:
        return b"s\x00" + name
    return b"s\x01" + hashlib.blake2b(name, digest_size=16).digest()
