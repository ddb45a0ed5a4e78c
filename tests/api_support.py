"""Helpers for the admin API tests: a local JWKS endpoint and JWTs signed by its keys."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://issuer.test/realms/ops"
AUDIENCE = "rotator-api"


class SigningKey:
    """An RSA key pair with a ``kid``: signs JWTs, publishes its public half as a JWK."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def sign(self, *, scope: str = "rotator:read", issuer: str = ISSUER,
             audience: str = AUDIENCE, expires_in: float = 300.0, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": issuer, "aud": audience, "iat": now,
                                   "exp": now + int(expires_in), "scope": scope,
                                   "client_id": "ops-bot", "sub": "service-account-ops-bot"}
        payload.update(claims)
        return jwt.encode(payload, self.private, algorithm="RS256",
                          headers={"kid": self.kid})


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 serving ``keys``; counts the requests it answered."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": [k.jwk() for k in outer.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}/certs"

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()
