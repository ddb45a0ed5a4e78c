"""The IdentityProvider contract, run against every IdP adapter on a real server.

Cases: Keycloak without the secret-rotation policy (one secret, Keycloak generates it),
Keycloak with it (two secrets), Hydra v2.3.0 (one secret, rotator chooses it), Glewlwyd 2.7's
admin API (one secret, rotator chooses it, the admin API reads it back), RFC 7592 on
Glewlwyd (one secret, the server generates it on update); Entra ID and Cognito on fakes
built from their documentation (tests/fakes/), Okta (two secrets with ids, rotator
chooses) and Auth0 (one secret, rotator chooses) on fakes too. RFC 7592 on Hydra and on
oidc-provider, which issue no new secret on update, have a class of their own. Each test
asks the adapter's declared capabilities what must happen and checks it at the server's
token endpoint.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from entra_cognito_cases import cognito_case, cognito_fake, entra_case, entra_fake
from fakes.cognito import FakeCognito
from fakes.entra import FakeEntra
from rfc7592_env import DcrServer, glewlwyd_dcr, hydra_dcr, oidc_provider_dcr
from rotation_env import KeycloakRealm
from server_glewlwyd import Glewlwyd
from servers import ROTATION_ATTRIBUTES, Hydra, free_port

from providers.idps.auth0 import Auth0Idp
from providers.idps.glewlwyd import GlewlwydIdp
from providers.idps.hydra import HydraIdp
from providers.idps.keycloak import KeycloakIdp
from providers.idps.okta import OktaIdp
from providers.idps.rfc7592 import Rfc7592Idp
from rotator.errors import (
    IdentityProviderError,
    IdpAccessDenied,
    IdpCannotRotate,
    IdpNotFound,
    IdpUnavailable,
)
from rotator.interfaces import ClientState, IdentityProvider
from rotator.secrets import Secret, generate_secret

pytestmark = pytest.mark.server


@dataclass
class IdpCase:
    """One IdP adapter on one real server, and how to ask that server about a client."""

    name: str
    build: Callable[..., IdentityProvider]  # (settings, transport=None)
    settings: dict[str, Any]
    #: Creates a client; returns (client_id, its present secret).
    new_client: Callable[[], tuple[str, str]]
    #: Whether (client_id, secret) obtains a token.
    works: Callable[[str, str], bool]
    #: Settings with a credential the server (or the proxy in front of it) refuses.
    denied_settings: dict[str, Any] | None
    #: Settings pointing the adapter at ``url`` (nothing listens there); default: url/admin_url.
    unreachable: Callable[[str], dict[str, Any]] | None = None

    def idp(self, transport: httpx.BaseTransport | None = None,
            **override: Any) -> IdentityProvider:
        return self.build({**self.settings, **override}, transport)


def _keycloak_case(kc: KeycloakRealm, *, policy: bool) -> IdpCase:
    keycloak = kc.keycloak

    def new_client() -> tuple[str, str]:
        client_id = f"contract-{secrets.token_hex(4)}"
        _, secret = keycloak.create_client(
            kc.realm, client_id, attributes=dict(ROTATION_ATTRIBUTES) if policy else None)
        return client_id, secret

    settings = {"url": keycloak.url, "realm": kc.realm, "admin_realm": None,
                "admin_client_id": kc.admin_client_id,
                "admin_client_secret": Secret(kc.admin_secret), "overlap": "auto",
                "tls_verify": True, "ca_file": None, "timeout": 10.0}
    return IdpCase(
        name="keycloak-rotation" if policy else "keycloak",
        build=lambda s, t=None: KeycloakIdp("kc", s, transport=t), settings=settings,
        new_client=new_client,
        works=lambda cid, secret: keycloak.token(kc.realm, cid, secret).status_code == 200,
        denied_settings={"admin_client_secret": Secret(secrets.token_urlsafe(16))},
    )


class GuardedAdmin(httpx.BaseTransport):
    """A proxy in front of Hydra's admin API (which has no authentication of its own) that
    lets through only requests carrying ``token`` in ``header``."""

    def __init__(self, header: str, expected: str,
                 inner: httpx.BaseTransport | None = None) -> None:
        self._header, self._expected = header, expected
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get(self._header) != self._expected:
            return httpx.Response(401, json={"error": "request_unauthorized"})
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def _hydra_case(hydra: Hydra) -> IdpCase:
    def new_client() -> tuple[str, str]:
        secret = secrets.token_urlsafe(24)
        return hydra.create_client(secret), secret

    token = secrets.token_urlsafe(24)
    settings = {"admin_url": hydra.admin_url, "public_url": hydra.url,
                "admin_token": Secret(token), "admin_token_header": "Authorization",
                "rotate_endpoint": "auto", "tls_verify": True, "ca_file": None,
                "timeout": 10.0}
    return IdpCase(
        name="hydra", settings=settings, new_client=new_client,
        build=lambda s, t=None: HydraIdp("hydra", s, transport=GuardedAdmin(
            "Authorization", f"Bearer {token}", t)),
        works=lambda cid, secret: hydra.token_status(cid, secret) == 200,
        denied_settings={"admin_token": Secret(secrets.token_urlsafe(16))},
    )


def _glewlwyd_case(glewlwyd: Glewlwyd) -> IdpCase:
    def new_client() -> tuple[str, str]:
        secret = secrets.token_urlsafe(24)
        return glewlwyd.create_client(secret), secret

    settings = {"url": glewlwyd.url, "api_key": Secret(glewlwyd.admin_api_key),
                "api_prefix": "api", "oidc_plugin": "oidc", "tls_verify": True,
                "ca_file": None, "timeout": 10.0}
    return IdpCase(
        name="glewlwyd", settings=settings, new_client=new_client,
        build=lambda s, t=None: GlewlwydIdp("glewlwyd", s, transport=t),
        works=lambda cid, secret: glewlwyd.token_status(cid, secret) == 200,
        denied_settings={"api_key": Secret(secrets.token_urlsafe(16))},
    )


@pytest.fixture(scope="module")
def entra() -> Iterator[FakeEntra]:
    with entra_fake() as fake:
        yield fake


@pytest.fixture(scope="module")
def cognito() -> Iterator[FakeCognito]:
    with cognito_fake() as fake:
        yield fake


class MemoryState:
    """A ClientState in memory: the contract is the adapter's; durability is tested with the
    engine's store-backed state in test_rotation_rfc7592.py."""

    def __init__(self, value: str) -> None:
        self.value: Secret | None = Secret(value)
        self.saves = 0

    def load(self) -> Secret | None:
        return self.value

    def save(self, value: Secret) -> None:
        self.value, self.saves = value, self.saves + 1


def _rfc7592_case(server: DcrServer) -> IdpCase:
    """An RFC 7592 server: each new client is registered there and configured on every
    adapter built so far, with its RAT in a MemoryState. Test-only settings: ``admin_url``
    adds a client ``anyone`` at that base URL; ``bad_rat`` gives every client a wrong RAT."""
    clients: dict[str, tuple[str, MemoryState]] = {}
    built: list[Rfc7592Idp] = []

    def configure(idp: Rfc7592Idp, client_id: str, uri: str, state: ClientState) -> None:
        idp.configure_client(client_id, {"registration_client_uri": uri,
                                         "registration_token_store": "memory",
                                         "registration_token_location": client_id})
        idp.bind_client_state(client_id, state)

    def build(settings: dict[str, Any], transport: Any = None) -> Rfc7592Idp:
        base, bad = settings.pop("admin_url", None), settings.pop("bad_rat", False)
        idp = Rfc7592Idp("dcr", settings, transport=transport)
        for client_id, (uri, state) in clients.items():
            configure(idp, client_id, uri, MemoryState(secrets.token_urlsafe(16)) if bad
                      else state)
        if base:
            configure(idp, "anyone", f"{base}/register/anyone", MemoryState("x" * 20))
        built.append(idp)
        return idp

    def new_client() -> tuple[str, str]:
        reg = server.register()
        client_id = str(reg["client_id"])
        clients[client_id] = (str(reg["registration_client_uri"]),
                              MemoryState(str(reg["registration_access_token"])))
        for idp in built:
            configure(idp, client_id, *clients[client_id])
        return client_id, str(reg["client_secret"])

    case = IdpCase(
        name=f"rfc7592-{server.name}", build=build, new_client=new_client,
        settings={"token_endpoint": server.token_endpoint, "tls_verify": True,
                  "ca_file": None, "timeout": 10.0},
        works=server.works, denied_settings={"bad_rat": True})
    case.rfc7592_clients = clients  # type: ignore[attr-defined]
    return case


def _dcr_server(request: pytest.FixtureRequest, name: str) -> DcrServer:
    if name == "hydra":
        return hydra_dcr(request.getfixturevalue("hydra"))
    if name == "oidc-provider":
        return oidc_provider_dcr(request.getfixturevalue("oidc_provider"))
    return glewlwyd_dcr(request.getfixturevalue("glewlwyd_dcr"))


def _okta_case(okta: Any) -> IdpCase:
    settings = {"url": okta.url, "authorization_server": "default",
                "api_token": Secret(okta.api_token(super_admin=True)), "admin_client_id": None,
                "admin_private_key": None, "admin_key_id": None, "max_rate_limit_wait": 60.0,
                "tls_verify": True, "ca_file": None, "timeout": 10.0}

    def works(client_id: str, secret: str) -> bool:
        response = httpx.post(f"{okta.url}/oauth2/default/v1/token", auth=(client_id, secret),
                              data={"grant_type": "client_credentials", "scope": "api"})
        return response.status_code == 200

    return IdpCase(name="okta", settings=settings, new_client=okta.create_app, works=works,
                   build=lambda s, t=None: OktaIdp("okta", s, transport=t),
                   denied_settings={"api_token": Secret(secrets.token_urlsafe(16))})


def _auth0_case(auth0: Any) -> IdpCase:
    admin_id, admin_secret = auth0.admin_client()
    settings = {"url": auth0.url, "audience": None, "admin_client_id": admin_id,
                "admin_client_secret": Secret(admin_secret), "propagation_delay": 5.0,
                "max_rate_limit_wait": 60.0, "tls_verify": True, "ca_file": None,
                "timeout": 10.0}

    def works(client_id: str, secret: str) -> bool:
        response = httpx.post(f"{auth0.url}/oauth/token", data={
            "grant_type": "client_credentials", "client_id": client_id,
            "client_secret": secret, "audience": "https://api.example.com/"})
        return response.status_code == 200

    return IdpCase(name="auth0", settings=settings, new_client=auth0.create_client, works=works,
                   build=lambda s, t=None: Auth0Idp("auth0", s, transport=t),
                   denied_settings={"admin_client_secret": Secret(secrets.token_urlsafe(16))})


@pytest.fixture(params=["keycloak", "keycloak-rotation", "hydra", "glewlwyd", "entra",
                        "cognito", "rfc7592-glewlwyd", "okta", "auth0"])
def case(request: pytest.FixtureRequest) -> IdpCase:
    if request.param == "rfc7592-glewlwyd":
        return _rfc7592_case(_dcr_server(request, "glewlwyd"))
    if request.param == "entra":
        return entra_case(IdpCase, request.getfixturevalue("entra"))  # type: ignore[no-any-return]
    if request.param == "cognito":
        return cognito_case(IdpCase, request.getfixturevalue("cognito"))  # type: ignore[no-any-return]
    if request.param == "okta":
        return _okta_case(request.getfixturevalue("fake_okta"))
    if request.param == "auth0":
        return _auth0_case(request.getfixturevalue("fake_auth0"))
    if request.param == "hydra":
        return _hydra_case(request.getfixturevalue("hydra"))
    if request.param == "glewlwyd":
        return _glewlwyd_case(request.getfixturevalue("glewlwyd"))
    return _keycloak_case(request.getfixturevalue("kc_realm"),
                          policy=request.param == "keycloak-rotation")


@pytest.fixture
def idp(case: IdpCase) -> Iterator[IdentityProvider]:
    adapter = case.idp()
    adapter.start()
    yield adapter
    adapter.close()


def _create(idp: IdentityProvider, client_id: str) -> tuple[Any, Secret]:
    caps = idp.capabilities(client_id)
    value = generate_secret() if caps.caller_sets_value else None
    issued = idp.create_secret(client_id, "r-contract", value)
    if value is not None:
        assert issued.value == value
    return caps, issued


class TestCreate:
    """A created secret obtains a token, and the old one lives exactly when the IdP declares
    overlap."""

    def test_new_secret_works_old_as_declared(self, case: IdpCase,
                                              idp: IdentityProvider) -> None:
        client_id, old = case.new_client()
        caps, issued = _create(idp, client_id)
        assert case.works(client_id, issued.value.reveal())
        assert case.works(client_id, old) is caps.overlap

    def test_current_secret_where_declared(self, case: IdpCase, idp: IdentityProvider) -> None:
        client_id, _ = case.new_client()
        caps, issued = _create(idp, client_id)
        current = idp.current_secret(client_id)
        if caps.can_read_current:
            assert current == issued.value
        else:
            assert current is None

    def test_implements_the_protocol(self, idp: IdentityProvider) -> None:
        assert isinstance(idp, IdentityProvider)
        assert isinstance(type(idp).CLIENT_SETTINGS, tuple)


class TestDiscardAndRetire:
    """Discard brings the old secret back at overlap IdPs; retire revokes it once."""

    def test_discard_restores_previous(self, case: IdpCase, idp: IdentityProvider) -> None:
        client_id, old = case.new_client()
        caps, issued = _create(idp, client_id)
        if not caps.overlap:
            # The engine never asks; an adapter either refuses or really restores the old one.
            try:
                idp.discard_secret(client_id, issued, Secret(old))
            except IdentityProviderError:
                assert case.works(client_id, issued.value.reveal())
                assert not case.works(client_id, old)
                return
        idp.discard_secret(client_id, issued, Secret(old))
        idp.discard_secret(client_id, issued, Secret(old))  # idempotent
        assert case.works(client_id, old)
        assert not case.works(client_id, issued.value.reveal())

    def test_retire_revokes_old_once(self, case: IdpCase, idp: IdentityProvider) -> None:
        client_id, old = case.new_client()
        caps, issued = _create(idp, client_id)
        first = idp.retire_old_secrets(client_id, issued)
        assert first == (1 if caps.can_revoke_old else 0)
        assert idp.retire_old_secrets(client_id, issued) == 0
        assert not case.works(client_id, old)
        assert case.works(client_id, issued.value.reveal())


class TestErrors:
    """Failures map to the IdP error tree and nothing else escapes."""

    def test_unknown_client_is_not_found(self, case: IdpCase, idp: IdentityProvider) -> None:
        caps = idp.capabilities(case.new_client()[0])
        missing = f"missing-{secrets.token_hex(4)}"
        with pytest.raises(IdpNotFound):
            idp.capabilities(missing)
        with pytest.raises(IdpNotFound):
            idp.create_secret(missing, "r-contract",
                              generate_secret() if caps.caller_sets_value else None)

    def test_hostile_client_id_stays_one_path_segment(self, idp: IdentityProvider) -> None:
        for client_id in ("../..", "a/b?c#d", "%2e%2e", ".."):
            with pytest.raises(IdpNotFound):
                idp.capabilities(client_id)

    def test_unreachable_is_unavailable(self, case: IdpCase) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        adapter = case.idp(**(case.unreachable(url) if case.unreachable else
                              {"url": url} if "url" in case.settings else {"admin_url": url}))
        adapter.start()
        try:
            client_id, _ = "anyone", None
            with pytest.raises(IdpUnavailable, match="unreachable"):
                adapter.capabilities(client_id)
        finally:
            adapter.close()

    def test_refused_credential_names_what_is_missing(self, case: IdpCase) -> None:
        assert case.denied_settings is not None
        client_id, _ = case.new_client()
        adapter = case.idp(**case.denied_settings)
        adapter.start()
        try:
            with pytest.raises(IdpAccessDenied) as info:
                adapter.capabilities(client_id)
            assert "admin" in str(info.value)
        finally:
            adapter.close()


class TestHydraAdminToken:
    """The admin token goes in the header the deployment's proxy expects."""

    def test_api_key_header(self, hydra: Hydra) -> None:
        token = secrets.token_urlsafe(24)
        case = _hydra_case(hydra)
        idp = HydraIdp("hydra", {**case.settings, "admin_token": Secret(token),
                                 "admin_token_header": "X-API-Key"},
                       transport=GuardedAdmin("X-API-Key", token))
        idp.start()
        try:
            client_id, _ = case.new_client()
            assert idp.capabilities(client_id).caller_sets_value
        finally:
            idp.close()

    def test_header_name_is_checked(self) -> None:
        assert HydraIdp.validate_settings({"admin_token_header": "X-Key: evil"}) == [
            ("admin_token_header", "must be an HTTP header name")]


#: Answers a hostile or broken server (or something in between) may give to any call.
HOSTILE = {
    "html-200": lambda: httpx.Response(200, text="<html>login</html>"),
    "json-list-200": lambda: httpx.Response(200, json=["x"]),
    "json-null-200": lambda: httpx.Response(200, json=None),
    "empty-object-200": lambda: httpx.Response(200, json={}),
    "html-502": lambda: httpx.Response(502, text="<html>bad gateway</html>"),
    "throttled-429": lambda: httpx.Response(429, json={"error": "slow down"}),
    "teapot-418": lambda: httpx.Response(418, text="no"),
}


class Hostile(httpx.BaseTransport):
    """Forwards to the real server until the ``nth`` request, which gets ``answer``."""

    def __init__(self, nth: int, answer: Callable[[], httpx.Response]) -> None:
        self._nth, self._answer, self.count = nth, answer, 0
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        if self.count == self._nth:
            return self._answer()
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class TestHostileAnswers:
    """Whatever the server answers, an adapter raises only IdentityProviderError."""

    @pytest.mark.parametrize("answer", sorted(HOSTILE))
    def test_nothing_else_escapes(self, case: IdpCase, answer: str,
                                  request: pytest.FixtureRequest) -> None:
        client_id, _ = case.new_client()
        # Every request of a full create, counted on a clean run, gets the answer in turn.
        clean = Hostile(0, HOSTILE[answer])
        adapter = case.idp(clean)
        adapter.start()
        try:
            _create(adapter, client_id)
        finally:
            adapter.close()
        for nth in range(1, clean.count + 1):
            adapter = case.idp(Hostile(nth, HOSTILE[answer]))
            adapter.start()
            try:
                _create(adapter, client_id)
            except IdentityProviderError:
                pass
            finally:
                adapter.close()


@pytest.mark.parametrize("server", ["hydra", "oidc-provider"])
class TestRfc7592WithoutNewSecret:
    """An RFC 7592 server that keeps the secret on update makes create_secret raise
    IdpCannotRotate after the RAT it replaced was saved; the old secret keeps working."""

    def test_create_refuses_and_keeps_the_new_rat(self, request: pytest.FixtureRequest,
                                                  server: str) -> None:
        case = _rfc7592_case(_dcr_server(request, server))
        client_id, old = case.new_client()
        _, state = case.rfc7592_clients[client_id]  # type: ignore[attr-defined]
        first = state.value
        idp = case.idp()
        idp.start()
        try:
            caps = idp.capabilities(client_id)
            assert not caps.overlap and not caps.caller_sets_value
            with pytest.raises(IdpCannotRotate, match="does not rotate secrets through RFC"):
                idp.create_secret(client_id, "r-contract", None)
            assert state.saves == 1 and state.value != first
            assert case.works(client_id, old)
            current = idp.current_secret(client_id)  # with the saved RAT
            assert (current == Secret(old)) if caps.can_read_current else current is None
            with pytest.raises(IdentityProviderError):
                idp.create_secret(client_id, "r-contract", generate_secret())
        finally:
            idp.close()

    def test_errors_map_to_the_tree(self, request: pytest.FixtureRequest,
                                    server: str) -> None:
        case = _rfc7592_case(_dcr_server(request, server))
        client_id, _ = case.new_client()
        idp, denied = case.idp(), case.idp(bad_rat=True)
        unreachable = case.idp(admin_url=f"http://127.0.0.1:{free_port()}")
        for adapter in (idp, denied, unreachable):
            adapter.start()
        try:
            with pytest.raises(IdpNotFound):
                idp.capabilities("missing")
            with pytest.raises(IdpAccessDenied, match="registration access token was refused"):
                denied.capabilities(client_id)
            with pytest.raises(IdpUnavailable, match="unreachable"):
                unreachable.capabilities("anyone")
        finally:
            for adapter in (idp, denied, unreachable):
                adapter.close()
