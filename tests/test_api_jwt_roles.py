"""JWT access tokens and the admin API's roles: every role, ``consumer`` included, is granted
by its own scope, and a consumer's token carries no other role's scope."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import AUDIENCE, ISSUER, JwksServer, SigningKey
from config_env import MINIMAL_CONFIG

from rotator.config import JwtConfig, load_config
from rotator.daemon.auth import Authenticator, JwtVerifier, Role, Unauthenticated
from rotator.errors import ConfigError

#: What [api.jwt] gives the verifier today: the scopes of read, rotate and admin.
ORDERED_SCOPES = {"read": "rotator:read", "rotate": "rotator:rotate", "admin": "rotator:admin"}


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture(scope="module")
def jwks(signing_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer([signing_key]).running() as server:
        yield server


def _auth(uri: str, scopes: dict[str, str]) -> Authenticator:
    return Authenticator(jwt=JwtVerifier(JwtConfig(uri, ISSUER, AUDIENCE, scopes)))


class TestJwtConsumerRole:
    """A JWT holding the consumer scope authenticates as a consumer, and only when it holds
    no other role's scope."""

    def test_the_default_consumer_scope_grants_consumer(self, jwks: JwksServer,
                                                        signing_key: SigningKey) -> None:
        auth = _auth(jwks.uri, ORDERED_SCOPES)
        caller = auth.authenticate(f"Bearer {signing_key.sign(scope='openid rotator:consumer')}")
        assert (caller.name, caller.role, caller.kind) == ("ops-bot", Role.CONSUMER, "jwt")
        assert caller.actor == "api:jwt:ops-bot"

    def test_scp_claim_grants_consumer_too(self, jwks: JwksServer,
                                           signing_key: SigningKey) -> None:
        import jwt

        token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": 2**31, "sub": "web-7",
                            "scp": ["rotator:consumer"]},
                           signing_key.private, algorithm="RS256", headers={"kid": "k1"})
        caller = _auth(jwks.uri, ORDERED_SCOPES).authenticate(f"Bearer {token}")
        assert (caller.name, caller.role) == ("web-7", Role.CONSUMER)

    def test_a_configured_consumer_scope_replaces_the_default(
            self, jwks: JwksServer, signing_key: SigningKey) -> None:
        auth = _auth(jwks.uri, {**ORDERED_SCOPES, "consumer": "payments:report"})
        caller = auth.authenticate(f"Bearer {signing_key.sign(scope='payments:report')}")
        assert caller.role == Role.CONSUMER
        with pytest.raises(Unauthenticated, match="none of the scopes"):
            auth.authenticate(f"Bearer {signing_key.sign(scope='rotator:consumer')}")

    @pytest.mark.parametrize("other", sorted(ORDERED_SCOPES.values()))
    def test_consumer_with_another_role_is_refused(self, jwks: JwksServer,
                                                   signing_key: SigningKey, other: str) -> None:
        token = signing_key.sign(scope=f"rotator:consumer {other}")
        with pytest.raises(Unauthenticated, match="only the consumer scope") as caught:
            _auth(jwks.uri, ORDERED_SCOPES).authenticate(f"Bearer {token}")
        assert token not in str(caught.value)

    def test_ordered_roles_still_take_the_strongest(self, jwks: JwksServer,
                                                    signing_key: SigningKey) -> None:
        token = signing_key.sign(scope="rotator:read rotator:rotate rotator:admin")
        assert _auth(jwks.uri, ORDERED_SCOPES).authenticate(f"Bearer {token}").role == \
            Role.ADMIN


class TestJwtScopesInTheConfig:
    """[api.jwt] maps each role, the consumer one too, to its own scope, and refuses two roles
    sharing one."""

    _JWT = '[api.jwt]\njwks_uri = "https://idp.example.com/certs"\nissuer = "i"\naudience = "a"\n'

    def test_the_consumer_scope_reaches_the_verifier(self, tmp_path: Path) -> None:
        config = _load(tmp_path, self._JWT + 'consumer_scope = "svc:report"\n')
        scopes = config.api.jwt.scopes  # type: ignore[attr-defined]
        assert scopes["consumer"] == "svc:report"
        assert scopes["read"] == "rotator:read"

    def test_two_roles_with_one_scope_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            _load(tmp_path, self._JWT + 'consumer_scope = "rotator:read"\n')
        problems = {p.key: p.reason for p in info.value.problems}
        assert "also another role's scope" in problems["api.jwt.consumer_scope"]
        assert "also another role's scope" in problems["api.jwt.read_scope"]


def _load(tmp_path: Path, api: str) -> object:
    (tmp_path / "rotator.toml").write_text(MINIMAL_CONFIG + api, encoding="utf-8")
    return load_config(tmp_path / "rotator.toml", environ={
        "AUDIT_KEY": secrets.token_hex(16), "KC": secrets.token_hex(16)})
