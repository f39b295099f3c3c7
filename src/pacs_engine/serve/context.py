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
    """(calling AE title, "host:port") of the association a pynetdicom event belongs to."""
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"
