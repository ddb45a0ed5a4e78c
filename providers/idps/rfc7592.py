"""Any RFC 7592 server (OAuth 2.0 Dynamic Client Registration Management) as an identity provider.

Each client brings its own ``registration_client_uri`` and registration access token (RAT).
Rotation reads the client's metadata (``GET``), sends it back (``PUT``, without
``client_secret``: the server generates secrets, a client may not choose one) and takes the
new ``client_secret`` from the answer. RFC 7592 lets a server issue a new secret on update
but does not make it: one that answers without a new secret fails the rotation with
:class:`~rotator.errors.IdpCannotRotate` (the old secret still works) rather than report
success. Tested against Ory Hydra v2.3.0 and node ``oidc-provider`` 9 (both keep the secret
on update: the rotation fails clearly) and Glewlwyd where its launcher is available.

The RAT may change on use: Hydra and oidc-provider answer every ``PUT`` with a new one and
refuse the old one from then on. It lives in a store location the client names
(``registration_token_store`` and ``registration_token_location``), written through the
engine's :class:`~rotator.interfaces.ClientState`, and a new RAT is saved there before the
answer is used any further. One window cannot be closed: a process killed between the
server's answer and that save loses the new RAT (the server already refuses the old one).
The next run then fails with a message naming this cause and what the operator does; see
``docs/idps.md``.

Servers that return the secret on ``GET`` (oidc-provider, Glewlwyd) let a crashed rotation
recover the secret the server issued (``can_read_current``); the adapter finds out by
looking, not by the server's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from rotator import _bounded as bounded
from rotator._remote import error_text
from rotator.errors import (
    IdentityProviderError,
    IdpAccessDenied,
    IdpCannotRotate,
    IdpNotFound,
    IdpUnavailable,
    StoreError,
)
from rotator.interfaces import ClientId, ClientState, IdpCapabilities, IssuedSecret, RotationId
from rotator.secrets import Secret, check_secret_value, redact
from rotator.settings import Setting, typed

#: Fields a client must not send back in an update (RFC 7592 §2.2), and the secret it may not
#: choose.
_NOT_SENT = frozenset({"client_secret", "registration_access_token", "registration_client_uri",
                       "client_secret_expires_at", "client_id_issued_at"})


@dataclass(frozen=True)
class Rfc7592Settings:
    """The checked ``[idps.NAME]`` table; defaults live in ``Rfc7592Idp.SETTINGS``."""

    token_endpoint: str | None
    tls_verify: bool
    ca_file: str | None
    timeout: float


@dataclass(frozen=True)
class Rfc7592Client:
    """One client's checked per-client settings."""

    registration_client_uri: str
    registration_token_store: str
    registration_token_location: str


class Rfc7592Idp:
    """Clients managed through their RFC 7592 client configuration endpoints."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("token_endpoint", help="the server's token endpoint, for clients that name none"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path"),
        Setting("timeout", "duration", default=10.0),
    )
    CLIENT_SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("registration_client_uri", required=True,
                help="the client configuration endpoint the server returned at registration"),
        Setting("registration_token_store", "store", required=True,
                help="the store that keeps this client's registration access token"),
        Setting("registration_token_location", required=True,
                help="where in that store the registration access token is kept"),
    )

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        from rotator.config import url_problem

        endpoint = settings.get("token_endpoint")
        problem = url_problem(endpoint) if isinstance(endpoint, str) else None
        return [("token_endpoint", problem)] if problem else []

    @staticmethod
    def validate_client_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        from rotator.config import url_problem

        uri = settings.get("registration_client_uri")
        if isinstance(uri, str) and url_problem(uri):
            return [("registration_client_uri", "must be an https:// URL (http:// only to this "
                                                "machine): it receives the registration access "
                                                "token")]
        return []

    def __init__(self, name: str, settings: Mapping[str, Any],
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self._settings = typed(Rfc7592Settings, settings)
        self._transport = transport
        self._http: httpx.Client | None = None
        self._clients: dict[ClientId, Rfc7592Client] = {}
        self._states: dict[ClientId, ClientState] = {}

    def configure_client(self, client_id: ClientId, settings: Mapping[str, Any]) -> None:
        self._clients[client_id] = typed(Rfc7592Client, settings)

    def client_state_location(self, client_id: ClientId) -> tuple[str, str] | None:
        client = self._clients.get(client_id)
        if client is None:
            return None
        return client.registration_token_store, client.registration_token_location

    def bind_client_state(self, client_id: ClientId, state: ClientState) -> None:
        self._states[client_id] = state

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        s = self._settings
        self._http = bounded.client(timeout=s.timeout, verify=s.ca_file or s.tls_verify,
                                    transport=self._transport, trust_env=False)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def default_token_endpoint(self) -> str | None:
        return self._settings.token_endpoint

    # -- transport -------------------------------------------------------------------------

    def _client(self, client_id: ClientId) -> tuple[Rfc7592Client, ClientState]:
        client = self._clients.get(client_id)
        state = self._states.get(client_id)
        if client is None or state is None:
            raise IdpNotFound(f"RFC 7592 IdP {self.name!r}: client {client_id!r} has no "
                              "registration_client_uri configured")
        return client, state

    def _rat(self, client_id: ClientId, state: ClientState) -> Secret:
        try:
            rat = state.load()
        except StoreError as exc:
            raise IdpUnavailable(f"RFC 7592 IdP {self.name!r}: cannot read client "
                                 f"{client_id!r}'s registration access token from {state}: "
                                 f"{exc}") from None
        if rat is None:
            raise IdpAccessDenied(
                f"RFC 7592 IdP {self.name!r}: no registration access token for client "
                f"{client_id!r} in {state}; store the token the server returned at "
                "registration there (as the client secret of that location)")
        return rat

    def _call(self, method: str, client_id: ClientId, *,
              json: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One authenticated call to the client's configuration endpoint; its JSON object."""
        if self._http is None:
            raise IdentityProviderError(f"RFC 7592 IdP {self.name!r} is not started")
        client, state = self._client(client_id)
        rat = self._rat(client_id, state)
        uri = client.registration_client_uri
        try:
            response = self._http.request(method, uri, json=json,
                                          headers={"Authorization": f"Bearer {rat.reveal()}"})
        except httpx.HTTPError as exc:
            kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
            raise IdpUnavailable(f"RFC 7592 IdP {self.name!r} at {uri} {kind}: "
                                 f"{redact(str(exc)) or type(exc).__name__}") from None
        status = response.status_code
        what = f"{method} {uri}"
        if status in (401, 403):
            raise IdpAccessDenied(
                f"RFC 7592 IdP {self.name!r}: {what} refused the registration access token "
                f"in {state} (HTTP {status}): the registration access token was refused. "
                "If a rotation was killed between the server's answer to an update and "
                "saving the new token, the server has replaced it; otherwise it was revoked. "
                f"Ask the server's administrator for a new registration access token for "
                f"client {client_id!r} and store it there; the stored client secret is not "
                "affected")
        if status == 404:
            raise IdpNotFound(f"RFC 7592 IdP {self.name!r}: {what} not found: "
                              f"{_error_text(response)}")
        if status >= 500 or status == 429:
            raise IdpUnavailable(f"RFC 7592 IdP {self.name!r}: {what} answered HTTP {status}: "
                                 f"{_error_text(response)}")
        if status != 200:
            raise IdentityProviderError(f"RFC 7592 IdP {self.name!r}: {what} answered HTTP "
                                        f"{status}: {_error_text(response)}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise IdpUnavailable(f"RFC 7592 IdP {self.name!r}: {what} did not answer a JSON "
                                 "object")
        if body.get("client_id") != client_id:
            raise IdentityProviderError(f"RFC 7592 IdP {self.name!r}: {what} answered for "
                                        f"another client than {client_id!r}")
        # The server may have replaced the RAT and refuse the old one from now on: keep the
        # new one before anything else can fail.
        self._keep_new_rat(client_id, state, rat, body)
        return body

    def _secret_in(self, body: Mapping[str, Any]) -> Secret | None:
        value = body.get("client_secret")
        return Secret(value) if isinstance(value, str) and value else None

    # -- IdentityProvider ------------------------------------------------------------------

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        body = self._call("GET", client_id)
        return IdpCapabilities(max_active_secrets=1, caller_sets_value=False,
                               can_revoke_old=False,
                               can_read_current=self._secret_in(body) is not None)

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if value is not None:
            raise IdentityProviderError(f"RFC 7592 IdP {self.name!r}: the server generates "
                                        "client secrets; a client may not choose one")
        metadata = self._call("GET", client_id)
        old = self._secret_in(metadata)
        update = {k: v for k, v in metadata.items() if k not in _NOT_SENT}
        method = update.get("token_endpoint_auth_method")
        if isinstance(method, list) and len(method) == 1:
            # RFC 7591 makes it one string; Glewlwyd reads it back as a list and refuses that.
            update["token_endpoint_auth_method"] = method[0]
        answer = self._call("PUT", client_id, json=update)  # a new RAT is saved in there
        new = self._secret_in(answer)
        if new is None or new == old:
            raise IdpCannotRotate(
                f"RFC 7592 IdP {self.name!r}: the server updated client {client_id!r} but "
                "issued no new client_secret: this server does not rotate secrets through "
                "RFC 7592. The client's secret is unchanged and still works; rotate it with "
                "this server's admin API instead")
        return IssuedSecret(new)

    def _keep_new_rat(self, client_id: ClientId, state: ClientState, used: Secret,
                      answer: Mapping[str, Any]) -> None:
        """Save the RAT in ``answer`` if it is not the one ``used``; before anything else."""
        token = answer.get("registration_access_token")
        if token is None:
            return  # the server keeps the token
        if not isinstance(token, str) or check_secret_value(token):
            raise IdentityProviderError(
                f"RFC 7592 IdP {self.name!r}: the server answered the update of client "
                f"{client_id!r} with a registration access token that cannot be stored "
                f"safely; if it refuses the old one now, ask its administrator for a new one "
                f"and store it in {state}")
        if token == used.reveal():
            return
        try:
            state.save(Secret(token))
        except StoreError as exc:
            raise IdentityProviderError(
                f"RFC 7592 IdP {self.name!r}: the server replaced client {client_id!r}'s "
                f"registration access token, but it could not be saved in {state} ({exc}); "
                "the server will refuse the stored one: ask its administrator for a new one "
                "and store it there") from None

    def current_secret(self, client_id: ClientId) -> Secret | None:
        return self._secret_in(self._call("GET", client_id))

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        raise IdentityProviderError(f"RFC 7592 IdP {self.name!r} keeps one secret per client: "
                                    "a new secret cannot be discarded to bring the old one back")

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        return 0  # the old secret died when the server issued the new one


def _error_text(response: httpx.Response) -> str:
    return error_text(response, ("error", "error_description"))
