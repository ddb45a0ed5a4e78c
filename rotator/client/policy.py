"""The token policy both clients share: cache entries, refresh times, retries, rotation.

:class:`_TokenCore` holds the cache and writes the policy once, as a generator of effects
(fetch a token, sleep, read the store) that the sync client (:mod:`rotator.client.sync`)
performs with blocking calls and the asyncio client (:mod:`rotator.client.asyncio`) with
awaits, as httpx's auth flows do. A refresh that is one request (the usual one) is sent by
the driver without entering the generator (:meth:`_TokenCore._ready`, ``_obtained``); a
failure of it enters the flow at that request. The behaviour is described in
:mod:`rotator.client`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, replace
from os import PathLike
from typing import Any, Generic, Self, TypeVar

import httpx
import structlog
from structlog.typing import FilteringBoundLogger

from rotator.client_report import ConsumerReporter
from rotator.config import ClientConfig, load_config
from rotator.errors import (
    BadTokenResponse,
    ConfigError,
    ConfigProblem,
    InvalidClient,
    InvalidScope,
    StoreError,
    StoreNotFound,
    TokenEndpointUnavailable,
    UnauthorizedClient,
)
from rotator.interfaces import Credentials, Location, SecretStore, Stage, StoredCredentials
from rotator.logsafety import install_log_safety
from rotator.secrets import Secret
from rotator.token import Token, TokenRequest, encode_request

__all__ = ["CachePolicy", "Clock", "Random", "ScopeKey"]

#: A monotonic clock in seconds.
Clock = Callable[[], float]
#: A uniform random number in [0, 1).
Random = Callable[[], float]
#: The scopes a token was requested with, sorted and without duplicates.
ScopeKey = tuple[str, ...]


@dataclass(frozen=True)
class CachePolicy:
    """When a cached token is refreshed, and how a failing token endpoint is retried."""

    #: Refresh at most this many seconds before a token expires...
    max_buffer: float = 300.0
    #: ...and at most this fraction of its lifetime before.
    buffer_ratio: float = 0.1
    #: Lifetime assumed for a token whose response has no ``expires_in``.
    assumed_lifetime: float = 300.0
    #: Token requests in all while the endpoint is unavailable (1 = no retry).
    max_attempts: int = 5
    #: The backoff ceiling after the first failure; it doubles with every failure...
    base_delay: float = 0.5
    #: ...up to this, which also bounds how long a ``Retry-After`` is waited for.
    max_delay: float = 10.0
    #: After every secret in reach was refused, they are not sent again for this long; it
    #: doubles with every refusal...
    refused_base_delay: float = 1.0
    #: ...up to this. A secret the store did not hold before is tried at once.
    refused_max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.buffer_ratio < 1.0:
            raise ValueError("buffer_ratio must be in [0, 1)")
        if min(self.max_buffer, self.assumed_lifetime, self.base_delay, self.max_delay,
               self.refused_base_delay, self.refused_max_delay) < 0:
            raise ValueError("durations must not be negative")

    def buffer(self, lifetime: float) -> float:
        """Seconds before expiry at which a token of ``lifetime`` seconds is refreshed."""
        return min(self.max_buffer, self.buffer_ratio * lifetime)

    def backoff(self, failures: int, rand: float, retry_after: float | None) -> float | None:
        """Seconds to wait after ``failures`` failed requests, or None to stop retrying.

        ``rand`` is uniform in [0, 1) (full jitter). None when the attempts are used up or the
        server asked to wait longer than ``max_delay``.
        """
        if failures >= self.max_attempts:
            return None
        delay = rand * min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))
        if retry_after is not None:
            if retry_after > self.max_delay:
                return None
            delay = max(delay, retry_after)
        return delay

    def refused_backoff(self, refusals: int, rand: float) -> float:
        """Seconds before refused secrets are sent again after ``refusals`` refusals in a row.

        Jittered to between half and all of the doubled delay: never near zero, so the
        requests a stale store costs stay bounded per period whatever the random draw.
        """
        ceiling = min(self.refused_max_delay, self.refused_base_delay * 2.0 ** (refusals - 1))
        return ceiling * (0.5 + rand / 2)


@dataclass(frozen=True)
class _Refusal:
    """Secrets the token endpoint refused, and when they may be sent again."""

    refused: tuple[Credentials, ...]
    error: InvalidClient
    refusals: int
    retry_at: float


@dataclass(slots=True)  # not frozen, which costs a call per field: never mutated, replaced
class _Entry:
    """A cached token and the (monotonic) times that decide its use."""

    token: Token
    #: From here one caller refreshes it; the others still get it.
    refresh_at: float
    #: From here nobody gets it.
    expires_at: float


_F = TypeVar("_F")
_DEBUG = logging.DEBUG
#: Seconds a token request may take in all, through the http client a token client makes.
DEFAULT_TIMEOUT = 10.0


class _Slot(Generic[_F]):
    """The cache for one scope set: the token and the request that is refreshing it."""

    __slots__ = ("entry", "flight")

    def __init__(self) -> None:
        self.entry: _Entry | None = None
        self.flight: _F | None = None


# The token policy is written once, as a generator of effects that a driver performs: the
# sync driver with blocking calls, the asyncio driver with awaits (httpx's auth-flow pattern).
# Each effect names the driver's method that performs it (``perform`` returns what that
# method returns: a value for the sync driver, an awaitable for the asyncio one).


class _Fetch:
    """Send a token request. Built once per scope set and credentials, then reused."""

    __slots__ = ("body", "credentials", "headers", "request", "url")

    def __init__(self, request: TokenRequest, credentials: Credentials) -> None:
        self.request = request
        self.credentials = credentials
        # parsed and encoded once: httpx would parse the URL, merge the headers given as a
        # dict and encode the form on every fetch (about a fifth of a bare post's cost)
        self.url = httpx.URL(request.token_endpoint)
        self.headers, self.body = encode_request(request, credentials)

    def perform(self, driver: _TokenCore[Any]) -> Any:
        return driver._send(self)


@dataclass(frozen=True)
class _Sleep:
    seconds: float

    def perform(self, driver: _TokenCore[Any]) -> Any:
        return driver._pause(self.seconds)


@dataclass(frozen=True)
class _Read:
    stage: Stage

    def perform(self, driver: _TokenCore[Any]) -> Any:
        return driver._read(self.stage)


_Effect = _Fetch | _Sleep | _Read
_Flow = Generator[_Effect, Any, _Entry]


def _scope_key(scopes: Iterable[str]) -> ScopeKey:
    return tuple(sorted(set(scopes)))


@dataclass(frozen=True)
class _Setup:
    """What a client built from a rotator configuration needs."""

    request: TokenRequest
    store: SecretStore
    location: Location
    client: ClientConfig


def _setup_from_config(
    path: str | PathLike[str], client_name: str, store_name: str | None,
    environ: Mapping[str, str] | None,
) -> _Setup:
    config = load_config(path, environ, consumer=client_name)
    client = config.clients.get(client_name)
    if client is None:
        raise ConfigError([ConfigProblem(str(path), f"clients.{client_name}",
                                         "no such client in the configuration")])
    targets = [t for t in client.targets if store_name in (None, t.store)]
    if not targets:
        raise ConfigError([ConfigProblem(str(path), f"clients.{client_name}.stores",
                                         f"client does not use a store named {store_name!r}")])
    endpoint = client.token_endpoint or config.idps[client.idp].build().default_token_endpoint()
    if not endpoint:
        raise ConfigError([ConfigProblem(str(path), f"clients.{client_name}.token_endpoint",
                                         f"required: IdP {client.idp!r} cannot tell it")])
    request = TokenRequest(endpoint, client.auth_method, client.scopes, client.audience,
                           client.resource)
    store: SecretStore = config.stores[targets[0].store].build()
    store.start()
    return _Setup(request, store, targets[0].location, client)


class _TokenCore(Generic[_F]):
    """What the sync and asyncio clients share: configuration, cache and the token policy.

    A driver subclass keeps in each scope set's :class:`_Slot` its own kind of flight (``_F``)
    and performs the policy's effects: ``_send`` a token request, ``_pause``, ``_read`` the
    store, blocking or as awaitables.
    """

    def __init__(
        self,
        request: TokenRequest,
        credentials: Credentials | None,
        store: SecretStore | None,
        location: Location | None,
        policy: CachePolicy,
        clock: Clock,
        random: Random,
        logger: FilteringBoundLogger | None,
        reporter: ConsumerReporter | None,
    ) -> None:
        if (credentials is None) == (store is None):
            raise ValueError("give either credentials or a store and a location")
        if store is not None and not location:
            raise ValueError("a store needs the location of the credentials in it")
        install_log_safety()
        self._request = request
        self._credentials = credentials
        self._store = store
        self._location = location or ""
        self._owns_store = False
        self._owns_http = False  # set by the subclasses, which create their own http client
        self._policy = policy
        self._clock = clock
        self._random = random
        self._log: FilteringBoundLogger = logger or structlog.get_logger("rotator.client")
        self._given_logger = logger is not None
        #: structlog's configuration, and the bound logger for the per-fetch debug event under
        #: it (None when it drops debug events); see _fetch_log
        self._fetch_logger: tuple[dict[str, Any], FilteringBoundLogger | None] | None = None
        # retire = "when_unused": re-read CURRENT at every refresh, report what was used.
        self._reporter = reporter
        self._reread = reporter is not None and store is not None
        self._lock = threading.Lock()
        self._default_key = _scope_key(request.scopes)
        self._requests: dict[ScopeKey, TokenRequest] = {self._default_key: request}
        self._fetches: dict[ScopeKey, _Fetch] = {}
        self._slots: dict[ScopeKey, _Slot[_F]] = {}
        self._refusal: _Refusal | None = None
        self._used: Credentials | None = None  # the credentials of the last token obtained
        self._first_stage = "given" if store is None else "current"

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
        is started here (blocking) and closed when the client is closed. Raises
        ``ConfigError`` or ``StoreError``. With ``ROTATOR_REPORT_URL`` set (in ``environ``,
        default the process environment), it reports which secret it uses to the daemon
        (:mod:`rotator.client_report`).
        """
        if "reporter" not in kwargs:
            kwargs["reporter"] = ConsumerReporter.from_env(client_name, environ)
        setup = _setup_from_config(path, client_name, store, environ)
        owns_http = "http" not in kwargs
        if owns_http:
            kwargs["http"] = cls._http_for(setup.client)
        try:
            client = cls(setup.request, store=setup.store, location=setup.location,
                         **kwargs)
        except BaseException:
            setup.store.close()
            raise
        client._owns_http = owns_http
        client._owns_store = True
        return client

    @classmethod
    def _http_for(cls, client: ClientConfig) -> Any:
        """The httpx client (sync or asyncio) for the token endpoint of ``client``."""
        raise NotImplementedError

    @property
    def client_id(self) -> str | None:
        """The client id in use, once known (credentials from a store are read lazily)."""
        return None if self._credentials is None else self._credentials.client_id

    def invalidate(self, token: Token) -> None:
        """Forget ``token`` (a resource server refused it); the next call fetches another."""
        with self._lock:
            for slot in self._slots.values():
                if slot.entry is not None and slot.entry.token is token:
                    slot.entry = None

    def _key(self, scopes: Iterable[str] | None) -> ScopeKey:
        return self._default_key if scopes is None else _scope_key(scopes)

    def _slot(self, key: ScopeKey) -> _Slot[_F]:
        """The slot of ``key``, made the first time; the caller holds the lock."""
        slot = self._slots.get(key)
        if slot is None:  # not setdefault: that would build a _Slot on every fetch
            slot = self._slots[key] = _Slot()
        return slot

    def _request_for(self, key: ScopeKey) -> TokenRequest:
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = replace(self._request, scopes=key)
        return request

    def _fetch_for(self, key: ScopeKey, credentials: Credentials) -> _Fetch:
        """The token request for ``key`` with ``credentials``, built once for both."""
        fetch = self._fetches.get(key)
        if fetch is None or fetch.credentials is not credentials:
            fetch = self._fetches[key] = _Fetch(self._request_for(key), credentials)
        return fetch

    def _read(self, stage: Stage) -> Any:
        """Read ``stage`` from the store: a driver performs this in its own way."""
        raise NotImplementedError

    def _send(self, fetch: _Fetch) -> Any:
        raise NotImplementedError

    def _pause(self, seconds: float) -> Any:
        raise NotImplementedError

    def _read_store(self, stage: Stage) -> StoredCredentials | None:
        assert self._store is not None
        return self._store.read(self._location, stage)

    def _kept_after_failure(self, slot: _Slot[_F], exc: Exception) -> Token | None:
        """A refresh failed: the old token while it is still valid (retried later), or None."""
        now = self._clock()
        with self._lock:
            old = slot.entry
            if old is None or now >= old.expires_at:
                return None
            retry_at = now + min(self._policy.max_delay, (old.expires_at - now) / 2)
            slot.entry = replace(old, refresh_at=retry_at)
        self._log.warning("token_refresh_failed", client_id=self.client_id,
                          error=type(exc).__name__, detail=str(exc),
                          old_token_valid_for=round(old.expires_at - now, 3))
        return old.token

    def _credentials_used(self) -> Secret | None:
        """The secret of the last token obtained, to report (retire = "when_unused")."""
        used = self._credentials if self._used is None else self._used
        return None if used is None else used.client_secret

    # -- the token policy, as effects --------------------------------------------------------

    def _ready(self, key: ScopeKey) -> _Fetch | None:
        """The request a refresh of ``key`` starts with when the flow would do nothing else
        first (no refusal to honour, credentials in hand, none to re-read), else None.

        A driver sends it itself and hands a token to :meth:`_obtained`, or the error to
        :meth:`_flow` as ``failed``: most refreshes are one request, and need no generator.
        """
        credentials = self._credentials
        if self._refusal is not None or credentials is None or self._reread:
            return None
        fetch = self._fetches.get(key)
        if fetch is None or fetch.credentials is not credentials:
            fetch = self._fetch_for(key, credentials)
        return fetch

    def _flow(self, key: ScopeKey,
              failed: tuple[Credentials, Exception] | None = None) -> _Flow:
        """Obtain a token for ``key``: retries, store re-reads and the PREVIOUS fallback.

        ``failed``: the driver already sent the first request (:meth:`_ready`) with these
        credentials, and it raised this; the flow goes on from there.
        """
        credentials, stage = self._credentials, "given" if self._store is None else "current"
        refusal = self._refusal
        tried: list[Credentials] = []  # a list: hashing a Secret costs a SHA-256
        if refusal is not None and (now := self._clock()) < refusal.retry_at:
            if self._store is None:
                raise self._still_refused(refusal, now)
            credentials = yield from self._read_current()  # cheap next to a token request
            if credentials in refusal.refused:
                raise self._still_refused(refusal, now)
            tried += refusal.refused  # a new secret: try it, but not the refused ones again
        elif credentials is None or self._reread:
            credentials = yield from self._read_current()
        first = len(tried)
        tried.append(credentials)
        failures = 0
        while True:
            fetch = self._fetches.get(key)
            if fetch is None or fetch.credentials is not credentials:
                fetch = self._fetch_for(key, credentials)
            sent_at = self._clock()
            try:
                if failed is not None:
                    sent, error = failed
                    failed = None
                    if sent is credentials:  # else another thread changed them meanwhile
                        raise error
                token: Token = yield fetch
            except TokenEndpointUnavailable as exc:
                failures += 1
                delay = self._policy.backoff(failures, self._random(), exc.retry_after)
                if delay is None:
                    raise self._gave_up(exc, failures) from exc
                self._log.warning("token_endpoint_retry", client_id=credentials.client_id,
                                  attempt=failures, delay=round(delay, 3), status=exc.status,
                                  retry_after=exc.retry_after)
                yield _Sleep(delay)
                continue
            except InvalidClient as exc:
                found = None
                if self._store is not None and len(tried) - first < 3:
                    found = yield from self._other_credentials(tried, exc)
                if found is None:
                    error = self._refused(exc, credentials.client_id, len(tried) - first)
                    self._record_refusal(tried, error)
                    raise error from exc
                credentials, stage = found
                tried.append(credentials)
                continue
            except (InvalidScope, UnauthorizedClient) as exc:
                raise type(exc)(
                    f"client {credentials.client_id}: {exc} (not retried: the IdP must change "
                    "what the client may request)", error=exc.error, status=exc.status,
                ) from exc
            except BadTokenResponse as exc:
                raise BadTokenResponse(f"client {credentials.client_id}: {exc}",
                                       error=exc.error, status=exc.status) from exc
            return self._obtained(key, credentials, stage, token, sent_at)

    def _obtained(self, key: ScopeKey, credentials: Credentials, stage: str, token: Token,
                  sent_at: float) -> _Entry:
        """The cache entry for ``token``, obtained with ``credentials`` (from ``stage``) by a
        request sent at ``sent_at``; logs ``token_obtained``."""
        policy = self._policy
        lifetime = policy.assumed_lifetime if token.expires_in is None else token.expires_in
        buffer = policy.buffer(lifetime)
        self._used = credentials
        if self._refusal is not None:
            with self._lock:
                self._refusal = None
        if self._given_logger or structlog.is_configured():
            log = self._fetch_log()
            if log is not None:
                log.debug("token_obtained", client_id=credentials.client_id, scopes=key,
                          expires_in=token.expires_in, credential=stage)
        return _Entry(token, sent_at + lifetime - buffer, sent_at + lifetime - buffer / 2)

    def _fetch_log(self) -> FilteringBoundLogger | None:
        """Where the per-fetch debug event goes: a logger given (it filters), else the logger
        bound under structlog's present configuration when that passes debug events, else
        None. Unconfigured structlog would print every event to stdout: the caller skips
        this then. Bound once per configuration: structlog's lazy logger binds on every call
        (about 10 µs), and a level check on it would bind too.
        """
        if self._given_logger:
            return self._log
        config = structlog.get_config()
        cached = self._fetch_logger
        if cached is not None and cached[0] == config:
            return cached[1]
        bound = self._log.bind()
        try:
            enabled = bound.is_enabled_for(_DEBUG)
        except AttributeError:  # structlog's generic BoundLogger over a logger without levels
            enabled = True
        log = bound if enabled else None
        self._fetch_logger = (config, log)  # one tuple: threads see both parts or neither
        return log

    def _read_current(self) -> Generator[_Effect, Any, Credentials]:
        stored: StoredCredentials | None = yield _Read(Stage.CURRENT)
        if stored is None:
            raise StoreNotFound(f"store {self._store_name()!r} holds no credentials at "
                                f"{self._location!r}")
        self._credentials = stored.credentials
        return stored.credentials

    def _other_credentials(
        self, tried: list[Credentials], refused: InvalidClient
    ) -> Generator[_Effect, Any, tuple[Credentials, str] | None]:
        """A credential not yet tried: CURRENT re-read from the store, else PREVIOUS."""
        for stage in (Stage.CURRENT, Stage.PREVIOUS):
            try:
                stored: StoredCredentials | None = yield _Read(stage)
            except StoreError as exc:
                raise InvalidClient(
                    f"{refused}; re-reading store {self._store_name()!r} failed: {exc}",
                    error=refused.error, status=refused.status,
                ) from exc
            if stored is not None and stored.credentials not in tried:
                if stage is Stage.CURRENT:
                    self._credentials = stored.credentials
                self._log.info("credentials_reread", client_id=stored.credentials.client_id,
                               stage=stage.value, store=self._store_name())
                return stored.credentials, stage.value
        return None

    def _record_refusal(self, tried: list[Credentials], error: InvalidClient) -> None:
        with self._lock:
            refusals = 1 if self._refusal is None else self._refusal.refusals + 1
            delay = self._policy.refused_backoff(refusals, self._random())
            # Keep the last few: a store that keeps changing to bad secrets stays cheap to check.
            self._refusal = _Refusal(tuple(tried[-8:]), error, refusals, self._clock() + delay)
        self._log.warning("credentials_refused", client_id=tried[-1].client_id,
                          refusals=refusals, retry_in=round(delay, 3))

    def _still_refused(self, refusal: _Refusal, now: float) -> InvalidClient:
        wait = f"{refusal.retry_at - now:.1f} s"
        why = (f"not asked again for {wait}" if self._store is None else
               f"the store still holds a refused secret; not asked again for {wait} unless "
               "it changes")
        return InvalidClient(f"{refusal.error} ({why})", error=refusal.error.error,
                             status=refusal.error.status)

    def _store_name(self) -> str:
        return getattr(self._store, "name", "?")

    def _refused(self, exc: InvalidClient, client_id: str, tried: int) -> InvalidClient:
        where = ("the credentials were given directly" if self._store is None else
                 f"tried {tried} secret(s) from store {self._store_name()!r}, none other there")
        return InvalidClient(f"client {client_id}: {exc} ({where})",
                             error=exc.error, status=exc.status)

    def _gave_up(self, exc: TokenEndpointUnavailable, failures: int) -> TokenEndpointUnavailable:
        if exc.retry_after is not None and exc.retry_after > self._policy.max_delay:
            why = (f"it asked to retry after {exc.retry_after:.0f} s, longer than max_delay "
                   f"{self._policy.max_delay:g} s")
        else:
            why = f"gave up after {failures} attempt(s)"
        return TokenEndpointUnavailable(
            f"client {self.client_id}: {exc} ({why})", error=exc.error, status=exc.status,
            retry_after=exc.retry_after,
        )
