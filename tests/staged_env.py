"""A client of a single-secret IdP whose value rotator chooses (Hydra, Glewlwyd), stored in
OpenBao and an env file, and the cases every such IdP must pass through the engine.

The IdP's test module writes its ``[idps.*]`` table, builds a :class:`StagedScenario` in a
``scenario`` fixture, and runs :class:`StagedRotationCases` and :class:`StagedCrashCases` by
subclassing them.

What every real-server scenario shares lives here too, for rotation_env, rfc7592_env and the
Entra/Cognito rotations: :func:`base_config`, :func:`seed_files` (secret files 0600 and the
``creds.env`` a client starts from) and :class:`StoredClient` (its configuration, OpenBao,
the CLI run in this process or killed in a child, the journal's latest rotation).
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import hvac
import pytest
from servers import OpenBao

from providers.stores.env import parse_env
from rotator.cli import run
from rotator.config import load_config
from rotator.interfaces import Rotation, State
from rotator.journal import Journal

TESTS = Path(__file__).parent


def base_config(bao: OpenBao) -> str:
    """The tables every real-server test configuration shares: state directory, audit log
    (``audit.key`` beside it), OpenBao as ``bao`` (token in ``bao.token``) and the env file
    ``creds.env`` as ``envfile``."""
    return f"""
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
"""


def write_secret_files(root: Path, files: Mapping[str, str]) -> None:
    """Write each of ``files`` (name to value) 0600 in ``root``, made if missing."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (root / name).write_text(value)
        (root / name).chmod(0o600)


def seed_files(root: Path, files: Mapping[str, str], client_id: str, secret: str) -> None:
    """:func:`write_secret_files`, and ``creds.env`` holding ``SVC_CLIENT_ID`` and
    ``SVC_CLIENT_SECRET``."""
    creds = f"SVC_CLIENT_ID={client_id}\nSVC_CLIENT_SECRET={secret}\n"
    write_secret_files(root, {**files, "creds.env": creds})


def run_in_process(config: Path, args: tuple[str, ...]) -> tuple[int, str, str]:
    """``rotator ARGS -c CONFIG`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = run([*args, "-c", str(config)], out, err)
    return code, out.getvalue(), err.getvalue()


def crash_runner(config: Path, argv: tuple[str, ...],
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``crash_runner.py ARGV -c CONFIG`` in a child process (tests/crash_runner.py), with
    this environment less any ``VAULT_``/``BAO_`` variable, plus ``env``."""
    command = [sys.executable, str(TESTS / "crash_runner.py"), *argv, "-c", str(config)]
    child = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=child | dict(env or {}), check=False)


class StoredClient:
    """A client named ``svc`` configured in ``root/rotator.toml`` with its secret in OpenBao:
    the CLI, the stores and the journal as tests see them, every secret value seen kept in
    ``seen`` and every output in ``outputs``."""

    root: Path
    bao: OpenBao
    seen: set[str]
    outputs: list[str]

    @property
    def config(self) -> Path:
        return self.root / "rotator.toml"

    def vault(self) -> hvac.Client:
        return hvac.Client(url=self.bao.url, token=self.bao.root_token)

    def store_in_vault(self, path: str, client_id: str, secret: str) -> None:
        self.vault().secrets.kv.v2.create_or_update_secret(
            path=path, secret={"client_id": client_id, "client_secret": secret},
            mount_point="secret")

    def read_secret(self, path: str) -> str | None:
        """The ``client_secret`` OpenBao holds at ``path`` (None when there is none)."""
        try:
            data = self.vault().secrets.kv.v2.read_secret_version(
                path=path, mount_point="secret",
                raise_on_deleted_version=False)["data"]["data"]
        except hvac.exceptions.InvalidPath:
            return None
        value = data.get("client_secret") if data else None
        if value:
            self.seen.add(str(value))
        return str(value) if value else None

    def env_secret(self) -> str:
        value = parse_env((self.root / "creds.env").read_text())["SVC_CLIENT_SECRET"]
        self.seen.add(value)
        return value

    def cli(self, *args: str) -> tuple[int, str]:
        """``rotator ARGS -c CONFIG`` in this process: the exit code and all it printed."""
        code, out, err = run_in_process(self.config, args)
        self.outputs += [out, err]
        return code, out + err

    def crashing(self, mode: str, target: str, *args: str) -> int:
        """The CLI in a child killed by crash_runner's MODE at TARGET; its exit code."""
        proc = crash_runner(self.config, (mode, target, *args))
        self.outputs += [proc.stdout, proc.stderr]
        return proc.returncode

    def latest(self) -> tuple[Rotation, list[State]]:
        """The client's latest rotation in the journal and the states it went through."""
        journal = Journal(load_config(self.config).state_dir)
        try:
            latest = journal.latest("svc")
            assert latest is not None
            return latest, [step.state for step in journal.steps(latest.id)]
        finally:
            journal.close()


class SingleSecretServer(Protocol):
    """The test server of an IdP: it creates a client and says whether a secret gets a token."""

    def create_client(self, secret: str) -> str: ...

    def token_status(self, client_id: str, secret: str) -> int: ...


@dataclass
class StagedScenario(StoredClient):
    idp: SingleSecretServer
    bao: OpenBao
    root: Path
    client_id: str
    old: str
    vault_prefix: str
    seen: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, idp: SingleSecretServer, bao: OpenBao, root: Path, *, vault_prefix: str,
               idp_name: str, idp_table: str, client_extra: str = "",
               secret_files: Mapping[str, str] | None = None) -> StagedScenario:
        """``idp_table`` is the body of ``[idps.<idp_name>]``; ``client_extra`` adds lines to
        ``[clients.svc]``; ``secret_files`` are written 0600 next to the configuration."""
        old = secrets.token_urlsafe(24)
        client_id = idp.create_client(old)
        files = {"audit.key": secrets.token_urlsafe(32), "bao.token": bao.root_token,
                 **(secret_files or {})}
        s = cls(idp, bao, root, client_id, old, vault_prefix, {old, *files.values()})
        seed_files(root, files, client_id, old)
        s.store_in_vault(s.vault_path, client_id, old)
        (root / "rotator.toml").write_text(base_config(bao) + f"""
[idps.{idp_name}]
{idp_table}
[clients.svc]
idp = "{idp_name}"
client_id = "{client_id}"
{client_extra}verify_attempts = 3
stores = [{{store = "bao", path = "{s.vault_path}"}}, {{store = "envfile", prefix = "SVC"}}]
""")
        return s

    @property
    def vault_path(self) -> str:
        return f"{self.vault_prefix}/{self.root.name}"

    def vault_value(self, suffix: str = "") -> str | None:
        return self.read_secret(self.vault_path + suffix)

    def works(self, secret: str | None) -> bool:
        return bool(secret) and self.idp.token_status(self.client_id, str(secret)) == 200

    def states(self) -> list[State]:
        return self.latest()[1]

    def leaks(self) -> list[str]:
        texts = [*self.outputs, (self.root / "audit.jsonl").read_text()]
        return [t for t in texts for secret in self.seen if secret in t]


class StagedRotationCases:
    """Subclassed by an IdP's rotation tests: the rotation stages first and ends with every
    store holding the one secret the IdP accepts."""

    def test_rotate_takes_the_staged_path(self, scenario: StagedScenario) -> None:
        s = scenario
        code, output = s.cli("rotate", "svc")
        assert code == 0, output
        new = s.vault_value()
        assert new and new != s.old
        assert s.env_secret() == new
        assert s.works(new) and not s.works(s.old)
        assert s.vault_value(".pending") is None
        assert s.states()[:4] == [State.STARTED, State.STAGED, State.CREATED, State.PROMOTED]
        assert s.states()[-1] is State.COMPLETED
        code, output = s.cli("verify", "svc")
        assert code == 0, output
        assert s.leaks() == []


class StagedCrashCases:
    """Subclassed by an IdP's crash tests: a run killed at any step is finished by the next
    one, and a stored secret works."""

    @pytest.mark.parametrize("state", ["staged", "created", "promoted", "completed"])
    def test_killed_before_recording(self, scenario: StagedScenario, state: str) -> None:
        s = scenario
        assert s.crashing("advance", state, "rotate", "svc") == -9
        # Whatever the IdP accepts now is stored: as CURRENT, or as PENDING before promotion.
        held = [v for v in (s.vault_value(), s.vault_value(".pending")) if v]
        assert any(s.works(v) for v in held)
        code, output = s.cli("rotate", "svc")
        assert code == 0, output
        current = s.vault_value()
        assert s.works(current) and s.env_secret() == current
        assert s.states()[-1] is State.COMPLETED
        assert s.leaks() == []
