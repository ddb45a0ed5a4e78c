"""Tests for the admin API: [api] configuration, authentication, every route, problem details,
audit events, the committed OpenAPI document, and a leak scan."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from api_support import AUDIENCE, ISSUER, JwksServer, SigningKey
from config_env import MINIMAL_CONFIG
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families
from service_double import InMemoryRotationService, sample_clients
from starlette.routing import Route

from rotator.audit import AuditLog, flatten
from rotator.config import ApiToken, JwtConfig, load_config
from rotator.daemon.api import ApiServerError, create_app, openapi_text, serve
from rotator.daemon.auth import (
    Authenticator,
    JwksCache,
    JwtVerifier,
    Role,
    Unauthenticated,
)
from rotator.daemon.metrics import Metrics
from rotator.daemon.model import Condition, Readiness, RotationStep, RotationView
from rotator.errors import ConfigError, RotatorError
from rotator.secrets import Secret

# -- [api] configuration ----------------------------------------------------------------------

def _load(tmp_path: Path, api: str, **env: str) -> object:
    (tmp_path / "rotator.toml").write_text(MINIMAL_CONFIG + api, encoding="utf-8")
    environ = {"AUDIT_KEY": secrets.token_hex(16), "KC": secrets.token_hex(16), **env}
    return load_config(tmp_path / "rotator.toml", environ=environ)


def _problems(tmp_path: Path, api: str, **env: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, api, **env)
    return {p.key: p.reason for p in info.value.problems}


class TestApiConfig:
    """[api] is checked with the rest of the file: listen, TLS, tokens and the JWT issuer."""

    def test_defaults_to_loopback_8900_without_tokens(self, tmp_path: Path) -> None:
        config = _load(tmp_path, "")
        assert config.api.listen == "127.0.0.1:8900"  # type: ignore[attr-defined]
        assert config.api.tokens == ()  # type: ignore[attr-defined]

    def test_tokens_from_env_file_and_hash_are_kept_as_digests(self, tmp_path: Path) -> None:
        a, b, c = (secrets.token_urlsafe(24) for _ in range(3))
        token_file = tmp_path / "b.token"
        token_file.write_text(b + "\n")
        token_file.chmod(0o600)
        config = _load(tmp_path, f"""
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "ops"
role = "admin"
token_env = "OPS_TOKEN"
[[api.tokens]]
name = "ci"
role = "rotate"
token_file = "b.token"
[[api.tokens]]
name = "grafana"
role = "read"
token_sha256 = "{hashlib.sha256(c.encode()).hexdigest()}"
""", OPS_TOKEN=a)
        assert config.api.tokens == (  # type: ignore[attr-defined]
            ApiToken("ops", "admin", hashlib.sha256(a.encode()).digest()),
            ApiToken("ci", "rotate", hashlib.sha256(b.encode()).digest()),
            ApiToken("grafana", "read", hashlib.sha256(c.encode()).digest()),
        )
        assert a not in repr(config) and b not in repr(config)

    @pytest.mark.parametrize("listen", ["0.0.0.0:8900", "[::]:8900", "10.1.2.3:8900",
                                        "api.example.com:443"])
    def test_non_loopback_without_tls_is_refused(self, tmp_path: Path, listen: str) -> None:
        problems = _problems(tmp_path, f'[api]\nlisten = "{listen}"\n')
        assert "insecure_http = true" in problems["api.listen"]

    @pytest.mark.parametrize("extra", ["insecure_http = true",
                                       'cert_file = "c.pem"\nkey_file = "k.pem"'])
    def test_non_loopback_is_allowed_with_tls_or_by_name(self, tmp_path: Path,
                                                         extra: str) -> None:
        config = _load(tmp_path, f'[api]\nlisten = "0.0.0.0:8900"\n{extra}\n')
        assert config.api.host == "0.0.0.0"  # type: ignore[attr-defined]  # noqa: S104

    @pytest.mark.parametrize("listen", ["127.0.0.1:8900", "[::1]:8900", "localhost:1"])
    def test_loopback_needs_no_tls(self, tmp_path: Path, listen: str) -> None:
        _load(tmp_path, f'[api]\nlisten = "{listen}"\n')

    def test_every_problem_is_reported_at_once(self, tmp_path: Path) -> None:
        problems = _problems(tmp_path, """
[api]
listen = "nowhere"
cert_file = "c.pem"
[[api.tokens]]
name = "a"
role = "superuser"
token_sha256 = "abc"
[[api.tokens]]
name = "b"
role = "read"
token_env = "SHORT"
[[api.tokens]]
name = "c"
role = "read"
[api.jwt]
jwks_uri = "http://idp.example.com/certs"
issuer = "x"
""", SHORT="short")
        assert set(problems) >= {
            "api.listen", "api.key_file", "api.tokens[0].role", "api.tokens[0].token_sha256",
            "api.tokens[1].token_env", "api.tokens[2].token_env", "api.jwt.jwks_uri",
            "api.jwt.audience"}, problems
        assert "at least 16" in problems["api.tokens[1].token_env"]
        assert "short" not in str(problems)

    def test_duplicate_token_names_are_refused(self, tmp_path: Path) -> None:
        digest = hashlib.sha256(b"x").hexdigest()
        problems = _problems(tmp_path, f"""
[[api.tokens]]
name = "a"
role = "read"
token_sha256 = "{digest}"
[[api.tokens]]
name = "a"
role = "admin"
token_sha256 = "{digest}"
""")
        assert "already named" in problems["api.tokens[1].name"]


# -- authentication ---------------------------------------------------------------------------


def _token(value: str, name: str, role: str) -> ApiToken:
    return ApiToken(name, role, hashlib.sha256(value.encode()).digest())


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture(scope="module")
def jwks(signing_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer([signing_key]).running() as server:
        yield server


def _verifier(uri: str) -> JwtVerifier:
    return JwtVerifier(JwtConfig(uri, ISSUER, AUDIENCE, {
        "read": "rotator:read", "rotate": "rotator:rotate", "admin": "rotator:admin"}))


class TestStaticTokens:
    """A configured bearer token authenticates as its name and role; anything else is refused."""

    def test_each_token_maps_to_its_role(self) -> None:
        values = {role: secrets.token_urlsafe(24) for role in ("read", "rotate", "admin")}
        auth = Authenticator([_token(v, f"t-{r}", r) for r, v in values.items()])
        for role, value in values.items():
            caller = auth.authenticate(f"Bearer {value}")
            assert (caller.name, caller.role, caller.actor) == (
                f"t-{role}", Role.named(role), f"api:t-{role}")

    @pytest.mark.parametrize(("header", "reason"), [
        (None, "no bearer token"), ("", "no bearer token"),
        ("Basic dXNlcjpwYXNz", "not a bearer token"), ("Bearer", "not a bearer token"),
        ("Bearer wrong-token-value-1234", "unknown bearer token"),
    ])
    def test_refused(self, header: str | None, reason: str) -> None:
        auth = Authenticator([_token(secrets.token_urlsafe(24), "a", "admin")])
        with pytest.raises(Unauthenticated, match=reason):
            auth.authenticate(header)

    def test_roles_are_ordered(self) -> None:
        assert Role.READ < Role.ROTATE < Role.ADMIN
        assert str(Role.ROTATE) == "rotate"


class TestJwt:
    """A JWT from the configured issuer, for this audience, unexpired, maps its scope to a role."""

    def test_good_tokens_of_each_role(self, jwks: JwksServer, signing_key: SigningKey) -> None:
        auth = Authenticator(jwt=_verifier(jwks.uri))
        for scope, role in [("rotator:read", Role.READ), ("openid rotator:rotate", Role.ROTATE),
                            ("rotator:read rotator:admin", Role.ADMIN)]:
            caller = auth.authenticate(f"Bearer {signing_key.sign(scope=scope)}")
            assert (caller.name, caller.role, caller.kind) == ("ops-bot", role, "jwt")
            assert caller.actor == "api:jwt:ops-bot"

    def test_sub_names_the_caller_without_client_id(self, jwks: JwksServer,
                                                    signing_key: SigningKey) -> None:
        token = signing_key.sign(client_id=None, sub="svc\nfake-line")
        caller = Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {token}")
        assert caller.name == "svc_fake-line"

    @pytest.mark.parametrize(("claims", "reason"), [
        ({"expires_in": -120}, "expired"),
        ({"audience": "someone-else"}, "audience"),
        ({"issuer": "https://evil.test"}, "another issuer"),
        ({"scope": "openid profile"}, "none of the scopes"),
    ])
    def test_refused(self, jwks: JwksServer, signing_key: SigningKey,
                     claims: dict[str, object], reason: str) -> None:
        token = signing_key.sign(**claims)  # type: ignore[arg-type]
        with pytest.raises(Unauthenticated, match=reason):
            Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {token}")

    def test_a_key_the_issuer_does_not_publish_is_refused(self, jwks: JwksServer) -> None:
        stranger = SigningKey("k1")  # same kid, other key: signature fails
        with pytest.raises(Unauthenticated, match="signature"):
            Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {stranger.sign()}")
        unknown = SigningKey("k-unknown")
        with pytest.raises(Unauthenticated, match="does not publish"):
            Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {unknown.sign()}")

    def test_alg_none_and_hs256_are_refused(self, jwks: JwksServer) -> None:
        claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": 2**31, "scope": "rotator:admin",
                  "client_id": "x"}
        auth = Authenticator(jwt=_verifier(jwks.uri))
        for token in (jwt_encode(claims, None, "none"),
                      jwt_encode(claims, "k" * 32, "HS256")):
            with pytest.raises(Unauthenticated, match="algorithm"):
                auth.authenticate(f"Bearer {token}")

    def test_keys_are_cached_and_unknown_kids_refetch_rarely(
            self, jwks: JwksServer, signing_key: SigningKey) -> None:
        now = [0.0]
        cache = JwksCache(jwks.uri, clock=lambda: now[0])
        verifier = JwtVerifier(_verifier(jwks.uri)._config, keys=cache)
        for _ in range(5):
            verifier.verify(signing_key.sign())
        assert cache.fetches == 1
        for _ in range(5):
            with pytest.raises(Unauthenticated):
                verifier.verify(SigningKey("forged").sign())
        assert cache.fetches == 1  # within JWKS_MIN_REFETCH_SECONDS
        now[0] = 31.0
        with pytest.raises(Unauthenticated):
            verifier.verify(SigningKey("forged").sign())
        assert cache.fetches == 2
        cache.close()

    def test_an_unreachable_jwks_is_refused_without_detail(self) -> None:
        auth = Authenticator(jwt=_verifier("http://127.0.0.1:9/certs"))
        with pytest.raises(Unauthenticated, match="cannot fetch"):
            auth.authenticate(f"Bearer {SigningKey('k').sign()}")


def jwt_encode(claims: dict[str, object], key: str | None, alg: str) -> str:
    import jwt

    if alg == "none":
        return jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": "k1"})


# -- the app: fixtures ------------------------------------------------------------------------

FINGERPRINT = "hmac-sha256:" + "ab12" * 8
ROUTE_NAME = "client-001"
ROTATION_ID = "done-1"
#: Every route and the weakest role that may call it (None: no token needed). A route the app
#: serves that is missing here fails TestAuthMatrix.test_every_route_is_listed.
ROUTE_ROLES: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/openapi.json"): None,
    ("GET", "/readyz"): "read",
    ("GET", "/metrics"): "read",
    ("GET", "/v1/clients"): "read",
    ("GET", "/v1/clients/{name}"): "read",
    ("GET", "/v1/rotations/{rotation_id}"): "read",
    ("POST", "/v1/clients/{name}/rotations"): "rotate",
    ("POST", "/v1/clients/{name}/verifications"): "rotate",
    ("POST", "/v1/clients/{name}/retirements"): "admin",
    ("POST", "/v1/clients/{name}/consumers"): "consumer",
}
#: A body for the routes that need one (the others get none).
ROUTE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/clients/{name}/consumers"): {"instance": "web-1", "fingerprint": FINGERPRINT},
}


def _url(template: str) -> str:
    return template.replace("{name}", ROUTE_NAME).replace("{rotation_id}", ROTATION_ID)


@dataclass
class Api:
    """The app over a service test double, its tokens, and the audit events it wrote."""

    client: TestClient
    service: InMemoryRotationService
    tokens: dict[str, str]
    secret: Secret
    audit_stream: io.StringIO
    signing_key: SigningKey

    def headers(self, credential: str) -> dict[str, str]:
        value = self.tokens.get(credential)
        return {"Authorization": f"Bearer {value}"} if value else {}

    def events(self) -> list[dict[str, Any]]:
        self.client.app.state.audit_queue.flush()  # type: ignore[attr-defined]
        lines = self.audit_stream.getvalue().splitlines()
        events = [flatten(json.loads(line)) for line in lines]
        return [e for e in events if e["event"] == "api_request"]


@pytest.fixture
def api(tmp_path: Path, jwks: JwksServer, signing_key: SigningKey) -> Iterator[Api]:
    tokens = {role: secrets.token_urlsafe(24)
              for role in ("read", "rotate", "admin", "consumer")}
    hashed = secrets.token_urlsafe(24)
    config = _load(tmp_path, f"""
[[api.tokens]]
name = "viewer"
role = "read"
token_env = "T_READ"
[[api.tokens]]
name = "ci"
role = "rotate"
token_env = "T_ROTATE"
[[api.tokens]]
name = "ops"
role = "admin"
token_env = "T_ADMIN"
[[api.tokens]]
name = "web"
role = "consumer"
token_env = "T_CONSUMER"
[[api.tokens]]
name = "grafana"
role = "read"
token_sha256 = "{hashlib.sha256(hashed.encode()).hexdigest()}"
[api.jwt]
jwks_uri = "{jwks.uri}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
""", T_READ=tokens["read"], T_ROTATE=tokens["rotate"], T_ADMIN=tokens["admin"],
                   T_CONSUMER=tokens["consumer"])
    secret = Secret(secrets.token_urlsafe(32))
    service = InMemoryRotationService(sample_clients(12, fingerprint=FINGERPRINT,
                                                     secret=secret))
    now = datetime.now(UTC)
    service.add_rotation(RotationView(
        id=ROTATION_ID, client=ROUTE_NAME, state="completed", family="two-secret",
        actor="scheduler", started_at=now, updated_at=now, retire_after=None,
        error=f"an earlier attempt echoed {secret.reveal()}",
        steps=[RotationStep("created", now), RotationStep("completed", now)]))
    service.verification[ROUTE_NAME] = {"fingerprint": FINGERPRINT, "secret": secret,
                                        "note": f"raw {secret.reveal()}"}
    stream = io.StringIO()
    audit = AuditLog(Secret(secrets.token_hex(16)), stream=stream)
    auth = Authenticator.from_config(config.api)  # type: ignore[attr-defined]
    app = create_app(service, auth=auth, audit=audit, metrics=Metrics())
    all_tokens = {
        **tokens, "hashed": hashed, "wrong": secrets.token_urlsafe(24),
        "jwt-read": signing_key.sign(scope="rotator:read"),
        "jwt-rotate": signing_key.sign(scope="rotator:rotate"),
        "jwt-admin": signing_key.sign(scope="rotator:admin"),
        "jwt-consumer": signing_key.sign(scope="rotator:consumer"),
        "jwt-consumer-read": signing_key.sign(scope="rotator:consumer rotator:read"),
        "jwt-expired": signing_key.sign(scope="rotator:admin", expires_in=-120),
        "jwt-audience": signing_key.sign(scope="rotator:admin", audience="other"),
        "jwt-issuer": signing_key.sign(scope="rotator:admin", issuer="https://evil.test"),
    }
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, service, all_tokens, secret, stream, signing_key)
    auth.close()


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    return body


# -- the app: who may call --------------------------------------------------------------------

#: credential -> (role it grants, or None if refused; the caller the audit event names)
CREDENTIALS: dict[str, tuple[str | None, str | None]] = {
    "none": (None, None), "wrong": (None, None), "jwt-expired": (None, None),
    "jwt-audience": (None, None), "jwt-issuer": (None, None),
    "read": ("read", "viewer"), "hashed": ("read", "grafana"), "rotate": ("rotate", "ci"),
    "admin": ("admin", "ops"), "jwt-read": ("read", "ops-bot"),
    "jwt-rotate": ("rotate", "ops-bot"), "jwt-admin": ("admin", "ops-bot"),
    "consumer": ("consumer", "web"), "jwt-consumer": ("consumer", "ops-bot"),
    "jwt-consumer-read": (None, None),
}
_RANK = {"consumer": 0, "read": 1, "rotate": 2, "admin": 3}


def _may(granted: str, needed: str) -> bool:
    """``consumer`` may only report, and only ``consumer`` may report."""
    if "consumer" in (granted, needed):
        return granted == needed
    return _RANK[granted] >= _RANK[needed]


class TestAuthMatrix:
    """Every route refuses a missing, wrong or too-weak credential and audits every call."""

    def test_every_route_is_listed(self, api: Api) -> None:
        served = {(method, route.path) for route in api.client.app.routes  # type: ignore[attr-defined]
                  if isinstance(route, APIRoute | Route)
                  for method in (route.methods or ()) if method != "HEAD"}
        assert served == set(ROUTE_ROLES)

    @pytest.mark.parametrize("credential", sorted(CREDENTIALS))
    @pytest.mark.parametrize(("method", "template"), sorted(ROUTE_ROLES))
    def test_route(self, api: Api, method: str, template: str, credential: str) -> None:
        needed = ROUTE_ROLES[(method, template)]
        granted, caller = CREDENTIALS[credential]
        response = api.client.request(method, _url(template), headers=api.headers(credential),
                                      json=ROUTE_BODIES.get((method, template)))
        if needed is None:
            assert response.status_code == 200
            caller = None
        elif granted is None:
            _assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
        elif not _may(granted, needed):
            body = _assert_problem(response, 403)
            assert needed in body["detail"]
        else:
            assert response.status_code in (200, 202, 204), response.text
        [event] = api.events()
        assert event["route"] == template
        assert event["method"] == method
        assert event["status"] == response.status_code
        assert event["source_ip"] == "testclient"
        assert event["outcome"] == ("success" if response.status_code < 400 else "failure")
        assert event["caller"] == caller
        if response.status_code in (401, 403):
            assert event["reason"]
            assert api.service.calls == []  # refused before the service is asked
        if credential in api.tokens:
            assert api.tokens[credential] not in api.audit_stream.getvalue()


# -- the app: problem details -----------------------------------------------------------------


class TestProblemDetails:
    """Every error is an RFC 9457 problem document, audited, with no traceback or HTML."""

    def test_unknown_client_and_rotation_are_404(self, api: Api) -> None:
        h = api.headers("admin")
        for method, url in [("GET", "/v1/clients/nobody"), ("GET", "/v1/rotations/nothing"),
                            ("POST", "/v1/clients/nobody/rotations"),
                            ("POST", "/v1/clients/nobody/retirements"),
                            ("POST", "/v1/clients/nobody/verifications")]:
            body = _assert_problem(api.client.request(method, url, headers=h), 404)
            assert "nobody" in body["detail"] or "nothing" in body["detail"]
        assert [e["status"] for e in api.events()] == [404] * 5

    @pytest.mark.parametrize("url", ["/v1/clients?limit=0", "/v1/clients?limit=x",
                                     "/v1/clients?after=%20bad", "/v1/clients/bad%20name",
                                     "/v1/rotations/-x",
                                     "/v1/clients?limt=5"])
    def test_bad_input_is_422_without_echoing_it(self, api: Api, url: str) -> None:
        body = _assert_problem(api.client.get(url, headers=api.headers("read")), 422)
        assert body["errors"] and all(set(e) == {"loc", "message"} for e in body["errors"])
        assert "input" not in json.dumps(body["errors"])

    def test_bad_idempotency_key_is_422(self, api: Api) -> None:
        response = api.client.post(f"/v1/clients/{ROUTE_NAME}/rotations",
                                   headers={**api.headers("rotate"), "Idempotency-Key": ""})
        _assert_problem(response, 422)
        assert api.service.calls == []

    def test_unknown_route_and_method(self, api: Api) -> None:
        _assert_problem(api.client.get("/v2/anything"), 404)
        _assert_problem(api.client.delete("/v1/clients", headers=api.headers("admin")), 405)
        assert [(e["route"], e["status"]) for e in api.events()] == [
            ("unmatched", 404), ("/v1/clients", 405)]

    def test_service_unavailable_is_503_with_retry_after(self, api: Api) -> None:
        api.service.unavailable = True
        response = api.client.post(f"/v1/clients/{ROUTE_NAME}/rotations",
                                   headers=api.headers("rotate"))
        _assert_problem(response, 503)
        assert response.headers["retry-after"] == "5"

    def test_not_ready_is_503(self, api: Api) -> None:
        api.service.ready = Readiness(True, False, True)
        body = _assert_problem(api.client.get("/readyz", headers=api.headers("read")), 503)
        assert body["checks"]["journal_writable"] is False

    @pytest.mark.parametrize("crash", [RuntimeError("boom at /srv/x.py line 3"),
                                       RotatorError("unexpected")])
    def test_a_service_bug_is_a_500_problem(self, api: Api, crash: Exception) -> None:
        api.service.crash = crash
        response = api.client.get("/v1/clients", headers=api.headers("read"))
        body = _assert_problem(response, 500)
        assert "boom" not in response.text and "/srv" not in response.text
        assert body["detail"]
        [event] = api.events()
        assert (event["status"], event["outcome"], event["route"]) == (
            500, "failure", "/v1/clients")


# -- the app: what the routes do --------------------------------------------------------------


class TestClients:
    """GET /v1/clients pages through every client in name order; one client has every field."""

    def test_paging_visits_every_client_once(self, api: Api) -> None:
        seen: list[str] = []
        url: str | None = "/v1/clients?limit=5"
        pages = 0
        while url:
            page = api.client.get(url, headers=api.headers("read")).json()
            seen += [c["name"] for c in page["items"]]
            url = page["next"]
            pages += 1
        assert seen == [c.name for c in api.service.clients()]
        assert pages == 3

    def test_one_client(self, api: Api) -> None:
        api.service.set_condition(ROUTE_NAME, Condition.FAILING, failures=3)
        body = api.client.get(f"/v1/clients/{ROUTE_NAME}", headers=api.headers("read")).json()
        assert body["condition"] == "failing"
        assert body["backoff"]["failures"] == 3
        assert body["stores"] == ["vault", "env"] and body["idp"] == "kc"
        assert body["last_rotation"] == {"id": "done-1", "state": "completed"}
        assert body["age_seconds"] == 86400.0 and body["next_run"]
        assert body["extra"]["current_fingerprint"] == FINGERPRINT

    def test_a_rotation_and_its_steps(self, api: Api) -> None:
        body = api.client.get(f"/v1/rotations/{ROTATION_ID}",
                              headers=api.headers("read")).json()
        assert body["state"] == "completed"
        assert [s["state"] for s in body["steps"]] == ["created", "completed"]
        assert all(s["at"] for s in body["steps"])


class TestFastClientRead:
    """A plain GET /v1/clients/{name} with a configured token is answered without FastAPI's
    routing, with the same document and audit event; anything else is FastAPI's."""

    def _get(self, api: Api, credential: str, url: str = f"/v1/clients/{ROUTE_NAME}"
             ) -> tuple[httpx.Response, int]:
        fast = api.client.app.state.fast_reads  # type: ignore[attr-defined]
        before = fast.answered
        response = api.client.get(url, headers=api.headers(credential))
        return response, fast.answered - before

    def test_same_document_and_event_as_the_fastapi_route(self, api: Api) -> None:
        api.service.set_condition(ROUTE_NAME, Condition.FAILING, failures=2)
        fast, answered = self._get(api, "read")
        assert answered == 1
        slow, answered = self._get(api, "jwt-read")  # a JWT: left to FastAPI
        assert answered == 0
        assert fast.status_code == slow.status_code == 200
        assert fast.content == slow.content
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert fast.headers["content-length"] == slow.headers["content-length"]
        first, second = api.events()
        same = ("route", "method", "client", "status", "outcome", "reason", "role",
                "source_ip", "event")
        assert {k: first.get(k) for k in same} == {k: second.get(k) for k in same}
        assert first["route"] == "/v1/clients/{name}" and first["client"] == ROUTE_NAME
        assert first["caller"] == "viewer" and first["status"] == 200

    @pytest.mark.parametrize(("credential", "url", "status"), [
        ("read", "/v1/clients/nobody", 404),
        ("read", f"/v1/clients/{ROUTE_NAME}?x=1", 422),
        ("read", "/v1/clients/-bad", 422),
        ("wrong", f"/v1/clients/{ROUTE_NAME}", 401),
        ("none", f"/v1/clients/{ROUTE_NAME}", 401),
        ("consumer", f"/v1/clients/{ROUTE_NAME}", 403),
        ("jwt-read", f"/v1/clients/{ROUTE_NAME}", 200),
    ])
    def test_anything_unusual_is_left_to_fastapi(self, api: Api, credential: str, url: str,
                                                 status: int) -> None:
        response, answered = self._get(api, credential, url)
        assert answered == 0
        assert response.status_code == status
        [event] = api.events()
        assert event["status"] == status


class _BlockingAudit:
    """An audit log whose api_request events wait until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written: list[dict[str, Any]] = []

    def event(self, name: str, **fields: Any) -> None:
        assert self.release.wait(30)
        self.written.append({"event": name, **fields})


class TestReadCallsAuditedWithoutWaiting:
    """A read call is answered before its audit event is durable, and the event is written
    after; a call that changes something is audited before it is answered."""

    def _app(self) -> tuple[TestClient, _BlockingAudit, dict[str, str]]:
        token = secrets.token_urlsafe(24)
        audit = _BlockingAudit()
        app = create_app(InMemoryRotationService(sample_clients(3, fingerprint=FINGERPRINT)),
                         auth=Authenticator([_token(token, "ci", "rotate")]),
                         audit=audit)  # type: ignore[arg-type]
        return TestClient(app), audit, {"Authorization": f"Bearer {token}"}

    def test_read_answered_before_its_event_is_written(self) -> None:
        client, audit, headers = self._app()
        name = sample_clients(3, fingerprint=FINGERPRINT)[0].name
        for url in (f"/v1/clients/{name}", "/v1/clients", "/healthz"):
            assert client.get(url, headers=headers).status_code == 200
        assert audit.written == []  # all three answered while the writers wait
        audit.release.set()
        client.app.state.audit_queue.flush()  # type: ignore[attr-defined]
        assert sorted(e["route"] for e in audit.written) == [
            "/healthz", "/v1/clients", "/v1/clients/{name}"]

    def test_a_trigger_is_audited_before_it_is_answered(self) -> None:
        client, audit, headers = self._app()
        name = sample_clients(3, fingerprint=FINGERPRINT)[0].name
        answered = threading.Event()

        def trigger() -> None:
            client.post(f"/v1/clients/{name}/rotations", headers=headers)
            answered.set()

        caller = threading.Thread(target=trigger)
        caller.start()
        assert not answered.wait(0.5)  # held by its audit event
        audit.release.set()
        caller.join(30)
        assert answered.is_set()
        assert [e["route"] for e in audit.written] == ["/v1/clients/{name}/rotations"]

    def test_close_writes_every_queued_event(self) -> None:
        client, audit, _headers = self._app()
        for _ in range(20):
            client.get("/healthz")
        queue = client.app.state.audit_queue  # type: ignore[attr-defined]
        audit.release.set()
        queue.close()
        assert len(audit.written) == 20
        assert not queue.submit({"route": "late"})  # closed: the caller writes its own


class TestTriggers:
    """Triggers answer 202 with the rotation's id and Location; keys and actors pass through."""

    def test_rotation_202_location_and_actor(self, api: Api) -> None:
        response = api.client.post("/v1/clients/client-000/rotations",
                                   headers=api.headers("rotate"))
        assert response.status_code == 202
        body = response.json()
        assert response.headers["location"] == body["location"] == \
            f"/v1/rotations/{body['rotation_id']}"
        assert body["joined"] is False
        assert api.client.get(body["location"], headers=api.headers("read")).json()[
            "state"] == "queued"
        assert api.service.calls[0].actor == "api:ci"

    def test_idempotency_key_is_passed_through_and_repeats_the_answer(self, api: Api) -> None:
        headers = {**api.headers("rotate"), "Idempotency-Key": "deploy-42"}
        first = api.client.post("/v1/clients/client-000/rotations", headers=headers).json()
        again = api.client.post("/v1/clients/client-000/rotations", headers=headers).json()
        assert again == first
        assert [c.options["idempotency_key"] for c in api.service.calls] == ["deploy-42"] * 2

    def test_a_trigger_while_rotating_joins(self, api: Api) -> None:
        h = api.headers("jwt-rotate")
        first = api.client.post("/v1/clients/client-000/rotations", headers=h).json()
        second = api.client.post("/v1/clients/client-000/rotations", headers=h).json()
        assert second["rotation_id"] == first["rotation_id"] and second["joined"] is True
        assert api.service.calls[0].actor == "api:jwt:ops-bot"

    def test_retirement_now_and_verification(self, api: Api) -> None:
        response = api.client.post(f"/v1/clients/{ROUTE_NAME}/retirements?now=true",
                                   headers=api.headers("admin"))
        assert response.status_code == 202 and response.headers["location"]
        verified = api.client.post(f"/v1/clients/{ROUTE_NAME}/verifications",
                                   headers=api.headers("rotate"))
        assert verified.status_code == 200
        assert verified.json()["result"]["fingerprint"] == FINGERPRINT
        assert [(c.method, c.options) for c in api.service.calls] == [
            ("trigger_retirement", {"now": True}), ("verify", {})]


class TestNoSecretInResponses:
    """A secret the service mistakenly hands over appears in no response body or header."""

    def test_leak_scan(self, api: Api) -> None:
        value = api.secret.reveal()
        responses = [api.client.request(m, _url(t), headers=api.headers("admin"))
                     for m, t in ROUTE_ROLES]
        responses.append(api.client.get("/v1/clients?limit=1000", headers=api.headers("admin")))
        for response in responses:
            assert response.status_code < 500, response.text
            assert value not in response.text
            assert all(value not in v for v in response.headers.values())
        listed = responses[-1].json()["items"]
        assert listed[0]["extra"]["current_fingerprint"] == FINGERPRINT
        assert listed[0]["extra"]["leaked"] == "**********"
        assert value not in api.audit_stream.getvalue()


# -- serving ----------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "api.crt", tmp_path / "api.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


class TestServe:
    """serve() runs the app in a thread on loopback, with TLS when given, and stops cleanly."""

    def _app(self) -> Any:
        return create_app(InMemoryRotationService(), auth=Authenticator(), audit=None)

    def test_plain_http_on_loopback(self) -> None:
        server = serve(self._app(), "127.0.0.1:0")
        try:
            response = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
            assert response.json() == {"status": "ok"}
            assert "server" not in response.headers
        finally:
            server.stop()
        assert not server.running

    def test_tls(self, tmp_path: Path) -> None:
        cert_file, key_file = _self_signed(tmp_path)
        server = serve(self._app(), ("127.0.0.1", 0), cert_file=str(cert_file),
                       key_file=str(key_file))
        try:
            response = httpx.get(f"https://127.0.0.1:{server.port}/healthz",
                                 verify=ssl.create_default_context(cafile=str(cert_file)))
            assert response.status_code == 200
        finally:
            server.stop()

    @pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
    def test_plain_http_elsewhere_is_refused(self, listen: str) -> None:
        with pytest.raises(ApiServerError, match="insecure_http"):
            serve(self._app(), listen)

    def test_address_in_use_is_one_clear_error(self) -> None:
        server = serve(self._app(), "127.0.0.1:0")
        try:
            with pytest.raises(ApiServerError, match="cannot listen"):
                serve(self._app(), ("127.0.0.1", server.port))
        finally:
            server.stop()


class TestMetricsRoute:
    """GET /metrics serves the Prometheus text format with the service's client gauges."""

    def test_scrape(self, api: Api) -> None:
        response = api.client.get("/metrics", headers=api.headers("hashed"))
        assert response.headers["content-type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(response.text)}
        assert {"rotator_client_condition", "rotator_secret_age_seconds",
                "rotator_rotations", "rotator_idp_requests"} <= names


# -- the OpenAPI document ---------------------------------------------------------------------

OPENAPI_FILE = Path(__file__).parent.parent / "docs" / "openapi.json"


class TestOpenApiDocument:
    """docs/openapi.json is what the code serves; regenerate it when the API changes."""

    def test_committed_document_matches_the_code(self) -> None:
        assert OPENAPI_FILE.read_text(encoding="utf-8") == openapi_text(), (
            "docs/openapi.json is out of date: python -m rotator.daemon.api > docs/openapi.json")

    def test_served_document_is_the_committed_one(self, api: Api) -> None:
        assert api.client.get("/openapi.json").json() == json.loads(OPENAPI_FILE.read_text())

    def test_every_error_is_documented_as_a_problem(self) -> None:
        doc = json.loads(OPENAPI_FILE.read_text())
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                for status, answer in operation["responses"].items():
                    if status[0] in "45":
                        assert list(answer["content"]) == ["application/problem+json"], (
                            method, path, status)
                if path != "/healthz":
                    assert operation["security"] == [{"bearer": []}], (method, path)


# -- schemathesis over the committed document -------------------------------------------------

SCHEMA = schemathesis.openapi.from_dict(json.loads(OPENAPI_FILE.read_text(encoding="utf-8")))
_FUZZ_TOKENS = {role: secrets.token_urlsafe(24) for role in ("read", "rotate")}


def _fuzz_app() -> Any:
    service = InMemoryRotationService(sample_clients(12, fingerprint=FINGERPRINT))
    now = datetime.now(UTC)
    service.add_rotation(RotationView(
        id=ROTATION_ID, client=ROUTE_NAME, state="completed", family=None, actor="scheduler",
        started_at=now, updated_at=now, retire_after=None, error=None,
        steps=[RotationStep("completed", now)]))
    auth = Authenticator([_token(v, f"fuzz-{r}", r) for r, v in _FUZZ_TOKENS.items()])
    audit = AuditLog(Secret(secrets.token_hex(16)), stream=io.StringIO())
    return create_app(service, auth=auth, audit=audit, metrics=Metrics())


# Set before parametrize: the checks that send calls of their own (ignored_auth) use it.
SCHEMA.app = _fuzz_app()
_FUZZ_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))


class TestSchemathesis:
    """Generated calls from docs/openapi.json get no 5xx and only documented answers."""

    @SCHEMA.parametrize()
    @_FUZZ_SETTINGS
    def test_with_a_read_token(self, case: Any) -> None:
        case.call_and_validate(
                               headers={"Authorization": f"Bearer {_FUZZ_TOKENS['read']}"})

    @SCHEMA.parametrize()
    @_FUZZ_SETTINGS
    def test_with_a_rotate_token(self, case: Any) -> None:
        case.call_and_validate(
                               headers={"Authorization": f"Bearer {_FUZZ_TOKENS['rotate']}"})
