"""C-GET and C-MOVE: which instances an identifier names, and sending each as it was archived.

pynetdicom runs the sub-operations of a retrieve (counts, pending responses, the
final status) and sends each instance a handler yields with `send_c_store`, which
re-encodes a pydicom Dataset: the original bytes would not survive (element order,
group lengths, undefined lengths). So a handler yields `Outgoing` placeholders, and
`install_sender` replaces `send_c_store` on the association that sends them (the
C-GET association itself, or the C-MOVE destination's, when it is accepted) by
`send_encoded`, which sends already-encoded bytes in a negotiated transfer syntax:

- the instance's original data set, byte for byte, when the receiver accepted its
  stored transfer syntax;
- else the instance in explicit (or implicit) VR little endian: a compressed or big
  endian instance with its pixels decoded from the archive (`Archive.native_bytes`),
  another one re-encoded by pydicom;
- else the sub-operation fails (no presentation context for it).

`send_encoded` follows pynetdicom 3's own `Association.send_c_store` step by step
(the reactor pause, the DIMSE send and wait, the response check) and uses its
private members; pyproject pins pynetdicom below 4 for that.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.dimse_primitives import C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.status import (
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
)

from pacs_engine.archive import Archive
from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import Row
from pacs_engine.serve.find import (
    IDENTIFIER_MISMATCH,
    UNIQUE_KEY,
    QueryRefused,
    as_list,
    query_level,
)

#: The native syntaxes an instance is sent in when its stored one was not accepted.
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: C-MOVE statuses (PS3.4 C.4.2.1.5): Move Destination unknown; unable to perform sub-operations.
MOVE_DESTINATION_UNKNOWN, UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA801, 0xA702

#: Most presentation contexts one association may propose (PS3.8: odd IDs 1 to 255).
MAX_CONTEXTS = 128


#: The characters a query matches as wildcards (PS3.4 C.2.2.2.4), which a retrieve refuses.
WILDCARDS = frozenset("*?")


class NotSendable(PacsEngineError, ValueError):
    """An instance that cannot be sent on an association (no context, not rebuilt)."""


def retrieve_rows(archive: Archive, identifier: Dataset, patient_root: bool) -> list[Row]:
    """The instances a C-GET / C-MOVE identifier names, by the unique keys of its levels."""
    level = query_level(identifier, patient_root)
    levels = ("PATIENT", "STUDY", "SERIES", "IMAGE")
    wanted = [UNIQUE_KEY[lv] for lv in levels[: levels.index(level) + 1]]
    if not patient_root:
        wanted.remove("PatientID")
    filters: dict[str, Any] = {}
    for keyword in wanted:
        values = [str(v) for v in as_list(identifier.get(keyword)) if v]
        # PS3.4 C.4.2.2.1: a retrieve names instances by their unique keys' values; matched
        # as a query would, a "*" would send a peer allowed to retrieve, not to query,
        # every instance of the archive. The level's own key is refused with one; an upper
        # level's (a Patient ID may hold a "*") is left out: the level's own narrows more.
        if any(WILDCARDS.intersection(value) for value in values):
            if keyword == UNIQUE_KEY[level]:
                raise QueryRefused(IDENTIFIER_MISMATCH, f"{keyword}: a retrieve takes no wildcard")
            continue
        if values:
            filters[keyword] = values
    if UNIQUE_KEY[level] not in filters:
        raise QueryRefused(IDENTIFIER_MISMATCH, f"{UNIQUE_KEY[level]} needed at {level} level")
    return cast(list[Row], archive.query("instance", strict=False, **filters))


class Outgoing(Dataset):
    """The placeholder a retrieve handler yields for one instance; `send_encoded` sends it."""

    def __init__(self, row: Row) -> None:
        super().__init__()
        self.row = row
        # pynetdicom lists these in the Failed SOP Instance UID List when the send fails.
        self.SOPClassUID = row.get("SOPClassUID", "")
        self.SOPInstanceUID = row["SOPInstanceUID"]


class Tally:
    """How a retrieve's sends went, for its audit record (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.studies: dict[str, None] = {}
        self.series: dict[str, None] = {}

    def add(self, outcome: str, row: Row) -> None:
        """Count one sub-operation's outcome."""
        with self._lock:
            self.counts[outcome] += 1
            self.studies[row["StudyInstanceUID"]] = None
            self.series[row["SeriesInstanceUID"]] = None

    def detail(self) -> str:
        """The counts as `name=n` pairs."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))


def install_sender(
    assoc: Any, archive: Archive, tally: Tally, originator: str | None = None
) -> Callable[[], None]:
    """Make `assoc.send_c_store` send `Outgoing` items with `send_encoded`; returns the undo.

    `originator`: the AE title that asked for a C-MOVE, its sub-operations' Move Originator
    Application Entity Title (pynetdicom would name this server).
    """
    original = assoc.send_c_store

    def send_c_store(
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        if originator is not None:
            originator_aet = originator
        if not isinstance(dataset, Outgoing):
            return original(dataset, msg_id, priority, originator_aet, originator_id)
        try:
            status = send_encoded(
                assoc, archive, dataset.row, tally, msg_id, priority, originator_aet, originator_id
            )
            # Classified as pynetdicom classifies it for the sub-operation counts.
            kind = STORAGE_SERVICE_CLASS_STATUS[status.Status][0]
        except Exception:
            tally.add("failed", dataset.row)
            raise  # pynetdicom counts an exception (or an unknown status) as a failure
        outcome = {STATUS_SUCCESS: "completed", STATUS_WARNING: "warning"}.get(kind, "failed")
        tally.add(outcome, dataset.row)
        return status

    assoc.send_c_store = send_c_store

    def undo() -> None:
        assoc.send_c_store = original

    return undo


def unreachable_as_failed(event: Any, rows: list[Row]) -> Callable[[], None]:
    """Answer a C-MOVE whose destination cannot be associated with as all sub-operations failed.

    pynetdicom answers 0xA801 (Move Destination unknown) when it cannot associate with
    a destination the handler gave, and drops the handler. This request's 0xA801 then
    goes out as 0xA702 (unable to perform sub-operations) with every instance counted
    failed and listed in the Failed SOP Instance UID List; returns the undo, to call once
    the destination is reached (or not).
    """
    syntax = UID(event.context.transfer_syntax)

    def all_failed(response: C_MOVE) -> None:
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = [row["SOPInstanceUID"] for row in rows]
        response.Status = UNABLE_TO_PERFORM_SUB_OPERATIONS
        response.NumberOfFailedSuboperations = len(rows)
        response.NumberOfCompletedSuboperations = 0
        response.NumberOfWarningSuboperations = 0
        encoded = encode(failed, syntax.is_implicit_VR, syntax.is_little_endian)
        response.Identifier = BytesIO(encoded or b"")

    return _unknown_destination_as(event, all_failed)


def refused_as_answered(event: Any, status: int, comment: str) -> None:
    """Answer a C-MOVE refused before any destination is reached with `status` and `comment`.

    The handler then yields no destination, which pynetdicom answers at once with 0xA801
    (Move Destination unknown), without associating with anyone: that answer goes out
    with the refusal's status and Error Comment instead (once; the wrapper removes itself).
    """

    def refusal(response: C_MOVE) -> None:
        response.Status = status
        response.ErrorComment = comment[:64]  # type: ignore[assignment]  # pynetdicom: None
        undo()

    undo = _unknown_destination_as(event, refusal)


def _unknown_destination_as(event: Any, rewrite: Callable[[C_MOVE], None]) -> Callable[[], None]:
    """Wrap the request association's `dimse.send_msg` so that this request's 0xA801 response
    is rewritten by `rewrite` before it goes out; returns the undo."""
    dimse = event.assoc.dimse
    original = dimse.send_msg
    message_id = event.request.MessageID

    def send_msg(primitive: Any, context_id: int) -> None:
        if (
            isinstance(primitive, C_MOVE)
            and primitive.MessageIDBeingRespondedTo == message_id
            and primitive.Status == MOVE_DESTINATION_UNKNOWN
        ):
            rewrite(primitive)
        original(primitive, context_id)

    dimse.send_msg = send_msg

    def undo() -> None:
        dimse.send_msg = original

    return undo


def send_encoded(
    assoc: Any,
    archive: Archive,
    row: Row,
    tally: Tally,
    msg_id: int,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """Send one archived instance with a C-STORE request; the response's status dataset."""
    if not assoc.is_established:
        # As Association.send_c_store checks first: once the receiver has released or
        # aborted, each instance left fails at once, not after a DIMSE timeout each.
        raise NotSendable(f"{row['SOPInstanceUID']}: the receiver's association has ended")
    payload, context = encoded_for(assoc, archive, row, tally)
    request = C_STORE()
    request.MessageID = msg_id
    request.Priority = priority
    request.MoveOriginatorApplicationEntityTitle = originator_aet
    request.MoveOriginatorMessageID = originator_id
    request.AffectedSOPClassUID = context.abstract_syntax
    request.AffectedSOPInstanceUID = row["SOPInstanceUID"]
    request.DataSet = BytesIO(payload)
    # As Association.send_c_store: pause the association's reactor, send, wait.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:  # the DIMSE timeout expired: pynetdicom aborts
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(response)
    return status


def encoded_for(assoc: Any, archive: Archive, row: Row, tally: Tally) -> tuple[bytes, Any]:
    """The data set bytes to send and the accepted presentation context to send them on."""
    uid = row["SOPInstanceUID"]
    sop_class = row.get("SOPClassUID") or ""
    try:
        data = archive.export_bytes(uid)
    except PacsEngineError as error:
        raise NotSendable(str(error)) from None
    start, stored = split_meta(data, row)
    context = _context(assoc, sop_class, stored)
    if context is not None:
        tally.add("sent_as_stored", row)
        return data[start:], context
    for syntax in NATIVE_SYNTAXES:
        context = _context(assoc, sop_class, syntax)
        if context is not None:
            tally.add("transcoded", row)
            return native_dataset(archive, row, data, start, stored, syntax), context
    raise NotSendable(f"{uid}: the receiver accepted no transfer syntax for its SOP class")


def _context(assoc: Any, sop_class: str, syntax: str) -> Any:
    """The accepted context for (SOP class, syntax) in which this side sends, or None."""
    try:
        return assoc._get_valid_context(sop_class, syntax, "scu", allow_conversion=False)
    except ValueError:
        return None


def native_dataset(
    archive: Archive, row: Row, data: bytes, start: int, stored: str, syntax: UID
) -> bytes:
    """The instance's data set in `syntax` (a native little endian one)."""
    if row.get("pixels") and _needs_decoding(stored):
        data = archive.native_bytes(row["SOPInstanceUID"])
        start, stored = split_meta(data, row)
        if syntax == ExplicitVRLittleEndian:
            return data[start:]
    try:
        dataset = pydicom.dcmread(BytesIO(data), force=True)
        encoded = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian)
    except Exception as error:  # pydicom can fail on odd data sets in many ways
        # Its type only: pydicom's messages may quote the data set's values, and this one
        # reaches peers, clients and the audit trail.
        raise NotSendable(
            f"{row['SOPInstanceUID']}: pydicom cannot re-encode it ({type(error).__name__})"
        ) from None
    if encoded is None:
        raise NotSendable(f"{row['SOPInstanceUID']}: pydicom could not encode it in {syntax}")
    return encoded


def _needs_decoding(syntax: str) -> bool:
    """True when pixels in `syntax` must be decoded to be sent natively little endian."""
    try:
        uid = UID(syntax)
        return bool(uid.is_compressed or not uid.is_little_endian)
    except ValueError:  # not a transfer syntax pydicom knows
        return True


def split_meta(data: bytes, row: Row) -> tuple[int, str]:
    """Where a file's data set starts (after preamble and file meta) and its transfer syntax.

    The file meta ends where its group length says when it has one: group 0002 elements
    some senders put in the data set itself (a C-STORE's) are the data set's, and their
    Transfer Syntax UID is not the file's. The syntax is the one the ingest read the
    file in (the row's), the meta's only for a row without one.
    """
    at = 132 if data[128:132] == b"DICM" else 0
    recorded = row.get("transfer_syntax_uid")
    syntax = recorded or ImplicitVRLittleEndian
    end = len(data)
    if data[at : at + 6] == b"\x02\x00\x00\x00UL":  # File Meta Information Group Length
        end = min(end, at + 12 + int.from_bytes(data[at + 8 : at + 12], "little"))
    while at + 8 <= end and data[at : at + 2] == b"\x02\x00":
        element = int.from_bytes(data[at + 2 : at + 4], "little")
        vr = data[at + 4 : at + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(data[at + 8 : at + 12], "little")
            value_at = at + 12
        else:
            length = int.from_bytes(data[at + 6 : at + 8], "little")
            value_at = at + 8
        if element == 0x0010 and not recorded:
            syntax = data[value_at : value_at + length].rstrip(b"\0 ").decode("ascii", "replace")
        at = value_at + length
    return at, syntax


def move_contexts(rows: list[Row]) -> list[Any]:
    """The presentation contexts to propose to a C-MOVE destination for `rows`.

    Per SOP class, one context for each native syntax (what every instance can be
    sent in), then one per stored transfer syntax, so a receiver that takes it gets
    the original bytes; at most MAX_CONTEXTS, the stored-syntax ones dropped first.
    """
    stored: dict[tuple[str, str], None] = {}
    classes: dict[str, None] = {}
    for row in rows:
        sop_class = row.get("SOPClassUID") or ""
        classes[sop_class] = None
        syntax = ExplicitVRLittleEndian if row.get("transcoded") else row.get("transfer_syntax_uid")
        if syntax and syntax not in NATIVE_SYNTAXES:
            stored[(sop_class, syntax)] = None
    contexts = [build_context(c, s) for c in classes for s in NATIVE_SYNTAXES]
    contexts += [build_context(c, s) for c, s in stored]
    return contexts[:MAX_CONTEXTS]
