"""Auth0's Management API as an identity provider.

An Auth0 application has one client secret: the old one stops working the moment a new one
is set, and the new one "may be delayed up to thirty seconds" before it works everywhere.
rotator sets a value it chose and staged first (``PATCH /api/v2/clients/{id}`` with
``client_secret``, scope ``update:client_keys``) rather than ``POST …/rotate-secret``, so no
issued secret can be lost to a crash: the single-secret family with a caller-chosen value,
and ``propagation_delay`` (default 30 s) declared so verification keeps retrying that long.
Auth0 refuses secrets for clients that authenticate with ``private_key_jwt``; rotator says so
instead of trying.

Admin authentication: a machine-to-machine application authorized for the Management API
gets a token with client credentials at ``{url}/oauth/token`` and ``audience``
``{url}/api/v2/``, cached until shortly before it expires. Least privilege: the scopes
``read:clients`` and ``update:client_keys``.

Rate limits: every answer's ``X-RateLimit-*`` headers are honoured (see
:mod:`providers.idps._saas`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from providers.idps._saas import AdminToken, SaasAdminHttp, admin_token, json_object
from rotator._remote import path_segment
from rotator.errors import IdentityProviderError, IdpAccessDenied, IdpNotFound, IdpUnavailable
from rotator.interfaces import ClientId, IdpCapabilities, IssuedSecret, RotationId
from rotator.secrets import Secret, redact
from rotator.settings import Setting, typed

READ_CLIENTS, UPDATE_KEYS = "read:clients", "update:client_keys"


@dataclass(frozen=True)
class Auth0Settings:
    """The checked ``[idps.NAME]`` table of an Auth0 tenant; defaults in ``Auth0Idp.SETTINGS``."""

    url: str
    audience: str | None
    admin_client_id: str
    admin_client_secret: Secret | None
    propagation_delay: float
    max_rate_limit_wait: float
    tls_verify: bool
    ca_file: str | None
    timeout: float



class Auth0Idp:
    """An Auth0 tenant's applications, managed through the Management API."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("url", required=True,
                help="the tenant's URL (or custom domain), e.g. https://example.eu.auth0.com"),
        Setting("audience", help="Management API audience; defaults to <url>/api/v2/"),
        Setting("admin_client_id", required=True,
                help=f"machine-to-machine app granted {READ_CLIENTS} and {UPDATE_KEYS}"),
        Setting("admin_client_secret", secret=True, required=True),
        Setting("propagation_delay", "duration", default=30.0,
                help="how long a new secret may take to work everywhere"),
        Setting("max_rate_limit_wait", "duration", default=60.0,
                help="longest wait for a rate-limit window; longer ones pause the IdP"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
    )
    #: Auth0 finds an application by its client id: no per-client settings.
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]] = ()

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self._settings = typed(Auth0Settings, settings)
        self._url = self._settings.url.rstrip("/")
        self._audience = self._settings.audience or f"{self._url}/api/v2/"
        s = self._settings
        self._http = SaasAdminHttp(f"Auth0 {name!r}", self._url, prefix="X-RateLimit-",
                                   max_wait=s.max_rate_limit_wait, timeout=s.timeout,
                                   verify=s.ca_file or s.tls_verify, transport=transport)
        self._token = AdminToken(self._sign_in)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._http.start()

    def close(self) -> None:
        self._http.close()

    def default_token_endpoint(self) -> str:
        return f"{self._url}/oauth/token"

    # -- transport -------------------------------------------------------------------------

    def _sign_in(self) -> tuple[Secret, float]:
        """A Management API token, and until when to cache it (a minute before it expires)."""
        s = self._settings
        if s.admin_client_secret is None:
            raise IdpAccessDenied(f"Auth0 {self.name!r}: admin_client_secret is not loaded")
        response = self._http.request("POST", "/oauth/token", data={
            "grant_type": "client_credentials", "client_id": s.admin_client_id,
            "client_secret": s.admin_client_secret.reveal(), "audience": self._audience})
        if response.status_code >= 500:
            raise IdpUnavailable(f"Auth0 {self.name!r}: /oauth/token answered HTTP "
                                 f"{response.status_code}")
        body = json_object(response)
        if response.status_code != 200:
            raise IdpAccessDenied(
                f"Auth0 {self.name!r}: the admin application {s.admin_client_id!r} could "
                f"not get a Management API token (HTTP {response.status_code}: "
                f"{_auth0_text(response)}); check admin_client_secret and that the "
                f"application is authorized for {self._audience} with the scopes "
                f"{READ_CLIENTS} and {UPDATE_KEYS}")
        return admin_token(body, f"Auth0 {self.name!r}: /oauth/token")

    def _call(self, method: str, path: str, *, scope: str, json: Any = None,
              params: Mapping[str, str] | None = None) -> httpx.Response:
        response = self._token.send(lambda token: self._http.request(
            method, path, json=json, params=params,
            headers={"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"}))
        status = response.status_code
        if status in (200, 201, 204):
            return response
        text = _auth0_text(response)
        where = f"Auth0 {self.name!r}: {method} {path}"
        if status in (401, 403):
            raise IdpAccessDenied(
                f"{where} was refused (HTTP {status}: {text}); the admin application "
                f"{self._settings.admin_client_id!r} needs the Management API scope {scope!r}")
        if status == 404:
            raise IdpNotFound(f"{where}: not found ({text})")
        if status >= 500:
            raise IdpUnavailable(f"{where} answered HTTP {status}: {text}")
        raise IdentityProviderError(f"{where} answered HTTP {status}: {text}")

    def _path(self, client_id: ClientId) -> str:
        return f"/api/v2/clients/{path_segment(client_id)}"

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        response = self._call("GET", self._path(client_id), scope=READ_CLIENTS, params={
            "fields": "client_id,token_endpoint_auth_method,client_authentication_methods",
            "include_fields": "true"})
        body = json_object(response)
        if body is None:
            raise IdpUnavailable(f"Auth0 {self.name!r}: client {client_id!r} did not answer a "
                                 "JSON object")
        methods = body.get("client_authentication_methods")
        if isinstance(methods, dict) and methods.get("private_key_jwt"):
            raise IdentityProviderError(
                f"Auth0 {self.name!r}: client {client_id!r} authenticates with private_key_jwt; "
                "it has no client secret to rotate")
        return IdpCapabilities(max_active_secrets=1, caller_sets_value=True,
                               can_revoke_old=False, can_read_current=False,
                               propagation_delay=self._settings.propagation_delay)

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is None:
            raise IdentityProviderError(f"Auth0 {self.name!r}: rotator chooses Auth0 client "
                                        "secrets; none was given")
        self._call("PATCH", self._path(client_id), scope=UPDATE_KEYS,
                   json={"client_secret": value.reveal()})
        return IssuedSecret(value)

    def current_secret(self, client_id: ClientId) -> Secret | None:
        return None  # reading it would need read:client_keys, which rotator does not ask for

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        raise IdentityProviderError(f"Auth0 {self.name!r} keeps one secret per client: a new "
                                    "secret cannot be discarded to bring the old one back")

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        return 0  # the old secret died when the new one was set


def _auth0_text(response: httpx.Response) -> str:
    """Auth0's ``errorCode: message`` (or an OAuth error), redacted and short."""
    body = json_object(response)
    if body is None:
        return redact(response.text)[:200] or "no body"
    parts = [str(body[k]) for k in ("errorCode", "message", "error", "error_description")
             if body.get(k) and not isinstance(body[k], dict | list)]
    return redact("; ".join(parts) or str(body))[:200]
