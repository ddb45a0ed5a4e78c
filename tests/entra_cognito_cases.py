"""The Entra ID and Cognito adapters on their fakes, as cases of the IdP contract suite.

The contract module passes its ``IdpCase`` class in, so this module does not import it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import httpx
from fakes.cognito import FakeCognito
from fakes.entra import OWNED_BY, FakeEntra

from providers.idps.cognito import CognitoIdp
from providers.idps.entra import EntraIdp
from rotator.secrets import Secret

ACCESS_KEY = "AKIDROTATORTEST"


@contextmanager
def entra_fake(**kwargs: Any) -> Iterator[FakeEntra]:
    with FakeEntra(**kwargs) as fake:
        yield fake


@contextmanager
def cognito_fake(**kwargs: Any) -> Iterator[FakeCognito]:
    with FakeCognito(**kwargs) as fake:
        fake.grant(ACCESS_KEY)
        yield fake


def entra_settings(fake: FakeEntra, admin_app_id: str, admin_secret: str) -> dict[str, Any]:
    return {"tenant": fake.tenant, "admin_client_id": admin_app_id,
            "admin_client_secret": Secret(admin_secret), "authority_url": fake.url,
            "graph_url": fake.url, "secret_lifetime": 86400.0 * 30,
            "propagation_delay": 0.0, "throttle_retries": 5, "max_retry_after": 5.0,
            "tls_verify": True, "ca_file": None, "timeout": 10.0}


def entra_case(case_class: Any, fake: FakeEntra) -> Any:
    """Clients are applications the admin app owns (Application.ReadWrite.OwnedBy); the
    password each starts with is adopted, so retirement may remove it."""
    admin, admin_password = fake.create_app("rotator-admin", roles={OWNED_BY})
    adopted: dict[str, dict[str, Any]] = {}
    built: list[EntraIdp] = []

    def build(settings: dict[str, Any], transport: httpx.BaseTransport | None = None
              ) -> EntraIdp:
        idp = EntraIdp("entra", settings, transport=transport)
        for client_id, client_settings in adopted.items():
            idp.configure_client(client_id, client_settings)
        built.append(idp)
        return idp

    def new_client() -> tuple[str, str]:
        app, password = fake.create_app(f"svc-{secrets.token_hex(3)}", owners={admin.app_id})
        adopted[app.app_id] = {"application_object_id": None,
                               "adopt_key_ids": [password.key_id]}
        for idp in built:
            idp.configure_client(app.app_id, adopted[app.app_id])
        return app.app_id, password.secret

    def works(client_id: str, secret: str) -> bool:
        return httpx.post(fake.token_endpoint, data={
            "grant_type": "client_credentials", "client_id": client_id,
            "client_secret": secret, "scope": "https://graph.microsoft.com/.default",
        }).status_code == 200

    return case_class(
        name="entra", build=build,
        settings=entra_settings(fake, admin.app_id, admin_password.secret),
        new_client=new_client, works=works,
        denied_settings={"admin_client_secret": Secret(secrets.token_urlsafe(16))},
        unreachable=lambda url: {"authority_url": url, "graph_url": url})


def cognito_settings(fake: FakeCognito, pool: str) -> dict[str, Any]:
    return {"region": fake.region, "user_pool_id": pool, "domain_url": fake.url,
            "endpoint_url": fake.url, "profile": None, "tls_verify": True, "ca_file": None,
            "timeout": 10.0, "max_attempts": 2, "propagation_delay": 0.0}


def cognito_session(access_key: str = ACCESS_KEY) -> boto3.Session:
    return boto3.Session(aws_access_key_id=access_key,
                         aws_secret_access_key=secrets.token_urlsafe(30))


def cognito_case(case_class: Any, fake: FakeCognito) -> Any:
    pool = fake.create_pool()

    def build(settings: dict[str, Any], transport: httpx.BaseTransport | None = None
              ) -> CognitoIdp:
        return CognitoIdp("cognito", settings, transport,
                          session=cognito_session(settings.get("access_key", ACCESS_KEY)))

    def works(client_id: str, secret: str) -> bool:
        return httpx.post(f"{fake.url}/oauth2/token", auth=(client_id, secret),
                          data={"grant_type": "client_credentials"}).status_code == 200

    return case_class(
        name="cognito", build=build, settings=cognito_settings(fake, pool),
        new_client=lambda: fake.create_client(pool), works=works,
        denied_settings={"access_key": "AKIDNOTKNOWN"},
        unreachable=lambda url: {"endpoint_url": url})
