"""The asyncio twin of :class:`rotator.client.TokenClient`.

Same cache, buffer, retry and rotation policy (the effect flow of
:mod:`rotator.client.policy`, performed here with awaits); see :mod:`rotator.client`.
Differences:

- Callers that need a new token await one ``asyncio`` task. When a token reaches its refresh
  point, the caller that notices starts the refresh in the background and, like every other
  caller until it lands, gets the old token without waiting.
- Store reads run in a worker thread (``asyncio.to_thread``): stores are synchronous.
- A client belongs to the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, Self

import httpx
from structlog.typing import FilteringBoundLogger

from rotator import _bounded
from rotator.client.policy import (
    DEFAULT_TIMEOUT,
    CachePolicy,
    Clock,
    Random,
    ScopeKey,
    _Entry,
    _Fetch,
    _TokenCore,
)
from rotator.client_report import ConsumerReporter
from rotator.config import ClientConfig
from rotator.interfaces import Credentials, Location, SecretStore, Stage, StoredCredentials
from rotator.token import Token, TokenRequest, _transport_error, parse_token_response

__all__ = ["AsyncTokenClient"]

_Task = asyncio.Task[Token]


def _consume(task: _Task) -> None:
    # A background refresh nobody awaited must not be reported as "never retrieved".
    if not task.cancelled():
        task.exception()


class AsyncTokenClient(_TokenCore[_Task]):
    """Access tokens for one OAuth client, cached and shared by the tasks of a service.

    Arguments as for :class:`~rotator.client.TokenClient`, with an ``httpx.AsyncClient`` and
    an async ``sleep``; :meth:`from_config` likewise (starting the store blocks).
    """

    def __init__(
        self,
        request: TokenRequest,
        credentials: Credentials | None = None,
        *,
        store: SecretStore | None = None,
        location: Location | None = None,
        http: httpx.AsyncClient | None = None,
        policy: CachePolicy | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Random = _random.random,
        logger: FilteringBoundLogger | None = None,
        reporter: ConsumerReporter | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(request, credentials, store, location, policy or CachePolicy(), clock,
                         random, logger, reporter)
        self._http = http if http is not None else _bounded.async_client(timeout=timeout)
        self._owns_http = http is None
        self._sleep = sleep

    @classmethod
    def _http_for(cls, client: ClientConfig) -> httpx.AsyncClient:
        return _bounded.async_client(timeout=client.verify_timeout, verify=client.tls_verify)

    async def token(self, scopes: Iterable[str] | None = None) -> Token:
        """A valid token for ``scopes`` (default: the request's), from the cache if possible."""
        key = self._default_key if scopes is None else self._key(scopes)
        slot = self._slots.get(key)
        if slot is not None:
            entry = slot.entry
            if entry is not None and self._clock() < entry.refresh_at:
                return entry.token
        return await self._token_slow(key)

    async def _token_slow(self, key: ScopeKey) -> Token:
        with self._lock:
            slot = self._slot(key)
            now, entry = self._clock(), slot.entry
            if entry is not None and now < entry.refresh_at:
                return entry.token
            flight = slot.flight
            if flight is None:
                flight = slot.flight = asyncio.ensure_future(self._refresh(key))
                flight.add_done_callback(_consume)
        if entry is not None and now < entry.expires_at:
            return entry.token  # the refresh goes on in the background
        # shield: a caller that is cancelled must not cancel the request others wait for
        return await asyncio.shield(flight)

    async def _refresh(self, key: ScopeKey) -> Token:
        slot = self._slots[key]
        try:
            new = await self._run(key)
        except Exception as exc:
            kept = self._kept_after_failure(slot, exc)
            with self._lock:
                slot.flight = None
            if kept is None:
                raise
            return kept
        except BaseException:
            with self._lock:
                slot.flight = None
            raise
        with self._lock:
            slot.entry, slot.flight = new, None
        if self._reporter is not None:
            used = self._credentials_used()
            if used is not None:
                # never raises; at most once a refresh; its HTTP call is blocking: off the loop
                await asyncio.to_thread(self._reporter.report, used)
        return new.token

    async def _run(self, key: ScopeKey) -> _Entry:
        fetch = self._ready(key)
        if fetch is None:
            return await self._drive(self._flow(key))
        sent_at = self._clock()
        try:
            token = await self._send(fetch)
        except Exception as exc:
            return await self._drive(self._flow(key, (fetch.credentials, exc)))
        return self._obtained(key, fetch.credentials, self._first_stage, token, sent_at)

    async def _drive(self, flow: Generator[Any, Any, _Entry]) -> _Entry:
        sent: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(sent)
            except StopIteration as stop:
                result: _Entry = stop.value
                return result
            try:
                sent, error = await effect.perform(self), None
            except Exception as exc:
                sent, error = None, exc

    async def _send(self, fetch: _Fetch) -> Token:
        """:func:`rotator.token.request_token_async`, with the headers and form built once."""
        try:
            response = await self._http.post(fetch.url, content=fetch.body, headers=fetch.headers)
        except httpx.HTTPError as exc:
            raise _transport_error(fetch.request, exc) from None
        return parse_token_response(fetch.request, response)

    async def _pause(self, seconds: float) -> None:
        await self._sleep(seconds)

    async def _read(self, stage: Stage) -> StoredCredentials | None:
        return await asyncio.to_thread(self._read_store, stage)

    async def aclose(self) -> None:
        """Cancel refreshes in flight; close what this object created. Never raises."""
        for slot in list(self._slots.values()):
            if slot.flight is not None:
                slot.flight.cancel()
        if self._owns_http:
            await self._http.aclose()
        if self._reporter is not None:
            self._reporter.close()
        if self._owns_store and self._store is not None:
            self._store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
