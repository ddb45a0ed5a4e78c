"""A rotation scenario on real servers: one fresh Keycloak client, OpenBao and an env file.

The first (primary) store is OpenBao by default; ``primary="aws"`` puts the client's secret
in AWS Secrets Manager on a moto server instead (the env file stays the second store).

``Scenario`` writes a real configuration (audit key, admin secret file, env file), seeds the
stores with the client's present secret, runs the real ``rotator`` CLI (in-process or as a
subprocess), and answers the questions tests ask: what does each store hold, what does
Keycloak hold, does a secret obtain a token. Every secret it sees is remembered so that tests
can scan every output for leaks.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import hvac
from servers import ROTATION_ATTRIBUTES, Keycloak, MotoServer, OpenBao
from staged_env import TESTS, base_config, crash_runner, run_in_process, seed_files

from providers.stores.env import parse_env

__all__ = ["TESTS", "CliResult", "KeycloakRealm", "Scenario", "base_config", "keycloak_table"]


def keycloak_table(kc: KeycloakRealm) -> str:
    """``[idps.kc]``: rotator's admin client of ``kc`` (its secret in ``admin.secret``)."""
    return f"""
[idps.kc]
type = "keycloak"
url = "{kc.keycloak.url}"
realm = "{kc.realm}"
admin_client_id = "{kc.admin_client_id}"
admin_client_secret_file = "admin.secret"
timeout = "10s"
"""


@dataclass
class KeycloakRealm:
    keycloak: Keycloak
    realm: str
    admin_client_id: str
    admin_secret: str = field(repr=False)


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
    primary: str = "vault"
    moto: MotoServer | None = None
    seen_secrets: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, kc: KeycloakRealm, bao: OpenBao, root: Path, *, overlap: bool,
               grace: str = "0s", scopes: Sequence[str] = (), extra_client: str = "",
               idp_extra: str = "", primary: str = "vault",
               moto: MotoServer | None = None) -> Scenario:
        client_id = f"svc-{secrets.token_hex(4)}"
        _, secret = kc.keycloak.create_client(
            kc.realm, client_id, scopes=scopes,
            attributes=dict(ROTATION_ATTRIBUTES) if overlap else None)
        s = cls(kc, bao, root, client_id, overlap, grace, primary, moto)
        s.seen_secrets |= {secret, kc.admin_secret, bao.root_token}
        if moto is not None:
            s.seen_secrets.add(moto.secret_access_key)
        key = secrets.token_urlsafe(32)
        s.seen_secrets.add(key)
        seed_files(root, {"audit.key": key, "admin.secret": kc.admin_secret,
                          "bao.token": bao.root_token}, client_id, secret)
        value = {"client_id": client_id, "client_secret": secret}
        if primary == "aws":
            s.aws().create_secret(Name=s.aws_secret_id, SecretString=json.dumps(value))
            primary_line = f'{{store = "aws", secret_id = "{s.aws_secret_id}"}}'
        else:
            s.vault().secrets.kv.v2.create_or_update_secret(
                path=s.vault_path, secret=value, mount_point="secret")
            primary_line = f'{{store = "bao", path = "{s.vault_path}"}}'
        aws_store = "" if moto is None else f"""
[stores.aws]
type = "aws_secrets_manager"
region = "{moto.region}"
endpoint_url = "{moto.url}"
timeout = "5s"
"""
        scope_line = f"scopes = {list(scopes)!r}\n" if scopes else ""
        (root / "rotator.toml").write_text(base_config(bao) + aws_store
                                           + keycloak_table(kc) + f"""{idp_extra}

[clients.svc]
idp = "kc"
client_id = "{client_id}"
grace_period = "{grace}"
verify_attempts = 3
{scope_line}{extra_client}
stores = [{primary_line}, {{store = "envfile", prefix = "SVC"}}]
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

    @property
    def aws_secret_id(self) -> str:
        return f"apps/{self.client_id}"

    def aws(self) -> Any:
        """A Secrets Manager client for the moto server (made-up keys, passed explicitly)."""
        assert self.moto is not None, "this scenario has no moto server"
        return boto3.client("secretsmanager", region_name=self.moto.region,
                            endpoint_url=self.moto.url,
                            aws_access_key_id=self.moto.access_key_id,
                            aws_secret_access_key=self.moto.secret_access_key)

    def _aws_env(self) -> dict[str, str]:
        return {} if self.moto is None else self.moto.aws_env()

    @contextlib.contextmanager
    def _environ(self) -> Iterator[None]:
        """The AWS variables of the moto server in os.environ, for an in-process CLI run."""
        saved = {k: os.environ.get(k) for k in self._aws_env()}
        os.environ.update(self._aws_env())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    # -- running the CLI -------------------------------------------------------------------

    def cli(self, *args: str) -> CliResult:
        """Run ``rotator ARGS -c CONFIG`` in this process."""
        with self._environ():
            result = CliResult(*run_in_process(self.config, args))
        self.outputs += [result.out, result.err]
        self.remember()
        return result

    def subprocess(self, *args: str, crash: Sequence[str] = ()) -> CliResult:
        """Run the CLI in a child process; ``crash`` = (mode, target) kills it there."""
        proc = crash_runner(self.config, (*(crash or ("none", "-")), *args), self._aws_env())
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

    def aws_value(self, stage: str = "AWSCURRENT") -> str | None:
        """The client secret in the version labelled ``stage``, read with the stage named."""
        aws = self.aws()
        try:
            got = aws.get_secret_value(SecretId=self.aws_secret_id, VersionStage=stage)
        except aws.exceptions.ResourceNotFoundException:
            return None
        if stage == "AWSPENDING" and "AWSCURRENT" in got["VersionStages"]:
            return None  # a finished rotation, not a pending one
        secret = json.loads(got["SecretString"]).get("client_secret")
        return None if secret is None else str(secret)

    def primary_current(self) -> str:
        """The secret consumers of the primary store read now."""
        if self.primary == "aws":
            value = self.aws_value()
            assert value is not None
            return value
        return self.vault_current()

    def primary_pending(self) -> str | None:
        return self.aws_value("AWSPENDING") if self.primary == "aws" else self.vault_pending()

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
        if self.primary == "aws":
            for stage in ("AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"):
                value = self.aws_value(stage)
                if value:
                    self.seen_secrets.add(value)
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
