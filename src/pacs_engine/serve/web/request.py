"""What every DICOMweb endpoint asks of a request: the server, the caller, their role, the audit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request

from pacs_engine.index.keys import uid_problem
from pacs_engine.serve.context import ServeContext

Role = Literal["reader", "uploader", "admin"]
#: The characters of a UID in a URL: a DICOM UID's digits and dots, and what the UIDs of
#: legacy archives hold (hexadecimal digits, letters, "_" and "-"), all carried as they are.
_URL_UID = re.compile(r"[0-9A-Za-z._-]+")
ROLES: tuple[Role, ...] = ("reader", "uploader", "admin")


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, once authenticated: a user or service account and its roles."""

    name: str
    roles: frozenset[Role]

    def may(self, role: Role) -> bool:
        """Whether this principal holds `role` (an admin holds every role)."""
        return role in self.roles or "admin" in self.roles


def context(request: Request) -> ServeContext:
    """The server's context (archive, configuration, audit trail)."""
    return request.app.state.context


def principal(request: Request) -> Principal:
    """The authenticated caller (set by the authentication middleware before any endpoint)."""
    return request.state.principal


def address(request: Request) -> str:
    """The caller's "host:port", for the audit trail."""
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"


def audit(
    request: Request,
    action: str,
    outcome: str,
    study: str | list[str] | None = None,
    detail: str | None = None,
    series: str | list[str] | None = None,
    instances: list[str] | None = None,
) -> None:
    """Append one DICOMweb record to the archive's audit trail (never a patient's name or ID)."""
    who = getattr(request.state, "principal", None)
    context(request).audit.record(
        protocol="dicomweb",
        actor=who.name if who is not None else "anonymous",
        address=address(request),
        action=action,
        outcome=outcome,
        study=study,
        detail=detail,
        series=series,
        instances=instances,
    )


def require(request: Request, role: Role, action: str) -> Principal:
    """The caller if it holds `role`; otherwise the refusal is audited and 403 raised.

    The refusal says nothing about whether what was asked for exists.
    """
    who = principal(request)
    if not who.may(role):
        audit(request, action, "forbidden", detail=f"needs role {role}")
        raise HTTPException(403, f"this needs the {role} role")
    return who


def url_uid(value: str) -> bool:
    """Whether `value` may name an instance, series or study in a URL or a query: any UID the
    archive keeps (`uid_problem`: not DICOM's form alone, since the archives it migrates hold
    others, which must be found and retrieved as they are), of URL-safe characters."""
    return _URL_UID.fullmatch(value) is not None and uid_problem("UID", value) is None
