"""Who may call the admin API: bearer tokens from ``[[api.tokens]]`` and, optionally,
OAuth 2.0 JWT access tokens from one issuer (``[api.jwt]``).

A caller has a :class:`Role`; each role may do what the weaker ones may
(``read`` < ``rotate`` < ``admin``); ``consumer`` may only report which secret a consumer
uses, and nothing else (no other role may report). :meth:`Authenticator.authenticate` turns an
``Authorization`` header into a :class:`Caller` or raises :class:`Unauthenticated`, whose
``reason`` is fit for the audit log (it never holds the token).

Static tokens are kept only as SHA-256 digests and compared with ``hmac.compare_digest``
against every configured token, so neither the answer nor its timing says which token came
close. A JWT is accepted only if signed with an asymmetric key from the issuer's JWKS, with
the configured ``iss`` and ``aud``, unexpired, and carrying the scope of at least one role.
Each role has its scope (``rotator:<role>`` unless configured otherwise), ``consumer``
included; a JWT carrying the consumer scope and another role's is refused, since a caller
has one role and a consumer's may not be widened (nor another's narrowed) by a stray scope.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from rotator import _bounded
from rotator._deadline import DeadlinePassed
from rotator.config import ApiConfig, ApiToken, JwtConfig
from rotator.errors import RotatorError


class Role(enum.IntEnum):
    """What a caller may do; a stronger role includes every weaker one."""

    CONSUMER = 0  # only report which secret it uses (POST /v1/clients/{name}/consumers)
    READ = 1  # every GET
    ROTATE = 2  # + trigger rotations and verifications
    ADMIN = 3  # + retire old secrets

    @classmethod
    def named(cls, name: str) -> Role:
        return cls[name.upper()]

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a token's name or a JWT's ``client_id``/``sub``."""

    name: str
    role: Role
    #: ``token`` (from ``[[api.tokens]]``) or ``jwt``.
    kind: str

    @property
    def actor(self) -> str:
        """How the journal and the audit log name this caller."""
        return f"api:{self.name}" if self.kind == "token" else f"api:jwt:{self.name}"


class Unauthenticated(RotatorError):
    """No usable credentials: missing, unknown, expired or not for this API.

    ``reason`` says which, for the audit log and the response (never the token).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailable(Unauthenticated):
    """The issuer's key set could not be fetched; the call may succeed later."""

    retryable = True


#: Signature algorithms accepted in JWTs: asymmetric only (no ``none``, no shared-key HS*).
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                  "ES256", "ES384", "ES512", "EdDSA")
#: Clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
JWT_LEEWAY_SECONDS = 30.0
#: A key set is fetched again after this long, or sooner for an unknown ``kid``.
JWKS_MAX_AGE_SECONDS = 300.0
#: An unknown ``kid`` refetches the key set at most this often (a forged kid cannot flood it).
JWKS_MIN_REFETCH_SECONDS = 30.0
_JWKS_MAX_BYTES = 256 * 1024
_CALLER_NAME = re.compile(r"[^A-Za-z0-9_.:@/-]")
_BEARER = re.compile(r"^Bearer +([\x21-\x7e]+) *$", re.IGNORECASE)


def _caller_name(value: str) -> str:
    """A claim value made safe for the audit log: printable, short."""
    return _CALLER_NAME.sub("_", value)[:128]


class JwksCache:
    """The issuer's JSON Web Key Set, fetched over httpx (TLS verified) and cached.

    A fetch runs while an API request waits, so it has ``timeout`` seconds in all and reads
    at most 256 KiB of answer (:mod:`rotator._bounded`): an issuer that drips its answer or
    sends a huge one fails the fetch (:class:`JwksUnavailable`) instead of holding a worker.
    """

    def __init__(self, uri: str, *, verify: bool | str = True, timeout: float = 5.0,
                 transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._uri = uri
        self._client = _bounded.client(timeout=timeout, verify=verify, transport=transport,
                                       max_body=_JWKS_MAX_BYTES, follow_redirects=False)
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        #: How many times the key set was fetched (tests count, rather than time).
        self.fetches = 0

    def key(self, kid: str | None) -> jwt.PyJWK:
        """The key for ``kid``; raises :class:`Unauthenticated` if there is none."""
        with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            stale = age is None or age > JWKS_MAX_AGE_SECONDS
            unknown = kid not in self._keys if kid else len(self._keys) != 1
            if stale or (unknown and (age is None or age > JWKS_MIN_REFETCH_SECONDS)):
                self._fetch(now)
            if kid is None:
                if len(self._keys) != 1:
                    raise Unauthenticated("the token names no key (kid) and the issuer has "
                                          "several")
                return next(iter(self._keys.values()))
            found = self._keys.get(kid)
            if found is None:
                raise Unauthenticated("the token is signed with a key the issuer does not "
                                      "publish")
            return found

    def _fetch(self, now: float) -> None:
        self.fetches += 1
        try:
            response = self._client.get(self._uri, headers={"Accept": "application/json"})
        except (DeadlinePassed, _bounded.AnswerRefused) as exc:
            raise JwksUnavailable(f"cannot fetch the issuer's keys: {exc}") from exc
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"cannot fetch the issuer's keys: "
                                  f"{type(exc).__name__}") from exc
        if response.status_code != 200:
            raise JwksUnavailable(f"the issuer's key set answered HTTP {response.status_code}")
        try:
            keys = jwt.PyJWKSet.from_json(response.text).keys
        except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as exc:
            raise JwksUnavailable("the issuer's key set is not a usable JWKS") from exc
        self._keys = {k.key_id: k for k in keys if k.key_id}
        if not self._keys and len(keys) == 1:
            self._keys = {"": keys[0]}
        self._fetched_at = now

    def close(self) -> None:
        self._client.close()


class JwtVerifier:
    """Checks OAuth 2.0 JWT access tokens from one issuer and maps their scopes to a role."""

    def __init__(self, config: JwtConfig, *, keys: JwksCache | None = None) -> None:
        self._config = config
        verify: bool | str = config.ca_file if config.ca_file else True
        self._keys = keys or JwksCache(config.jwks_uri, verify=verify)
        self._role_of_scope = {config.scopes.get(str(role)) or default_scope(role): role
                               for role in Role}

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("the bearer token is not a valid JWT") from None
        if header.get("alg") not in JWT_ALGORITHMS:
            raise Unauthenticated("the JWT's signature algorithm is not accepted")
        kid = header.get("kid")
        key = self._keys.key(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=list(JWT_ALGORITHMS),
                audience=self._config.audience, issuer=self._config.issuer,
                leeway=JWT_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the JWT is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the JWT is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the JWT's signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the JWT is not acceptable ({type(exc).__name__})") from None
        name = claims.get("client_id") or claims.get("azp") or claims.get("sub")
        if not isinstance(name, str) or not name:
            raise Unauthenticated("the JWT names no client_id or sub")
        roles = {self._role_of_scope[s] for s in _scopes(claims) if s in self._role_of_scope}
        if not roles:
            raise Unauthenticated("the JWT carries none of the scopes this API grants")
        if Role.CONSUMER in roles and len(roles) > 1:
            raise Unauthenticated("the JWT carries the consumer scope and another role's; a "
                                  "consumer's token may carry only the consumer scope")
        return Caller(_caller_name(name), max(roles), "jwt")

    def close(self) -> None:
        self._keys.close()


def default_scope(role: Role) -> str:
    """The scope that grants ``role`` to a JWT unless ``[api.jwt]`` names another."""
    return f"rotator:{role}"


def _scopes(claims: Mapping[str, Any]) -> Sequence[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope.split()
    scp = claims.get("scp")
    if isinstance(scp, list):
        return [s for s in scp if isinstance(s, str)]
    return ()


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Caller`."""

    def __init__(self, tokens: Sequence[ApiToken] = (), *, jwt: JwtVerifier | None = None
                 ) -> None:
        self._tokens = tuple(tokens)
        #: Each token's digest and its caller, made once rather than per call.
        self._callers = tuple((t.sha256, Caller(t.name, Role.named(t.role), "token"))
                              for t in self._tokens)
        self._jwt = jwt

    @classmethod
    def from_config(cls, config: ApiConfig) -> Authenticator:
        return cls(config.tokens, jwt=JwtVerifier(config.jwt) if config.jwt else None)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller presenting ``authorization``; raises :class:`Unauthenticated`."""
        if not authorization:
            raise Unauthenticated("no bearer token")
        match = _BEARER.match(authorization)
        if match is None:
            raise Unauthenticated("the Authorization header is not a bearer token")
        token = match.group(1)
        digest = hashlib.sha256(token.encode()).digest()
        found: Caller | None = None
        for sha256, caller in self._callers:  # every one, so the time taken says nothing
            if hmac.compare_digest(sha256, digest):
                found = caller
        if found is not None:
            return found
        if self._jwt is not None and _looks_like_jwt(token):
            return self._jwt.verify(token)
        raise Unauthenticated("unknown bearer token")

    def may_block(self, authorization: str | None) -> bool:
        """Whether checking ``authorization`` may wait on the network (a JWT whose issuer's
        keys may need fetching); a configured token is checked in memory."""
        if self._jwt is None or not authorization:
            return False
        match = _BEARER.match(authorization)
        return match is not None and _looks_like_jwt(match.group(1))

    def close(self) -> None:
        if self._jwt is not None:
            self._jwt.close()
