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
anyway is refused, so a small compressed body cannot expand past the bound.

:func:`client`'s own transport keeps connections alive and needs no timer: its sockets
(:class:`_DeadlineBackend`) give every connect, TLS handshake, write and read at most what is
left of the request's deadline, so a server that drips bytes runs the request out of time
however many reads it takes. A caller's own transport (tests) is wrapped as it is, with the
timer that shuts a socket learnt at connect down.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpcore
import httpx

from rotator._deadline import DeadlinePassed, _Watch
from rotator.errors import RotatorError

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
        request.headers["Accept-Encoding"] = "identity"
        if isinstance(self._inner, _DeadlineTransport):
            return self._within_deadline(request)
        watch = _Watch()
        outer = request.extensions.get("trace")

        def trace(name: str, info: Mapping[str, Any]) -> None:
            watch.trace(name, info)
            if outer is not None:
                outer(name, info)

        request.extensions = {**request.extensions, "trace": trace}
        timer = threading.Timer(self._deadline, watch.fire)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        try:
            answer = self._send(request, started)
        except httpx.HTTPError as exc:
            if watch.fired:
                raise self._late(request) from exc
            raise
        finally:
            timer.cancel()
            watch.finish()
        if watch.fired:
            raise self._late(request)
        return answer

    def _within_deadline(self, request: httpx.Request) -> httpx.Response:
        """Through a :class:`_DeadlineTransport`: its sockets keep to the deadline."""
        started = time.monotonic()
        outer = getattr(_LOCAL, "deadline", None)
        _LOCAL.deadline = started + self._deadline
        try:
            return self._send(request, started)
        except httpx.TimeoutException as exc:
            if time.monotonic() >= started + self._deadline:
                raise self._late(request) from exc
            raise
        finally:
            _LOCAL.deadline = outer

    def _send(self, request: httpx.Request, started: float) -> httpx.Response:
        """``request`` through the inner transport, its answer read (bounded) and the
        connection let go: the answer as a response of its own."""
        response = self._inner.handle_request(request)
        try:
            body = self._read(response, started, request)
        finally:
            response.close()
        return _answer(response, body, request)

    def _read(self, response: httpx.Response, started: float,
              request: httpx.Request) -> bytes:
        read = _read_already(response, request, self._max_body)
        if read is not None:
            return read
        body = bytearray()
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


class AsyncBoundedTransport(httpx.AsyncBaseTransport):
    """:class:`BoundedTransport` for an ``httpx.AsyncClient``: the deadline is asyncio's, which
    cancels whatever read or connect is under way when it passes (so no timer thread and no
    deadline sockets); the answer is bounded and refused when encoded in the same way."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, deadline: float,
                 max_body: int = MAX_ANSWER) -> None:
        self._inner = inner
        self._deadline = deadline
        self._max_body = max_body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        bound = asyncio.timeout(self._deadline)
        try:
            async with bound:
                response = await self._inner.handle_async_request(request)
                try:
                    body = await self._read(response, request)
                finally:
                    await response.aclose()
        except TimeoutError:
            if bound.expired():
                raise DeadlinePassed(f"no answer within {self._deadline:g}s",
                                     request=request) from None
            raise
        return _answer(response, body, request)

    async def _read(self, response: httpx.Response, request: httpx.Request) -> bytes:
        read = _read_already(response, request, self._max_body)
        if read is not None:
            return read
        body = bytearray()
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("AsyncBoundedTransport wraps asyncio transports only")
        async for chunk in stream:
            body += chunk
            if len(body) > self._max_body:
                raise AnswerRefused(f"answer larger than {self._max_body} bytes",
                                    request=request)
        return bytes(body)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _read_already(response: httpx.Response, request: httpx.Request,
                  max_body: int) -> bytes | None:
    """Refuse an encoded answer; the body of one a test's transport already read (refused
    past ``max_body``), or None when it is still to be read from its stream."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise AnswerRefused(f"answer encoded as {encoding[:20]!r} though asked not to be",
                            request=request)
    try:
        body = response.content
    except httpx.ResponseNotRead:
        return None
    if len(body) > max_body:
        raise AnswerRefused(f"answer larger than {max_body} bytes", request=request)
    return body


def _answer(response: httpx.Response, body: bytes, request: httpx.Request) -> httpx.Response:
    """``response`` with the ``body`` read from it, no longer tied to its connection."""
    extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
    return httpx.Response(response.status_code, headers=response.headers, content=body,
                          extensions=extensions, request=request)


#: The deadline (``time.monotonic``) of the request this thread sends through a
#: :class:`_DeadlineTransport`; httpx's sync transports do their socket work in the caller's
#: thread.
_LOCAL = threading.local()


def _left(timeout: float | None) -> float | None:
    """``timeout`` for one socket operation, cut to what is left of this thread's deadline;
    a timeout exception when nothing is."""
    deadline: float | None = getattr(_LOCAL, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sockets, each operation held to the current request's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, _left(timeout),
                                                       local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _left(timeout),
                                                               socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _tls_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """The TLS context ``verify`` asks for: a given one, a CA file or directory, the default
    trust store (True), or none (False: verification turned off by name by a user)."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):  # httpx deprecates a path here: made as it advises
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


class _LazyTlsPool(httpcore.ConnectionPool):
    """A connection pool that makes its TLS context at its first https connection: a client
    that only speaks plain HTTP (to a loopback endpoint) never loads the CA bundle, which
    costs more CPU than a request."""

    def __init__(self, make_context: Callable[[], ssl.SSLContext], **kwargs: Any) -> None:
        super().__init__(ssl_context=None, **kwargs)
        self._make_context = make_context

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        if origin.scheme == b"https" and self._ssl_context is None:
            self._ssl_context = self._make_context()  # two racing threads: two, both good
        return super().create_connection(origin)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport, connections kept alive, on :class:`_DeadlineBackend` sockets."""

    def __init__(self, verify: ssl.SSLContext | str | bool, proxy: str | None = None) -> None:
        # httpx's own pool is replaced below; it gets a context that trusts no CA (so it
        # could verify nothing) instead of loading the bundle for nothing.
        super().__init__(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise TypeError("httpx.HTTPTransport no longer keeps its pool as _pool")
        # One TLS context, made at the first https connection and kept.
        make: Callable[[], ssl.SSLContext] = functools.partial(_tls_context, verify)
        self._pool = _LazyTlsPool(make, max_connections=100, max_keepalive_connections=20,
                                  keepalive_expiry=5.0, network_backend=_DeadlineBackend(),
                                  proxy=None if proxy is None else _proxy(proxy, verify))


class ProxyRefused(RotatorError):
    """A proxy from the environment that rotator cannot use (its URL is not said: it may
    carry a password)."""


def _proxy(url: str, verify: ssl.SSLContext | str | bool) -> httpcore.Proxy:
    """httpcore's proxy for ``url`` (``http://[user:password@]host:port``, or ``https://``,
    verified as the target is): an https target is reached through a CONNECT tunnel, its
    TLS end to end; through the same deadline-bounded sockets."""
    parsed = _parsed_proxy(url)
    return httpcore.Proxy(
        url=httpcore.URL(scheme=parsed.url.raw_scheme, host=parsed.url.raw_host,
                         port=parsed.url.port, target=parsed.url.raw_path),
        auth=parsed.raw_auth, headers=parsed.headers.raw,
        ssl_context=_tls_context(verify) if parsed.url.scheme == "https" else None)


def _parsed_proxy(url: str) -> httpx.Proxy:
    """``url`` as httpx's proxy, or :class:`ProxyRefused` (an http or https one only)."""
    try:
        parsed = httpx.Proxy(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ProxyRefused(f"the proxy named in the environment is not a usable URL: "
                           f"{type(exc).__name__}") from None
    if parsed.url.scheme not in ("http", "https"):
        raise ProxyRefused(f"a {parsed.url.scheme!r} proxy from the environment is not "
                           "supported (http or https only); set NO_PROXY for this host")
    return parsed


def environment_proxies() -> dict[str, str | None]:
    """The proxies the environment names (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``; read when a client is built) as httpx's URL patterns: a proxy URL, or
    None for a host that goes direct. httpx reads them only for a client built without a
    transport, and rotator's clients always have one."""
    from httpx._utils import get_environment_proxies  # httpx's reading, NO_PROXY rules and all

    return get_environment_proxies()


def bounded_transport(*, deadline: float, verify: ssl.SSLContext | str | bool = True,
                      inner: httpx.BaseTransport | None = None,
                      max_body: int = MAX_ANSWER) -> BoundedTransport:
    """A transport each of whose requests ends within ``deadline`` seconds in all, its answer
    bounded by ``max_body``: over kept-alive :class:`_DeadlineBackend` sockets, or over
    ``inner`` (a test's) with the timer."""
    return BoundedTransport(inner if inner is not None else _DeadlineTransport(verify),
                            deadline=deadline, max_body=max_body)


def client(*, timeout: float, verify: ssl.SSLContext | str | bool = True,
           transport: httpx.BaseTransport | None = None, max_body: int = MAX_ANSWER,
           **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` each of whose requests ends within ``timeout`` seconds in all,
    through the proxy the environment names for its URL (:func:`environment_proxies`).

    ``transport`` (a test's) is wrapped instead of the default one; other arguments go to
    ``httpx.Client``.
    """
    bounded = bounded_transport(deadline=timeout, verify=verify, inner=transport,
                                max_body=max_body)
    mounts: dict[str, httpx.BaseTransport | None] = {}
    if transport is None and kwargs.get("trust_env", True):
        mounts = {pattern: None if proxy is None else BoundedTransport(
                      _DeadlineTransport(verify, proxy), deadline=timeout, max_body=max_body)
                  for pattern, proxy in environment_proxies().items()}
    return httpx.Client(timeout=timeout, verify=verify, transport=bounded, mounts=mounts,
                        **kwargs)


def async_client(*, timeout: float, verify: ssl.SSLContext | str | bool = True,
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_body: int = MAX_ANSWER, **kwargs: Any) -> httpx.AsyncClient:
    """:func:`client` for asyncio: an ``httpx.AsyncClient`` each of whose requests ends
    within ``timeout`` seconds in all, its answer bounded by ``max_body``, through the proxy
    the environment names for its URL. ``transport`` (a test's) is wrapped instead of
    httpx's own."""
    context = _tls_context(verify) if transport is None else verify

    def bounded(proxy: str | None) -> AsyncBoundedTransport:
        inner = (transport if transport is not None else httpx.AsyncHTTPTransport(
                     verify=context, proxy=None if proxy is None else _parsed_proxy(proxy)))
        return AsyncBoundedTransport(inner, deadline=timeout, max_body=max_body)

    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    if transport is None and kwargs.get("trust_env", True):
        mounts = {pattern: None if proxy is None else bounded(proxy)
                  for pattern, proxy in environment_proxies().items()}
    return httpx.AsyncClient(timeout=timeout, verify=verify, transport=bounded(None),
                             mounts=mounts, **kwargs)
