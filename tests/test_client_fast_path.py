"""The token fetch path's shortcuts keep their guarantees: the per-fetch logger bound once per
structlog configuration, a wait lock only for a thread that waits."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

import rotator.client.sync as client_sync
from rotator.client import TokenClient
from rotator.interfaces import Credentials
from rotator.secrets import Secret
from rotator.token import TokenRequest


def _answer(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"access_token": secrets.token_urlsafe(32),
                                     "token_type": "Bearer", "expires_in": 300})


def _client(answer: httpx.MockTransport | None = None) -> TokenClient:
    return TokenClient(TokenRequest("http://idp.test/token"),
                       Credentials("svc", Secret(secrets.token_urlsafe(24))),
                       http=httpx.Client(transport=answer or httpx.MockTransport(_answer)))


def _fetch(client: TokenClient, n: int) -> None:
    for _ in range(n):
        client.invalidate(client.token())


@pytest.fixture
def restored() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


class TestFetchLoggerBoundOnce:
    """Under a structlog configuration the per-fetch event's logger is bound once, not per
    fetch; a new configuration is noticed at the next fetch."""

    def test_one_bind_for_many_fetches(self, restored: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        proxy = type(structlog.get_logger("x"))
        binds: list[int] = []
        original = proxy.bind

        def counting(self: object, **values: object) -> object:
            binds.append(1)
            return original(self, **values)  # type: ignore[arg-type]

        monkeypatch.setattr(proxy, "bind", counting)
        with _client() as client:
            _fetch(client, 20)
        assert len(binds) == 1

    def test_reconfiguring_to_debug_is_seen(self, restored: None) -> None:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        with _client() as client:
            _fetch(client, 2)
            structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(
                logging.DEBUG))
            with capture_logs() as logs:
                _fetch(client, 3)
        assert [e["event"] for e in logs].count("token_obtained") == 3

    def test_generic_bound_logger_gets_the_event(self, restored: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        # structlog's generic BoundLogger over a PrintLogger has no level to ask for: the
        # level check raised AttributeError out of every fetch.
        structlog.configure(wrapper_class=structlog.BoundLogger,
                            processors=[structlog.processors.KeyValueRenderer()],
                            logger_factory=structlog.PrintLoggerFactory())
        with _client() as client:
            _fetch(client, 2)
        assert capsys.readouterr().out.count("event='token_obtained'") == 2


class TestWaitLockOnlyForWaiters:
    """A fetch nobody waits for makes no lock; threads that wait for one get its token."""

    def test_lone_fetches_make_no_flight(self, monkeypatch: pytest.MonkeyPatch) -> None:
        made: list[int] = []

        class Counting(client_sync._Flight):
            def __init__(self) -> None:
                made.append(1)
                super().__init__()

        monkeypatch.setattr(client_sync, "_Flight", Counting)
        with _client() as client:
            _fetch(client, 10)
        assert made == []

    def test_waiters_share_the_one_request(self) -> None:
        release, arrived = threading.Event(), threading.Semaphore(0)
        sent: list[int] = []

        def slow(request: httpx.Request) -> httpx.Response:
            sent.append(1)
            arrived.release()
            release.wait(10)
            return _answer(request)

        with _client(httpx.MockTransport(slow)) as client:
            got: list[str] = []
            leader = threading.Thread(target=lambda: got.append(
                client.token().access_token.reveal()))
            leader.start()
            arrived.acquire(timeout=10)  # the leader's request is out
            waiters = [threading.Thread(target=lambda: got.append(
                client.token().access_token.reveal())) for _ in range(5)]
            for waiter in waiters:
                waiter.start()
            while not _waited_for(client):  # a waiter made the flight
                time.sleep(0.001)
            release.set()
            for thread in (leader, *waiters):
                thread.join(10)
        assert sent == [1]
        assert len(got) == 6 and len(set(got)) == 1


def _waited_for(client: TokenClient) -> bool:
    flight = client._slots[client._default_key].flight
    return flight is not None and flight is not client_sync._SENDING


class TestFirstRequestOutsideTheFlow:
    """A refresh's first request is sent without the policy's generator; when it fails, the
    policy goes on from that failure as if it had sent it (no request repeated or skipped)."""

    def _client(self, statuses: list[int], sleeps: list[float],
                on_first: object = None) -> tuple[TokenClient, list[str]]:
        sent: list[str] = []

        def answer(request: httpx.Request) -> httpx.Response:
            sent.append(request.headers["Authorization"])
            if len(sent) == 1 and callable(on_first):
                on_first()
            status = statuses.pop(0) if statuses else 200
            return _answer(request) if status == 200 else httpx.Response(status)

        client = TokenClient(TokenRequest("http://idp.test/token"),
                             Credentials("svc", Secret(secrets.token_urlsafe(24))),
                             http=httpx.Client(transport=httpx.MockTransport(answer)),
                             sleep=sleeps.append, random=lambda: 0.5)
        return client, sent

    def test_a_failed_first_request_is_retried_once_after_a_backoff(self) -> None:
        sleeps: list[float] = []
        client, sent = self._client([503], sleeps)
        with client:
            client.token()
        assert len(sent) == 2 and len(sleeps) == 1

    def test_credentials_changed_meanwhile_are_sent_at_once(self) -> None:
        # Another thread replaced the credentials (a store re-read for another scope set)
        # while the first request was out: its failure says nothing about the new ones.
        sleeps: list[float] = []
        new = Credentials("svc", Secret(secrets.token_urlsafe(24)))
        holder: list[TokenClient] = []

        def swap() -> None:
            holder[0]._credentials = new

        client, sent = self._client([503], sleeps, on_first=swap)
        holder.append(client)
        with client:
            client.token()
        assert len(sent) == 2 and sleeps == []
        assert sent[0] != sent[1]
