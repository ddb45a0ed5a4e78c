"""The admin API client of a self-hosted identity provider (Hydra, Glewlwyd).

:class:`AdminApi` opens its ``httpx.Client`` in ``start()`` and closes it in ``close()``;
a request before ``start()`` raises :class:`~rotator.errors.IdentityProviderError`, and a
transport failure (timeout, refused connection, TLS) becomes
:class:`~rotator.errors.IdpUnavailable` with any secret redacted. :meth:`AdminApi.call` also
maps an unexpected status: 401/403 to :class:`~rotator.errors.IdpAccessDenied`, 404 to
:class:`~rotator.errors.IdpNotFound`, 429 and 5xx to ``IdpUnavailable``, anything else to
``IdentityProviderError``, each quoting the IdP's error text.
"""

from __future__ import annotations

from typing import Any

import httpx

from rotator import _bounded as bounded
from rotator._remote import error_text
from rotator.errors import IdentityProviderError, IdpAccessDenied, IdpNotFound, IdpUnavailable
from rotator.secrets import redact


class AdminApi:
    """One IdP's admin API: ``what`` names it in errors (``Hydra 'h'``), ``url`` is shown
    with transport failures, ``base_url`` is where request paths start, ``error_fields`` are
    the fields of its JSON error bodies worth quoting."""

    def __init__(self, what: str, url: str, *, base_url: str, timeout: float,
                 verify: bool | str, transport: httpx.BaseTransport | None,
                 error_fields: tuple[str, ...]) -> None:
        self._what = what
        self._error_fields = error_fields
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

    def call(self, method: str, path: str, *, ok: tuple[int, ...], refused: str,
             **kwargs: Any) -> httpx.Response:
        """Send one request and return the answer if its status is in ``ok``; else raise what
        the status means. ``refused`` ends the message of a 401 or 403: what to check."""
        response = self.request(method, path, **kwargs)
        status = response.status_code
        if status in ok:
            return response
        where = f"{self._what}: {method} {path}"
        if status in (401, 403):
            raise IdpAccessDenied(f"{where} was refused (HTTP {status}); {refused}")
        text = error_text(response, self._error_fields)
        if status == 404:
            raise IdpNotFound(f"{self._what}: {path} not found: {text}")
        if status >= 500 or status == 429:
            raise IdpUnavailable(f"{where} answered HTTP {status}: {text}")
        raise IdentityProviderError(f"{where} answered HTTP {status}: {text}")
