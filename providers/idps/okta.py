"""Okta's app client-secret API as an identity provider.

An Okta OIDC app holds up to two client secrets, each with an id: rotator adds a secret
whose value it chose and staged (``POST /api/v1/apps/{appId}/credentials/secrets`` with
``client_secret``), verifies it, promotes it, and after the grace period retires the old one
by its id (``POST …/secrets/{id}/lifecycle/deactivate``, then ``DELETE …/secrets/{id}``;
Okta deletes only an inactive secret). Overlap family; the new secret's id is the rotation's
``secret_ref``. A client's app id is its client id unless ``okta_app_id`` says otherwise.

Admin authentication, preferred first: an OAuth 2.0 service app ("OAuth for Okta") that signs
in with ``private_key_jwt`` at the org authorization server and is granted the scope
``okta.apps.manage``; or an SSWS API token (unscoped, with its admin's permissions).
Okta refuses changes to apps that hold admin roles unless the caller is a super admin: that
refusal is reported as such.

Rate limits: every answer's ``X-Rate-Limit-*`` headers are honoured (see
:mod:`providers.idps._saas`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import jwt

from providers.idps._saas import AdminToken, SaasAdminHttp, admin_token, json_object
from rotator._remote import path_segment
from rotator.errors import IdentityProviderError, IdpAccessDenied, IdpNotFound, IdpUnavailable
from rotator.interfaces import ClientId, IdpCapabilities, IssuedSecret, RotationId
from rotator.secrets import Secret, redact, register_credentials
from rotator.settings import Setting, typed

#: The Okta API scope rotator's service app needs (it includes reading apps).
SCOPE = "okta.apps.manage"
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class OktaSettings:
    """The checked ``[idps.NAME]`` table of an Okta org; defaults live in ``OktaIdp.SETTINGS``."""

    url: str
    authorization_server: str
    api_token: Secret | None
    admin_client_id: str | None
    admin_private_key: Secret | None
    admin_key_id: str | None
    max_rate_limit_wait: float
    tls_verify: bool
    ca_file: str | None
    timeout: float



class OktaIdp:
    """An Okta org's OIDC apps, managed through the Apps API."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("url", required=True, help="the org URL, e.g. https://example.okta.com"),
        Setting("authorization_server", default="default",
                help="authorization server the clients get tokens from ('org': the org's)"),
        Setting("api_token", secret=True, help="SSWS API token (use a service app instead)"),
        Setting("admin_client_id", help="service app signing in with private_key_jwt, "
                                        f"granted the scope {SCOPE}"),
        Setting("admin_private_key", secret=True, help="PEM private key of the service app"),
        Setting("admin_key_id", help="'kid' of that key as registered in Okta"),
        Setting("max_rate_limit_wait", "duration", default=60.0,
                help="longest wait for a rate-limit window; longer ones pause the IdP"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
    )
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("okta_app_id", help="the Okta app's id, if it is not the client id"),
    )

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        if settings.get("admin_client_id") and settings.get("api_token") is not None:
            return [("api_token", "give either api_token or admin_client_id (a service app), "
                                  "not both")]
        return []

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self._settings = typed(OktaSettings, settings)
        self._url = self._settings.url.rstrip("/")
        s = self._settings
        self._http = SaasAdminHttp(f"Okta {name!r}", self._url, prefix="X-Rate-Limit-",
                                   max_wait=s.max_rate_limit_wait, timeout=s.timeout,
                                   verify=s.ca_file or s.tls_verify, transport=transport)
        self._apps: dict[ClientId, str] = {}
        self._token = AdminToken(self._sign_in)

    def configure_client(self, client_id: ClientId, settings: Mapping[str, Any]) -> None:
        app = settings.get("okta_app_id")
        if app:
            self._apps[client_id] = str(app)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._http.start()

    def close(self) -> None:
        self._http.close()

    def default_token_endpoint(self) -> str:
        server = self._settings.authorization_server
        if server == "org":
            return f"{self._url}/oauth2/v1/token"
        return f"{self._url}/oauth2/{path_segment(server)}/v1/token"

    # -- transport -------------------------------------------------------------------------

    def _sign_in(self) -> tuple[Secret, float]:
        """An access token for the service app (private_key_jwt), and until when to cache it."""
        s = self._settings
        if s.admin_private_key is None or not s.admin_client_id:
            raise IdpAccessDenied(f"Okta {self.name!r}: admin_private_key is not loaded")
        endpoint = f"{self._url}/oauth2/v1/token"
        now = int(time.time())
        claims = {"iss": s.admin_client_id, "sub": s.admin_client_id, "aud": endpoint,
                  "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
        try:
            assertion = jwt.encode(claims, s.admin_private_key.reveal(), algorithm="RS256",
                                   headers={"kid": s.admin_key_id} if s.admin_key_id else None)
        except (ValueError, TypeError, jwt.PyJWTError):
            raise IdpAccessDenied(f"Okta {self.name!r}: admin_private_key is not a usable RSA "
                                  "private key in PEM form") from None
        response = self._http.request("POST", endpoint, data={
            "grant_type": "client_credentials", "scope": SCOPE,
            "client_assertion_type": _ASSERTION_TYPE, "client_assertion": assertion})
        body = json_object(response)
        if response.status_code >= 500:
            raise IdpUnavailable(f"Okta {self.name!r}: the org token endpoint answered HTTP "
                                 f"{response.status_code}")
        if response.status_code != 200:
            error = str(body.get("error", "")) if body else ""
            if error == "invalid_scope":
                raise IdpAccessDenied(
                    f"Okta {self.name!r}: the service app {s.admin_client_id!r} may not request "
                    f"the scope {SCOPE!r}; grant it on the app's Okta API Scopes tab "
                    f"({_okta_text(response)})")
            raise IdpAccessDenied(
                f"Okta {self.name!r}: the service app {s.admin_client_id!r} could not sign in "
                f"(HTTP {response.status_code}: {_okta_text(response)}); check admin_client_id, "
                "admin_private_key and the public key registered for the app, and that "
                "'Require DPoP' is off")
        return admin_token(body, f"Okta {self.name!r}: the org token endpoint")

    def _call(self, method: str, path: str, *, app: str, json: Any = None,
              ok: tuple[int, ...] = (200, 201, 204), missing_ok: bool = False
              ) -> httpx.Response:
        def send(authorization: str) -> httpx.Response:
            return self._http.request(method, path, json=json, headers={
                "Authorization": authorization, "Accept": "application/json"})

        s = self._settings
        if s.admin_client_id:
            response = self._token.send(lambda token: send(f"Bearer {token.reveal()}"))
        elif s.api_token is None:
            raise IdpAccessDenied(f"Okta {self.name!r}: no admin credential is loaded: set "
                                  "admin_client_id with admin_private_key, or api_token")
        else:
            response = send(f"SSWS {s.api_token.reveal()}")
        status = response.status_code
        if status in ok or (missing_ok and status == 404):
            return response
        text = _okta_text(response)
        where = f"Okta {self.name!r}: {method} {path}"
        if status == 401:
            raise IdpAccessDenied(f"{where} was refused (HTTP 401: {text}); check the admin "
                                  "api_token or service app")
        if status == 403:
            if "insufficient_scope" in response.headers.get("WWW-Authenticate", ""):
                raise IdpAccessDenied(
                    f"{where} was refused (HTTP 403: {text}); the admin token lacks the scope "
                    f"{SCOPE!r}: grant it to the service app {self._settings.admin_client_id!r}")
            raise IdpAccessDenied(
                f"{where} was refused (HTTP 403: {text}); the admin behind rotator's credential "
                f"may not change app {app!r}. Okta refuses changes to an app that holds admin "
                "roles unless a super administrator makes them; otherwise give the admin the "
                "Application Administrator role for this app")
        if status == 404:
            raise IdpNotFound(f"{where}: not found ({text})")
        if status >= 500:
            raise IdpUnavailable(f"{where} answered HTTP {status}: {text}")
        raise IdentityProviderError(f"{where} answered HTTP {status}: {text}")

    def _app(self, client_id: ClientId) -> str:
        return self._apps.get(client_id, client_id)

    def _secrets_path(self, client_id: ClientId) -> str:
        return f"/api/v1/apps/{path_segment(self._app(client_id))}/credentials/secrets"

    def _list(self, client_id: ClientId) -> list[tuple[str, str, str]]:
        """(id, status, created) of the app's secrets, oldest first."""
        response = self._call("GET", self._secrets_path(client_id), app=self._app(client_id))
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, list):
            raise IdpUnavailable(f"Okta {self.name!r}: the secret list is not a JSON list")
        found = []
        for item in body:
            if not isinstance(item, dict):
                continue
            sid, status, created = item.get("id"), item.get("status"), item.get("created")
            if isinstance(sid, str) and sid and status in ("ACTIVE", "INACTIVE"):
                found.append((sid, str(status), created if isinstance(created, str) else ""))
        return sorted(found, key=lambda s: s[2])

    def _accepted(self, client_id: ClientId, value: Secret) -> bool:
        """Whether Okta's token endpoint authenticates ``client_id`` with ``value``.

        Asked without a scope: a 200, or a 400 OAuth error other than ``invalid_client``
        (``invalid_scope`` where the server has no default scope), means the secret
        authenticated. Tried as client_secret_basic, then client_secret_post.
        """
        endpoint = self.default_token_endpoint()
        register_credentials(client_id, value)  # an echoed Basic header is redacted too
        for basic in (True, False):
            data = {"grant_type": "client_credentials"}
            if not basic:
                data |= {"client_id": client_id, "client_secret": value.reveal()}
            response = self._http.request(
                "POST", endpoint, data=data, headers={"Accept": "application/json"},
                auth=(client_id, value.reveal()) if basic else None)
            status = response.status_code
            error = (json_object(response) or {}).get("error")
            if status == 200 or (status == 400 and isinstance(error, str)
                                 and error != "invalid_client"):
                return True
            if status >= 500:
                raise IdpUnavailable(f"Okta {self.name!r}: the token endpoint answered HTTP "
                                     f"{status}")
            if status not in (400, 401):
                raise IdentityProviderError(
                    f"Okta {self.name!r}: the token endpoint {endpoint} answered HTTP {status} "
                    "to a client-credentials request; check authorization_server")
        return False

    def _retire(self, client_id: ClientId, secret_id: str, status: str) -> None:
        path = f"{self._secrets_path(client_id)}/{path_segment(secret_id)}"
        app = self._app(client_id)
        if status == "ACTIVE":
            self._call("POST", f"{path}/lifecycle/deactivate", app=app, missing_ok=True)
        self._call("DELETE", path, app=app, missing_ok=True)

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        app = self._app(client_id)
        body = json_object(self._call("GET", f"/api/v1/apps/{path_segment(app)}", app=app))
        if body is None:
            raise IdpUnavailable(f"Okta {self.name!r}: app {app!r} did not answer a JSON object")
        return IdpCapabilities(max_active_secrets=2, caller_sets_value=True,
                               can_revoke_old=True, can_read_current=False)

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is None:
            raise IdentityProviderError(f"Okta {self.name!r}: rotator chooses Okta client "
                                        "secrets; none was given")
        present = self._list(client_id)
        if len(present) >= 2:
            active = [s for s in present if s[1] == "ACTIVE"]
            if active and self._accepted(client_id, value):
                # An earlier attempt of this rotation added it: the newest secret is ours.
                return IssuedSecret(value, active[-1][0])
            inactive = [s for s in present if s[1] == "INACTIVE"]
            if not inactive:
                raise IdentityProviderError(
                    f"Okta {self.name!r}: app {self._app(client_id)!r} already holds two active "
                    "client secrets, Okta's limit; deactivate and delete the one not in use")
            for sid, status, _ in inactive:  # left by an interrupted retirement: unusable
                self._retire(client_id, sid, status)
        response = self._call("POST", self._secrets_path(client_id), app=self._app(client_id),
                              json={"client_secret": value.reveal(), "status": "ACTIVE"})
        body = json_object(response)
        new_id = body.get("id") if body else None
        if not isinstance(new_id, str) or not new_id:
            raise IdpUnavailable(f"Okta {self.name!r}: the new secret came without an id")
        return IssuedSecret(value, new_id)

    def current_secret(self, client_id: ClientId) -> Secret | None:
        return None  # rotator never needs Okta to hand a stored secret back

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        if not issued.secret_ref:
            raise IdentityProviderError(f"Okta {self.name!r}: the new secret's id is unknown, "
                                        "so it cannot be discarded")
        for sid, status, _ in self._list(client_id):
            if sid == issued.secret_ref:
                self._retire(client_id, sid, status)

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        present = self._list(client_id)
        if not any(sid == keep.secret_ref and status == "ACTIVE" for sid, status, _ in present):
            raise IdentityProviderError(
                f"Okta {self.name!r}: the secret rotator promoted ({keep.secret_ref!r}) is not "
                f"an active secret of app {self._app(client_id)!r}; refusing to retire anything")
        count = 0
        for sid, status, _ in present:
            if sid != keep.secret_ref:
                self._retire(client_id, sid, status)
                count += 1
        return count


def _okta_text(response: httpx.Response) -> str:
    """Okta's ``errorCode: errorSummary (causes)`` or an OAuth error, redacted and short."""
    body = json_object(response)
    if body is None:
        return redact(response.text)[:200] or "no body"
    parts = [str(body[k]) for k in ("errorCode", "errorSummary", "error", "error_description")
             if body.get(k)]
    causes = body.get("errorCauses")
    if isinstance(causes, list):
        parts += [str(c.get("errorSummary")) for c in causes
                  if isinstance(c, dict) and c.get("errorSummary")]
    return redact("; ".join(parts) or str(body))[:200]
