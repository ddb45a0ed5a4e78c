"""Keycloak adapter error paths against a hostile Keycloak stand-in that echoes what it gets.

A real Keycloak never echoes a secret, so these tests run a small HTTP server on 127.0.0.1
that answers the token endpoint like Keycloak and every admin call with an error whose body
repeats the request: they show what reaches rotator's error messages when a remote does.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from providers.idps.keycloak import KeycloakIdp
from rotator.errors import IdentityProviderError
from rotator.secrets import Secret


class _HostileKeycloak(http.server.BaseHTTPRequestHandler):
    """Issues admin tokens; answers admin calls with ``reply(authorization)``."""

    access_token = ""
    status = 500
    body = ""

    def _send(self, status: int, text: str, kind: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, json.dumps({"access_token": self.access_token, "expires_in": 300}),
                   "application/json")

    def do_GET(self) -> None:
        text = self.body.replace("{AUTH}", self.headers.get("Authorization") or "")
        self._send(self.status, text, "text/plain")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[tuple[str, type[_HostileKeycloak]]]:
    handler = type("Hostile", (_HostileKeycloak,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _idp(url: str, admin_secret: Secret) -> KeycloakIdp:
    idp = KeycloakIdp("kc", {"url": url, "realm": "r", "admin_client_id": "rotator-admin",
                             "admin_client_secret": admin_secret})
    idp.start()
    return idp


def _error(url: str, admin_secret: Secret) -> str:
    idp = _idp(url, admin_secret)
    try:
        with pytest.raises(IdentityProviderError) as info:
            idp.current_secret("svc")
    finally:
        idp.close()
    return str(info.value)


class TestErrorBodyRedactedBeforeCut:
    """A secret straddling the 200-character cut of an error body leaks no prefix."""

    @pytest.mark.parametrize("status", [400, 404, 500])
    def test_secret_across_the_cut(
        self, hostile: tuple[str, type[_HostileKeycloak]], status: int
    ) -> None:
        url, handler = hostile
        admin_secret = Secret(secrets.token_urlsafe(32))
        handler.access_token = secrets.token_urlsafe(40)
        handler.status = status
        handler.body = "x " * 95 + admin_secret.reveal()  # starts at 190, cut at 200
        text = _error(url, admin_secret)
        assert admin_secret.reveal()[:6] not in text


class TestAdminTokenIsRedacted:
    """The admin bearer token is a Secret: a remote echoing it back does not get it into errors."""

    @pytest.mark.parametrize("status", [400, 500])
    def test_echoed_bearer_token(
        self, hostile: tuple[str, type[_HostileKeycloak]], status: int
    ) -> None:
        url, handler = hostile
        access = secrets.token_urlsafe(40)
        handler.access_token = access
        handler.status = status
        handler.body = "you sent {AUTH}"
        text = _error(url, Secret(secrets.token_urlsafe(32)))
        assert access[:12] not in text
        assert "**********" in text

    def test_token_is_held_as_a_secret(
        self, hostile: tuple[str, type[_HostileKeycloak]]
    ) -> None:
        url, handler = hostile
        handler.access_token = secrets.token_urlsafe(40)
        idp = _idp(url, Secret(secrets.token_urlsafe(32)))
        try:
            token = idp._admin_token()
        finally:
            idp.close()
        assert isinstance(token, Secret)
        assert handler.access_token not in repr(vars(idp))
