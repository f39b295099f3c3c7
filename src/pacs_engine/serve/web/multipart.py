"""A multipart/related writer (RFC 2387) for WADO-RS responses: parts made one at a time."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator


def new_boundary() -> str:
    """A boundary no part's bytes will hold by chance (122 random bits)."""
    return uuid.uuid4().hex


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The Content-Type of a multipart/related body of `part_type` parts."""
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"{syntax}; boundary={boundary}'


def part_head(boundary: str, part_type: str, location: str | None = None) -> bytes:
    """The delimiter and headers that open one part (CRLF CRLF included)."""
    headers = f"--{boundary}\r\nContent-Type: {part_type}\r\n"
    if location is not None:
        headers += f"Content-Location: {location}\r\n"
    return f"{headers}\r\n".encode("ascii")


def closing(boundary: str) -> bytes:
    """The close delimiter that ends a body."""
    return f"--{boundary}--\r\n".encode("ascii")


def stream(boundary: str, parts: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """The body of (part type, part bytes) pairs, one part at a time (a study may be GBs)."""
    for part_type, data in parts:
        yield part_head(boundary, part_type) + data + b"\r\n"
    yield closing(boundary)


def body(boundary: str, parts: Iterable[tuple[str, bytes]]) -> bytes:
    """The whole body at once (a few frames: cheaper than a stream), each part copied once."""
    pieces = []
    for part_type, data in parts:
        pieces += [part_head(boundary, part_type), data, b"\r\n"]
    return b"".join([*pieces, closing(boundary)])
