"""A token fetch's logging: the per-fetch ``token_obtained`` event (debug level, unprinted by
unconfigured structlog), the access token never in a log line, the request built once."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

import rotator.client.policy as client_policy
import rotator.secrets as rotator_secrets
from rotator.client import ClientCredentialsAuth, TokenClient
from rotator.interfaces import Credentials
from rotator.secrets import Secret
from rotator.token import TokenRequest, encode_request


def _answer(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"access_token": secrets.token_urlsafe(32),
                                     "token_type": "Bearer", "expires_in": 300})


@pytest.fixture
def unconfigured() -> Iterator[None]:
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


@pytest.fixture
def passing_debug() -> Iterator[None]:
    # A test before may leave structlog filtering at INFO (the daemon's configuration).
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
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

    def test_configured_structlog_gets_a_debug_event(self, passing_debug: None) -> None:
        with capture_logs() as logs, _client() as client:
            client.token()
        assert [e["log_level"] for e in logs if e["event"] == "token_obtained"] == ["debug"]


class TestFetchedTokenNeverLogged:
    """An access token logged right after its fetch is masked, though the fetch itself
    registered nothing with the redactor (the first log record does)."""

    def test_stdlib_record_right_after_a_fetch(self, caplog: pytest.LogCaptureFixture) -> None:
        with _client() as client:
            token = client.token()
            assert token.access_token.reveal() in [v for _, v in rotator_secrets._REDACTOR._pending]
            with caplog.at_level(logging.INFO, logger="app"):
                logging.getLogger("app").info("token %s header %s", token.access_token.reveal(),
                                              "Bearer " + token.access_token.reveal())
        assert token.access_token.reveal() not in caplog.text
        assert caplog.text.count("**********") == 2

    def test_authorization_header_logged_after_many_fetches(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[str] = []

        def api(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["Authorization"])
            return httpx.Response(401 if len(seen) % 2 else 200)

        with _client() as client, httpx.Client(transport=httpx.MockTransport(api),
                                                auth=ClientCredentialsAuth(client)) as http:
            for _ in range(20):
                http.get("http://api.test/")
            with caplog.at_level(logging.INFO, logger="app"):
                for header in seen:
                    logging.getLogger("app").info("sent %s", header)
        assert len(set(seen)) > 10
        assert not any(header.split()[1] in caplog.text for header in seen)


class TestRequestBuiltOncePerCredentials:
    """The token request's headers and form are built once per credentials, not per fetch."""

    def test_three_fetches_build_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        built: list[str] = []

        def counting(request: TokenRequest, creds: Credentials) -> Any:
            built.append(creds.client_id)
            return encode_request(request, creds)

        monkeypatch.setattr(client_policy, "encode_request", counting)
        with _client() as client:
            for _ in range(3):
                client.invalidate(client.token())
            client.token(["other"])
        assert built == ["svc", "svc"]  # once for the default scopes, once for "other"
