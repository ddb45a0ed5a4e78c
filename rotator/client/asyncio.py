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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from os import PathLike
from typing import Any, Self

import httpx
from structlog.typing import FilteringBoundLogger

from rotator.client.policy import (
    CachePolicy,
    Clock,
    Random,
    ScopeKey,
    _Entry,
    _Fetch,
    _Flow,
    _from_config,
    _scope_key,
    _Sleep,
    _Slot,
    _TokenCore,
)
from rotator.client_report import ConsumerReporter
from rotator.interfaces import Credentials, Location, SecretStore
from rotator.token import Token, TokenRequest, _transport_error, parse_token_response

__all__ = ["AsyncTokenClient"]

_Task = asyncio.Task[Token]


async def _fetch(http: httpx.AsyncClient, effect: _Fetch) -> Token:
    """:func:`rotator.token.request_token_async` with the headers and form prepared once."""
    _, headers, data = effect.prepared
    try:
        response = await http.post(effect.request.token_endpoint, data=data, headers=headers)
    except httpx.HTTPError as exc:
        raise _transport_error(effect.request, exc) from None
    return parse_token_response(effect.request, response)


def _consume(task: _Task) -> None:
    # A background refresh nobody awaited must not be reported as "never retrieved".
    if not task.cancelled():
        task.exception()


class AsyncTokenClient(_TokenCore):
    """Access tokens for one OAuth client, cached and shared by the tasks of a service.

    Arguments as for :class:`~rotator.client.TokenClient`, with an ``httpx.AsyncClient`` and
    an async ``sleep``.
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
    ) -> None:
        super().__init__(request, credentials, store, location, policy or CachePolicy(), clock,
                         random, logger)
        # retire = "when_unused": re-read CURRENT at every refresh, report what was used.
        self._reporter = reporter
        self._reread = reporter is not None and store is not None
        self._http = http if http is not None else httpx.AsyncClient(timeout=10.0)
        self._owns_http = http is None
        self._sleep = sleep
        self._slots: dict[ScopeKey, _Slot[_Task]] = {}

    @classmethod
    def from_config(
        cls,
        path: str | PathLike[str],
        client_name: str,
        *,
        store: str | None = None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Self:
        """As :meth:`rotator.client.TokenClient.from_config` (starting the store blocks),
        reporting to the daemon with ``ROTATOR_REPORT_URL`` set likewise."""
        if "reporter" not in kwargs:
            kwargs["reporter"] = ConsumerReporter.from_env(client_name, environ)
        return _from_config(cls, path, client_name, store, environ, kwargs,
                            lambda c: httpx.AsyncClient(timeout=c.verify_timeout,
                                                        verify=c.tls_verify))

    async def token(self, scopes: Iterable[str] | None = None) -> Token:
        """A valid token for ``scopes`` (default: the request's), from the cache if possible."""
        slot = self._slots.get(self._default_key if scopes is None else _scope_key(scopes))
        if slot is not None:
            entry = slot.entry
            if entry is not None and self._clock() < entry.refresh_at:
                return entry.token
        return await self._token_slow(self._key(scopes))

    def invalidate(self, token: Token) -> None:
        """Forget ``token`` (a resource server refused it); the next call fetches another."""
        self._invalidate(self._slots.values(), token)

    async def _token_slow(self, key: ScopeKey) -> Token:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:  # not setdefault: that would build a _Slot on every fetch
                slot = self._slots[key] = _Slot()
            now, entry = self._clock(), slot.entry
            if entry is not None and now < entry.refresh_at:
                return entry.token
            flight = slot.flight
            if flight is None:
                flight = slot.flight = asyncio.ensure_future(self._refresh(key, slot))
                flight.add_done_callback(_consume)
        if entry is not None and now < entry.expires_at:
            return entry.token  # the refresh goes on in the background
        # shield: a caller that is cancelled must not cancel the request others wait for
        return await asyncio.shield(flight)

    async def _refresh(self, key: ScopeKey, slot: _Slot[_Task]) -> Token:
        try:
            new = await self._run(self._flow(key))
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
        used = self._credentials if self._used is None else self._used
        if self._reporter is not None and used is not None:
            # never raises; at most once a refresh; its HTTP call is blocking: off the loop
            await asyncio.to_thread(self._reporter.report, used.client_secret)
        return new.token

    async def _run(self, flow: _Flow) -> _Entry:
        sent: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(sent)
            except StopIteration as stop:
                result: _Entry = stop.value
                return result
            sent, error = None, None
            try:
                if isinstance(effect, _Fetch):
                    sent = await _fetch(self._http, effect)
                elif isinstance(effect, _Sleep):
                    await self._sleep(effect.seconds)
                else:
                    sent = await asyncio.to_thread(self._read_store, effect.stage)
            except Exception as exc:
                error = exc

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
