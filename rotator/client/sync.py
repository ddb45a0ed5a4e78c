"""The client for threads: :class:`TokenClient`, one token request at a time per scope set."""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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

__all__ = ["TokenClient"]

def _fetch(http: httpx.Client, effect: _Fetch) -> Token:
    """:func:`rotator.token.request_token` with the headers and form prepared once."""
    _, headers, data = effect.prepared
    try:
        response = http.post(effect.request.token_endpoint, data=data, headers=headers)
    except httpx.HTTPError as exc:
        raise _transport_error(effect.request, exc) from None
    return parse_token_response(effect.request, response)



class _Flight:
    """One token request that several threads wait for.

    A lock held by the leader until the result is in: cheaper to create than an Event, and
    the leader creates one for every fetch, usually with nobody waiting.
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


class TokenClient(_TokenCore):
    """Access tokens for one OAuth client, cached and shared by the threads of a service.

    Give ``credentials``, or a started ``store`` and the ``location`` of the credentials in
    it (re-read when the token endpoint refuses the secret). ``http`` is the client for the
    token endpoint (closed by :meth:`close` only if this object created it). ``clock``,
    ``sleep`` and ``random`` are injectable for tests.
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
    ) -> None:
        super().__init__(request, credentials, store, location, policy or CachePolicy(), clock,
                         random, logger)
        # retire = "when_unused": re-read CURRENT at every refresh, report what was used.
        self._reporter = reporter
        self._reread = reporter is not None and store is not None
        self._http = http if http is not None else httpx.Client(timeout=10.0)
        self._owns_http = http is None
        self._sleep = sleep
        self._store_lock = threading.Lock()
        self._slots: dict[ScopeKey, _Slot[_Flight]] = {}

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
        """A client for ``[clients.<client_name>]`` of a rotator configuration.

        Reads credentials from the client's first store (or the one named ``store``), which
        is started here and closed by :meth:`close`. Raises ``ConfigError`` or ``StoreError``.
        With ``ROTATOR_REPORT_URL`` set (in ``environ``, default the process environment), it
        reports which secret it uses to the daemon (:mod:`rotator.client_report`).
        """
        if "reporter" not in kwargs:
            kwargs["reporter"] = ConsumerReporter.from_env(client_name, environ)
        return _from_config(cls, path, client_name, store, environ, kwargs,
                            lambda c: httpx.Client(timeout=c.verify_timeout,
                                                   verify=c.tls_verify))

    def token(self, scopes: Iterable[str] | None = None) -> Token:
        """A valid token for ``scopes`` (default: the request's), from the cache if possible.

        Raises the ``VerificationError`` subclasses described in the module docstring.
        """
        slot = self._slots.get(self._default_key if scopes is None else _scope_key(scopes))
        if slot is not None:
            entry = slot.entry
            if entry is not None and self._clock() < entry.refresh_at:
                return entry.token
        return self._token_slow(self._key(scopes))

    def invalidate(self, token: Token) -> None:
        """Forget ``token`` (a resource server refused it); the next call fetches another."""
        self._invalidate(self._slots.values(), token)

    def _token_slow(self, key: ScopeKey) -> Token:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:  # not setdefault: that would build a _Slot on every fetch
                slot = self._slots[key] = _Slot()
            now, entry = self._clock(), slot.entry
            if entry is not None and now < entry.expires_at and (
                now < entry.refresh_at or slot.flight is not None
            ):
                return entry.token  # fresh, or another thread is already refreshing it
            flight, lead = slot.flight, slot.flight is None
            if flight is None:
                flight = slot.flight = _Flight()
        if not lead:
            return flight.wait()
        try:
            new = self._run(self._flow(key))
        except Exception as exc:
            kept = self._kept_after_failure(slot, exc)
            with self._lock:
                slot.flight = None
            flight.finish(kept, exc if kept is None else None)
            if kept is None:
                raise
            return kept
        except BaseException as exc:  # KeyboardInterrupt: release the waiting threads too
            with self._lock:
                slot.flight = None
            flight.finish(None, exc)
            raise
        with self._lock:
            slot.entry, slot.flight = new, None
        flight.finish(new.token)
        used = self._credentials if self._used is None else self._used
        if self._reporter is not None and used is not None:
            self._reporter.report(used.client_secret)  # never raises; at most once a refresh
        return new.token

    def _run(self, flow: _Flow) -> _Entry:
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
                    sent = _fetch(self._http, effect)
                elif isinstance(effect, _Sleep):
                    self._sleep(effect.seconds)
                else:
                    with self._store_lock:
                        sent = self._read_store(effect.stage)
            except Exception as exc:
                error = exc

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
