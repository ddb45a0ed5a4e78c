"""The bounded HTTP client (rotator._bounded) loads a CA bundle only when it needs one: at its
first https connection, once, into one TLS context that verifies; a client that only speaks
plain HTTP (to a loopback endpoint) never loads one. The load costs more CPU than a request
(about 30-50 ms), and a run builds a client per IdP and one for verification."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import server_rsyslog

from rotator import _bounded


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a second request reuses the connection

    def do_GET(self) -> None:  # the stdlib's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: Any) -> None:
        pass


def _serve(context: ssl.SSLContext | None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> server_rsyslog.TestCa:
    return server_rsyslog.make_ca(Path(tmp_path_factory.mktemp("ca")))


@pytest.fixture
def https_url(ca: server_rsyslog.TestCa) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*ca.pair("server"))
    yield from _serve(context)


@pytest.fixture
def http_url() -> Iterator[str]:
    yield from _serve(None)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every CA bundle loaded into a TLS context while the test runs."""
    seen: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        seen.append(args or kwargs)
        real(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    return seen


class TestTlsContextOnlyWhenNeeded:
    """Building a client loads no CA bundle; plain HTTP never does; the first https
    connection loads one, once, and the context verifies the server."""

    def test_building_loads_nothing(self, loads: list[Any]) -> None:
        _bounded.client(timeout=5.0).close()
        assert loads == []

    def test_plain_http_loads_nothing(self, loads: list[Any], http_url: str) -> None:
        with _bounded.client(timeout=5.0) as client:
            assert [client.get(http_url).status_code for _ in range(3)] == [200] * 3
        assert loads == []

    def test_https_loads_once(self, loads: list[Any], https_url: str,
                              ca: server_rsyslog.TestCa) -> None:
        with _bounded.client(timeout=5.0, verify=str(ca.ca)) as client:
            assert [client.get(https_url).status_code for _ in range(3)] == [200] * 3
        assert len(loads) == 1, loads

    def test_https_still_verifies(self, loads: list[Any], https_url: str) -> None:
        # The default trust store does not hold the test CA: the handshake must fail.
        with _bounded.client(timeout=5.0) as client, pytest.raises(httpx.ConnectError):
            client.get(https_url)
        assert len(loads) == 1, loads

    def test_a_given_context_is_used(self, loads: list[Any], https_url: str,
                                     ca: server_rsyslog.TestCa) -> None:
        context = ssl.create_default_context(cafile=str(ca.ca))
        loads.clear()
        with _bounded.client(timeout=5.0, verify=context) as client:
            assert client.get(https_url).status_code == 200
        assert loads == []

