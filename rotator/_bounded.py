"""httpx clients whose every request has a total deadline and a bounded answer.

For IdP admin APIs and token endpoints, which answer with JSON through ``client.get``/
``client.post`` rather than one :func:`rotator._deadline.post`. httpx's ``timeout`` bounds
each read, not the request: a server that sends one byte every 0.2 s keeps a call busy
without bound, and a 256 MB answer is read whole. :class:`BoundedTransport` wraps the
transport: each request gets ``deadline`` seconds in all (a timer shuts the socket down when
they pass, which wakes a blocked read), and its answer is read before it is handed on, up to
``max_body`` bytes; a longer one is refused. Both failures are ``httpx.HTTPError``s, so an
adapter's usual ``except httpx.HTTPError`` turns them into its retryable error.

Answers are asked for unencoded (``Accept-Encoding: identity``) and one that arrives encoded
anyway is refused, so a small compressed body cannot expand past the bound. The socket is
learnt when the connection opens, so :func:`client` keeps no connection alive between
requests; a caller's own transport (tests) is wrapped as it is.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from rotator._deadline import DeadlinePassed, _Watch

#: Bytes an IdP admin or token answer may have; real ones are a few KiB.
MAX_ANSWER = 1 << 20


class AnswerRefused(httpx.TransportError):
    """The answer was larger than allowed, or encoded when it was asked not to be."""


class BoundedTransport(httpx.BaseTransport):
    """Gives each request through ``inner`` a total deadline and a bounded answer."""

    def __init__(self, inner: httpx.BaseTransport, *, deadline: float,
                 max_body: int = MAX_ANSWER) -> None:
        self._inner = inner
        self._deadline = deadline
        self._max_body = max_body

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        watch = _Watch()
        outer = request.extensions.get("trace")

        def trace(name: str, info: Mapping[str, Any]) -> None:
            watch.trace(name, info)
            if outer is not None:
                outer(name, info)

        request.extensions = {**request.extensions, "trace": trace}
        request.headers["Accept-Encoding"] = "identity"
        timer = threading.Timer(self._deadline, watch.fire)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        try:
            response = self._inner.handle_request(request)
            try:
                body = self._read(response, started, request)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            if watch.fired:
                raise self._late(request) from exc
            raise
        finally:
            timer.cancel()
            watch.finish()
        if watch.fired:
            raise self._late(request)
        extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
        return httpx.Response(response.status_code, headers=response.headers, content=body,
                              extensions=extensions, request=request)

    def _read(self, response: httpx.Response, started: float,
              request: httpx.Request) -> bytes:
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise AnswerRefused(f"answer encoded as {encoding[:20]!r} though asked not to be",
                                request=request)
        try:  # a test's transport may hand back an answer it already read
            body = bytearray(response.content)
        except httpx.ResponseNotRead:
            body = bytearray()
        else:
            if len(body) > self._max_body:
                raise AnswerRefused(f"answer larger than {self._max_body} bytes",
                                    request=request)
            return bytes(body)
        stream = response.stream
        if not isinstance(stream, httpx.SyncByteStream):
            raise TypeError("BoundedTransport wraps synchronous transports only")
        for chunk in stream:
            body += chunk
            if len(body) > self._max_body:
                raise AnswerRefused(f"answer larger than {self._max_body} bytes",
                                    request=request)
            if time.monotonic() - started > self._deadline:
                raise self._late(request)
        return bytes(body)

    def _late(self, request: httpx.Request) -> DeadlinePassed:
        return DeadlinePassed(f"no answer within {self._deadline:g}s", request=request)

    def close(self) -> None:
        self._inner.close()


def client(*, timeout: float, verify: ssl.SSLContext | str | bool = True,
           transport: httpx.BaseTransport | None = None, max_body: int = MAX_ANSWER,
           **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` each of whose requests ends within ``timeout`` seconds in all.

    ``transport`` (a test's) is wrapped instead of the default one; other arguments go to
    ``httpx.Client``.
    """
    inner = transport if transport is not None else httpx.HTTPTransport(
        verify=verify, limits=httpx.Limits(max_keepalive_connections=0))
    return httpx.Client(timeout=timeout, verify=verify,
                        transport=BoundedTransport(inner, deadline=timeout, max_body=max_body),
                        **kwargs)
