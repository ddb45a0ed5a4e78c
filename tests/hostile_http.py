"""A raw-socket HTTP server on 127.0.0.1 that answers badly on purpose.

Each connection reads the request, then answers in the server's ``mode``:

``redirect``      302 to ``elsewhere`` (a URL the test counts hits on)
``huge``          200/500 with a declared body of :data:`HUGE` bytes, sent as fast as read
``slow_body``     headers at once, then one body byte per ``pace`` seconds, for ever
``slow_headers``  one header byte per ``pace`` seconds, for ever
``bad_utf8``      500 with an invalid UTF-8 body that echoes the request
``html``          500 with an HTML page that echoes the request headers

``chunks_sent`` counts what the slow modes sent before the client went away: a client that
honours a total deadline leaves after a bounded number, whatever the machine's speed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

HUGE = 256 * 1024 * 1024


class HostileServer:
    def __init__(self, mode: str, *, status: int = 500, elsewhere: str = "",
                 pace: float = 0.05, limit: int = 2000) -> None:
        self.mode, self.status, self.elsewhere = mode, status, elsewhere
        self.pace, self.limit = pace, limit
        self.requests: list[bytes] = []
        self.chunks_sent = 0
        self.finished = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/collector/event"

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _answer(self, conn: socket.socket) -> None:
        try:
            request = self._read_request(conn)
            self.requests.append(request)
            getattr(self, "_" + self.mode)(conn, request)
        except OSError:
            pass
        finally:
            self.finished.set()
            conn.close()

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _redirect(self, conn: socket.socket, request: bytes) -> None:
        conn.sendall(self._head(302, {"Location": self.elsewhere, "Content-Length": "0"}))

    def _huge(self, conn: socket.socket, request: bytes) -> None:
        conn.sendall(self._head(self.status, {"Content-Type": "text/plain",
                                              "Content-Length": str(HUGE)}))
        block = b"A" * 65536
        for _ in range(HUGE // len(block)):
            conn.sendall(block)
            self.chunks_sent += 1

    def _slow_body(self, conn: socket.socket, request: bytes) -> None:
        conn.sendall(self._head(self.status, {"Content-Type": "text/plain",
                                              "Content-Length": str(self.limit)}))
        for _ in range(self.limit):
            conn.sendall(b"x")
            self.chunks_sent += 1
            time.sleep(self.pace)

    def _slow_headers(self, conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(self.limit):
            conn.sendall(b"X-A: b\r\n")
            self.chunks_sent += 1
            time.sleep(self.pace)

    def _bad_utf8(self, conn: socket.socket, request: bytes) -> None:
        body = b"\xff\xfe\xc3(" + request + b"\xed\xa0\x80"
        conn.sendall(self._head(self.status, {"Content-Type": "application/json",
                                              "Content-Length": str(len(body))}) + body)

    def _html(self, conn: socket.socket, request: bytes) -> None:
        body = (b"<html><body><h1>Bad Gateway</h1><pre>" + request
                + b"</pre></body></html>")
        conn.sendall(self._head(self.status, {"Content-Type": "text/html",
                                              "Content-Length": str(len(body))}) + body)


@contextlib.contextmanager
def made_servers(kind: type[HostileServer] = HostileServer, *, pace: float, limit: int
                 ) -> Iterator[Callable[[str], HostileServer]]:
    """A maker of ``kind`` servers in a given mode (answering 200), all closed at the end."""
    made: list[HostileServer] = []

    def make(mode: str) -> HostileServer:
        made.append(kind(mode, pace=pace, limit=limit, status=200))
        return made[-1]
    try:
        yield make
    finally:
        for server in made:
            server.close()


def check_cut_off(server: HostileServer, message: str, secrets_sent: tuple[str, ...], *,
                  limit: int) -> None:
    """The caller reached ``server``, let go of it long before a slow answer's ``limit``
    pieces or a huge one's end, and said so in one line that carries none of ``secrets_sent``."""
    assert server.requests, "the request never arrived"
    assert server.finished.wait(30), "the caller never let go of the connection"
    if server.mode.startswith("slow"):
        assert server.chunks_sent < limit // 4
    if server.mode == "huge":  # 64 KiB blocks: about the 1 MiB bound and socket buffers
        assert server.chunks_sent < 200
    assert "\n" not in message and "\r" not in message
    for value in secrets_sent:
        assert value not in message
