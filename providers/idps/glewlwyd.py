"""Glewlwyd's admin API as an identity provider (tested against Debian's Glewlwyd 2.7.5).

Glewlwyd keeps one ``client_secret`` per client, stored as given, and lets the admin API
set it: rotator reads the client (``GET {url}/api/client/{id}``), puts it back whole with
the value rotator generated and staged (``PUT {url}/api/client/{id}``; the PUT replaces
every property, so nothing read may be dropped), and reads it again to check the new value
took. The old secret stops working at once, so Glewlwyd clients follow the engine's
single-secret family with a caller-chosen value (``STAGED``). Because the admin API returns
``client_secret`` as stored, ``current_secret`` can tell which secret Glewlwyd holds.

Authentication: an admin API key (Glewlwyd 2.6 and later), sent as ``Authorization: token
<key>``; Glewlwyd accepts it only when its configuration has ``admin_session_authentication``
including ``api_key``. An API key grants the whole admin API except API-key management:
Glewlwyd has no narrower role for editing clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from providers.idps._admin_api import AdminApi
from rotator._remote import path_segment
from rotator.errors import IdentityProviderError
from rotator.interfaces import ClientId, IdpCapabilities, IssuedSecret, RotationId
from rotator.secrets import Secret
from rotator.settings import Setting, typed

_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/")
#: Properties of a client Glewlwyd reports but does not take back in a PUT.
_READ_ONLY = ("source",)


@dataclass(frozen=True)
class GlewlwydSettings:
    """The checked ``[idps.NAME]`` table of a Glewlwyd; defaults in ``GlewlwydIdp.SETTINGS``."""

    url: str
    api_key: Secret | None
    api_prefix: str
    oidc_plugin: str
    tls_verify: bool
    ca_file: str | None
    timeout: float



class GlewlwydIdp:
    """A Glewlwyd's OAuth 2.0 clients, managed through its admin API with an API key."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("url", required=True, help="Glewlwyd's base URL, e.g. https://sso.example.com"),
        Setting("api_key", required=True, secret=True,
                help="an admin API key (Glewlwyd's admin page, API keys)"),
        Setting("api_prefix", default="api", help="Glewlwyd's api_prefix setting"),
        Setting("oidc_plugin", default="oidc",
                help="name of the OpenID Connect plugin instance serving the token endpoint"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
    )
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]] = ()

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems = []
        for key in ("api_prefix", "oidc_plugin"):
            value = settings.get(key)
            if isinstance(value, str) and (not value.strip("/") or
                                           not set(value) <= _PREFIX_CHARS or ".." in value):
                problems.append((key, "must be a URL path of letters, digits, '_', '-' and '/'"))
        return problems

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self._settings = typed(GlewlwydSettings, settings)
        self._url = self._settings.url.rstrip("/")
        self._api = f"{self._url}/{self._settings.api_prefix.strip('/')}"
        s = self._settings
        self._admin = AdminApi(f"Glewlwyd {name!r}", self._url, base_url=self._api,
                               timeout=s.timeout, verify=s.ca_file or s.tls_verify,
                               transport=transport,
                               error_fields=("error", "error_description", "message"))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._admin.start()

    def close(self) -> None:
        self._admin.close()

    def default_token_endpoint(self) -> str | None:
        return f"{self._api}/{self._settings.oidc_plugin.strip('/')}/token"

    # -- transport -------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None,
              params: Mapping[str, str] | None = None) -> httpx.Response:
        key = self._settings.api_key
        headers = {"Authorization": f"token {key.reveal()}"} if key is not None else {}
        return self._admin.call(
            method, path, json=json, params=params, headers=headers, ok=(200,),
            refused="rotator needs an admin API key (api_key) that is enabled, and Glewlwyd "
                    "must accept API keys (admin_session_authentication including api_key)")

    def _client_path(self, client_id: ClientId) -> str:
        return f"/client/{path_segment(client_id)}"

    def _read_client(self, client_id: ClientId) -> dict[str, Any]:
        """The client's properties, checked enough to be put back whole."""
        response = self._call("GET", self._client_path(client_id))
        try:
            body = response.json()
        except ValueError:
            body = None
        if (not isinstance(body, dict) or not isinstance(body.get("client_id"), str)
                or body["client_id"].upper() != client_id.upper()
                or not isinstance(body.get("source", ""), str)
                or not isinstance(body.get("scope"), list)
                or not isinstance(body.get("enabled"), bool)):
            raise IdentityProviderError(
                f"Glewlwyd {self.name!r}: GET client {client_id!r} did not answer that client's "
                "properties as a JSON object; nothing was changed")
        return body

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        client = self._read_client(client_id)
        if client.get("confidential") is not True:
            raise IdentityProviderError(
                f"Glewlwyd {self.name!r}: client {client_id!r} is not confidential, so it has "
                "no secret to rotate")
        return IdpCapabilities(max_active_secrets=1, caller_sets_value=True,
                               can_revoke_old=False, can_read_current=True)

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is None:
            raise IdentityProviderError(f"Glewlwyd {self.name!r}: rotator chooses Glewlwyd "
                                        "client secrets; none was given")
        client = self._read_client(client_id)
        if client.get("confidential") is not True:
            raise IdentityProviderError(f"Glewlwyd {self.name!r}: client {client_id!r} is not "
                                        "confidential; nothing was changed")
        body = {k: v for k, v in client.items() if k not in _READ_ONLY}
        body["client_secret"] = value.reveal()
        source = client.get("source")
        self._call("PUT", self._client_path(client_id), json=body,
                   params={"source": source} if source else None)
        if self.current_secret(client_id) != value:
            raise IdentityProviderError(
                f"Glewlwyd {self.name!r}: client {client_id!r} does not hold the new secret "
                "after the update (a read-only client module?); check the client at Glewlwyd")
        return IssuedSecret(value)

    def current_secret(self, client_id: ClientId) -> Secret | None:
        stored = self._read_client(client_id).get("client_secret")
        return Secret(stored) if isinstance(stored, str) and stored else None

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        raise IdentityProviderError(f"Glewlwyd {self.name!r} keeps one secret per client: a "
                                    "new secret cannot be discarded to bring the old one back")

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        return 0  # the old secret died when the new one was set
