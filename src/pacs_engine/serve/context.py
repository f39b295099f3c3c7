"""What a protocol handler is given: the archive, the server's configuration and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pacs_engine.archive import Archive
from pacs_engine.serve.audit import AuditLog
from pacs_engine.serve.config import ServeConfig


@dataclass
class ServeContext:
    """The state shared by every handler of one server process.

    `archive` is the server's one Archive, open for writing by its receive path
    (an archive has one writer); handlers only read through it, from any thread.
    """

    archive: Archive
    config: ServeConfig
    audit: AuditLog


def dimse_peer(event: Any) -> tuple[str, str]:
    """(AE title, "host:port") of the peer of the association a pynetdicom event belongs to.

    The calling AE of an association the server accepted; the called AE of one it
    requested (a C-GET of `migrate`, whose C-STOREs come back on it).
    """
    assoc = event.assoc
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return str(peer.ae_title).strip(), f"{peer.address}:{peer.port}"
