"""Rows and records as stored: compact JSON, rows deflated with the index's preset dictionary."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, cast

from pacs_engine.index.integrity import DamagedIndexError
from pacs_engine.index.keys import UID_KEYWORDS
from pacs_engine.index.rows import Duplicate, HeaderRef, PixelRef, Row, Version
from pacs_engine.scanning import HEADER_KEYWORDS

#: The archive's field names, of rows and of their parts, in declaration order.
ARCHIVE_FIELDS = tuple(
    dict.fromkeys(
        k
        for shape in (Row, Version, PixelRef, HeaderRef, Duplicate)
        for k in shape.__annotations__
        if k not in HEADER_KEYWORDS
    )
)
#: What rows of one archive have in common: deflating against it halves a row, so
#: twice as many rows share a 4 KiB page. Kept in each index, so it may change.
ZDICT = (
    "".join(f'"{k}":' for k in HEADER_KEYWORDS + ARCHIVE_FIELDS)
    + '"1.2.840.10008.1.2.1""1.2.840.10008.5.1.4.1.1.""ISO_IR 100""MONOCHROME2"'
).encode()


def dump_json(record: Any) -> bytes:
    """A row, record or meta value as compact UTF-8 JSON."""
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a path that is not UTF-8 (surrogate escapes): \u-escape it
        return json.dumps(record, separators=(",", ":")).encode()


def load_json(data: bytes, where: str) -> dict[str, Any]:
    """A stored JSON object; DamagedIndexError naming `where` when it is not one."""
    try:
        record = json.loads(data)
    except ValueError as error:
        raise DamagedIndexError(f"{where}: cannot be decoded: {error}") from None
    if not isinstance(record, dict):
        raise DamagedIndexError(f"{where}: not a record")
    return record


class RowCodec:
    """Rows as JSON deflated with the index's preset dictionary."""

    def __init__(self, zdict: bytes, path: Path) -> None:
        self.zdict = zdict
        self.path = path

    def dump(self, row: Row) -> bytes:
        """The row as stored."""
        # Level 1: level 6 saves 4 % more and takes twice the time.
        deflate = zlib.compressobj(1, zdict=self.zdict)
        return deflate.compress(dump_json(row)) + deflate.flush()

    def load(self, data: bytes | None, key: bytes) -> Row:
        """The row stored under `key`; DamagedIndexError when it cannot be decoded or is
        another instance's (a damaged key)."""
        where = f"{self.path}: the row of {key.decode('utf-8', 'replace')!r}"
        if data is None:
            raise DamagedIndexError(f"{where}: missing, though series_rows lists it")
        try:
            text = zlib.decompressobj(zdict=self.zdict).decompress(data)
        except zlib.error as error:
            raise DamagedIndexError(f"{where}: cannot be decoded: {error}") from None
        row = load_json(text, where)
        if not all(isinstance(row.get(k), str) for k in UID_KEYWORDS):
            raise DamagedIndexError(f"{where}: no UIDs")
        if row["SOPInstanceUID"].encode() != key:
            raise DamagedIndexError(f"{where}: stored under another instance's key")
        return cast(Row, row)
