"""Hostile answers to IdP admin calls and to the token endpoint used by verification.

A server on 127.0.0.1 answers one byte at a time (of its headers or its body) or with a
256 MB body. Each call gives up within its total timeout (counted in what the server managed
to send, not in seconds), reads at most a bounded prefix, and raises only the retryable error
of its kind, in one line that names no secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hostile_http import HostileServer, check_cut_off, made_servers

from providers.idps.keycloak import KeycloakIdp
from providers.idps.okta import OktaIdp
from rotator import _bounded
from rotator.engine.verification import default_http
from rotator.errors import IdpUnavailable, TokenEndpointUnavailable
from rotator.interfaces import Credentials
from rotator.secrets import Secret
from rotator.token import TokenRequest, request_token

TIMEOUT = 0.5
#: A slow server sends one piece every PACE seconds, LIMIT pieces in all (100 s): a caller
#: that keeps its total timeout leaves after about TIMEOUT / PACE of them.
PACE, LIMIT = 0.05, 2000
MODES = ("slow_body", "slow_headers", "huge")


@pytest.fixture
def hostile() -> Iterator[Callable[[str], HostileServer]]:
    with made_servers(HostileServer, pace=PACE, limit=LIMIT) as make:
        yield make


def _check(server: HostileServer, message: str, *secrets_sent: str) -> None:
    check_cut_off(server, message, secrets_sent, limit=LIMIT)


def _keycloak(url: str, secret: str) -> KeycloakIdp:
    return KeycloakIdp("kc", {"url": url, "realm": "r", "admin_client_id": "rotator-admin",
                              "admin_client_secret": Secret(secret), "timeout": TIMEOUT})


def _okta(url: str, secret: str) -> OktaIdp:
    return OktaIdp("okta", {"url": url, "authorization_server": "default",
                            "api_token": Secret(secret), "admin_client_id": None,
                            "admin_private_key": None, "admin_key_id": None,
                            "max_rate_limit_wait": 60.0, "tls_verify": True, "ca_file": None,
                            "timeout": TIMEOUT})


ADAPTERS: dict[str, Callable[[str, str], Any]] = {"keycloak": _keycloak, "okta": _okta}
#: One admin call per adapter that reaches the server.
CALLS: dict[str, Callable[[Any], object]] = {
    "keycloak": lambda idp: idp.current_secret("svc"),
    "okta": lambda idp: idp.create_secret("svc", "r1", Secret(secrets.token_urlsafe(32))),
}


class TestIdpAdminCallAgainstHostileServer:
    """An admin call to a slow or oversized IdP ends within its timeout as IdpUnavailable."""

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("kind", sorted(ADAPTERS))
    def test_mode(self, kind: str, mode: str,
                  hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        secret = secrets.token_urlsafe(32)
        idp = ADAPTERS[kind](server.url, secret)
        idp.start()
        try:
            with pytest.raises(IdpUnavailable) as caught:
                CALLS[kind](idp)
        finally:
            idp.close()
        message = str(caught.value)
        _check(server, message, secret)
        assert "within" in message or "larger than" in message


class TestTokenEndpointAgainstHostileServer:
    """Verification's token request to a slow or oversized endpoint ends within its timeout."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        secret = secrets.token_urlsafe(32)
        http = _bounded.client(timeout=TIMEOUT)
        try:
            with pytest.raises(TokenEndpointUnavailable) as caught:
                request_token(http, TokenRequest(server.url + "/token"),
                              Credentials("svc", Secret(secret)))
        finally:
            http.close()
        _check(server, str(caught.value), secret)

    def test_default_http_is_bounded(self) -> None:
        config: Any = type("C", (), {"verify_timeout": TIMEOUT, "tls_verify": True})()
        http = default_http(config)
        try:
            assert isinstance(http._transport, _bounded.BoundedTransport)
        finally:
            http.close()


class TestBoundedTransport:
    """Answers within the bound pass through unchanged; encoded ones are refused."""

    def test_small_answer_passes(self) -> None:
        inner = httpx.MockTransport(lambda r: httpx.Response(200, json={"a": 1}))
        with _bounded.client(timeout=5.0, transport=inner) as http:
            assert http.get("http://127.0.0.1/x").json() == {"a": 1}

    def test_answer_over_bound_refused(self) -> None:
        inner = httpx.MockTransport(lambda r: httpx.Response(200, content=b"x" * 101))
        with _bounded.client(timeout=5.0, transport=inner, max_body=100) as http, \
                pytest.raises(_bounded.AnswerRefused):
            http.get("http://127.0.0.1/x")

    def test_encoded_answer_refused(self) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            assert request.headers["Accept-Encoding"] == "identity"
            return httpx.Response(200, content=b"\x1f\x8b",
                                  headers={"Content-Encoding": "gzip"})
        with _bounded.client(timeout=5.0, transport=httpx.MockTransport(answer)) as http, \
                pytest.raises(_bounded.AnswerRefused):
            http.get("http://127.0.0.1/x")


class TestConnectionsKeptAlive:
    """:func:`_bounded.client` keeps its connection between requests, and a slow answer on a
    kept connection still ends at the request's deadline."""

    def test_one_connection_for_several_requests_and_the_deadline_on_it(self) -> None:
        import http.server
        import socketserver
        import threading
        import time

        connections: list[object] = []
        slow = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                connections.append(self.connection)

            def do_GET(self) -> None:
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) + (100 if slow.is_set() else 0)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if slow.is_set():  # drip the rest, one byte each PACE, far past the deadline
                    for _ in range(100):
                        time.sleep(PACE)
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        try:
            with _bounded.client(timeout=TIMEOUT) as http_client:
                for _ in range(5):
                    assert http_client.get(url).json() == {"ok": True}
                assert len(connections) == 1
                slow.set()
                with pytest.raises(_bounded.DeadlinePassed):
                    http_client.get(url)
        finally:
            server.shutdown()
            server.server_close()
