"""Rotations of real Keycloak clients into real OpenBao and an env file, with faults injected.

Faults are injected at the HTTP boundary (an httpx transport wrapping the real one) or by
sealing a real OpenBao, so every other part of the path is the production code against the
real servers.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao

from providers.idps.keycloak import KeycloakIdp
from rotator import cli as cli_module
from rotator.audit import AuditLog, flatten
from rotator.config import ClientConfig, load_config
from rotator.engine import Adapters, Engine, Outcome, default_http
from rotator.journal import Journal

pytestmark = pytest.mark.server


class FaultyTransport(httpx.BaseTransport):
    """Passes requests to the real server unless ``fault`` returns a response or raises."""

    def __init__(self, fault: Callable[[httpx.Request], httpx.Response | None]) -> None:
        self._real = httpx.HTTPTransport()
        self.fault = fault

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        injected = self.fault(request)
        if injected is not None:
            return injected
        return self._real.handle_request(request)

    def close(self) -> None:
        self._real.close()


def engine_for(s: Scenario, *, idp_transport: httpx.BaseTransport | None = None,
               token_transport: httpx.BaseTransport | None = None) -> Iterator[Engine]:
    config = load_config(s.config)
    idps = {}
    if idp_transport is not None:
        cfg = config.idps["kc"]
        idps["kc"] = KeycloakIdp("kc", cfg.settings, transport=idp_transport)

    def http(client: ClientConfig) -> httpx.Client:
        return httpx.Client(timeout=client.verify_timeout, transport=token_transport)

    adapters = Adapters(config, idps=idps)
    audit = AuditLog(config.audit.key, file=config.audit.file)
    journal = Journal(config.state_dir)
    try:
        yield Engine(config, adapters, journal, audit, sleep=lambda _s: None,
                     http_factory=http if token_transport else default_http)
    finally:
        adapters.close()
        journal.close()
        audit.close()


def run_engine(s: Scenario, action: Callable[[Engine], Outcome], **transports: Any) -> Outcome:
    gen = engine_for(s, **transports)
    engine = next(gen)
    try:
        outcome = action(engine)
    finally:
        gen.close()
    s.outputs.append(json.dumps(outcome.as_dict()))
    s.remember()
    return outcome


def audit_events(s: Scenario) -> list[dict[str, Any]]:
    return [flatten(json.loads(line))
            for line in (s.root / "audit.jsonl").read_text().splitlines()]


class TestOverlapRotation:
    """With a secret-rotation policy the old secret works until its grace period ends."""

    def test_rotate_keeps_old_valid_until_retired(self, kc_realm: KeycloakRealm,
                                                  bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1h")
        old = s.vault_current()
        result = s.cli("rotate", "svc")
        assert result.code == 0, result.out + result.err
        new = s.vault_current()
        assert new != old and s.works(new) and s.works(old)
        env = s.env_values()
        assert env["SVC_CLIENT_SECRET"] == new
        assert env["SVC_CLIENT_SECRET_PREVIOUS"] == old
        status = json.loads(s.cli("status", "svc", "--json").out)["clients"][0]
        assert status["state"] == "awaiting_retirement"

        again = s.cli("rotate", "svc")
        assert again.code == 1 and "retire" in again.out

        waiting = s.cli("retire", "svc")
        assert waiting.code == 0 and "valid until" in waiting.out
        assert s.works(old)

        retired = s.cli("retire", "svc", "--now")
        assert retired.code == 0, retired.out + retired.err
        assert not s.works(old) and s.works(new)
        assert "SVC_CLIENT_SECRET_PREVIOUS" not in s.env_values()
        assert s.kc_rotated() is None
        assert s.leaks() == []

    def test_audit_trail_has_every_step_and_no_secret(self, kc_realm: KeycloakRealm,
                                                      bao_server: OpenBao,
                                                      tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        assert s.cli("rotate", "svc").code == 0
        events = audit_events(s)
        names = [e["event"] for e in events]
        assert names == ["rotation_started", "secret_created", "secret_staged", "secret_staged",
                         "secret_verified", "secret_promoted", "secret_promoted",
                         "old_secret_retired", "rotation_completed"]
        rotation_ids = {e["rotation_id"] for e in events}
        assert len(rotation_ids) == 1
        for e in events:
            assert e["client"] == "svc" and e["idp"] == "kc" and e["actor"] == "cli"
            assert e["outcome"] == "success" and "step" in e
        assert {e["store"] for e in events if e["event"] == "secret_staged"} == {"bao", "envfile"}
        assert all(re.fullmatch(r"hmac-sha256:[0-9a-f]{32}", e["new_fingerprint"])
                   for e in events if "new_fingerprint" in e)
        assert s.leaks() == []

    def test_vault_records_rotation_facts(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                          tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1h")
        assert s.cli("rotate", "svc").code == 0
        meta = s.vault().secrets.kv.v2.read_secret_metadata(path=s.vault_path,
                                                           mount_point="secret")["data"]
        custom = meta["custom_metadata"]
        assert custom["rotator_rotation_id"].startswith("r-")
        assert custom["rotator_previous_version"] == "1"
        assert meta["current_version"] == 2


class TestVerificationFailure:
    """A new secret the token endpoint refuses is rolled back where the IdP allows it."""

    @staticmethod
    def refuse_token(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/protocol/openid-connect/token"):
            return httpx.Response(401, json={"error": "invalid_client",
                                             "error_description": "Invalid client credentials"})
        return None

    def test_overlap_rolls_back_to_old_secret(self, kc_realm: KeycloakRealm,
                                              bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        old = s.vault_current()
        outcome = run_engine(s, lambda e: e.rotate("svc"),
                             token_transport=FaultyTransport(self.refuse_token))
        assert not outcome.ok and outcome.action == "rolled_back"
        assert "invalid_client" in outcome.message
        assert s.vault_current() == old and s.vault_pending() is None
        assert s.kc_current() == old and s.works(old)
        assert "SVC_CLIENT_SECRET_PENDING" not in s.env_values()
        assert s.leaks() == []

    def test_missing_scope_fails_without_retry_and_rolls_back(
        self, kc_realm: KeycloakRealm, bao_server: OpenBao, tmp_path: Path
    ) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True,
                            extra_client='scopes = ["not-granted-scope"]')
        old = s.vault_current()
        result = s.cli("rotate", "svc")
        assert result.code == 1
        assert "invalid_scope" in result.out or "scope" in result.out
        assert s.vault_current() == old and s.kc_current() == old and s.works(old)

    def test_granted_scope_is_checked(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                      tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True,
                            scopes=["payments-read"])
        assert s.cli("rotate", "svc").code == 0
        verify = s.cli("verify", "svc", "--json")
        details = json.loads(verify.out)["results"][0]["details"]
        assert all("payments-read" in d["scopes"] for d in details.values())

    def test_single_secret_keeps_new_secret_current(self, kc_realm: KeycloakRealm,
                                                    bao_server: OpenBao,
                                                    tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=False)
        old = s.vault_current()
        outcome = run_engine(s, lambda e: e.rotate("svc"),
                             token_transport=FaultyTransport(self.refuse_token))
        assert not outcome.ok and outcome.state == "failed"
        # Keycloak invalidated the old secret: the only secret it accepts is stored as current.
        assert s.vault_current() != old
        assert s.vault_current() == s.kc_current() and s.works(s.vault_current())
        assert s.cli("verify", "svc").code == 0


class TestKeycloakFaults:
    """Admin API errors and timeouts leave the stored secret working and are resumed."""

    def test_admin_5xx_on_create_changes_nothing(self, kc_realm: KeycloakRealm,
                                                 bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        old = s.vault_current()

        def fail_create(request: httpx.Request) -> httpx.Response | None:
            if request.method == "POST" and request.url.path.endswith("/client-secret"):
                return httpx.Response(503, json={"error": "unknown_error"})
            return None

        outcome = run_engine(s, lambda e: e.rotate("svc"),
                             idp_transport=FaultyTransport(fail_create))
        assert not outcome.ok and outcome.action == "interrupted"
        assert "503" in outcome.message
        assert s.vault_current() == old and s.kc_current() == old and s.works(old)
        # The next run resumes the rotation and finishes it.
        again = s.cli("rotate", "svc")
        assert again.code == 0, again.out + again.err
        assert s.vault_current() != old and s.works(s.vault_current())

    def test_timeout_after_create_recovers_issued_secret(self, kc_realm: KeycloakRealm,
                                                         bao_server: OpenBao,
                                                         tmp_path: Path) -> None:
        """Keycloak created the secret but the answer never came: nothing is lost."""
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=False)

        def lose_answer(request: httpx.Request) -> httpx.Response | None:
            if request.method == "POST" and request.url.path.endswith("/client-secret"):
                with httpx.HTTPTransport() as real:
                    real.handle_request(request).read()
                raise httpx.ReadTimeout("timed out", request=request)
            return None

        outcome = run_engine(s, lambda e: e.rotate("svc"),
                             idp_transport=FaultyTransport(lose_answer))
        assert outcome.action == "interrupted" and "timed out" in outcome.message
        issued = s.kc_current()
        again = s.cli("rotate", "svc")
        assert again.code == 0, again.out + again.err
        # The secret Keycloak issued during the lost call was recovered, not replaced.
        assert s.vault_current() == issued == s.kc_current()
        assert s.works(issued)

    def test_missing_admin_role_is_named(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                         tmp_path: Path) -> None:
        kc = kc_realm.keycloak
        weak_id = f"weak-admin-{tmp_path.name[-6:]}"
        weak_secret = kc.create_admin_client(kc_realm.realm, weak_id,
                                             roles=("view-clients", "query-clients"))
        weak = KeycloakRealm(kc, kc_realm.realm, weak_id, weak_secret)
        s = Scenario.create(weak, bao_server, tmp_path, overlap=True)
        old = s.vault_current()
        result = s.cli("rotate", "svc")
        assert result.code == 1
        assert "manage-clients" in result.out
        assert s.kc_current() == old and s.vault_current() == old
        assert "Traceback" not in result.out + result.err


class TestVaultFaults:
    """A sealed or unreachable Vault never costs a working secret."""

    @staticmethod
    def unseal_key(bao: OpenBao) -> str:
        # bao may print its banner after /v1/sys/health already answers: wait for the line
        for _ in range(200):
            match = re.search(r"Unseal Key: (\S+)", bao.log_path.read_text())
            if match:
                return match.group(1)
            time.sleep(0.05)
        raise AssertionError(f"no unseal key in {bao.log_path}")

    def test_sealed_before_rotation_changes_nothing(self, kc_realm: KeycloakRealm,
                                                    tmp_path: Path) -> None:
        with OpenBao() as bao:
            s = Scenario.create(kc_realm, bao, tmp_path, overlap=True)
            old = s.vault_current()
            httpx.put(f"{bao.url}/v1/sys/seal", headers={"X-Vault-Token": bao.root_token})
            result = s.cli("rotate", "svc")
            assert result.code == 1 and "sealed" in (result.out + result.err)
            assert s.kc_current() == old and s.works(old)

    def test_sealed_after_create_is_resumed(self, kc_realm: KeycloakRealm,
                                            tmp_path: Path) -> None:
        with OpenBao() as bao:
            s = Scenario.create(kc_realm, bao, tmp_path, overlap=False)
            key = self.unseal_key(bao)

            def seal_after_create(request: httpx.Request) -> httpx.Response | None:
                if request.method == "POST" and request.url.path.endswith("/client-secret"):
                    with httpx.HTTPTransport() as real:
                        response = real.handle_request(request)
                        response.read()
                    httpx.put(f"{bao.url}/v1/sys/seal",
                              headers={"X-Vault-Token": bao.root_token})
                    return response
                return None

            outcome = run_engine(s, lambda e: e.rotate("svc"),
                                 idp_transport=FaultyTransport(seal_after_create))
            assert not outcome.ok and "sealed" in outcome.message
            issued = s.kc_current()
            httpx.put(f"{bao.url}/v1/sys/unseal", json={"key": key})
            again = s.cli("rotate", "svc")
            assert again.code == 0, again.out + again.err
            assert s.vault_current() == issued and s.works(issued)

    def test_unreachable_vault_is_a_clear_error(self, kc_realm: KeycloakRealm,
                                                bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        old = s.vault_current()
        text = s.config.read_text().replace(bao_server.url, "http://127.0.0.1:9")
        s.config.write_text(text)
        result = s.cli("rotate", "svc")
        assert result.code == 1 and "unreachable" in (result.out + result.err)
        assert s.kc_current() == old


class TestCommands:
    """dry-run, status and the rotation lock do what they say."""

    def test_dry_run_changes_nothing(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                     tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        old = s.vault_current()
        result = s.cli("rotate", "svc", "--dry-run")
        assert result.code == 0 and "planned" in result.out
        assert s.vault_current() == old and s.kc_current() == old

    def test_lock_held_by_another_process(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                          tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        journal = Journal(load_config(s.config).state_dir)
        with journal.lock("svc"):
            result = s.subprocess("rotate", "svc", "--wait", "0")
        journal.close()
        assert result.code == 1 and "another process" in result.out

    def test_status_reports_age_and_state(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                          tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=False,
                            extra_client='rotate_every = "30d"')
        assert s.cli("rotate", "svc").code == 0
        status = json.loads(s.cli("status", "--all", "--json").out)["clients"][0]
        assert status["state"] == "ok"
        assert status["last_rotation"]["state"] == "completed"
        assert [s["state"] for s in status["last_rotation"]["steps"]] == [
            "started", "creating", "created", "promoted", "completed"]
        assert status["age_seconds"] is not None and status["age_seconds"] < 120
        assert status["idp_status"] == {"reachable": True}
        human = s.cli("status", "svc")
        assert "svc" in human.out and human.code == 0
        assert "idp kc: reachable" in human.out

    def test_status_needs_no_audit_key_or_admin_secret(self, kc_realm: KeycloakRealm,
                                                       bao_server: OpenBao,
                                                       tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        (s.root / "audit.key").unlink()
        (s.root / "admin.secret").unlink()
        status = s.cli("status")
        assert status.code == 0, status.out + status.err
        assert "svc" in status.out and "idp kc: reachable" in status.out
        assert not (s.root / "audit.jsonl").exists()


class TestConcurrentTriggers:
    """Concurrent `rotator rotate` of one client rotate it once; the others report that
    rotation instead of invalidating the secret it just stored."""

    PROCESSES = 16

    def test_one_rotation_answers_every_trigger(self, kc_realm: KeycloakRealm,
                                                bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path / "s", overlap=False)
        state_dir = load_config(s.config).state_dir
        argv = [str(Path(sys.executable).parent / "rotator"), "rotate", "svc", "-v",
                "-c", str(s.config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        logs = [tmp_path / f"rotate-{i}.err" for i in range(self.PROCESSES)]
        outs = [tmp_path / f"rotate-{i}.out" for i in range(self.PROCESSES)]
        journal = Journal(state_dir)
        with journal.lock("svc"):
            procs = []
            for out, err in zip(outs, logs, strict=True):
                with out.open("w") as out_file, err.open("w") as err_file:
                    procs.append(subprocess.Popen(argv, stdout=out_file, stderr=err_file,
                                                  env=env))
            # Every process has fixed its request time and waits for the lock: only then
            # may the first rotation begin.
            pending = set(range(self.PROCESSES))
            deadline = time.monotonic() + 240
            while pending and time.monotonic() < deadline:
                pending = {i for i in pending if procs[i].poll() is None
                           and "rotation_requested" not in logs[i].read_text()}
                time.sleep(0.1)
            assert not pending, "some rotate processes never asked for the lock"
        journal.close()
        codes = [p.wait(timeout=300) for p in procs]
        results = [json.dumps([o.read_text(), e.read_text()]) for o, e in zip(
            outs, logs, strict=True)]
        s.outputs += results
        s.remember()
        assert codes == [0] * self.PROCESSES, results
        with sqlite3.connect(state_dir / "journal.sqlite3") as db:
            rotations = db.execute("SELECT count(*) FROM rotations WHERE client = 'svc'")
            assert rotations.fetchone()[0] == 1
        answered = [o.read_text() for o in outs if "rotated by another process at" in
                    o.read_text()]
        assert len(answered) == self.PROCESSES - 1
        assert s.works(s.vault_current()) and s.vault_current() == s.kc_current()
        assert s.leaks() == []


class TestLeastPrivilege:
    """The documented Vault policy is enough for a whole rotation, and no more is needed."""

    def test_rotation_with_the_documented_policy(self, kc_realm: KeycloakRealm,
                                                 bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1h")
        policy = (Path(__file__).parent.parent / "config" / "vault-policy.hcl").read_text()
        vault = s.vault()
        vault.sys.create_or_update_policy(name="rotator", policy=policy)
        token = vault.auth.token.create(policies=["rotator"], no_default_policy=True)
        s.seen_secrets.add(token["auth"]["client_token"])
        (s.root / "bao.token").write_text(token["auth"]["client_token"])
        rotated = s.cli("rotate", "svc")
        assert rotated.code == 0, rotated.out + rotated.err
        retired = s.cli("retire", "svc", "--now")
        assert retired.code == 0, retired.out + retired.err
        assert s.works(s.vault_current()) and s.vault_pending() is None
        assert s.leaks() == []


class TestSecretLeaks:
    """Debug logs, tracebacks and error texts of failing rotations carry no secret value."""

    def test_verbose_failures_leak_nothing(self, kc_realm: KeycloakRealm,
                                           bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        # A wrong secret in the env store: verify fails there with Keycloak's own error text.
        wrong = "wrong-" + s.vault_current()[:20][::-1]
        s.seen_secrets.add(wrong)
        env = (s.root / "creds.env").read_text()
        (s.root / "creds.env").write_text(env.replace(s.env_values()["SVC_CLIENT_SECRET"], wrong))
        verify = s.cli("verify", "svc", "-v")
        assert verify.code == 1 and "refused the credentials" in verify.out

        # An interrupted rotation logs its traceback at debug level.
        debug = io.StringIO()
        cli_module._setup_logging(True, debug)
        try:
            def fail_create(request: httpx.Request) -> httpx.Response | None:
                if request.method == "POST" and request.url.path.endswith("/client-secret"):
                    raise httpx.ConnectError("connection reset", request=request)
                return None

            outcome = run_engine(s, lambda e: e.rotate("svc"),
                                 idp_transport=FaultyTransport(fail_create))
        finally:
            structlog.reset_defaults()
        assert outcome.action == "interrupted"
        s.outputs.append(debug.getvalue())
        assert "Traceback" in debug.getvalue()
        assert s.cli("rotate", "svc", "-v").code == 0
        assert s.leaks() == []


class TestForeignPending:
    """A pending secret rotator's journal does not know blocks a rotation until abandoned."""

    def test_foreign_pending_blocks_until_abandoned(self, kc_realm: KeycloakRealm,
                                                    bao_server: OpenBao,
                                                    tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        old = s.vault_current()
        foreign = secrets.token_urlsafe(24)
        s.seen_secrets.add(foreign)
        s.vault().secrets.kv.v2.create_or_update_secret(
            path=s.vault_path + ".pending", mount_point="secret",
            secret={"client_id": s.client_id, "client_secret": foreign})
        blocked = s.cli("rotate", "svc")
        assert blocked.code == 1 and "--abandon-pending" in blocked.out
        assert s.kc_current() == old
        abandoned = s.cli("rotate", "svc", "--abandon-pending")
        assert abandoned.code == 0, abandoned.out + abandoned.err
        assert s.vault_current() not in (old, foreign) and s.works(s.vault_current())
        assert s.leaks() == []
