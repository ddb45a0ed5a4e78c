"""Tests for rotator.client: the sync token cache and httpx.Auth, over a fake token endpoint.

A fake clock and a recording sleep stand in for time: no test waits for a backoff.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from providers.stores.env import EnvStore
from rotator.client import CachePolicy, ClientCredentialsAuth, TokenClient
from rotator.config import load_config
from rotator.errors import (
    BadTokenResponse,
    ConfigError,
    InvalidClient,
    InvalidScope,
    StoreNotFound,
    StoreUnavailable,
    TokenEndpointUnavailable,
    UnauthorizedClient,
)
from rotator.interfaces import Credentials, Stage, StoredCredentials, StoreFacts
from rotator.secrets import Secret
from rotator.token import TokenRequest

ENDPOINT = "https://idp.test/realms/r/protocol/openid-connect/token"
API = "https://api.test/orders"


@pytest.fixture(autouse=True)
def default_structlog() -> Iterator[None]:
    """capture_logs needs every level to reach it: undo a CLI test's configuration."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


class FakeClock:
    """A monotonic clock that moves only when told, and a sleep that moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class FakeIdP:
    """A token endpoint that accepts the secrets in ``valid`` and records every request.

    ``script`` holds responses served (in order) before normal behaviour resumes. A refused
    secret is echoed in ``error_description``, as careless servers do, to prove redaction.
    """

    def __init__(self, client_id: str = "svc-orders", *valid: str, expires_in: Any = 3600,
                 clock: FakeClock | None = None) -> None:
        self.client_id = client_id
        self.valid = set(valid)
        self.expires_in = expires_in
        self.clock = clock
        self.script: list[httpx.Response] = []
        self.requests: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.latency = 0.0  # real seconds a request takes (concurrency tests only)
        self.advance = 0.0  # fake seconds a request takes
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Basic":
            raw_id, _, raw_secret = base64.b64decode(encoded).decode().partition(":")
            form["client_id"], form["client_secret"] = unquote_plus(raw_id), unquote_plus(
                raw_secret)
        with self._lock:
            self.requests.append(form)
            scripted = self.script.pop(0) if self.script else None
        if self.gate is not None:
            self.gate.wait(10)
        if self.latency:
            time.sleep(self.latency)
        if self.clock is not None:
            self.clock.now += self.advance
        if scripted is not None:
            return scripted
        secret = form.get("client_secret", "")
        if form.get("client_id") != self.client_id or secret not in self.valid:
            return httpx.Response(401, json={"error": "invalid_client",
                                             "error_description": f"bad secret {secret}"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.issued.append(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if "scope" in form:
            body["scope"] = form["scope"]
        return httpx.Response(200, json=body)

    @property
    def secrets_used(self) -> list[str]:
        return [r.get("client_secret", "") for r in self.requests]

    def everything_secret(self) -> list[str]:
        return [*self.valid, *self.secrets_used, *self.issued]


class FakeStore:
    """A SecretStore holding CURRENT and PREVIOUS per location in memory (reads only)."""

    name = "fake"

    def __init__(self, client_id: str, current: str, previous: str | None = None) -> None:
        self.client_id = client_id
        self.values: dict[Stage, str] = {Stage.CURRENT: current}
        if previous:
            self.values[Stage.PREVIOUS] = previous
        self.reads: list[Stage] = []
        self.fail: Exception | None = None

    def start(self) -> None: ...

    def close(self) -> None: ...

    def read(self, location: str, stage: Stage = Stage.CURRENT) -> StoredCredentials | None:
        assert location == "apps/orders"
        self.reads.append(stage)
        if self.fail is not None:
            raise self.fail
        value = self.values.get(stage)
        if value is None:
            return None
        return StoredCredentials(Credentials(self.client_id, Secret(value)), stage)

    def facts(self, location: str) -> StoreFacts:
        raise NotImplementedError

    def check_writable(self, location: str) -> None:
        raise NotImplementedError

    def stage_pending(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def promote(self, location: str, rotation_id: str) -> None:
        raise NotImplementedError

    def discard_pending(self, location: str, rotation_id: str) -> None:
        raise NotImplementedError

    def drop_previous(self, location: str, rotation_id: str) -> None:
        raise NotImplementedError


class Rig:
    """A fake IdP, clock and store, and a factory for clients wired to them."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.secret = new_secret()
        self.idp = FakeIdP("svc-orders", self.secret, clock=self.clock)
        self.store = FakeStore("svc-orders", self.secret)
        self.rand = 0.5
        self.clients: list[TokenClient] = []

    def client(self, *, direct: bool = False, scopes: tuple[str, ...] = (),
               policy: CachePolicy | None = None, **kwargs: Any) -> TokenClient:
        source: dict[str, Any] = (
            {"credentials": Credentials("svc-orders", Secret(self.secret))} if direct
            else {"store": self.store, "location": "apps/orders"})
        client = TokenClient(
            TokenRequest(ENDPOINT, scopes=scopes), **source,
            http=httpx.Client(transport=httpx.MockTransport(self.idp)),
            policy=policy, clock=self.clock, sleep=self.clock.sleep,
            random=lambda: self.rand, **kwargs)
        self.clients.append(client)
        return client

    def rotate(self, *, keep_old: bool) -> str:
        """Rotate like rotator: new secret CURRENT, old one PREVIOUS (valid if ``keep_old``)."""
        old, self.secret = self.secret, new_secret()
        self.idp.valid = {self.secret, old} if keep_old else {self.secret}
        self.store.values = {Stage.CURRENT: self.secret, Stage.PREVIOUS: old}
        return old


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    for client in r.clients:
        client.close()


class TestReuse:
    """A token is reused until its refresh point, min(300 s, 10 % of its lifetime) early."""

    def test_one_request_for_many_calls(self, rig: Rig) -> None:
        client = rig.client()
        tokens = {client.token().access_token.reveal() for _ in range(100)}
        assert len(tokens) == 1 and len(rig.idp.requests) == 1

    def test_reused_until_buffer_then_refreshed(self, rig: Rig) -> None:
        client = rig.client()
        first = client.token()
        rig.clock.now += 3600 - 300 - 0.001
        assert client.token() is first
        rig.clock.now += 0.001
        assert client.token() is not first
        assert len(rig.idp.requests) == 2

    @pytest.mark.parametrize(("lifetime", "buffer"), [(60, 6.0), (10, 1.0), (7200, 300.0)])
    def test_buffer_shrinks_for_short_lived_tokens(self, rig: Rig, lifetime: int,
                                                   buffer: float) -> None:
        rig.idp.expires_in = lifetime
        client = rig.client()
        first = client.token()
        rig.clock.now += lifetime - buffer - 0.001
        assert client.token() is first
        rig.clock.now += 0.001
        assert client.token() is not first

    def test_lifetime_counts_from_before_the_request(self, rig: Rig) -> None:
        rig.idp.advance = 20.0  # the request took 20 s
        client = rig.client()
        first = client.token()
        rig.clock.now += 3600 - 300 - 20 - 0.001
        assert client.token() is first
        rig.clock.now += 0.001
        assert client.token() is not first

    def test_token_without_expires_in_is_assumed_short_lived(self, rig: Rig) -> None:
        rig.idp.expires_in = None
        client = rig.client(policy=CachePolicy(assumed_lifetime=100))
        first = client.token()
        rig.clock.now += 89.999
        assert client.token() is first
        rig.clock.now += 0.001
        assert client.token() is not first

    def test_policy_rejects_nonsense(self) -> None:
        with pytest.raises(ValueError, match="max_attempts"):
            CachePolicy(max_attempts=0)
        with pytest.raises(ValueError, match="buffer_ratio"):
            CachePolicy(buffer_ratio=1.0)

    def test_needs_exactly_one_credential_source(self, rig: Rig) -> None:
        with pytest.raises(ValueError, match="either credentials or a store"):
            TokenClient(TokenRequest(ENDPOINT))
        with pytest.raises(ValueError, match="location"):
            TokenClient(TokenRequest(ENDPOINT), store=rig.store)


class TestRefreshAhead:
    """From the refresh point one caller refreshes while the others keep the old token."""

    def test_others_get_old_token_while_one_refreshes(self, rig: Rig) -> None:
        client = rig.client()
        old = client.token()
        rig.clock.now += 3300
        rig.idp.gate = threading.Event()
        got: list[Any] = []
        leader = threading.Thread(target=lambda: got.append(client.token()))
        leader.start()
        while len(rig.idp.requests) < 2:
            time.sleep(0.001)
        assert [client.token() for _ in range(10)] == [old] * 10  # nobody waits
        rig.idp.gate.set()
        leader.join(5)
        assert got[0] is not old and client.token() is got[0]
        assert len(rig.idp.requests) == 2

    def test_old_token_kept_while_refresh_fails(self, rig: Rig) -> None:
        client = rig.client(policy=CachePolicy(max_attempts=1))
        old = client.token()
        rig.clock.now += 3300
        rig.idp.script = [httpx.Response(503)]
        with capture_logs() as logs:
            assert client.token() is old
        assert [e["event"] for e in logs] == ["token_refresh_failed"]
        # The next attempt waits (min(max_delay, half the remaining time)), not every call.
        assert client.token() is old and len(rig.idp.requests) == 2
        rig.clock.now += 10
        assert client.token() is not old and len(rig.idp.requests) == 3

    def test_expired_token_is_never_handed_out(self, rig: Rig) -> None:
        client = rig.client(policy=CachePolicy(max_attempts=1))
        client.token()
        rig.clock.now += 3600 - 150  # half the buffer left: expired for the cache
        rig.idp.script = [httpx.Response(503)]
        with pytest.raises(TokenEndpointUnavailable):
            client.token()


class TestSingleFlight:
    """Callers that need a token at once wait for one request."""

    def test_thousand_threads_at_expiry_send_one_request(self, rig: Rig) -> None:
        client = rig.client()
        client.token()
        rig.clock.now += 3600  # expired: every caller must wait for a new token
        rig.idp.latency = 0.2
        n = 1000
        barrier = threading.Barrier(n)
        results: list[str] = []

        def call() -> None:
            barrier.wait()
            results.append(client.token().access_token.reveal())

        threads = [threading.Thread(target=call) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == n
        assert len(rig.idp.requests) == 2  # the first token and ONE refresh
        assert set(results) == {rig.idp.issued[1]}

    def test_all_waiters_get_the_error(self, rig: Rig) -> None:
        client = rig.client()
        rig.idp.latency = 0.1
        rig.idp.script = [httpx.Response(400, json={"error": "invalid_scope"})]
        errors: list[BaseException] = []
        barrier = threading.Barrier(20)

        def call() -> None:
            barrier.wait()
            try:
                client.token()
            except InvalidScope as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(errors) == 20
        assert len(rig.idp.requests) == 1


class TestScopes:
    """Each scope set has its own token; the order and repeats of scopes do not matter."""

    def test_token_per_scope_set(self, rig: Rig) -> None:
        client = rig.client(scopes=("orders:read",))
        default = client.token()
        write = client.token(["orders:write", "orders:read"])
        assert write is not default
        assert client.token(("orders:read", "orders:write", "orders:read")) is write
        assert client.token() is default
        assert [r.get("scope") for r in rig.idp.requests] == ["orders:read",
                                                             "orders:read orders:write"]

    def test_narrower_grant_fails(self, rig: Rig) -> None:
        client = rig.client()
        rig.idp.script = [httpx.Response(200, json={
            "access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
            "expires_in": 60, "scope": "a"})]
        with pytest.raises(InvalidScope, match="without the required scope"):
            client.token(["a", "b"])


def unavailable(status: int = 503, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": "temporarily_unavailable"})


class TestBackoff:
    """An unavailable endpoint is retried with capped exponential backoff and full jitter."""

    def test_delays_double_up_to_the_attempt_limit(self, rig: Rig) -> None:
        client = rig.client(policy=CachePolicy(max_attempts=5, base_delay=0.5, max_delay=10))
        rig.rand = 0.5
        rig.idp.script = [unavailable() for _ in range(5)]
        with pytest.raises(TokenEndpointUnavailable, match="gave up after 5 attempt"):
            client.token()
        assert rig.clock.sleeps == [0.25, 0.5, 1.0, 2.0]
        assert len(rig.idp.requests) == 5

    def test_delay_capped_at_max_delay(self, rig: Rig) -> None:
        client = rig.client(policy=CachePolicy(max_attempts=6, base_delay=1, max_delay=3))
        rig.rand = 0.999
        rig.idp.script = [unavailable(502) for _ in range(5)]
        assert client.token()
        assert rig.clock.sleeps == pytest.approx([0.999, 1.998, 2.997, 2.997, 2.997])

    @pytest.mark.parametrize("rand", [0.0, 0.25, 0.999999])
    def test_full_jitter_bounds(self, rand: float) -> None:
        policy = CachePolicy(max_attempts=10, base_delay=0.5, max_delay=10)
        for failures in range(1, 10):
            ceiling = min(10.0, 0.5 * 2 ** (failures - 1))
            delay = policy.backoff(failures, rand, None)
            assert delay is not None and 0.0 <= delay <= ceiling
            assert delay == pytest.approx(rand * ceiling)
        assert policy.backoff(10, rand, None) is None

    def test_recovers_after_failures(self, rig: Rig) -> None:
        client = rig.client()
        rig.idp.script = [unavailable(), httpx.Response(500), unavailable(429)]
        assert client.token().access_token.reveal() == rig.idp.issued[0]
        assert len(rig.clock.sleeps) == 3

    def test_retry_after_is_honoured(self, rig: Rig) -> None:
        client = rig.client()
        rig.rand = 0.0
        rig.idp.script = [unavailable(429, "7")]
        client.token()
        assert rig.clock.sleeps == [7.0]

    def test_retry_after_longer_than_max_delay_stops_at_once(self, rig: Rig) -> None:
        client = rig.client(policy=CachePolicy(max_delay=10))
        rig.idp.script = [unavailable(503, "120")]
        with pytest.raises(TokenEndpointUnavailable, match="retry after 120 s") as info:
            client.token()
        assert info.value.retry_after == 120
        assert rig.clock.sleeps == [] and len(rig.idp.requests) == 1

    def test_transport_errors_are_retried(self, rig: Rig) -> None:
        calls = []

        def flaky(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            if len(calls) == 1:
                raise httpx.ConnectError("connection refused")
            return rig.idp(request)

        client = TokenClient(TokenRequest(ENDPOINT), store=rig.store, location="apps/orders",
                             http=httpx.Client(transport=httpx.MockTransport(flaky)),
                             clock=rig.clock, sleep=rig.clock.sleep, random=lambda: 1.0)
        with client:
            assert client.token()
        assert rig.clock.sleeps == [0.5]


class TestFatal:
    """Errors that retrying cannot fix fail at once, naming the client."""

    def test_invalid_scope_is_not_retried(self, rig: Rig) -> None:
        client = rig.client(scopes=("admin",))
        rig.idp.script = [httpx.Response(400, json={"error": "invalid_scope"})]
        with pytest.raises(InvalidScope, match=r"client svc-orders: .*invalid_scope.*not retried"):
            client.token()
        assert len(rig.idp.requests) == 1 and rig.clock.sleeps == []
        assert rig.store.reads == [Stage.CURRENT]

    def test_bad_token_response_is_not_retried(self, rig: Rig) -> None:
        client = rig.client()
        rig.idp.script = [httpx.Response(200, json={"access_token": "x", "token_type": "mac"})]
        with pytest.raises(BadTokenResponse, match=r"client svc-orders: .*not Bearer"):
            client.token()
        assert len(rig.idp.requests) == 1 and rig.clock.sleeps == []

    def test_unauthorized_client_is_not_retried(self, rig: Rig) -> None:
        client = rig.client()
        rig.idp.script = [httpx.Response(400, json={"error": "unauthorized_client"})]
        with pytest.raises(UnauthorizedClient, match="svc-orders"):
            client.token()
        assert len(rig.idp.requests) == 1 and rig.clock.sleeps == []


class TestRotation:
    """invalid_client makes the client re-read the store, then fall back to PREVIOUS."""

    def test_rotated_secret_is_read_again(self, rig: Rig) -> None:
        client = rig.client()
        client.token()
        old = rig.rotate(keep_old=False)
        rig.clock.now += 3600
        with capture_logs() as logs:
            token = client.token()
        assert token.access_token.reveal() == rig.idp.issued[-1]
        assert rig.idp.secrets_used == [old, old, rig.secret]
        assert any(e["event"] == "credentials_reread" and e["stage"] == "current" for e in logs)
        rig.clock.now += 3600
        client.token()  # the new secret is remembered: no failed request first
        assert rig.idp.secrets_used[-1] == rig.secret and len(rig.idp.requests) == 4

    def test_falls_back_to_previous(self, rig: Rig) -> None:
        # A service starts just after a promotion the IdP has not propagated yet.
        old = rig.rotate(keep_old=True)
        rig.idp.valid = {old}
        client = rig.client()
        token = client.token()
        assert token.access_token.reveal() == rig.idp.issued[-1]
        assert rig.idp.secrets_used == [rig.secret, old]
        assert rig.store.reads == [Stage.CURRENT, Stage.CURRENT, Stage.PREVIOUS]
        rig.idp.valid = {old, rig.secret}
        rig.clock.now += 3600
        client.token()  # CURRENT stays the secret tried first
        assert rig.idp.secrets_used[-1] == rig.secret

    def test_no_working_secret_fails_clearly(self, rig: Rig) -> None:
        rig.store.values[Stage.PREVIOUS] = new_secret()
        rig.idp.valid = set()
        client = rig.client()
        with pytest.raises(InvalidClient, match=r"svc-orders: .*tried 2 secret\(s\) from store"):
            client.token()
        assert len(rig.idp.requests) == 2

    def test_given_credentials_are_not_reread(self, rig: Rig) -> None:
        rig.idp.valid = set()
        client = rig.client(direct=True)
        with pytest.raises(InvalidClient, match="given directly"):
            client.token()
        assert len(rig.idp.requests) == 1 and rig.store.reads == []

    def test_store_failure_during_reread_is_reported(self, rig: Rig) -> None:
        client = rig.client()
        client.token()
        rig.rotate(keep_old=False)
        rig.store.fail = StoreUnavailable("vault store 'fake': sealed")
        rig.clock.now += 3600
        with pytest.raises(InvalidClient, match=r"re-reading store 'fake' failed: .*sealed"):
            client.token()

    def test_empty_store(self, rig: Rig) -> None:
        rig.store.values = {}
        with pytest.raises(StoreNotFound, match="holds no credentials at 'apps/orders'"):
            rig.client().token()

    def test_env_file_store(self, rig: Rig, tmp_path: Path) -> None:
        env = tmp_path / "creds.env"
        env.write_text(f"ORDERS_CLIENT_ID=svc-orders\nORDERS_CLIENT_SECRET={rig.secret}\n")
        store = EnvStore("envfile", {"file": env, "read_environ": False})
        client = TokenClient(TokenRequest(ENDPOINT), store=store, location="ORDERS",
                             http=httpx.Client(transport=httpx.MockTransport(rig.idp)),
                             clock=rig.clock)
        with client:
            client.token()
            old = rig.rotate(keep_old=False)
            env.write_text(f"ORDERS_CLIENT_ID=svc-orders\nORDERS_CLIENT_SECRET={rig.secret}\n"
                           f"ORDERS_CLIENT_SECRET_PREVIOUS={old}\n")
            rig.clock.now += 3600
            client.token()
        assert rig.idp.secrets_used == [old, old, rig.secret]


def api(handler: Callable[[httpx.Request], httpx.Response], tokens: Any,
        **kwargs: Any) -> httpx.Client:
    return httpx.Client(auth=ClientCredentialsAuth(tokens, **kwargs),
                        transport=httpx.MockTransport(handler))


class ResourceServer:
    """An API that accepts the bearer tokens in ``valid`` (all issued ones by default)."""

    def __init__(self, idp: FakeIdP) -> None:
        self.idp = idp
        self.seen: list[str] = []
        self.revoked: set[str] = set()
        self.reject_all = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(token)
        if self.reject_all or token in self.revoked or token not in self.idp.issued:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200, json={"ok": True, "body": request.content.decode()})


class TestAuth:
    """httpx.Auth puts a cached token on each request; a 401 refreshes and retries once."""

    def test_token_cached_across_requests(self, rig: Rig) -> None:
        rs = ResourceServer(rig.idp)
        with api(rs, rig.client()) as http:
            for _ in range(5):
                assert http.get(API).status_code == 200
        assert len(rig.idp.requests) == 1 and len(set(rs.seen)) == 1

    def test_401_refreshes_once_and_retries_once(self, rig: Rig) -> None:
        rs = ResourceServer(rig.idp)
        with api(rs, rig.client()) as http:
            http.get(API)
            rs.revoked.add(rig.idp.issued[0])
            response = http.post(API, content=b"payload")
        assert response.status_code == 200 and response.json()["body"] == "payload"
        assert rs.seen == [rig.idp.issued[0], rig.idp.issued[0], rig.idp.issued[1]]
        assert len(rig.idp.requests) == 2

    def test_second_401_is_returned_not_looped(self, rig: Rig) -> None:
        rs = ResourceServer(rig.idp)
        rs.reject_all = True
        with api(rs, rig.client()) as http:
            response = http.get(API)
        assert response.status_code == 401
        assert len(rs.seen) == 2 and len(rig.idp.requests) == 2

    def test_streamed_body_is_replayed(self, rig: Rig) -> None:
        rs = ResourceServer(rig.idp)
        client = rig.client()
        client.token()
        rs.revoked.add(rig.idp.issued[0])
        with api(rs, client) as http:
            response = http.post(API, content=iter([b"chunk-1 ", b"chunk-2"]))
        assert response.json()["body"] == "chunk-1 chunk-2"

    def test_scopes_of_the_auth(self, rig: Rig) -> None:
        rs = ResourceServer(rig.idp)
        with api(rs, rig.client(), scopes=["orders:read"]) as http:
            http.get(API)
        assert rig.idp.requests[0]["scope"] == "orders:read"

    def test_token_errors_propagate(self, rig: Rig) -> None:
        rig.idp.script = [httpx.Response(400, json={"error": "invalid_scope"})]
        with api(ResourceServer(rig.idp), rig.client()) as http, pytest.raises(InvalidScope):
            http.get(API)

    def test_sync_client_refused_in_async_flow(self, rig: Rig) -> None:
        import asyncio

        async def go() -> None:
            async with httpx.AsyncClient(
                    auth=ClientCredentialsAuth(rig.client()),
                    transport=httpx.MockTransport(ResourceServer(rig.idp))) as http:
                await http.get(API)

        with pytest.raises(TypeError, match=r"use it with httpx\.Client"):
            asyncio.run(go())


class TestNoLeaks:
    """No secret or access token reaches a log event or an exception message."""

    def test_logs_and_errors_are_clean(self, rig: Rig) -> None:
        messages: list[str] = []
        rs = ResourceServer(rig.idp)
        with capture_logs() as logs:
            client = rig.client()
            with api(rs, client) as http:
                http.get(API)
                rs.revoked.add(rig.idp.issued[0])
                http.get(API)
                rig.rotate(keep_old=False)
                rig.clock.now += 3600
                rig.idp.script = [unavailable(503, "1")]
                http.get(API)  # retry, invalid_client, re-read, success
                rig.idp.valid = set()
                rig.clock.now += 3600
                for script in ([], [httpx.Response(400, json={"error": "invalid_scope"})]):
                    rig.idp.script = list(script)
                    try:
                        http.get(API)
                    except Exception as exc:
                        messages += [str(exc), repr(exc), str(exc.__cause__)]
        assert {e["event"] for e in logs} >= {"token_obtained", "credentials_reread",
                                             "token_endpoint_retry", "token_rejected_by_resource"}
        assert len(messages) == 6
        texts = [repr(e) for e in logs] + messages
        values = [v for v in rig.idp.everything_secret() if v]
        assert len(values) >= 6
        assert [t for t in texts for v in values if v in t] == []


def write_config(tmp_path: Path, secret: str, token_endpoint: str | None) -> Path:
    for name in ("audit.key", "admin.secret"):
        (tmp_path / name).write_text(new_secret())
        (tmp_path / name).chmod(0o600)
    (tmp_path / "creds.env").write_text(
        f"ORDERS_CLIENT_ID=svc-orders\nORDERS_CLIENT_SECRET={secret}\n")
    endpoint = f'token_endpoint = "{token_endpoint}"' if token_endpoint else ""
    config = tmp_path / "rotator.toml"
    config.write_text(f"""
[audit]
file = "audit.jsonl"
key_file = "audit.key"

[stores.envfile]
type = "env"
file = "creds.env"
read_environ = false

[idps.kc]
type = "keycloak"
url = "https://kc.test"
realm = "prod"
admin_client_id = "rotator-admin"
admin_client_secret_file = "admin.secret"

[clients.orders]
idp = "kc"
client_id = "svc-orders"
scopes = ["orders:read"]
{endpoint}
stores = [{{store = "envfile", prefix = "ORDERS"}}]
""")
    return config


class TestFromConfig:
    """A client built from a rotator configuration reads the client's store and endpoint."""

    def test_explicit_endpoint_and_store(self, rig: Rig, tmp_path: Path) -> None:
        config = write_config(tmp_path, rig.secret, ENDPOINT)
        http = httpx.Client(transport=httpx.MockTransport(rig.idp))
        with TokenClient.from_config(config, "orders", http=http, clock=rig.clock) as client:
            client.token()
            assert client.client_id == "svc-orders"
        assert not http.is_closed  # the caller's client stays the caller's
        assert rig.idp.requests[0]["scope"] == "orders:read"
        assert rig.idp.secrets_used == [rig.secret]

    def test_endpoint_defaults_to_the_idps(self, rig: Rig, tmp_path: Path) -> None:
        config = write_config(tmp_path, rig.secret, None)
        urls: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            urls.append(str(request.url))
            return rig.idp(request)

        http = httpx.Client(transport=httpx.MockTransport(handler))
        with TokenClient.from_config(config, "orders", http=http) as client:
            client.token()
        assert urls == ["https://kc.test/realms/prod/protocol/openid-connect/token"]

    def test_needs_neither_audit_key_nor_admin_secret(self, rig: Rig, tmp_path: Path) -> None:
        """A consuming service reads only its own store's secrets from the configuration."""
        config = write_config(tmp_path, rig.secret, ENDPOINT)
        (tmp_path / "audit.key").unlink()
        (tmp_path / "admin.secret").unlink()
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(config)
        http = httpx.Client(transport=httpx.MockTransport(rig.idp))
        with TokenClient.from_config(config, "orders", http=http, clock=rig.clock) as client:
            client.token()
        assert rig.idp.secrets_used == [rig.secret]

    def test_unknown_client(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, new_secret(), ENDPOINT)
        with pytest.raises(ConfigError, match=r"clients\.billing: no such client"):
            TokenClient.from_config(config, "billing")
        with pytest.raises(ConfigError, match="does not use a store named 'bao'"):
            TokenClient.from_config(config, "orders", store="bao")


def stale(rig: Rig) -> str:
    """The IdP holds a new secret the store does not have yet; returns that secret."""
    older, new = new_secret(), new_secret()
    rig.store.values = {Stage.CURRENT: rig.secret, Stage.PREVIOUS: older}
    rig.idp.valid = {new}
    return new


class TestStaleStore:
    """While the store holds only refused secrets, token requests are bounded per backoff period."""

    def test_repeated_calls_send_no_more_requests(self, rig: Rig) -> None:
        stale(rig)
        client = rig.client()
        for _ in range(100):
            with pytest.raises(InvalidClient):
                client.token()
        assert len(rig.idp.requests) == 2  # CURRENT and PREVIOUS, once
        assert rig.store.reads.count(Stage.CURRENT) == 3 + 99  # then one cheap read per call

    def test_twenty_threads_share_the_backoff(self, rig: Rig) -> None:
        stale(rig)
        client = rig.client()
        errors: list[Exception] = []

        def worker() -> None:
            for _ in range(10):
                try:
                    client.token()
                except InvalidClient as exc:
                    errors.append(exc)
        threads = [threading.Thread(target=worker) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 200 and len(rig.idp.requests) == 2

    def test_the_first_call_after_the_store_is_updated_recovers(self, rig: Rig) -> None:
        new = stale(rig)
        client = rig.client()
        for _ in range(3):
            with pytest.raises(InvalidClient, match=r"store still holds a refused secret|tried"):
                client.token()
        rig.store.values = {Stage.CURRENT: new, Stage.PREVIOUS: rig.secret}
        token = client.token()  # the clock has not moved: no waiting for the backoff
        assert token.access_token.reveal() == rig.idp.issued[-1]
        assert rig.idp.secrets_used[-1] == new and len(rig.idp.requests) == 3

    def test_retried_when_the_backoff_ends(self, rig: Rig) -> None:
        # The IdP may only have been slow to accept the stored secret (propagation).
        stale(rig)
        client = rig.client()
        with pytest.raises(InvalidClient):
            client.token()
        rig.idp.valid.add(rig.secret)
        rig.clock.now += 0.4  # below the shortest first delay (half of 1 s)
        with pytest.raises(InvalidClient, match=r"not asked again for 0\.\d s"):
            client.token()
        rig.clock.now += 0.6  # past the longest first delay
        client.token()
        assert len(rig.idp.requests) == 3

    def test_requests_per_period_stay_bounded(self, rig: Rig) -> None:
        stale(rig)
        client = rig.client(policy=CachePolicy(refused_base_delay=1.0, refused_max_delay=30.0))
        rig.rand = 0.0  # the shortest delays: the most requests
        for _ in range(600):
            with pytest.raises(InvalidClient):
                client.token()
            rig.clock.now += 1.0
        # delays 0.5, 1, 2, 4, 8, then 15 s: about 45 rounds of 2 requests in 600 s
        assert len(rig.idp.requests) <= 2 * (6 + 600 // 15)
        assert len(rig.idp.requests) >= 2 * (600 // 30)  # never backs off past the ceiling

    @pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
    def test_backoff_doubles_within_jitter_bounds(self, rand: float) -> None:
        policy = CachePolicy(refused_base_delay=1.0, refused_max_delay=30.0)
        for refusals, ceiling in [(1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (50, 30.0)]:
            assert ceiling / 2 <= policy.refused_backoff(refusals, rand) <= ceiling

    def test_given_credentials_back_off_too(self, rig: Rig) -> None:
        rig.idp.valid = set()
        client = rig.client(direct=True)
        for _ in range(50):
            with pytest.raises(InvalidClient, match="given directly"):
                client.token()
        assert len(rig.idp.requests) == 1

    def test_a_success_resets_the_backoff(self, rig: Rig) -> None:
        new = stale(rig)
        client = rig.client()
        for _ in range(3):  # three refusals in a row: the delay grows to 4 s
            with pytest.raises(InvalidClient):
                client.token()
            rig.clock.now += 5
        rig.store.values[Stage.CURRENT] = new
        client.token()
        rig.store.values[Stage.CURRENT] = new_secret()  # a later rotation, IdP not yet there
        rig.idp.valid = set()
        rig.clock.now += 3600
        with pytest.raises(InvalidClient):
            client.token()
        rig.clock.now += 1.0  # the first delay again, not the grown one
        before = len(rig.idp.requests)
        with pytest.raises(InvalidClient):
            client.token()
        assert len(rig.idp.requests) > before
