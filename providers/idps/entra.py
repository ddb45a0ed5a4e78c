"""Microsoft Entra ID application passwords, managed through Microsoft Graph.

rotator signs in as an admin application of its own (client credentials at
``{authority_url}/{tenant}/oauth2/v2.0/token``, scope ``{graph_url}/.default``) that holds
the Graph application permission ``Application.ReadWrite.OwnedBy`` and is an owner of each
rotated application (or, less strictly, ``Application.ReadWrite.All``). Its token is cached
until shortly before it expires.

A rotation adds a password with ``POST /applications/{id}/addPassword``; Entra generates
the value (``secretText``, returned once), its ``keyId`` becomes the secret's reference and
its ``endDateTime`` (``secret_lifetime`` from now) the expiry rotator records. Entra keeps
any number of passwords valid at once, so rotations follow the overlap family: a failed
verification removes the new password (``removePassword`` by ``keyId``) and retirement
removes the old ones. Retirement removes only passwords rotator knows to be old: those it
added for this client (display name ``rotator <client id> ...``) and those named in the
client's ``adopt_key_ids`` (the password that was in use before rotator took over), never
the kept one nor a password somebody else added for another consumer.

Sovereign clouds: set ``authority_url`` and ``graph_url`` (e.g.
``https://login.microsoftonline.us`` and ``https://graph.microsoft.us``).

Errors: the token endpoint's ``AADSTS7000215`` (wrong admin secret) and ``AADSTS7000222``
(expired admin secret) become ``IdpAccessDenied`` saying which; Graph's 403
``Authorization_RequestDenied`` names the permissions needed; 429 is waited out as its
``Retry-After`` says (up to ``max_retry_after`` per wait, ``throttle_retries`` times), then
``IdpUnavailable``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx

from providers.idps._saas import AdminToken, admin_token, json_object
from rotator import _bounded as bounded
from rotator._remote import error_text, path_segment
from rotator.errors import (
    IdentityProviderError,
    IdpAccessDenied,
    IdpNotFound,
    IdpUnavailable,
)
from rotator.interfaces import ClientId, IdpCapabilities, IssuedSecret, RotationId
from rotator.secrets import Secret, redact
from rotator.settings import Setting, typed

OWNED_BY = "Application.ReadWrite.OwnedBy"
READ_WRITE_ALL = "Application.ReadWrite.All"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: The display name prefix of the passwords rotator adds.
MARK = "rotator"
#: AADSTS codes of the token endpoint a person must act on, and what to tell them.
_AADSTS = {
    "7000215": "the admin_client_secret is wrong (AADSTS7000215: invalid client secret)",
    "7000222": "the admin_client_secret has expired (AADSTS7000222): add a new password to "
               "the admin application and store it",
    "700016": "no application with admin_client_id exists in the tenant (AADSTS700016)",
    "90002": "the tenant does not exist (AADSTS90002)",
}


@dataclass(frozen=True)
class EntraSettings:
    """The checked ``[idps.NAME]`` table; defaults live in ``EntraIdp.SETTINGS``."""

    tenant: str
    admin_client_id: str
    admin_client_secret: Secret | None
    authority_url: str
    graph_url: str
    secret_lifetime: float
    propagation_delay: float
    throttle_retries: int
    max_retry_after: float
    tls_verify: bool
    ca_file: str | None
    timeout: float


@dataclass(frozen=True)
class _Client:
    object_id: str | None
    adopt: frozenset[str]



def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class EntraIdp:
    """Passwords of Entra ID application registrations, through Microsoft Graph."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("tenant", required=True, help="directory (tenant) id or domain"),
        Setting("admin_client_id", required=True,
                help="application (client) id of rotator's admin app, holding the Graph "
                     f"application permission {OWNED_BY} (and owning each rotated app) or "
                     f"{READ_WRITE_ALL}"),
        Setting("admin_client_secret", secret=True, required=True,
                help="client secret of the admin app"),
        Setting("authority_url", default="https://login.microsoftonline.com",
                help="sign-in authority; e.g. https://login.microsoftonline.us"),
        Setting("graph_url", default="https://graph.microsoft.com",
                help="Microsoft Graph; e.g. https://graph.microsoft.us"),
        Setting("secret_lifetime", "duration", default=180 * 86400.0,
                help="how long a new password is valid (its endDateTime)"),
        Setting("propagation_delay", "duration", default=30.0,
                help="how long verification keeps retrying a new password"),
        Setting("throttle_retries", "int", default=5),
        Setting("max_retry_after", "duration", default=120.0),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
    )
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("application_object_id",
                help="object id of the client's application; default: looked up by appId"),
        Setting("adopt_key_ids", "list[str]", default=[],
                help="keyIds of passwords added outside rotator that retirement may remove"),
    )

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self._s = typed(EntraSettings, settings)
        self._authority = self._s.authority_url.rstrip("/")
        self._graph = self._s.graph_url.rstrip("/")
        self._transport = transport
        self._sleep = sleep
        self._http: httpx.Client | None = None
        self._token = AdminToken(self._sign_in)
        self._clients: dict[ClientId, _Client] = {}
        self._object_ids: dict[ClientId, str] = {}

    def configure_client(self, client_id: ClientId, settings: Mapping[str, Any]) -> None:
        self._clients[client_id] = _Client(settings.get("application_object_id"),
                                           frozenset(settings.get("adopt_key_ids") or ()))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        s = self._s
        self._http = bounded.client(timeout=s.timeout, verify=s.ca_file or s.tls_verify,
                                    transport=self._transport, trust_env=False)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def default_token_endpoint(self) -> str:
        return f"{self._authority}/{path_segment(self._s.tenant)}/oauth2/v2.0/token"

    # -- transport -------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise IdentityProviderError(f"Entra {self.name!r} is not started")
        return self._http

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; 429 waited out as ``Retry-After`` says, a bounded number of times."""
        for attempt in range(self._s.throttle_retries + 1):
            try:
                response = self._client().request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else \
                    "is unreachable"
                raise IdpUnavailable(f"Entra {self.name!r}: {url.split('?')[0]} {kind}: "
                                     f"{redact(str(exc)) or type(exc).__name__}") from None
            if response.status_code not in (429, 503) or attempt == self._s.throttle_retries:
                return response
            self._sleep(self._retry_after(response))
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_after(self, response: httpx.Response) -> float:
        try:
            wait = float(response.headers.get("Retry-After", ""))
        except ValueError:
            wait = 1.0
        return min(max(wait, 0.0), self._s.max_retry_after) if wait == wait else 1.0

    def _sign_in(self) -> tuple[Secret, float]:
        secret = self._s.admin_client_secret
        if secret is None:
            raise IdpAccessDenied(f"Entra {self.name!r}: admin_client_secret is not loaded")
        response = self._send("POST", self.default_token_endpoint(), data={
            "grant_type": "client_credentials", "client_id": self._s.admin_client_id,
            "client_secret": secret.reveal(), "scope": f"{self._graph}/.default"})
        body = json_object(response)
        if response.status_code != 200:
            if response.status_code >= 500 or response.status_code == 429:
                raise IdpUnavailable(f"Entra {self.name!r}: the token endpoint answered "
                                     f"HTTP {response.status_code}")
            codes = body.get("error_codes") if body else None
            known = [_AADSTS[str(c)] for c in codes or () if str(c) in _AADSTS]
            reason = known[0] if known else _token_error(response)
            raise IdpAccessDenied(f"Entra {self.name!r}: admin app "
                                  f"{self._s.admin_client_id!r} could not sign in to tenant "
                                  f"{self._s.tenant!r}: {reason}")
        return admin_token(body, f"Entra {self.name!r}: the token endpoint")

    def _call(self, method: str, path: str, *, json: Any = None,
              ok: tuple[int, ...] = (200, 204)) -> httpx.Response:
        url = f"{self._graph}/v1.0{path}"
        response = self._token.send(lambda token: self._send(
            method, url, json=json, headers={"Authorization": f"Bearer {token.reveal()}"}))
        status = response.status_code
        if status in ok:
            return response
        code = _graph_code(response)
        if status in (401, 403):
            raise IdpAccessDenied(
                f"Entra {self.name!r}: {method} {path} was refused (HTTP {status} {code}); the "
                f"admin app {self._s.admin_client_id!r} needs the Graph application permission "
                f"{OWNED_BY} and to be an owner of the application, or {READ_WRITE_ALL}, with "
                "admin consent granted")
        if status == 404:
            raise IdpNotFound(f"Entra {self.name!r}: {path} not found: {_graph_error(response)}")
        if status >= 500 or status == 429:
            error = IdpUnavailable(f"Entra {self.name!r}: {method} {path} answered HTTP "
                                   f"{status}: {_graph_error(response)}")
            if status == 429:  # still throttled after our retries: the daemon pauses the IdP
                error.status = 429  # type: ignore[attr-defined]
                error.retry_after = self._retry_after(response)  # type: ignore[attr-defined]
            raise error
        raise IdentityProviderError(f"Entra {self.name!r}: {method} {path} answered HTTP "
                                    f"{status}: {_graph_error(response)}")

    # -- the application -------------------------------------------------------------------

    def _settings_of(self, client_id: ClientId) -> _Client:
        return self._clients.get(client_id) or _Client(None, frozenset())

    def _application(self, client_id: ClientId) -> dict[str, Any]:
        """The client's application object, its object id remembered."""
        object_id = self._object_ids.get(client_id) or self._settings_of(client_id).object_id
        if object_id:
            path = f"/applications/{path_segment(object_id)}"
        else:
            path = f"/applications(appId='{path_segment(client_id.replace(chr(39), chr(39) * 2))}')"
        body = json_object(self._call("GET", path))
        if body is None or not isinstance(body.get("id"), str) or not body["id"]:
            raise IdpUnavailable(f"Entra {self.name!r}: GET {path} did not answer an "
                                 "application object")
        if body.get("appId") != client_id:
            raise IdentityProviderError(f"Entra {self.name!r}: application {body['id']!r} has "
                                        f"appId {body.get('appId')!r}, not {client_id!r}; "
                                        "check application_object_id")
        self._object_ids[client_id] = body["id"]
        return body

    def _passwords(self, client_id: ClientId) -> tuple[str, list[dict[str, Any]]]:
        app = self._application(client_id)
        found = app.get("passwordCredentials")
        passwords = [p for p in found if isinstance(p, dict) and isinstance(p.get("keyId"), str)] \
            if isinstance(found, list) else []
        return path_segment(app["id"]), passwords

    def _remove(self, app_path: str, key_id: str) -> None:
        self._call("POST", f"/applications/{app_path}/removePassword", json={"keyId": key_id})

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        self._application(client_id)
        return IdpCapabilities(max_active_secrets=2, caller_sets_value=False,
                               can_revoke_old=True, can_read_current=False,
                               propagation_delay=self._s.propagation_delay)

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is not None:
            raise IdentityProviderError("Entra generates application passwords itself")
        app = path_segment(self._application(client_id)["id"])
        end = datetime.now(UTC) + timedelta(seconds=self._s.secret_lifetime)
        credential = {"displayName": f"{MARK} {client_id} {rotation_id}",
                      "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
        body = json_object(self._call("POST", f"/applications/{app}/addPassword",
                                  json={"passwordCredential": credential}, ok=(200, 201)))
        text = body.get("secretText") if body else None
        key_id = body.get("keyId") if body else None
        if not isinstance(text, str) or not text or not isinstance(key_id, str) \
                or not _GUID.fullmatch(key_id):
            # Left behind if it was added: it carries rotator's name, so retirement removes it.
            raise IdpUnavailable(f"Entra {self.name!r}: addPassword answered without a usable "
                                 "secretText and keyId (a GUID)")
        return IssuedSecret(Secret(text), key_id,
                            _parse_time(body.get("endDateTime") if body else None) or end)

    def current_secret(self, client_id: ClientId) -> Secret | None:
        return None  # Graph never returns a password after addPassword

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        app, passwords = self._passwords(client_id)
        if issued.secret_ref is not None:
            doomed = [p["keyId"] for p in passwords if p["keyId"] == issued.secret_ref]
        else:  # the keyId was never recorded: find rotator's password by its hint
            hint = issued.value.reveal()[:3]
            doomed = [p["keyId"] for p in passwords if p.get("hint") == hint
                      and str(p.get("displayName") or "").startswith(f"{MARK} {client_id} ")
                      and previous.reveal()[:3] != hint]
        for key_id in doomed:
            self._remove(app, key_id)

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        if keep.secret_ref is None:
            raise IdentityProviderError(
                f"Entra {self.name!r}: the keyId of the current password of {client_id!r} was "
                "not recorded; refusing to retire anything")
        app, passwords = self._passwords(client_id)
        if not any(p["keyId"] == keep.secret_ref for p in passwords):
            raise IdentityProviderError(
                f"Entra {self.name!r}: the password rotator promoted (keyId "
                f"{keep.secret_ref}) is gone from {client_id!r}; refusing to retire anything")
        adopted = self._settings_of(client_id).adopt
        mine = f"{MARK} {client_id} "
        doomed = [p["keyId"] for p in passwords if p["keyId"] != keep.secret_ref and (
            p["keyId"] in adopted or str(p.get("displayName") or "").startswith(mine))]
        for key_id in doomed:
            self._remove(app, key_id)
        return len(doomed)


def _graph_code(response: httpx.Response) -> str:
    body = json_object(response)
    error = body.get("error") if body else None
    code = error.get("code") if isinstance(error, dict) else None
    return redact(str(code))[:80] if code else "no error code"


def _graph_error(response: httpx.Response) -> str:
    body = json_object(response)
    error = body.get("error") if body else None
    if isinstance(error, dict):
        parts = [str(error[k]) for k in ("code", "message") if error.get(k)]
        return redact("; ".join(parts))[:200] or "no error text"
    return error_text(response, ("error", "message"))


def _token_error(response: httpx.Response) -> str:
    text = error_text(response, ("error", "error_description"))
    return text.split(" Trace ID:")[0]
