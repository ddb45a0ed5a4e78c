"""Verification: does a credential obtain a token as its client must.

The token-endpoint client comes from an :data:`HttpFactory`; :func:`default_http` keeps
TLS verification on unless a client turns it off.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import httpx
import structlog

from rotator import _bounded as bounded
from rotator.config import ClientConfig
from rotator.errors import InvalidScope, RotationError, UnauthorizedClient, VerificationError
from rotator.interfaces import Credentials, IdentityProvider
from rotator.token import Token, TokenRequest, request_token

log = structlog.get_logger("rotator.engine")

HttpFactory = Callable[[ClientConfig], httpx.Client]


def default_http(client: ClientConfig) -> httpx.Client:
    """An httpx client for the token endpoint, TLS verification on unless turned off.

    Each token request ends within ``verify_timeout`` seconds in all, its answer bounded.
    """
    return bounded.client(timeout=client.verify_timeout, verify=client.tls_verify)


def verify_credentials(
    client: ClientConfig, creds: Credentials, idp: IdentityProvider, *, attempts: int,
    patience: float = 0.0, http_factory: HttpFactory = default_http,
    sleep: Callable[[float], None] = time.sleep, http: httpx.Client | None = None,
) -> Token:
    """Obtain a token with ``creds`` as ``client`` must, retrying up to ``attempts`` times.

    Retries ride out propagation delay and a busy token endpoint (backoff from 0.5 s,
    doubling, capped at 8 s); they go on past ``attempts`` until ``patience`` seconds were
    waited, so an IdP that declares a propagation delay gets at least that long.
    ``invalid_scope`` and ``unauthorized_client`` are raised at once because waiting does not
    change what a client may do. ``http``, if given, is used (and left open) instead of a
    client made by ``http_factory`` for this call. Raises
    :class:`~rotator.errors.VerificationError` or ``RotationError`` (no token endpoint).
    """
    endpoint = client.token_endpoint or idp.default_token_endpoint()
    if not endpoint:
        raise RotationError(f"client {client.name} has no token_endpoint and IdP "
                            f"{client.idp!r} cannot tell it")
    req = TokenRequest(endpoint, client.auth_method, client.scopes, client.audience,
                       client.resource)
    delay, waited, attempt = 0.5, 0.0, 0
    with contextlib.nullcontext(http) if http is not None else http_factory(client) as http:
        while True:
            attempt += 1
            try:
                return request_token(http, req, creds)
            except (InvalidScope, UnauthorizedClient):
                raise
            except VerificationError as exc:
                if attempt >= attempts and waited >= patience:
                    raise
                log.debug("verification_retry", attempt=attempt, error=str(exc))
                sleep(delay)
                waited += delay
                delay = min(delay * 2, 8.0)
