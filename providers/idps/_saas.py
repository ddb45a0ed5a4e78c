"""HTTP for SaaS admin APIs (Okta, Auth0, Entra ID): rate limits and admin tokens.

:class:`RateLimitedHttp` sends a request and honours the vendor's budget: when a response
says none of the window is left (``…-Remaining: 0``) the next request waits for the window's
reset, and a 429 is retried after ``Retry-After`` or the reset time, as long as that wait is
at most ``max_wait`` seconds. A longer wait raises :class:`~rotator.errors.IdpRateLimited`
carrying ``retry_after``, which the daemon honours by pausing the IdP. Transport errors
become :class:`~rotator.errors.IdpUnavailable`; every other status is the caller's to map.

:class:`SaasAdminHttp` holds one adapter's :class:`RateLimitedHttp` from ``start()`` to
``close()``. :func:`admin_token` reads the admin token out of a token endpoint's answer and
says until when it may be cached; :class:`AdminToken` caches it and sends an admin request
again with a new one after a 401.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from rotator import _bounded as bounded
from rotator.errors import IdentityProviderError, IdpRateLimited, IdpUnavailable
from rotator.secrets import Secret, redact

#: How many 429 answers in a row one request rides out before giving up.
MAX_THROTTLED_ATTEMPTS = 6
#: An admin token is dropped from the cache this long before it expires.
TOKEN_MARGIN = 60.0
#: The lifetime assumed for an admin token whose answer gives no usable ``expires_in``.
DEFAULT_TOKEN_LIFETIME = 300


def admin_token(body: Mapping[str, Any] | None, what: str) -> tuple[Secret, float]:
    """The access token in a client-credentials answer and the ``time.monotonic()`` until
    which it may be cached: ``expires_in`` (else 300 s) less a minute, at least 5 s.

    ``what`` names the endpoint in the :class:`~rotator.errors.IdpUnavailable` raised when
    the answer has no ``access_token``.
    """
    token = body.get("access_token") if body else None
    if not isinstance(token, str) or not token:
        raise IdpUnavailable(f"{what} answered without an access_token")
    lifetime = body.get("expires_in", DEFAULT_TOKEN_LIFETIME) if body else \
        DEFAULT_TOKEN_LIFETIME
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
        lifetime = DEFAULT_TOKEN_LIFETIME
    return Secret(token), time.monotonic() + max(float(lifetime) - TOKEN_MARGIN, 5)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The JSON object a response carries, or None (no JSON, or JSON that is not an object)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class AdminToken:
    """An adapter's cached admin access token. ``sign_in`` gets a new one and says until when
    it may be cached (what :func:`admin_token` returns); one sign-in at a time."""

    def __init__(self, sign_in: Callable[[], tuple[Secret, float]]) -> None:
        self._sign_in = sign_in
        self._lock = threading.Lock()
        self._token: Secret | None = None
        self._expiry = 0.0

    def get(self) -> Secret:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expiry:
                self._token, self._expiry = self._sign_in()
            return self._token

    def send(self, request: Callable[[Secret], httpx.Response]) -> httpx.Response:
        """``request(token)``; after a 401 (the token expired or was revoked early) it is
        forgotten and the request sent once more with a new one. The last answer."""
        token = self.get()
        response = request(token)
        if response.status_code != 401:
            return response
        with self._lock:
            if self._token is token:
                self._token = None
        return request(self.get())


class RateLimitedHttp:
    """An ``httpx.Client`` for one vendor's admin API that waits as the vendor's headers ask.

    ``prefix`` is the vendor's header prefix: ``X-Rate-Limit-`` (Okta), ``X-RateLimit-``
    (Auth0); the headers ``Limit``, ``Remaining`` and ``Reset`` (UTC epoch seconds) follow.
    """

    def __init__(self, what: str, http: httpx.Client, *, prefix: str, max_wait: float,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self._what = what
        self._http = http
        self._prefix = prefix
        self._max_wait = max_wait
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._not_before = 0.0  # epoch seconds: the window is spent until then
        #: How often a request waited for the budget (tests count these).
        self.waits = 0

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                json: Any = None, data: Mapping[str, str] | None = None,
                params: Mapping[str, str] | None = None,
                auth: tuple[str, str] | None = None) -> httpx.Response:
        """Send, waiting for the budget; ``IdpUnavailable`` or ``IdpRateLimited`` on failure."""
        for _attempt in range(MAX_THROTTLED_ATTEMPTS):
            self._wait_for_window()
            try:
                response = self._http.request(method, url, headers=headers, json=json,
                                              data=data, params=params,
                                              auth=httpx.BasicAuth(*auth) if auth else None)
            except httpx.HTTPError as exc:
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else \
                    "is unreachable"
                raise IdpUnavailable(f"{self._what} {kind}: "
                                     f"{redact(str(exc)) or type(exc).__name__}") from None
            self._learn(response)
            if response.status_code != 429:
                return response
            wait = self._retry_after(response)
            if wait > self._max_wait:
                raise IdpRateLimited(
                    f"{self._what}: rate limit reached (HTTP 429); the window resets in "
                    f"{wait:.0f} s, longer than max_rate_limit_wait", retry_after=wait)
            with self._lock:
                self._not_before = max(self._not_before, self._clock() + wait)
        raise IdpRateLimited(f"{self._what}: still rate limited (HTTP 429) after "
                             f"{MAX_THROTTLED_ATTEMPTS} waits", retry_after=self._max_wait)

    def _wait_for_window(self) -> None:
        with self._lock:
            wait = self._not_before - self._clock()
        if wait > 0:
            self.waits += 1
            self._sleep(min(wait, self._max_wait))

    def _header(self, response: httpx.Response, name: str) -> float | None:
        raw = response.headers.get(self._prefix + name)
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    def _learn(self, response: httpx.Response) -> None:
        """A spent window (``Remaining: 0``) holds the next request until its reset."""
        remaining, reset = self._header(response, "Remaining"), self._header(response, "Reset")
        if remaining is not None and remaining <= 0 and reset is not None:
            with self._lock:
                # A reset beyond max_wait is left to the 429 that follows, which says so.
                until = min(reset, self._clock() + self._max_wait)
                self._not_before = max(self._not_before, until)

    def _retry_after(self, response: httpx.Response) -> float:
        """Seconds to wait after a 429: ``Retry-After``, else the reset time, else 1 s."""
        raw = response.headers.get("Retry-After")
        if raw is not None:
            try:
                return max(0.0, float(raw))
            except ValueError:
                pass
        reset = self._header(response, "Reset")
        if reset is not None:
            # Epoch seconds have a one-second resolution: wait into the next second.
            return max(0.0, reset - self._clock()) + 0.05
        return 1.0


class SaasAdminHttp:
    """The :class:`RateLimitedHttp` of one adapter (``what``: ``Okta 'o'``) at ``url``,
    opened by ``start()`` and closed by ``close()``; a request outside them raises
    :class:`~rotator.errors.IdentityProviderError`."""

    def __init__(self, what: str, url: str, *, prefix: str, max_wait: float, timeout: float,
                 verify: bool | str, transport: httpx.BaseTransport | None) -> None:
        self._what = what
        self._url = url
        self._prefix = prefix
        self._max_wait = max_wait
        self._timeout = timeout
        self._verify = verify
        self._transport = transport
        self._http: RateLimitedHttp | None = None

    def start(self) -> None:
        client = bounded.client(base_url=self._url, timeout=self._timeout, verify=self._verify,
                                transport=self._transport, trust_env=False)
        self._http = RateLimitedHttp(f"{self._what} at {self._url}", client,
                                     prefix=self._prefix, max_wait=self._max_wait)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """:meth:`RateLimitedHttp.request`, once started."""
        if self._http is None:
            raise IdentityProviderError(f"{self._what} is not started")
        return self._http.request(method, url, **kwargs)
