"""What a protocol handler is given: the archive, the server's configuration and the audit trail."""

from __future__ import annotations

import logging
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


class _WithoutText(logging.Filter):
    """Puts a fixed line in place of a record's own (pydicom's messages and warnings quote
    data set values)."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.line, ()
        return True


#: The loggers whose lines the server writes without their text, and the line instead:
#: pydicom's (and its child loggers'), and warnings (pydicom warns with the text it logs,
#: from wherever its caller is: the server's own modules too).
_QUIETED = {
    "pydicom": "pydicom warned about a data set (its text is not logged)",
    "py.warnings": "a warning was raised (its text is not logged: it may quote a data set)",
}


def keep_values_out_of_logs() -> None:
    """Let no data set value reach the server's log through pydicom: it checks no values
    against their VR (a check of pydicom's, which quotes the value; the archive's own
    checks are done at ingest), and what it still logs or warns is said without its text."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    logging.captureWarnings(True)
    for name, line in _QUIETED.items():
        # On a handler, not the logger: a logger's filters do not see its child loggers'
        # records (pydicom.pixels.decoders...), a handler's do.
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WithoutText) for h in logger.handlers for f in h.filters):
            handler = logging.StreamHandler()  # stderr, where the server's lines go
            handler.addFilter(_WithoutText(line))
            logger.addHandler(handler)
            logger.propagate = False
