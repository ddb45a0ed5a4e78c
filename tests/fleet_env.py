"""Several Keycloak clients rotated together: one configuration, OpenBao and one env file.

``Fleet`` is :class:`rotation_env.Scenario` for ``rotate --all``: clients ``c0`` .. ``cN-1``,
each a fresh Keycloak client (with Keycloak's secret-rotation policy) whose secret lives in
OpenBao at ``apps/<client id>`` and in the shared env file under prefix ``C<i>``. A client
named in ``missing`` exists in the stores but not in Keycloak, so its rotation fails.
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

import hvac
from rotation_env import TESTS, CliResult, KeycloakRealm, base_config, keycloak_table
from servers import ROTATION_ATTRIBUTES, OpenBao

from providers.stores.env import parse_env
from rotator.cli import run


@dataclass
class Fleet:
    kc: KeycloakRealm
    bao: OpenBao
    root: Path
    client_ids: list[str]
    seen_secrets: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, kc: KeycloakRealm, bao: OpenBao, root: Path, count: int, *,
               idp_concurrency: int = 4, missing: Sequence[int] = ()) -> Fleet:
        fleet = cls(kc, bao, root, [f"fleet-{secrets.token_hex(4)}" for _ in range(count)])
        root.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fleet.seen_secrets |= {key, kc.admin_secret, bao.root_token}
        for name, value in (("audit.key", key), ("admin.secret", kc.admin_secret),
                            ("bao.token", bao.root_token)):
            (root / name).write_text(value)
            (root / name).chmod(0o600)
        env_lines, client_tables = [], []
        vault = hvac.Client(url=bao.url, token=bao.root_token)
        for i, client_id in enumerate(fleet.client_ids):
            if i in missing:
                secret = secrets.token_urlsafe(24)
            else:
                _, secret = kc.keycloak.create_client(kc.realm, client_id,
                                                      attributes=dict(ROTATION_ATTRIBUTES))
            fleet.seen_secrets.add(secret)
            vault.secrets.kv.v2.create_or_update_secret(
                path=f"apps/{client_id}", mount_point="secret",
                secret={"client_id": client_id, "client_secret": secret})
            env_lines += [f"C{i}_CLIENT_ID={client_id}", f"C{i}_CLIENT_SECRET={secret}"]
            client_tables.append(f"""
[clients.c{i}]
idp = "kc"
client_id = "{client_id}"
grace_period = "0s"
verify_attempts = 3
stores = [{{store = "bao", path = "apps/{client_id}"}}, {{store = "envfile", prefix = "C{i}"}}]
""")
        (root / "creds.env").write_text("\n".join(env_lines) + "\n")
        (root / "creds.env").chmod(0o600)
        (root / "rotator.toml").write_text(
            base_config(bao) + keycloak_table(kc)
            + f"\n[daemon]\nidp_concurrency = {idp_concurrency}\n" + "".join(client_tables))
        return fleet

    @property
    def config(self) -> Path:
        return self.root / "rotator.toml"

    @property
    def names(self) -> list[str]:
        return [f"c{i}" for i in range(len(self.client_ids))]

    def cli(self, *args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        code = run([*args, "-c", str(self.config)], out, err)
        result = CliResult(code, out.getvalue(), err.getvalue())
        self.outputs += [result.out, result.err]
        return result

    def subprocess(self, *args: str, crash: Sequence[str] = ()) -> CliResult:
        """Run the CLI in a child process; ``crash`` = (mode, target) kills it there."""
        argv = [sys.executable, str(TESTS / "crash_runner.py"), *(crash or ("none", "-")),
                *args, "-c", str(self.config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                              check=False)
        self.outputs += [proc.stdout, proc.stderr]
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    # -- what the stores and Keycloak hold -------------------------------------------------

    def _vault(self, path: str) -> str | None:
        vault = hvac.Client(url=self.bao.url, token=self.bao.root_token)
        try:
            data = vault.secrets.kv.v2.read_secret_version(
                path=path, mount_point="secret", raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return None
        value = str(data["data"]["data"]["client_secret"])
        self.seen_secrets.add(value)
        return value

    def stored(self, i: int) -> str | None:
        return self._vault(f"apps/{self.client_ids[i]}")

    def pending(self, i: int) -> str | None:
        return self._vault(f"apps/{self.client_ids[i]}.pending")

    def env(self, i: int) -> str | None:
        values = parse_env((self.root / "creds.env").read_text())
        self.seen_secrets |= {v for k, v in values.items() if "SECRET" in k}
        return values.get(f"C{i}_CLIENT_SECRET")

    def kc_current(self, i: int) -> str:
        kc = self.kc.keycloak
        uuid = kc.client_uuid(self.kc.realm, self.client_ids[i])
        value: str = kc.admin.get(f"{self.kc.realm}/clients/{uuid}/client-secret").json()["value"]
        self.seen_secrets.add(value)
        return value

    def works(self, i: int, secret: str | None) -> bool:
        if not secret:
            return False
        return self.kc.keycloak.token(self.kc.realm, self.client_ids[i],
                                      secret).status_code == 200

    def whole(self, i: int) -> list[str]:
        """What is wrong with client ``i``: its stores disagree, differ from Keycloak, a
        pending copy is left, or the stored secret obtains no token (empty: nothing)."""
        stored, problems = self.stored(i), []
        if self.env(i) != stored:
            problems.append(f"c{i}: stores disagree")
        if self.kc_current(i) != stored:
            problems.append(f"c{i}: Keycloak holds a secret no store has")
        if self.pending(i) is not None:
            problems.append(f"c{i}: a pending copy is left")
        if not self.works(i, stored):
            problems.append(f"c{i}: the stored secret obtains no token")
        return problems

    def leaks(self) -> list[str]:
        texts = list(self.outputs)
        audit = self.root / "audit.jsonl"
        if audit.exists():
            texts += audit.read_text().splitlines()
        seen = [s for s in self.seen_secrets if len(s) >= 8]
        return [t[:120] for t in texts for s in seen if s in t]
