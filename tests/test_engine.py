"""The engine's strategy per IdP capability set, with an in-memory IdP and a real env store.

Keycloak (tests/test_rotation_keycloak.py) exercises the server-generated families against
a real server; these tests cover the capability combinations Keycloak does not have —
caller-chosen values, many active secrets — and the grace-period clock, fast and without
servers. The in-memory IdP is a test double of the ``IdentityProvider`` protocol and its
token endpoint (an ``httpx.MockTransport``) accepts exactly the secrets the IdP holds.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from providers.stores.env import EnvStore, parse_env
from rotator.audit import AuditLog, flatten
from rotator.config import ClientConfig, load_config
from rotator.engine import Adapters, Engine
from rotator.errors import IdpAccessDenied, IdpUnavailable
from rotator.interfaces import ClientId, IdpCapabilities, IssuedSecret, RotationId
from rotator.journal import Journal, State
from rotator.secrets import Secret, generate_secret
from rotator.settings import Setting


@dataclass
class MemoryIdp:
    """An identity provider holding secrets in memory, with configurable capabilities."""

    caps: IdpCapabilities
    name: str = "mem"
    SETTINGS = (Setting("x"),)
    active: dict[str, str] = field(default_factory=dict)  # secret_ref -> value
    created: int = 0
    deny_create: bool = False

    def start(self) -> None: ...
    def close(self) -> None: ...

    def default_token_endpoint(self) -> str:
        return "https://idp.test/token"

    def capabilities(self, client_id: ClientId) -> IdpCapabilities:
        return self.caps

    def create_secret(self, client_id: ClientId, rotation_id: RotationId,
                      value: Secret | None) -> IssuedSecret:
        if self.deny_create:
            raise IdpAccessDenied("missing permission apps.manage")
        assert (value is not None) == self.caps.caller_sets_value
        for ref, existing in self.active.items():  # idempotent for a caller-chosen value
            if value is not None and existing == value.reveal():
                return IssuedSecret(value, ref)
        self.created += 1
        new = value or generate_secret()
        ref = f"s{self.created}"
        if self.caps.max_active_secrets == 1:
            self.active.clear()
        self.active[ref] = new.reveal()
        return IssuedSecret(new, ref)

    def current_secret(self, client_id: ClientId) -> Secret | None:
        if not self.caps.can_read_current or not self.active:
            return None
        return Secret(list(self.active.values())[-1])

    def discard_secret(self, client_id: ClientId, issued: IssuedSecret,
                       previous: Secret) -> None:
        self.active = {r: v for r, v in self.active.items() if v != issued.value.reveal()}

    def retire_old_secrets(self, client_id: ClientId, keep: IssuedSecret) -> int:
        gone = [r for r, v in self.active.items() if v != keep.value.reveal()]
        for ref in gone:
            del self.active[ref]
        return len(gone)

    def token_endpoint(self, refuse: bool = False) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            if request.method != "POST":  # status probes reachability with a bare GET
                return httpx.Response(405)
            basic = request.headers["Authorization"].removeprefix("Basic ")
            _, _, secret = base64.b64decode(basic).decode().partition(":")
            if refuse or unquote(secret) not in self.active.values():
                return httpx.Response(401, json={"error": "invalid_client"})
            scope = parse_qs(request.content.decode()).get("scope", [""])[0]
            return httpx.Response(200, json={"access_token": secrets.token_hex(8),
                                             "token_type": "Bearer", "expires_in": 300,
                                             "scope": scope})
        return httpx.MockTransport(handle)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    engine: Engine
    idp: MemoryIdp
    env_file: Path
    clock: Clock
    refuse: dict[str, bool]

    def env(self) -> dict[str, str]:
        return parse_env(self.env_file.read_text())


CAPS = {
    "chosen-overlap": IdpCapabilities(2, caller_sets_value=True, can_revoke_old=True,
                                      can_read_current=False),
    "chosen-single": IdpCapabilities(1, caller_sets_value=True, can_revoke_old=False,
                                     can_read_current=False),
    "generated-many": IdpCapabilities(10, caller_sets_value=False, can_revoke_old=True,
                                      can_read_current=False),
}


@pytest.fixture(params=list(CAPS))
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path, CAPS[request.param]) as made:
        yield made


@contextmanager
def make_rig(tmp_path: Path, caps: IdpCapabilities) -> Iterator[Rig]:
    idp = MemoryIdp(caps)
    first = secrets.token_urlsafe(24)
    idp.active["s0"] = first
    env_file = tmp_path / "creds.env"
    env_file.write_text(f"APP_CLIENT_ID=app\nAPP_CLIENT_SECRET={first}\n")
    (tmp_path / "audit.key").write_text(secrets.token_hex(16))
    (tmp_path / "audit.key").chmod(0o600)
    (tmp_path / "rotator.toml").write_text("""
[audit]
file = "audit.jsonl"
key_file = "audit.key"
[stores.env]
type = "env"
file = "creds.env"
read_environ = false
[idps.kc]
type = "keycloak"
url = "https://idp.test"
realm = "r"
admin_client_id = "rotator"
admin_client_secret_env = "UNUSED_ADMIN_SECRET"
[clients.app]
idp = "kc"
client_id = "app"
grace_period = "1h"
verify_attempts = 2
stores = [{store = "env", prefix = "APP"}]
""")
    config = load_config(tmp_path / "rotator.toml",
                         environ={"UNUSED_ADMIN_SECRET": secrets.token_hex(8)})
    refuse = {"token": False}

    def http(client: ClientConfig) -> httpx.Client:
        return httpx.Client(transport=idp.token_endpoint(refuse["token"]))

    store = EnvStore("env", {"file": str(env_file), "read_environ": False})
    adapters = Adapters(config, stores={"env": store}, idps={"kc": idp})  # type: ignore[dict-item]
    audit = AuditLog(config.audit.key, file=config.audit.file)
    journal = Journal(config.state_dir)
    clock = Clock()
    engine = Engine(config, adapters, journal, audit, clock=clock, sleep=lambda _s: None,
                    http_factory=http)
    try:
        yield Rig(engine, idp, env_file, clock, refuse)
    finally:
        adapters.close()
        journal.close()
        audit.close()


class TestEveryFamily:
    """Each capability set ends with the new secret current, accepted, and the old retired."""

    def test_rotate_then_retire(self, rig: Rig) -> None:
        old = rig.env()["APP_CLIENT_SECRET"]
        outcome = rig.engine.rotate("app")
        assert outcome.ok, outcome.message
        new = rig.env()["APP_CLIENT_SECRET"]
        assert new != old and new in rig.idp.active.values()
        if rig.idp.caps.overlap:
            assert outcome.state == "promoted" and old in rig.idp.active.values()
            assert rig.engine.retire("app").action == "waiting"
            rig.clock.now += timedelta(hours=1)
            retired = rig.engine.retire("app")
            assert retired.ok and retired.action == "retired"
        assert list(rig.idp.active.values()) == [new]
        assert "APP_CLIENT_SECRET_PREVIOUS" not in rig.env()

    def test_refused_new_secret(self, rig: Rig) -> None:
        old = rig.env()["APP_CLIENT_SECRET"]
        rig.refuse["token"] = True
        outcome = rig.engine.rotate("app")
        assert not outcome.ok
        if rig.idp.caps.overlap:
            assert outcome.action == "rolled_back"
            assert rig.env()["APP_CLIENT_SECRET"] == old
            assert list(rig.idp.active.values()) == [old]
        else:
            # The old secret is gone at the IdP: the only accepted secret is the stored one.
            assert outcome.state == "failed"
            assert list(rig.idp.active.values()) == [rig.env()["APP_CLIENT_SECRET"]]
        assert "APP_CLIENT_SECRET_PENDING" not in rig.env()


class TestCallerChosenValue:
    """A value rotator chooses is stored as pending before the IdP ever hears of it."""

    def test_staged_before_created(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            seen: list[Any] = []
            original = rig.idp.create_secret

            def spy(client_id: str, rotation_id: str, value: Secret | None) -> IssuedSecret:
                seen.append(rig.env().get("APP_CLIENT_SECRET_PENDING"))
                return original(client_id, rotation_id, value)

            rig.idp.create_secret = spy  # type: ignore[method-assign]
            assert rig.engine.rotate("app").ok
            assert seen and seen[0] == rig.env()["APP_CLIENT_SECRET"]

    def test_denied_create_discards_pending(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            rig.idp.deny_create = True
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and outcome.state == "failed"
            assert "apps.manage" in outcome.message
            assert "APP_CLIENT_SECRET_PENDING" not in rig.env()
            assert rig.engine.journal.open_rotation("app") is None


class TestGracePeriod:
    """A rotation waits for its grace period, and a new one is refused meanwhile."""

    def test_new_rotation_waits_for_retirement(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            assert rig.engine.rotate("app").ok
            waiting = rig.engine.rotate("app")
            assert not waiting.ok and waiting.action == "waiting"
            rig.clock.now += timedelta(hours=2)
            second = rig.engine.rotate("app")
            assert second.ok and second.state == State.PROMOTED.value
            assert len(rig.idp.active) == 2  # the second rotation's old and new

    def test_dry_run_changes_nothing(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-single"]) as rig:
            before = rig.env_file.read_bytes()
            planned = rig.engine.rotate("app", dry_run=True)
            assert planned.ok and planned.action == "planned"
            assert "old one stops working" in planned.message
            assert rig.env_file.read_bytes() == before and rig.idp.created == 0


class TestPropagationDelay:
    """Verification keeps trying for as long as the IdP says a new secret may take to work."""

    def test_waits_out_the_declared_delay(self, tmp_path: Path) -> None:
        caps = IdpCapabilities(1, caller_sets_value=True, can_revoke_old=False,
                               can_read_current=False, propagation_delay=20.0)
        with make_rig(tmp_path, caps) as rig:
            slept: list[float] = []
            rig.engine.sleep = slept.append
            transport = rig.idp.token_endpoint()
            calls = {"n": 0}

            def slow_to_propagate(client: ClientConfig) -> httpx.Client:
                def handle(request: httpx.Request) -> httpx.Response:
                    calls["n"] += 1
                    if calls["n"] <= 4:  # the new secret works only from the fifth request
                        return httpx.Response(401, json={"error": "invalid_client"})
                    return transport.handle_request(request)
                return httpx.Client(transport=httpx.MockTransport(handle))

            rig.engine.http_factory = slow_to_propagate
            outcome = rig.engine.rotate("app")  # verify_attempts = 2 in the rig's config
            assert outcome.ok, outcome.message
            assert calls["n"] == 5 and slept == [0.5, 1.0, 2.0, 4.0]


def interrupt_create(rig: Rig) -> list[str]:
    """Make the IdP fail the next create with a message echoing the value; return the values."""
    original = rig.idp.create_secret
    echoed: list[str] = []

    def flaky(client_id: str, rotation_id: str, value: Secret | None) -> IssuedSecret:
        rig.idp.create_secret = original  # type: ignore[method-assign]
        assert value is not None
        echoed.append(value.reveal())
        raise IdpUnavailable(f"upstream echoed {value.reveal()}")

    rig.idp.create_secret = flaky  # type: ignore[method-assign]
    return echoed


@contextmanager
def engine_with(rig: Rig, toml: str | None = None,
                audit_key: str | None = None) -> Iterator[Engine]:
    """A second engine on the rig's journal: a reloaded config or another audit key."""
    base = rig.env_file.parent
    if toml is not None:
        (base / "rotator.toml").write_text(toml)
    if audit_key is not None:
        (base / "audit.key").write_text(audit_key)
    config = load_config(base / "rotator.toml",
                         environ={"UNUSED_ADMIN_SECRET": secrets.token_hex(8)})
    audit = AuditLog(config.audit.key, file=config.audit.file)
    old = rig.engine
    try:
        yield Engine(config, old.adapters, old.journal, audit, clock=old.clock,
                     sleep=lambda _s: None, http_factory=old.http_factory)
    finally:
        audit.close()


class TestRecordedTargets:
    """An open rotation finishes on the stores it began with, whatever a reload says now."""

    def test_resumes_on_recorded_stores(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            old = rig.env()["APP_CLIENT_SECRET"]
            echoed = interrupt_create(rig)
            first = rig.engine.rotate("app")
            assert first.action == "interrupted" and first.state == "staged"
            toml = (tmp_path / "rotator.toml").read_text()
            with engine_with(rig, toml.replace('prefix = "APP"', 'prefix = "NEW"')) as reloaded:
                assert reloaded.config.clients["app"].primary.location == "NEW"
                outcome = reloaded.rotate("app")
            assert outcome.ok and outcome.action == "rotated", outcome.message
            assert outcome.rotation_id == first.rotation_id
            env = rig.env()
            assert env["APP_CLIENT_SECRET"] == echoed[0] != old
            assert echoed[0] in rig.idp.active.values()
            assert not [k for k in env if k.startswith("NEW_")]
            rotation = rig.engine.journal.get(outcome.rotation_id or "")
            assert [(t.store, t.location) for t in rotation.targets] == [("env", "APP")]


class TestAuditKeyRecorded:
    """An open rotation begun under another audit key is refused, naming both key ids."""

    def test_refused_then_resumed_with_its_key(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            original_key = (tmp_path / "audit.key").read_text()
            interrupt_create(rig)
            first = rig.engine.rotate("app")
            recorded = rig.engine.journal.get(first.rotation_id or "").audit_key_id
            assert recorded is not None and len(recorded) == 8
            before = rig.env_file.read_bytes()
            with engine_with(rig, audit_key=secrets.token_hex(16)) as other:
                refused = other.rotate("app")
            assert not refused.ok and refused.action == "refused"
            assert f"began with audit key {recorded}" in refused.message
            assert original_key not in refused.message
            assert rig.env_file.read_bytes() == before and rig.idp.created == 0
            assert rig.engine.journal.get(first.rotation_id or "").state is State.STAGED
            with engine_with(rig, audit_key=original_key) as again:
                assert again.rotate("app").ok


class TestErrorsRedacted:
    """An error text echoing a secret value is stored and shown by status with it masked."""

    def test_status_error_masked(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            echoed = interrupt_create(rig)
            assert rig.engine.rotate("app").action == "interrupted"
            error = rig.engine.status("app")["last_rotation"]["error"]
            assert "upstream echoed **********" in error and echoed[0] not in error


class TestActorPerCall:
    """Each command records the actor its caller names, in the journal and the audit log."""

    def test_actor_given_per_call(self, rig: Rig) -> None:
        assert rig.engine.rotate("app", actor="api:deploy-bot").ok
        assert rig.engine.journal.latest("app").actor == "api:deploy-bot"  # type: ignore[union-attr]
        rig.engine.verify("app", actor="scheduler")
        assert rig.engine.config.audit.file is not None
        events = [flatten(json.loads(line))
                  for line in rig.engine.config.audit.file.read_text().splitlines()]
        actors = {e["event"]: e["actor"] for e in events}
        assert actors["rotation_started"] == "api:deploy-bot"
        assert actors["credential_verified"] == "scheduler"
        rig.engine.verify("app")
        last = flatten(json.loads(
            rig.engine.config.audit.file.read_text().splitlines()[-1]))
        assert last["actor"] == "cli"  # the engine's default when a call names none


class TestCallerNamedRotation:
    """A caller may name a new rotation before it begins; an unusable name changes nothing."""

    def test_named(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            outcome = rig.engine.rotate("app", rotation_id="r-api-0001")
            assert outcome.ok and outcome.rotation_id == "r-api-0001"
            assert rig.engine.journal.get("r-api-0001").state is State.PROMOTED

    def test_unusable_name(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            before = rig.env_file.read_bytes()
            outcome = rig.engine.rotate("app", rotation_id="r\nAPP_CLIENT_SECRET=x")
            assert not outcome.ok and "not a usable rotation id" in outcome.message
            assert rig.engine.journal.latest("app") is None
            assert rig.env_file.read_bytes() == before and rig.idp.created == 0


class TestStaleWriter:
    """An engine whose rotation another writer moved meanwhile records nothing more."""

    def test_conflict(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            original = rig.idp.create_secret

            def taken_over(client_id: str, rotation_id: str,
                           value: Secret | None) -> IssuedSecret:
                other = Journal(rig.engine.config.state_dir)  # as another replica would
                other.advance(rotation_id, State.FAILED, rig.clock(), expected=State.STAGED,
                              error="taken over")
                other.close()
                return original(client_id, rotation_id, value)

            rig.idp.create_secret = taken_over  # type: ignore[method-assign]
            outcome = rig.engine.rotate("app")
            assert not outcome.ok and outcome.action == "conflict"
            assert "is failed, not staged" in outcome.message
            rotation = rig.engine.journal.get(outcome.rotation_id or "")
            assert rotation.state is State.FAILED and rotation.error == "taken over"
            assert len(rig.engine.journal.steps(rotation.id)) == 3


class TestAuditDurableAtSteps:
    """A rotation's audit events are on disk before the journal's record of their step
    returns, with one audit sync per step rather than one per event."""

    def test_synced_before_each_step_goes_on(self, rig: Rig,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        import os

        from rotator.audit import sinks

        log = rig.engine.config.audit.file
        assert log is not None
        synced: list[int] = []  # the log's size at each sync of it

        def sync(fd: int) -> None:
            synced.append(os.fstat(fd).st_size)
            os.fdatasync(fd)

        monkeypatch.setattr(sinks, "_sync", sync)
        real_advance = rig.engine._advance
        behind: list[str] = []

        def advance(rotation: Any, state: State, **fields: str | None) -> Any:
            written = log.stat().st_size
            result = real_advance(rotation, state, **fields)
            if not synced or synced[-1] < written:
                behind.append(state.value)
            return result

        monkeypatch.setattr(rig.engine, "_advance", advance)
        before = len(log.read_text().splitlines()) if log.exists() else 0
        outcome = rig.engine.rotate("app")
        assert outcome.ok, outcome.message
        events = len(log.read_text().splitlines()) - before
        assert behind == [], f"steps recorded before their audit events were durable: {behind}"
        assert synced and synced[-1] == log.stat().st_size  # all durable when rotate returns
        steps = len(rig.engine.journal.steps(outcome.rotation_id or ""))
        assert len(synced) <= steps, (len(synced), steps)
        assert len(synced) < events, (len(synced), events)

    def test_deferred_event_is_written_at_once(self, rig: Rig) -> None:
        log = rig.engine.config.audit.file
        assert log is not None
        with rig.engine.audit.deferred():
            rig.engine.audit.event("rotation_started", step="start", outcome="success")
            # A killed process loses no event: the line is in the file before its sync.
            assert "rotation_started" in log.read_text().splitlines()[-1]


class TestJournalCostPerRotation:
    """An overlap rotation whose value the IdP makes costs the journal four commits (begun and
    asked in one, then created, verified, promoted), two of them synced, and twenty-two SQL
    statements: the two reads before it begins, per commit BEGIN, the write returning its
    row, its step(s) and COMMIT, and the two pragmas around each of the unsynced commits of
    CREATED and of PROMOTED (a grace period follows it)."""

    def test_counted(self, tmp_path: Path) -> None:
        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            statements: list[str] = []
            db = rig.engine.journal._db  # type: ignore[attr-defined]
            db.set_trace_callback(statements.append)
            try:
                outcome = rig.engine.rotate("app")
            finally:
                db.set_trace_callback(None)
            assert outcome.ok and outcome.state == "promoted", outcome.message
            commits = [s for s in statements if s == "COMMIT"]
            assert len(commits) == 4, statements
            assert len(statements) == 22, statements
            unsynced = [i for i, s in enumerate(statements) if s == "PRAGMA synchronous=NORMAL"]
            assert len(unsynced) == 2, statements
            for at, state in zip(unsynced, ("created", "promoted"), strict=True):
                assert statements[at:at + 6] == [
                    "PRAGMA synchronous=NORMAL", "BEGIN IMMEDIATE", statements[at + 2],
                    statements[at + 3], "COMMIT", "PRAGMA synchronous=FULL"], statements
                assert f"SET state = '{state}'" in statements[at + 2], statements
            steps = rig.engine.journal.steps(outcome.rotation_id or "")
            assert [s.state for s in steps] == [State.STARTED, State.CREATING, State.CREATED,
                                                State.VERIFIED, State.PROMOTED]
