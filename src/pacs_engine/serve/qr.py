"""The Query/Retrieve SCP handlers: C-FIND, C-GET and C-MOVE, Patient Root and Study Root.

The server (`serve/dimse.py`) checks the calling AE's rights, then calls these with
the pynetdicom event and the ServeContext; each follows pynetdicom's handler protocol
for its event and writes one audit record of its outcome (studies by UID, counts;
never a patient's name or ID). docs/query-retrieve.md says what is matched and how
instances are sent.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt

from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import Row
from pacs_engine.serve.context import ServeContext, dimse_peer
from pacs_engine.serve.dimse import Service
from pacs_engine.serve.find import (
    CANCEL,
    MAX_MATCHES,
    PENDING,
    UNABLE_TO_PROCESS,
    QueryRefused,
    find,
    parse_identifier,
    response,
)
from pacs_engine.serve.retrieve import (
    MOVE_DESTINATION_UNKNOWN,
    Outgoing,
    Tally,
    install_sender,
    move_contexts,
    refused_as_answered,
    retrieve_rows,
    unreachable_as_failed,
)

#: Patient Root and Study Root Query/Retrieve Information Models (PS3.4 C.6.1, C.6.2).
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
QR_FIND_CLASSES: tuple[str, ...] = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
QR_GET_CLASSES: tuple[str, ...] = (PATIENT_ROOT_GET, STUDY_ROOT_GET)
QR_MOVE_CLASSES: tuple[str, ...] = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
_PATIENT_ROOT = frozenset({PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET})
#: Studies (and series) named in one audit record; beyond, the detail gives their count.
AUDIT_STUDIES = 100

Status = int | Dataset


class _Audit:
    """The audit record of one operation of one association."""

    def __init__(self, event: Any, ctx: ServeContext, action: str) -> None:
        self.actor, self.address = dimse_peer(event)
        self.ctx = ctx
        self.action = action

    def __call__(
        self,
        outcome: str,
        studies: list[str] | None = None,
        detail: str = "",
        series: list[str] | None = None,
    ) -> None:
        if studies is not None and len(studies) > AUDIT_STUDIES:
            detail += f" studies={len(studies)} (first {AUDIT_STUDIES} listed)"
            studies = studies[:AUDIT_STUDIES]
        if series is not None and len(series) > AUDIT_STUDIES:
            detail += f" series={len(series)} (first {AUDIT_STUDIES} listed)"
            series = series[:AUDIT_STUDIES]
        self.ctx.audit.record(
            protocol="dimse",
            actor=self.actor,
            address=self.address,
            action=self.action,
            outcome=outcome,
            study=studies,
            detail=detail.strip() or None,
            series=series or None,
        )


def _identifier(event: Any) -> Dataset:
    """The request identifier, decoded; QueryRefused when it cannot be."""
    try:
        identifier: Dataset = event.identifier
        list(identifier)  # decode every element now, not halfway through the answer
    except Exception:  # pydicom raises many kinds on malformed data sets
        raise QueryRefused(UNABLE_TO_PROCESS, "the identifier cannot be decoded") from None
    return identifier


def _patient_root(event: Any) -> bool:
    return str(event.request.AffectedSOPClassUID) in _PATIENT_ROOT


def _retrieve_rows(event: Any, ctx: ServeContext) -> list[Row]:
    """The instances a retrieve names; QueryRefused also when the index cannot answer."""
    identifier = _identifier(event)
    try:
        return retrieve_rows(ctx.archive, identifier, _patient_root(event))
    except QueryRefused:
        raise
    except (PacsEngineError, ValueError, OSError) as error:
        raise QueryRefused(
            UNABLE_TO_PROCESS, f"unable to process: {type(error).__name__}"
        ) from None


def handle_find(event: Any, ctx: ServeContext) -> Iterator[tuple[Status, Dataset | None]]:
    """EVT_C_FIND: a pending response per match, then the final status (C-CANCEL honoured)."""
    audit = _Audit(event, ctx, "c-find")
    try:
        query = parse_identifier(_identifier(event), _patient_root(event))
    except QueryRefused as refused:
        audit(f"refused 0x{refused.status:04X}", detail=refused.comment)
        yield refused.status_dataset(), None
        return
    detail = f"level={query.level} keys={','.join(sorted(query.filters)) or '-'}"
    studies: dict[str, None] = {}
    matches = 0
    try:
        for record in find(ctx.archive, query, most=MAX_MATCHES):
            if event.is_cancelled:
                audit("cancelled", list(studies), f"{detail} matches={matches}")
                yield CANCEL, None
                return
            answer = response(record, query, ctx.config.ae_title)
            if record.get("StudyInstanceUID"):
                studies[record["StudyInstanceUID"]] = None
            matches += 1
            yield PENDING, answer
    except Exception as error:  # any failure is answered and audited, named by its type only
        failed = (
            error
            if isinstance(error, QueryRefused)
            else QueryRefused(UNABLE_TO_PROCESS, f"unable to process: {type(error).__name__}")
        )
        audit(f"failed 0x{failed.status:04X}", list(studies), f"{detail} {failed.comment}")
        yield failed.status_dataset(), None
        return
    audit("success", list(studies), f"{detail} matches={matches}")


def handle_get(event: Any, ctx: ServeContext) -> Iterator[Any]:
    """EVT_C_GET: the number of sub-operations, then each instance sent on this association."""
    audit = _Audit(event, ctx, "c-get")
    try:
        rows = _retrieve_rows(event, ctx)
    except QueryRefused as refused:
        yield from _refuse(refused, audit)
        return
    if not rows:
        audit("success", [], "instances=0")
        yield 0
        return
    yield len(rows)
    tally = Tally()
    undo = install_sender(event.assoc, ctx.archive, tally)
    cancelled = None
    try:
        cancelled = yield from _sub_operations(event, rows)
    finally:
        undo()
        # Audited however it ends: a requester that aborts drops this handler mid-way.
        outcome = _outcome(tally, len(rows), cancelled)
        audit(outcome, list(tally.studies), _detail(tally, len(rows)), list(tally.series))
    if cancelled:
        yield CANCEL, None


def handle_move(event: Any, ctx: ServeContext) -> Iterator[Any]:
    """EVT_C_MOVE: the destination (from the peer table), the count, then each instance sent."""
    audit = _Audit(event, ctx, "c-move")
    title = str(event.move_destination or "").strip()
    peer = ctx.config.peer(title) if title else None
    if peer is None or peer.address is None:
        audit(f"refused 0x{MOVE_DESTINATION_UNKNOWN:04X}", detail=f"destination={title!r} unknown")
        yield None, None  # pynetdicom answers 0xA801 (Move Destination unknown)
        return
    host, port = peer.address
    try:
        rows = _retrieve_rows(event, ctx)
    except QueryRefused as refused:
        # Given no destination, pynetdicom answers at once, reaching no one: its answer
        # goes out as the refusal.
        audit(f"refused 0x{refused.status:04X}", detail=refused.comment)
        refused_as_answered(event, refused.status, refused.comment)
        yield None, None
        return
    tally = Tally()
    requester = str(event.assoc.requestor.ae_title).strip()

    def on_accepted(accepted: Any) -> None:
        # The destination's association, made by pynetdicom: it sends with our sender.
        install_sender(accepted.assoc, ctx.archive, tally, originator=requester)

    options = {"contexts": move_contexts(rows), "evt_handlers": [(evt.EVT_ACCEPTED, on_accepted)]}
    yield host, port, options
    where = f"destination={peer.ae_title}"
    if not rows:
        audit("success", [], f"{where} instances=0")
        yield 0
        return
    undo = unreachable_as_failed(event, rows)
    try:
        yield len(rows)
    except GeneratorExit:
        # pynetdicom could not associate with the destination and dropped this handler
        # (it answered 0xA702 with every sub-operation failed, through the wrapper).
        studies = list(dict.fromkeys(r["StudyInstanceUID"] for r in rows))
        audit("failure", studies, f"{where} unreachable failed={len(rows)}")
        raise
    finally:
        undo()
    cancelled = None
    try:
        cancelled = yield from _sub_operations(event, rows)
    finally:
        # Audited however it ends: a requester that aborts drops this handler mid-way.
        detail = f"{where} {_detail(tally, len(rows))}"
        outcome = _outcome(tally, len(rows), cancelled)
        audit(outcome, list(tally.studies), detail, list(tally.series))
    if cancelled:
        yield CANCEL, None


def _sub_operations(event: Any, rows: list[Row]) -> Generator[Any, None, bool]:
    """Yield each instance to send; returns True when the peer cancelled first."""
    for row in rows:
        if event.is_cancelled:
            return True
        yield PENDING, Outgoing(row)
    return False


def _refuse(refused: QueryRefused, audit: _Audit) -> Iterator[Any]:
    """A retrieve refused before any sub-operation: one counted, then the failure status."""
    audit(f"refused 0x{refused.status:04X}", detail=refused.comment)
    yield 1  # pynetdicom sends a final status only after a count of at least one
    yield refused.status_dataset(), None


def _outcome(tally: Tally, total: int, cancelled: bool | None) -> str:
    """The audit outcome of a retrieve, as its final status says it (`cancelled` None: it
    stopped before its last sub-operation, the requester gone)."""
    failed = tally.counts["failed"]
    if cancelled is None:
        return "aborted"
    if cancelled:
        return "cancelled"
    if failed == total:
        return "failure"
    return "warning" if failed or tally.counts["warning"] else "success"


def _detail(tally: Tally, total: int) -> str:
    return f"instances={total} {tally.detail()}"


#: The Query/Retrieve services `pacs-engine serve` runs (the server checks each one's right).
QR_SERVICES: tuple[Service, ...] = (
    Service("find", QR_FIND_CLASSES, handle_find),
    Service("get", QR_GET_CLASSES, handle_get),
    Service("move", QR_MOVE_CLASSES, handle_move),
)
