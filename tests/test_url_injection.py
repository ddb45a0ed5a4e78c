"""Configuration values that become parts of URLs stay inside the path part they belong to.

A Vault location or a Keycloak realm that carries '..', '?' or '/' must neither reach
another Vault path or mount nor another realm: the config check refuses such values, and
the adapters quote each path part so a value that reaches them anyway stays one segment.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import OpenBao
from test_config import Draft, set_
from test_store_contract import api, vault_store

from providers.idps.keycloak import KeycloakIdp
from rotator.errors import ConfigError, StoreError
from rotator.interfaces import Credentials, Stage
from rotator.secrets import Secret

ESCAPES = [
    "apps/../../../sys/policies/acl/evil",
    "apps/../other/victim",
    "apps/x?list=true",
    "apps/x#frag",
    "apps//x",
    "/apps/x",
    "apps/x/",
    "apps/./x",
    "apps/x%2F..%2Fy",
    "apps/x.pending",
    "apps/x\nfoo",
]


def _kv2(server: OpenBao, mount: str) -> None:
    api(server, "POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})


def _exists(server: OpenBao, path: str) -> bool:
    response = httpx.get(f"{server.url}/v1/{path}", timeout=10,
                         headers={"X-Vault-Token": server.root_token})
    return response.status_code == 200


@pytest.mark.server
class TestVaultLocationStaysInTheMount:
    """A Vault location with '..', '?', '#', empty segments or '.pending' is refused unsent."""

    @pytest.mark.parametrize("location", ESCAPES)
    def test_refused_by_the_store(self, bao_server: OpenBao, location: str) -> None:
        with vault_store(bao_server) as store, pytest.raises(StoreError, match="location"):
            store.read(location)

    def test_nothing_outside_the_mount_is_written(self, bao_server: OpenBao) -> None:
        # Without the check, 'secret/data/apps/../../../<mount>/data/victim' is normalised
        # by the HTTP client to '<mount>/data/victim': a write into another KV mount.
        mount = f"other-{secrets.token_hex(4)}"
        _kv2(bao_server, mount)
        location = f"apps/../../../{mount}/data/victim"
        creds = Credentials("svc", Secret(secrets.token_urlsafe(24)))
        with vault_store(bao_server) as store, pytest.raises(StoreError):
            store.stage_pending(location, creds, str(uuid.uuid4()))
        assert not _exists(bao_server, f"{mount}/data/victim.pending")
        assert not _exists(bao_server, f"{mount}/metadata/victim.pending")

    def test_nothing_outside_the_prefix_is_read(self, bao_server: OpenBao) -> None:
        victim = f"other-{secrets.token_hex(4)}/victim"
        secret = secrets.token_urlsafe(24)
        api(bao_server, "POST", f"secret/data/{victim}",
            {"data": {"client_id": "victim", "client_secret": secret}})
        with vault_store(bao_server) as store, pytest.raises(StoreError):
            store.read(f"apps/../{victim}", Stage.CURRENT)

    def test_plain_locations_still_work(self, bao_server: OpenBao) -> None:
        location = f"apps/team.a/svc-{secrets.token_hex(4)}"
        api(bao_server, "POST", f"secret/data/{location}",
            {"data": {"client_id": "svc", "client_secret": secrets.token_urlsafe(24)}})
        with vault_store(bao_server) as store:
            stored = store.read(location)
        assert stored is not None and stored.credentials.client_id == "svc"


class TestVaultLocationConfigCheck:
    """config check refuses a Vault location that would leave its path."""

    @pytest.mark.parametrize("location", ESCAPES)
    def test_refused(self, tmp_path: Path, location: str) -> None:
        d = Draft(tmp_path)
        set_("stores.bao", {"type": "vault", "url": "https://bao.test",
                            "token_env": "BAO_TOKEN"})(d)
        set_("clients.app.stores", [{"store": "bao", "path": location}])(d)
        d.env["BAO_TOKEN"] = secrets.token_hex(8)
        with pytest.raises(ConfigError) as info:
            d.load()
        assert [p.key for p in info.value.problems] == ["clients.app.stores[0].path"]


class _Recorder:
    """A Keycloak admin API stand-in that records every raw request path."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.raw_path.decode())
        if request.url.path.endswith("/protocol/openid-connect/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        if request.url.path.endswith("/clients"):
            return httpx.Response(200, json=[{"id": "../../master/clients/x",
                                              "clientId": "app/../../x"}])
        return httpx.Response(200, json={"value": secrets.token_urlsafe(16)})


def _keycloak(realm: str, recorder: _Recorder, **extra: Any) -> KeycloakIdp:
    settings = {"url": "https://sso.test", "realm": realm, "admin_client_id": "rotator",
                "admin_client_secret": Secret(secrets.token_urlsafe(16)), "overlap": "never",
                "tls_verify": True, "timeout": 5.0, **extra}
    idp = KeycloakIdp("kc", settings, transport=httpx.MockTransport(recorder))
    idp.start()
    return idp


class TestKeycloakPathsStayInTheRealm:
    """Realm, client id and the server's client uuid each stay one segment of the admin URL."""

    def test_realm_with_dot_dot_stays_one_segment(self) -> None:
        recorder = _Recorder()
        idp = _keycloak("payments/../master", recorder)
        idp.current_secret("app/../../x")
        idp.close()
        assert recorder.paths == [
            "/realms/payments%2F..%2Fmaster/protocol/openid-connect/token",
            "/admin/realms/payments%2F..%2Fmaster/clients?clientId=app%2F..%2F..%2Fx",
            "/admin/realms/payments%2F..%2Fmaster/clients/..%2F..%2Fmaster%2Fclients%2Fx"
            "/client-secret",
        ]
        assert not any(p.startswith("/admin/realms/master") for p in recorder.paths)

    def test_bare_dot_dot_realm_is_escaped(self) -> None:
        recorder = _Recorder()
        idp = _keycloak("..", recorder, admin_realm="payments")
        idp.current_secret("app/../../x")
        idp.close()
        assert recorder.paths[1].startswith("/admin/realms/%2E%2E/clients?")

    def test_default_token_endpoint_is_quoted(self) -> None:
        idp = KeycloakIdp("kc", {"url": "https://sso.test", "realm": "a/../b",
                                 "admin_client_id": "r"})
        assert idp.default_token_endpoint() == (
            "https://sso.test/realms/a%2F..%2Fb/protocol/openid-connect/token")


class TestKeycloakRealmConfigCheck:
    """config check refuses a realm or admin realm that is not a single name."""

    @pytest.mark.parametrize("key", ["realm", "admin_realm"])
    @pytest.mark.parametrize("realm", ["payments/../master", "..", ".", "a\\b", "a\nb"])
    def test_refused(self, tmp_path: Path, key: str, realm: str) -> None:
        d = Draft(tmp_path)
        set_(f"idps.kc.{key}", realm)(d)
        with pytest.raises(ConfigError) as info:
            d.load()
        assert [p.key for p in info.value.problems] == [f"idps.kc.{key}"]

    def test_unusual_but_valid_realm_names_pass(self, tmp_path: Path) -> None:
        d = Draft(tmp_path)
        set_("idps.kc.realm", "Payments Team.eu-1")(d)
        assert d.load().idps["kc"].settings["realm"] == "Payments Team.eu-1"
