"""The admin API client of a self-hosted identity provider (Hydra, Glewlwyd).

:class:`AdminApi` opens its ``httpx.Client`` in ``start()`` and closes it in ``close()``;
a request before ``start()`` raises :class:`~rotator.errors.IdentityProviderError`, and a
transport failure (timeout, refused connection, TLS) becomes
:class:`~rotator.errors.IdpUnavailable` with any secret redacted. What a status code means
is the adapter's to say.
"""

from __future__ import annotations

from typing import Any

import httpx

from rotator import _bounded as bounded
from rotator.errors import IdentityProviderError, IdpUnavailable
from rotator.secrets import redact


class AdminApi:
    """One IdP's admin API: ``what`` names it in errors (``Hydra 'h'``), ``url`` is shown
    with transport failures, ``base_url`` is where request paths start."""

    def __init__(self, what: str, url: str, *, base_url: str, timeout: float,
                 verify: bool | str, transport: httpx.BaseTransport | None) -> None:
        self._what = what
        self._url = url
        self._base_url = base_url
        self._timeout = timeout
        self._verify = verify
        self._transport = transport
        self._http: httpx.Client | None = None

    def start(self) -> None:
        self._http = bounded.client(base_url=self._base_url, timeout=self._timeout,
                                    verify=self._verify, transport=self._transport,
                                    trust_env=False)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; ``IdentityProviderError`` before ``start()``, ``IdpUnavailable``
        when it does not get an answer."""
        if self._http is None:
            raise IdentityProviderError(f"{self._what} is not started")
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
            raise IdpUnavailable(f"{self._what} at {self._url} {kind}: "
                                 f"{redact(str(exc)) or type(exc).__name__}") from None
