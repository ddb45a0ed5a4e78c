"""The client for threads: :class:`TokenClient`, one token request at a time per scope set."""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable, Generator, Iterable
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

__all__ = ["TokenClient"]


class _Flight:
    """One token request that other threads wait for.

    Made by the first thread that waits, not by the one that sends the request (which marks
    the slot with :data:`_SENDING`): usually nobody waits, and a fetch then makes no lock.
    Both happen under the client's lock, so the sender finds the flight when it is done.
    """

    def __init__(self) -> None:
        self._pending = threading.Lock()
        self._pending.acquire()
        self._token: Token | None = None
        self._error: BaseException | None = None

    def finish(self, token: Token | None, error: BaseException | None = None) -> None:
        self._token, self._error = token, error
        self._pending.release()

    def wait(self) -> Token:
        with self._pending:
            pass
        if self._error is not None:
            raise self._error
        assert self._token is not None
        return self._token


#: In a slot's ``flight`` while a request is out that no other thread waits for yet.
_SENDING = _Flight.__new__(_Flight)


class TokenClient(_TokenCore[_Flight]):
    """Access tokens for one OAuth client, cached and shared by the threads of a service.

    Give ``credentials``, or a started ``store`` and the ``location`` of the credentials in
    it (re-read when the token endpoint refuses the secret). ``http`` is the client for the
    token endpoint (closed by :meth:`close` only if this object created it); one it creates
    gives each token request ``timeout`` seconds in all and reads at most 1 MiB of its answer
    (an endpoint that drips or floods its answer fails the request). ``clock``,
    ``sleep`` and ``random`` are injectable for tests. :meth:`from_config` builds one from a
    rotator configuration.
    """

    def __init__(
        self,
        request: TokenRequest,
        credentials: Credentials | None = None,
        *,
        store: SecretStore | None = None,
        location: Location | None = None,
        http: httpx.Client | None = None,
        policy: CachePolicy | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Random = _random.random,
        logger: FilteringBoundLogger | None = None,
        reporter: ConsumerReporter | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(request, credentials, store, location, policy or CachePolicy(), clock,
                         random, logger, reporter)
        self._http = http if http is not None else _bounded.client(timeout=timeout)
        self._owns_http = http is None
        self._sleep = sleep
        self._store_lock = threading.Lock()

    @classmethod
    def _http_for(cls, client: ClientConfig) -> httpx.Client:
        return _bounded.client(timeout=client.verify_timeout, verify=client.tls_verify)

    def token(self, scopes: Iterable[str] | None = None) -> Token:
        """A valid token for ``scopes`` (default: the request's), from the cache if possible.

        Raises the ``VerificationError`` subclasses described in :mod:`rotator.client`.
        """
        key = self._default_key if scopes is None else self._key(scopes)
        slot = self._slots.get(key)
        if slot is not None:
            entry = slot.entry
            if entry is not None and self._clock() < entry.refresh_at:
                return entry.token
        return self._token_slow(key)

    def _token_slow(self, key: ScopeKey) -> Token:
        with self._lock:
            slot = self._slot(key)
            now, entry, flight = self._clock(), slot.entry, slot.flight
            if entry is not None and now < entry.expires_at and (
                now < entry.refresh_at or flight is not None
            ):
                return entry.token  # fresh, or another thread is already refreshing it
            if flight is None:
                slot.flight = _SENDING  # this thread sends the request
            elif flight is _SENDING:
                flight = slot.flight = _Flight()
        if flight is not None:
            return flight.wait()
        try:
            new = self._run(key)
        except Exception as exc:
            kept = self._kept_after_failure(slot, exc)
            self._land(key, kept, exc if kept is None else None)
            if kept is None:
                raise
            return kept
        except BaseException as exc:  # KeyboardInterrupt: release the waiting threads too
            self._land(key, None, exc)
            raise
        with self._lock:
            flight = slot.flight
            slot.entry, slot.flight = new, None
        if flight is not _SENDING and flight is not None:
            flight.finish(new.token)
        if self._reporter is not None:
            used = self._credentials_used()
            if used is not None:
                self._reporter.report(used)  # never raises; at most once a refresh
        return new.token

    def _land(self, key: ScopeKey, token: Token | None, error: BaseException | None) -> None:
        """End a request for ``key`` that failed; threads waiting for it get ``token`` (the
        old one, still valid) or ``error``."""
        with self._lock:
            slot = self._slots[key]
            flight = slot.flight
            slot.flight = None
        if flight is not _SENDING and flight is not None:
            flight.finish(token, error)

    def _run(self, key: ScopeKey) -> _Entry:
        fetch = self._ready(key)
        if fetch is None:
            return self._drive(self._flow(key))
        sent_at = self._clock()
        try:
            token = self._send(fetch)
        except Exception as exc:
            return self._drive(self._flow(key, (fetch.credentials, exc)))
        return self._obtained(key, fetch.credentials, self._first_stage, token, sent_at)

    def _drive(self, flow: Generator[Any, Any, _Entry]) -> _Entry:
        sent: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(sent)
            except StopIteration as stop:
                result: _Entry = stop.value
                return result
            try:
                sent, error = effect.perform(self), None
            except Exception as exc:
                sent, error = None, exc

    def _send(self, fetch: _Fetch) -> Token:
        """:func:`rotator.token.request_token`, with the headers and form built once."""
        try:
            response = self._http.post(fetch.url, content=fetch.body, headers=fetch.headers)
        except httpx.HTTPError as exc:
            raise _transport_error(fetch.request, exc) from None
        return parse_token_response(fetch.request, response)

    def _pause(self, seconds: float) -> None:
        self._sleep(seconds)

    def _read(self, stage: Stage) -> StoredCredentials | None:
        with self._store_lock:
            return self._read_store(stage)

    def close(self) -> None:
        """Close the token-endpoint client and store this object created. Never raises."""
        if self._owns_http:
            self._http.close()
        if self._reporter is not None:
            self._reporter.close()
        if self._owns_store and self._store is not None:
            self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
