"""A rotation scenario on real servers: one fresh Keycloak client, OpenBao and an env file.

``Scenario`` writes a real configuration (audit key, admin secret file, env file), seeds the
stores with the client's present secret, runs the real ``rotator`` CLI (in-process or as a
subprocess), and answers the questions tests ask: what does each store hold, what does
Keycloak hold, does a secret obtain a token. Every secret it sees is remembered so that tests
can scan every output for leaks.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
from servers import ROTATION_ATTRIBUTES, Keycloak, OpenBao

from providers.stores.env import parse_env
from rotator.cli import run

TESTS = Path(__file__).parent


@dataclass
class KeycloakRealm:
    keycloak: Keycloak
    realm: str
    admin_client_id: str
    admin_secret: str


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class Scenario:
    kc: KeycloakRealm
    bao: OpenBao
    root: Path
    client_id: str
    overlap: bool
    grace: str = "0s"
    seen_secrets: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, kc: KeycloakRealm, bao: OpenBao, root: Path, *, overlap: bool,
               grace: str = "0s", scopes: Sequence[str] = (), extra_client: str = "",
               idp_extra: str = "") -> Scenario:
        client_id = f"svc-{secrets.token_hex(4)}"
        _, secret = kc.keycloak.create_client(
            kc.realm, client_id, scopes=scopes,
            attributes=dict(ROTATION_ATTRIBUTES) if overlap else None)
        s = cls(kc, bao, root, client_id, overlap, grace)
        s.seen_secrets |= {secret, kc.admin_secret, bao.root_token}
        root.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        s.seen_secrets.add(key)
        for name, value in (("audit.key", key), ("admin.secret", kc.admin_secret),
                            ("bao.token", bao.root_token)):
            path = root / name
            path.write_text(value)
            path.chmod(0o600)
        (root / "creds.env").write_text(f"SVC_CLIENT_ID={client_id}\nSVC_CLIENT_SECRET={secret}\n")
        (root / "creds.env").chmod(0o600)
        s.vault().secrets.kv.v2.create_or_update_secret(
            path=s.vault_path, secret={"client_id": client_id, "client_secret": secret},
            mount_point="secret")
        scope_line = f"scopes = {list(scopes)!r}\n" if scopes else ""
        (root / "rotator.toml").write_text(f"""
[rotator]
state_dir = "state"

[audit]
file = "audit.jsonl"
key_file = "audit.key"

[stores.bao]
type = "vault"
url = "{bao.url}"
token_file = "bao.token"
timeout = "5s"

[stores.envfile]
type = "env"
file = "creds.env"
read_environ = false

[idps.kc]
type = "keycloak"
url = "{kc.keycloak.url}"
realm = "{kc.realm}"
admin_client_id = "{kc.admin_client_id}"
admin_client_secret_file = "admin.secret"
timeout = "10s"
{idp_extra}

[clients.svc]
idp = "kc"
client_id = "{client_id}"
grace_period = "{grace}"
verify_attempts = 3
{scope_line}{extra_client}
stores = [{{store = "bao", path = "{s.vault_path}"}}, {{store = "envfile", prefix = "SVC"}}]
""")
        return s

    # -- paths and clients -----------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.root / "rotator.toml"

    @property
    def vault_path(self) -> str:
        return f"apps/{self.client_id}"

    def vault(self) -> hvac.Client:
        return hvac.Client(url=self.bao.url, token=self.bao.root_token)

    # -- running the CLI -------------------------------------------------------------------

    def cli(self, *args: str) -> CliResult:
        """Run ``rotator ARGS -c CONFIG`` in this process."""
        out, err = io.StringIO(), io.StringIO()
        code = run([*args, "-c", str(self.config)], out, err)
        result = CliResult(code, out.getvalue(), err.getvalue())
        self.outputs += [result.out, result.err]
        self.remember()
        return result

    def subprocess(self, *args: str, crash: Sequence[str] = ()) -> CliResult:
        """Run the CLI in a child process; ``crash`` = (mode, target) kills it there."""
        argv = [sys.executable, str(TESTS / "crash_runner.py"), *(crash or ("none", "-")),
                *args, "-c", str(self.config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env,
                              check=False)
        self.outputs += [proc.stdout, proc.stderr]
        self.remember()
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    # -- what the stores and Keycloak hold -------------------------------------------------

    def vault_data(self, path: str | None = None) -> dict[str, Any] | None:
        try:
            data = self.vault().secrets.kv.v2.read_secret_version(
                path=path or self.vault_path, mount_point="secret",
                raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return None
        return dict(data["data"]["data"])

    def vault_current(self) -> str:
        data = self.vault_data()
        assert data is not None
        return str(data["client_secret"])

    def vault_pending(self) -> str | None:
        data = self.vault_data(self.vault_path + ".pending")
        return None if data is None else str(data["client_secret"])

    def env_values(self) -> dict[str, str]:
        return parse_env((self.root / "creds.env").read_text())

    def kc_current(self) -> str:
        kc = self.kc.keycloak
        uuid = kc.client_uuid(self.kc.realm, self.client_id)
        value: str = kc.admin.get(f"{self.kc.realm}/clients/{uuid}/client-secret").json()["value"]
        self.seen_secrets.add(value)
        return value

    def kc_rotated(self) -> str | None:
        kc = self.kc.keycloak
        uuid = kc.client_uuid(self.kc.realm, self.client_id)
        response = kc.admin.get(f"{self.kc.realm}/clients/{uuid}/client-secret/rotated")
        if response.status_code == 404:
            return None
        value: str = response.json()["value"]
        self.seen_secrets.add(value)
        return value

    def works(self, secret: str | None) -> bool:
        """Whether ``secret`` obtains a token from Keycloak for this client."""
        if not secret:
            return False
        response = self.kc.keycloak.token(self.kc.realm, self.client_id, secret)
        return response.status_code == 200

    def remember(self) -> None:
        """Add every secret value the stores hold now to ``seen_secrets``."""
        for path in (self.vault_path, self.vault_path + ".pending"):
            try:
                data = self.vault_data(path)
            except hvac.exceptions.VaultDown:
                continue  # a test sealed it
            if data and data.get("client_secret"):
                self.seen_secrets.add(str(data["client_secret"]))
        for key, value in self.env_values().items():
            if "SECRET" in key:
                self.seen_secrets.add(value)

    def leaks(self) -> list[str]:
        """Every output and audit line that contains a secret value seen in this scenario."""
        texts = list(self.outputs)
        audit = self.root / "audit.jsonl"
        if audit.exists():
            texts += audit.read_text().splitlines()
        secrets_seen = [s for s in self.seen_secrets if len(s) >= 8]
        return [t[:120] for t in texts for s in secrets_seen if s in t]
