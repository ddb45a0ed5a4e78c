"""The Okta and Auth0 fakes answer as the vendors' docs show (pages cited in each fake).

These talk to the fakes with plain HTTP, the way the documentation's examples do, so that the
adapters' tests rest on fakes that behave like the documented services.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from fakes.auth0 import UPDATE_KEYS, FakeAuth0
from fakes.okta import APPS_MANAGE, APPS_READ, FakeOkta, rsa_key

OKTA_ERROR_KEYS = {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}
OKTA_SECRET_KEYS = {"id", "status", "client_secret", "secret_hash", "created", "lastUpdated",
                    "_links"}


@pytest.fixture(scope="module")
def okta() -> Iterator[FakeOkta]:
    with FakeOkta(rate_limit=None) as fake:
        yield fake


@pytest.fixture(scope="module")
def auth0() -> Iterator[FakeAuth0]:
    with FakeAuth0(propagation_delay=2.0) as fake:
        yield fake


def _ssws(okta: FakeOkta) -> dict[str, str]:
    return {"Authorization": f"SSWS {okta.api_token(super_admin=True)}"}


class TestOktaSecrets:
    """Okta's client-secret endpoints: at most two, created ACTIVE, only INACTIVE deleted."""

    def test_create_list_deactivate_delete(self, okta: FakeOkta) -> None:
        app, _ = okta.create_app()
        base = f"{okta.url}/api/v1/apps/{app}/credentials/secrets"
        headers = _ssws(okta)
        created = httpx.post(base, headers=headers, json={"client_secret": "x" * 40})
        assert created.status_code == 201
        body = created.json()
        assert set(body) == OKTA_SECRET_KEYS and body["status"] == "ACTIVE"
        assert body["client_secret"] == "x" * 40
        assert "deactivate" in body["_links"]
        listed = httpx.get(base, headers=headers).json()
        assert len(listed) == 2 and all("client_secret" not in s for s in listed)

        third = httpx.post(base, headers=headers, json={})
        assert third.status_code == 400
        assert set(third.json()) == OKTA_ERROR_KEYS and third.json()["errorCode"] == "E0000001"

        old = listed[0]["id"]
        refused = httpx.delete(f"{base}/{old}", headers=headers)
        assert refused.status_code == 400 and refused.json()["errorCode"] == "E0000001"
        deactivated = httpx.post(f"{base}/{old}/lifecycle/deactivate", headers=headers)
        assert deactivated.json()["status"] == "INACTIVE"
        assert httpx.delete(f"{base}/{old}", headers=headers).status_code == 204
        assert [s["id"] for s in httpx.get(base, headers=headers).json()] == [body["id"]]

    def test_generated_secret_and_unknown_app(self, okta: FakeOkta) -> None:
        app, _ = okta.create_app()
        base = f"{okta.url}/api/v1/apps/{app}/credentials/secrets"
        created = httpx.post(base, headers=_ssws(okta))
        assert created.status_code == 201 and len(created.json()["client_secret"]) >= 14
        missing = httpx.get(f"{okta.url}/api/v1/apps/0oamissing", headers=_ssws(okta))
        assert missing.status_code == 404 and missing.json()["errorCode"] == "E0000007"

    def test_client_credentials_at_a_custom_server(self, okta: FakeOkta) -> None:
        app, secret = okta.create_app()
        url = f"{okta.url}/oauth2/default/v1/token"
        ok = httpx.post(url, auth=(app, secret),
                        data={"grant_type": "client_credentials", "scope": "api"})
        assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
        wrong = httpx.post(url, auth=(app, "nope" * 5),
                           data={"grant_type": "client_credentials", "scope": "api"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


class TestOktaAdminAuth:
    """SSWS tokens and scoped service-app tokens; insufficient scope answers 403 saying so."""

    def test_invalid_token(self, okta: FakeOkta) -> None:
        app, _ = okta.create_app()
        answer = httpx.get(f"{okta.url}/api/v1/apps/{app}",
                           headers={"Authorization": "SSWS nope"})
        assert answer.status_code == 401 and answer.json()["errorCode"] == "E0000011"

    def _service_token(self, okta: FakeOkta, scopes: tuple[str, ...], ask: str) -> httpx.Response:
        key = rsa_key()
        app = okta.service_app(key.public_key(), scopes)
        url = f"{okta.url}/oauth2/v1/token"
        now = int(time.time())
        assertion = jwt.encode({"iss": app, "sub": app, "aud": url, "iat": now,
                                "exp": now + 300, "jti": secrets.token_hex(8)}, key,
                               algorithm="RS256")
        return httpx.post(url, data={
            "grant_type": "client_credentials", "scope": ask,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion})

    def test_private_key_jwt_and_scopes(self, okta: FakeOkta) -> None:
        token = self._service_token(okta, (APPS_READ,), APPS_READ)
        assert token.status_code == 200 and token.json()["scope"] == APPS_READ
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        app, _ = okta.create_app()
        assert httpx.get(f"{okta.url}/api/v1/apps/{app}", headers=bearer).status_code == 200
        refused = httpx.post(f"{okta.url}/api/v1/apps/{app}/credentials/secrets",
                             headers=bearer)
        assert refused.status_code == 403 and refused.json()["errorCode"] == "E0000006"
        assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
        assert f'scope="{APPS_MANAGE}"' in refused.headers["WWW-Authenticate"]

    def test_scope_not_granted(self, okta: FakeOkta) -> None:
        answer = self._service_token(okta, (APPS_READ,), APPS_MANAGE)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_scope"

    def test_app_with_admin_roles_needs_a_super_admin(self, okta: FakeOkta) -> None:
        app, _ = okta.create_app(admin_roles=True)
        url = f"{okta.url}/api/v1/apps/{app}/credentials/secrets"
        plain = {"Authorization": f"SSWS {okta.api_token(super_admin=False)}"}
        assert httpx.post(url, headers=plain).json()["errorCode"] == "E0000006"
        assert httpx.post(url, headers=_ssws(okta)).status_code == 201


class TestOktaRateLimit:
    """Every answer carries X-Rate-Limit-*; over budget Okta answers 429 E0000047."""

    def test_headers_and_429(self) -> None:
        with FakeOkta(rate_limit=2, window=30) as okta:
            app, _ = okta.create_app()
            headers = _ssws(okta)
            first = httpx.get(f"{okta.url}/api/v1/apps/{app}", headers=headers)
            assert first.headers["X-Rate-Limit-Limit"] == "2"
            assert first.headers["X-Rate-Limit-Remaining"] == "1"
            assert int(first.headers["X-Rate-Limit-Reset"]) > time.time()
            httpx.get(f"{okta.url}/api/v1/apps/{app}", headers=headers)
            third = httpx.get(f"{okta.url}/api/v1/apps/{app}", headers=headers)
            assert third.status_code == 429 and third.json()["errorCode"] == "E0000047"
            assert third.headers["X-Rate-Limit-Remaining"] == "0"


class TestAuth0Management:
    """Management API tokens, rotate-secret and PATCH, errors in Auth0's shape."""

    def _token(self, auth0: FakeAuth0, scopes: tuple[str, ...]) -> dict[str, str]:
        cid, secret = auth0.admin_client(scopes)
        answer = httpx.post(f"{auth0.url}/oauth/token", json={
            "grant_type": "client_credentials", "client_id": cid, "client_secret": secret,
            "audience": auth0.audience})
        body = answer.json()
        assert answer.status_code == 200 and body["token_type"] == "Bearer"
        assert body["expires_in"] > 0 and set(body["scope"].split()) == set(scopes)
        return {"Authorization": f"Bearer {body['access_token']}"}

    def test_rotate_secret_old_dies_new_works_after_delay(self, auth0: FakeAuth0) -> None:
        headers = self._token(auth0, ("read:clients", UPDATE_KEYS))
        cid, old = auth0.create_client()
        answer = httpx.post(f"{auth0.url}/api/v2/clients/{cid}/rotate-secret", headers=headers)
        assert answer.status_code == 200 and answer.json()["client_id"] == cid
        new = answer.json()["client_secret"]
        assert not auth0.works(cid, old)
        assert not auth0.works(cid, new)  # not yet propagated
        for _ in range(100):  # then it works, within the delay and a margin
            if auth0.works(cid, new):
                break
            time.sleep(0.1)
        assert auth0.works(cid, new)

    def test_patch_client_secret(self, auth0: FakeAuth0) -> None:
        headers = self._token(auth0, ("read:clients", UPDATE_KEYS))
        cid, _ = auth0.create_client()
        chosen = secrets.token_urlsafe(32)
        answer = httpx.patch(f"{auth0.url}/api/v2/clients/{cid}", headers=headers,
                             json={"client_secret": chosen})
        assert answer.status_code == 200 and answer.json()["client_secret"] == chosen

    def test_errors(self, auth0: FakeAuth0) -> None:
        headers = self._token(auth0, ("read:clients",))
        cid, _ = auth0.create_client()
        denied = httpx.post(f"{auth0.url}/api/v2/clients/{cid}/rotate-secret", headers=headers)
        assert denied.status_code == 403
        assert denied.json() == {"statusCode": 403, "error": "Forbidden", "message":
                                 "Insufficient scope, expected any of: update:client_keys",
                                 "errorCode": "insufficient_scope"}
        missing = httpx.get(f"{auth0.url}/api/v2/clients/nope", headers=headers)
        assert missing.status_code == 404 and missing.json()["errorCode"] == "inexistent_client"
        bad = httpx.get(f"{auth0.url}/api/v2/clients/{cid}",
                        headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["message"] == "Invalid token"
        wrong = httpx.post(f"{auth0.url}/oauth/token", data={
            "grant_type": "client_credentials", "client_id": cid, "client_secret": "no",
            "audience": auth0.audience})
        assert wrong.status_code == 401 and wrong.json()["error"] == "access_denied"

    def test_private_key_jwt_client_cannot_rotate(self, auth0: FakeAuth0) -> None:
        headers = self._token(auth0, (UPDATE_KEYS,))
        cid, _ = auth0.create_client(private_key_jwt=True)
        answer = httpx.post(f"{auth0.url}/api/v2/clients/{cid}/rotate-secret", headers=headers)
        assert answer.status_code == 400 and answer.json()["statusCode"] == 400


class TestAuth0RateLimit:
    """Every Management answer carries x-ratelimit-*; over budget Auth0 answers 429."""

    def test_headers_and_429(self) -> None:
        with FakeAuth0(rate_limit=1, window=30) as auth0:
            cid, secret = auth0.admin_client()
            token = httpx.post(f"{auth0.url}/oauth/token", data={
                "grant_type": "client_credentials", "client_id": cid, "client_secret": secret,
                "audience": auth0.audience}).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            first = httpx.get(f"{auth0.url}/api/v2/clients/{cid}", headers=headers)
            assert first.headers["x-ratelimit-limit"] == "1"
            assert first.headers["x-ratelimit-remaining"] == "0"
            second = httpx.get(f"{auth0.url}/api/v2/clients/{cid}", headers=headers)
            assert second.status_code == 429
            assert second.json()["errorCode"] == "too_many_requests"
            assert int(second.headers["x-ratelimit-reset"]) > time.time()
