"""A token cache for services that call APIs with client credentials, and survive rotation.

A service asks :class:`TokenClient` (threads) or
:class:`~rotator.client.asyncio.AsyncTokenClient` (asyncio; also importable from
``rotator.client_async``) for a token, or lets :class:`ClientCredentialsAuth` put one on
every request of an ``httpx`` client. Tokens are requested and parsed as
:func:`rotator.token.request_token` does (its headers and form built once per credentials);
this package decides when to ask and what to do when asking fails.

Reuse and refresh
    A token is cached per scope set and handed out until its *refresh point*: its lifetime
    (``expires_in``, measured from just before the request was sent) minus a buffer of
    ``min(max_buffer, buffer_ratio * lifetime)``, by default ``min(300 s, 10 %)``: a one-hour
    token is refreshed 5 minutes early, a 60-second token 6 seconds early. From the refresh
    point one caller fetches a new token while the others keep using the old one; the old one
    is no longer handed out once only half the buffer remains. A token without
    ``expires_in`` is assumed to live ``assumed_lifetime`` (300 s).
Single flight
    Callers that need a new token at the same time wait for one request.
Retries
    ``TokenEndpointUnavailable`` (5xx, 429, timeouts) is retried up to ``max_attempts``
    requests in all, after ``random() * min(max_delay, base_delay * 2 ** (n - 1))`` seconds
    (exponential backoff, full jitter), never sooner than ``Retry-After``; a ``Retry-After``
    longer than ``max_delay`` ends the retries at once. ``InvalidScope``,
    ``UnauthorizedClient`` and ``BadTokenResponse`` are raised at once: waiting cannot fix them.
Rotation
    With credentials read from a :class:`~rotator.interfaces.SecretStore`, an
    ``InvalidClient`` makes the client re-read CURRENT and retry once with a secret it has
    not tried; if there is none it tries PREVIOUS, which rotator keeps in the store exactly
    while the old secret's grace period lasts. Credentials given directly are never re-read.
Refused secrets
    When every secret in reach was refused (the IdP already has a new secret the store does
    not hold yet), no token request is sent with those secrets again for
    ``refused_base_delay`` seconds, doubling per refusal up to ``refused_max_delay``, each
    delay jittered to between half and all of it. Meanwhile each call re-reads CURRENT from
    the store and fails at once while it holds a refused secret; a secret not refused before
    is tried at once. So a stale store costs a few token requests per backoff period, not a
    few per call, and the first call after the store is updated recovers.

No secret and no access token reaches a log event or an exception message; events carry the
client id, the scopes and the stage of the credential used.

Errors raised by :meth:`TokenClient.token`: the :class:`~rotator.errors.VerificationError`
subclasses of :mod:`rotator.token`, each prefixed with the client id, and ``StoreError`` when
the credentials cannot be read in the first place.

The package: :mod:`~rotator.client.policy` (the cache and the token policy, shared),
:mod:`~rotator.client.sync` (threads), :mod:`~rotator.client.asyncio` (imported only when
used: ``import rotator`` does not load asyncio) and :mod:`~rotator.client.auth`
(``httpx.Auth``).
"""

from __future__ import annotations

from rotator.client.auth import AsyncTokenSource as AsyncTokenSource
from rotator.client.auth import ClientCredentialsAuth
from rotator.client.policy import CachePolicy
from rotator.client.policy import Clock as Clock
from rotator.client.policy import Random as Random
from rotator.client.policy import ScopeKey as ScopeKey
from rotator.client.sync import TokenClient

__all__ = ["CachePolicy", "ClientCredentialsAuth", "TokenClient"]
