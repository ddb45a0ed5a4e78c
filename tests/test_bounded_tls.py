"""The bounded HTTP client (rotator._bounded) loads a CA bundle only when it needs one: at its
first https connection, once, into one TLS context that verifies; a client that only speaks
plain HTTP (to a loopback endpoint) never loads one. The load costs more CPU than a request
(about 30-50 ms), and a run builds a client per IdP and one for verification."""

from __future__ import annotations

import asyncio
import http.server
import secrets
import select
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import server_rsyslog
from test_store_contract import aws_store

from rotator import _bounded
from rotator._deadline import DeadlinePassed
from rotator.errors import StoreError


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



class _Proxy(socketserver.ThreadingTCPServer):
    """A forward proxy on 127.0.0.1: absolute-URI requests for http targets, CONNECT
    tunnels for https ones; it notes each request line and whether credentials came."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, stall: bool = False) -> None:
        self.seen: list[str] = []
        self.authorized: list[bool] = []
        self.stall = stall
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: _Proxy

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1").strip()
        headers = []
        while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            headers.append(header.decode("latin-1"))
        self.server.seen.append(line)
        self.server.authorized.append(any(h.lower().startswith("proxy-authorization:")
                                          for h in headers))
        if self.server.stall:
            time.sleep(3)
            return
        method, target, _version = line.split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(upstream)
            return
        parsed = urllib.parse.urlsplit(target)
        # the body may already sit in rfile's buffer, where the pipe below would not see it
        length = next((int(h.split(":", 1)[1]) for h in headers
                       if h.lower().startswith("content-length:")), 0)
        body = self.rfile.read(length) if length else b""
        upstream = socket.create_connection((parsed.hostname or "", parsed.port or 80))
        upstream.sendall(f"{method} {parsed.path or '/'} HTTP/1.1\r\n".encode()
                         + "".join(headers).encode("latin-1") + b"\r\n" + body)
        self._pipe(upstream)

    def _pipe(self, upstream: socket.socket) -> None:
        client = self.connection
        sockets = [client, upstream]
        with upstream:
            while True:
                readable, _, _ = select.select(sockets, [], [], 5)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Proxy]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    server = _Proxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _address(server: socketserver.TCPServer) -> str:
    host, port = server.server_address[:2]
    return f"{host!s}:{port}"


def _get(kind: str, url: str, **kwargs: Any) -> int:
    """GET ``url`` through a fresh bounded client of ``kind`` built with ``kwargs``: the
    threaded :func:`_bounded.client` or the asyncio :func:`_bounded.async_client`."""
    if kind == "threads":
        with _bounded.client(**kwargs) as client:
            return client.get(url).status_code

    async def get() -> int:
        async with _bounded.async_client(**kwargs) as client:
            return (await client.get(url)).status_code
    return asyncio.run(get())


def _build(kind: str, **kwargs: Any) -> object:
    return (_bounded.client if kind == "threads" else _bounded.async_client)(**kwargs)


@pytest.mark.parametrize("kind", ["threads", "asyncio"])
class TestProxyFromTheEnvironment:
    """A bounded client, threaded or asyncio (the consumer library's), goes through the proxy
    the environment names for its URL (plain HTTP as an absolute URI, https through a
    CONNECT tunnel with TLS verified end to end), goes direct where NO_PROXY says, keeps its
    deadline through a proxy, and refuses a proxy it cannot use without naming it."""

    def test_http_through_the_proxy(self, kind: str, proxy: _Proxy, http_url: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", f"http://rotator:pw@{_address(proxy)}")
        assert _get(kind, http_url, timeout=5.0) == 200
        assert proxy.seen == [f"GET {http_url} HTTP/1.1"] and proxy.authorized == [True]

    def test_https_through_a_tunnel(self, kind: str, proxy: _Proxy, https_url: str,
                                    ca: server_rsyslog.TestCa,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTPS_PROXY", f"http://{_address(proxy)}")
        assert _get(kind, https_url, timeout=5.0, verify=str(ca.ca)) == 200
        with pytest.raises(httpx.ConnectError):
            _get(kind, https_url, timeout=5.0)  # the default trust store lacks the test CA
        target = https_url.removeprefix("https://").rstrip("/")
        assert proxy.seen == [f"CONNECT {target} HTTP/1.1"] * 2

    def test_no_proxy_goes_direct(self, kind: str, proxy: _Proxy, http_url: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", f"http://{_address(proxy)}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert _get(kind, http_url, timeout=5.0) == 200
        assert proxy.seen == []

    def test_the_deadline_holds_through_a_proxy(self, kind: str, http_url: str,
                                                monkeypatch: pytest.MonkeyPatch,
                                                proxy: _Proxy) -> None:
        stalled = _Proxy(stall=True)
        threading.Thread(target=stalled.serve_forever, daemon=True).start()
        try:
            monkeypatch.setenv("HTTP_PROXY", f"http://{_address(stalled)}")
            with pytest.raises((DeadlinePassed, httpx.TimeoutException)):
                _get(kind, http_url, timeout=0.5)
        finally:
            stalled.shutdown()
            stalled.server_close()

    def test_unusable_proxy_refused_unnamed(self, kind: str, proxy: _Proxy,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        password = secrets.token_urlsafe(12)
        monkeypatch.setenv("HTTPS_PROXY", f"socks5://rotator:{password}@127.0.0.1:1")
        with pytest.raises(_bounded.ProxyRefused) as refused:
            _build(kind, timeout=5.0)
        assert password not in str(refused.value) and "socks5" in str(refused.value)


class TestBotocoreThroughTheProxy:
    """boto3 calls sent through the bounded client (rotator._bounded_boto) go through the
    proxy the environment names, as botocore's own sending did: the AWS Secrets Manager store
    on a real moto server, behind the test proxy."""

    @pytest.mark.server
    def test_secrets_manager_read_through_the_proxy(
            self, proxy: _Proxy, moto_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", f"http://{_address(proxy)}")
        with aws_store(moto_server) as store:
            assert store.read(f"apps/missing-{secrets.token_hex(4)}") is None
        assert proxy.seen == [f"POST {moto_server.url}/ HTTP/1.1"]

    def test_unusable_proxy_refused_at_start(self, proxy: _Proxy, moto_server: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        password = secrets.token_urlsafe(12)
        monkeypatch.setenv("HTTP_PROXY", f"socks5://rotator:{password}@127.0.0.1:1")
        store = aws_store(moto_server)
        with pytest.raises(StoreError, match="socks5") as refused:
            store.start()
        store.close()
        assert password not in str(refused.value)
