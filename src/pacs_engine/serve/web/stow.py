"""STOW-RS (PS3.18 10.5): `POST /studies[/{study}]` into the durable receive path C-STORE uses.

The body, `multipart/related; type="application/dicom"`, is read as it arrives
(`read_parts`): one part in memory at a time, the whole body bounded by
`max_body_bytes` (413 beyond it). Each part is a PS3.10 file, checked as a C-STORE
instance is (`dimse.check_instance`: it parses, has a SOP Instance UID) plus what
a file brings itself: its transfer syntax is one the Storage SCP accepts, its SOP
class a storage class, and its study the one in the URL when there is one. A part
that passes is written to the spool under a hidden name and fsynced
(`Spool.stage`); once the body has been read to its closing boundary, the staged
parts are renamed in at once and the rename fsynced (`Spool.admit`), and only then
is the answer sent. A body that is malformed (no boundary, bad framing, truncated)
or over the limit is answered 400 or 413 and every part staged for it is deleted:
nothing of it reaches the archive.

Answers (application/dicom+json): 200 when every instance was stored, 202 when
some failed, 409 when all did, each with the ReferencedSOPSequence of those stored
and the FailedSOPSequence (with FailureReason) of the others; 415 for another
content type; 406 when the Accept header excludes JSON. Each refused part and
each request is audited (action "stow").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from pacs_engine.errors import PacsEngineError
from pacs_engine.serve.dimse import (
    MAX_INSTANCE_BYTES,
    STORAGE_CLASSES,
    STORAGE_SYNTAXES,
    InstanceCheck,
    check_instance,
    spool_failure,
)
from pacs_engine.serve.spool import Spool
from pacs_engine.serve.web.request import accepted, audit, require, url_uid

#: The largest header block of one part (a few lines in practice).
MAX_PART_HEADER_BYTES = 16384
#: Studies, series and instances named in one audit record (each); beyond, the detail
#: gives their count.
AUDIT_UIDS = 100
#: The media type of the parts.
DICOM = "application/dicom"

# FailureReason values (PS3.18 Table 10.5.3-2; PS3.4 Annex B statuses).
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

#: Accept media ranges the answer (application/dicom+json) satisfies.
_ANSWER_TYPES = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


class MalformedBody(PacsEngineError, ValueError):
    """The body is not a well-formed multipart/related message (400)."""


class BodyTooLarge(PacsEngineError, ValueError):
    """The body is over the limit (413)."""


@dataclass
class Part:
    """One body part: its number (from 1), its headers (names lower-cased) and its bytes."""

    number: int
    headers: dict[str, str]
    data: bytearray


class _Buffer:
    """The bytes of a body received so far and not yet consumed, counted against a limit."""

    def __init__(self, chunks: AsyncIterator[bytes], max_bytes: int) -> None:
        self.chunks = chunks
        self.max_bytes = max_bytes
        self.received = 0
        # A delimiter is CRLF "--" boundary; the first may open the body without the CRLF.
        self.data = bytearray(b"\r\n")

    async def fill(self) -> bool:
        """Append the next chunk; False at the end of the body."""
        chunk = await anext(self.chunks, None)
        if chunk is None:
            return False
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise BodyTooLarge(f"the body is over {self.max_bytes} bytes")
        self.data += chunk
        return True

    async def take(self, count: int) -> bytes | None:
        """The next `count` bytes, consumed; None when the body ends first."""
        while len(self.data) < count:
            if not await self.fill():
                return None
        taken = bytes(self.data[:count])
        del self.data[:count]
        return taken

    async def read_to(self, marker: bytes, out: bytearray | None, limit: int) -> bool:
        """Consume up to and including `marker`, what comes before it appended to `out`
        (or dropped); False when the body ends first. MalformedBody past `limit` bytes."""
        kept = 0
        while True:
            at = self.data.find(marker)
            end = at if at >= 0 else max(0, len(self.data) - len(marker) + 1)
            kept += end
            if kept > limit:
                raise MalformedBody(f"more than {limit} bytes before a {marker!r}")
            if out is not None:
                out += self.data[:end]
            if at >= 0:
                del self.data[: at + len(marker)]
                return True
            del self.data[:end]  # what cannot begin the marker
            if not await self.fill():
                return False


async def read_parts(
    chunks: AsyncIterator[bytes],
    boundary: str,
    max_bytes: int,
    max_part_bytes: int = MAX_INSTANCE_BYTES,
) -> AsyncIterator[Part]:
    """The parts of a multipart body (RFC 2046), one at a time, as the body arrives.

    MalformedBody when the framing is wrong or the body ends before its closing
    delimiter; BodyTooLarge once more than `max_bytes` have come, or a part holds more
    than `max_part_bytes` (found as it comes: a part is held in memory whole).
    """
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = _Buffer(chunks, max_bytes)
    if not await body.read_to(delimiter, None, max_bytes):  # the preamble is ignored
        raise MalformedBody("the boundary of the Content-Type does not occur in the body")
    number = 0
    while True:
        after = await body.take(2)
        if after is None:
            raise MalformedBody(f"the body ends after a boundary, before part {number + 1}")
        if after == b"--":
            return  # the closing delimiter; an epilogue is ignored
        number += 1
        body.data[0:0] = after
        line = bytearray()
        if not await body.read_to(b"\r\n", line, 1024) or line.strip(b" \t"):
            raise MalformedBody(f"part {number}: the boundary line has other text after it")
        # A CRLF before the header block, so that one with no header ends at the first match.
        body.data[0:0] = b"\r\n"
        block = bytearray()
        if not await body.read_to(b"\r\n\r\n", block, MAX_PART_HEADER_BYTES):
            raise MalformedBody(f"part {number}: the body ends inside the part's headers")
        headers = _headers(block, number)
        data = bytearray()
        try:
            complete = await body.read_to(delimiter, data, max_part_bytes)
        except MalformedBody:  # its only error: the limit
            raise BodyTooLarge(f"part {number}: over {max_part_bytes} bytes") from None
        if not complete:
            raise MalformedBody(f"part {number}: the body ends inside the part (truncated)")
        yield Part(number, headers, data)


def _headers(block: bytearray, number: int) -> dict[str, str]:
    """The headers of a part, names lower-cased."""
    headers = {}
    for line in bytes(block).split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise MalformedBody(f"part {number}: a header line without a name")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers


@dataclass
class _Outcome:
    """What a STOW-RS request did: staged parts, references to answer, UIDs to audit."""

    staged: list[Path] = field(default_factory=list)
    stored: list[Dataset] = field(default_factory=list)
    failed: list[Dataset] = field(default_factory=list)
    studies: dict[str, None] = field(default_factory=dict)
    series: dict[str, None] = field(default_factory=dict)
    instances: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Refusal:
    """Why one part is not stored: its FailureReason, the reason in words, what it names."""

    reason: int
    why: str
    found: InstanceCheck


def _take_part(
    part: Part, target: str | None, spool: Spool, outcome: _Outcome, base: str
) -> _Refusal | None:
    """Check and stage one part (blocking: run in a thread); why not, when it is refused."""
    media = part.headers.get("content-type")
    if media is not None and _media_type(media) != DICOM:
        found = InstanceCheck(f"Content-Type {_media_type(media)}")
        return _Refusal(CANNOT_UNDERSTAND, f"part {part.number}: {found.problem}", found)
    found = check_instance(part.data)
    problem: tuple[int, str] | None = None
    if found.problem is not None:
        problem = CANNOT_UNDERSTAND, found.problem
    elif found.sop_class is None:
        problem = CANNOT_UNDERSTAND, "the dataset has no SOP Class UID"
    elif found.sop_class not in STORAGE_CLASSES:
        problem = SOP_CLASS_NOT_SUPPORTED, f"SOP class {found.sop_class} is not a storage class"
    elif found.transfer_syntax not in STORAGE_SYNTAXES:
        problem = TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {found.transfer_syntax}"
    elif target is not None and found.study != target:
        problem = CANNOT_UNDERSTAND, "the instance's Study Instance UID is not the URL's"
    if problem is not None:
        return _Refusal(problem[0], f"part {part.number}: {problem[1]}", found)
    try:
        outcome.staged.append(spool.stage(part.data))
    except OSError as error:  # the disk is full or failing: the client may send again
        return _Refusal(OUT_OF_RESOURCES, f"part {part.number}: {spool_failure(error)}", found)
    assert found.sop is not None  # checked above
    item = _reference(found)
    if all(url_uid(uid or "") for uid in (found.study, found.series, found.sop)):
        item.RetrieveURL = (
            f"{base}/studies/{found.study}/series/{found.series}/instances/{found.sop}"
        )
    outcome.stored.append(item)
    for uid, seen in ((found.study, outcome.studies), (found.series, outcome.series)):
        if uid is not None:
            seen[uid] = None
    outcome.instances.append(found.sop)
    return None


def _reference(found: InstanceCheck) -> Dataset:
    """A ReferencedSOPSequence / FailedSOPSequence item with the UIDs known."""
    item = Dataset()
    if found.sop_class:
        item.ReferencedSOPClassUID = found.sop_class
    if found.sop:
        item.ReferencedSOPInstanceUID = found.sop
    return item


def _media_type(value: str) -> str:
    message = Message()
    message["content-type"] = value
    return message.get_content_type()


def _refuse(request: Request, status: int, reason: str, study: str | None = None) -> Response:
    """A request refused as a whole: audited, answered with the reason."""
    audit(request, "stow", "refused", study=study, detail=f"{status} {reason}")
    return PlainTextResponse(reason, status)


def make_store(max_body_bytes: int) -> Callable[[Request], Awaitable[Response]]:
    """The STOW-RS endpoint, taking bodies of at most `max_body_bytes`."""

    async def store(request: Request) -> Response:
        """Store the instances of a multipart/related body in the spool; the PS3.18 answer."""
        require(request, "uploader", "stow")
        target = request.path_params.get("study")
        if target is not None and not url_uid(target):
            return _refuse(request, 400, "the study in the URL is not a UID")
        accept = request.headers.get("accept")
        if accept is not None and not _ANSWER_TYPES & {r.type for r in accepted(accept)}:
            return _refuse(request, 406, "the answer is application/dicom+json", target)
        spool: Spool | None = request.app.state.spool
        if spool is None:
            return _refuse(request, 503, "this server does not receive instances", target)
        message = Message()
        message["content-type"] = request.headers.get("content-type", "")
        kind = message.get_param("type")
        kind = kind.lower() if isinstance(kind, str) else kind  # media types ignore case
        if message.get_content_type() != "multipart/related" or kind not in (DICOM, None):
            return _refuse(
                request, 415, f'only multipart/related; type="{DICOM}" is accepted', target
            )
        boundary = message.get_param("boundary")
        # RFC 2046: 1 to 70 ASCII characters.
        if not isinstance(boundary, str) or not 0 < len(boundary) <= 70 or not boundary.isascii():
            return _refuse(request, 400, "the Content-Type has no usable boundary", target)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body_bytes:
            return _refuse(request, 413, f"the body is over {max_body_bytes} bytes", target)
        base = str(request.base_url).rstrip("/")
        outcome = _Outcome()
        try:
            async for part in read_parts(request.stream(), boundary, max_body_bytes):
                refused = await run_in_threadpool(_take_part, part, target, spool, outcome, base)
                if refused is not None:
                    _fail(request, outcome, refused)
                del part  # the reader drops its own reference as it reads the next part
            await run_in_threadpool(spool.admit, outcome.staged)
        except (MalformedBody, BodyTooLarge) as error:
            Spool.discard(outcome.staged)
            status = 413 if isinstance(error, BodyTooLarge) else 400
            return _refuse(request, status, f"{error}; nothing was stored", target)
        except BaseException:  # a dropped connection: nothing staged is kept
            Spool.discard(outcome.staged)
            audit(request, "stow", "aborted", study=target, detail="the body was not received")
            raise
        return _answer(request, outcome, target, base)

    return store


def _fail(request: Request, outcome: _Outcome, refusal: _Refusal) -> None:
    """Record one refused part: in the FailedSOPSequence and the audit trail."""
    item = _reference(refusal.found)
    item.FailureReason = refusal.reason
    outcome.failed.append(item)
    found = refusal.found
    audit(
        request,
        "stow",
        "refused",
        study=found.study,
        series=found.series,
        instances=[found.sop] if found.sop else None,
        detail=f"0x{refusal.reason:04X} {refusal.why}",
    )


def _answer(request: Request, outcome: _Outcome, target: str | None, base: str) -> Response:
    """The PS3.18 response and the request's audit record."""
    stored, failed = len(outcome.stored), len(outcome.failed)
    if stored + failed == 0:
        return _refuse(request, 400, "the body has no part", target)
    status = 200 if not failed else 202 if stored else 409
    answer = Dataset()
    studies = list(outcome.studies) or ([target] if target else [])
    if target is not None or len(studies) == 1:
        answer.RetrieveURL = f"{base}/studies/{target or studies[0]}"
    answer.ReferencedSOPSequence = outcome.stored
    answer.FailedSOPSequence = outcome.failed
    named = {"study": studies, "series": list(outcome.series), "instances": outcome.instances}
    detail = f"stored={stored} failed={failed}"
    for kind, uids in named.items():
        if len(uids) > AUDIT_UIDS:
            detail += f" {kind}={len(uids)} (first {AUDIT_UIDS} listed)"
    audit(
        request,
        "stow",
        {200: "success", 202: "partial", 409: "failure"}[status],
        study=studies[:AUDIT_UIDS] or None,
        series=named["series"][:AUDIT_UIDS] or None,
        instances=outcome.instances[:AUDIT_UIDS] or None,
        detail=detail,
    )
    return JSONResponse(answer.to_json_dict(), status, media_type="application/dicom+json")


def routes(max_body_bytes: int) -> list[BaseRoute]:
    """The STOW-RS routes, taking request bodies of at most `max_body_bytes`."""
    store = make_store(max_body_bytes)
    return [
        Route("/studies", store, methods=["POST"]),
        Route("/studies/{study}", store, methods=["POST"]),
    ]
