"""A service using rotator.client keeps calling a protected API while rotator rotates its secret.

Real Keycloak issues the tokens, real OpenBao holds the credentials (read through VaultStore),
the real CLI rotates, and a small ASGI resource server on 127.0.0.1 validates each JWT against
Keycloak's JWKS. Tokens live a few seconds, so the service fetches new ones with every secret
the rotation produces: a token accepted with an ``iat`` after the old secret died can only have
been obtained with the new one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao, free_port

from rotator.client import CachePolicy, ClientCredentialsAuth, TokenClient
from rotator.errors import VerificationError

pytestmark = pytest.mark.server

#: Access-token lifespan given to the test client in Keycloak, in seconds.
LIFESPAN = 4
#: A 40 % buffer: the cache stops handing out a token at 80 % of its lifetime, before the
#: whole-second ``exp`` Keycloak writes can pass.
POLICY = CachePolicy(buffer_ratio=0.4, max_delay=1.0)
WORKERS = 2
ROTATIONS = 3


class ProtectedResource:
    """An ASGI API that answers 200 to a valid Keycloak JWT of one client, else 401."""

    def __init__(self, keycloak_url: str, realm: str, client_id: str) -> None:
        self.issuer = f"{keycloak_url}/realms/{realm}"
        jwks = httpx.get(f"{self.issuer}/protocol/openid-connect/certs", trust_env=False)
        self.keys = jwt.PyJWKSet.from_dict(jwks.json())
        self.client_id = client_id
        self.accepted_iat: list[int] = []
        self.rejected: list[str] = []

    def check(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer":
            return False
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for k in self.keys.keys if k.key_id == kid)
            claims = jwt.decode(token, key.key, algorithms=["RS256"], issuer=self.issuer,
                                options={"verify_aud": False, "require": ["exp", "iat"]})
        except (jwt.PyJWTError, StopIteration) as exc:
            self.rejected.append(type(exc).__name__)
            return False
        if claims.get("azp") != self.client_id:
            self.rejected.append("azp")
            return False
        self.accepted_iat.append(int(claims["iat"]))
        return True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = dict(scope["headers"])
        ok = self.check(headers.get(b"authorization", b"").decode())
        await send({"type": "http.response.start", "status": 200 if ok else 401,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body",
                    "body": json.dumps({"ok": ok}).encode()})


@dataclass
class Served:
    url: str
    app: ProtectedResource


def serve(app: ProtectedResource) -> Iterator[Served]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           ws="none", http="h11", loop="asyncio",
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}/orders", app)
    finally:
        server.should_exit = True
        thread.join(10)


class EventLog:
    """A logger that keeps every event the client library emits."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _add(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.events.append({"event": event, **fields})

    debug = info = warning = error = _add

    def count(self, event: str) -> int:
        return sum(e["event"] == event for e in self.events)


@dataclass
class Tally:
    """What the service's calls came to: a call is retried by the service at most 8 times."""

    calls: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def service(http: httpx.Client, url: str, stop: threading.Event, tally: Tally) -> None:
    while not stop.is_set():
        for _ in range(8):
            try:
                response = http.get(url)
                error = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except (VerificationError, httpx.HTTPError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                break
            with tally.lock:
                tally.retried += 1
                tally.errors.append(error)
            time.sleep(0.25)
        else:
            with tally.lock:
                tally.failed += 1
        with tally.lock:
            tally.calls += 1
        stop.wait(0.02)


def short_lived_tokens(s: Scenario) -> None:
    kc = s.kc.keycloak
    uuid = kc.client_uuid(s.kc.realm, s.client_id)
    kc.admin.put(f"{s.kc.realm}/clients/{uuid}",
                 json={"attributes": {"access.token.lifespan": str(LIFESPAN)}}
                 ).raise_for_status()
    token = kc.token(s.kc.realm, s.client_id, s.vault_current()).json()
    assert token["expires_in"] == LIFESPAN


class Running:
    """The service: WORKERS threads sharing one TokenClient built from rotator's config."""

    def __init__(self, s: Scenario, url: str) -> None:
        self.log = EventLog()
        self.tokens = TokenClient.from_config(s.config, "svc", store="bao", policy=POLICY,
                                              logger=self.log)
        self.http = httpx.Client(auth=ClientCredentialsAuth(self.tokens), trust_env=False,
                                 timeout=10)
        self.stop = threading.Event()
        self.tally = Tally()
        self.threads = [threading.Thread(target=service, args=(self.http, url, self.stop,
                                                                self.tally))
                        for _ in range(WORKERS)]

    def __enter__(self) -> Running:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.http.close()
        self.tokens.close()


def fresh_tokens_accepted_after(app: ProtectedResource, moment: float) -> int:
    # iat is whole seconds: only tokens issued a full second after ``moment`` count.
    return sum(iat > moment + 1 for iat in app.accepted_iat)


def summary(svc: Running) -> str:
    t, log = svc.tally, svc.log
    return (f"calls={t.calls} retried={t.retried} failed={t.failed} "
            f"tokens={log.count('token_obtained')} rereads={log.count('credentials_reread')} "
            f"refresh_failed={log.count('token_refresh_failed')}")


def no_leaks(s: Scenario, log: EventLog) -> list[str]:
    s.remember()
    texts = [repr(e) for e in log.events]
    return [t[:120] for t in texts for v in s.seen_secrets if len(v) >= 8 and v in t]


@pytest.fixture
def scenario_and_api(request: pytest.FixtureRequest, kc_realm: KeycloakRealm,
                     bao_server: OpenBao, tmp_path: Path) -> Iterator[tuple[Scenario, Served]]:
    overlap: bool = request.param
    s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=overlap,
                        grace="1h" if overlap else "0s")
    short_lived_tokens(s)
    app = ProtectedResource(kc_realm.keycloak.url, kc_realm.realm, s.client_id)
    yield from ((s, served) for served in serve(app))


class TestServiceSurvivesRotation:
    """Calls keep succeeding while the secret the service reads from OpenBao is rotated."""

    @pytest.mark.parametrize("scenario_and_api", [True], indirect=True, ids=["overlap"])
    def test_overlap_rotation_loses_no_call(self, scenario_and_api: tuple[Scenario, Served]
                                            ) -> None:
        s, api = scenario_and_api
        with Running(s, api.url) as svc:
            time.sleep(LIFESPAN)
            for _ in range(ROTATIONS):
                old = s.vault_current()
                rotated = s.cli("rotate", "svc")
                assert rotated.code == 0, rotated.out + rotated.err
                time.sleep(LIFESPAN)  # new tokens still come from the old, rotated secret
                assert s.works(old)
                retired = s.cli("retire", "svc", "--now")
                assert retired.code == 0, retired.out + retired.err
                dead_since = time.time()
                assert not s.works(old)
                time.sleep(LIFESPAN + 1.5)
                assert fresh_tokens_accepted_after(api.app, dead_since) > 0
        tally = svc.tally
        print(summary(svc))
        assert tally.failed == 0 and tally.retried == 0, tally.errors[:5]
        assert tally.calls > 100
        assert svc.log.count("credentials_reread") >= ROTATIONS
        assert svc.log.count("token_obtained") >= 3 * ROTATIONS
        assert no_leaks(s, svc.log) == [] and s.leaks() == []

    @pytest.mark.parametrize("scenario_and_api", [False], indirect=True, ids=["single"])
    def test_single_secret_rotation_retries_a_bounded_number_of_calls(
            self, scenario_and_api: tuple[Scenario, Served]) -> None:
        s, api = scenario_and_api
        with Running(s, api.url) as svc:
            time.sleep(LIFESPAN)
            for _ in range(ROTATIONS):
                old = s.vault_current()
                rotated = s.cli("rotate", "svc")
                assert rotated.code == 0, rotated.out + rotated.err
                dead_since = time.time()
                assert not s.works(old)
                time.sleep(LIFESPAN + 1.5)
                assert fresh_tokens_accepted_after(api.app, dead_since) > 0
        tally = svc.tally
        print(summary(svc))
        # A token fetch can fall between Keycloak replacing the secret and OpenBao getting
        # the new one; the waiting workers then retry once or twice after 0.25 s.
        assert tally.failed == 0, tally.errors[:5]
        assert tally.retried <= 2 * WORKERS * ROTATIONS, tally.errors[:10]
        assert tally.calls > 50
        assert svc.log.count("credentials_reread") >= ROTATIONS
        assert no_leaks(s, svc.log) == [] and s.leaks() == []
