"""A fake Microsoft Entra ID tenant: the v2.0 token endpoint and Graph's application passwords.

Built from Microsoft's documentation (not from Entra itself, which cannot run here):

- https://learn.microsoft.com/en-us/graph/api/application-addpassword
  (``POST /applications/{id}/addPassword`` and ``/applications(appId='{appId}')/addPassword``,
  body ``{"passwordCredential": {"displayName", "endDateTime"}}``, 200 with a
  passwordCredential whose ``secretText`` is returned only here; ``endDateTime`` defaults
  to ``startDateTime`` + 2 years; least privilege for applications
  ``Application.ReadWrite.OwnedBy``, higher ``Application.ReadWrite.All``)
- https://learn.microsoft.com/en-us/graph/api/application-removepassword (``{"keyId"}``,
  204 No Content)
- https://learn.microsoft.com/en-us/graph/api/resources/passwordcredential (``keyId``,
  ``hint`` = first three characters, ``secretText`` 16-64 characters, null when read)
- https://learn.microsoft.com/en-us/graph/errors (error body ``{"error": {"code",
  "message", "innerError"}}``; 403 ``Authorization_RequestDenied``, 404
  ``Request_ResourceNotFound``, 429 with ``Retry-After`` in seconds)
- https://learn.microsoft.com/en-us/graph/throttling (429 ``TooManyRequests`` and
  ``Retry-After``)
- https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
  (``POST /{tenant}/oauth2/v2.0/token``, ``scope`` = ``<resource>/.default``, error body
  ``error``, ``error_description`` "AADSTSnnnn: ...", ``error_codes``, ``timestamp``,
  ``trace_id``, ``correlation_id``)
- https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
  (AADSTS7000215 invalid client secret, AADSTS7000222 expired client secret keys,
  AADSTS700016 application not found, AADSTS900144 missing parameter, AADSTS1002012
  client credential flows need a ``/.default`` scope)

Where the documentation is silent the fake chooses, and says so: an application's owner
check under ``Application.ReadWrite.OwnedBy`` answers 403 like a missing role; removing an
unknown ``keyId`` answers 400 ``Request_BadRequest``. Graph returns access tokens as JWTs;
these are opaque strings (rotator never reads them).

Knobs for tests: ``throttle(budget, window)`` (Graph answers 429 with ``Retry-After`` once
``budget`` calls were made in ``window`` seconds), ``propagation_delay`` (a new password
works at the token endpoint only that many seconds after it was added), ``clock``.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes.asgi_thread import ServedFake

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
OWNED_BY = "Application.ReadWrite.OwnedBy"
ALL = "Application.ReadWrite.All"


@dataclass
class Password:
    key_id: str
    display_name: str | None
    secret: str
    start: datetime
    end: datetime
    added_at: float  # fake clock, for the propagation delay

    def view(self) -> dict[str, Any]:
        return {"customKeyIdentifier": None, "displayName": self.display_name,
                "endDateTime": _iso(self.end), "hint": self.secret[:3],
                "keyId": self.key_id, "secretText": None, "startDateTime": _iso(self.start)}


@dataclass
class App:
    object_id: str
    app_id: str
    display_name: str
    passwords: list[Password] = field(default_factory=list)
    roles: set[str] = field(default_factory=set)  # Graph app roles granted to this app
    owners: set[str] = field(default_factory=set)  # appIds of owning service principals

    def view(self) -> dict[str, Any]:
        return {"id": self.object_id, "appId": self.app_id, "displayName": self.display_name,
                "passwordCredentials": [p.view() for p in self.passwords]}


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _graph_error(status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "innerError": {
        "date": _iso(datetime.now(UTC)), "request-id": str(uuid.uuid4()),
        "client-request-id": str(uuid.uuid4())}}}
    return JSONResponse(body, status_code=status, headers=headers)


class FakeEntra(ServedFake):
    """One tenant: applications, their passwords, Graph app roles, and the token endpoint."""

    def __init__(self, tenant: str | None = None, *, propagation_delay: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.tenant = tenant or str(uuid.uuid4())
        self.apps: dict[str, App] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # access token -> (appId, expiry)
        self.propagation_delay = propagation_delay
        self.clock, self.now = clock, now
        self.graph_calls = 0
        self.token_refusals = 0
        self.throttled = 0
        self._budget: int | None = None
        self._window = 1.0
        self._window_start = 0.0
        self._window_calls = 0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            Route("/v1.0/{rest:path}", self._graph, methods=["GET", "POST"]),
        ])

    # -- test set-up -----------------------------------------------------------------------

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/{self.tenant}/oauth2/v2.0/token"

    def create_app(self, name: str = "app", *, roles: set[str] | None = None,
                   owners: set[str] | None = None) -> tuple[App, Password]:
        """An app registration with one password (as a person would add in the portal)."""
        with self._lock:
            app = App(str(uuid.uuid4()), str(uuid.uuid4()), name, roles=set(roles or ()),
                      owners=set(owners or ()))
            self.apps[app.object_id] = app
            password = self._add(app, "initial", None)
            password.added_at -= self.propagation_delay  # long since replicated
            return app, password

    def throttle(self, budget: int | None, window: float = 1.0) -> None:
        """Answer Graph calls beyond ``budget`` per ``window`` seconds with 429."""
        self._budget, self._window = budget, window
        self._window_start, self._window_calls = self.clock(), 0

    def expire(self, key_id: str) -> None:
        for app in self.apps.values():
            for p in app.passwords:
                if p.key_id == key_id:
                    p.end = self.now() - timedelta(seconds=1)

    def works(self, app_id: str, secret: str) -> bool:
        return self._check_secret(app_id, secret) is None

    # -- token endpoint --------------------------------------------------------------------

    def _add(self, app: App, display_name: str | None, end: datetime | None) -> Password:
        start = self.now()
        password = Password(str(uuid.uuid4()), display_name, secrets.token_urlsafe(30)[:40],
                            start, end or start + timedelta(days=730), self.clock())
        app.passwords.append(password)
        return password

    def _by_app_id(self, app_id: str) -> App | None:
        return next((a for a in self.apps.values() if a.app_id == app_id), None)

    def _check_secret(self, app_id: str, secret: str) -> tuple[int, str, str] | None:
        app = self._by_app_id(app_id)
        if app is None:
            return (400, "unauthorized_client", f"AADSTS700016: Application with identifier "
                    f"'{app_id}' was not found in the directory '{self.tenant}'.")
        for p in app.passwords:
            if secrets.compare_digest(p.secret.encode(), secret.encode()):
                if self.clock() - p.added_at < self.propagation_delay:
                    break  # not replicated yet: indistinguishable from a wrong secret
                if p.end <= self.now():
                    return (401, "invalid_client", "AADSTS7000222: The provided client "
                            f"secret keys for app '{app_id}' are expired.")
                return None
        return (401, "invalid_client", "AADSTS7000215: Invalid client secret provided. "
                "Ensure the secret being sent in the request is the client secret value, not "
                f"the client secret ID, for a secret added to app '{app_id}'.")

    async def _token(self, request: Request) -> Response:
        fields = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            import base64
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            fields.setdefault("client_id", unquote(user))
            fields.setdefault("client_secret", unquote(password))
        if request.path_params["tenant"] not in (self.tenant, "organizations", "common"):
            return self._token_error(400, "invalid_tenant", 90002, "AADSTS90002: Tenant "
                                     f"'{request.path_params['tenant']}' not found.")
        for name in ("grant_type", "client_id", "scope"):
            if not fields.get(name):
                return self._token_error(400, "invalid_request", 900144, "AADSTS900144: The "
                                         f"request body must contain the following "
                                         f"parameter: '{name}'.")
        if fields["grant_type"] != "client_credentials":
            return self._token_error(400, "unsupported_grant_type", 70003,
                                     "AADSTS70003: The app requested an unsupported grant "
                                     "type.")
        if not fields["scope"].endswith("/.default"):
            return self._token_error(400, "invalid_scope", 1002012, "AADSTS1002012: The "
                                     "provided value for scope is not valid. Client "
                                     "credential flows must have a scope value with /.default "
                                     "suffixed to the resource identifier.")
        if not fields.get("client_secret"):
            return self._token_error(401, "invalid_client", 7000216, "AADSTS7000216: "
                                     "'client_assertion', 'client_secret' or "
                                     "'request' is required for the 'client_credentials' "
                                     "grant type.")
        with self._lock:
            problem = self._check_secret(fields["client_id"], fields["client_secret"])
            if problem is not None:
                self.token_refusals += 1
                status, error, text = problem
                return self._token_error(status, error, int(text[6:].split(":")[0]), text)
            token = secrets.token_urlsafe(32)
            self.tokens[token] = (fields["client_id"], self.clock() + 3599)
        return JSONResponse({"token_type": "Bearer", "expires_in": 3599,
                             "ext_expires_in": 3599, "access_token": token})

    def _token_error(self, status: int, error: str, code: int, text: str) -> JSONResponse:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        now = self.now().strftime("%Y-%m-%d %H:%M:%SZ")
        return JSONResponse({
            "error": error,
            "error_description": f"{text} Trace ID: {trace} Correlation ID: {correlation} "
                                 f"Timestamp: {now}",
            "error_codes": [code], "timestamp": now, "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}"},
            status_code=status)

    # -- Graph -----------------------------------------------------------------------------

    def _throttled(self) -> JSONResponse | None:
        if self._budget is None:
            return None
        now = self.clock()
        if now - self._window_start >= self._window:
            self._window_start, self._window_calls = now, 0
        self._window_calls += 1
        if self._window_calls <= self._budget:
            return None
        self.throttled += 1
        wait = max(1, math.ceil(self._window - (now - self._window_start)))
        return _graph_error(429, "TooManyRequests", "Too many requests, retry after some "
                            "time.", headers={"Retry-After": str(wait)})

    async def _graph(self, request: Request) -> Response:
        rest = request.scope["raw_path"].decode("latin-1").split("?")[0][len("/v1.0/"):]
        with self._lock:
            self.graph_calls += 1
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            caller = self.tokens.get(token)
            if caller is None or caller[1] < self.clock():
                return _graph_error(401, "InvalidAuthenticationToken",
                                    "Access token is empty." if not token else
                                    "Access token validation failure. Invalid audience.")
            throttled = self._throttled()
            if throttled is not None:
                return throttled
            caller_app = self._by_app_id(caller[0])
            roles = caller_app.roles if caller_app else set()
            target, action = _split(rest)
            app = self._find(target)
            if app is None:
                return _graph_error(404, "Request_ResourceNotFound",
                                    f"Resource '{target}' does not exist or one of its "
                                    "queried reference-property objects are not present.")
            allowed = ALL in roles or (OWNED_BY in roles and caller[0] in app.owners)
            if not allowed:
                return _graph_error(403, "Authorization_RequestDenied",
                                    "Insufficient privileges to complete the operation.")
            if request.method == "GET" and not action:
                return JSONResponse({"@odata.context": "https://graph.microsoft.com/v1.0/"
                                     "$metadata#applications/$entity", **app.view()})
            body = await _json(request)
            if request.method == "POST" and action == "addPassword":
                credential = body.get("passwordCredential") if isinstance(body, dict) else None
                credential = credential if isinstance(credential, dict) else {}
                end = credential.get("endDateTime")
                try:
                    end_at = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else None
                except (AttributeError, ValueError):
                    return _graph_error(400, "Request_BadRequest",
                                        "Invalid value specified for property 'endDateTime'.")
                password = self._add(app, credential.get("displayName"), end_at)
                return JSONResponse({"@odata.context": "https://graph.microsoft.com/v1.0/"
                                     "$metadata#microsoft.graph.passwordCredential",
                                     **password.view(), "secretText": password.secret})
            if request.method == "POST" and action == "removePassword":
                key_id = body.get("keyId") if isinstance(body, dict) else None
                match = [p for p in app.passwords if p.key_id == key_id]
                if not match:
                    return _graph_error(400, "Request_BadRequest",
                                        f"No password credential found with keyId {key_id}.")
                app.passwords.remove(match[0])
                return Response(status_code=204)
        return _graph_error(400, "BadRequest", f"Unsupported request {request.method} {rest}")

    def _find(self, target: str) -> App | None:
        if target.startswith("appId='") and target.endswith("'"):
            return self._by_app_id(target[len("appId='"):-1].replace("''", "'"))
        return self.apps.get(target)


def _split(rest: str) -> tuple[str, str]:
    """``applications/{id}/addPassword`` or ``applications(appId='x')/addPassword`` as
    (``{id}`` or ``appId='x'``, ``addPassword``); the id decoded."""
    if rest.startswith("applications(") and (rest.endswith(")") or ")/" in rest):
        inner, _, action = rest[len("applications("):].rpartition(")")
        return unquote(inner), action.lstrip("/")
    if rest.startswith("applications/"):
        target, _, action = rest[len("applications/"):].partition("/")
        return unquote(target), action
    return "", rest


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None
