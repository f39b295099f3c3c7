"""The DICOMweb ASGI application: authentication before every route but `/health`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.spool import Spool
from pacs_engine.serve.web import qido, stow, wado
from pacs_engine.serve.web.request import Principal, audit

#: Answers who a request comes from, or None when its credentials are missing or invalid.
Authenticator = Callable[[Request], Principal | None]

#: The path answered without credentials (it says only that the server is up).
HEALTH_PATH = "/health"


class Authenticate:
    """ASGI middleware: 401 (audited) unless the authenticator names the caller."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        who = self.authenticator(request)
        if who is None:
            audit(request, f"{request.method} {scope['path']}", "unauthenticated")
            response: Response = PlainTextResponse(
                "valid credentials are needed", 401, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = who
        await self.app(scope, receive, send)


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")


def make_app(
    context: ServeContext,
    authenticator: Authenticator,
    spool: Spool | None = None,
    routes: Sequence[BaseRoute] | None = None,
) -> Starlette:
    """The application serving `context`'s archive (every DICOMweb route unless `routes`).

    `spool` is where STOW-RS writes what it receives (the receive path C-STORE uses);
    without one, STOW-RS answers 503.
    """
    if routes is None:
        routes = [*qido.routes(), *wado.routes(), *stow.routes()]
    app = Starlette(routes=[Route(HEALTH_PATH, _health, methods=["GET"]), *routes])
    app.state.context = context
    app.state.spool = spool
    app.add_middleware(Authenticate, authenticator=authenticator)
    return app
