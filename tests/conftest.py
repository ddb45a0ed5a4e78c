"""Session-scoped real servers, shared by every test module that needs them."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rotation_env import KeycloakRealm
from server_glewlwyd import Glewlwyd
from server_oidc_provider import OidcProvider
from servers import ADMIN_CLIENT_ROLES, Hydra, Keycloak, MotoServer, OpenBao, keycloak_for_session


@pytest.fixture(scope="session")
def bao_server() -> Iterator[OpenBao]:
    """A real OpenBao dev server on 127.0.0.1 and a free port."""
    with OpenBao() as server:
        yield server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A real moto server (AWS APIs over HTTP) on 127.0.0.1 and a free port."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def keycloak() -> Iterator[Keycloak]:
    """A real Keycloak 26 (start-dev, in-memory database) on 127.0.0.1 and a free port.

    For development only: ``ROTATOR_TEST_KEYCLOAK=<port>:<admin password>`` attaches to a
    Keycloak started with ``python tests/servers.py keycloak`` instead of starting one, so
    several test runs on one machine can share it (realms get a random suffix then).
    """
    with keycloak_for_session() as server:
        yield server


@pytest.fixture(scope="session")
def kc_realm(keycloak: Keycloak) -> KeycloakRealm:
    """A realm with rotator's admin client and a secret-rotation policy for tagged clients."""
    realm = "rotator-tests"
    if os.environ.get("ROTATOR_TEST_KEYCLOAK"):
        realm += f"-{secrets.token_hex(4)}"
    keycloak.create_realm(realm)
    admin_secret = keycloak.create_admin_client(realm, "rotator-admin", roles=ADMIN_CLIENT_ROLES)
    keycloak.enable_secret_rotation(realm, rotated_expiration=3600, expiration=86400 * 30,
                                    remaining=600, client_ids=[])
    return KeycloakRealm(keycloak, realm, "rotator-admin", admin_secret)


@pytest.fixture(scope="session")
def hydra() -> Iterator[Hydra]:
    """A real Ory Hydra v2.3.0 (``serve all --dev``, SQLite) on 127.0.0.1 and free ports.

    The first use on a machine builds Hydra from the Go module proxy (several minutes; cached
    under ``~/.cache/rotator-test/hydra-<version>/``, see ``tests/servers.py``).
    """
    with Hydra() as server:
        yield server


@pytest.fixture(scope="session")
def glewlwyd() -> Iterator[Glewlwyd]:
    """A real Glewlwyd 2.7 (Debian's package, SQLite, OIDC plugin at ``/api/oidc``) on
    127.0.0.1 and a free port; its packages are fetched on first use (see
    ``tests/server_glewlwyd.py``)."""
    with Glewlwyd() as server:
        yield server


@pytest.fixture(scope="session")
def fake_okta() -> Iterator[Any]:
    """A fake Okta org (tests/fakes/okta.py) on 127.0.0.1 and a free port, no rate limit."""
    from fakes.okta import FakeOkta
    with FakeOkta() as server:
        yield server


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    """A real node oidc-provider 9 with RFC 7591/7592 registration, on 127.0.0.1 and a free
    port (package cached by version; see ``tests/server_oidc_provider.py``)."""
    with OidcProvider() as server:
        yield server


@pytest.fixture(scope="session")
def glewlwyd_dcr() -> Iterator[Glewlwyd]:
    """A Glewlwyd whose OIDC plugin has open RFC 7591 registration and RFC 7592 management."""
    from rfc7592_env import GLEWLWYD_REGISTRATION

    with Glewlwyd(oidc_parameters=GLEWLWYD_REGISTRATION) as server:
        yield server


@pytest.fixture(scope="session")
def fake_auth0() -> Iterator[Any]:
    """A fake Auth0 tenant (tests/fakes/auth0.py) on 127.0.0.1 and a free port, no rate
    limit, no propagation delay."""
    from fakes.auth0 import FakeAuth0
    with FakeAuth0() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL 15 (Debian's initdb/pg_ctl, as an unprivileged user) on 127.0.0.1.

    Stopped at session end; see ``tests/server_postgres.py``.
    """
    from server_postgres import Postgres

    with Postgres() as server:
        yield server
