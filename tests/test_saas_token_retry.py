"""The SaaS adapters' admin token (providers/idps/_saas.AdminToken): cached, and renewed
once when an admin request is answered 401."""

from __future__ import annotations

import time

import httpx

from providers.idps._saas import AdminToken
from rotator.secrets import Secret


class Counter:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.sign_ins = 0
        self.sent: list[str] = []

    def sign_in(self) -> tuple[Secret, float]:
        self.sign_ins += 1
        return Secret(f"token-{self.sign_ins}"), time.monotonic() + 3600

    def request(self, token: Secret) -> httpx.Response:
        self.sent.append(token.reveal())
        return httpx.Response(self.statuses[len(self.sent) - 1])


class TestAdminTokenRetry:
    """A 401 drops the cached token and the request is sent once more with a new one; any
    other answer, and a second 401, is returned as it is."""

    def test_cached_between_requests(self) -> None:
        c = Counter([200, 204])
        token = AdminToken(c.sign_in)
        assert token.send(c.request).status_code == 200
        assert token.send(c.request).status_code == 204
        assert c.sign_ins == 1 and c.sent == ["token-1", "token-1"]

    def test_401_signs_in_again_once(self) -> None:
        c = Counter([401, 200])
        assert AdminToken(c.sign_in).send(c.request).status_code == 200
        assert c.sign_ins == 2 and c.sent == ["token-1", "token-2"]

    def test_second_401_is_returned(self) -> None:
        c = Counter([401, 401])
        assert AdminToken(c.sign_in).send(c.request).status_code == 401
        assert c.sent == ["token-1", "token-2"]

    def test_403_is_not_retried(self) -> None:
        c = Counter([403])
        assert AdminToken(c.sign_in).send(c.request).status_code == 403
        assert c.sign_ins == 1 and c.sent == ["token-1"]

    def test_expired_token_is_renewed_before_sending(self) -> None:
        c = Counter([200, 200])
        token = AdminToken(lambda: (c.sign_in()[0], 0.0))  # expired at once
        token.send(c.request)
        token.send(c.request)
        assert c.sign_ins == 2
