"""A fake Auth0 tenant: the Management API's client endpoints, ``/oauth/token`` and its limits.

Built from Auth0's documentation (read in November 2026):

- Rotate a client secret, https://auth0.com/docs/api/management/v2/clients/post-rotate-secret
  (``POST /api/v2/clients/{id}/rotate-secret``, scope ``update:client_keys``, refused for
  clients authenticating with ``private_key_jwt``; answers the client with its new
  ``client_secret``) and https://auth0.com/docs/get-started/applications/rotate-client-secret
  (https://auth0.com/docs/applications/rotate-client-secret): the old secret stops working,
  and "new secrets may be delayed up to thirty seconds while rotating". ``propagation_delay``
  makes a new secret work only that many seconds after it was set (short in tests).
- Update a client, https://auth0.com/docs/api/management/v2/clients/patch-clients-by-id:
  ``PATCH /api/v2/clients/{id}`` with ``client_secret`` (``update:clients``, and
  ``update:client_keys`` for the secret); get a client, ``GET /api/v2/clients/{id}``
  (``read:clients``; ``client_secret`` only with ``read:client_keys``).
- Management API tokens, https://auth0.com/docs/secure/tokens/access-tokens/management-api-access-tokens:
  client credentials at ``https://{tenant}/oauth/token`` with ``audience``
  ``https://{tenant}/api/v2/``; the token carries the scopes granted to that client.
  A wrong secret answers 401 ``access_denied`` "Unauthorized".
- Errors: ``{"statusCode", "error", "message", "errorCode"}``, e.g. 403 ``insufficient_scope``
  "Insufficient scope, expected any of: update:client_keys", 404 ``inexistent_client``, 401
  "Invalid token".
- Rate limits, https://auth0.com/docs/troubleshoot/customer-support/operational-policies/rate-limit-policy
  and https://auth0.com/blog/why-getting-429s-and-how-to-stop-them: every answer carries
  ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (UTC epoch
  seconds); over budget: 429 ``too_many_requests``.

The tenant's domain is the fake's ``127.0.0.1:port``; its Management API audience is
``{url}/api/v2/``.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes._common import RateBudget, read_form
from fakes.asgi_thread import ServedApp

READ_CLIENTS, UPDATE_CLIENTS = "read:clients", "update:clients"
READ_KEYS, UPDATE_KEYS = "read:client_keys", "update:client_keys"
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests"}


def auth0_error(status: int, message: str, code: str | None = None,
                headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"statusCode": status, "error": _REASONS[status], "message": message}
    if code:
        body["errorCode"] = code
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class Client:
    client_id: str
    secret: str
    #: When the current secret starts to work at /oauth/token (monotonic seconds).
    works_from: float = 0.0
    auth_method: str = "client_secret_post"
    private_key_jwt: bool = False
    #: Scopes granted to this client for the Management API audience.
    management_scopes: frozenset[str] = frozenset()
    #: False: a new secret never starts working (a verification that cannot succeed).
    propagates: bool = True

    def body(self, *, reveal: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"client_id": self.client_id, "tenant": "fake", "name": "svc",
                               "app_type": "non_interactive", "is_first_party": True,
                               "token_endpoint_auth_method": self.auth_method,
                               "grant_types": ["client_credentials"]}
        if self.private_key_jwt:
            out["client_authentication_methods"] = {"private_key_jwt": {"credentials": [
                {"id": "cred_" + secrets.token_hex(8)}]}}
        if reveal:
            out["client_secret"] = self.secret
        return out


@dataclass
class _Token:
    client_id: str
    scopes: frozenset[str]
    expires: float


@dataclass
class FakeAuth0:
    """An Auth0 tenant's state and its ASGI app."""

    rate_limit: int | None = None
    window: float = 60.0
    #: Seconds a new secret takes to work at /oauth/token.
    propagation_delay: float = 0.0
    #: Lifetime of Management API tokens (``expires_in``).
    token_lifetime: int = 86400
    clients: dict[str, Client] = field(default_factory=dict)
    #: Management API token requests answered (tests count them).
    management_tokens: int = 0
    #: Token requests refused for a wrong or not yet propagated secret.
    refused_tokens: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.budget = RateBudget(self.rate_limit, self.window)
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._server = ServedApp(self._app())
        self.url = self._server.url
        self.audience = f"{self.url}/api/v2/"

    def __enter__(self) -> FakeAuth0:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    # -- test helpers ----------------------------------------------------------------------

    def create_client(self, *, private_key_jwt: bool = False, propagates: bool = True,
                      management_scopes: tuple[str, ...] = ()) -> tuple[str, str]:
        """A new machine-to-machine application; returns (client_id, secret)."""
        client = Client(secrets.token_urlsafe(24).replace("-", "a").replace("_", "b")[:32],
                        secrets.token_urlsafe(48), private_key_jwt=private_key_jwt,
                        propagates=propagates, management_scopes=frozenset(management_scopes))
        with self._lock:
            self.clients[client.client_id] = client
        return client.client_id, client.secret

    def admin_client(self, scopes: tuple[str, ...] = (READ_CLIENTS, UPDATE_KEYS)
                     ) -> tuple[str, str]:
        """A client authorized for the Management API with ``scopes``."""
        return self.create_client(management_scopes=scopes)

    def works(self, client_id: str, secret: str) -> bool:
        """Whether (client_id, secret) authenticates at /oauth/token right now."""
        client = self.clients.get(client_id)
        return (client is not None and client.secret == secret and client.propagates
                and time.monotonic() >= client.works_from)

    def expire_tokens(self) -> None:
        """Every Management API token issued so far stops working."""
        self._tokens.clear()

    # -- the app -----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(routes=[
            Route("/oauth/token", self._token, methods=["POST"]),
            Route("/api/v2/clients/{id}", self._get_client, methods=["GET"]),
            Route("/api/v2/clients/{id}", self._patch_client, methods=["PATCH"]),
            Route("/api/v2/clients/{id}/rotate-secret", self._rotate, methods=["POST"]),
        ])

    def _budget(self) -> tuple[bool, dict[str, str]]:
        allowed, limit, remaining, reset = self.budget.take()
        return allowed, {"x-ratelimit-limit": str(limit),
                         "x-ratelimit-remaining": str(remaining),
                         "x-ratelimit-reset": str(reset)}

    def _admin(self, request: Request, scopes: tuple[str, ...]
               ) -> tuple[JSONResponse | None, dict[str, str], Client | None]:
        """(refusal or None, rate-limit headers, the client addressed) for a Management call
        needing every one of ``scopes``."""
        self.requests.append((request.method, request.url.path))
        allowed, headers = self._budget()
        if not allowed:
            return auth0_error(429, "Global limit has been reached", "too_many_requests",
                               headers), headers, None
        kind, _, value = request.headers.get("Authorization", "").partition(" ")
        token = self._tokens.get(value) if kind.lower() == "bearer" else None
        if token is None or token.expires < time.monotonic():
            return auth0_error(401, "Invalid token", None, headers), headers, None
        for scope in scopes:
            if scope not in token.scopes:
                return auth0_error(403, f"Insufficient scope, expected any of: {scope}",
                                   "insufficient_scope", headers), headers, None
        client = self.clients.get(unquote(request.path_params["id"]))
        if client is None:
            return auth0_error(404, "The client does not exist", "inexistent_client",
                               headers), headers, None
        return None, headers, client

    async def _get_client(self, request: Request) -> Response:
        refused, headers, client = self._admin(request, (READ_CLIENTS,))
        if refused or client is None:
            return refused or Response(status_code=500)
        token = self._tokens[request.headers["Authorization"].partition(" ")[2]]
        return JSONResponse(client.body(reveal=READ_KEYS in token.scopes), headers=headers)

    def _set_secret(self, client: Client, value: str) -> None:
        client.secret = value
        client.works_from = time.monotonic() + self.propagation_delay

    async def _patch_client(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return auth0_error(400, "Payload validation error: 'Invalid JSON'",
                               "invalid_body")
        scopes = (UPDATE_KEYS,) if "client_secret" in body else (UPDATE_CLIENTS,)
        refused, headers, client = self._admin(request, scopes)
        if refused or client is None:
            return refused or Response(status_code=500)
        value = body.get("client_secret")
        if value is not None:
            if not isinstance(value, str) or not value:
                return auth0_error(400, "Payload validation error: 'Expected type string but "
                                   "found type null' on property client_secret.",
                                   "invalid_body", headers)
            with self._lock:
                self._set_secret(client, value)
        return JSONResponse(client.body(reveal=True), headers=headers)

    async def _rotate(self, request: Request) -> Response:
        refused, headers, client = self._admin(request, (UPDATE_KEYS,))
        if refused or client is None:
            return refused or Response(status_code=500)
        if client.private_key_jwt:
            return auth0_error(400, "Cannot rotate the secret of a client configured with "
                               "Private Key JWT authentication method.",
                               "operation_not_supported", headers)
        with self._lock:
            self._set_secret(client, secrets.token_urlsafe(48))
        return JSONResponse(client.body(reveal=True), headers=headers)

    async def _token(self, request: Request) -> Response:
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                raw = await request.json()
            except ValueError:
                raw = None
            form = {k: str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        else:
            form = await read_form(request)
        headers: dict[str, str] = {}  # the Authentication API has budgets of its own
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type",
                                 "error_description": "Unsupported grant type"},
                                status_code=403, headers=headers)
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            pair = base64.b64decode(auth[6:]).decode(errors="replace")
            client_id, _, secret = pair.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        if not self.works(client_id, secret):
            with self._lock:
                self.refused_tokens += 1
            return JSONResponse({"error": "access_denied", "error_description": "Unauthorized"},
                                status_code=401, headers=headers)
        audience = form.get("audience")
        if not audience:
            return JSONResponse({"error": "access_denied", "error_description":
                                 "No audience parameter was provided, and no default audience "
                                 "has been configured"}, status_code=403, headers=headers)
        client = self.clients[client_id]
        if audience == self.audience:
            if not client.management_scopes:
                return JSONResponse({"error": "access_denied", "error_description":
                                     f'Client is not authorized to access "{self.audience}". '
                                     "You need to create a \"client-grant\" associated to this "
                                     "API."}, status_code=403, headers=headers)
            token = secrets.token_urlsafe(32)
            with self._lock:
                self.management_tokens += 1
                self._tokens[token] = _Token(client_id, client.management_scopes,
                                             time.monotonic() + self.token_lifetime)
            return JSONResponse({"access_token": token, "token_type": "Bearer",
                                 "expires_in": self.token_lifetime,
                                 "scope": " ".join(sorted(client.management_scopes))},
                                headers=headers)
        return JSONResponse({"access_token": secrets.token_urlsafe(32), "token_type": "Bearer",
                             "expires_in": 86400}, headers=headers)
