"""Rotations through the engine and the real CLI: Entra ID and Cognito fakes, real OpenBao.

Both IdPs are overlap-capable and generate the value, so these rotations take the engine's
CREATING path; the new secret is verified at the fake's token endpoint over HTTP before it
is promoted. Entra's passwords expire: the expiry is journalled and drives ``due``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from entra_cognito_cases import ACCESS_KEY, cognito_fake, entra_fake
from fakes.cognito import FakeCognito
from fakes.entra import ALL, OWNED_BY, FakeEntra
from servers import OpenBao
from staged_env import (
    StoredClient,
    base_config,
    run_in_process,
    seed_files,
    write_secret_files,
)

from providers.idps.entra import EntraIdp
from rotator.config import load_config
from rotator.daemon.records import client_expiry, due_clients, load_record
from rotator.errors import IdpAccessDenied
from rotator.interfaces import State
from rotator.journal import Journal
from rotator.secrets import Secret

pytestmark = pytest.mark.server


@pytest.fixture
def entra() -> Iterator[FakeEntra]:
    with entra_fake() as fake:
        yield fake


@pytest.fixture
def cognito() -> Iterator[FakeCognito]:
    with cognito_fake() as fake:
        yield fake


@dataclass
class SaasScenario(StoredClient):
    """One client at a fake SaaS IdP, its secret in OpenBao and an env file."""

    bao: OpenBao
    root: Path
    client_id: str
    old: str
    works_at_idp: Any
    seen: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, bao: OpenBao, root: Path, client_id: str, old: str, idp_table: str,
               client_extra: str, works: Any, secrets_files: dict[str, str]) -> SaasScenario:
        s = cls(bao, root, client_id, old, works, {old, bao.root_token})
        files = {"audit.key": secrets.token_urlsafe(32), "bao.token": bao.root_token,
                 **secrets_files}
        s.seen |= set(files.values())
        seed_files(root, files, client_id, old)
        s.store_in_vault(s.vault_path, client_id, old)
        (root / "rotator.toml").write_text(base_config(bao) + idp_table + f"""
[clients.svc]
client_id = "{client_id}"
verify_attempts = 3
stores = [{{store = "bao", path = "{s.vault_path}"}}, {{store = "envfile", prefix = "SVC"}}]
{client_extra}
""")
        return s

    @property
    def vault_path(self) -> str:
        return f"saas/{self.root.name}"

    def vault_value(self) -> str:
        value = self.read_secret(self.vault_path)
        assert value is not None
        return value

    def journal(self) -> Journal:
        return Journal(self.root / "state")

    def assert_no_leak(self) -> None:
        audit = (self.root / "audit.jsonl").read_text() if (self.root / "audit.jsonl").exists() \
            else ""
        for text in [*self.outputs, audit]:
            for value in self.seen:
                assert value not in text


def _entra_table(entra: FakeEntra, admin_app_id: str, settings: str) -> str:
    """``[idps.entra]`` at the fake, signing in as ``admin_app_id`` with ``entra.secret``;
    ``settings`` adds lines."""
    return f"""
[idps.entra]
type = "entra"
tenant = "{entra.tenant}"
admin_client_id = "{admin_app_id}"
admin_client_secret_file = "entra.secret"
authority_url = "{entra.url}"
graph_url = "{entra.url}"
{settings}"""


def _entra_scenario(entra: FakeEntra, bao: OpenBao, root: Path, *,
                    roles: set[str] | None = None, extra: str = "") -> SaasScenario:
    admin, admin_password = entra.create_app("rotator-admin", roles=roles or {OWNED_BY})
    app, password = entra.create_app("svc", owners={admin.app_id})
    table = _entra_table(entra, admin.app_id, 'secret_lifetime = "90d"\n'
                         'propagation_delay = "2s"\nmax_retry_after = "3s"\n')
    client = f"""idp = "entra"
scopes = ["api://{app.app_id}/.default"]
application_object_id = "{app.object_id}"
adopt_key_ids = ["{password.key_id}"]
rotate_before_expiry = "30d"
{extra}"""
    return SaasScenario.create(bao, root, app.app_id, password.secret, table, client,
                               entra.works, {"entra.secret": admin_password.secret})


class TestEntraRotation:
    """A rotation adds a password, verifies it, promotes it and retires the adopted one."""

    def test_rotate_then_retire(self, entra: FakeEntra, bao_server: OpenBao,
                                tmp_path: Path) -> None:
        s = _entra_scenario(entra, bao_server, tmp_path / "entra")
        code, text = s.cli("rotate", "svc")
        assert code == 0, text
        new = s.vault_value()
        assert new != s.old and entra.works(s.client_id, new)
        assert entra.works(s.client_id, s.old)  # grace period: both valid
        code, text = s.cli("retire", "svc", "--now")
        assert code == 0, text
        assert not entra.works(s.client_id, s.old) and entra.works(s.client_id, new)
        journal = s.journal()
        try:
            rotation = journal.latest("svc")
            assert rotation is not None and rotation.state is State.COMPLETED
            app = next(a for a in entra.apps.values() if a.app_id == s.client_id)
            assert rotation.secret_ref == app.passwords[-1].key_id
            expiry = client_expiry(journal, "svc")
            assert expiry is not None
            assert expiry.replace(microsecond=0) == app.passwords[-1].end
        finally:
            journal.close()
        s.assert_no_leak()

    def test_expiry_shows_in_status_and_drives_due(self, entra: FakeEntra,
                                                   bao_server: OpenBao, tmp_path: Path) -> None:
        s = _entra_scenario(entra, bao_server, tmp_path / "due")
        assert s.cli("rotate", "svc")[0] == 0
        assert s.cli("retire", "svc", "--now")[0] == 0
        _, text = s.cli("status", "svc", "--json")
        row = json.loads(text)["clients"][0]
        expires = datetime.fromisoformat(row["secret_expires_at"])
        # 90 days of life, rotate 30 days before the end: due 60 days from now, not before.
        config = load_config(s.config, stores_only=True)
        journal = s.journal()
        try:
            record = load_record(journal, config, config.clients["svc"])
            assert record.secret_expires_at == expires
            just_before = expires - timedelta(days=30, seconds=1)
            after = expires - timedelta(days=30) + timedelta(seconds=1)
            assert record.state(just_before).condition.value != "due"
            assert record.state(after).condition.value == "due"
            assert due_clients(config, journal, ["svc"], just_before, facts=lambda *_: None) == []
            assert due_clients(config, journal, ["svc"], after, facts=lambda *_: None) == ["svc"]
        finally:
            journal.close()
        assert abs((expires - datetime.now(UTC)) - timedelta(days=90)) < timedelta(hours=1)

    def test_missing_graph_role_names_it(self, entra: FakeEntra, bao_server: OpenBao,
                                         tmp_path: Path) -> None:
        s = _entra_scenario(entra, bao_server, tmp_path / "denied", roles={"User.Read.All"})
        code, text = s.cli("rotate", "svc")
        assert code != 0
        assert OWNED_BY in text and ALL in text and "Authorization_RequestDenied" in text
        assert s.vault_value() == s.old and entra.works(s.client_id, s.old)
        s.assert_no_leak()


class TestEntraPropagation:
    """A new password that works only after a delay is verified by retrying through it."""

    def test_verified_after_retries(self, bao_server: OpenBao, tmp_path: Path) -> None:
        with entra_fake(propagation_delay=1.2) as entra:
            s = _entra_scenario(entra, bao_server, tmp_path / "slow")
            code, text = s.cli("rotate", "svc")
            assert code == 0, text
            new = s.vault_value()
            assert new != s.old and entra.works(s.client_id, new)
            assert entra.token_refusals >= 1  # the first tries came too early
        s.assert_no_leak()


class TestEntraBurstThroughTheEngine:
    """Several clients rotated at once against a small Graph budget all succeed."""

    def test_rotate_all_with_a_small_budget(self, bao_server: OpenBao, tmp_path: Path) -> None:
        with entra_fake() as entra:
            admin, admin_password = entra.create_app("rotator-admin", roles={ALL})
            apps = [entra.create_app(f"svc{i}") for i in range(3)]
            root = tmp_path / "burst"
            env, clients = [], []
            for i, (app, password) in enumerate(apps):
                env.append(f"C{i}_CLIENT_ID={app.app_id}\nC{i}_CLIENT_SECRET={password.secret}\n")
                clients.append(f"""
[clients.c{i}]
idp = "entra"
client_id = "{app.app_id}"
scopes = ["api://{app.app_id}/.default"]
adopt_key_ids = ["{password.key_id}"]
grace_period = 0
stores = [{{store = "envfile", prefix = "C{i}"}}]
""")
            write_secret_files(root, {"audit.key": secrets.token_urlsafe(32),
                                      "bao.token": bao_server.root_token,
                                      "entra.secret": admin_password.secret,
                                      "creds.env": "".join(env)})
            # a loaded machine stretches the burst over more windows: throttle_retries = 20
            table = _entra_table(entra, admin.app_id, 'propagation_delay = "0s"\n'
                                 'max_retry_after = "3s"\nthrottle_retries = 20\n')
            (root / "rotator.toml").write_text(base_config(bao_server) + table
                                               + "".join(clients))
            entra.throttle(3, window=1.0)
            code, out, err = run_in_process(root / "rotator.toml",
                                            ("rotate", "--all", "--parallel", "3"))
            assert code == 0, out + err
            assert entra.throttled > 0
            for app, password in apps:
                assert not entra.works(app.app_id, password.secret)
                assert len(app.passwords) == 1 and entra.works(
                    app.app_id, app.passwords[0].secret)
            for text in (out, err, (root / "audit.jsonl").read_text()):
                for app, password in apps:
                    assert password.secret not in text and app.passwords[0].secret not in text


class TestEntraThrottling:
    """A burst of rotations against a small Graph budget finishes by honouring Retry-After."""

    def test_burst_finishes_without_a_failed_rotation(self, entra: FakeEntra) -> None:
        slept: list[float] = []
        now = [0.0]
        entra.clock = lambda: now[0]  # the fake's budget window runs on this clock
        admin, admin_password = entra.create_app("rotator-admin", roles={ALL})
        apps = [entra.create_app(f"svc{i}") for i in range(4)]

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds
        settings = {"tenant": entra.tenant, "admin_client_id": admin.app_id,
                    "admin_client_secret": Secret(admin_password.secret),
                    "authority_url": entra.url, "graph_url": entra.url,
                    "secret_lifetime": 86400.0, "propagation_delay": 0.0,
                    "throttle_retries": 5, "max_retry_after": 60.0, "tls_verify": True,
                    "ca_file": None, "timeout": 10.0}
        idp = EntraIdp("entra", settings, sleep=sleep)
        idp.start()
        entra.throttle(3, window=30)
        try:
            issued = []
            for app, password in apps:
                idp.configure_client(app.app_id, {"application_object_id": app.object_id,
                                                  "adopt_key_ids": [password.key_id]})
                issued.append(idp.create_secret(app.app_id, "r-burst", None))
                assert idp.retire_old_secrets(app.app_id, issued[-1]) == 1
        finally:
            idp.close()
        assert entra.throttled > 0 and len(slept) == entra.throttled
        assert all(s >= 1 for s in slept)  # the Retry-After the fake sent, not a guess
        for (app, password), new in zip(apps, issued, strict=True):
            assert entra.works(app.app_id, new.value.reveal())
            assert not entra.works(app.app_id, password.secret)

    def test_expired_admin_secret_is_named(self, entra: FakeEntra) -> None:
        admin, admin_password = entra.create_app("rotator-admin", roles={ALL})
        app, _ = entra.create_app("svc")
        entra.expire(admin_password.key_id)
        idp = EntraIdp("entra", {
            "tenant": entra.tenant, "admin_client_id": admin.app_id,
            "admin_client_secret": Secret(admin_password.secret), "authority_url": entra.url,
            "graph_url": entra.url, "secret_lifetime": 86400.0, "propagation_delay": 0.0,
            "throttle_retries": 0, "max_retry_after": 1.0, "tls_verify": True,
            "ca_file": None, "timeout": 10.0})
        idp.start()
        try:
            with pytest.raises(IdpAccessDenied, match="AADSTS7000222") as info:
                idp.capabilities(app.app_id)
            assert admin_password.secret not in str(info.value)
        finally:
            idp.close()


class TestCognitoRotation:
    """A Cognito rotation adds the second secret, verifies it, and deletes the old one."""

    def test_rotate_then_retire(self, cognito: FakeCognito, bao_server: OpenBao,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _aws_env(monkeypatch)
        pool = cognito.create_pool()
        client_id, old = cognito.create_client(pool)
        s = _cognito_scenario(cognito, bao_server, tmp_path / "cognito", pool, client_id, old)
        code, text = s.cli("rotate", "svc")
        assert code == 0, text
        new = s.vault_value()
        assert new != old and cognito.works(client_id, new) and cognito.works(client_id, old)
        code, text = s.cli("retire", "svc", "--now")
        assert code == 0, text
        assert not cognito.works(client_id, old) and cognito.works(client_id, new)
        assert len(cognito.pools[pool][client_id].secrets) == 1
        assert {"AddUserPoolClientSecret", "DeleteUserPoolClientSecret"} <= set(cognito.calls)
        s.assert_no_leak()


class TestCognitoCrash:
    """Killed after Cognito added the secret, a resumed rotation deletes that orphan (created
    after the rotation began) and finishes with the client at one working secret."""

    def test_resume_after_kill_before_created(self, cognito: FakeCognito, bao_server: OpenBao,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        _aws_env(monkeypatch)
        pool = cognito.create_pool()
        client_id, old = cognito.create_client(pool)
        cognito.pools[pool][client_id].secrets[0].created -= 3600  # made an hour ago
        s = _cognito_scenario(cognito, bao_server, tmp_path / "crash", pool, client_id, old)
        assert s.crashing("advance", "created", "rotate", "svc") == -9
        assert len(cognito.pools[pool][client_id].secrets) == 2  # the orphan
        code, text = s.cli("rotate", "svc")
        assert code == 0, text
        assert s.cli("retire", "svc", "--now")[0] == 0
        new = s.vault_value()
        secrets_left = cognito.pools[pool][client_id].secrets
        assert len(secrets_left) == 1 and secrets_left[0].value == new
        assert not cognito.works(client_id, old)
        s.assert_no_leak()


def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_urlsafe(30))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def _cognito_scenario(cognito: FakeCognito, bao: OpenBao, root: Path, pool: str,
                      client_id: str, old: str) -> SaasScenario:
    table = f"""
[idps.cognito]
type = "cognito"
region = "{cognito.region}"
user_pool_id = "{pool}"
domain_url = "{cognito.url}"
endpoint_url = "{cognito.url}"
propagation_delay = "1s"
"""
    return SaasScenario.create(bao, root, client_id, old, table, 'idp = "cognito"\n',
                               cognito.works, {})


class TestCognitoThrottling:
    """A burst against a small Cognito budget finishes: botocore's standard retries ride out
    TooManyRequestsException."""

    def test_burst_finishes_without_a_failed_rotation(self, cognito: FakeCognito) -> None:
        from entra_cognito_cases import cognito_session, cognito_settings

        from providers.idps.cognito import CognitoIdp

        pool = cognito.create_pool()
        clients = [cognito.create_client(pool) for _ in range(3)]
        idp = CognitoIdp("cognito", {**cognito_settings(cognito, pool), "max_attempts": 8},
                         session=cognito_session())
        idp.start()
        cognito.throttle(3, window=1.0)
        try:
            issued = []
            for client_id, _ in clients:
                idp.capabilities(client_id)
                issued.append(idp.create_secret(client_id, "r-burst", None))
                assert idp.retire_old_secrets(client_id, issued[-1]) == 1
        finally:
            idp.close()
        assert cognito.throttled > 0
        for (client_id, old), new in zip(clients, issued, strict=True):
            assert cognito.works(client_id, new.value.reveal())
            assert not cognito.works(client_id, old)
