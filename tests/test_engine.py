"""The engine's strategy per IdP capability set, with an in-memory IdP and a real env store.

Keycloak (tests/test_rotation_keycloak.py) exercises the server-generated families against
a real server; these tests cover the capability combinations Keycloak does not have —
caller-chosen values, many active secrets — and the grace-period clock, fast and without
servers. The in-memory IdP is a test double of the ``IdentityProvider`` protocol and its
token endpoint (an ``httpx.MockTransport``) accepts exactly the secrets the IdP holds.
"""

from __future__ import annotations

import base64
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
from rotator.audit import AuditLog
from rotator.config import ClientConfig, load_config
from rotator.engine import Adapters, Engine
from rotator.errors import IdpAccessDenied
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
