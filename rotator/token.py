"""Requesting a token with the client-credentials grant (RFC 6749 §4.4).

One implementation, used by the rotation engine to verify a secret and by the client
library to obtain tokens. :class:`TokenRequest` says what to ask for; :func:`request_token`
and :func:`request_token_async` send it with an ``httpx`` client the caller owns, and
:func:`parse_token_response` turns the answer into a :class:`Token` or a precise error:

- ``invalid_client`` (or a 401 without a body, or a 403 with an empty body, as Glewlwyd
  answers a wrong secret) → :class:`~rotator.errors.InvalidClient`
- ``invalid_scope`` or a granted scope narrower than required → ``InvalidScope``. When the
  response omits ``scope`` and the access token is a JWT, its ``scope``/``scp`` claim says
  what was granted (read, not verified: only the resource server checks the signature);
  otherwise the requested scopes are assumed granted, as RFC 6749 §5.1 allows, and the
  :class:`Token` says so (``scopes_assumed``)
- ``unauthorized_client`` → ``UnauthorizedClient`` (with HTTP 401, as Keycloak answers a wrong
  secret, → ``InvalidClient``)
- 5xx, 429, timeouts, refused connections → ``TokenEndpointUnavailable`` (retryable,
  with ``Retry-After`` when the server sent one)
- anything else that is not a bearer token → ``BadTokenResponse``
"""

from __future__ import annotations

import base64
import json
import math
import time
import weakref
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from rotator.errors import (
    BadTokenResponse,
    InvalidClient,
    InvalidScope,
    TokenEndpointUnavailable,
    UnauthorizedClient,
    VerificationError,
)
from rotator.interfaces import Credentials
from rotator.secrets import Secret, redact, register_credentials

#: Secrets whose Basic-header pair is registered with the redactor, with their client id.
_BASIC_REGISTERED: weakref.WeakKeyDictionary[Secret, str] = weakref.WeakKeyDictionary()

#: Bytes of a token answer that are parsed; a longer 200 is refused. Real ones are a few KiB
#: (a JWT with many claims); the bounded transport (:mod:`rotator._bounded`) stops reading
#: at the same size, a caller's own httpx client may not.
MAX_TOKEN_ANSWER = 1 << 20
#: Integers from here are checked the long way (a float cannot hold every such integer).
_HUGE = 1 << 53
_BEARER = "Bearer"  # the usual spelling, compared first

_ERROR_CLASSES: dict[str, type[VerificationError]] = {
    "invalid_client": InvalidClient,
    "invalid_scope": InvalidScope,
    "unauthorized_client": UnauthorizedClient,
}


@dataclass(frozen=True)
class TokenRequest:
    """What to ask the token endpoint for."""

    token_endpoint: str
    auth_method: str = "client_secret_basic"  # or "client_secret_post"
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    resource: str | None = None


@dataclass(frozen=True)
class Token:
    """An access token and what the server said about it."""

    access_token: Secret
    token_type: str
    expires_in: float | None
    #: Monotonic time when the response arrived; expiry is measured from here.
    obtained_at: float
    scopes: frozenset[str] = field(default_factory=frozenset)
    #: True when nothing said which scopes were granted (no ``scope`` in the response, no
    #: ``scope``/``scp`` claim in a JWT access token): ``scopes`` are the requested ones,
    #: assumed granted as RFC 6749 §5.1 allows.
    scopes_assumed: bool = False

    def expires_at(self) -> float | None:
        """Monotonic time of expiry, or None when the server did not say."""
        return None if self.expires_in is None else self.obtained_at + self.expires_in


def _form_encode(value: str) -> str:
    # RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
    return quote(value, safe="")


def build_request(
    req: TokenRequest, creds: Credentials
) -> tuple[dict[str, str], dict[str, str]]:
    """Return (headers, form data) for a client-credentials request."""
    data = {"grant_type": "client_credentials"}
    if req.scopes:
        data["scope"] = " ".join(req.scopes)
    if req.audience:
        data["audience"] = req.audience
    if req.resource:
        data["resource"] = req.resource
    headers = {"Accept": "application/json"}
    secret = creds.client_secret.reveal()
    if req.auth_method == "client_secret_post":
        data["client_id"] = creds.client_id
        data["client_secret"] = secret
    else:
        # Redact the Basic value too, should the endpoint echo the header back (once per pair:
        # the client library builds this header on every fetch).
        if _BASIC_REGISTERED.get(creds.client_secret) != creds.client_id:
            register_credentials(creds.client_id, creds.client_secret)
            _BASIC_REGISTERED[creds.client_secret] = creds.client_id
        pair = f"{_form_encode(creds.client_id)}:{_form_encode(secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return headers, data


_FORM = "application/x-www-form-urlencoded"


def encode_request(req: TokenRequest, creds: Credentials) -> tuple[httpx.Headers, bytes]:
    """:func:`build_request` as it goes on the wire: the headers with the form's content type,
    and the form encoded as httpx encodes ``data=``. Sent with ``content=``, a request the
    client library repeats is not encoded again on every fetch (nor its headers parsed)."""
    headers, data = build_request(req, creds)
    headers["Content-Type"] = _FORM
    return httpx.Headers(headers), urlencode(data).encode()


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def jwt_scopes(access_token: str) -> frozenset[str] | None:
    """The ``scope`` (or ``scp``) claim of a JWT access token, or None if there is none.

    The signature is not checked: the claim only tells what the server says it granted.
    An opaque token, a JWE or a payload that is not a JSON object gives None.
    """
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; absurd nesting
        return None
    if not isinstance(claims, dict):
        return None
    for name in ("scope", "scp"):
        claim = claims.get(name)
        if isinstance(claim, str):
            return frozenset(claim.split())
        if isinstance(claim, list) and all(isinstance(x, str) for x in claim):
            return frozenset(claim)
    return None


def parse_token_response(
    req: TokenRequest, response: httpx.Response, *, now: float | None = None
) -> Token:
    """Turn a token-endpoint response into a :class:`Token`, or raise the matching error.

    The answer is hostile input: at most :data:`MAX_TOKEN_ANSWER` bytes of it are parsed,
    every field is type-checked before use, and no error message quotes it unredacted.
    """
    obtained = time.monotonic() if now is None else now
    status = response.status_code
    content = response.content
    body: Any = None
    if len(content) <= MAX_TOKEN_ANSWER:
        try:
            body = _json(content)
        except ValueError:
            body = None
    if type(body) is not dict:  # json gives exactly dict; the checks below rely on it
        body = {}
    if status == 200:
        if len(content) > MAX_TOKEN_ANSWER:
            raise BadTokenResponse(
                f"token endpoint {req.token_endpoint} answered HTTP 200 with {len(content)} "
                f"bytes, more than the {MAX_TOKEN_ANSWER} a token answer may have",
                status=status)
        return _issued(req, body, obtained)
    raise _refusal(req, response, body, status)


def _json(content: bytes) -> Any:
    """``response.json()``: UTF-8 decoded first (what RFC 8259 asks for, and faster than
    json's own detection), a UTF-8 BOM dropped; other encodings are left to json."""
    try:
        text = content.decode()
    except UnicodeDecodeError:
        return json.loads(content)  # UTF-16 or UTF-32, which json recognises
    return json.loads(text[1:] if text.startswith("\ufeff") else text)


def _issued(req: TokenRequest, body: dict[str, Any], obtained: float) -> Token:
    """The token of a 200 answer's JSON object, checked field by field (one pass, a type check
    first: the common answer, a string token, "Bearer" and an integer lifetime, takes no
    other branch)."""
    access = body.get("access_token")
    if type(access) is not str or not access:
        raise BadTokenResponse(
            f"token endpoint {req.token_endpoint} answered 200 without an access_token",
            status=200)
    token_type = body.get("token_type")
    if token_type != _BEARER and (type(token_type) is not str
                                  or token_type.lower() != "bearer"):
        shown = (repr(redact(token_type)[:40]) if isinstance(token_type, str)
                 else "<missing>" if token_type is None else "<not a string>")
        raise BadTokenResponse(
            f"token endpoint {req.token_endpoint} issued a token of type {shown}, not Bearer",
            status=200)
    raw_expires = body.get("expires_in")
    expires_in: float | None
    if type(raw_expires) is int and 0 < raw_expires < _HUGE:
        expires_in = float(raw_expires)
    else:
        expires_in = None if raw_expires is None else _expires_in(req, raw_expires)
    raw_scope = body.get("scope")
    assumed = False
    if type(raw_scope) is str:
        granted = frozenset(raw_scope.split())
    else:
        # RFC 6749 §5.1 lets a server omit scope only when it granted the requested one, but
        # some drop an unknown scope silently and omit it: believe a JWT's claim first.
        claimed = jwt_scopes(access) if access.count(".") == 2 else None
        assumed = claimed is None and bool(req.scopes)
        granted = frozenset(req.scopes) if claimed is None else claimed
    if req.scopes and not granted.issuperset(req.scopes):
        missing = sorted(set(req.scopes) - granted)
        raise InvalidScope(
            f"token endpoint {req.token_endpoint} issued a token without the required "
            f"scope(s) {' '.join(missing)}", error="invalid_scope", status=200,
        )
    return _new_token(Secret(access), expires_in, obtained, granted, assumed)


_make = object.__new__


def _new_token(access: Secret, expires_in: float | None, obtained: float,
               scopes: frozenset[str], assumed: bool) -> Token:
    """``Token(access, "Bearer", ...)`` at half the cost, for the fetch path: a frozen
    dataclass's ``__init__`` sets each of its six fields through ``object.__setattr__``
    (1 µs); filling the instance's ``__dict__`` at once is what that ends in."""
    token: Token = _make(Token)
    token.__dict__.update(access_token=access, token_type=_BEARER, expires_in=expires_in,
                          obtained_at=obtained, scopes=scopes, scopes_assumed=assumed)
    return token


def _expires_in(req: TokenRequest, raw: object) -> float:
    """``expires_in`` other than a positive integer: a positive finite number or numeric
    string (RFC 6749 §5.1 says a number; some servers send a string), never a bool."""
    where = req.token_endpoint
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise BadTokenResponse(f"token endpoint {where} sent a non-numeric expires_in",
                               status=200)
    try:
        expires_in = float(raw)
    except ValueError:
        raise BadTokenResponse(f"token endpoint {where} sent a non-numeric expires_in",
                               status=200) from None
    except OverflowError:  # an integer of hundreds of digits
        raise BadTokenResponse(f"token endpoint {where} sent a non-finite expires_in",
                               status=200) from None
    if not math.isfinite(expires_in):
        raise BadTokenResponse(f"token endpoint {where} sent a non-finite expires_in",
                               status=200)
    if expires_in <= 0:
        raise BadTokenResponse(f"token endpoint {where} issued an already expired token",
                               status=200)
    return expires_in


def _refusal(req: TokenRequest, response: httpx.Response, body: dict[str, Any],
             status: int) -> VerificationError:
    """The error for an answer other than 200."""
    where = req.token_endpoint
    # Remote text may echo the request back: redact it before it reaches a message.
    raw_error = body.get("error")
    error = redact(raw_error)[:100] if isinstance(raw_error, str) else None
    if status >= 500 or status == 429:
        return TokenEndpointUnavailable(
            f"token endpoint {where} answered HTTP {status}", status=status,
            error=error, retry_after=_retry_after(response),
        )
    desc = body.get("error_description")
    detail = f": {redact(str(desc))[:200]}" if isinstance(desc, str) and desc else ""
    if error == "unauthorized_client" and status == 401:
        # Keycloak answers a wrong secret with 401 unauthorized_client where RFC 6749
        # says invalid_client; a 401 is a failed client authentication either way.
        error_class: type[VerificationError] = InvalidClient
    else:
        error_class = _ERROR_CLASSES.get(error or "", BadTokenResponse)
    if error in _ERROR_CLASSES:
        return error_class(
            f"token endpoint {where} refused the credentials: {error}{detail}",
            error=error, status=status,
        )
    if status == 401 or (status == 403 and not response.content.strip()):
        # A 403 with nothing in it is Glewlwyd's answer to a wrong secret; a 403 that
        # says why (access_denied, a scope) is a policy refusal and stays as it is.
        return InvalidClient(
            f"token endpoint {where} refused the credentials (HTTP {status}){detail}",
            error=error, status=status,
        )
    return BadTokenResponse(
        f"token endpoint {where} answered HTTP {status}"
        + (f" ({error}{detail})" if error else detail),
        error=error, status=status,
    )


def _transport_error(req: TokenRequest, exc: httpx.HTTPError) -> TokenEndpointUnavailable:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
    return TokenEndpointUnavailable(
        f"token endpoint {req.token_endpoint} {kind}: {redact(str(exc)) or type(exc).__name__}"
    )


def request_token(client: httpx.Client, req: TokenRequest, creds: Credentials) -> Token:
    """Request a token; raises a :class:`~rotator.errors.VerificationError` subclass."""
    headers, body = encode_request(req, creds)
    try:
        response = client.post(req.token_endpoint, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise _transport_error(req, exc) from None
    return parse_token_response(req, response)


async def request_token_async(
    client: httpx.AsyncClient, req: TokenRequest, creds: Credentials
) -> Token:
    """The asyncio twin of :func:`request_token`."""
    headers, body = encode_request(req, creds)
    try:
        response = await client.post(req.token_endpoint, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise _transport_error(req, exc) from None
    return parse_token_response(req, response)
