"""Who a DICOMweb request comes from: an OpenID Connect bearer JWT, or a service account's API key.

Both come as `Authorization: Bearer <credential>`. A credential with three dot-separated
parts is a JWT: its signature is checked (RS256 or ES256 only: never `none`, never an
HMAC keyed with a public key) against the issuer's JWKS, then `iss`, `aud`, `exp` and
`nbf` (with a small leeway); its roles come from a configured claim. Anything else is
an API key: a random string `pacs-engine keys add` printed once, kept in
ARCHIVE/auth/keys.json only as its SHA-256 (a 256-bit random key needs no slow hash:
there is no dictionary to try), compared in constant time.

Every refusal raises `InvalidCredentials` with the reason for the audit trail (expired,
bad signature, unknown key, ...); the client is told only that its credentials are not
valid, and neither the reason nor the credential is ever written anywhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from joserfc import errors, jwt
from joserfc.jwk import ECKey, GuestProtocol, KeySet, RSAKey
from starlette.requests import Request

from pacs_engine.errors import PacsEngineError
from pacs_engine.serve.config import OidcConfig
from pacs_engine.serve.web.request import ROLES, Principal, Role
from pacs_engine.storage import write_atomic

#: The signature algorithms accepted on a JWT (asymmetric only).
ALGORITHMS = ("RS256", "ES256")

#: The prefix of every API key (so that one found in a log or a repository is recognised).
KEY_PREFIX = "pe_"

#: The largest JWKS document read (a JWKS is a few kilobytes).
MAX_JWKS_BYTES = 1 << 20

#: An unknown `kid`, or a key set past its age that could not be read again, refetches the
#: JWKS at most this often (forged key ids or an issuer that is down must not flood it).
JWKS_REFRESH_SECONDS = 10.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class InvalidCredentials(PacsEngineError):
    """Credentials that do not name a caller; the reason is for the audit trail only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyStoreError(PacsEngineError, ValueError):
    """A key management request that cannot be done (a bad name or role, no such key)."""


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored: its name, role, SHA-256, when made and when revoked."""

    name: str
    role: Role
    sha256: str
    created: str
    revoked: str | None = None


def key_hash(key: str) -> str:
    """The stored form of an API key: the hex SHA-256 of its text."""
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KeyStore:
    """The API keys of one archive, in ARCHIVE/auth/keys.json (mode 0600, written atomically)."""

    def __init__(self, archive_root: str | os.PathLike) -> None:
        self.folder = Path(archive_root) / "auth"
        self.path = self.folder / "keys.json"
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._keys: dict[str, ApiKey] = {}

    def add(self, name: str, role: str) -> str:
        """A new key for `name` with `role` (a revoked key's name may be reused); shown once."""
        if not _NAME.fullmatch(name):
            raise KeyStoreError(f"a key name is 1 to 64 letters, digits, '.', '_' or '-': {name!r}")
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._editing() as keys:
            old = keys.get(name)
            if old is not None and old.revoked is None:
                raise KeyStoreError(f"a key named {name!r} exists; revoke it first")
            keys[name] = ApiKey(name, role, key_hash(key), _now())
        return key

    def revoke(self, name: str) -> None:
        """Revoke the key `name` (kept, marked revoked: a later use is audited as such)."""
        with self._editing() as keys:
            old = keys.get(name)
            if old is None or old.revoked is not None:
                raise KeyStoreError(f"no active key named {name!r}")
            keys[name] = ApiKey(old.name, old.role, old.sha256, old.created, _now())

    def entries(self) -> list[ApiKey]:
        """Every key, active and revoked, by name."""
        with self._lock:
            self._refresh()
            return sorted(self._keys.values(), key=lambda k: k.name)

    def check(self, key: str) -> ApiKey:
        """The active key whose text is `key`; InvalidCredentials otherwise."""
        digest = key_hash(key)
        found = None
        try:
            entries = self.entries()
        except PacsEngineError as error:  # a damaged key file refuses keys, and says why
            raise InvalidCredentials(str(error)) from None
        for entry in entries:  # every entry compared, in constant time each
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        if found is None:
            raise InvalidCredentials("unknown API key")
        if found.revoked is not None:
            raise InvalidCredentials(f"revoked API key {found.name}")
        return found

    def _refresh(self) -> None:
        """Reread the file when it changed (another process adds and revokes keys)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._keys, self._seen = {}, None
            return
        if self._seen == (stat.st_mtime_ns, stat.st_size):
            return
        self._keys = self._read()
        self._seen = (stat.st_mtime_ns, stat.st_size)

    def _read(self) -> dict[str, ApiKey]:
        try:
            data = json.loads(self.path.read_bytes())
            return {k["name"]: ApiKey(**k) for k in data["keys"]}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as error:
            raise PacsEngineError(
                f"{self.path}: not a key file this version reads: {error}"
            ) from None

    @contextmanager
    def _editing(self) -> Iterator[dict[str, ApiKey]]:
        """The keys to change, written back atomically under a lock between processes."""
        if not self.folder.is_dir():
            self.folder.mkdir(mode=0o700)
            os.chmod(self.folder, 0o700)  # the umask must not widen it: files here get 0600
        fd = os.open(self.folder / "keys.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = self._read()
            yield keys
            records = [vars(k) for k in sorted(keys.values(), key=lambda k: k.name)]
            text = json.dumps({"version": 1, "keys": records}, indent=1) + "\n"
            write_atomic(self.path, text.encode())
        finally:
            os.close(fd)


class Jwks:
    """The issuer's signing keys: read from a file, or fetched (bounded), and cached for
    `max_age` seconds at most."""

    def __init__(self, uri: str | None, file: Path | None, timeout: float, max_age: float) -> None:
        self.uri = uri
        self.file = file
        self.timeout = timeout
        self.max_age = max_age
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched = float("-inf")  # the last read tried
        self._read = float("-inf")  # the last read that succeeded

    def key(self, kid: str | None) -> RSAKey | ECKey:
        """The public key of `kid` (refetched once when unknown); InvalidCredentials if none."""
        with self._lock:
            now = time.monotonic()
            loaded = False
            # Read again once `max_age` old: a key the issuer withdrew (leaked) must stop
            # signing tokens here, and only a read of its key set can tell. Past its age
            # a set that cannot be read again signs nothing.
            if now - self._read >= self.max_age:
                if self._fetched > self._read and now - self._fetched < JWKS_REFRESH_SECONDS:
                    raise InvalidCredentials(
                        "the issuer's JWKS could not be read (tried again soon)"
                    )
                self._load()
                loaded = True
            found = self._find(kid)
            # Not held: the issuer may have rotated its keys. At most one read per interval,
            # so that made-up key ids do not make every request wait on the issuer.
            if found is None and not loaded and now - self._fetched >= JWKS_REFRESH_SECONDS:
                self._load()
                found = self._find(kid)
        if found is None:
            raise InvalidCredentials("a signing key id the issuer's JWKS does not hold")
        return found

    def _find(self, kid: str | None) -> RSAKey | ECKey | None:
        if self._keys is None:
            return None
        try:
            key = self._keys.get_by_kid(kid)
        except errors.InvalidKeyIdError:
            return None
        return key if isinstance(key, RSAKey | ECKey) else None  # never an HMAC secret

    def _load(self) -> None:
        self._fetched = time.monotonic()
        try:
            if self.file is not None:
                raw = self.file.read_bytes()
            else:
                assert self.uri is not None
                with urllib.request.urlopen(self.uri, timeout=self.timeout) as answer:
                    raw = answer.read(MAX_JWKS_BYTES + 1)
            if len(raw) > MAX_JWKS_BYTES:
                raise ValueError("larger than 1 MiB")
            data = json.loads(raw)
            public = [k for k in data["keys"] if k.get("kty") in ("RSA", "EC") and "d" not in k]
            self._keys = KeySet.import_key_set({"keys": public})
            self._read = self._fetched
        except (OSError, ValueError, KeyError, TypeError, errors.JoseError) as error:
            # Keep what was known; this token is refused, the next may find the issuer up.
            raise InvalidCredentials(f"the issuer's JWKS could not be read: {error}") from None


def _claim(claims: dict[str, Any], path: str) -> frozenset[str]:
    """The string values at a dotted claim path (a list, or one space-separated string)."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def is_jwt(credential: str) -> bool:
    """Whether a bearer credential is a JWT (three dot-separated parts) rather than an API key."""
    return credential.count(".") == 2


class Authenticator:
    """`Authorization: Bearer` JWTs of the configured issuer, and the archive's API keys."""

    def __init__(self, archive_root: str | os.PathLike, oidc: OidcConfig | None) -> None:
        self.keys = KeyStore(archive_root)
        self.oidc = oidc
        self.jwks = (
            Jwks(oidc.jwks_uri, oidc.jwks_file, oidc.jwks_timeout, oidc.jwks_max_age)
            if oidc
            else None
        )

    def __call__(self, request: Request) -> Principal:
        """The caller of `request`; InvalidCredentials saying why not."""
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise InvalidCredentials("no bearer credentials")
        if is_jwt(credential):
            return self.token(credential)
        key = self.keys.check(credential)
        return Principal(f"key:{key.name}", frozenset({key.role}))

    def token(self, value: str) -> Principal:
        """The caller a JWT names, once its signature and claims hold."""
        if self.oidc is None or self.jwks is None:
            raise InvalidCredentials("a JWT, but no OIDC issuer is configured")
        jwks = self.jwks

        def signing_key(guest: GuestProtocol) -> RSAKey | ECKey:
            return jwks.key(guest.headers().get("kid"))

        oidc = self.oidc
        registry = jwt.JWTClaimsRegistry(
            leeway=oidc.leeway,
            iss={"essential": True, "value": oidc.issuer},
            aud={"essential": True, "value": oidc.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            token = jwt.decode(value, signing_key, algorithms=list(ALGORITHMS))
            registry.validate(token.claims)
        except errors.BadSignatureError:
            raise InvalidCredentials("JWT: bad signature") from None
        except errors.ExpiredTokenError:
            raise InvalidCredentials("JWT: expired") from None
        except (errors.InvalidClaimError, errors.MissingClaimError) as error:
            raise InvalidCredentials(f"JWT: {error.description}") from None
        except errors.UnsupportedAlgorithmError:
            raise InvalidCredentials("JWT: a signature algorithm not accepted") from None
        except (errors.JoseError, ValueError, TypeError) as error:
            raise InvalidCredentials(f"JWT: malformed ({type(error).__name__})") from None
        roles = oidc.roles_of(_claim(token.claims, oidc.roles_claim))
        return Principal(str(token.claims["sub"]), cast(frozenset[Role], roles))
