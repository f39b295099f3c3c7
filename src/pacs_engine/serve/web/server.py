"""The DICOMweb application on uvicorn, in a thread of the `serve` process beside DIMSE."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp

from pacs_engine.serve.config import TlsConfig

#: Bounds on the HTTP server starting, and on the requests in progress finishing at a stop.
START_SECONDS = 30
GRACE_SECONDS = 5


class HttpServer:
    """uvicorn serving one ASGI application on its own thread and event loop."""

    def __init__(self, app: ASGIApp, tls: TlsConfig | None = None) -> None:
        self.tls = tls
        self.config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,  # the audit trail has every request; a URL's query may name a patient
            lifespan="off",
            timeout_graceful_shutdown=GRACE_SECONDS,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def scheme(self) -> str:
        """ "https" with TLS, else "http"."""
        return "https" if self.tls else "http"

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on (host, port) (0: a free port) and serve; the address bound.

        The socket is bound and the TLS files read here, so that a port in use or a bad
        certificate is an error of the command, before anything is served.
        """
        self.config.load()  # reads the certificate and key: ssl.SSLError, OSError
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="dicomweb", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the DICOMweb server did not start")
            time.sleep(0.01)
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        """Stop listening, let requests in progress finish (bounded), close."""
        if self._thread is not None:
            self.server.should_exit = True
            self._thread.join(GRACE_SECONDS + 10)
        if self._socket is not None:
            self._socket.close()
