"""DICOMweb authentication: OIDC JWTs against a JWKS served here, API keys, roles, CORS, audit.

Tokens are minted in the test with joserfc; the issuer's JWKS is served over loopback
HTTP by a thread of the test (which counts its fetches). Every refusal is a 401 that
says nothing but "invalid credentials", and an audit record that says why.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.routing import Route
from web_helpers import serving_app

from pacs_engine import Archive
from pacs_engine.serve.audit import AuditLog, read_records, verify_chain
from pacs_engine.serve.config import (
    ConfigError,
    HttpConfig,
    OidcConfig,
    ServeConfig,
    load_config,
)
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.web import qido
from pacs_engine.serve.web.app import make_app
from pacs_engine.serve.web.auth import (
    Authenticator,
    InvalidCredentials,
    KeyStore,
    KeyStoreError,
    key_hash,
)

ISSUER = "https://login.test/realms/pacs"
AUDIENCE = "pacs-engine"
ORIGIN = "https://viewer.test"


@dataclass
class Issuer:
    """The test's identity provider: its signing keys, the JWKS it publishes, fetch count."""

    rsa: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, {"kid": "rsa-1"}))
    ec: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", {"kid": "ec-1"}))
    published: list[Any] = field(default_factory=list)
    fetches: int = 0
    down: bool = False  # its JWKS answers 503

    def __post_init__(self) -> None:
        self.published = [self.rsa, self.ec]

    def jwks(self) -> bytes:
        return json.dumps({"keys": [k.as_dict(private=False) for k in self.published]}).encode()

    def token(self, key: Any = None, alg: str = "RS256", **claims: Any) -> str:
        """A JWT signed by `key` (default: the RSA key), valid unless `claims` say otherwise."""
        key = key or self.rsa
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "dr-house",
            "exp": now + 300,
            "iat": now,
            "realm_access": {"roles": ["pacs-read"]},
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode({"alg": alg, "kid": key.kid}, body, key, algorithms=[alg])


@contextmanager
def serving_jwks(issuer: Issuer) -> Iterator[str]:
    """The issuer's JWKS over loopback HTTP; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer.fetches += 1
            if issuer.down:
                self.send_error(503)
                return
            body = issuer.jwks()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@dataclass
class Served:
    """The app over an empty archive, its base URL, the issuer, the key store."""

    base: str
    root: Path
    issuer: Issuer
    keys: KeyStore

    def get(self, credential: str | None, path: str = "/studies", **headers: str) -> httpx.Response:
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        return httpx.get(self.base + path, headers=headers, timeout=30)

    def last(self) -> dict[str, Any]:
        return list(read_records(self.root))[-1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("auth") / "archive"
    archive = Archive.create(root)
    issuer = Issuer()
    with serving_jwks(issuer) as jwks_uri:
        oidc = OidcConfig(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_uri=jwks_uri,
            roles_claim="realm_access.roles",
            role_map={"reader": frozenset({"pacs-read"}), "admin": frozenset({"pacs-admin"})},
        )
        config = ServeConfig(http=HttpConfig(cors_origins=(ORIGIN,), oidc=oidc))
        audit = AuditLog(root, sync_seconds=0.0)
        context = ServeContext(archive, config, audit)
        app = make_app(context, Authenticator(root, oidc), routes=qido.routes())
        try:
            with serving_app(app) as base:
                yield Served(base, root, issuer, KeyStore(root))
        finally:
            audit.close()
            archive.close()


def refused(served: Served, response: httpx.Response, reason: str) -> None:
    """A 401 that tells nothing, and its audit record that tells `reason` (no credential)."""
    assert response.status_code == 401
    assert response.text == "invalid credentials"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    record = served.last()
    assert record["outcome"] == "unauthenticated"
    assert reason in record["detail"]


def test_a_valid_token_of_either_algorithm_is_accepted_as_its_subject(served: Served) -> None:
    tokens = (
        served.issuer.token(),
        served.issuer.token(served.issuer.ec, "ES256"),
        served.issuer.token(aud=["another-app", AUDIENCE]),  # aud may list several
    )
    for token in tokens:
        response = served.get(token)
        assert response.status_code == 204  # an empty archive: no study matches
        assert served.last()["actor"] == "dr-house"
        assert served.last()["action"] == "qido studies"


def test_expired_early_foreign_and_forged_tokens_are_refused_and_audited(served: Served) -> None:
    issuer = served.issuer
    now = int(time.time())
    cases = {
        "expired": (issuer.token(exp=now - 120), "JWT: expired"),
        "not yet valid": (issuer.token(nbf=now + 600), "not yet valid"),
        "wrong audience": (issuer.token(aud="another-app"), "'aud'"),
        "wrong issuer": (issuer.token(iss="https://evil.test"), "'iss'"),
        "no expiry": (issuer.token(exp=None), "'exp'"),
        "no subject": (issuer.token(sub=None), "'sub'"),
    }
    for name, (token, reason) in cases.items():
        refused(served, served.get(token), reason)
        assert (
            token
            not in (served.root / "audit")
            .joinpath(os.listdir(served.root / "audit")[0])
            .read_text()
        ), name
    assert served.get(issuer.token(exp=now - 5)).status_code == 204  # 5 s late: leeway

    # Signed by a key the issuer does not hold, under the issuer's key id: a forgery.
    stranger = RSAKey.generate_key(2048, {"kid": "rsa-1"})
    refused(served, served.get(issuer.token(stranger)), "bad signature")
    # Claims changed after signing.
    header, payload, signature = issuer.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["realm_access"] = {"roles": ["pacs-admin"]}
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused(served, served.get(f"{header}.{tampered}.{signature}"), "bad signature")


def test_alg_none_and_hmac_with_the_public_key_are_refused(served: Served) -> None:
    issuer = served.issuer

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300}
    unsigned = f"{b64({'alg': 'none', 'kid': 'rsa-1'})}.{b64(claims)}."
    refused(served, served.get(unsigned), "JWT")
    # The classic confusion: HS256 keyed with the RSA public key the JWKS publishes.
    # (joserfc will not even mint it, so it is signed by hand.)
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'rsa-1'})}.{b64(claims)}"
    mac = hmac.new(issuer.rsa.as_pem(private=False), signing_input.encode(), "sha256").digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    refused(served, served.get(confused), "JWT")
    refused(served, served.get("not.a.jwt"), "JWT: malformed")
    assert all(r["actor"] != "mallory" for r in read_records(served.root))


def test_a_rotated_key_is_fetched_once_and_an_unknown_kid_does_not_flood(served: Served) -> None:
    issuer = served.issuer
    assert served.get(issuer.token()).status_code == 204
    before = issuer.fetches
    for _ in range(3):  # cached: no fetch per request
        assert served.get(issuer.token()).status_code == 204
    assert issuer.fetches == before
    time.sleep(10.5)  # past the refresh interval (JWKS_REFRESH_SECONDS)
    rotated = RSAKey.generate_key(2048, {"kid": "rsa-2"})
    issuer.published = [rotated, issuer.rsa, issuer.ec]
    assert served.get(issuer.token(rotated)).status_code == 204
    assert issuer.fetches == before + 1
    ghost = RSAKey.generate_key(2048, {"kid": "ghost"})
    for _ in range(5):  # within the interval: refused without asking the issuer again
        refused(served, served.get(issuer.token(ghost)), "signing key id")
    assert issuer.fetches == before + 1


def test_roles_come_from_the_configured_claim(served: Served) -> None:
    issuer = served.issuer
    no_role = issuer.token(realm_access={"roles": ["billing"]})
    response = served.get(no_role)
    assert response.status_code == 403
    record = served.last()
    assert (record["actor"], record["outcome"]) == ("dr-house", "forbidden")
    admin = issuer.token(realm_access={"roles": ["pacs-admin"]}, sub="root")
    assert served.get(admin).status_code == 204  # an admin holds every role
    flat = issuer.token(realm_access=None, roles=["pacs-read"])  # not the configured claim
    assert served.get(flat).status_code == 403


def test_api_keys_are_stored_hashed_and_refused_once_revoked(served: Served) -> None:
    store = served.keys
    key = store.add("pipeline", "reader")
    uploader = store.add("modality-gw", "uploader")
    text = store.path.read_text()
    assert key not in text and key[-8:] not in text and key_hash(key) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert served.get(key).status_code == 204
    assert served.last()["actor"] == "key:pipeline"
    assert served.get(uploader).status_code == 403  # an uploader may not search
    assert served.last()["outcome"] == "forbidden"
    refused(served, served.get(key + "x"), "unknown API key")
    refused(served, served.get(None), "no bearer credentials")
    refused(served, served.get(None, Authorization=f"Basic {key}"), "no bearer credentials")
    with pytest.raises(KeyStoreError, match="exists"):
        store.add("pipeline", "admin")
    store.revoke("pipeline")  # seen by the running server at once
    refused(served, served.get(key), "revoked API key pipeline")
    with pytest.raises(KeyStoreError, match="no active key"):
        store.revoke("pipeline")
    with pytest.raises(KeyStoreError, match="unknown role"):
        store.add("x", "superuser")
    with pytest.raises(KeyStoreError, match="key name"):
        store.add("../etc", "reader")
    kept = store.path.read_bytes()
    store.path.write_text("{not json")  # damaged: every key refused, the audit says why
    refused(served, served.get(uploader), "not a key file this version reads")
    store.path.write_bytes(kept)
    assert served.get(uploader).status_code == 403
    audit_text = "".join(p.read_text() for p in (served.root / "audit").iterdir())
    assert key not in audit_text and uploader not in audit_text
    assert verify_chain(served.root) == []


def test_cors_preflight_needs_no_credentials_and_refusals_carry_cors(served: Served) -> None:
    preflight = httpx.options(
        served.base + "/studies",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=30,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    denied = served.get(None, Origin=ORIGIN)
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == ORIGIN
    other = served.get(None, Origin="https://elsewhere.test")
    assert "access-control-allow-origin" not in other.headers
    assert httpx.get(served.base + "/health", timeout=30).text == "ok"


def test_the_http_section_of_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text("{}")
    path = tmp_path / "serve.toml"
    path.write_text(
        '[http]\nhost = "0.0.0.0"\nport = 8080\ncors_origins = ["https://v.test"]\n'
        "max_body_bytes = 1000\n"
        '[http.tls]\ncert = "c.pem"\nkey = "k.pem"\n'
        '[http.oidc]\nissuer = "https://i.test"\naudience = "pacs"\njwks_file = "jwks.json"\n'
        'roles_claim = "realm_access.roles"\njwks_max_age = 60\n'
        '[http.oidc.roles]\nreader = ["r1", "r2"]\n'
    )
    http = load_config(path).http
    assert (http.host, http.port, http.cors_origins, http.max_body_bytes) == (
        "0.0.0.0",
        8080,
        ("https://v.test",),
        1000,
    )
    assert http.tls is not None and http.tls.cert == tmp_path / "c.pem"
    assert http.oidc is not None and http.oidc.jwks_file == tmp_path / "jwks.json"
    assert http.oidc.jwks_max_age == 60
    assert http.oidc.roles_of(frozenset({"r2", "admin"})) == {"reader", "admin"}
    assert http.oidc.roles_of(frozenset({"reader"})) == frozenset()  # reader is mapped

    bad = {
        "[http]\nport = 70000\n": "a port is 1 to 65535",
        '[http]\ncors = ["x"]\n': "unknown key(s) cors",
        '[http.oidc]\nissuer = "i"\naudience = "a"\n': "one of jwks_uri and jwks_file",
        '[http.oidc]\nissuer = "i"\naudience = "a"\njwks_uri = "file:///etc/passwd"\n': (
            "an http(s) URL"
        ),
        '[http.oidc]\nissuer = "i"\naudience = "a"\njwks_file = "j"\n[http.oidc.roles]\n'
        'root = ["x"]\n': "unknown role 'root'",
        '[http.tls]\ncert = "c.pem"\n': "needs both cert and key",
        '[http.oidc]\nissuer = "i"\naudience = "a"\njwks_file = "j"\njwks_max_age = 0\n': (
            "jwks_max_age is 1 to 86400 seconds, not 0"
        ),
    }
    for text, reason in bad.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            load_config(path)


def test_a_local_jwks_file_and_an_issuer_that_is_down(tmp_path: Path) -> None:
    issuer = Issuer()
    (tmp_path / "jwks.json").write_bytes(issuer.jwks())
    oidc = OidcConfig(ISSUER, AUDIENCE, jwks_file=tmp_path / "jwks.json")
    who = Authenticator(tmp_path, oidc).token(issuer.token(roles=["reader", "uploader"]))
    assert (who.name, who.roles) == ("dr-house", {"reader", "uploader"})

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = Authenticator(tmp_path, OidcConfig(ISSUER, AUDIENCE, f"http://127.0.0.1:{port}/c"))
    with pytest.raises(InvalidCredentials, match="JWKS could not be read"):
        down.token(issuer.token())
    started = time.monotonic()
    with pytest.raises(InvalidCredentials, match="tried again soon"):  # not asked again at once
        down.token(issuer.token())
    assert time.monotonic() - started < 1.0


def test_a_key_the_issuer_withdrew_signs_nothing_once_the_key_set_is_read_again(
    tmp_path: Path,
) -> None:
    # A leaked key is withdrawn from the JWKS while the next one is already published:
    # tokens go on naming cached key ids, so only the key set's age makes it read again.
    issuer = Issuer()
    new = RSAKey.generate_key(2048, {"kid": "rsa-2"})
    issuer.published = [issuer.rsa, new]
    with serving_jwks(issuer) as uri:
        oidc = OidcConfig(ISSUER, AUDIENCE, jwks_uri=uri, jwks_max_age=1.0)
        auth = Authenticator(tmp_path, oidc)
        stolen = issuer.token(issuer.rsa, sub="mallory")
        assert auth.token(stolen).name == "mallory"
        assert auth.token(issuer.token(new)).name == "dr-house"
        assert issuer.fetches == 1
        issuer.published = [new]
        time.sleep(1.2)
        with pytest.raises(InvalidCredentials, match="signing key id"):
            auth.token(stolen)
        assert auth.token(issuer.token(new)).name == "dr-house"
        assert issuer.fetches == 2
        # Past its age, a key set that cannot be read again signs nothing: fail closed,
        # and ask the issuer again only after the refresh interval.
        issuer.down = True
        time.sleep(1.2)
        for _ in range(3):
            with pytest.raises(InvalidCredentials, match="JWKS could not be read"):
                auth.token(issuer.token(new))
        assert issuer.fetches == 3


def test_api_keys_are_checked_on_the_event_loop_and_jwts_in_a_worker_thread(
    tmp_path: Path,
) -> None:
    # An API key costs a stat and a hash: no thread hop. A JWT may fetch the issuer's
    # JWKS: it must never block the event loop.
    archive = Archive.create(tmp_path / "a")
    key = KeyStore(archive.path).add("svc", "reader")
    real = Authenticator(archive.path, None)
    seen: list[tuple[str, str]] = []

    def spying(request: Any) -> Any:
        credential = request.headers.get("authorization", "").partition(" ")[2]
        seen.append((credential, threading.current_thread().name))
        return real(request)

    context = ServeContext(archive, ServeConfig(), AuditLog(archive.path))
    try:
        with serving_app(make_app(context, spying, routes=qido.routes())) as url:
            ok = httpx.get(f"{url}/studies", headers={"Authorization": f"Bearer {key}"})
            token = "e30.e30.c2ln"  # a JWT's form; refused, no issuer is configured
            refused = httpx.get(f"{url}/studies", headers={"Authorization": f"Bearer {token}"})
    finally:
        context.audit.close()
        archive.close()
    assert ok.status_code == 204 and refused.status_code == 401
    threads = dict(seen)
    assert threads[token] == "AnyIO worker thread"
    assert threads[key] not in ("AnyIO worker thread", threading.current_thread().name)


def test_a_request_no_route_answers_is_audited_too(tmp_path: Path) -> None:
    # A path or a method the routes do not have (an attempt to delete, to modify), and an
    # error no handler caught: one record each, as for every other request.
    archive = Archive.create(tmp_path / "a")
    key = KeyStore(archive.path).add("svc", "reader")

    async def broken(request: Any) -> Any:
        raise RuntimeError("a defect")

    routes = [*qido.routes(), Route("/broken", broken, methods=["GET"])]
    context = ServeContext(archive, ServeConfig(), AuditLog(archive.path, sync_seconds=0.0))
    asked = [("DELETE", "/studies", 405), ("PUT", "/studies", 405), ("GET", "/nowhere", 404)]
    try:
        app = make_app(context, Authenticator(archive.path, None), routes=routes)
        with serving_app(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            for method, path, status in asked:
                before = len(list(read_records(archive.path)))
                answer = client.request(method, path, headers={"Authorization": f"Bearer {key}"})
                assert answer.status_code == status
                records = list(read_records(archive.path))[before:]
                assert [(r["actor"], r["action"], r["outcome"], r["detail"]) for r in records] == [
                    ("key:svc", f"{method} {path}", "refused", str(status))
                ]
            answer = client.get("/broken", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 500
            last = list(read_records(archive.path))[-1]
            assert (last["action"], last["outcome"], last["detail"]) == (
                "GET /broken",
                "failed",
                "500: RuntimeError",
            )
            # A route that audits is not audited twice.
            before = len(list(read_records(archive.path)))
            # (A new connection: the server closes one after an error it did not handle.)
            answer = httpx.get(f"{url}/studies", headers={"Authorization": f"Bearer {key}"})
            assert answer.is_success
            assert len(list(read_records(archive.path))) == before + 1
    finally:
        context.audit.close()
        archive.close()
