"""Tests for the admin API: [api] configuration, authentication, every route, problem details,
audit events, the committed OpenAPI document, and a leak scan."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import AUDIENCE, ISSUER, JwksServer, SigningKey

from rotator.config import ApiToken, JwtConfig, load_config
from rotator.daemon.auth import (
    Authenticator,
    JwksCache,
    JwtVerifier,
    Role,
    Unauthenticated,
)
from rotator.errors import ConfigError

# -- [api] configuration ----------------------------------------------------------------------

_BASE = """
[audit]
file = "audit.jsonl"
key_env = "AUDIT_KEY"
[stores.local]
type = "env"
file = "creds.env"
[idps.kc]
type = "keycloak"
url = "https://sso.test"
realm = "r"
admin_client_id = "rotator"
admin_client_secret_env = "KC_SECRET"
[clients.app]
idp = "kc"
client_id = "app"
stores = [{ store = "local", prefix = "APP" }]
"""


def _load(tmp_path: Path, api: str, **env: str) -> object:
    (tmp_path / "rotator.toml").write_text(_BASE + api, encoding="utf-8")
    environ = {"AUDIT_KEY": secrets.token_hex(16), "KC_SECRET": secrets.token_hex(16), **env}
    return load_config(tmp_path / "rotator.toml", environ=environ)


def _problems(tmp_path: Path, api: str, **env: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, api, **env)
    return {p.key: p.reason for p in info.value.problems}


class TestApiConfig:
    """[api] is checked with the rest of the file: listen, TLS, tokens and the JWT issuer."""

    def test_defaults_to_loopback_8900_without_tokens(self, tmp_path: Path) -> None:
        config = _load(tmp_path, "")
        assert config.api.listen == "127.0.0.1:8900"  # type: ignore[attr-defined]
        assert config.api.tokens == ()  # type: ignore[attr-defined]

    def test_tokens_from_env_file_and_hash_are_kept_as_digests(self, tmp_path: Path) -> None:
        a, b, c = (secrets.token_urlsafe(24) for _ in range(3))
        token_file = tmp_path / "b.token"
        token_file.write_text(b + "\n")
        token_file.chmod(0o600)
        config = _load(tmp_path, f"""
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "ops"
role = "admin"
token_env = "OPS_TOKEN"
[[api.tokens]]
name = "ci"
role = "rotate"
token_file = "b.token"
[[api.tokens]]
name = "grafana"
role = "read"
token_sha256 = "{hashlib.sha256(c.encode()).hexdigest()}"
""", OPS_TOKEN=a)
        assert config.api.tokens == (  # type: ignore[attr-defined]
            ApiToken("ops", "admin", hashlib.sha256(a.encode()).digest()),
            ApiToken("ci", "rotate", hashlib.sha256(b.encode()).digest()),
            ApiToken("grafana", "read", hashlib.sha256(c.encode()).digest()),
        )
        assert a not in repr(config) and b not in repr(config)

    @pytest.mark.parametrize("listen", ["0.0.0.0:8900", "[::]:8900", "10.1.2.3:8900",
                                        "api.example.com:443"])
    def test_non_loopback_without_tls_is_refused(self, tmp_path: Path, listen: str) -> None:
        problems = _problems(tmp_path, f'[api]\nlisten = "{listen}"\n')
        assert "insecure_http = true" in problems["api.listen"]

    @pytest.mark.parametrize("extra", ["insecure_http = true",
                                       'cert_file = "c.pem"\nkey_file = "k.pem"'])
    def test_non_loopback_is_allowed_with_tls_or_by_name(self, tmp_path: Path,
                                                         extra: str) -> None:
        config = _load(tmp_path, f'[api]\nlisten = "0.0.0.0:8900"\n{extra}\n')
        assert config.api.host == "0.0.0.0"  # type: ignore[attr-defined]  # noqa: S104

    @pytest.mark.parametrize("listen", ["127.0.0.1:8900", "[::1]:8900", "localhost:1"])
    def test_loopback_needs_no_tls(self, tmp_path: Path, listen: str) -> None:
        _load(tmp_path, f'[api]\nlisten = "{listen}"\n')

    def test_every_problem_is_reported_at_once(self, tmp_path: Path) -> None:
        problems = _problems(tmp_path, """
[api]
listen = "nowhere"
cert_file = "c.pem"
[[api.tokens]]
name = "a"
role = "superuser"
token_sha256 = "abc"
[[api.tokens]]
name = "b"
role = "read"
token_env = "SHORT"
[[api.tokens]]
name = "c"
role = "read"
[api.jwt]
jwks_uri = "http://idp.example.com/certs"
issuer = "x"
""", SHORT="short")
        assert set(problems) >= {
            "api.listen", "api.key_file", "api.tokens[0].role", "api.tokens[0].token_sha256",
            "api.tokens[1].token_env", "api.tokens[2].token_env", "api.jwt.jwks_uri",
            "api.jwt.audience"}, problems
        assert "at least 16" in problems["api.tokens[1].token_env"]
        assert "short" not in str(problems)

    def test_duplicate_token_names_are_refused(self, tmp_path: Path) -> None:
        digest = hashlib.sha256(b"x").hexdigest()
        problems = _problems(tmp_path, f"""
[[api.tokens]]
name = "a"
role = "read"
token_sha256 = "{digest}"
[[api.tokens]]
name = "a"
role = "admin"
token_sha256 = "{digest}"
""")
        assert "already named" in problems["api.tokens[1].name"]


# -- authentication ---------------------------------------------------------------------------


def _token(value: str, name: str, role: str) -> ApiToken:
    return ApiToken(name, role, hashlib.sha256(value.encode()).digest())


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture(scope="module")
def jwks(signing_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer([signing_key]).running() as server:
        yield server


def _verifier(uri: str) -> JwtVerifier:
    return JwtVerifier(JwtConfig(uri, ISSUER, AUDIENCE, {
        "read": "rotator:read", "rotate": "rotator:rotate", "admin": "rotator:admin"}))


class TestStaticTokens:
    """A configured bearer token authenticates as its name and role; anything else is refused."""

    def test_each_token_maps_to_its_role(self) -> None:
        values = {role: secrets.token_urlsafe(24) for role in ("read", "rotate", "admin")}
        auth = Authenticator([_token(v, f"t-{r}", r) for r, v in values.items()])
        for role, value in values.items():
            caller = auth.authenticate(f"Bearer {value}")
            assert (caller.name, caller.role, caller.actor) == (
                f"t-{role}", Role.named(role), f"api:t-{role}")

    @pytest.mark.parametrize(("header", "reason"), [
        (None, "no bearer token"), ("", "no bearer token"),
        ("Basic dXNlcjpwYXNz", "not a bearer token"), ("Bearer", "not a bearer token"),
        ("Bearer wrong-token-value-1234", "unknown bearer token"),
    ])
    def test_refused(self, header: str | None, reason: str) -> None:
        auth = Authenticator([_token(secrets.token_urlsafe(24), "a", "admin")])
        with pytest.raises(Unauthenticated, match=reason):
            auth.authenticate(header)

    def test_roles_are_ordered(self) -> None:
        assert Role.READ < Role.ROTATE < Role.ADMIN
        assert str(Role.ROTATE) == "rotate"


class TestJwt:
    """A JWT from the configured issuer, for this audience, unexpired, maps its scope to a role."""

    def test_good_tokens_of_each_role(self, jwks: JwksServer, signing_key: SigningKey) -> None:
        auth = Authenticator(jwt=_verifier(jwks.uri))
        for scope, role in [("rotator:read", Role.READ), ("openid rotator:rotate", Role.ROTATE),
                            ("rotator:read rotator:admin", Role.ADMIN)]:
            caller = auth.authenticate(f"Bearer {signing_key.sign(scope=scope)}")
            assert (caller.name, caller.role, caller.kind) == ("ops-bot", role, "jwt")
            assert caller.actor == "api:jwt:ops-bot"

    def test_sub_names_the_caller_without_client_id(self, jwks: JwksServer,
                                                    signing_key: SigningKey) -> None:
        token = signing_key.sign(client_id=None, sub="svc\nfake-line")
        caller = Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {token}")
        assert caller.name == "svc_fake-line"

    @pytest.mark.parametrize(("claims", "reason"), [
        ({"expires_in": -120}, "expired"),
        ({"audience": "someone-else"}, "audience"),
        ({"issuer": "https://evil.test"}, "another issuer"),
        ({"scope": "openid profile"}, "none of the scopes"),
    ])
    def test_refused(self, jwks: JwksServer, signing_key: SigningKey,
                     claims: dict[str, object], reason: str) -> None:
        token = signing_key.sign(**claims)  # type: ignore[arg-type]
        with pytest.raises(Unauthenticated, match=reason):
            Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {token}")

    def test_a_key_the_issuer_does_not_publish_is_refused(self, jwks: JwksServer) -> None:
        stranger = SigningKey("k1")  # same kid, other key: signature fails
        with pytest.raises(Unauthenticated, match="signature"):
            Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {stranger.sign()}")
        unknown = SigningKey("k-unknown")
        with pytest.raises(Unauthenticated, match="does not publish"):
            Authenticator(jwt=_verifier(jwks.uri)).authenticate(f"Bearer {unknown.sign()}")

    def test_alg_none_and_hs256_are_refused(self, jwks: JwksServer) -> None:
        claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": 2**31, "scope": "rotator:admin",
                  "client_id": "x"}
        auth = Authenticator(jwt=_verifier(jwks.uri))
        for token in (jwt_encode(claims, None, "none"),
                      jwt_encode(claims, "k" * 32, "HS256")):
            with pytest.raises(Unauthenticated, match="algorithm"):
                auth.authenticate(f"Bearer {token}")

    def test_keys_are_cached_and_unknown_kids_refetch_rarely(
            self, jwks: JwksServer, signing_key: SigningKey) -> None:
        now = [0.0]
        cache = JwksCache(jwks.uri, clock=lambda: now[0])
        verifier = JwtVerifier(_verifier(jwks.uri)._config, keys=cache)
        for _ in range(5):
            verifier.verify(signing_key.sign())
        assert cache.fetches == 1
        for _ in range(5):
            with pytest.raises(Unauthenticated):
                verifier.verify(SigningKey("forged").sign())
        assert cache.fetches == 1  # within JWKS_MIN_REFETCH_SECONDS
        now[0] = 31.0
        with pytest.raises(Unauthenticated):
            verifier.verify(SigningKey("forged").sign())
        assert cache.fetches == 2
        cache.close()

    def test_an_unreachable_jwks_is_refused_without_detail(self) -> None:
        auth = Authenticator(jwt=_verifier("http://127.0.0.1:9/certs"))
        with pytest.raises(Unauthenticated, match="cannot fetch"):
            auth.authenticate(f"Bearer {SigningKey('k').sign()}")


def jwt_encode(claims: dict[str, object], key: str | None, alg: str) -> str:
    import jwt

    if alg == "none":
        return jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": "k1"})
