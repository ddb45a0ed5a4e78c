"""The local Glewlwyd starts from Debian's packages, issues client_credentials tokens and
keeps its admin API behind an API key."""

from __future__ import annotations

import secrets

import httpx
import pytest
from server_glewlwyd import GLEWLWYD_VERSION, Glewlwyd, glewlwyd_dist

pytestmark = pytest.mark.server


class TestGlewlwydLauncher:
    """A started Glewlwyd serves /api/oidc/token for client_credentials and an API-key admin API."""

    def test_packages_are_cached_by_version(self, glewlwyd: Glewlwyd) -> None:
        dist = glewlwyd_dist()

        assert dist.name == f"glewlwyd-{GLEWLWYD_VERSION}"
        assert (dist / "usr/bin/glewlwyd").is_file()

    def test_client_obtains_a_token_with_its_secret_only(self, glewlwyd: Glewlwyd) -> None:
        secret = secrets.token_urlsafe(24)
        client_id = glewlwyd.create_client(secret)

        assert glewlwyd.token_status(client_id, secret) == 200
        assert glewlwyd.token_status(client_id, secret + "x") == 403

    def test_default_admin_password_no_longer_logs_in(self, glewlwyd: Glewlwyd) -> None:
        response = httpx.post(f"{glewlwyd.api_url}/auth", trust_env=False,
                              json={"username": "admin", "password": "password"})

        assert response.status_code == 401

    def test_admin_api_refuses_a_wrong_api_key(self, glewlwyd: Glewlwyd) -> None:
        response = httpx.get(f"{glewlwyd.api_url}/client/", trust_env=False,
                             headers={"Authorization": "token not-a-key"})

        assert response.status_code == 401
