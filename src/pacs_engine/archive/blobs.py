"""The bytes of each original file that are not pixel data, kept so `export` rebuilds it exactly.

A blob is everything around the pixel data value (preamble, file meta, every
other element, elements after the pixel data) plus what it takes to re-frame
the pixel data from the archive's frames:

- native data: the bytes after the frames (padding, or extra bytes some writers
  leave), or the whole original value when rebuilding it from the frames does
  not give the original bytes back (checked at ingest);
- encapsulated data: the Basic Offset Table item, each fragment's length (a
  frame's chunk is its fragments, concatenated), and the closing delimiter;
- no pixel data, or a deflated data set: the whole file.

Beside each pack `X.pack` of header blobs, `X.rows` keeps the index rows of the
instances the pack holds, as the part wrote them: what `rebuild_index` needs
that no blob holds (source paths, hashes, pixel references).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import Row
from pacs_engine.stages import stage
from pacs_engine.storage import fsync_dirs, series_folder

MAGIC = b"PEB1"
_HEAD = struct.Struct("<4sBQQQ")

WHOLE, NATIVE, ENCAPSULATED = 0, 1, 2
PACK_SUFFIX, ROWS_SUFFIX = ".pack", ".rows"
#: A copy's rows file until its part is committed (archive/copies.py): `rebuild_index`
#: reads only `.rows` files, so the rename to that name after the commit marks the part
#: committed, and a tidy renames it when a kill came between the two.
PENDING_SUFFIX = ".pending"
#: The suffixes a pack's rows file has: committed, or pending.
ROWS_FILE_SUFFIXES = (ROWS_SUFFIX, PENDING_SUFFIX)


def _compress(data: bytes) -> bytes:
    """Zstandard at level 3, the blobs' and row sidecars' compression, by imagecodecs: plain
    Zstandard frames, as numcodecs' Zstd(level=3) wrote them before (each reads the other's
    for non-empty data, which a blob or rows file always is: tested), whose import costs a
    few ms where numcodecs' costs ~0.07 s in every process."""
    import imagecodecs

    return bytes(imagecodecs.zstd_encode(data, level=3))


def _decompress(data: bytes) -> bytes:
    """What `_compress` compressed; RuntimeError on damaged data."""
    import imagecodecs

    return bytes(imagecodecs.zstd_decode(data))


class BlobError(PacsEngineError, ValueError):
    """A stored blob that cannot be decoded: the archive is damaged."""


@dataclass(frozen=True, slots=True)
class HeaderBlob:
    """The non-pixel bytes of one file and the pixel value's framing."""

    kind: int
    prefix: bytes
    suffix: bytes = b""
    native_tail: bytes = b""  # NATIVE: bytes of the value after the rebuilt frames
    native_value: bytes | None = None  # NATIVE: the original value, when frames cannot rebuild it
    offset_table_item: bytes = b""  # ENCAPSULATED: the BOT item, header included
    fragment_lengths: tuple[tuple[int, ...], ...] = field(default=())  # per frame
    delimiter: bytes = b""  # ENCAPSULATED: the Sequence Delimitation Item as found

    def to_bytes(self) -> bytes:
        """Serialise and compress."""
        if self.kind == NATIVE:
            has_value = self.native_value is not None
            extra = struct.pack("<BQ", has_value, len(self.native_tail)) + self.native_tail
            extra += self.native_value or b""
        elif self.kind == ENCAPSULATED:
            counts = [len(f) for f in self.fragment_lengths]
            lengths = [n for frame in self.fragment_lengths for n in frame]
            extra = struct.pack(
                f"<QQ{len(counts)}Q{len(lengths)}Q", len(counts), len(lengths), *counts, *lengths
            )
            extra += struct.pack("<Q", len(self.offset_table_item)) + self.offset_table_item
            extra += struct.pack("<Q", len(self.delimiter)) + self.delimiter
        else:
            extra = b""
        head = _HEAD.pack(MAGIC, self.kind, len(self.prefix), len(self.suffix), len(extra))
        return _compress(head + self.prefix + self.suffix + extra)

    @classmethod
    def from_bytes(cls, data: bytes) -> HeaderBlob:
        """The blob `to_bytes` wrote; raises BlobError on damaged data."""
        try:
            raw = memoryview(_decompress(data))
            magic, kind, n_prefix, n_suffix, n_extra = _HEAD.unpack_from(raw)
            if magic != MAGIC or _HEAD.size + n_prefix + n_suffix + n_extra != len(raw):
                raise BlobError("not a header blob, or a damaged one")
            pos = _HEAD.size
            prefix = bytes(raw[pos : pos + n_prefix])
            suffix = bytes(raw[pos + n_prefix : pos + n_prefix + n_suffix])
            extra = raw[pos + n_prefix + n_suffix :]
            if kind == NATIVE:
                has_value, n_tail = struct.unpack_from("<BQ", extra)
                tail = bytes(extra[9 : 9 + n_tail])
                value = bytes(extra[9 + n_tail :]) if has_value else None
                return cls(NATIVE, prefix, suffix, native_tail=tail, native_value=value)
            if kind == ENCAPSULATED:
                n_frames, n_lengths = struct.unpack_from("<QQ", extra)
                numbers = struct.unpack_from(f"<{n_frames + n_lengths}Q", extra, 16)
                counts, lengths = numbers[:n_frames], numbers[n_frames:]
                frames, at = [], 0
                for count in counts:
                    frames.append(tuple(lengths[at : at + count]))
                    at += count
                pos = 16 + 8 * (n_frames + n_lengths)
                (n_bot,) = struct.unpack_from("<Q", extra, pos)
                bot = bytes(extra[pos + 8 : pos + 8 + n_bot])
                pos += 8 + n_bot
                (n_delimiter,) = struct.unpack_from("<Q", extra, pos)
                delimiter = bytes(extra[pos + 8 : pos + 8 + n_delimiter])
                return cls(
                    ENCAPSULATED,
                    prefix,
                    suffix,
                    offset_table_item=bot,
                    fragment_lengths=tuple(frames),
                    delimiter=delimiter,
                )
            if kind == WHOLE:
                return cls(WHOLE, prefix)
            raise BlobError(f"unknown blob kind {kind}")
        except (struct.error, RuntimeError, ValueError) as error:
            if isinstance(error, BlobError):
                raise
            raise BlobError(f"damaged header blob: {error}") from None


def read_blob(root: Path, row: Row) -> HeaderBlob:
    """The header blob of one version's row in the archive at `root`, checked against the
    row's `header_sha256` when it has one; BlobError or OSError when damaged or missing."""
    with PackReader(root) as packs:
        return packs.blob(row)


class PackReader:
    """Reads rows' header blobs in the archive at `root` with the last pack kept open: a
    part's rows share a few packs, so one open per pack rather than one per row."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pack: str | None = None
        self._fd = -1

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the open pack, if any."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._pack = -1, None

    def blob(self, row: Row) -> HeaderBlob:
        """The header blob of one version's row, checked against the row's `header_sha256`
        when it has one; BlobError or OSError when damaged or missing."""
        where = row["header"]
        if where["pack"] != self._pack:
            self.close()
            self._fd = os.open(self.root / where["pack"], os.O_RDONLY | os.O_CLOEXEC)
            self._pack = where["pack"]
        data = os.pread(self._fd, where["length"], where["offset"])
        recorded = row.get("header_sha256")  # rows of copies (archive.copies) have it
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise BlobError("the header blob differs from the one written (its sha256)")
        return HeaderBlob.from_bytes(data)


def scannable(blob: HeaderBlob) -> bytes:
    """Bytes the scanner reads as the blob's data set: the whole file, or the bytes up to
    the pixel data value with the value's length set to 0 (what follows it is left out)."""
    if blob.kind == WHOLE:
        return blob.prefix
    # The prefix ends with the pixel data element's header, whose last 4 bytes are its length.
    return blob.prefix[:-4] + bytes(4)


def rows_sidecar(pack: str) -> str:
    """The name of the rows file beside the pack `pack`."""
    return pack.removesuffix(PACK_SUFFIX) + ROWS_SUFFIX


def pending_sidecar(pack: str) -> str:
    """The name of the pack's rows file before its part's commit (`PENDING_SUFFIX`)."""
    return pack.removesuffix(PACK_SUFFIX) + PENDING_SUFFIX


def mark_committed(pending: list[Path]) -> None:
    """Rename pending rows files (`pending_sidecar`) to their rows-file names, durably: once
    their part's rows are committed, so `rebuild_index` takes the part as committed."""
    with stage("write"):
        for path in pending:
            os.replace(path, path.with_suffix(ROWS_SUFFIX))
    fsync_dirs({path.parent for path in pending})


def pack_blobs(
    series_uid: str, rows: list[Row], blobs: list[bytes], written_ns: int | None = None
) -> tuple[str, bytes]:
    """One series' header blobs (`blobs[i]` of `rows[i]`) as one new pack: each row gets its
    `header` reference and its blob counted (`place_blobs`); (the pack's name in the
    archive, its rows file's bytes).

    The rows file holds the rows as they are at the call: a caller's own fields first.
    """
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
    name = f"headers/{series_folder(series_uid)}/{stamp}{PACK_SUFFIX}"
    place_blobs(name, rows, blobs)
    return name, dump_rows(rows, written_ns)


def place_blobs(pack: str, rows: list[Row], blobs: list[bytes]) -> None:
    """Point each row at its blob (`blobs[i]` of `rows[i]`) in the pack `pack`, the blobs
    written one after the other, and add the blob's bytes to the row's `stored_bytes`.

    A version's `stored_bytes` is the bytes it added to the archive: its pixel chunks (none
    when it shares another version's) and its header blob as packed (docs/index.md). Every
    writer (ingest, copies, corrections) counts the blob here.
    """
    offset = 0
    for row, blob in zip(rows, blobs, strict=True):
        row["header"] = {"pack": pack, "offset": offset, "length": len(blob)}
        row["stored_bytes"] = row.get("stored_bytes", 0) + len(blob)
        offset += len(blob)


def dump_rows(rows: list[Row], written_ns: int | None = None) -> bytes:
    """A rows file: the rows, and when they were written (the later of two rows wins);
    `written_ns` keeps the time of a rows file rewritten with fewer rows. It carries the
    SHA-256 of its own JSON: a flipped bit that still decompresses (Zstandard frames here
    have no checksum) would otherwise restore a wrong row (another Patient ID)."""
    record = {"written_ns": time.time_ns() if written_ns is None else written_ns, "rows": rows}
    text = json.dumps(record, separators=(",", ":")).encode()
    # The digest is the record's last key: the JSON of the others is the text before it.
    digest = hashlib.sha256(text).hexdigest().encode()
    return _compress(text[:-1] + b',"sha256":"' + digest + b'"}')


def load_rows(data: bytes) -> tuple[int, list[Row]]:
    """(written_ns, rows) of a rows file; raises BlobError on damaged data (rows files
    written before they carried their SHA-256 are taken as they decode)."""
    try:
        record = json.loads(_decompress(data))
        digest = record.pop("sha256", None)
        if digest is not None and digest != _rows_digest(record):
            raise ValueError("its SHA-256 does not match its rows")
        return int(record["written_ns"]), list(record["rows"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise BlobError(f"damaged rows file: {error}") from None


def _rows_digest(record: dict[str, Any]) -> str:
    """SHA-256 of a rows file's record (without its digest) as JSON, as written."""
    text = json.dumps(record, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest()
