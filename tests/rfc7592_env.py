"""Real RFC 7592 servers behind one face, and a client of one rotated by the rotator CLI.

Servers: Ory Hydra v2.3.0 (RAT rotates on every update, no new secret), node oidc-provider
9 (the same, and it returns the secret on GET) and Glewlwyd 2.7 (a new secret on every
update, the RAT kept, the secret returned on GET). A scenario registers a fresh client,
stores its secret in OpenBao and an env file and its registration access token (RAT) in
OpenBao at ``rfc7592-rat/<name>``, and writes a configuration with an ``rfc7592`` IdP.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from server_glewlwyd import GLEWLWYD_SCOPE, Glewlwyd
from server_oidc_provider import OidcProvider
from servers import Hydra, OpenBao, ServerError
from staged_env import StoredClient, base_config, seed_files

from rotator.config import load_config

#: Glewlwyd's OIDC plugin with open RFC 7591 registration and RFC 7592 management.
GLEWLWYD_REGISTRATION = {
    "register-client-allowed": True, "register-client-auth-scope": [],
    "register-client-credentials-scope": [GLEWLWYD_SCOPE],
    "register-client-management-allowed": True,
}


@dataclass
class DcrServer:
    """One real RFC 7592 server: how to register a client and ask for a token."""

    name: str
    token_endpoint: str
    register_url: str
    works: Callable[[str, str], bool]
    #: Whether an update issues a new secret (else the rotation fails: "does not rotate").
    issues_secret: bool
    #: Whether an update replaces the registration access token.
    rotates_rat: bool
    scopes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def register(self) -> dict[str, Any]:
        body = {"grant_types": ["client_credentials"], "client_name": "rotator-test",
                "token_endpoint_auth_method": "client_secret_basic", **self.extra}
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            answer = http.post(self.register_url, json=body)
        if answer.status_code not in (200, 201):
            raise ServerError(f"{self.name}: registration answered {answer.status_code}")
        registered: dict[str, Any] = answer.json()
        return registered


def hydra_dcr(hydra: Hydra) -> DcrServer:
    return DcrServer("hydra", hydra.token_endpoint, f"{hydra.url}/oauth2/register",
                     lambda cid, s: hydra.token_status(cid, s) == 200,
                     issues_secret=False, rotates_rat=True)


def oidc_provider_dcr(op: OidcProvider) -> DcrServer:
    return DcrServer("oidc-provider", op.token_endpoint, f"{op.url}/reg",
                     lambda cid, s: op.token_status(cid, s) == 200,
                     issues_secret=False, rotates_rat=True,
                     extra={"response_types": [], "redirect_uris": []})


def glewlwyd_dcr(glw: Glewlwyd) -> DcrServer:
    return DcrServer("glewlwyd", glw.token_endpoint, f"{glw.issuer}/register",
                     lambda cid, s: glw.token_status(cid, s) == 200,
                     issues_secret=True, rotates_rat=False, scopes=(GLEWLWYD_SCOPE,),
                     extra={"redirect_uris": ["https://client.invalid/cb"]})


@dataclass
class DcrScenario(StoredClient):
    server: DcrServer
    bao: OpenBao
    root: Path
    client_id: str
    old: str
    uri: str
    first_rat: str
    seen: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, server: DcrServer, bao: OpenBao, root: Path) -> DcrScenario:
        reg = server.register()
        client_id, old = str(reg["client_id"]), str(reg["client_secret"])
        rat, uri = str(reg["registration_access_token"]), str(reg["registration_client_uri"])
        s = cls(server, bao, root, client_id, old, uri, rat, {old, rat, bao.root_token})
        key = secrets.token_urlsafe(32)
        s.seen.add(key)
        seed_files(root, {"audit.key": key, "bao.token": bao.root_token}, client_id, old)
        s.store_in_vault(s.vault_path, client_id, old)
        s.store_in_vault(s.rat_path, client_id, rat)
        scopes = f"scopes = {list(server.scopes)!r}\n".replace("'", '"') if server.scopes else ""
        (root / "rotator.toml").write_text(base_config(bao) + f"""
[idps.dcr]
type = "rfc7592"
token_endpoint = "{server.token_endpoint}"
timeout = "10s"

[clients.svc]
idp = "dcr"
client_id = "{client_id}"
registration_client_uri = "{uri}"
registration_token_store = "bao"
registration_token_location = "{s.rat_path}"
verify_attempts = 3
{scopes}stores = [{{store = "bao", path = "{s.vault_path}"}}, {{store = "envfile", prefix = "SVC"}}]
""")
        return s

    @property
    def vault_path(self) -> str:
        return f"rfc7592/{self.root.name}"

    @property
    def rat_path(self) -> str:
        return f"rfc7592-rat/{self.root.name}"

    def stored(self) -> str | None:
        """The client secret OpenBao holds as CURRENT."""
        return self.read_secret(self.vault_path)

    def pending(self) -> str | None:
        return self.read_secret(self.vault_path + ".pending")

    def rat(self) -> str | None:
        """The registration access token OpenBao holds."""
        return self.read_secret(self.rat_path)

    def rat_status(self, rat: str) -> int:
        """The server's answer to a GET of the client's configuration with ``rat``."""
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            answer = http.get(self.uri, headers={"Authorization": f"Bearer {rat}"})
        if answer.status_code == 200:
            body = answer.json()
            for key in ("client_secret", "registration_access_token"):
                if body.get(key):
                    self.seen.add(str(body[key]))
        return answer.status_code

    def works(self, secret: str | None) -> bool:
        return bool(secret) and self.server.works(self.client_id, str(secret))

    def leaks(self) -> list[str]:
        """Secret values (client secrets, RATs) found in outputs, the audit log, the journal."""
        state_dir = load_config(self.config).state_dir
        texts = [*self.outputs, (self.root / "audit.jsonl").read_text()]
        texts += [p.read_bytes().decode("latin-1") for p in state_dir.rglob("*") if p.is_file()]
        return sorted({secret[:4] + "…" for t in texts for secret in self.seen if secret in t})
