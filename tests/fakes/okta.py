"""A fake Okta org: the app client-secret API, the token endpoints and the admin auth.

Built from Okta's documentation (read in November 2026):

- Client secret rotation and key management, https://developer.okta.com/docs/guides/client-secret-rotation-key/-/main
  and the Admin Console steps, https://help.okta.com/en-us/Content/topics/apiservice/api-service-integration-rotate-client-secret.htm:
  ``POST /api/v1/apps/{appId}/credentials/secrets`` (optional ``client_secret`` and
  ``status``), ``GET`` lists them, ``POST …/secrets/{secretId}/lifecycle/deactivate`` and
  ``…/activate``, ``DELETE …/secrets/{secretId}``; at most two secrets per app, a new one is
  ACTIVE, only an INACTIVE one can be deleted. The secret object (``id``, ``status``,
  ``client_secret``, ``secret_hash``, ``created``, ``lastUpdated``, ``_links``) follows
  Okta's ClientSecret schema (OAuth2ClientSecret in the Okta Java SDK reference,
  https://developer.okta.com/okta-sdk-java/apidocs/com/okta/sdk/resource/model/OAuth2ClientSecret.html).
  The plaintext is answered on create only; lists carry the hash.
- Error bodies, https://developer.okta.com/docs/reference/error-codes/: ``errorCode``,
  ``errorSummary``, ``errorLink``, ``errorId``, ``errorCauses``; E0000001 (API validation,
  400), E0000006 (no permission, 403), E0000007 (not found, 404), E0000011 (invalid token,
  401), E0000047 (rate limit, 429).
- Admin auth, https://developer.okta.com/docs/api/openapi/okta-management/guides/overview:
  ``Authorization: SSWS <API token>`` (unscoped: the creating admin's permissions), or a
  scoped OAuth 2.0 access token from the org authorization server's ``/oauth2/v1/token``
  obtained by a service app with ``private_key_jwt`` and granted scopes such as
  ``okta.apps.manage`` (https://developer.okta.com/docs/guides/implement-oauth-for-okta-serviceapp/create-sign-jwt/).
  A token lacking the scope gets 403 with ``WWW-Authenticate: Bearer …
  error="insufficient_scope"``; asking for a scope not granted gets ``invalid_scope``.
  Apps that hold admin roles can only be changed by a super admin (E0000006 otherwise).
- Rate limits, https://developer.okta.com/docs/reference/rl-best-practices/: every API answer
  carries ``X-Rate-Limit-Limit``, ``-Remaining`` and ``-Reset`` (UTC epoch seconds); over
  budget: 429 with E0000047.

Clients obtain tokens at a custom authorization server, ``/oauth2/{server}/v1/token``
(client_secret_basic or client_secret_post); with no ``scope`` Okta answers
``invalid_scope`` once the client authenticated, as here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes._common import RateBudget, read_form
from fakes.asgi_thread import ServedApp

APPS_READ, APPS_MANAGE = "okta.apps.read", "okta.apps.manage"

_AppHandler = Callable[["FakeOkta", Request, "App", dict[str, str]], Awaitable[Response]]


def _app_route(scope: str) -> Callable[[_AppHandler], Callable[..., Awaitable[Response]]]:
    """An ``/api/v1/apps/{app_id}`` route: the rate budget, the admin credential and ``scope``
    are checked and the app is found (else Okta's refusal or 404) before ``handler`` runs with
    the app and the rate-limit headers."""
    def wrap(handler: _AppHandler) -> Callable[..., Awaitable[Response]]:
        async def route(self: FakeOkta, request: Request) -> Response:
            app = self._find(request)
            refused, headers = self._admin(request, scope, app)
            if refused:
                return refused
            if app is None:
                return self._not_found(request, headers)
            return await handler(self, request, app, headers)
        return route
    return wrap


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _okta_id(prefix: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(17))


def _hash(value: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).decode().rstrip("=")


def okta_error(status: int, code: str, summary: str, causes: tuple[str, ...] = (),
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({
        "errorCode": code, "errorSummary": summary, "errorLink": code,
        "errorId": _okta_id("oae"),
        "errorCauses": [{"errorSummary": c} for c in causes],
    }, status_code=status, headers=headers)


@dataclass
class ClientSecret:
    id: str
    value: str
    status: str = "ACTIVE"
    created: str = field(default_factory=_now)
    last_updated: str = field(default_factory=_now)

    def body(self, base: str, app_id: str, *, reveal: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status,
                               "secret_hash": _hash(self.value), "created": self.created,
                               "lastUpdated": self.last_updated}
        if reveal:
            out["client_secret"] = self.value
        href = f"{base}/api/v1/apps/{app_id}/credentials/secrets/{self.id}"
        action = "deactivate" if self.status == "ACTIVE" else "activate"
        out["_links"] = {action: {"href": f"{href}/lifecycle/{action}",
                                  "hints": {"allow": ["POST"]}}}
        return out


@dataclass
class App:
    id: str
    label: str
    secrets: list[ClientSecret] = field(default_factory=list)
    admin_roles: bool = False
    #: For a service app used as rotator's admin: its public key and granted Okta scopes.
    public_key: Any = None
    granted_scopes: frozenset[str] = frozenset()


@dataclass
class ApiToken:
    super_admin: bool = False
    scopes: frozenset[str] | None = None  # None: an SSWS token (unscoped)


class FakeOkta:
    """An Okta org's state and its ASGI app. ``budget`` limits ``/api/v1`` per window."""

    def __init__(self, *, rate_limit: int | None = None, window: float = 60.0) -> None:
        self.apps: dict[str, App] = {}
        self.tokens: dict[str, ApiToken] = {}
        self.budget = RateBudget(rate_limit, window)
        self._lock = threading.Lock()
        self._jtis: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._server = ServedApp(self._app())
        self.url = self._server.url

    def __enter__(self) -> FakeOkta:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    # -- test helpers ----------------------------------------------------------------------

    def create_app(self, *, admin_roles: bool = False) -> tuple[str, str]:
        """A new OIDC service app with one active secret; returns (client_id, secret).
        As in Okta, the app id is its client id."""
        app = App(_okta_id("0oa"), "svc", admin_roles=admin_roles)
        value = secrets.token_urlsafe(30)
        app.secrets.append(ClientSecret(_okta_id("ocs"), value))
        with self._lock:
            self.apps[app.id] = app
        return app.id, value

    def api_token(self, *, super_admin: bool = False) -> str:
        """An SSWS API token of an admin (a super admin or an app admin)."""
        token = "00" + secrets.token_urlsafe(30)
        self.tokens[token] = ApiToken(super_admin=super_admin)
        return token

    def service_app(self, public_key: Any, scopes: tuple[str, ...] = (APPS_MANAGE,)) -> str:
        """A service app for OAuth for Okta with a public key and granted scopes; its id."""
        app = App(_okta_id("0oa"), "rotator", public_key=public_key,
                  granted_scopes=frozenset(scopes))
        with self._lock:
            self.apps[app.id] = app
        return app.id

    def works(self, client_id: str, secret: str) -> bool:
        app = self.apps.get(client_id)
        return app is not None and any(s.value == secret and s.status == "ACTIVE"
                                       for s in app.secrets)

    # -- the app -----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        secret_path = "/api/v1/apps/{app_id}/credentials/secrets"
        return Starlette(routes=[
            Route("/oauth2/v1/token", self._org_token, methods=["POST"]),
            Route("/oauth2/{server}/v1/token", self._client_token, methods=["POST"]),
            Route("/api/v1/apps/{app_id}", self._get_app, methods=["GET"]),
            Route(secret_path, self._list_secrets, methods=["GET"]),
            Route(secret_path, self._create_secret, methods=["POST"]),
            Route(secret_path + "/{secret_id}", self._delete_secret, methods=["DELETE"]),
            Route(secret_path + "/{secret_id}/lifecycle/{action}", self._lifecycle,
                  methods=["POST"]),
        ])

    def _admin(self, request: Request, scope: str, app: App | None
               ) -> tuple[JSONResponse | None, dict[str, str]]:
        """(refusal or None, rate-limit headers) for an ``/api/v1`` call needing ``scope``."""
        self.requests.append((request.method, request.url.path))
        allowed, limit, remaining, reset = self.budget.take()
        headers = {"X-Rate-Limit-Limit": str(limit), "X-Rate-Limit-Remaining": str(remaining),
                   "X-Rate-Limit-Reset": str(reset)}
        if not allowed:
            return okta_error(429, "E0000047", "API call exceeded rate limit due to too many "
                              "requests.", headers=headers), headers
        auth = request.headers.get("Authorization", "")
        kind, _, value = auth.partition(" ")
        token = self.tokens.get(value) if kind in ("SSWS", "Bearer") else None
        if token is None or (kind == "SSWS") != (token.scopes is None):
            return okta_error(401, "E0000011", "Invalid token provided", headers=headers), \
                headers
        if token.scopes is not None and scope not in token.scopes and not (
                scope == APPS_READ and APPS_MANAGE in token.scopes):
            www = (f'Bearer authorization_uri="{self.url}/oauth2/v1/authorize", '
                   f'realm="{self.url}", scope="{scope}", error="insufficient_scope", '
                   'error_description="The access token provided does not contain the '
                   f'required scopes.", resource="{request.url.path}"')
            return okta_error(403, "E0000006", "You do not have permission to perform the "
                              "requested action", headers={**headers, "WWW-Authenticate": www}), \
                headers
        if scope == APPS_MANAGE and app is not None and app.admin_roles \
                and not token.super_admin:
            return okta_error(403, "E0000006", "You do not have permission to perform the "
                              "requested action", headers=headers), headers
        return None, headers

    def _find(self, request: Request) -> App | None:
        return self.apps.get(unquote(request.path_params["app_id"]))

    def _not_found(self, request: Request, headers: dict[str, str]) -> JSONResponse:
        return okta_error(404, "E0000007", f"Not found: Resource not found: "
                          f"{request.path_params['app_id']} (AppInstance)", headers=headers)

    @_app_route(APPS_READ)
    async def _get_app(self, request: Request, app: App, headers: dict[str, str]
                       ) -> Response:
        return JSONResponse({"id": app.id, "name": "oidc_client", "label": app.label,
                             "status": "ACTIVE", "signOnMode": "OPENID_CONNECT",
                             "credentials": {"oauthClient": {
                                 "client_id": app.id,
                                 "token_endpoint_auth_method": "client_secret_basic"}}},
                            headers=headers)

    @_app_route(APPS_READ)
    async def _list_secrets(self, request: Request, app: App, headers: dict[str, str]
                            ) -> Response:
        return JSONResponse([s.body(self.url, app.id, reveal=False) for s in app.secrets],
                            headers=headers)

    @_app_route(APPS_MANAGE)
    async def _create_secret(self, request: Request, app: App, headers: dict[str, str]
                             ) -> Response:
        raw = await request.body()
        try:
            body = await request.json() if raw else {}
        except ValueError:
            return okta_error(400, "E0000003", "The request body was not well-formed.",
                              headers=headers)
        if not isinstance(body, dict):
            return okta_error(400, "E0000003", "The request body was not well-formed.",
                              headers=headers)
        value = body.get("client_secret")
        status = body.get("status", "ACTIVE")
        with self._lock:
            if len(app.secrets) >= 2:
                return okta_error(400, "E0000001", "Api validation failed: clientSecret",
                                  ("clientSecret: You can't have more than two client secrets "
                                   "for an app.",), headers=headers)
            if value is not None and (not isinstance(value, str) or not 14 <= len(value) <= 100):
                return okta_error(400, "E0000001", "Api validation failed: client_secret",
                                  ("client_secret: Client secret must be between 14 and 100 "
                                   "characters.",), headers=headers)
            if status not in ("ACTIVE", "INACTIVE"):
                return okta_error(400, "E0000001", "Api validation failed: status",
                                  headers=headers)
            secret = ClientSecret(_okta_id("ocs"), value or secrets.token_urlsafe(48), status)
            app.secrets.append(secret)
        return JSONResponse(secret.body(self.url, app.id, reveal=True), status_code=201,
                            headers=headers)

    def _secret(self, app: App, request: Request) -> ClientSecret | None:
        wanted = request.path_params["secret_id"]
        return next((s for s in app.secrets if s.id == wanted), None)

    @_app_route(APPS_MANAGE)
    async def _lifecycle(self, request: Request, app: App, headers: dict[str, str]
                         ) -> Response:
        action = request.path_params["action"]
        with self._lock:
            secret = self._secret(app, request)
            if secret is None or action not in ("activate", "deactivate"):
                return okta_error(404, "E0000007", "Not found: Resource not found: "
                                  f"{request.path_params['secret_id']} (ClientSecret)",
                                  headers=headers)
            if action == "deactivate" and secret.status == "ACTIVE" and \
                    sum(s.status == "ACTIVE" for s in app.secrets) == 1:
                return okta_error(400, "E0000001", "Api validation failed: status",
                                  ("status: You can't deactivate the only active client "
                                   "secret.",), headers=headers)
            secret.status = "ACTIVE" if action == "activate" else "INACTIVE"
            secret.last_updated = _now()
        return JSONResponse(secret.body(self.url, app.id, reveal=False), headers=headers)

    @_app_route(APPS_MANAGE)
    async def _delete_secret(self, request: Request, app: App, headers: dict[str, str]
                             ) -> Response:
        with self._lock:
            secret = self._secret(app, request)
            if secret is None:
                return okta_error(404, "E0000007", "Not found: Resource not found: "
                                  f"{request.path_params['secret_id']} (ClientSecret)",
                                  headers=headers)
            if secret.status == "ACTIVE":
                return okta_error(400, "E0000001", "Api validation failed: status",
                                  ("status: You can't delete an active client secret; "
                                   "deactivate it first.",), headers=headers)
            app.secrets.remove(secret)
        return Response(status_code=204, headers=headers)

    # -- token endpoints ---------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str]:
        return await read_form(request)

    def _client_auth(self, request: Request, form: dict[str, str]) -> tuple[str, str] | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                pair = base64.b64decode(auth[6:]).decode()
            except ValueError:
                return None
            cid, _, secret = pair.partition(":")
            return unquote(cid.replace("+", " ")), unquote(secret.replace("+", " "))
        if "client_id" in form and "client_secret" in form:
            return form["client_id"], form["client_secret"]
        return None

    async def _client_token(self, request: Request) -> Response:
        form = await self._form(request)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type",
                                 "error_description": "The grant type is not supported."},
                                status_code=400)
        creds = self._client_auth(request, form)
        if creds is None or not self.works(*creds):
            return JSONResponse({"error": "invalid_client", "error_description":
                                 "The client secret supplied for a confidential client is "
                                 "invalid."}, status_code=401)
        scope = form.get("scope", "")
        if not scope:
            return JSONResponse({"error": "invalid_scope", "error_description":
                                 "The authorization server resource does not have any "
                                 "configured default scopes, 'scope' must be provided."},
                                status_code=400)
        return JSONResponse({"token_type": "Bearer", "expires_in": 3600,
                             "access_token": secrets.token_urlsafe(24), "scope": scope})

    async def _org_token(self, request: Request) -> Response:
        """The org authorization server: Okta API scopes for service apps (private_key_jwt)."""
        form = await self._form(request)
        denied = JSONResponse({"error": "invalid_client", "error_description":
                               "The client_assertion signature is invalid."}, status_code=401)
        if form.get("client_assertion_type") != \
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return JSONResponse({"error": "invalid_client", "error_description":
                                 "Client authentication failed: only private_key_jwt may "
                                 "request Okta scopes."}, status_code=401)
        assertion = form.get("client_assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            app = self.apps.get(str(unverified.get("iss")))
            if app is None or app.public_key is None:
                return denied
            claims = jwt.decode(assertion, app.public_key, algorithms=["RS256"],
                                audience=f"{self.url}/oauth2/v1/token",
                                options={"require": ["exp", "iss", "sub", "aud", "jti"]})
        except jwt.PyJWTError:
            return denied
        if claims["sub"] != claims["iss"] or claims["jti"] in self._jtis:
            return denied
        self._jtis.add(claims["jti"])
        wanted = frozenset(form.get("scope", "").split())
        missing = sorted(wanted - app.granted_scopes)
        if not wanted or missing:
            return JSONResponse({"error": "invalid_scope", "error_description":
                                 f"The following scopes are not allowed: {' '.join(missing)}"},
                                status_code=400)
        token = secrets.token_urlsafe(32)
        self.tokens[token] = ApiToken(super_admin=False, scopes=wanted)
        return JSONResponse({"token_type": "Bearer", "expires_in": 3600,
                             "access_token": token, "scope": " ".join(sorted(wanted))})


def rsa_key() -> Any:
    """A fresh RSA private key (for a service app's private_key_jwt)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


__all__ = ["APPS_MANAGE", "APPS_READ", "FakeOkta", "pem", "rsa_key"]
