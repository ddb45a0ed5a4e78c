"""``httpx`` authentication with cached client-credentials tokens, sync and asyncio."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable
from typing import Protocol

import httpx
import structlog
from structlog.typing import FilteringBoundLogger

from rotator.client.policy import _scope_key
from rotator.client.sync import TokenClient
from rotator.token import Token

__all__ = ["AsyncTokenSource", "ClientCredentialsAuth"]

class AsyncTokenSource(Protocol):
    """What :class:`ClientCredentialsAuth` needs from an asyncio token client."""

    async def token(self, scopes: Iterable[str] | None = None) -> Token: ...

    def invalidate(self, token: Token) -> None: ...


def _authorized(request: httpx.Request, token: Token) -> httpx.Request:
    request.headers["Authorization"] = "Bearer " + token.access_token.reveal()
    return request


class ClientCredentialsAuth(httpx.Auth):
    """``httpx`` authentication with cached client-credentials tokens.

    ``httpx.Client(auth=ClientCredentialsAuth(token_client))`` with a :class:`TokenClient`,
    ``httpx.AsyncClient(auth=...)`` with an ``AsyncTokenClient``. When the resource server
    answers 401, the token is dropped from the cache and the request is sent once more with a
    new token; a second 401 is returned to the caller. Token errors propagate from the
    request as ``VerificationError`` subclasses.
    """

    # A request is sent twice after a 401: read a streamed body first so it can be replayed.
    requires_request_body = True

    def __init__(self, tokens: TokenClient | AsyncTokenSource,
                 scopes: Iterable[str] | None = None) -> None:
        self._tokens = tokens
        self._scopes = None if scopes is None else _scope_key(scopes)
        self._log: FilteringBoundLogger = structlog.get_logger("rotator.client")

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                                   None]:
        tokens = self._tokens
        if not isinstance(tokens, TokenClient):
            raise TypeError("ClientCredentialsAuth holds an asyncio token client: use it with "
                            "httpx.AsyncClient, or give it a TokenClient")
        request.read()
        token = tokens.token(self._scopes)
        response = yield _authorized(request, token)
        if response.status_code == 401:
            self._log.info("token_rejected_by_resource", host=request.url.host)
            tokens.invalidate(token)
            yield _authorized(request, tokens.token(self._scopes))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request,
                                                                               httpx.Response]:
        tokens = self._tokens
        if isinstance(tokens, TokenClient):
            raise TypeError("ClientCredentialsAuth holds a TokenClient: use it with "
                            "httpx.Client, or give it an AsyncTokenClient")
        await request.aread()
        token = await tokens.token(self._scopes)
        response = yield _authorized(request, token)
        if response.status_code == 401:
            self._log.info("token_rejected_by_resource", host=request.url.host)
            tokens.invalidate(token)
            yield _authorized(request, await tokens.token(self._scopes))
