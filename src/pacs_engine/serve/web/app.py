"""The DICOMweb ASGI application: CORS, then authentication before every route but `/health`.

CORS is outermost so that a browser's preflight (OPTIONS, sent without credentials)
is answered without them, and so that refusals carry the CORS headers a viewer
served from another origin needs to read them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.spool import Spool
from pacs_engine.serve.web import qido, stow, wado
from pacs_engine.serve.web.auth import InvalidCredentials, is_jwt
from pacs_engine.serve.web.request import Principal, audit

#: Answers who a request comes from; None or InvalidCredentials (with the reason to
#: audit) when its credentials are missing or invalid.
Authenticator = Callable[[Request], Principal | None]

#: What a browser may send and read across origins (bearer credentials, not cookies).
CORS_METHODS = ("GET", "HEAD", "POST", "OPTIONS")
CORS_HEADERS = ("Authorization", "Accept", "Content-Type")
CORS_EXPOSED = ("Warning", "Content-Location", "Content-Type", "Content-Length")

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
        try:
            if may_wait(request):
                # In a worker thread: a JWT may need the issuer's keys fetched (bounded).
                who = await run_in_threadpool(self.authenticator, request)
            else:  # an API key (or none): a stat and a hash, cheaper than a thread hop
                who = self.authenticator(request)
            reason = "no valid credentials"
        except InvalidCredentials as error:
            who, reason = None, error.reason
        if who is None:
            # The reason is audited, never told: a caller learns nothing from a refusal.
            audit(request, f"{request.method} {scope['path']}", "unauthenticated", detail=reason)
            response: Response = PlainTextResponse(
                "invalid credentials", 401, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"] = who
        action = f"{request.method} {scope['path']}"

        # Every request is audited: one no route audits (a path or a method the routes do
        # not have, an error no handler caught) by its status, before it is answered.
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not state.get("audited"):
                status = message["status"]
                outcome = "success" if status < 400 else "refused" if status < 500 else "failed"
                audit(request, action, outcome, detail=str(status))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:
            if not state.get("audited"):
                audit(request, action, "failed", detail=f"500: {type(error).__name__}")
            raise


def may_wait(request: Request) -> bool:
    """Whether authenticating `request` may wait on I/O: its bearer credential is a JWT."""
    return is_jwt(request.headers.get("authorization", "").partition(" ")[2].strip())


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
        routes = [*qido.routes(), *wado.routes(), *stow.routes(context.config.http.max_body_bytes)]
    app = Starlette(routes=[Route(HEALTH_PATH, _health, methods=["GET"]), *routes])
    app.state.context = context
    app.state.spool = spool
    app.add_middleware(Authenticate, authenticator=authenticator)
    origins = context.config.http.cors_origins
    if origins:  # added last: the outermost middleware
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_HEADERS),
            expose_headers=list(CORS_EXPOSED),
            max_age=600,
        )
    return app
