"""Keycloak's admin REST API as an identity provider.

rotator signs in as a confidential client of its own with a service account (client
credentials grant) whose service-account user holds the ``realm-management`` client roles
``view-clients`` and ``manage-clients``. Secrets are created with
``POST /admin/realms/{realm}/clients/{uuid}/client-secret``; Keycloak generates the value.

Keycloak keeps one secret per client unless the client falls under a client policy with
the ``secret-rotation`` executor (feature ``client-secret-rotation``): then a regenerate
moves the old secret to a *rotated* slot that stays valid for the executor's "rotated
secret expiration". rotator treats such a client as overlap-capable, ends the grace period
with ``DELETE …/client-secret/rotated``, and rolls back a failed rotation by putting the
old value back. ``overlap`` says how rotator learns which case applies: ``auto`` looks for
the ``client.secret.expiration.time`` attribute the executor stamps on clients it governs;
``always`` and ``never`` decide for every client of this IdP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from rotator import _bounded as bounded
from rotator._remote import error_text
from rotator.errors import (
    IdentityProviderError,
    IdpAccessDenied,
    IdpNotFound,
    IdpUnavailable,
)
from rotator.interfaces import ClientId, IdpCapabilities, IssuedSecret, RotationId
from rotator.secrets import Secret, redact
from rotator.settings import Setting

_EXPIRY_ATTRIBUTE = "client.secret.expiration.time"


def _part(value: str) -> str:
    """``value`` as one URL path segment or query value: '/', '?', '#', '%' all escaped."""
    if value in (".", ".."):  # clients normalise a bare dot segment away
        return value.replace(".", "%2E")
    return quote(value, safe="")


def _realm_problem(realm: str) -> str | None:
    if realm in (".", "..") or "/" in realm or "\\" in realm or not realm.isprintable():
        return "must be a realm name: no '/', '\\', control characters, and not '.' or '..'"
    return None


class KeycloakIdp:
    """A Keycloak realm's clients, managed through the admin REST API."""

    SETTINGS = (
        Setting("url", required=True, help="Keycloak base URL, e.g. https://sso.example.com"),
        Setting("realm", required=True, help="realm of the rotated clients"),
        Setting("admin_realm", help="realm of rotator's admin client; defaults to realm"),
        Setting("admin_client_id", required=True,
                help="confidential client with a service account holding realm-management "
                     "roles view-clients and manage-clients"),
        Setting("admin_client_secret", secret=True, required=True,
                help="secret of the admin client"),
        Setting("overlap", default="auto", choices=("auto", "always", "never")),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
    )
    #: Keycloak finds a client by its client id: no per-client settings.
    CLIENT_SETTINGS: tuple[Setting, ...] = ()

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(key, reason) for each checked setting this adapter cannot use; the config check
        reports them with the rest."""
        problems = []
        for key in ("realm", "admin_realm"):
            value = settings.get(key)
            problem = _realm_problem(value) if isinstance(value, str) else None
            if problem:
                problems.append((key, problem))
        return problems

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self._url = str(settings["url"]).rstrip("/")
        self._realm = str(settings["realm"])
        self._admin_realm = str(settings.get("admin_realm") or self._realm)
        self._admin_id = str(settings["admin_client_id"])
        # Absent when the configuration was loaded for a consumer: no admin calls then.
        self._admin_secret: Secret | None = settings.get("admin_client_secret")
        self._overlap = str(settings.get("overlap") or "auto")
        ca = settings.get("ca_file")
        self._verify: bool | str = str(ca) if ca else bool(settings.get("tls_verify", True))
        self._timeout = float(settings.get("timeout") or 10.0)
        self._transport = transport
        self._http: httpx.Client | None = None
        self._token: Secret | None = None
        self._token_expiry = 0.0
        # Worker threads share this adapter: one signs in while the others wait for its token.
        self._token_lock = threading.Lock()
        self._uuids: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        # Signing in waits for the first admin call, so `rotator verify` needs no admin access.
        self._http = bounded.client(base_url=self._url, timeout=self._timeout,
                                    verify=self._verify, transport=self._transport)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def default_token_endpoint(self) -> str:
        return f"{self._url}/realms/{_part(self._realm)}/protocol/openid-connect/token"

    # -- transport -------------------------------------------------------------------------

    def _admin_token(self) -> Secret:
        with self._token_lock:
            return self._signed_in()

    def _signed_in(self) -> Secret:
        if self._token and time.monotonic() < self._token_expiry:
            return self._token
        http = self._client()
        if self._admin_secret is None:
            raise IdpAccessDenied(f"Keycloak {self.name!r}: admin_client_secret is not loaded")
        url = f"/realms/{_part(self._admin_realm)}/protocol/openid-connect/token"
        try:
            response = http.post(url, data={
                "grant_type": "client_credentials", "client_id": self._admin_id,
                "client_secret": self._admin_secret.reveal()})
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 500:
            raise IdpUnavailable(f"Keycloak {self.name!r}: token endpoint answered HTTP "
                                 f"{response.status_code}")
        if response.status_code != 200:
            raise IdpAccessDenied(
                f"Keycloak {self.name!r}: admin client {self._admin_id!r} could not sign in to "
                f"realm {self._admin_realm!r} (HTTP {response.status_code}: "
                f"{_error_text(response)}); check admin_client_secret and that the client has "
                "service accounts enabled"
            )
        body = self._object(response, "the admin token endpoint")
        token = self._string(body, "access_token", "the admin token endpoint")
        lifetime = body.get("expires_in", 60)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = 60
        self._token = token
        self._token_expiry = time.monotonic() + max(float(lifetime) - 15, 5)
        return self._token

    def _object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """The answer's JSON object; anything else (a login page, a proxy's body) is refused."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise IdpUnavailable(f"Keycloak {self.name!r}: {what} did not answer with a JSON "
                                 f"object (HTTP {response.status_code})")
        return body

    def _string(self, body: dict[str, Any], key: str, what: str) -> Secret:
        """``body[key]`` as a secret; it must be a non-empty string."""
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise IdpUnavailable(f"Keycloak {self.name!r}: {what} answered without a "
                                 f"usable {key!r}")
        return Secret(value)

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise IdentityProviderError(f"Keycloak {self.name!r} is not started")
        return self._http

    def _unreachable(self, exc: httpx.HTTPError) -> IdpUnavailable:
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
        return IdpUnavailable(f"Keycloak {self.name!r} at {self._url} {kind}: "
                              f"{redact(str(exc)) or type(exc).__name__}")

    def _call(self, method: str, path: str, *, role: str, json: Any = None,
              ok: tuple[int, ...] = (200, 204), missing_ok: bool = False) -> httpx.Response:
        url = f"/admin/realms/{_part(self._realm)}{path}"
        for attempt in (1, 2):
            token = self._admin_token()
            headers = {"Authorization": f"Bearer {token.reveal()}"}
            try:
                response = self._client().request(method, url, json=json, headers=headers)
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from None
            if response.status_code == 401 and attempt == 1:
                with self._token_lock:  # expired early or revoked: sign in again once
                    if self._token is token:  # unless another thread already did
                        self._token = None
                continue
            break
        status = response.status_code
        if status in ok or (missing_ok and status == 404):
            return response
        if status in (401, 403):
            raise IdpAccessDenied(
                f"Keycloak {self.name!r}: {method} {path} was refused (HTTP {status}); the "
                f"service account of {self._admin_id!r} needs the realm-management role "
                f"{role!r} in realm {self._realm!r}"
            )
        if status == 404:
            raise IdpNotFound(f"Keycloak {self.name!r}: {path} not found in realm "
                              f"{self._realm!r}: {_error_text(response)}")
        if status >= 500:
            raise IdpUnavailable(f"Keycloak {self.name!r}: {method} {path} answered HTTP "
                                 f"{status}: {_error_text(response)}")
        raise IdentityProviderError(f"Keycloak {self.name!r}: {method} {path} answered HTTP "
                                    f"{status}: {_error_text(response)}")

    def _client_rep(self, client_id: ClientId) -> dict[str, Any]:
        response = self._call("GET", f"/clients?clientId={_part(client_id)}",
                              role="view-clients")
        try:
            found = response.json()
        except ValueError:
            found = None
        if not isinstance(found, list):
            raise IdpUnavailable(f"Keycloak {self.name!r}: the client search did not answer "
                                 f"with a JSON list (HTTP {response.status_code})")
        matches = [c for c in found if isinstance(c, dict) and c.get("clientId") == client_id
                   and isinstance(c.get("id"), str) and c["id"]]
        if not matches:
            raise IdpNotFound(f"Keycloak {self.name!r}: no client {client_id!r} in realm "
                              f"{self._realm!r}")
        rep: dict[str, Any] = matches[0]
        # The id comes from the server and goes into paths: one segment, whatever it holds.
        self._uuids[client_id] = _part(str(rep["id"]))
        return rep

    def _uuid(self, client_id: ClientId) -> str:
        if client_id not in self._uuids:
            self._client_rep(client_id)
        return self._uuids[client_id]

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        if self._overlap == "auto":
            attributes = self._client_rep(client_id).get("attributes") or {}
            overlap = _EXPIRY_ATTRIBUTE in attributes
        else:
            overlap = self._overlap == "always"
        return IdpCapabilities(max_active_secrets=2 if overlap else 1, caller_sets_value=False,
                               can_revoke_old=overlap, can_read_current=True)

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is not None:
            raise IdentityProviderError("Keycloak generates client secrets itself")
        uuid = self._uuid(client_id)
        what = "the new client secret"
        body = self._object(self._call("POST", f"/clients/{uuid}/client-secret",
                                       role="manage-clients"), what)
        return IssuedSecret(self._string(body, "value", what))

    def current_secret(self, client_id: ClientId) -> Secret | None:
        uuid = self._uuid(client_id)
        what = "the client secret"
        body = self._object(self._call("GET", f"/clients/{uuid}/client-secret",
                                       role="view-clients"), what)
        return self._string(body, "value", what) if body.get("value") else None

    def _rotated_secret(self, uuid: str) -> Secret | None:
        response = self._call("GET", f"/clients/{uuid}/client-secret/rotated",
                              role="view-clients", missing_ok=True)
        if response.status_code == 404:
            return None
        what = "the rotated client secret"
        body = self._object(response, what)
        return self._string(body, "value", what) if body.get("value") else None

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        rep = self._client_rep(client_id)
        uuid = self._uuids[client_id]
        if self.current_secret(client_id) == previous:
            return  # already rolled back
        # Keycloak cannot promote the rotated secret back, but an admin update may set the
        # secret: put the old value back, then drop the rotated slot holding the new one.
        rep["secret"] = previous.reveal()
        self._call("PUT", f"/clients/{uuid}", role="manage-clients", json=rep)
        rotated = self._rotated_secret(uuid)
        if rotated is not None and rotated != previous:
            self._call("DELETE", f"/clients/{uuid}/client-secret/rotated",
                       role="manage-clients", missing_ok=True)

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        uuid = self._uuid(client_id)
        current = self.current_secret(client_id)
        if current != keep.value:
            raise IdentityProviderError(
                f"Keycloak {self.name!r}: the current secret of {client_id!r} is not the one "
                "rotator promoted; refusing to retire anything"
            )
        if self._rotated_secret(uuid) is None:
            return 0
        self._call("DELETE", f"/clients/{uuid}/client-secret/rotated", role="manage-clients",
                   missing_ok=True)
        return 1


def _error_text(response: httpx.Response) -> str:
    return error_text(response, ("error", "errorMessage", "error_description"))
