"""providers.idps._saas: how Okta, Auth0 and Entra read an admin token answer; admin HTTP."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import httpx
import pytest

from providers.idps._saas import DEFAULT_TOKEN_LIFETIME, TOKEN_MARGIN, SaasAdminHttp, admin_token
from rotator.errors import IdentityProviderError, IdpUnavailable

NOW = 1000.0


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "monotonic", lambda: NOW)


def _ttl(body: dict[str, Any]) -> float:
    """How long the answer may be cached."""
    _, until = admin_token(body, "X")
    return until - NOW


class TestAdminToken:
    """A token is cached until a minute before expires_in (else 300 s), at least 5 s."""

    def test_expires_in_less_the_margin(self) -> None:
        value = secrets.token_urlsafe(16)
        token, _ = admin_token({"access_token": value, "expires_in": 3600}, "X")
        assert token.reveal() == value
        assert _ttl({"access_token": "t", "expires_in": 3600}) == 3600 - TOKEN_MARGIN

    @pytest.mark.parametrize("expires_in", [None, True, "3600", [1]])
    def test_unusable_lifetime_is_the_default(self, expires_in: Any) -> None:
        body: dict[str, Any] = {"access_token": "t"}
        if expires_in is not None:
            body["expires_in"] = expires_in
        assert _ttl(body) == DEFAULT_TOKEN_LIFETIME - TOKEN_MARGIN

    def test_short_lifetime_keeps_five_seconds(self) -> None:
        assert _ttl({"access_token": "t", "expires_in": 10}) == 5


class TestAdminTokenMissing:
    """An answer without a usable access_token is IdpUnavailable naming the endpoint."""

    @pytest.mark.parametrize("body", [None, {}, {"access_token": ""}, {"access_token": 5}])
    def test_refused(self, body: Any) -> None:
        what = "Okta 'o': the org token endpoint"
        with pytest.raises(IdpUnavailable,
                           match=f"^{re.escape(what)} answered without an access_token$"):
            admin_token(body, what)


class TestSaasAdminHttp:
    """A SaaS adapter's admin HTTP answers only between start() and close()."""

    def test_before_and_after(self) -> None:
        sent: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            sent.append(request.url.path)
            return httpx.Response(200, json={})

        http = SaasAdminHttp("Okta 'o'", "http://127.0.0.1:1", prefix="X-Rate-Limit-",
                             max_wait=1.0, timeout=5.0, verify=True,
                             transport=httpx.MockTransport(handler))
        with pytest.raises(IdentityProviderError, match=r"^Okta 'o' is not started$"):
            http.request("GET", "/api/v1/apps")
        http.start()
        assert http.request("GET", "/api/v1/apps").status_code == 200
        http.close()
        with pytest.raises(IdentityProviderError):
            http.request("GET", "/api/v1/apps")
        assert sent == ["/api/v1/apps"]
