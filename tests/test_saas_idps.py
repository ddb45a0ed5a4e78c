"""The Okta and Auth0 adapters, and whole rotations through them, against the fakes.

What the contract suite (test_idp_contract.py) does not cover: each vendor's admin
authentication and least privilege, Okta's two-secret limit and admin-role refusal, Auth0's
token cache and propagation delay, and rate limits honoured by a burst of rotations.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.auth0 import READ_CLIENTS, FakeAuth0
from fakes.okta import APPS_READ, FakeOkta, pem, rsa_key
from saas_env import SaasScenario

from providers.idps.auth0 import Auth0Idp
from providers.idps.okta import OktaIdp
from rotator.daemon.workers import NullObserver, WatchedIdp
from rotator.errors import IdentityProviderError, IdpAccessDenied, IdpNotFound, IdpRateLimited
from rotator.secrets import Secret, generate_secret


def _okta(fake: FakeOkta, **override: Any) -> OktaIdp:
    settings = {"url": fake.url, "authorization_server": "default",
                "api_token": Secret(fake.api_token(super_admin=True)), "admin_client_id": None,
                "admin_private_key": None, "admin_key_id": None, "max_rate_limit_wait": 60.0,
                "tls_verify": True, "ca_file": None, "timeout": 10.0}
    idp = OktaIdp("okta", {**settings, **override})
    idp.start()
    return idp


def _auth0(fake: FakeAuth0, scopes: tuple[str, ...] | None = None, **override: Any) -> Auth0Idp:
    admin_id, admin_secret = fake.admin_client(scopes) if scopes else fake.admin_client()
    settings = {"url": fake.url, "audience": None, "admin_client_id": admin_id,
                "admin_client_secret": Secret(admin_secret), "propagation_delay": 30.0,
                "max_rate_limit_wait": 60.0, "tls_verify": True, "ca_file": None,
                "timeout": 10.0}
    idp = Auth0Idp("auth0", {**settings, **override})
    idp.start()
    return idp


class TestOktaServiceApp:
    """An OAuth service app signing in with private_key_jwt rotates like an SSWS token does,
    and one not granted okta.apps.manage gets an error naming that scope."""

    def test_private_key_jwt_rotates_and_retires(self, fake_okta: FakeOkta) -> None:
        key = rsa_key()
        service = fake_okta.service_app(key.public_key())
        idp = _okta(fake_okta, api_token=None, admin_client_id=service,
                    admin_private_key=Secret(pem(key)))
        try:
            client_id, old = fake_okta.create_app()
            issued = idp.create_secret(client_id, "r-1", generate_secret())
            assert fake_okta.works(client_id, issued.value.reveal())
            assert idp.retire_old_secrets(client_id, issued) == 1
            assert not fake_okta.works(client_id, old)
        finally:
            idp.close()

    def test_scope_not_granted_is_named(self, fake_okta: FakeOkta) -> None:
        key = rsa_key()
        service = fake_okta.service_app(key.public_key(), scopes=(APPS_READ,))
        idp = _okta(fake_okta, api_token=None, admin_client_id=service,
                    admin_private_key=Secret(pem(key)))
        try:
            with pytest.raises(IdpAccessDenied, match=r"okta\.apps\.manage"):
                idp.capabilities(fake_okta.create_app()[0])
        finally:
            idp.close()

    def test_wrong_key_is_refused_clearly(self, fake_okta: FakeOkta) -> None:
        service = fake_okta.service_app(rsa_key().public_key())
        idp = _okta(fake_okta, api_token=None, admin_client_id=service,
                    admin_private_key=Secret(pem(rsa_key())))
        try:
            with pytest.raises(IdpAccessDenied, match="could not sign in"):
                idp.capabilities(fake_okta.create_app()[0])
        finally:
            idp.close()

    def test_both_credentials_is_a_config_problem(self) -> None:
        assert OktaIdp.validate_settings({"admin_client_id": "0oa1",
                                          "api_token": Secret("x")})


class TestOktaLimits:
    """Okta's two-secret limit and its refusal to change apps holding admin roles are
    reported plainly; a repeated create of the same value adds no third secret."""

    def test_admin_role_app_refusal_says_why(self, fake_okta: FakeOkta) -> None:
        idp = _okta(fake_okta, api_token=Secret(fake_okta.api_token(super_admin=False)))
        try:
            client_id, _ = fake_okta.create_app(admin_roles=True)
            with pytest.raises(IdpAccessDenied, match="admin roles"):
                idp.create_secret(client_id, "r-1", generate_secret())
        finally:
            idp.close()

    def test_two_active_secrets_already(self, fake_okta: FakeOkta) -> None:
        idp = _okta(fake_okta)
        try:
            client_id, _ = fake_okta.create_app()
            idp.create_secret(client_id, "r-1", generate_secret())  # someone else's second
            with pytest.raises(IdentityProviderError, match="two active"):
                idp.create_secret(client_id, "r-2", generate_secret())
        finally:
            idp.close()

    def test_create_is_idempotent(self, fake_okta: FakeOkta) -> None:
        idp = _okta(fake_okta)
        try:
            client_id, _ = fake_okta.create_app()
            value = generate_secret()
            first = idp.create_secret(client_id, "r-1", value)
            again = idp.create_secret(client_id, "r-1", value)  # a resumed rotation
            assert again.secret_ref == first.secret_ref
            assert len(fake_okta.apps[client_id].secrets) == 2
        finally:
            idp.close()

    def test_inactive_leftover_is_cleared(self, fake_okta: FakeOkta) -> None:
        idp = _okta(fake_okta)
        try:
            client_id, old = fake_okta.create_app()
            first = idp.create_secret(client_id, "r-1", generate_secret())
            fake_okta.apps[client_id].secrets[0].status = "INACTIVE"  # retirement cut short
            second = idp.create_secret(client_id, "r-2", generate_secret())
            assert [s.id for s in fake_okta.apps[client_id].secrets] == [
                first.secret_ref, second.secret_ref]
            assert not fake_okta.works(client_id, old)
        finally:
            idp.close()


class TestAuth0Admin:
    """The Management token is fetched once and reused; a missing scope is named; a
    private_key_jwt client is refused before anything changes."""

    def test_token_cached_until_refused(self, fake_auth0: FakeAuth0) -> None:
        idp = _auth0(fake_auth0)
        try:
            before = fake_auth0.management_tokens
            for _ in range(3):
                client_id, _ = fake_auth0.create_client()
                idp.capabilities(client_id)
                idp.create_secret(client_id, "r-1", generate_secret())
            assert fake_auth0.management_tokens == before + 1
            fake_auth0.expire_tokens()
            idp.capabilities(client_id)
            assert fake_auth0.management_tokens == before + 2
        finally:
            idp.close()

    def test_missing_scope_is_named(self, fake_auth0: FakeAuth0) -> None:
        idp = _auth0(fake_auth0, scopes=(READ_CLIENTS,))
        try:
            client_id, old = fake_auth0.create_client()
            assert idp.capabilities(client_id).caller_sets_value
            with pytest.raises(IdpAccessDenied, match="update:client_keys"):
                idp.create_secret(client_id, "r-1", generate_secret())
            assert fake_auth0.works(client_id, old)
        finally:
            idp.close()

    def test_private_key_jwt_client_refused(self, fake_auth0: FakeAuth0) -> None:
        idp = _auth0(fake_auth0)
        try:
            client_id, _ = fake_auth0.create_client(private_key_jwt=True)
            with pytest.raises(IdentityProviderError, match="private_key_jwt"):
                idp.capabilities(client_id)
        finally:
            idp.close()

    def test_declares_its_propagation_delay(self, fake_auth0: FakeAuth0) -> None:
        idp = _auth0(fake_auth0, propagation_delay=12.0)
        try:
            caps = idp.capabilities(fake_auth0.create_client()[0])
            assert caps.propagation_delay == 12.0 and not caps.overlap
        finally:
            idp.close()


@pytest.fixture(params=["okta", "auth0"])
def throttled(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """A fake with a budget of 6 (Okta) or 4 (Auth0) admin requests per second."""
    fake = FakeOkta(rate_limit=6, window=1.0) if request.param == "okta" else \
        FakeAuth0(rate_limit=4, window=1.0)
    with fake:
        yield request.param, fake


class TestRateLimits:
    """A burst of rotations against a small budget finishes with no failed rotation, and a
    wait longer than max_rate_limit_wait becomes IdpRateLimited with retry_after."""

    def test_burst_of_rotations(self, throttled: tuple[str, Any], tmp_path: Path) -> None:
        kind, fake = throttled
        s = SaasScenario.create(kind, fake, tmp_path, clients=6)
        old = [s.stored(i) for i in range(6)]
        result = s.cli("rotate", "--all", "--parallel", "3")
        assert result.code == 0, result.out + result.err
        for i in range(6):
            assert s.stored(i) != old[i] and s.works(s.stored(i), i)
        admin_calls = len(fake.requests)
        assert admin_calls > fake.budget.limit * 2, "the burst did not outrun one window"
        assert s.leaks() == []

    def test_long_wait_raises_with_retry_after(self) -> None:
        with FakeAuth0(rate_limit=1, window=120.0) as fake:
            idp = _auth0(fake, max_rate_limit_wait=1.0)
            try:
                client_id, _ = fake.create_client()
                idp.capabilities(client_id)
                with pytest.raises(IdpRateLimited) as info:
                    idp.capabilities(client_id)
                assert info.value.retry_after > 1.0
            finally:
                idp.close()


class TestAuth0Propagation:
    """A new Auth0 secret that works only after a delay is verified by retrying through it;
    one that never works ends the rotation with the single-secret message."""

    def test_verifies_after_the_delay(self, tmp_path: Path) -> None:
        with FakeAuth0(propagation_delay=1.5) as fake:
            s = SaasScenario.create("auth0", fake, tmp_path, verify_attempts=1,
                                    idp_extra='propagation_delay = "6s"')
            old = s.stored()
            refused_before = fake.refused_tokens
            result = s.cli("rotate", "c0")
            assert result.code == 0, result.out + result.err
            assert s.works(s.stored()) and not s.works(old)
            assert fake.refused_tokens > refused_before  # it did retry through the delay

    def test_never_works(self, tmp_path: Path) -> None:
        with FakeAuth0() as fake:
            s = SaasScenario.create(
                "auth0", fake, tmp_path, verify_attempts=2, idp_extra='propagation_delay = "1s"',
                new_client=lambda: fake.create_client(propagates=False))
            result = s.cli("rotate", "c0")
            assert result.code != 0
            assert "the new secret is current (the IdP invalidated the old one) but did not " \
                   "obtain a token" in result.out + result.err
            # What Auth0 now holds is what the stores hold: nothing issued was lost.
            assert fake.clients[s.client_ids[0]].secret == s.stored() == s.stored(file="b.env")
            assert s.leaks() == []


class TestHostileIds:
    """An okta_app_id with '/' or '..' stays one path segment (never another API path)."""

    def test_app_id_is_one_segment(self, fake_okta: FakeOkta) -> None:
        idp = _okta(fake_okta)
        try:
            client_id, _ = fake_okta.create_app()
            idp.configure_client(client_id, {"okta_app_id": f"../{secrets.token_hex(2)}"})
            with pytest.raises(IdpNotFound):
                idp.capabilities(client_id)
        finally:
            idp.close()

class TestDaemonHonoursRateLimits:
    """The daemon's IdP wrapper pauses an IdP for the retry_after an adapter's
    IdpRateLimited carries."""

    def test_rate_limited_pauses_the_idp(self) -> None:
        with FakeAuth0(rate_limit=1, window=120.0) as fake:
            idp = _auth0(fake, max_rate_limit_wait=1.0)
            paused: list[tuple[str, float]] = []
            watched = WatchedIdp(idp, NullObserver(), lambda name, s: paused.append((name, s)))
            try:
                client_id, _ = fake.create_client()
                watched.capabilities(client_id)
                with pytest.raises(IdpRateLimited):
                    watched.capabilities(client_id)
            finally:
                idp.close()
            assert len(paused) == 1 and paused[0][0] == "auth0" and paused[0][1] > 1.0


class TestOktaClientSettings:
    """okta_app_id in a client's table passes the config check and a rotation through it
    completes (TestHostileIds shows the adapter addresses that id)."""

    def test_app_id_setting(self, fake_okta: FakeOkta, tmp_path: Path) -> None:
        app, secret = fake_okta.create_app()
        s = SaasScenario.create("okta", fake_okta, tmp_path, client_extra=f'okta_app_id = "{app}"',
                                new_client=lambda: (app, secret))
        check = s.cli("config", "check")
        assert check.code == 0, check.out + check.err
        before = len(fake_okta.requests)
        result = s.cli("rotate", "c0")
        assert result.code == 0, result.out + result.err
        assert all(app in path for _, path in fake_okta.requests[before:])
        assert s.works(s.stored()) and not s.works(secret)
