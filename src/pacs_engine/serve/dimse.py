"""The DIMSE server: C-ECHO, C-STORE into the durable spool, and the seams of Query/Retrieve.

Built on pynetdicom, whose event handlers are the seam between the protocol and the
archive. The server admits only the calling AE titles of its configuration (an AE
not on the list is rejected at association, A-ASSOCIATE-RJ "calling AE title not
recognised"), checks each operation's right (store, query, retrieve), and writes
every association and every operation to the audit trail.

A C-STORE is answered Success only once the instance is durable in the spool
(`serve/spool.py`): the dataset's bytes as received (never decoded and re-encoded)
behind a File Meta Information group built from the request. What cannot be taken
gets a failure status: 0xA700 (the spool cannot be written, or the instance is
larger than the ingest reads whole), 0xC000 (no SOP
Instance UID, not parseable by the archive's scanner, or UIDs that differ from the
request's), 0x0122 (a SOP class that is not a storage class), 0x0124 (the calling
AE has no "store" right).

C-FIND, C-GET and C-MOVE handlers are `Service`s given to `DimseServer`: it negotiates
their SOP classes, checks the right before calling the handler, and audits a refusal.
"""

from __future__ import annotations

import copy
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    evt,
)
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from pacs_engine.archive.prepare import LOSSLESS_SYNTAXES
from pacs_engine.codecs import PASS_THROUGH_BY_SYNTAX
from pacs_engine.errors import ScanError
from pacs_engine.index.keys import UID_KEYWORDS, uid_problem
from pacs_engine.scanning import scan
from pacs_engine.serve.config import Right, ServeConfig, TlsConfig
from pacs_engine.serve.context import ServeContext, dimse_peer
from pacs_engine.serve.retrieve import refused_as_answered
from pacs_engine.serve.spool import Spool

LOG = logging.getLogger(__name__)

# DIMSE statuses (PS3.7 Annex C, PS3.4 B.2.3).
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: The largest instance taken: the ingest reads inputs up to 2 GiB whole (its default
#: input limit, `InputPolicy.max_bytes`) and would keep only the head of a larger one
#: in quarantine, so a larger instance acknowledged here could not be kept whole.
MAX_INSTANCE_BYTES = 2 << 30
#: The Verification SOP Class (C-ECHO).
VERIFICATION = "1.2.840.10008.1.1"
#: ErrorComment is LO: 64 characters.
_COMMENT_CHARS = 64

_PASS_THROUGH = sorted(PASS_THROUGH_BY_SYNTAX)
#: Transfer syntaxes kept as they are: the native ones, deflate, and every compressed
#: syntax whose bitstream the archive keeps (codecs/registry.py). Nothing is transcoded.
#: pynetdicom accepts the first of this list that a presentation context offers, so the
#: order is a preference: a lossless bitstream first (C-GET then sends a stored one as it
#: is, and a sender that offers it loses nothing), then native, then what may be lossy
#: (never chosen over native, so a sender that could send lossless does).
STORAGE_SYNTAXES: tuple[str, ...] = (
    *(uid for uid in _PASS_THROUGH if uid in LOSSLESS_SYNTAXES),
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    *(uid for uid in _PASS_THROUGH if uid not in LOSSLESS_SYNTAXES),
)
STORAGE_CLASSES: frozenset[str] = frozenset(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
)

ServiceKind = Literal["find", "get", "move"]
_SERVICE_EVENTS = {"find": evt.EVT_C_FIND, "get": evt.EVT_C_GET, "move": evt.EVT_C_MOVE}
_SERVICE_RIGHTS: dict[ServiceKind, Right] = {"find": "query", "get": "retrieve", "move": "retrieve"}


@dataclass(frozen=True)
class Service:
    """A Query/Retrieve service: its kind, SOP classes and handler(event, ctx).

    The handler follows pynetdicom's protocol for its event (EVT_C_FIND, EVT_C_GET,
    EVT_C_MOVE) and audits its own outcomes; the server checks the calling AE's
    right (query for find, retrieve for get and move) before calling it.
    """

    kind: ServiceKind
    sop_classes: Sequence[str]
    handler: Callable[[Any, ServeContext], Iterator[Any]]


class _Acceptor(AE):
    """pynetdicom's AE, except that an empty allow-list admits no one (pynetdicom's admits all)."""

    @property
    def require_calling_aet(self) -> list[str]:
        """The admitted calling AE titles; never falsy, so that an empty list rejects all."""
        return _AllowList(self._require_calling_aet)

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        AE.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]


class _AllowList(list[str]):
    """A list that is true even when empty: pynetdicom checks it only when true."""

    def __bool__(self) -> bool:
        return True


class _Contexts(list[PresentationContext]):
    """The server's supported contexts, which pynetdicom deep-copies at each association.

    A deep copy builds every transfer syntax UID again: ~29 ms of CPU for the ~180
    contexts here, under the GIL the association threads share, at every association.
    This copy gives each association its own contexts and lists, sharing the UIDs
    (immutable strings).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


class _LazyHandshake(ssl.SSLContext):
    """A server context whose handshake runs in the association's thread, not in accept().

    pynetdicom wraps each accepted socket in its one accepting thread; a handshake
    there would let one client that connects and sends nothing stall every other.
    Deferred, OpenSSL runs it on the first read, under the association's timeouts.
    """

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """The socket, TLS to be negotiated on first use."""
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The server side of DICOM TLS: TLS 1.2 or later, its certificate, client certificates
    required when a client CA is configured."""
    context = _LazyHandshake(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        context.load_verify_locations(tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class DimseServer:
    """A running DIMSE server over one archive (`start`, then `stop`)."""

    def __init__(
        self,
        ctx: ServeContext,
        spool: Spool,
        services: Sequence[Service] = (),
        on_stored: Callable[[str | None, str, int], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.spool = spool
        self.services = tuple(services)
        # Told (study UID, SOP instance UID, bytes) of each instance acknowledged: `migrate`
        # counts what each study received.
        self.on_stored = on_stored or (lambda study, sop, size: None)
        self.ae = self._make_ae(ctx.config)
        self._server: ThreadedAssociationServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on (the port it was given, or the one picked)."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self, port: int) -> tuple[str, int]:
        """Listen on the configured host and `port` (0: a free one), in background threads."""
        config = self.ctx.config
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]
        for service in self.services:
            handlers.append((_SERVICE_EVENTS[service.kind], self._authorised(service)))
        server = self.ae.start_server(
            (config.host, port),
            block=False,
            evt_handlers=handlers,
            ssl_context=tls_context(config.tls) if config.tls is not None else None,
        )
        assert server is not None  # block=False returns it
        server.contexts = _Contexts(server.contexts)
        self._server = server
        return self.address

    def stop(self) -> None:
        """Stop listening and end the associations in progress (nothing unacknowledged is kept)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # first: no association starts meanwhile
        for assoc in self.ae.active_associations:
            # One being rejected or closed ends by itself (aborting it trips pynetdicom's FSM).
            if assoc.is_established:
                assoc.abort()

    # --- set-up -----------------------------------------------------------------------

    def _make_ae(self, config: ServeConfig) -> AE:
        """The pynetdicom AE: contexts, roles, limits and timeouts from the configuration."""
        ae = _Acceptor(ae_title=config.ae_title)
        ae.require_calling_aet = sorted(config.peers)
        ae.require_called_aet = True
        ae.maximum_associations = config.max_associations
        ae.maximum_pdu_size = config.max_pdu
        # A stalled peer is dropped: association set-up, each DIMSE message, and the socket.
        ae.acse_timeout = config.timeout
        ae.dimse_timeout = config.timeout
        ae.network_timeout = config.timeout
        ae.add_supported_context(VERIFICATION)
        for uid in sorted(STORAGE_CLASSES):
            # Both roles: a C-STORE's SCP here, and the SCP side a C-GET requestor asks for.
            ae.add_supported_context(uid, list(STORAGE_SYNTAXES), scu_role=True, scp_role=True)
        for service in self.services:
            for uid in service.sop_classes:
                ae.add_supported_context(uid)
        return ae

    # --- associations -----------------------------------------------------------------

    def _audit(self, event: Any, action: str, outcome: str, **more: Any) -> None:
        actor, address = dimse_peer(event)
        self.ctx.audit.record(
            protocol="dimse", actor=actor, address=address, action=action, outcome=outcome, **more
        )

    def _on_accepted(self, event: Any) -> None:
        self._audit(event, "associate", "accepted")

    def _on_rejected(self, event: Any) -> None:
        actor, _ = dimse_peer(event)
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        if self.ctx.config.peer(actor) is None:
            reason = "calling AE title not recognised"
        elif called != self.ctx.config.ae_title:
            reason = "called AE title not recognised"
        else:
            reason = "too many associations"
        self._audit(event, "associate", "rejected", detail=reason)

    def _on_ended(self, event: Any) -> None:
        self._audit(event, "release" if event.event is evt.EVT_RELEASED else "abort", "ended")

    # --- services ---------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        self._audit(event, "echo", "success")
        return SUCCESS

    def on_store(self, event: Any) -> int | Dataset:
        """Take one instance: Success only once it is durable in the spool.

        The EVT_C_STORE handler of the server's associations, and of the ones `migrate`
        requests for C-GET (the instances come back on it).
        """
        actor, _ = dimse_peer(event)
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop = str(request.AffectedSOPInstanceUID)
        if not self.ctx.config.may(actor, "store"):
            self._audit(event, "store", "refused", instances=[sop], detail="no store right")
            return _status(NOT_AUTHORIZED, "the calling AE may not store")
        if sop_class not in STORAGE_CLASSES:
            self._audit(event, "store", "refused", instances=[sop], detail=f"SOP class {sop_class}")
            return _status(SOP_CLASS_NOT_SUPPORTED, "not a storage SOP class")
        if not sop.isascii():  # a UID is digits and dots: this one cannot be a file's meta
            self._audit(event, "store", "refused", detail="a SOP Instance UID that is not ASCII")
            return _status(CANNOT_UNDERSTAND, "the request's SOP Instance UID is not ASCII")
        meta = file_meta(sop_class, sop, str(event.context.transfer_syntax), actor)
        data = b"".join((b"\x00" * 128, b"DICM", meta, event.encoded_dataset(False)))
        if len(data) > MAX_INSTANCE_BYTES:
            self._audit(event, "store", "refused", instances=[sop], detail=f"{len(data)} bytes")
            return _status(OUT_OF_RESOURCES, f"larger than {MAX_INSTANCE_BYTES} bytes")
        found = check_instance(data, sop_class, sop)
        uids = {"study": found.study, "series": found.series, "instances": [sop]}
        if found.problem is not None:
            self._audit(event, "store", "refused", **uids, detail=found.problem)
            return _status(CANNOT_UNDERSTAND, found.problem)
        try:
            self.spool.put(data)
        except OSError as error:  # the disk is full or failing: the peer may send again
            reason = spool_failure(error)
            self._audit(event, "store", "failed", **uids, detail=reason)
            return _status(OUT_OF_RESOURCES, reason)
        self._audit(event, "store", "success", **uids)
        self.on_stored(found.study, sop, len(data))
        return SUCCESS

    def _authorised(self, service: Service) -> Callable[[Any], Iterator[Any]]:
        """The service's handler behind the check of the calling AE's right."""
        right = _SERVICE_RIGHTS[service.kind]

        def handle(event: Any) -> Iterator[Any]:
            actor, _ = dimse_peer(event)
            if self.ctx.config.may(actor, right):
                return service.handler(event, self.ctx)
            self._audit(event, service.kind, "refused", detail=f"no {right} right")
            return _refusal(service.kind, event)

        return handle


def no_delay(event: Any) -> None:
    """Send each PDU at once (TCP_NODELAY, as dcmtk does).

    A DIMSE message is two writes (command, then data set); with Nagle's algorithm the
    second waits for the peer's delayed acknowledgement: ~40-100 ms added to every
    C-FIND response (benchmarks/bench_cfind.py measures both).
    """
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def file_meta(sop_class: str, sop: str, transfer_syntax: str, source_ae: str) -> bytes:
    """The File Meta Information group of a received instance, encoded (PS3.10 7.1).

    The bytes pydicom writes for pynetdicom's `event.file_meta` plus the Source
    Application Entity Title (a differential test holds them equal, so an instance
    sent again is a byte-identical duplicate), built directly: pydicom's writer cost
    ~0.4 ms of CPU per instance, under the GIL the association threads share.
    """
    elements = b"".join(
        (
            _meta_element("FileMetaInformationVersion", b"\x00\x01"),
            _meta_element("MediaStorageSOPClassUID", _padded(sop_class, b"\x00")),
            _meta_element("MediaStorageSOPInstanceUID", _padded(sop, b"\x00")),
            _meta_element("TransferSyntaxUID", _padded(transfer_syntax, b"\x00")),
            _meta_element(
                "ImplementationClassUID", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")
            ),
            _meta_element(
                "ImplementationVersionName", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")
            ),
            _meta_element("SourceApplicationEntityTitle", _padded(source_ae, b" ")),
        )
    )
    length = struct.pack("<I", len(elements))
    return _meta_element("FileMetaInformationGroupLength", length) + elements


def _meta_element(keyword: str, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002, by keyword."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    vr = dictionary_VR(tag).encode("ascii")
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr == b"OB":  # a long VR: two reserved bytes, then a 32-bit length
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    """ASCII text padded to an even length (UIDs with NUL, other strings with a space)."""
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


@dataclass(frozen=True)
class InstanceCheck:
    """What the scanner found in a received instance: why it cannot be taken (or None), its UIDs."""

    problem: str | None
    sop_class: str | None = None
    sop: str | None = None
    study: str | None = None
    series: str | None = None
    transfer_syntax: str | None = None


def check_instance(
    data: bytes | bytearray, sop_class: str | None = None, sop: str | None = None
) -> InstanceCheck:
    """Scan a received instance (C-STORE's or STOW-RS's): it must parse and have a SOP
    Instance UID, and carry `sop` and `sop_class` when given (a C-STORE request's)."""
    try:
        header = scan(data)
    except ScanError as error:
        # The scanner names its source first: here a buffer, which says nothing.
        return InstanceCheck(f"cannot be parsed: {str(error).removeprefix('<buffer>: ')}")
    attributes = header.attributes
    found = InstanceCheck(
        None,
        _uid(attributes.get("SOPClassUID")),
        _uid(attributes.get("SOPInstanceUID")),
        _uid(attributes.get("StudyInstanceUID")),
        _uid(attributes.get("SeriesInstanceUID")),
        _uid(header.transfer_syntax_uid),
    )
    if found.sop is None:
        return replace(found, problem="the dataset has no SOP Instance UID")
    if sop is not None and found.sop != sop:
        return replace(found, problem="the dataset's SOP Instance UID differs from the request's")
    if sop_class is not None and found.sop_class is not None and found.sop_class != sop_class:
        return replace(found, problem="the dataset's SOP Class UID differs from the request's")
    # Acknowledged, an instance the index cannot key would only be quarantined.
    for keyword in UID_KEYWORDS:
        problem = uid_problem(keyword, attributes.get(keyword))
        if problem is not None:
            return replace(found, problem=f"{problem}: the archive cannot index it")
    return found


def _uid(value: object) -> str | None:
    return str(value) if value else None


def spool_failure(error: OSError) -> str:
    """Why a spool write failed, for a status comment and the audit trail."""
    return f"spool write failed: {error.strerror or type(error).__name__}"


def _status(code: int, comment: str) -> Dataset:
    """A response status with an Error Comment (never patient data)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:_COMMENT_CHARS]
    return status


def _refusal(kind: ServiceKind, event: Any) -> Iterator[Any]:
    """What a handler yields to refuse `event`'s request in pynetdicom's protocol of `kind`."""
    comment = f"the calling AE may not {kind}"
    if kind == "move":
        # A C-MOVE handler yields a destination first; none stops the request before any
        # association is made, and pynetdicom's answer (0xA801, Move Destination unknown)
        # goes out as the refusal.
        refused_as_answered(event, NOT_AUTHORIZED, comment)
        yield None, None
        return
    if kind == "get":
        yield 1  # the number of sub-operations comes first
    yield _status(NOT_AUTHORIZED, comment), None
