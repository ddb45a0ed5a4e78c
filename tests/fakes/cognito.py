"""A fake Amazon Cognito user pool: the client-secret API calls and the domain's token endpoint.

moto 5.2.5 implements neither ``AddUserPoolClientSecret``, ``ListUserPoolClientSecrets``,
``DeleteUserPoolClientSecret`` nor a token endpoint, so this fake serves them, built from
AWS's documentation:

- https://docs.aws.amazon.com/cognito-user-identity-pools/latest/APIReference/API_AddUserPoolClientSecret.html
  (up to 2 active secrets per app client; ``ClientSecret`` optional, 24-64 characters,
  pattern ``[\\w+]+``; ``ClientSecretValue`` returned only when Cognito generated it)
- https://docs.aws.amazon.com/cognito-user-identity-pools/latest/APIReference/API_ListUserPoolClientSecrets.html
  (``ClientSecretId`` and ``ClientSecretCreateDate`` only, never the value; no pagination)
- https://docs.aws.amazon.com/cognito-user-identity-pools/latest/APIReference/API_DeleteUserPoolClientSecret.html
- https://docs.aws.amazon.com/cognito-user-identity-pools/latest/APIReference/API_ClientSecretDescriptorType.html
  (id format ``<client-id>--<epoch-create-time>``)
- https://docs.aws.amazon.com/cognito-user-identity-pools/latest/APIReference/CommonErrors.html
  and each action's Errors section (``InvalidParameterException``, ``LimitExceededException``,
  ``NotAuthorizedException``, ``ResourceNotFoundException``, ``TooManyRequestsException``,
  ``InternalErrorException``; JSON body ``{"__type", "message"}``)
- https://docs.aws.amazon.com/cognito/latest/developerguide/token-endpoint.html
  (``POST /oauth2/token`` on the user pool domain, ``client_credentials`` with HTTP Basic
  or ``client_secret`` in the body; errors ``invalid_client``, ``invalid_request``,
  ``unauthorized_client``, ``invalid_scope`` with HTTP 400)
- AWS JSON 1.1 protocol: ``POST /``, ``Content-Type: application/x-amz-json-1.1``,
  ``X-Amz-Target: AWSCognitoIdentityProviderService.<Operation>``, SigV4 ``Authorization``
  (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html).

The SigV4 header is parsed (access key, scope, signed headers) but the signature is not
recomputed. IAM is modelled per access key as a set of allowed ``cognito-idp:<Operation>``
actions; a refused one answers ``AccessDeniedException``. Where a deletion would leave a
client without secrets the fake answers ``InvalidParameterException`` (the docs say the
last secret cannot be deleted, not which error says so).

Knobs for tests: ``throttle(budget, window)`` (``TooManyRequestsException`` past ``budget``
calls per ``window`` seconds), ``propagation_delay``, ``clock``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes.asgi_thread import ServedFake

TARGET_PREFIX = "AWSCognitoIdentityProviderService."
OPERATIONS = ("AddUserPoolClientSecret", "ListUserPoolClientSecrets",
              "DeleteUserPoolClientSecret")
_SECRET = re.compile(r"[\w+]+")
_CLIENT_ID = re.compile(r"[\w+]+")
_POOL_ID = re.compile(r"[\w-]+_[0-9a-zA-Z]+")
_SIGV4 = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/"
                    r"(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, ?"
                    r"SignedHeaders=(?P<signed>[^,]+), ?Signature=(?P<sig>[0-9a-f]{64})$")


@dataclass
class ClientSecret:
    secret_id: str
    value: str
    created: float  # epoch seconds
    added_at: float  # fake clock, for the propagation delay


@dataclass
class AppClient:
    client_id: str
    secrets: list[ClientSecret] = field(default_factory=list)


def _error(kind: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"__type": kind, "message": message}, status_code=status,
                        media_type="application/x-amz-json-1.1")


class FakeCognito(ServedFake):
    """User pools with app clients, IAM per access key, and the domain's token endpoint."""

    def __init__(self, region: str = "eu-west-1", *, propagation_delay: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.region = region
        self.pools: dict[str, dict[str, AppClient]] = {}
        #: access key id -> allowed operations
        self.access_keys: dict[str, set[str]] = {}
        self.propagation_delay = propagation_delay
        self.clock = clock
        self.calls: list[str] = []
        self.signed: list[dict[str, str]] = []
        self.throttled = 0
        self._budget: int | None = None
        self._window = 1.0
        self._window_start = 0.0
        self._window_calls = 0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/", self._api, methods=["POST"]),
                                     Route("/oauth2/token", self._token, methods=["POST"])])

    # -- set-up ----------------------------------------------------------------------------

    def create_pool(self) -> str:
        pool_id = f"{self.region}_{secrets.token_hex(5)}"
        self.pools[pool_id] = {}
        return pool_id

    def create_client(self, pool_id: str) -> tuple[str, str]:
        """An app client with one generated secret: (client id, secret)."""
        with self._lock:
            client = AppClient(secrets.token_hex(13))
            self.pools[pool_id][client.client_id] = client
            secret = self._add(client, None)
            secret.added_at -= self.propagation_delay
            return client.client_id, secret.value

    def grant(self, access_key: str, operations: tuple[str, ...] = OPERATIONS) -> None:
        self.access_keys[access_key] = set(operations)

    def throttle(self, budget: int | None, window: float = 1.0) -> None:
        self._budget, self._window = budget, window
        self._window_start, self._window_calls = self.clock(), 0

    def works(self, client_id: str, secret: str) -> bool:
        return self._client_by_secret(client_id, secret) is not None

    # -- the API ---------------------------------------------------------------------------

    def _add(self, client: AppClient, value: str | None) -> ClientSecret:
        created = int(time.time())
        # Ids are unique per client; two secrets in one second get the next second's id.
        while any(s.secret_id == f"{client.client_id}--{created}" for s in client.secrets):
            created += 1
        secret = ClientSecret(f"{client.client_id}--{created}",
                              value or secrets.token_urlsafe(39).replace("-", "+")[:52],
                              float(created), self.clock())
        client.secrets.append(secret)
        return secret

    async def _api(self, request: Request) -> Response:
        target = request.headers.get("x-amz-target", "")
        if not target.startswith(TARGET_PREFIX):
            return _error("UnknownOperationException", "")
        operation = target[len(TARGET_PREFIX):]
        match = _SIGV4.match(request.headers.get("authorization", ""))
        if match is None:
            return _error("MissingAuthenticationTokenException", "Missing Authentication Token")
        if request.headers.get("content-type", "").split(";")[0] != "application/x-amz-json-1.1":
            return _error("SerializationException", "Unexpected content type")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error("SerializationException", "Start of structure or map found where "
                          "not expected.")
        if not isinstance(body, dict):
            return _error("SerializationException", "Expected a structure")
        with self._lock:
            self.calls.append(operation)
            self.signed.append(match.groupdict())
            allowed = self.access_keys.get(match["key"])
            if allowed is None:
                return _error("UnrecognizedClientException",
                              "The security token included in the request is invalid.")
            if self._budget is not None:
                now = self.clock()
                if now - self._window_start >= self._window:
                    self._window_start, self._window_calls = now, 0
                self._window_calls += 1
                if self._window_calls > self._budget:
                    self.throttled += 1
                    return _error("TooManyRequestsException", "Rate exceeded")
            if operation not in OPERATIONS:
                return _error("UnknownOperationException", "")
            if operation not in allowed:
                return _error("AccessDeniedException", f"User: arn:aws:iam::123456789012:user/"
                              f"rotator is not authorized to perform: cognito-idp:{operation} "
                              f"on resource: arn:aws:cognito-idp:{self.region}:123456789012:"
                              f"userpool/{body.get('UserPoolId')} because no identity-based "
                              f"policy allows the cognito-idp:{operation} action")
            return self._operate(operation, body)

    def _operate(self, operation: str, body: dict[str, Any]) -> JSONResponse:
        pool_id, client_id = body.get("UserPoolId"), body.get("ClientId")
        for name, value, pattern, longest in (("userPoolId", pool_id, _POOL_ID, 55),
                                              ("clientId", client_id, _CLIENT_ID, 128)):
            if not isinstance(value, str) or not pattern.fullmatch(value) or len(value) > longest:
                return _error("InvalidParameterException", f"1 validation error detected: "
                              f"Value at '{name}' failed to satisfy constraint: Member must "
                              f"satisfy regular expression pattern: {pattern.pattern}")
        pool = self.pools.get(str(pool_id))
        if pool is None:
            return _error("ResourceNotFoundException", f"User pool {pool_id} does not exist.")
        client = pool.get(str(client_id))
        if client is None:
            return _error("ResourceNotFoundException", f"User pool client {client_id} does "
                          "not exist.")
        ok = {"content-type": "application/x-amz-json-1.1"}
        if operation == "ListUserPoolClientSecrets":
            return JSONResponse({"ClientSecrets": [
                {"ClientSecretId": s.secret_id, "ClientSecretCreateDate": s.created}
                for s in client.secrets]}, headers=ok)
        if operation == "AddUserPoolClientSecret":
            value = body.get("ClientSecret")
            if value is not None and (not isinstance(value, str) or not 24 <= len(value) <= 64
                                      or not _SECRET.fullmatch(value)):
                return _error("InvalidParameterException", "1 validation error detected: "
                              "Value at 'clientSecret' failed to satisfy constraint: Member "
                              "must have length between 24 and 64 and match [\\w+]+")
            if len(client.secrets) >= 2:
                return _error("LimitExceededException", "The app client already has the "
                              "maximum number of client secrets (2).")
            secret = self._add(client, value)
            descriptor: dict[str, Any] = {"ClientSecretId": secret.secret_id,
                                          "ClientSecretCreateDate": secret.created}
            if value is None:
                descriptor["ClientSecretValue"] = secret.value
            return JSONResponse({"ClientSecretDescriptor": descriptor}, headers=ok)
        secret_id = body.get("ClientSecretId")
        found = [s for s in client.secrets if s.secret_id == secret_id]
        if not found:
            return _error("ResourceNotFoundException", f"Client secret {secret_id} does not "
                          "exist.")
        if len(client.secrets) == 1:
            return _error("InvalidParameterException", "The last client secret of an app "
                          "client cannot be deleted.")
        client.secrets.remove(found[0])
        return JSONResponse({}, headers=ok)

    # -- the user pool domain's token endpoint ---------------------------------------------

    def _client_by_secret(self, client_id: str, secret: str) -> AppClient | None:
        for pool in self.pools.values():
            client = pool.get(client_id)
            if client is None:
                continue
            for s in client.secrets:
                if (secrets.compare_digest(s.value.encode(), secret.encode())
                        and self.clock() - s.added_at >= self.propagation_delay):
                    return client
        return None

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            form.setdefault("client_id", unquote(user))
            form.setdefault("client_secret", unquote(password))
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if not form.get("client_id"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        with self._lock:
            client = self._client_by_secret(form["client_id"], form.get("client_secret", ""))
        if client is None:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        return JSONResponse({"access_token": secrets.token_urlsafe(32), "expires_in": 3600,
                             "token_type": "Bearer"})
