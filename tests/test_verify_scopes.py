"""rotator verify reports whether the required scopes were seen granted or only assumed."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from test_engine import CAPS, make_rig

from rotator.config import ClientConfig


def _answering(access_token: str) -> Any:
    def http(client: ClientConfig) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(
            200, json={"access_token": access_token, "token_type": "Bearer",
                       "expires_in": 300})))
    return http


def _jwt(claims: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{payload}.{secrets.token_urlsafe(32)}"


class TestVerifyScopes:
    """Without scope in the response, verify checks a JWT's claim or says the scopes are assumed."""

    def test_opaque_token_says_scopes_are_assumed(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            clients = rig.engine.config.clients
            clients["app"] = replace(clients["app"], scopes=("payments:read",))
            rig.engine.http_factory = _answering(secrets.token_hex(16))
            outcome = rig.engine.verify("app")
        assert outcome.ok
        assert "assumed granted" in outcome.message
        assert [d["scopes_assumed"] for d in outcome.details.values()] == [True]

    def test_jwt_lacking_the_scope_fails(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            clients = rig.engine.config.clients
            clients["app"] = replace(clients["app"], scopes=("payments:read",))
            rig.engine.http_factory = _answering(_jwt({"scope": "profile"}))
            outcome = rig.engine.verify("app")
        assert not outcome.ok
        assert "payments:read" in outcome.message

    def test_scope_in_the_response_is_not_assumed(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            outcome = rig.engine.verify("app")
        assert outcome.ok and "assumed" not in outcome.message
        assert [d["scopes_assumed"] for d in outcome.details.values()] == [False]
