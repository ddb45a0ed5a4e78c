"""Rotation scenarios against the SaaS fakes (tests/fakes/): Okta or Auth0, two env files.

``SaasScenario.create(kind, fake, root, clients=N)`` makes N fresh clients at the fake,
writes a real configuration (audit key, admin credential file, two env-file stores per
client), runs the real ``rotator`` CLI in this process or as a subprocess that can be killed
at a chosen step (tests/crash_runner.py), and answers what each store holds and whether a
secret obtains a token from the fake's token endpoint (real HTTP). Every secret it sees is
remembered so that tests can scan every output for leaks.
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

import httpx
from rotation_env import CliResult

from providers.stores.env import parse_env
from rotator.cli import run

TESTS = Path(__file__).parent
API_AUDIENCE = "https://api.example.com/"


@dataclass
class SaasScenario:
    kind: str  # "okta" or "auth0"
    fake: Any
    root: Path
    client_ids: list[str]
    seen: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, kind: str, fake: Any, root: Path, *, clients: int = 1,
               idp_extra: str = "", client_extra: str = "", verify_attempts: int = 3,
               new_client: Any = None) -> SaasScenario:
        root.mkdir(parents=True, exist_ok=True)
        make = new_client or (fake.create_app if kind == "okta" else fake.create_client)
        pairs = [make() for _ in range(clients)]
        s = cls(kind, fake, root, [cid for cid, _ in pairs])
        key = secrets.token_urlsafe(32)
        if kind == "okta":
            admin = fake.api_token(super_admin=True)
            idp = f"""
[idps.saas]
type = "okta"
url = "{fake.url}"
api_token_file = "admin.secret"
timeout = "10s"
{idp_extra}
"""
            client_line = 'scopes = ["api"]'
        else:
            admin_id, admin = fake.admin_client()
            idp = f"""
[idps.saas]
type = "auth0"
url = "{fake.url}"
admin_client_id = "{admin_id}"
admin_client_secret_file = "admin.secret"
timeout = "10s"
{idp_extra}
"""
            client_line = f'audience = "{API_AUDIENCE}"'
        s.seen |= {key, admin} | {secret for _, secret in pairs}
        for name, value in (("audit.key", key), ("admin.secret", admin)):
            (root / name).write_text(value)
            (root / name).chmod(0o600)
        tables = []
        for i, (cid, secret) in enumerate(pairs):
            for file in ("a.env", "b.env"):
                path = root / file
                old = path.read_text() if path.exists() else ""
                path.write_text(old + f"C{i}_CLIENT_ID={cid}\nC{i}_CLIENT_SECRET={secret}\n")
                path.chmod(0o600)
            tables.append(f"""
[clients.c{i}]
idp = "saas"
client_id = "{cid}"
grace_period = "0s"
verify_attempts = {verify_attempts}
{client_line}
{client_extra}
stores = [{{store = "enva", prefix = "C{i}"}}, {{store = "envb", prefix = "C{i}"}}]
""")
        (root / "rotator.toml").write_text(f"""
[rotator]
state_dir = "state"

[audit]
file = "audit.jsonl"
key_file = "audit.key"

[stores.enva]
type = "env"
file = "a.env"
read_environ = false

[stores.envb]
type = "env"
file = "b.env"
read_environ = false
{idp}{"".join(tables)}""")
        return s

    @property
    def config(self) -> Path:
        return self.root / "rotator.toml"

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
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ), check=False)
        self.outputs += [proc.stdout, proc.stderr]
        self.remember()
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def env(self, file: str) -> dict[str, str]:
        return parse_env((self.root / file).read_text())

    def stored(self, i: int = 0, file: str = "a.env") -> str:
        return self.env(file)[f"C{i}_CLIENT_SECRET"]

    def pending(self, i: int = 0, file: str = "a.env") -> str | None:
        return self.env(file).get(f"C{i}_CLIENT_SECRET_PENDING")

    def works(self, secret: str | None, i: int = 0) -> bool:
        """Whether ``secret`` obtains a token for client ``i`` at the fake, over HTTP."""
        if not secret:
            return False
        cid = self.client_ids[i]
        if self.kind == "okta":
            response = httpx.post(f"{self.fake.url}/oauth2/default/v1/token",
                                  auth=(cid, secret),
                                  data={"grant_type": "client_credentials", "scope": "api"})
        else:
            response = httpx.post(f"{self.fake.url}/oauth/token", data={
                "grant_type": "client_credentials", "client_id": cid, "client_secret": secret,
                "audience": API_AUDIENCE})
        return response.status_code == 200

    def remember(self) -> None:
        for file in ("a.env", "b.env"):
            for key, value in self.env(file).items():
                if "SECRET" in key:
                    self.seen.add(value)

    def leaks(self) -> list[str]:
        """Every output and audit line that contains a secret value seen in this scenario."""
        texts = list(self.outputs)
        audit = self.root / "audit.jsonl"
        if audit.exists():
            texts += audit.read_text().splitlines()
        return [t[:120] for t in texts for s in self.seen if len(s) >= 8 and s in t]
