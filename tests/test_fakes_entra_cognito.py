"""The Entra ID and Cognito fakes answer as the vendors' documentation shows.

Each check follows an example or a statement of the pages cited in the fake's docstring
(tests/fakes/entra.py, tests/fakes/cognito.py). Cognito is driven through boto3 itself, so
botocore's service model checks the wire format.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import boto3
import botocore.exceptions as bex
import httpx
import pytest
from fakes.cognito import FakeCognito
from fakes.entra import ALL, OWNED_BY, FakeEntra

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def entra() -> Iterator[FakeEntra]:
    with FakeEntra() as fake:
        yield fake


@pytest.fixture
def cognito() -> Iterator[FakeCognito]:
    with FakeCognito() as fake:
        yield fake


def _graph_token(entra: FakeEntra, roles: set[str], owns: str | None = None) -> str:
    admin, password = entra.create_app("admin", roles=roles)
    if owns:
        entra.apps[owns].owners.add(admin.app_id)
    answer = httpx.post(entra.token_endpoint, data={
        "grant_type": "client_credentials", "client_id": admin.app_id,
        "client_secret": password.secret, "scope": "https://graph.microsoft.com/.default"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    return str(body["access_token"])


class TestEntraToken:
    """The v2.0 token endpoint answers client credentials as the identity platform docs show."""

    def test_wrong_secret_is_aadsts7000215(self, entra: FakeEntra) -> None:
        app, _ = entra.create_app()
        answer = httpx.post(entra.token_endpoint, data={
            "grant_type": "client_credentials", "client_id": app.app_id,
            "client_secret": "not-it", "scope": "https://graph.microsoft.com/.default"})
        body = answer.json()
        assert answer.status_code == 401 and body["error"] == "invalid_client"
        assert body["error_codes"] == [7000215]
        assert body["error_description"].startswith("AADSTS7000215:")
        assert {"timestamp", "trace_id", "correlation_id"} <= set(body)

    def test_expired_secret_is_aadsts7000222(self, entra: FakeEntra) -> None:
        app, password = entra.create_app()
        entra.expire(password.key_id)
        answer = httpx.post(entra.token_endpoint, data={
            "grant_type": "client_credentials", "client_id": app.app_id,
            "client_secret": password.secret, "scope": "https://graph.microsoft.com/.default"})
        assert answer.json()["error_codes"] == [7000222]

    def test_scope_must_be_dot_default(self, entra: FakeEntra) -> None:
        app, password = entra.create_app()
        answer = httpx.post(entra.token_endpoint, data={
            "grant_type": "client_credentials", "client_id": app.app_id,
            "client_secret": password.secret, "scope": "User.Read"})
        assert answer.status_code == 400 and answer.json()["error_codes"] == [1002012]


class TestEntraGraph:
    """addPassword and removePassword behave as the Graph v1.0 reference's examples."""

    def test_add_password_example(self, entra: FakeEntra) -> None:
        app, _ = entra.create_app()
        token = _graph_token(entra, {ALL})
        # The reference's request: {"passwordCredential": {"displayName": "Password friendly name"}}
        answer = httpx.post(f"{entra.url}/v1.0/applications/{app.object_id}/addPassword",
                            headers={"Authorization": f"Bearer {token}"},
                            json={"passwordCredential": {"displayName": "Password friendly name"}})
        assert answer.status_code == 200
        body = answer.json()
        assert {"customKeyIdentifier", "displayName", "endDateTime", "hint", "keyId",
                "secretText", "startDateTime"} <= set(body)
        assert body["displayName"] == "Password friendly name"
        assert GUID.match(body["keyId"]) and 16 <= len(body["secretText"]) <= 64
        assert body["hint"] == body["secretText"][:3]
        # endDateTime defaults to startDateTime + 2 years
        assert int(body["endDateTime"][:4]) - int(body["startDateTime"][:4]) == 2
        # many passwords are valid at once; reading never shows secretText again
        assert entra.works(app.app_id, body["secretText"])
        listed = httpx.get(f"{entra.url}/v1.0/applications(appId='{app.app_id}')",
                           headers={"Authorization": f"Bearer {token}"}).json()
        assert len(listed["passwordCredentials"]) == 2
        assert all(p["secretText"] is None for p in listed["passwordCredentials"])

    def test_remove_password_example(self, entra: FakeEntra) -> None:
        app, password = entra.create_app()
        token = _graph_token(entra, {ALL})
        answer = httpx.post(f"{entra.url}/v1.0/applications/{app.object_id}/removePassword",
                            headers={"Authorization": f"Bearer {token}"},
                            json={"keyId": password.key_id})
        assert answer.status_code == 204
        assert not entra.works(app.app_id, password.secret)

    def test_owned_by_needs_ownership_and_missing_role_is_denied(self,
                                                                 entra: FakeEntra) -> None:
        app, _ = entra.create_app()
        for token, status in ((_graph_token(entra, {OWNED_BY}, owns=app.object_id), 200),
                              (_graph_token(entra, {OWNED_BY}), 403),
                              (_graph_token(entra, set()), 403)):
            answer = httpx.get(f"{entra.url}/v1.0/applications/{app.object_id}",
                               headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == status
            if status == 403:
                assert answer.json()["error"]["code"] == "Authorization_RequestDenied"

    def test_throttling_answers_429_with_retry_after(self, entra: FakeEntra) -> None:
        app, _ = entra.create_app()
        token = _graph_token(entra, {ALL})
        entra.throttle(2, window=30)
        codes = [httpx.get(f"{entra.url}/v1.0/applications/{app.object_id}",
                           headers={"Authorization": f"Bearer {token}"}) for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        assert int(codes[2].headers["Retry-After"]) >= 1
        assert codes[2].json()["error"]["code"] == "TooManyRequests"


def _cognito_client(cognito: FakeCognito, key: str = "AKIDFAKE") -> object:
    return boto3.client("cognito-idp", region_name=cognito.region, endpoint_url=cognito.url,
                        aws_access_key_id=key, aws_secret_access_key="fake-secret-key")


class TestCognitoApi:
    """The three calls, through boto3, as the Cognito API reference documents them."""

    def test_add_list_delete(self, cognito: FakeCognito) -> None:
        cognito.grant("AKIDFAKE")
        pool = cognito.create_pool()
        client_id, first = cognito.create_client(pool)
        api = _cognito_client(cognito)
        added = api.add_user_pool_client_secret(  # type: ignore[attr-defined]
            UserPoolId=pool, ClientId=client_id)["ClientSecretDescriptor"]
        assert added["ClientSecretId"].startswith(f"{client_id}--")
        assert 24 <= len(added["ClientSecretValue"]) <= 64
        listed = api.list_user_pool_client_secrets(  # type: ignore[attr-defined]
            UserPoolId=pool, ClientId=client_id)["ClientSecrets"]
        assert len(listed) == 2 and all("ClientSecretValue" not in s for s in listed)
        assert cognito.works(client_id, first) and cognito.works(client_id,
                                                                 added["ClientSecretValue"])
        # a third is refused; the caller's own value is not echoed back
        with pytest.raises(bex.ClientError) as third:
            api.add_user_pool_client_secret(  # type: ignore[attr-defined]
                UserPoolId=pool, ClientId=client_id)
        assert third.value.response["Error"]["Code"] == "LimitExceededException"
        api.delete_user_pool_client_secret(  # type: ignore[attr-defined]
            UserPoolId=pool, ClientId=client_id, ClientSecretId=added["ClientSecretId"])
        mine = api.add_user_pool_client_secret(  # type: ignore[attr-defined]
            UserPoolId=pool, ClientId=client_id, ClientSecret="a" * 24)
        assert "ClientSecretValue" not in mine["ClientSecretDescriptor"]
        assert cognito.signed[0]["service"] == "cognito-idp"
        assert cognito.signed[0]["region"] == cognito.region

    def test_documented_refusals(self, cognito: FakeCognito) -> None:
        cognito.grant("AKIDFAKE")
        cognito.grant("AKIDLIST", ("ListUserPoolClientSecrets",))
        pool = cognito.create_pool()
        client_id, _ = cognito.create_client(pool)
        api = _cognito_client(cognito)
        only = api.list_user_pool_client_secrets(  # type: ignore[attr-defined]
            UserPoolId=pool, ClientId=client_id)["ClientSecrets"][0]["ClientSecretId"]
        cases = [
            (lambda: api.add_user_pool_client_secret(  # type: ignore[attr-defined]
                UserPoolId=pool, ClientId=client_id, ClientSecret="a-" * 12),
             "InvalidParameterException"),
            (lambda: api.add_user_pool_client_secret(  # type: ignore[attr-defined]
                UserPoolId=pool, ClientId=client_id, ClientSecret="x" * 65),
             "InvalidParameterException"),
            (lambda: api.delete_user_pool_client_secret(  # type: ignore[attr-defined]
                UserPoolId=pool, ClientId=client_id, ClientSecretId=only),
             "InvalidParameterException"),
            (lambda: api.list_user_pool_client_secrets(  # type: ignore[attr-defined]
                UserPoolId=pool, ClientId="nosuchclient"), "ResourceNotFoundException"),
            (lambda: _cognito_client(cognito, "AKIDLIST").add_user_pool_client_secret(  # type: ignore[attr-defined]
                UserPoolId=pool, ClientId=client_id), "AccessDeniedException"),
            (lambda: _cognito_client(cognito, "AKIDNONE").list_user_pool_client_secrets(  # type: ignore[attr-defined]
                UserPoolId=pool, ClientId=client_id), "UnrecognizedClientException"),
        ]
        for call, code in cases:
            with pytest.raises(bex.ClientError) as info:
                call()
            assert info.value.response["Error"]["Code"] == code

    def test_token_endpoint(self, cognito: FakeCognito) -> None:
        pool = cognito.create_pool()
        client_id, secret = cognito.create_client(pool)
        good = httpx.post(f"{cognito.url}/oauth2/token", auth=(client_id, secret),
                          data={"grant_type": "client_credentials"})
        assert good.status_code == 200 and good.json()["token_type"] == "Bearer"
        bad = httpx.post(f"{cognito.url}/oauth2/token", auth=(client_id, "wrong"),
                         data={"grant_type": "client_credentials"})
        assert bad.status_code == 400 and bad.json() == {"error": "invalid_client"}
