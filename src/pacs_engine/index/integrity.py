"""Checks of the index file that LMDB itself does not make safely.

LMDB maps `data.mdb` and trusts it: a file cut short makes a read past its end
raise SIGBUS, and a page of zeros where a tree page should be trips an assertion
that aborts the process. Neither can be caught once it happens, so the file is
checked first, reading its pages as plain bytes:

- `check_file`, before every open: the two meta pages are LMDB's, the file holds
  every page the newest one counts, and the main tree (which names the databases)
  is sound. Cheap: two meta pages and the main tree's few pages.
- `check_trees`, for `verify`: every page of every tree reachable from a given
  transaction's root is of the kind its parent says, names its own page number,
  and keeps its nodes within its bounds, and each tree holds the entries its
  database record counts.

The layout read here is LMDB's on-disk format for 64-bit builds (lmdb.h, mdb.c):
a page header of 16 bytes, meta pages 0 and 1, B+trees of branch and leaf pages,
overflow pages for large values.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pacs_engine.errors import PacsEngineError

DATA_FILE = "data.mdb"
_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
_PAGE_HEADER = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_PAGE_HEADER_SIZE = 16
_OVERFLOW_PAGES = struct.Struct("<I")  # an overflow page's count, where lower/upper are
_META = struct.Struct("<IIQQ")  # magic, version, address, map size
_DB = struct.Struct("<IHHQQQQQ")  # pad (page size in the free tree), flags, depth, ..., root
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, key size
_META_DBS = 16 + _META.size
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META = 0x01, 0x02, 0x04, 0x08
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_NO_PAGE = (1 << 64) - 1


class DamagedIndexError(PacsEngineError, RuntimeError):
    """The index file is damaged: names the file and what is wrong with it."""


@dataclass(frozen=True)
class Meta:
    """What a meta page says: the page size, the last page, the transaction, the tree roots."""

    page_size: int
    last_page: int
    txnid: int
    free_root: int
    main_root: int
    free_entries: int
    main_entries: int


def read_metas(path: str | os.PathLike) -> list[Meta]:
    """The valid meta pages of `path` (data.mdb), newest first; raises when there is none."""
    with open(path, "rb") as f:
        head = f.read(_PAGE_HEADER_SIZE + _META_DBS + 2 * _DB.size + 16)
        if len(head) < _META_DBS + 2 * _DB.size + 16:
            raise DamagedIndexError(f"{path}: {os.fstat(f.fileno()).st_size} bytes, no LMDB file")
        first = _meta_at(head, 0)
        if first is None:
            raise DamagedIndexError(f"{path}: the first meta page is not LMDB's")
        f.seek(first.page_size)
        second = _meta_at(f.read(len(head)), 1)
    metas = [m for m in (first, second) if m is not None]
    return sorted(metas, key=lambda m: m.txnid, reverse=True)


def _meta_at(page: bytes, number: int) -> Meta | None:
    if len(page) < _META_DBS + 2 * _DB.size + 16:
        return None
    pgno, _, flags, _, _ = _PAGE_HEADER.unpack_from(page)
    magic, version, _, _ = _META.unpack_from(page, _PAGE_HEADER_SIZE)
    if pgno != number or not flags & _P_META or magic != _MAGIC or version != _DATA_VERSION:
        return None
    free = _DB.unpack_from(page, _META_DBS)
    main = _DB.unpack_from(page, _META_DBS + _DB.size)
    last_page, txnid = struct.unpack_from("<QQ", page, _META_DBS + 2 * _DB.size)
    page_size = free[0]
    if page_size < 512 or page_size & (page_size - 1):
        return None
    return Meta(page_size, last_page, txnid, free[-1], main[-1], free[-2], main[-2])


def check_file(folder: str | os.PathLike) -> None:
    """Refuse an index whose data.mdb LMDB could not read without crashing the process.

    A writer committing meanwhile may reuse pages being read: what looks damaged
    is read again while the newest transaction keeps changing (a few times at most).
    """
    path = Path(folder) / DATA_FILE
    for _ in range(4):
        before = read_metas(path)[0].txnid
        try:
            _check_file(path)
            return
        except DamagedIndexError:
            if read_metas(path)[0].txnid == before:
                raise
    _check_file(path)


def _check_file(path: Path) -> None:
    metas = read_metas(path)
    size = path.stat().st_size
    meta = metas[0]
    needed = (meta.last_page + 1) * meta.page_size
    if size < needed:
        raise DamagedIndexError(
            f"{path}: cut short: {size:,} bytes, but its last page ends at byte {needed:,}"
        )
    with open(path, "rb") as f:
        # The main tree names the databases; "meta" is read as the index opens.
        _Walker(path, f, meta).tree(meta.main_root, "the main tree", {"meta"}, meta.main_entries)


def check_trees(folder: str | os.PathLike, txnid: int) -> list[int]:
    """Check every page of the trees of transaction `txnid`; returns the pages checked.

    The caller holds a read transaction `txnid` open, so none of its pages is reused.
    Raises DamagedIndexError naming the first bad page, or when `txnid` is no longer
    one of the two meta pages (a writer committed twice since: check again).
    """
    path = Path(folder) / DATA_FILE
    found = [m for m in read_metas(path) if m.txnid == txnid]
    if not found:
        raise DamagedIndexError(f"{path}: no meta page of transaction {txnid} (written meanwhile)")
    with open(path, "rb") as f:
        walker = _Walker(path, f, found[0])
        meta = found[0]
        walker.tree(meta.free_root, "the free-page tree", set(), meta.free_entries)
        walker.tree(meta.main_root, "the main tree", None, meta.main_entries)
    return sorted(walker.seen)


class _Walker:
    """Reads the pages of LMDB trees and checks their structure."""

    def __init__(self, path: Path, file: BinaryIO, meta: Meta) -> None:
        self.path = path
        self.file = file
        self.meta = meta
        self.seen: set[int] = set()

    def page(self, number: int, where: str) -> bytes:
        if not 2 <= number <= self.meta.last_page:
            raise DamagedIndexError(f"{self.path}: {where}: page {number} is out of the file")
        if number in self.seen:
            raise DamagedIndexError(f"{self.path}: {where}: page {number} is reached twice")
        self.seen.add(number)
        size = self.meta.page_size
        self.file.seek(number * size)
        data = self.file.read(size)
        if len(data) < size:
            raise DamagedIndexError(f"{self.path}: page {number} is cut short")
        return data

    def tree(self, root: int, name: str, named: set[str] | None, entries: int) -> None:
        """Every page below `root`, and the trees its leaves name (those in `named`; None: all).

        The tree must hold the `entries` its database record counts.
        """
        if root == _NO_PAGE:
            if entries:
                raise DamagedIndexError(f"{self.path}: {name}: {entries} entries but no pages")
            return  # an empty tree
        stack = [root]
        subtrees = []
        found = 0
        while stack:
            number = stack.pop()
            where = f"{name}, page {number}"
            data = self.page(number, name)
            pgno, _, flags, lower, upper = _PAGE_HEADER.unpack_from(data)
            if pgno != number:
                raise DamagedIndexError(
                    f"{self.path}: {where}: the page says it is page {pgno} (zeroed or overwritten)"
                )
            kind = flags & (_P_BRANCH | _P_LEAF | _P_OVERFLOW | _P_META)
            if kind not in (_P_BRANCH, _P_LEAF):
                raise DamagedIndexError(f"{self.path}: {where}: not a tree page (flags {flags:#x})")
            if not _PAGE_HEADER_SIZE <= lower <= upper <= len(data) or lower % 2:
                raise DamagedIndexError(f"{self.path}: {where}: bad bounds {lower}..{upper}")
            count = (lower - _PAGE_HEADER_SIZE) // 2
            offsets = struct.unpack_from(f"<{count}H", data, _PAGE_HEADER_SIZE)
            for offset in offsets:
                if not upper <= offset <= len(data) - _NODE.size:
                    raise DamagedIndexError(f"{self.path}: {where}: a node outside the page")
                lo, hi, node_flags, key_size = _NODE.unpack_from(data, offset)
                at = offset + _NODE.size + key_size
                if kind == _P_BRANCH:
                    if at > len(data):
                        raise DamagedIndexError(f"{self.path}: {where}: a key outside the page")
                    stack.append(lo | hi << 16 | node_flags << 32)
                    continue
                size = lo | hi << 16
                found += 1
                if node_flags & _F_DUPDATA:
                    raise DamagedIndexError(f"{self.path}: {where}: duplicate keys, never written")
                if node_flags & _F_BIGDATA:
                    if at + 8 > len(data):
                        raise DamagedIndexError(f"{self.path}: {where}: a value outside the page")
                    (first,) = struct.unpack_from("<Q", data, at)
                    self.overflow(first, size, where)
                    continue
                if at + size > len(data):
                    raise DamagedIndexError(f"{self.path}: {where}: a value outside the page")
                if node_flags & _F_SUBDATA:
                    key = data[offset + _NODE.size : at].decode("utf-8", "replace")
                    if named is None or key in named:
                        record = _DB.unpack_from(data, at)
                        subtrees.append((record[-1], f"database {key!r}", record[-2]))
        if found != entries:
            raise DamagedIndexError(
                f"{self.path}: {name}: {found} entries reached, its record counts {entries}"
            )
        for root_page, sub, sub_entries in subtrees:
            self.tree(root_page, sub, set(), sub_entries)

    def overflow(self, first: int, size: int, where: str) -> None:
        """The run of overflow pages that holds one large value."""
        data = self.page(first, where)
        pgno, _, flags, _, _ = _PAGE_HEADER.unpack_from(data)
        (pages,) = _OVERFLOW_PAGES.unpack_from(data, 12)
        if pgno != first or not flags & _P_OVERFLOW:
            raise DamagedIndexError(f"{self.path}: {where}: page {first} is not an overflow page")
        if pages * self.meta.page_size < size + _PAGE_HEADER_SIZE:
            raise DamagedIndexError(f"{self.path}: {where}: overflow page {first} is too short")
        if first + pages - 1 > self.meta.last_page:
            raise DamagedIndexError(f"{self.path}: {where}: overflow pages beyond the file")
        self.seen.update(range(first + 1, first + pages))
