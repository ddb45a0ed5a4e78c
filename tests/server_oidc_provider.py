"""node ``oidc-provider`` 9 for the RFC 7592 tests: a certified OpenID provider with
client_credentials, RFC 7591 registration and RFC 7592 registration management (the
registration access token rotates on every update; the secret never does).

The npm package is installed once per version under ``<cache>/oidc-provider-<version>/``
(``scripts/setup.sh --tests`` does it, holding a file lock as the Hydra build does); the
server itself is ``tests/oidc_provider_server.mjs``, in memory, on 127.0.0.1 and a free port.

    python tests/server_oidc_provider.py install    # prints the package's entry file
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import httpx
from servers import ServerError, _cache_dir, _clean_env, _file_lock, _LocalServer

OIDC_PROVIDER_VERSION = "9.13.3"
_SERVER_JS = Path(__file__).parent / "oidc_provider_server.mjs"


def oidc_provider_module(version: str = OIDC_PROVIDER_VERSION,
                         cache_dir: Path | None = None) -> Path:
    """The installed package's entry file, installing it with npm if it is not cached."""
    root = (cache_dir or _cache_dir()) / f"oidc-provider-{version}"
    entry = root / "node_modules" / "oidc-provider" / "lib" / "index.js"
    if entry.exists():
        return entry
    root.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(root.parent / f"oidc-provider-{version}.lock"):
        if entry.exists():
            return entry
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise ServerError("oidc-provider is not cached and node/npm are not installed")
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
                               f"oidc-provider@{version}"], cwd=root, capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 or not entry.exists():
            raise ServerError(f"npm install oidc-provider@{version} failed:\n"
                              f"{done.stderr[-2000:]}")
    return entry


class OidcProvider(_LocalServer):
    """``oidc_provider_server.mjs``: issuer ``url``, registration at ``/reg``, token ``/token``."""

    name = "oidc-provider"

    def __init__(self, *, port: int | None = None, startup_timeout: float = 60.0) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self._cookie_key = secrets.token_urlsafe(32)

    def _secret_values(self) -> Sequence[str]:
        return (self._cookie_key,)

    def start(self) -> Self:
        env = _clean_env("NODE_", "OIDC_", "PORT", "COOKIE_KEY")
        env.update({"PORT": str(self.port), "COOKIE_KEY": self._cookie_key,
                    "OIDC_PROVIDER_MODULE": str(oidc_provider_module())})
        self._spawn(["node", str(_SERVER_JS)], env=env, cwd=self._workdir)
        self._wait_until_ok("/.well-known/openid-configuration")
        return self

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/token"

    def register(self) -> dict[str, Any]:
        """Register a client_credentials client; the server's answer (secret, RAT, URI)."""
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            answer = http.post(f"{self.url}/reg", json={
                "grant_types": ["client_credentials"], "response_types": [],
                "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic"})
        if answer.status_code != 201:
            raise ServerError(f"registration answered {answer.status_code}")
        body: dict[str, Any] = answer.json()
        return body

    def token_status(self, client_id: str, secret: str) -> int:
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            return http.post(self.token_endpoint, data={"grant_type": "client_credentials"},
                             auth=(client_id, secret)).status_code


if __name__ == "__main__":  # pragma: no cover - scripts/setup.sh --tests
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python tests/server_oidc_provider.py install")
    print(oidc_provider_module())
