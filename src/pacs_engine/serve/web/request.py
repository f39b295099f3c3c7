"""What every DICOMweb endpoint asks of a request: the server, the caller, their role, the audit."""

from __future__ import annotations

import functools
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
#: The media range of any type.
ANY = "*/*"
#: Older names some clients still send.
MEDIA_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


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
    request.state.audited = True  # the application audits the requests no route did
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


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header: its type, parameters and quality."""

    type: str
    params: dict[str, str]
    quality: float

    @property
    def part_type(self) -> str:
        """The type of each part: a multipart range's `type` parameter, else the range's."""
        if self.type == "multipart/related":
            return MEDIA_ALIASES.get(self.params.get("type", ANY), self.params.get("type", ANY))
        return ANY if self.type in ("multipart/*", "*/*") else self.type

    @property
    def syntax(self) -> str | None:
        """The `transfer-syntax` parameter, if any ("*": any)."""
        return self.params.get("transfer-syntax")


def accepted(header: str | None) -> tuple[MediaRange, ...]:
    """The Accept header's media ranges, best first; `*/*` when there is none."""
    return _parsed(header or "")


@functools.lru_cache(maxsize=256)
def _parsed(header: str) -> tuple[MediaRange, ...]:
    """`accepted`, kept for the few headers a viewer sends again and again (the hot path)."""
    if not header.strip():
        return (MediaRange(ANY, {}, 1.0),)
    ranges = []
    for item in header.split(","):
        kind, *parameters = (p.strip() for p in item.split(";"))
        params: dict[str, str] = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            params[name] = value.lower() if name == "type" else value  # a media type
        quality = _quality(params.pop("q", "1"))
        if kind and quality > 0:
            ranges.append(MediaRange(kind.lower(), params, quality))
    return tuple(sorted(ranges, key=lambda r: -r.quality))  # stable: ties keep their order


def _quality(text: str) -> float:
    """A range's q value; one that is not a number counts as 1 (negotiation, not an error)."""
    try:
        return float(text)
    except ValueError:
        return 1.0
