"""Serving the admin API for ``rotator run``: uvicorn in a background thread.

Each answer leaves in one write, one TCP segment on a short answer: uvicorn writes the
status line and headers, then the body, as two writes (two ``send`` system calls, two
segments for the caller to read), which :class:`_OneWrite` joins.

A plain ``GET /v1/clients/{name}`` (the route a fleet polls) is answered by the HTTP protocol
itself when the app offers a fast reader (:class:`FastReads`, the admin app's
:class:`rotator.daemon.api_fast.FastClientRead`): from the parser's callback once the
request's head is read, without an ASGI task, request cycle or messages (about a quarter
less of the daemon's CPU per call in ``bench/bench_daemon.py``). Only the common case goes
that way: HTTP/1.1 keep-alive, no body, nothing in flight or pipelined on the connection,
the answer not held back by a caller that does not read. The bytes are those uvicorn writes
for the same answer (a test compares them), and the connection goes on as after any answer
(uvicorn's ``on_response_complete``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Protocol, cast

import structlog
import uvicorn
from starlette.types import ASGIApp

from rotator.config import is_loopback, plain_http_refusal
from rotator.errors import RotatorError

log = structlog.get_logger("rotator.api")


class ApiServerError(RotatorError):
    """The admin API could not start (address in use, refused plain HTTP, bad TLS files)."""


class ApiServer:
    """The admin API running under uvicorn in a background thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread,
                 sock: socket.socket) -> None:
        self._server = server
        self._thread = thread
        self._socket = sock
        host, port = sock.getsockname()[:2]
        self.host: str = host
        self.port: int = port

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the calls under way (up to ``timeout``) and stop listening."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._socket.close()


class _OneWrite:
    """A transport that holds a response's head (status line and headers) until the body's
    first write, which carries both; held past the loop's current turn, it goes alone.

    Every other call goes to the transport itself.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n") \
                and not data.startswith(b"HTTP/1.1 1"):  # not a 100 Continue: awaited
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class FastReads(Protocol):
    """Answers plain reads from the HTTP protocol (see the module's docstring)."""

    def answer_now(self, path: str, headers: list[tuple[bytes, bytes]],
                   client: tuple[str, int] | None, respond: Any) -> bool:
        """Answer ``GET path`` with ``respond(body)`` now, or say False and do nothing."""


_STATUS_200 = b"HTTP/1.1 200 OK\r\n"
_JSON_HEAD_END = b"content-type: application/json\r\n\r\n"


def _http_protocol(fast: FastReads | None = None) -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol writing each answer at once, and answering plain reads
    through ``fast``; ``auto`` without httptools."""
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class OneWriteHttpToolsProtocol(HttpToolsProtocol):
        _answered = False  # the request in hand was answered from on_headers_complete

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            one_write = _OneWrite(cast(asyncio.Transport, transport), self.loop)
            super().connection_made(cast(asyncio.Transport, one_write))

        def on_headers_complete(self) -> None:
            if fast is not None and self._answer_now(fast):
                self._answered = True
                return
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            if self._answered:  # no cycle to tell: the answer is written
                self._answered = False
                return
            super().on_message_complete()

        def _answer_now(self, reader: FastReads) -> bool:
            parser = self.parser
            cycle = self.cycle
            if (parser.get_method() != b"GET" or parser.get_http_version() != "1.1"
                    or not parser.should_keep_alive() or parser.should_upgrade()
                    or self.pipeline or (cycle is not None and not cycle.response_complete)
                    or self.flow.write_paused or self.root_path or self.access_log
                    or self.limit_concurrency is not None):
                return False
            for name, _ in self.headers:  # a body, or a 100 Continue to answer: ASGI
                if name in (b"content-length", b"transfer-encoding", b"expect"):
                    return False
            try:
                url = httptools.parse_url(self.url)
                path = url.path.decode("ascii")
            except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
                return False  # uvicorn answers it as it does
            if url.query is not None or url.fragment is not None:
                return False
            if not reader.answer_now(path, self.headers, self.client, self._respond):
                return False
            self.on_response_complete()  # keep-alive timer, total_requests: as uvicorn
            return True

        def _respond(self, body: bytes) -> None:
            content = [_STATUS_200]
            for name, value in self.server_state.default_headers:  # date (and server)
                content += (name, b": ", value, b"\r\n")
            content += (b"content-length: %d\r\n" % len(body), _JSON_HEAD_END, body)
            self.transport.write(b"".join(content))

    return OneWriteHttpToolsProtocol


def serve(app: ASGIApp, listen: str | tuple[str, int], *, cert_file: str | None = None,
          key_file: str | None = None, insecure_http: bool = False,
          startup_timeout: float = 10.0) -> ApiServer:
    """Start ``app`` under uvicorn in a daemon thread, listening on ``listen``.

    An app with a ``fast`` reader (:class:`FastReads`) has its plain reads answered by the
    HTTP protocol. ``listen`` is ``"host:port"`` or ``(host, port)``; port 0 picks a free one
    (``ApiServer.port`` tells which). TLS when ``cert_file`` and ``key_file`` are given;
    plain HTTP anywhere but loopback is refused unless ``insecure_http``. Returns once the
    server accepts connections. Raises :class:`ApiServerError`.
    """
    from rotator.config import parse_listen

    try:
        host, port = parse_listen(listen) if isinstance(listen, str) else listen
    except ValueError as exc:
        raise ApiServerError(f"api.listen: {exc}") from None
    tls = bool(cert_file and key_file)
    refusal = plain_http_refusal(host, tls, insecure_http)
    if refusal:
        raise ApiServerError(f"api.listen: {refusal}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without, a response written as headers then body
    # waits out the caller's delayed ACK (about 40 ms a call on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ApiServerError(f"api.listen: cannot listen on {host}:{port}: "
                             f"{exc.strerror}") from None
    config = uvicorn.Config(app, ssl_certfile=cert_file if tls else None,
                            ssl_keyfile=key_file if tls else None, log_config=None,
                            access_log=False, lifespan="off", server_header=False,
                            proxy_headers=False,
                            http=_http_protocol(cast(FastReads | None, getattr(app, "fast", None))))
    try:
        config.load()  # loads TLS files now, so a bad one fails here, not in the thread
    except (OSError, ValueError) as exc:
        sock.close()
        raise ApiServerError(f"api: cannot use cert_file/key_file: {exc}") from None
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="rotator-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    handle = ApiServer(server, thread, sock)
    if not server.started:
        handle.stop(1.0)
        raise ApiServerError(f"the admin API did not start on {host}:{port}")
    log.info("api_listening", host=handle.host, port=handle.port, tls=tls,
             loopback=is_loopback(host))
    return handle


__all__ = ["ApiServer", "ApiServerError", "FastReads", "serve"]
