"""Ory Hydra's admin API as an identity provider (tested against Hydra v2.3.0).

Hydra keeps one secret per client and lets the caller choose it: rotator sets the value it
generated and staged with ``PATCH /admin/clients/{id}`` (a JSON Patch replacing
``/client_secret``). The old secret stops working at once, so Hydra clients follow the
engine's single-secret family with a caller-chosen value (``STAGED``): the new value is in
every store as PENDING before Hydra hears of it, and no issued secret can be lost. Hydra
never returns a stored secret, so ``current_secret`` cannot tell.

Newer Hydra releases and Ory Network also offer ``POST /admin/clients/{id}/secrets/rotate``
(old secret stays valid). ``rotate_endpoint = "auto"`` probes for it without side effects
(``GET`` on that path: 405 means the route exists, 404 that it does not) and, where it
exists, refuses to rotate rather than guess at an API rotator has not been tested against;
``"never"`` skips the probe and always uses the PATCH.

Hydra's admin port has no authentication of its own: it must only be reachable by trusted
callers. Where a proxy or Ory Network guards it, ``admin_token`` is sent as a bearer token,
or in the header named by ``admin_token_header``.
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

_HEADER_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                          "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class HydraSettings:
    """The checked ``[idps.NAME]`` table of a Hydra; defaults live in ``HydraIdp.SETTINGS``."""

    admin_url: str
    public_url: str | None
    admin_token: Secret | None
    admin_token_header: str
    rotate_endpoint: str
    tls_verify: bool
    ca_file: str | None
    timeout: float



class HydraIdp:
    """An Ory Hydra's OAuth 2.0 clients, managed through its admin API."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("admin_url", required=True,
                help="Hydra admin API base URL, e.g. https://hydra-admin.internal:4445"),
        Setting("public_url", help="Hydra public URL; its /oauth2/token is the token endpoint"),
        Setting("admin_token", secret=True,
                help="token a proxy or Ory Network requires in front of the admin API"),
        Setting("admin_token_header", default="Authorization",
                help="header carrying admin_token; Authorization sends 'Bearer <token>'"),
        Setting("rotate_endpoint", default="auto", choices=("auto", "never")),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
    )
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]] = ()

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        header = settings.get("admin_token_header")
        if isinstance(header, str) and not set(header) <= _HEADER_CHARS:
            return [("admin_token_header", "must be an HTTP header name")]
        return []

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self._settings = typed(HydraSettings, settings)
        self._url = self._settings.admin_url.rstrip("/")
        s = self._settings
        self._admin = AdminApi(f"Hydra {name!r}", self._url, base_url=self._url,
                               timeout=s.timeout, verify=s.ca_file or s.tls_verify,
                               transport=transport,
                               error_fields=("error", "error_description", "error_hint"))
        self._has_rotate_endpoint: bool | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._admin.start()

    def close(self) -> None:
        self._admin.close()

    def default_token_endpoint(self) -> str | None:
        public = self._settings.public_url
        return f"{public.rstrip('/')}/oauth2/token" if public else None

    # -- transport -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        token = self._settings.admin_token
        if token is None:
            return {}
        header = self._settings.admin_token_header
        value = token.reveal()
        return {header: f"Bearer {value}" if header.lower() == "authorization" else value}

    def _call(self, method: str, path: str, *, json: Any = None,
              ok: tuple[int, ...] = (200, 204), what: str) -> httpx.Response:
        headers = self._headers()
        if method == "PATCH":
            headers["Content-Type"] = "application/json-patch+json"
        return self._admin.call(
            method, path, json=json, headers=headers, ok=ok,
            refused=f"the admin API needs permission to {what}: check admin_token and what the "
                    "proxy or Ory Network project in front of it grants that token")

    def _client_path(self, client_id: ClientId) -> str:
        return f"/admin/clients/{path_segment(client_id)}"

    def _rotate_endpoint_exists(self, client_id: ClientId) -> bool:
        """Whether Hydra routes ``…/secrets/rotate``; asked without changing anything."""
        if self._has_rotate_endpoint is None:
            response = self._call("GET", f"{self._client_path(client_id)}/secrets/rotate",
                                  ok=(404, 405), what="read clients")
            self._has_rotate_endpoint = response.status_code == 405
        return self._has_rotate_endpoint

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        body = self._call("GET", self._client_path(client_id), what="read clients")
        try:
            known = isinstance(body.json(), dict)
        except ValueError:
            known = False
        if not known:
            raise IdentityProviderError(f"Hydra {self.name!r}: GET client {client_id!r} did not "
                                        "answer a JSON object")
        if self._settings.rotate_endpoint == "auto" and self._rotate_endpoint_exists(client_id):
            raise IdentityProviderError(
                f"Hydra {self.name!r} offers POST /admin/clients/{{id}}/secrets/rotate, which "
                "rotator does not drive yet; set rotate_endpoint = \"never\" in [idps."
                f"{self.name}] to set secrets with PATCH (the old secret then stops working "
                "at once)")
        return IdpCapabilities(max_active_secrets=1, caller_sets_value=True,
                               can_revoke_old=False, can_read_current=False)

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is None:
            raise IdentityProviderError(f"Hydra {self.name!r}: rotator chooses Hydra client "
                                        "secrets; none was given")
        patch = [{"op": "replace", "path": "/client_secret", "value": value.reveal()}]
        self._call("PATCH", self._client_path(client_id), json=patch, what="update clients")
        return IssuedSecret(value)

    def current_secret(self, client_id: ClientId) -> Secret | None:
        return None  # Hydra keeps only a hash

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        raise IdentityProviderError(f"Hydra {self.name!r} keeps one secret per client: a new "
                                    "secret cannot be discarded to bring the old one back")

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        return 0  # the old secret died when the new one was set
