"""VaultStore's handling of its own credentials: redirects and the token it signs in with."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from servers import OpenBao
from test_store_contract import api, vault_store

from rotator.errors import StoreError
from rotator.secrets import Secret, redact

MASK = "**********"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records what reaches it; answers like a Vault that accepts anything."""

    seen: list[dict[str, str]]

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.seen.append({"token": self.headers.get("X-Vault-Token") or "", "body": body})
        data = json.dumps({"data": {"id": "x"}, "auth": {"client_token": "s.elsewhere"}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Redirector(http.server.BaseHTTPRequestHandler):
    """Answers every request with a 307 to ``target`` + the same path."""

    target = ""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(307)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[str, Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture
def redirected() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A Vault address that answers 307 to a second server; what the second one received."""
    seen: list[dict[str, str]] = []
    elsewhere, recorder = _serve(type("Rec", (_Recorder,), {"seen": seen}))
    vault, redirector = _serve(type("Redir", (_Redirector,), {"target": elsewhere}))
    try:
        yield vault, seen
    finally:
        for server in (redirector, recorder):
            server.shutdown()
            server.server_close()


class TestRedirectsAreNotFollowed:
    """A redirect to another host (or over http) is refused before the token or secret_id goes."""

    def test_token_does_not_follow_a_redirect(
        self, redirected: tuple[str, list[dict[str, str]]]
    ) -> None:
        url, seen = redirected
        token = Secret(secrets.token_urlsafe(24))
        store = vault_store(_NoServer(url), token=token)
        with pytest.raises(StoreError, match=r"redirected to http://127\.0\.0\.1") as info:
            store.start()
        assert seen == []
        assert token.reveal() not in str(info.value)

    def test_approle_login_does_not_follow_a_redirect(
        self, redirected: tuple[str, list[dict[str, str]]]
    ) -> None:
        url, seen = redirected
        secret_id = Secret(secrets.token_urlsafe(24))
        store = vault_store(_NoServer(url), auth="approle", role_id="r", token=None,
                            secret_id=secret_id)
        with pytest.raises(StoreError, match="redirected"):
            store.start()
        assert seen == []


class _NoServer:
    """Stands in for an OpenBao where only the address matters."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root_token = secrets.token_urlsafe(24)


@pytest.mark.server
class TestLoginTokenIsRedacted:
    """The token an AppRole login yields is redacted like any secret rotator holds."""

    def test_approle_token(self, bao_server: OpenBao) -> None:
        mount = f"approle-{secrets.token_hex(4)}"
        api(bao_server, "POST", f"sys/auth/{mount}", {"type": "approle"})
        role = f"auth/{mount}/role/rotator"
        api(bao_server, "POST", role, {"token_policies": ["default"]})
        role_id = api(bao_server, "GET", f"{role}/role-id")["data"]["role_id"]
        secret_id = api(bao_server, "POST", f"{role}/secret-id")["data"]["secret_id"]
        with vault_store(bao_server, auth="approle", approle_mount=mount, role_id=role_id,
                         token=None, secret_id=Secret(secret_id)) as store:
            assert store._client is not None
            login_token = str(store._client.token)
            assert redact(f"token {login_token} leaked") == f"token {MASK} leaked"


@pytest.mark.server
class TestEnvironmentReadOnce:
    """The Vault session takes its proxy and CA bundle from the environment once, at start,
    instead of scanning every variable and looking for a netrc file on each request."""

    def test_requests_do_not_read_the_environment(self, bao_server: OpenBao,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        import requests.sessions
        import requests.utils

        calls = {"proxies": 0, "netrc": 0}
        real_proxies, real_netrc = requests.utils.get_environ_proxies, requests.utils.get_netrc_auth

        def proxies(*args: Any, **kwargs: Any) -> Any:
            calls["proxies"] += 1
            return real_proxies(*args, **kwargs)

        def netrc(*args: Any, **kwargs: Any) -> Any:
            calls["netrc"] += 1
            return real_netrc(*args, **kwargs)

        for module in (requests.utils, requests.sessions):
            monkeypatch.setattr(module, "get_environ_proxies", proxies, raising=False)
            monkeypatch.setattr(module, "get_netrc_auth", netrc, raising=False)
        path = f"env-once/{secrets.token_hex(4)}"
        with vault_store(bao_server) as store:
            started = dict(calls)
            for _ in range(10):
                assert store.read(path) is None
        assert started["proxies"] == 1  # the session's, once
        assert calls == started  # and nothing per request

    def test_a_proxy_in_the_environment_is_still_used(self, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
        from providers.stores.vault_http import session_for as _session

        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        session, _ = _session("https://vault.example.com:8200", True)
        assert session.proxies.get("https") == "http://proxy.internal:3128"
        monkeypatch.setenv("NO_PROXY", "vault.example.com")
        session, _ = _session("https://vault.example.com:8200", True)
        assert "https" not in session.proxies

    def test_a_ca_bundle_named_in_the_environment_is_still_used(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        from providers.stores.vault_http import session_for as _session

        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/corp/ca.pem")
        assert _session("https://vault.example.com", True)[1] == "/etc/corp/ca.pem"
        assert _session("https://vault.example.com", "/own/ca.pem")[1] == "/own/ca.pem"
        assert _session("https://vault.example.com", False)[1] is False
