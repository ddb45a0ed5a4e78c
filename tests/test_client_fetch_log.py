"""The per-fetch ``token_obtained`` event: debug level, unprinted by unconfigured structlog."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from rotator.client import TokenClient
from rotator.interfaces import Credentials
from rotator.secrets import Secret
from rotator.token import TokenRequest


def _answer(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"access_token": secrets.token_urlsafe(32),
                                     "token_type": "Bearer", "expires_in": 300})


@pytest.fixture
def unconfigured() -> Iterator[None]:
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def _client() -> TokenClient:
    return TokenClient(TokenRequest("http://idp.test/token"),
                       Credentials("svc", Secret(secrets.token_urlsafe(24))),
                       http=httpx.Client(transport=httpx.MockTransport(_answer)))


class TestFetchEvent:
    """A token fetch logs token_obtained at debug level, and nothing when structlog is left
    unconfigured (its default would print every fetch to stdout)."""

    def test_unconfigured_structlog_prints_nothing(self, unconfigured: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        with _client() as client:
            client.token()
        assert "token_obtained" not in capsys.readouterr().out

    def test_configured_structlog_gets_a_debug_event(self) -> None:
        with capture_logs() as logs, _client() as client:
            client.token()
        assert [e["log_level"] for e in logs if e["event"] == "token_obtained"] == ["debug"]
