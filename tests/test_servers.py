"""The local test servers start, answer and behave as the integration tests assume."""

from __future__ import annotations

import secrets

import httpx
import pytest
from servers import ROTATION_ATTRIBUTES, Keycloak, OpenBao

pytestmark = pytest.mark.server


# The servers are the session's, from conftest.py: one Keycloak for the whole run.


@pytest.fixture(scope="module")
def realm(keycloak: Keycloak) -> str:
    name = f"test-{secrets.token_hex(4)}"
    keycloak.create_realm(name)
    return name


@pytest.fixture(scope="module")
def rotating_realm(keycloak: Keycloak) -> str:
    """A realm whose secret-rotation policy covers "tagged-later" and tagged new clients."""
    name = f"rotation-{secrets.token_hex(4)}"
    keycloak.create_realm(name)
    keycloak.create_client(name, "tagged-later")
    keycloak.enable_secret_rotation(name, client_ids=["tagged-later"])
    return name


def _regenerate(keycloak: Keycloak, realm: str, uuid: str) -> str:
    response = keycloak.admin.post(f"{realm}/clients/{uuid}/client-secret")
    response.raise_for_status()
    value: str = response.json()["value"]
    return value


class TestOpenBao:
    """A dev-mode OpenBao is healthy, serves KV v2 at secret/ to its root token, and stops."""

    def test_health_reports_unsealed(self, bao_server: OpenBao) -> None:
        response = httpx.get(f"{bao_server.url}/v1/sys/health")

        assert response.status_code == 200
        assert response.json()["sealed"] is False

    def test_kv_v2_round_trip(self, bao_server: OpenBao) -> None:
        headers = {"X-Vault-Token": bao_server.root_token}
        value = secrets.token_urlsafe(16)

        written = httpx.post(
            f"{bao_server.url}/v1/secret/data/servers-test",
            headers=headers,
            json={"data": {"client_secret": value}},
        )
        read = httpx.get(f"{bao_server.url}/v1/secret/data/servers-test", headers=headers)

        assert written.status_code == 200
        assert read.json()["data"]["data"] == {"client_secret": value}

    def test_stop_ends_the_process(self) -> None:
        with OpenBao() as server:
            process = server.process

        assert process.poll() is not None
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v1/sys/health")


@pytest.mark.slow
class TestKeycloakClients:
    """Keycloak clients made by the helpers get tokens with the roles and scopes asked for."""

    def test_admin_client_can_list_clients(self, keycloak: Keycloak, realm: str) -> None:
        secret = keycloak.create_admin_client(realm, "rotator-admin")

        token = keycloak.token(realm, "rotator-admin", secret)
        listed = httpx.get(
            f"{keycloak.url}/admin/realms/{realm}/clients",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )

        assert token.status_code == 200
        assert listed.status_code == 200
        assert "rotator-admin" in {client["clientId"] for client in listed.json()}

    def test_admin_client_without_manage_clients_cannot_regenerate(
        self, keycloak: Keycloak, realm: str
    ) -> None:
        secret = keycloak.create_admin_client(
            realm, "rotator-viewer", roles=("view-clients", "query-clients")
        )
        uuid = keycloak.client_uuid(realm, "rotator-viewer")

        token = keycloak.token(realm, "rotator-viewer", secret).json()["access_token"]
        response = httpx.post(
            f"{keycloak.url}/admin/realms/{realm}/clients/{uuid}/client-secret",
            headers={"Authorization": f"Bearer {token}"},
        )

        assert response.status_code == 403

    def test_client_scope_is_granted_on_request(self, keycloak: Keycloak, realm: str) -> None:
        _, secret = keycloak.create_client(realm, "scoped", scopes=["rotator.read"])

        response = keycloak.token(realm, "scoped", secret, scope="rotator.read")

        assert response.status_code == 200
        assert "rotator.read" in response.json()["scope"].split()


@pytest.mark.slow
class TestKeycloakSecretRotationPolicy:
    """Under the secret-rotation policy a regenerated secret's predecessor keeps working."""

    @pytest.mark.parametrize("client_id", ["tagged-later", "created-tagged"])
    def test_old_secret_stays_valid_as_rotated(
        self, keycloak: Keycloak, rotating_realm: str, client_id: str
    ) -> None:
        if client_id == "created-tagged":
            keycloak.create_client(rotating_realm, client_id, attributes=ROTATION_ATTRIBUTES)
        uuid = keycloak.client_uuid(rotating_realm, client_id)
        old = keycloak.admin.get(f"{rotating_realm}/clients/{uuid}/client-secret").json()["value"]

        new = _regenerate(keycloak, rotating_realm, uuid)
        rotated = keycloak.admin.get(f"{rotating_realm}/clients/{uuid}/client-secret/rotated")

        assert rotated.status_code == 200
        assert rotated.json()["value"] == old
        assert keycloak.token(rotating_realm, client_id, old).status_code == 200
        assert keycloak.token(rotating_realm, client_id, new).status_code == 200

    def test_untagged_client_loses_old_secret_at_once(
        self, keycloak: Keycloak, rotating_realm: str
    ) -> None:
        uuid, old = keycloak.create_client(rotating_realm, "plain")

        new = _regenerate(keycloak, rotating_realm, uuid)
        rotated = keycloak.admin.get(f"{rotating_realm}/clients/{uuid}/client-secret/rotated")

        assert rotated.status_code == 404
        assert keycloak.token(rotating_realm, "plain", old).status_code == 401
        assert keycloak.token(rotating_realm, "plain", new).status_code == 200
