"""Tests for rotator.client_async: the asyncio token cache and httpx.Auth's async flow."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from test_client import (
    API,
    ENDPOINT,
    FakeClock,
    FakeIdP,
    FakeStore,
    ResourceServer,
    default_structlog,  # noqa: F401 - an autouse fixture: applies here too
    new_secret,
    write_config,
)

from rotator.client import CachePolicy, ClientCredentialsAuth
from rotator.client_async import AsyncTokenClient
from rotator.client_report import ConsumerReporter
from rotator.consumers import consumer_fingerprint
from rotator.errors import InvalidClient, InvalidScope, TokenEndpointUnavailable
from rotator.interfaces import Credentials, Stage
from rotator.secrets import Secret
from rotator.token import TokenRequest


class AsyncRig:
    """A fake IdP, clock and store, and a factory for asyncio clients wired to them."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.secret = new_secret()
        self.idp = FakeIdP("svc-orders", self.secret, clock=self.clock)
        self.store = FakeStore("svc-orders", self.secret)
        self.rand = 0.5

    def client(self, *, direct: bool = False, policy: CachePolicy | None = None,
               handler: Callable[[httpx.Request], Any] | None = None,
               **kwargs: Any) -> AsyncTokenClient:
        source: dict[str, Any] = (
            {"credentials": Credentials("svc-orders", Secret(self.secret))} if direct
            else {"store": self.store, "location": "apps/orders"})
        return AsyncTokenClient(
            TokenRequest(ENDPOINT), **source,
            http=httpx.AsyncClient(transport=httpx.MockTransport(handler or self.idp)),
            policy=policy, clock=self.clock, sleep=self.clock.async_sleep,
            random=lambda: self.rand, **kwargs)

    def run(self, test: Callable[[AsyncTokenClient], Awaitable[None]], **kwargs: Any) -> None:
        async def go() -> None:
            async with self.client(**kwargs) as client:
                await test(client)
        asyncio.run(go())


@pytest.fixture
def rig() -> AsyncRig:
    return AsyncRig()


def slow(idp: FakeIdP, delay: float = 0.05) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return idp(request)
    return handler


class TestReuseAndRefresh:
    """A token is reused until its refresh point, then refreshed in the background."""

    def test_reused_until_buffer(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            first = await client.token()
            rig.clock.now += 3299.999
            assert await client.token() is first
            assert len(rig.idp.requests) == 1
        rig.run(test)

    def test_refresh_ahead_does_not_block_callers(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            old = await client.token()
            rig.clock.now += 3300
            assert await client.token() is old  # refresh started, old token returned
            assert [await client.token() for _ in range(5)] == [old] * 5
            for _ in range(20):
                await asyncio.sleep(0.01)
                if len(rig.idp.issued) == 2:
                    break
            new = await client.token()
            assert new is not old and len(rig.idp.requests) == 2
        rig.run(test, handler=slow(rig.idp))

    def test_background_failure_keeps_old_token(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            old = await client.token()
            rig.clock.now += 3300
            rig.idp.script = [httpx.Response(503)]
            with capture_logs() as logs:
                assert await client.token() is old
                await asyncio.sleep(0.1)
            assert "token_refresh_failed" in [e["event"] for e in logs]
            assert await client.token() is old and len(rig.idp.requests) == 2
        rig.run(test, policy=CachePolicy(max_attempts=1), handler=slow(rig.idp, 0.01))


class TestSingleFlight:
    """Tasks that need a token at once await one request."""

    def test_thousand_tasks_at_expiry_send_one_request(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            await client.token()
            rig.clock.now += 3600
            tokens = await asyncio.gather(*(client.token() for _ in range(1000)))
            assert len({t.access_token.reveal() for t in tokens}) == 1
            assert len(rig.idp.requests) == 2
        rig.run(test, handler=slow(rig.idp))

    def test_cancelled_waiter_does_not_cancel_the_request(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            first = asyncio.ensure_future(client.token())
            second = asyncio.ensure_future(client.token())
            await asyncio.sleep(0.01)
            first.cancel()
            assert (await second).access_token.reveal() == rig.idp.issued[0]
            assert len(rig.idp.requests) == 1
        rig.run(test, handler=slow(rig.idp))

    def test_all_waiters_get_the_error(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            rig.idp.script = [httpx.Response(400, json={"error": "invalid_scope"})]
            results = await asyncio.gather(*(client.token() for _ in range(50)),
                                           return_exceptions=True)
            assert all(isinstance(r, InvalidScope) for r in results)
            assert len(rig.idp.requests) == 1
        rig.run(test, handler=slow(rig.idp))


class TestBackoff:
    """Retries use the same backoff policy as the sync client, with an async sleep."""

    def test_delays_and_give_up(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            rig.idp.script = [httpx.Response(503) for _ in range(4)]
            with pytest.raises(TokenEndpointUnavailable, match="after 4 attempt"):
                await client.token()
            assert rig.clock.sleeps == [0.25, 0.5, 1.0]
        rig.run(test, policy=CachePolicy(max_attempts=4))

    def test_retry_after_honoured(self, rig: AsyncRig) -> None:
        rig.rand = 0.0

        async def test(client: AsyncTokenClient) -> None:
            rig.idp.script = [httpx.Response(429, headers={"Retry-After": "3"})]
            await client.token()
            assert rig.clock.sleeps == [3.0]
        rig.run(test)

    def test_invalid_scope_not_retried(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            rig.idp.script = [httpx.Response(400, json={"error": "invalid_scope"})]
            with pytest.raises(InvalidScope, match="not retried"):
                await client.token(["admin"])
            assert len(rig.idp.requests) == 1 and rig.clock.sleeps == []
        rig.run(test)


class TestRotation:
    """invalid_client re-reads the store (in a thread), then falls back to PREVIOUS."""

    def test_rotated_secret_is_read_again(self, rig: AsyncRig) -> None:
        async def test(client: AsyncTokenClient) -> None:
            await client.token()
            old, rig.secret = rig.secret, new_secret()
            rig.idp.valid = {rig.secret}
            rig.store.values = {Stage.CURRENT: rig.secret, Stage.PREVIOUS: old}
            rig.clock.now += 3600
            await client.token()
            assert rig.idp.secrets_used == [old, old, rig.secret]
        rig.run(test)

    def test_falls_back_to_previous(self, rig: AsyncRig) -> None:
        previous = new_secret()
        rig.store.values[Stage.PREVIOUS] = previous
        rig.idp.valid = {previous}

        async def test(client: AsyncTokenClient) -> None:
            await client.token()
            assert rig.idp.secrets_used == [rig.secret, previous]
        rig.run(test)

    def test_given_credentials_not_reread(self, rig: AsyncRig) -> None:
        rig.idp.valid = set()

        async def test(client: AsyncTokenClient) -> None:
            with pytest.raises(InvalidClient, match="given directly"):
                await client.token()
        rig.run(test, direct=True)


class TestFromConfig:
    """The asyncio client is built from a rotator configuration like the sync one."""

    def test_reads_store_and_endpoint(self, rig: AsyncRig, tmp_path: Path) -> None:
        config = write_config(tmp_path, rig.secret, ENDPOINT)

        async def go() -> None:
            http = httpx.AsyncClient(transport=httpx.MockTransport(rig.idp))
            async with AsyncTokenClient.from_config(config, "orders", http=http) as client:
                await client.token()
            await http.aclose()

        asyncio.run(go())
        assert rig.idp.secrets_used == [rig.secret]
        assert rig.idp.requests[0]["scope"] == "orders:read"


class TestAuth:
    """The async auth flow refreshes once on a 401 and retries once."""

    def test_401_refresh_and_retry(self, rig: AsyncRig) -> None:
        rs = ResourceServer(rig.idp)

        async def test(client: AsyncTokenClient) -> None:
            async with httpx.AsyncClient(auth=ClientCredentialsAuth(client),
                                         transport=httpx.MockTransport(rs)) as http:
                assert (await http.get(API)).status_code == 200
                rs.revoked.add(rig.idp.issued[0])
                assert (await http.post(API, json={"a": 1})).status_code == 200
                rs.reject_all = True
                assert (await http.get(API)).status_code == 401
            assert len(rs.seen) == 5 and len(rig.idp.requests) == 3
        rig.run(test)

    def test_no_secret_in_logs_or_errors(self, rig: AsyncRig) -> None:
        messages: list[str] = []

        async def test(client: AsyncTokenClient) -> None:
            async with httpx.AsyncClient(auth=ClientCredentialsAuth(client),
                                         transport=httpx.MockTransport(ResourceServer(rig.idp))
                                         ) as http:
                await http.get(API)
                rig.idp.valid = set()
                rig.clock.now += 3600
                try:
                    await http.get(API)
                except InvalidClient as exc:
                    messages.extend([str(exc), repr(exc)])

        with capture_logs() as logs:
            rig.run(test)
        assert len(messages) == 2 and logs
        values = rig.idp.everything_secret()
        assert [t for t in [*map(repr, logs), *messages] for v in values if v in t] == []


class TestStaleStore:
    """While the store holds only refused secrets, tasks send a bounded number of token requests."""

    def test_bounded_then_recovers_on_the_first_call_after_the_update(
            self, rig: AsyncRig) -> None:
        older, new = new_secret(), new_secret()
        rig.store.values = {Stage.CURRENT: rig.secret, Stage.PREVIOUS: older}
        rig.idp.valid = {new}

        async def test(client: AsyncTokenClient) -> None:
            async def call() -> None:
                with pytest.raises(InvalidClient):
                    await client.token()
            for _ in range(10):
                await asyncio.gather(*(call() for _ in range(20)))
            assert len(rig.idp.requests) == 2
            rig.store.values = {Stage.CURRENT: new, Stage.PREVIOUS: rig.secret}
            await client.token()
            assert rig.idp.secrets_used[-1] == new and len(rig.idp.requests) == 3
        rig.run(test)


class TestReportsWhichSecret:
    """The asyncio client reports once per refresh which secret it used (its fingerprint),
    moves to a new CURRENT at its next refresh without being refused, and never sends the
    secret itself."""

    def test_once_per_refresh_then_the_new_secret(self, rig: AsyncRig) -> None:
        reports: list[dict[str, Any]] = []

        def daemon(request: httpx.Request) -> httpx.Response:
            reports.append(json.loads(request.content))
            return httpx.Response(204)

        key = secrets.token_bytes(32)
        reporter = ConsumerReporter("http://127.0.0.1:1", "svc", Secret(secrets.token_urlsafe(24)),
                                    key, instance="task-1", clock=rig.clock,
                                    http=httpx.Client(transport=httpx.MockTransport(daemon)))

        async def test(client: AsyncTokenClient) -> None:
            for _ in range(20):
                await client.token()
            assert len(reports) == 1 == len(rig.idp.requests)
            assert reports[0]["fingerprint"] == consumer_fingerprint(key, Secret(rig.secret))
            old, rig.secret = rig.secret, new_secret()
            rig.idp.valid = {rig.secret, old}
            rig.store.values = {Stage.CURRENT: rig.secret, Stage.PREVIOUS: old}
            rig.clock.now += 3600  # past the token's expiry: the next call refreshes
            for _ in range(20):
                await client.token()
            assert len(reports) == 2 == len(rig.idp.requests)
            assert reports[1]["fingerprint"] == consumer_fingerprint(key, Secret(rig.secret))
            assert rig.idp.secrets_used[-1] == rig.secret
            assert old not in json.dumps(reports) and rig.secret not in json.dumps(reports)

        rig.run(test, reporter=reporter)
