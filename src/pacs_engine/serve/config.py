"""What a server is told: its AE title and port, the peers it admits and their rights, TLS.

Read from a TOML file (`pacs-engine serve --config FILE`) and from command-line flags.
Nothing is admitted by default: a calling AE title not in `peers` is refused, so an
archive served with no configuration answers no one (patient data needs credentials).

    [dimse]
    ae_title = "PACS_ENGINE"
    host = "127.0.0.1"
    port = 11112
    max_associations = 16
    max_pdu = 1048576
    timeout = 30                      # seconds: a peer stalled longer is dropped

    [dimse.tls]                       # DICOM TLS (PS3.15 Annex B), TLS 1.2 or later
    cert = "server.pem"
    key = "server.key"
    client_ca = "clients-ca.pem"      # optional: then clients must show a certificate

    [peers.CT_SCANNER]                # a calling AE title and what it may do
    rights = ["store"]

    [peers.VIEWER]
    rights = ["query", "retrieve"]
    host = "10.0.0.7"                 # where C-MOVE sends when VIEWER is the destination
    port = 104

    [http]                            # DICOMweb (docs/dicomweb.md)
    host = "127.0.0.1"
    port = 8080
    cors_origins = ["https://viewer.example.org"]
    max_body_bytes = 4294967296       # the largest STOW-RS request body

    [http.tls]                        # HTTPS
    cert = "server.pem"
    key = "server.key"

    [http.oidc]                       # bearer JWTs of an OpenID Connect issuer
    issuer = "https://login.example.org/realms/pacs"
    audience = "pacs-engine"
    jwks_uri = "https://login.example.org/realms/pacs/protocol/openid-connect/certs"
    roles_claim = "realm_access.roles"

    [http.oidc.roles]                 # a role: the claim values that grant it
    reader = ["pacs-reader"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from pacs_engine.errors import PacsEngineError

Right = Literal["store", "query", "retrieve"]
T = TypeVar("T")
RIGHTS: tuple[Right, ...] = ("store", "query", "retrieve")

#: The DICOMweb roles (`pacs_engine.serve.web.request.Role`).
WEB_ROLES: tuple[str, ...] = ("reader", "uploader", "admin")

#: An AE title: 1 to 16 characters of the default repertoire, no backslash or control codes.
_AE_TITLE_CHARS = 16


class ConfigError(PacsEngineError, ValueError):
    """A server configuration that cannot be used: names the file or flag and the reason."""


@dataclass(frozen=True)
class Peer:
    """A remote application entity: what it may ask for, and where to reach it (C-MOVE)."""

    ae_title: str
    rights: frozenset[Right] = frozenset()
    host: str | None = None
    port: int | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) when the peer can be sent to, else None."""
        return (self.host, self.port) if self.host is not None and self.port is not None else None


@dataclass(frozen=True)
class TlsConfig:
    """The server's certificate and key, and the CA that client certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class OidcConfig:
    """The OpenID Connect issuer whose bearer JWTs are accepted, and how claims map to roles."""

    issuer: str
    audience: str
    jwks_uri: str | None = None  # fetched over HTTP(S), cached, refreshed on an unknown key
    jwks_file: Path | None = None  # or a local JWKS
    roles_claim: str = "roles"  # a dotted path into the claims: "realm_access.roles"
    # role -> the claim values granting it; a role absent here is granted by its own name.
    role_map: dict[str, frozenset[str]] = field(default_factory=dict)
    leeway: int = 30  # seconds of clock skew allowed on exp and nbf
    jwks_timeout: float = 5.0  # seconds for one JWKS fetch
    jwks_max_age: float = 300.0  # seconds a JWKS read is trusted before it is read again

    def roles_of(self, values: frozenset[str]) -> frozenset[str]:
        """The roles that the claim `values` grant."""
        return frozenset(
            role for role in WEB_ROLES if values & self.role_map.get(role, frozenset({role}))
        )


@dataclass(frozen=True)
class HttpConfig:
    """The DICOMweb side: where it listens, CORS, the STOW-RS body limit, TLS, OIDC."""

    host: str = "127.0.0.1"
    port: int | None = None  # None: no DICOMweb unless `serve --http` asks
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 << 30
    tls: TlsConfig | None = None
    oidc: OidcConfig | None = None


@dataclass(frozen=True)
class ServeConfig:
    """Everything `pacs-engine serve` is configured with."""

    ae_title: str = "PACS_ENGINE"
    host: str = "127.0.0.1"
    dimse_port: int | None = None
    max_associations: int = 16
    max_pdu: int = 1 << 20
    timeout: float = 30.0  # ACSE, DIMSE and network: a peer stalled longer is dropped
    tls: TlsConfig | None = None
    peers: dict[str, Peer] = field(default_factory=dict)
    http: HttpConfig = field(default_factory=HttpConfig)

    def peer(self, ae_title: str) -> Peer | None:
        """The configured peer of that AE title (trailing spaces ignored), or None."""
        return self.peers.get(ae_title.strip())

    def may(self, ae_title: str, right: Right) -> bool:
        """True when the calling AE title is a peer with `right`."""
        peer = self.peer(ae_title)
        return peer is not None and right in peer.rights

    def with_peers(self, *peers: Peer) -> ServeConfig:
        """A copy with `peers` added (a peer of the same AE title merges rights and address)."""
        merged = dict(self.peers)
        for peer in peers:
            old = merged.get(peer.ae_title)
            if old is not None:
                peer = Peer(
                    peer.ae_title,
                    old.rights | peer.rights,
                    peer.host if peer.host is not None else old.host,
                    peer.port if peer.port is not None else old.port,
                )
            merged[peer.ae_title] = peer
        return replace(self, peers=merged)


def check_ae_title(value: str, where: str) -> str:
    """`value` as an AE title, or ConfigError naming `where`."""
    title = value.strip()
    if not 0 < len(title) <= _AE_TITLE_CHARS:
        raise ConfigError(f"{where}: an AE title has 1 to {_AE_TITLE_CHARS} characters: {value!r}")
    if "\\" in title or not title.isascii() or not title.isprintable():
        raise ConfigError(f"{where}: an AE title is printable ASCII without '\\': {value!r}")
    return title


def parse_peer(text: str) -> Peer:
    """A peer from the command line: `AET[@HOST:PORT][=right,right]` (rights default to none)."""
    where = f"peer {text!r}"
    spec, _, rights_text = text.partition("=")
    title, _, address = spec.partition("@")
    rights = _rights([r for r in rights_text.split(",") if r] if rights_text else [], where)
    host, port = None, None
    if address:
        host, _, port_text = address.rpartition(":")
        if not host or not port_text.isdigit():
            raise ConfigError(f"{where}: the address is HOST:PORT, not {address!r}")
        port = _port(int(port_text), where)
    return Peer(check_ae_title(title, where), rights, host, port)


def load_config(path: str | os.PathLike | None) -> ServeConfig:
    """The configuration in the TOML file at `path` (defaults when None)."""
    if path is None:
        return ServeConfig()
    where = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where}: not valid TOML: {error}") from None
    unknown = set(data) - {"dimse", "peers", "http"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
    base = Path(path).parent
    config = _dimse_section(data.get("dimse", {}), f"{where} [dimse]", base)
    peers = []
    for title, entry in _table(data.get("peers", {}), f"{where} [peers]").items():
        peers.append(_peer_section(title, entry, f"{where} [peers.{title}]"))
    if "http" in data:
        config = replace(config, http=_http_section(data["http"], f"{where} [http]", base))
    return config.with_peers(*peers)


def parse_address(text: str, where: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` (port 0: a free one), or ConfigError naming `where`."""
    host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) >= 1 << 16:
        raise ConfigError(f"{where}: give HOST:PORT with a port from 0 to 65535, not {text!r}")
    return host.strip("[]"), int(port_text)


def _http_section(section: Any, where: str, base: Path) -> HttpConfig:
    """The [http] table."""
    table = _table(section, where)
    known = {"host", "port", "cors_origins", "max_body_bytes", "tls", "oidc"}
    _no_unknown(table, known, where)
    defaults = HttpConfig()
    origins = table.get("cors_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ConfigError(f'{where}: cors_origins is a list such as ["https://viewer.example"]')
    tls, oidc = table.get("tls"), table.get("oidc")
    if tls is not None:
        _no_unknown(_table(tls, f"{where} [tls]"), {"cert", "key"}, f"{where} [tls]")
    return HttpConfig(
        host=_typed(table, "host", str, defaults.host, where),
        port=_port(_typed(table, "port", int, 0, where), where) if "port" in table else None,
        cors_origins=tuple(origins),
        max_body_bytes=_positive(table, "max_body_bytes", defaults.max_body_bytes, where),
        tls=_tls_section(tls, f"{where} [tls]", base) if tls is not None else None,
        oidc=_oidc_section(oidc, f"{where} [oidc]", base) if oidc is not None else None,
    )


def _oidc_section(section: Any, where: str, base: Path) -> OidcConfig:
    """The [http.oidc] table: exactly one of jwks_uri and jwks_file."""
    table = _table(section, where)
    known = {
        "issuer",
        "audience",
        "jwks_uri",
        "jwks_file",
        "jwks_max_age",
        "roles_claim",
        "roles",
        "leeway",
    }
    _no_unknown(table, known, where)
    for key in ("issuer", "audience"):
        if not _typed(table, key, str, "", where):
            raise ConfigError(f"{where}: needs {key}")
    if ("jwks_uri" in table) == ("jwks_file" in table):
        raise ConfigError(f"{where}: give one of jwks_uri and jwks_file")
    uri = _typed(table, "jwks_uri", str, "", where) if "jwks_uri" in table else None
    if uri is not None and not uri.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: jwks_uri is an http(s) URL, not {uri!r}")
    role_map: dict[str, frozenset[str]] = {}
    for role, values in _table(table.get("roles", {}), f"{where} [roles]").items():
        if role not in WEB_ROLES:
            raise ConfigError(
                f"{where} [roles]: unknown role {role!r}; roles are reader, uploader, admin"
            )
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(
                f'{where} [roles]: {role} is a list of claim values such as ["pacs-{role}"]'
            )
        role_map[role] = frozenset(values)
    leeway = _typed(table, "leeway", int, 30, where)
    if not 0 <= leeway <= 300:
        raise ConfigError(f"{where}: leeway is 0 to 300 seconds, not {leeway}")
    max_age = _typed(table, "jwks_max_age", int, 300, where)
    if not 1 <= max_age <= 86400:
        raise ConfigError(f"{where}: jwks_max_age is 1 to 86400 seconds, not {max_age}")
    return OidcConfig(
        issuer=table["issuer"],
        audience=table["audience"],
        jwks_uri=uri,
        jwks_file=base / _typed(table, "jwks_file", str, "", where)
        if "jwks_file" in table
        else None,
        roles_claim=_typed(table, "roles_claim", str, "roles", where),
        role_map=role_map,
        leeway=leeway,
        jwks_max_age=float(max_age),
    )


def _dimse_section(section: Any, where: str, base: Path) -> ServeConfig:
    """The [dimse] table."""
    table = _table(section, where)
    known = {"ae_title", "host", "port", "max_associations", "max_pdu", "timeout", "tls"}
    _no_unknown(table, known, where)
    defaults = ServeConfig()
    tls = table.get("tls")
    return ServeConfig(
        ae_title=check_ae_title(_typed(table, "ae_title", str, defaults.ae_title, where), where),
        host=_typed(table, "host", str, defaults.host, where),
        dimse_port=_port(_typed(table, "port", int, 0, where), where) if "port" in table else None,
        max_associations=_positive(table, "max_associations", defaults.max_associations, where),
        max_pdu=_positive(table, "max_pdu", defaults.max_pdu, where),
        timeout=_seconds(table, "timeout", defaults.timeout, where),
        tls=_tls_section(tls, f"{where} [tls]", base) if tls is not None else None,
    )


def _tls_section(section: Any, where: str, base: Path) -> TlsConfig:
    """The [dimse.tls] table; relative paths are read from the configuration file's folder."""
    table = _table(section, where)
    _no_unknown(table, {"cert", "key", "client_ca"}, where)
    if "cert" not in table or "key" not in table:
        raise ConfigError(f"{where}: needs both cert and key")
    ca = table.get("client_ca")
    return TlsConfig(
        cert=base / _typed(table, "cert", str, "", where),
        key=base / _typed(table, "key", str, "", where),
        client_ca=base / _typed(table, "client_ca", str, "", where) if ca is not None else None,
    )


def _peer_section(title: str, section: Any, where: str) -> Peer:
    """One [peers.AET] table."""
    table = _table(section, where)
    _no_unknown(table, {"rights", "host", "port"}, where)
    rights = table.get("rights", [])
    if not isinstance(rights, list):
        raise ConfigError(f'{where}: rights is a list such as ["store", "query"]')
    if ("host" in table) != ("port" in table):
        raise ConfigError(f"{where}: give both host and port, or neither")
    port = _port(_typed(table, "port", int, 0, where), where) if "port" in table else None
    host = _typed(table, "host", str, "", where) if "host" in table else None
    return Peer(check_ae_title(title, where), _rights(rights, where), host, port)


def _rights(values: list[Any], where: str) -> frozenset[Right]:
    """Rights by name; an unknown one is an error (a typo must not grant or deny silently)."""
    unknown = [v for v in values if v not in RIGHTS]
    if unknown:
        raise ConfigError(f"{where}: unknown right(s) {unknown}; rights are {', '.join(RIGHTS)}")
    return frozenset(cast(list[Right], values))


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return value


def _no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _typed(table: dict[str, Any], key: str, kind: type[T], default: T, where: str) -> T:
    value = table.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        kind_name = {int: "an integer", str: "a string"}.get(kind, kind.__name__)
        raise ConfigError(f"{where}: {key} must be {kind_name}, not {value!r}")
    return value


def _positive(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = _typed(table, key, int, default, where)
    if value <= 0:
        raise ConfigError(f"{where}: {key} must be positive, not {value}")
    return value


def _seconds(table: dict[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where}: {key} must be a positive number of seconds, not {value!r}")
    return float(value)


def _port(value: int, where: str) -> int:
    if not 0 < value < 1 << 16:
        raise ConfigError(f"{where}: a port is 1 to 65535, not {value}")
    return value
