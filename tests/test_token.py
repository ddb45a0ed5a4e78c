"""Tests for rotator.token: the client-credentials request and its response, over a fake server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.server
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, unquote_plus

import httpx
import pytest

from rotator.client import TokenClient
from rotator.client.asyncio import AsyncTokenClient
from rotator.errors import (
    BadTokenResponse,
    InvalidClient,
    InvalidScope,
    TokenEndpointUnavailable,
    UnauthorizedClient,
    VerificationError,
)
from rotator.interfaces import Credentials
from rotator.secrets import Secret
from rotator.token import (
    MAX_TOKEN_ANSWER,
    Token,
    TokenRequest,
    _new_token,
    request_token,
    request_token_async,
)

ENDPOINT = "https://idp.test/realms/r/protocol/openid-connect/token"
Handler = Callable[[httpx.Request], httpx.Response]


def _creds(secret: str | None = None, client_id: str = "svc-billing") -> Credentials:
    return Credentials(client_id, Secret(secret or secrets.token_urlsafe(32)))


def _ok(**extra: Any) -> Handler:
    body = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
            "expires_in": 300, **extra}
    return lambda request: httpx.Response(200, json=body)


def _send(handler: Handler, req: TokenRequest | None = None,
          creds: Credentials | None = None) -> Token:
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        return request_token(client, req or TokenRequest(ENDPOINT), creds or _creds())


def _send_async(handler: Handler, req: TokenRequest | None = None,
                creds: Credentials | None = None) -> Token:
    async def go() -> Token:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await request_token_async(client, req or TokenRequest(ENDPOINT),
                                             creds or _creds())
    return asyncio.run(go())


class _Capture:
    """A handler that records the request it got and answers with a valid token."""

    def __init__(self) -> None:
        self.request: httpx.Request | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.request = request
        return _ok()(request)

    @property
    def form(self) -> dict[str, list[str]]:
        assert self.request is not None
        return parse_qs(self.request.content.decode(), keep_blank_values=True)


def _client_sync(handler: Handler, req: TokenRequest | None = None,
                 creds: Credentials | None = None) -> Token:
    with TokenClient(req or TokenRequest(ENDPOINT), creds or _creds(),
                     http=httpx.Client(transport=httpx.MockTransport(handler))) as client:
        return client.token()


def _client_async(handler: Handler, req: TokenRequest | None = None,
                  creds: Credentials | None = None) -> Token:
    async def go() -> Token:
        client = AsyncTokenClient(req or TokenRequest(ENDPOINT), creds or _creds(),
                                  http=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        try:
            return await client.token()
        finally:
            await client.aclose()
    return asyncio.run(go())


SENDERS = [pytest.param(_send, id="sync"), pytest.param(_send_async, id="async")]
#: The request on the wire is the same from the client library, which encodes it once.
WIRE_SENDERS = [*SENDERS, pytest.param(_client_sync, id="client"),
                pytest.param(_client_async, id="async-client")]


@pytest.mark.parametrize("send", WIRE_SENDERS)
class TestClientSecretBasic:
    """client_secret_basic sends form-urlencoded id:secret in the Basic header, not the body."""

    def test_header_carries_form_encoded_credentials(self, send: Callable[..., Token]) -> None:
        secret = f"{secrets.token_urlsafe(12)}:%+ {secrets.token_urlsafe(12)}"
        client_id = f"svc:{secrets.token_hex(4)} +%"
        seen = _Capture()
        send(seen, creds=_creds(secret, client_id))
        assert seen.request is not None
        scheme, _, encoded = seen.request.headers["Authorization"].partition(" ")
        assert scheme == "Basic"
        pair = base64.b64decode(encoded).decode()
        # Exactly one raw ':' separates id and secret; both were form-encoded before it.
        assert pair.count(":") == 1
        raw_id, raw_secret = pair.split(":")
        assert " " not in raw_secret
        assert "+" not in raw_secret  # a literal '+' would decode as a space
        assert unquote_plus(raw_id) == client_id
        assert unquote_plus(raw_secret) == secret

    def test_body_has_no_credentials(self, send: Callable[..., Token]) -> None:
        seen = _Capture()
        send(seen)
        assert seen.form == {"grant_type": ["client_credentials"]}

    def test_is_the_default(self, send: Callable[..., Token]) -> None:
        seen = _Capture()
        send(seen, TokenRequest(ENDPOINT))
        assert seen.request is not None
        assert seen.request.headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize("send", WIRE_SENDERS)
class TestClientSecretPost:
    """client_secret_post sends id and secret as form fields and no Authorization header."""

    def test_credentials_in_body(self, send: Callable[..., Token]) -> None:
        secret = f"{secrets.token_urlsafe(12)}:%+ &={secrets.token_urlsafe(12)}"
        seen = _Capture()
        send(seen, TokenRequest(ENDPOINT, auth_method="client_secret_post"),
             _creds(secret, "svc-post"))
        assert seen.request is not None
        assert "Authorization" not in seen.request.headers
        assert seen.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert seen.form == {"grant_type": ["client_credentials"], "client_id": ["svc-post"],
                             "client_secret": [secret]}


@pytest.mark.parametrize("send", WIRE_SENDERS)
class TestRequestParameters:
    """Scopes are joined with spaces; audience and resource are sent only when set."""

    def test_scopes_joined_with_spaces(self, send: Callable[..., Token]) -> None:
        seen = _Capture()
        send(seen, TokenRequest(ENDPOINT, scopes=("read:a", "write:b", "openid")))
        assert seen.form["scope"] == ["read:a write:b openid"]

    def test_no_scope_no_audience_no_resource_by_default(self, send: Callable[..., Token]) -> None:
        seen = _Capture()
        send(seen)
        assert not {"scope", "audience", "resource"} & set(seen.form)

    def test_audience_and_resource_when_set(self, send: Callable[..., Token]) -> None:
        seen = _Capture()
        send(seen, TokenRequest(ENDPOINT, audience="https://api.test",
                                resource="https://res.test/x"))
        assert seen.form["audience"] == ["https://api.test"]
        assert seen.form["resource"] == ["https://res.test/x"]

    def test_posts_to_the_endpoint_asking_for_json(self, send: Callable[..., Token]) -> None:
        seen = _Capture()
        send(seen)
        assert seen.request is not None
        assert seen.request.method == "POST"
        assert str(seen.request.url) == ENDPOINT
        assert seen.request.headers["Accept"] == "application/json"


@pytest.mark.parametrize("send", SENDERS)
class TestSuccessfulResponse:
    """A 200 with a Bearer token (any case) becomes a Token with its expiry and granted scopes."""

    @pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
    def test_bearer_in_any_case(self, send: Callable[..., Token], token_type: str) -> None:
        access = secrets.token_urlsafe(24)
        before = time.monotonic()
        token = send(lambda r: httpx.Response(200, json={
            "access_token": access, "token_type": token_type, "expires_in": 300,
            "scope": "a b"}), TokenRequest(ENDPOINT, scopes=("a",)))
        assert isinstance(token.access_token, Secret)
        assert token.access_token.reveal() == access
        assert token.token_type == "Bearer"
        assert token.expires_in == 300.0
        assert token.scopes == frozenset({"a", "b"})
        assert before <= token.obtained_at <= time.monotonic()
        assert token.expires_at() == token.obtained_at + 300.0

    def test_omitted_scope_means_requested_scope_granted(
        self, send: Callable[..., Token]
    ) -> None:
        token = send(_ok(), TokenRequest(ENDPOINT, scopes=("a", "b")))
        assert token.scopes == frozenset({"a", "b"})

    def test_omitted_expires_in_means_unknown_expiry(self, send: Callable[..., Token]) -> None:
        token = send(lambda r: httpx.Response(200, json={
            "access_token": secrets.token_urlsafe(8), "token_type": "Bearer"}))
        assert token.expires_in is None
        assert token.expires_at() is None

    def test_access_token_is_hidden_in_repr(self, send: Callable[..., Token]) -> None:
        access = secrets.token_urlsafe(24)
        token = send(lambda r: httpx.Response(200, json={
            "access_token": access, "token_type": "Bearer"}))
        assert access not in repr(token)


def _error(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


@pytest.mark.parametrize("send", SENDERS)
class TestErrorResponses:
    """Each RFC 6749 error and HTTP failure maps to its own VerificationError subclass."""

    @pytest.mark.parametrize(
        ("status", "body", "expected", "code"),
        [
            pytest.param(400, {"error": "invalid_client"}, InvalidClient, "invalid_client",
                         id="invalid_client-400"),
            pytest.param(401, {"error": "invalid_client"}, InvalidClient, "invalid_client",
                         id="invalid_client-401"),
            pytest.param(401, None, InvalidClient, None, id="bare-401"),
            pytest.param(401, "Unauthorized", InvalidClient, None, id="401-text-body"),
            pytest.param(400, {"error": "invalid_scope"}, InvalidScope, "invalid_scope",
                         id="invalid_scope"),
            pytest.param(400, {"error": "unauthorized_client"}, UnauthorizedClient,
                         "unauthorized_client", id="unauthorized_client"),
            # Keycloak's answer to a wrong secret: a failed client authentication.
            pytest.param(401, {"error": "unauthorized_client",
                               "error_description": "Invalid client or Invalid client "
                                                    "credentials"}, InvalidClient,
                         "unauthorized_client", id="keycloak-401-unauthorized_client"),
            pytest.param(400, {"error": "invalid_request"}, BadTokenResponse,
                         "invalid_request", id="other-oauth-error"),
            # Glewlwyd's answer to a wrong secret: 403 with an empty body.
            pytest.param(403, None, InvalidClient, None, id="empty-403"),
            pytest.param(403, "  \n", InvalidClient, None, id="blank-403"),
            pytest.param(403, {"error": "access_denied"}, BadTokenResponse, "access_denied",
                         id="403-access_denied"),
            pytest.param(403, {"error_description": "scope not allowed"}, BadTokenResponse,
                         None, id="403-with-description"),
            pytest.param(403, "Forbidden", BadTokenResponse, None, id="403-text-body"),
        ],
    )
    def test_oauth_errors(self, send: Callable[..., Token], status: int, body: Any,
                          expected: type[VerificationError], code: str | None) -> None:
        with pytest.raises(VerificationError) as info:
            send(_error(status, body))
        assert type(info.value) is expected
        assert info.value.status == status
        assert info.value.error == code
        assert ENDPOINT in str(info.value)
        assert not info.value.retryable

    def test_error_description_is_included(self, send: Callable[..., Token]) -> None:
        with pytest.raises(InvalidClient, match="Invalid client or Invalid client credentials"):
            send(_error(401, {"error": "invalid_client",
                              "error_description": "Invalid client or Invalid client credentials"}))

    @pytest.mark.parametrize("status", [500, 502, 503, 429])
    def test_unavailable_is_retryable(self, send: Callable[..., Token], status: int) -> None:
        with pytest.raises(TokenEndpointUnavailable) as info:
            send(_error(status, "<html>busy</html>"))
        assert info.value.status == status
        assert info.value.retryable
        assert info.value.retry_after is None

    @pytest.mark.parametrize(("header", "expected"), [
        pytest.param("120", 120.0, id="seconds"),
        pytest.param("1.5", 1.5, id="fractional-seconds"),
        pytest.param("-5", 0.0, id="negative-clamped"),
        pytest.param("soon", None, id="garbage-ignored"),
    ])
    @pytest.mark.parametrize("status", [503, 429])
    def test_retry_after_seconds(self, send: Callable[..., Token], status: int, header: str,
                                 expected: float | None) -> None:
        with pytest.raises(TokenEndpointUnavailable) as info:
            send(_error(status, {"error": "temporarily_unavailable"},
                        headers={"Retry-After": header}))
        assert info.value.retry_after == expected
        assert info.value.error == "temporarily_unavailable"

    def test_retry_after_http_date(self, send: Callable[..., Token]) -> None:
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
        with pytest.raises(TokenEndpointUnavailable) as info:
            send(_error(503, None, headers={"Retry-After": when}))
        assert info.value.retry_after is not None
        # HTTP dates have one-second resolution.
        assert 115 <= info.value.retry_after <= 121

    def test_retry_after_date_in_the_past_is_zero(self, send: Callable[..., Token]) -> None:
        when = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
        with pytest.raises(TokenEndpointUnavailable) as info:
            send(_error(429, None, headers={"Retry-After": when}))
        assert info.value.retry_after == 0.0


@pytest.mark.parametrize("send", SENDERS)
class TestEmptyForbidden:
    """A 403 with an empty body (Glewlwyd's wrong secret) reads as refused credentials; a
    403 that says why does not."""

    def test_empty_403_is_refused_credentials(self, send: Callable[..., Token]) -> None:
        with pytest.raises(InvalidClient, match=r"refused the credentials \(HTTP 403\)$"):
            send(_error(403))

    def test_access_denied_403_keeps_its_reason(self, send: Callable[..., Token]) -> None:
        with pytest.raises(BadTokenResponse, match=r"answered HTTP 403 \(access_denied: "
                                                   r"scope billing not allowed\)"):
            send(_error(403, {"error": "access_denied",
                              "error_description": "scope billing not allowed"}))


@pytest.mark.parametrize("send", SENDERS)
class TestUnusableSuccess:
    """A 200 that is not a usable bearer token raises BadTokenResponse."""

    @pytest.mark.parametrize("body", [
        pytest.param("<html>login</html>", id="html"),
        pytest.param("", id="empty"),
        pytest.param(json.dumps(["access_token"]), id="json-list"),
        pytest.param(json.dumps({"token_type": "Bearer"}), id="no-access-token"),
        pytest.param(json.dumps({"access_token": "", "token_type": "Bearer"}),
                     id="empty-access-token"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": "mac"}), id="mac"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": "DPoP"}), id="dpop"),
        pytest.param(json.dumps({"access_token": "abc"}), id="no-token-type"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": "Bearer",
                                 "expires_in": "abc"}), id="expires_in-abc"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": "Bearer",
                                 "expires_in": 0}), id="expires_in-zero"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": "Bearer",
                                 "expires_in": -30}), id="expires_in-negative"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": "Bearer",
                                 "expires_in": [1]}), id="expires_in-list"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": "Bearer",
                                 "expires_in": True}), id="expires_in-bool"),
        pytest.param('{"access_token": "abc", "token_type": "Bearer", "expires_in": NaN}',
                     id="expires_in-nan"),
        pytest.param('{"access_token": "abc", "token_type": "Bearer", "expires_in": Infinity}',
                     id="expires_in-infinity"),
        # an integer no float holds: float() raised OverflowError, which escaped
        pytest.param('{"access_token": "abc", "token_type": "Bearer", "expires_in": 1'
                     + "0" * 400 + "}", id="expires_in-huge-int"),
        pytest.param(json.dumps({"access_token": "abc", "token_type": ["Bearer"]}),
                     id="token_type-list"),
        pytest.param(json.dumps({"access_token": ["abc"], "token_type": "Bearer"}),
                     id="access_token-list"),
    ])
    def test_bad_token_response(self, send: Callable[..., Token], body: str) -> None:
        with pytest.raises(BadTokenResponse) as info:
            send(_error(200, body))
        assert info.value.status == 200
        assert not info.value.retryable

    def test_mac_is_named_in_the_message(self, send: Callable[..., Token]) -> None:
        with pytest.raises(BadTokenResponse, match="'mac', not Bearer"):
            send(_error(200, {"access_token": "abc", "token_type": "mac"}))


@pytest.mark.parametrize("send", SENDERS)
class TestGrantedScope:
    """A granted scope narrower than the required one raises InvalidScope naming what is missing."""

    def test_narrower_grant(self, send: Callable[..., Token]) -> None:
        with pytest.raises(InvalidScope, match="write") as info:
            send(_ok(scope="read"), TokenRequest(ENDPOINT, scopes=("read", "write")))
        assert info.value.error == "invalid_scope"
        assert info.value.status == 200

    def test_empty_grant(self, send: Callable[..., Token]) -> None:
        with pytest.raises(InvalidScope):
            send(_ok(scope=""), TokenRequest(ENDPOINT, scopes=("read",)))

    def test_wider_grant_is_fine(self, send: Callable[..., Token]) -> None:
        token = send(_ok(scope="read write admin"), TokenRequest(ENDPOINT, scopes=("read",)))
        assert token.scopes == frozenset({"read", "write", "admin"})


def _raiser(exc_type: type[httpx.TransportError], message: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)
    return handler


@pytest.mark.parametrize("send", SENDERS)
class TestTransportFailures:
    """Timeouts and connection failures raise a retryable TokenEndpointUnavailable."""

    @pytest.mark.parametrize(("exc_type", "word"), [
        pytest.param(httpx.ConnectTimeout, "timed out", id="connect-timeout"),
        pytest.param(httpx.ReadTimeout, "timed out", id="read-timeout"),
        pytest.param(httpx.PoolTimeout, "timed out", id="pool-timeout"),
        pytest.param(httpx.ConnectError, "could not be reached", id="connect-error"),
        pytest.param(httpx.RemoteProtocolError, "could not be reached", id="protocol-error"),
    ])
    def test_translated(self, send: Callable[..., Token], exc_type: type[httpx.TransportError],
                        word: str) -> None:
        with pytest.raises(TokenEndpointUnavailable, match=word) as info:
            send(_raiser(exc_type, "boom"))
        assert info.value.retryable
        assert info.value.status is None
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__

    def test_empty_message_names_the_exception(self, send: Callable[..., Token]) -> None:
        with pytest.raises(TokenEndpointUnavailable, match="ConnectError"):
            send(_raiser(httpx.ConnectError, ""))


def _leaky_cases() -> list[Any]:
    """Responses that each echo the secret back; built per call around a placeholder."""
    return [
        pytest.param(401, {"error": "invalid_client", "error_description": "bad secret {S}"},
                     id="invalid_client-description"),
        pytest.param(400, {"error": "invalid_scope", "error_description": "{S} lacks scope"},
                     id="invalid_scope-description"),
        pytest.param(400, {"error": "unauthorized_client", "error_description": "{S}"},
                     id="unauthorized_client-description"),
        pytest.param(401, {"error_description": "client_secret={S}"}, id="bare-401-description"),
        pytest.param(400, {"error": "invalid_request", "error_description": "got {S}"},
                     id="other-error-description"),
        pytest.param(400, {"error": "{S}"}, id="secret-as-error-code"),
        pytest.param(403, {"error_description": "x" * 190 + "{S}"}, id="description-cut-at-200"),
        pytest.param(503, {"error": "{S}", "error_description": "{S}"}, id="503-echo"),
        pytest.param(429, {"error": "{S}", "error_description": "{S}"}, id="429-echo"),
        pytest.param(200, {"access_token": "abc", "token_type": "{S}"}, id="token-type-echo"),
    ]


def _fill(body: Any, secret: str) -> Any:
    return json.loads(json.dumps(body).replace("{S}", secret))


@pytest.mark.parametrize("send", SENDERS)
class TestSecretNeverInMessages:
    """No exception message carries the client secret, even when the server echoes it back."""

    @pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
    @pytest.mark.parametrize(("status", "body"), _leaky_cases())
    def test_echoed_secret_is_redacted(self, send: Callable[..., Token], status: int,
                                       body: Any, auth_method: str) -> None:
        creds = _creds(f"{secrets.token_urlsafe(24)}:%+ x")
        secret = creds.client_secret.reveal()
        with pytest.raises(VerificationError) as info:
            send(_error(status, _fill(body, secret)),
                 TokenRequest(ENDPOINT, auth_method=auth_method), creds)
        # A prefix too: truncating before redacting would leak the start of the secret.
        for text in (str(info.value), repr(info.value), *map(str, info.value.args)):
            assert secret[:12] not in text
        assert info.value.error is None or secret[:12] not in info.value.error

    @pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ReadTimeout])
    def test_transport_error_text_is_redacted(
        self, send: Callable[..., Token], exc_type: type[httpx.TransportError]
    ) -> None:
        creds = _creds()
        secret = creds.client_secret.reveal()
        with pytest.raises(TokenEndpointUnavailable) as info:
            send(_raiser(exc_type, f"failed sending client_secret={secret}"), creds=creds)
        assert secret not in str(info.value)


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT: header, payload, signature; only the payload matters."""
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'typ': 'at+jwt'})}.{part(claims)}.{secrets.token_urlsafe(32)}"


def _token_body(access: str, **extra: Any) -> Handler:
    body = {"access_token": access, "token_type": "Bearer", "expires_in": 300, **extra}
    return lambda request: httpx.Response(200, json=body)


@pytest.mark.parametrize("send", SENDERS)
class TestOmittedScope:
    """Without scope in the response a JWT's scope/scp claim decides, else scopes are assumed."""

    def test_jwt_without_the_scope_fails(self, send: Callable[..., Token]) -> None:
        # oidc-provider drops an unknown scope and omits scope from the response.
        access = _jwt({"sub": "svc", "scope": "read"})
        with pytest.raises(InvalidScope, match="write"):
            send(_token_body(access), TokenRequest(ENDPOINT, scopes=("read", "write")))

    def test_jwt_with_the_scope_passes(self, send: Callable[..., Token]) -> None:
        token = send(_token_body(_jwt({"scope": "read write"})),
                     TokenRequest(ENDPOINT, scopes=("read",)))
        assert token.scopes == frozenset({"read", "write"}) and not token.scopes_assumed

    @pytest.mark.parametrize("scp", [["read", "write"], "read write"])
    def test_scp_claim_as_list_or_string(self, send: Callable[..., Token], scp: Any) -> None:
        token = send(_token_body(_jwt({"scp": scp})), TokenRequest(ENDPOINT, scopes=("write",)))
        assert token.scopes == frozenset({"read", "write"}) and not token.scopes_assumed

    def test_jwt_without_scope_claim_is_assumed(self, send: Callable[..., Token]) -> None:
        token = send(_token_body(_jwt({"sub": "svc"})), TokenRequest(ENDPOINT, scopes=("a",)))
        assert token.scopes == frozenset({"a"}) and token.scopes_assumed

    @pytest.mark.parametrize("access", ["opaque-token", "a.b.c", "a.!!!.c", "x.W10.y",
                                        "a.b.c.d.e"])
    def test_opaque_token_is_assumed(self, send: Callable[..., Token], access: str) -> None:
        token = send(_token_body(access), TokenRequest(ENDPOINT, scopes=("a", "b")))
        assert token.scopes == frozenset({"a", "b"}) and token.scopes_assumed

    def test_scope_in_the_response_is_not_assumed(self, send: Callable[..., Token]) -> None:
        token = send(_ok(scope="a"), TokenRequest(ENDPOINT, scopes=("a",)))
        assert not token.scopes_assumed

    def test_nothing_requested_nothing_assumed(self, send: Callable[..., Token]) -> None:
        assert not send(_ok(), TokenRequest(ENDPOINT)).scopes_assumed

    def test_response_scope_wins_over_the_claim(self, send: Callable[..., Token]) -> None:
        token = send(_token_body(_jwt({"scope": "read"}), scope="read write"),
                     TokenRequest(ENDPOINT, scopes=("write",)))
        assert token.scopes == frozenset({"read", "write"})


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the request's headers and body inside the response."""

    status = 400

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        # The secret-bearing parts first: a 200's token_type is shown cut to 40 characters.
        fields = sorted(body.split("&"), key=lambda f: not f.startswith("client_secret="))
        auth = self.headers.get("Authorization") or ""
        echo = f"{auth.removeprefix('Basic ')} {'&'.join(fields)} {dict(self.headers.items())}"
        if self.status == 200:
            answer = {"access_token": "abc", "token_type": echo}
        else:
            answer = {"error": "invalid_request", "error_description": echo}
        data = json.dumps(answer).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(params=[400, 200], ids=["error-echo", "200-echo"])
def echo_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real HTTP token endpoint on 127.0.0.1 that echoes each request into its answer."""
    handler = type("Echo", (_EchoHandler,), {"status": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class TestEchoingEndpoint:
    """An endpoint echoing the request gets neither Basic value nor form secret into an error."""

    @pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
    def test_encoded_secret_is_redacted(self, echo_endpoint: str, auth_method: str) -> None:
        creds = _creds(f"{secrets.token_urlsafe(24)} +/%:&=é")
        secret = creds.client_secret.reveal()
        pair = f"{quote(creds.client_id, safe='')}:{quote(secret, safe='')}"
        basic = base64.b64encode(pair.encode()).decode()
        with httpx.Client() as client, pytest.raises(BadTokenResponse) as info:
            request_token(client, TokenRequest(echo_endpoint, auth_method=auth_method), creds)
        text = str(info.value)
        assert "**********" in text
        for form in (secret, basic, quote_plus(secret), quote(secret, safe="")):
            assert form[:12] not in text, form


@pytest.mark.parametrize("send", SENDERS)
class TestAnswerChecks:
    """A 200 is parsed only up to MAX_TOKEN_ANSWER bytes, and every lifetime a server may
    spell (integer, float, numeric string, a large integer) is read as seconds."""

    def test_oversized_answer_is_refused_unparsed(self, send: Callable[..., Token]) -> None:
        access = secrets.token_urlsafe(24)
        body = json.dumps({"access_token": access, "token_type": "Bearer",
                           "padding": "x" * MAX_TOKEN_ANSWER})
        with pytest.raises(BadTokenResponse, match="more than the 1048576") as info:
            send(lambda r: httpx.Response(200, content=body.encode()))
        assert access not in str(info.value)

    def test_answer_at_the_bound_is_parsed(self, send: Callable[..., Token]) -> None:
        head = '{"access_token": "abc", "token_type": "Bearer", "padding": "'
        body = head + "x" * (MAX_TOKEN_ANSWER - len(head) - 2) + '"}'
        assert len(body) == MAX_TOKEN_ANSWER
        assert send(lambda r: httpx.Response(200, content=body.encode())).expires_in is None

    @pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
    def test_json_in_any_encoding_json_reads(self, send: Callable[..., Token],
                                             encoding: str) -> None:
        body = json.dumps({"access_token": "äbc", "token_type": "Bearer", "expires_in": 60},
                          ensure_ascii=False)
        token = send(lambda r: httpx.Response(200, content=body.encode(encoding)))
        assert token.access_token.reveal() == "äbc"
        assert token.expires_in == 60.0

    def test_bytes_that_are_no_json_are_refused(self, send: Callable[..., Token]) -> None:
        with pytest.raises(BadTokenResponse, match="without an access_token"):
            send(lambda r: httpx.Response(200, content=b"\xff\xfe\x00garbage"))

    @pytest.mark.parametrize(("raw", "seconds"), [
        (300, 300.0), (2.5, 2.5), ("300", 300.0), (" 60 ", 60.0), (2**60, float(2**60)),
    ])
    def test_lifetime_spellings(self, send: Callable[..., Token], raw: Any,
                                seconds: float) -> None:
        token = send(lambda r: httpx.Response(200, json={
            "access_token": "abc", "token_type": "Bearer", "expires_in": raw}))
        assert token.expires_in == seconds
        assert type(token.expires_in) is float


class TestFastToken:
    """The fetch path's Token is the Token the dataclass builds: equal, frozen, same fields."""

    def test_same_as_the_constructor(self) -> None:
        access = Secret(secrets.token_urlsafe(16))
        fast = _new_token(access, 300.0, 12.5, frozenset({"a"}), True)
        assert fast == Token(access, "Bearer", 300.0, 12.5, frozenset({"a"}), True)
        assert vars(fast) == vars(Token(access, "Bearer", 300.0, 12.5, frozenset({"a"}), True))
        with pytest.raises(dataclasses.FrozenInstanceError):
            fast.expires_in = 1.0  # type: ignore[misc]
        assert fast.expires_at() == 312.5
