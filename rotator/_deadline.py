"""One HTTP POST with a total deadline and a bounded answer, for hooks, alerts and HEC.

httpx's ``timeout`` bounds each read, not the request: a receiver that sends one byte per
second (of its headers or its body) keeps a plain ``client.post`` busy for as long as it
likes, and a 2 GB answer is read into memory whole. :func:`post` gives the request
``deadline`` seconds in all: a timer shuts the connection's socket down when it passes, which
wakes a blocked read. The answer's body is read only up to ``max_body`` bytes, unencoded
(``Accept-Encoding: identity``, raw bytes: no decompression bomb), and the connection is
closed rather than drained. Redirects are never followed.

The socket is learnt from httpx's ``trace`` extension when the connection opens, so
clients passed here must not keep connections alive between requests (a reused connection
opens no socket to watch): :func:`client` builds one that does not.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

#: Bytes of an answer's body kept (for an error message); the rest is never read.
MAX_BODY = 4096


class DeadlinePassed(httpx.TimeoutException):
    """The request did not finish within its total deadline."""


def client(timeout: float, verify: ssl.SSLContext | str | bool = True,
           **kwargs: Any) -> httpx.Client:
    """An httpx client fit for :func:`post`: no keep-alive, no redirects."""
    return httpx.Client(timeout=timeout, verify=verify, follow_redirects=False,
                        limits=httpx.Limits(max_keepalive_connections=0), **kwargs)


class _Watch:
    """Shuts the request's socket down once the deadline has passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False
        self.fired = False

    def trace(self, name: str, info: Mapping[str, Any]) -> None:
        if name == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._sock = sock
                if self.fired:
                    self._shut()

    def fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            self._shut()

    def _shut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self._lock:
            self._done = True


def post(http: httpx.Client, url: str, *, content: bytes, headers: Mapping[str, str],
         deadline: float, max_body: int = MAX_BODY) -> httpx.Response:
    """POST ``content``; the answer with at most ``max_body`` bytes of its body.

    Raises an ``httpx.HTTPError`` like ``client.post`` does, :class:`DeadlinePassed` when
    ``deadline`` seconds pass first.
    """
    watch = _Watch()
    timer = threading.Timer(deadline, watch.fire)
    timer.daemon = True
    started = time.monotonic()
    request = http.build_request("POST", url, content=content,
                                 headers={**headers, "Accept-Encoding": "identity"},
                                 extensions={"trace": watch.trace})
    timer.start()
    try:
        response = http.send(request, stream=True, follow_redirects=False)
        try:
            body = _prefix(response, max_body, started, deadline)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        # a per-read timeout as long as the deadline may beat the timer's thread to it
        if watch.fired or (isinstance(exc, httpx.TimeoutException)
                           and time.monotonic() - started >= deadline):
            raise DeadlinePassed(f"no answer within {deadline:g}s",
                                 request=request) from exc
        raise
    finally:
        timer.cancel()
        watch.finish()
    if watch.fired:
        raise DeadlinePassed(f"no answer within {deadline:g}s", request=request)
    kept = {k: v for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")}
    return httpx.Response(response.status_code, headers=kept, content=body[:max_body],
                          request=request)


def _prefix(response: httpx.Response, max_body: int, started: float, deadline: float) -> bytes:
    """At most ``max_body`` bytes of the answer's body, read while the deadline lasts."""
    try:  # a test's transport may hand back an answer it already read
        return response.content[:max_body]
    except httpx.ResponseNotRead:
        pass
    body = b""
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= max_body or time.monotonic() - started > deadline:
            break
    return body
