"""Hooks after promote and retire, end to end on a real Keycloak and OpenBao.

Command hooks run ``tests/hook_probe.py``; the HTTP hook POSTs to a receiver on 127.0.0.1;
systemd is not running here, so the systemd hook runs a fake ``systemctl`` put first on PATH
that records its arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hook_receiver import receiver
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao

from rotator.config import load_config
from rotator.errors import ConfigError
from rotator.hooks.kinds import SIGNATURE_HEADER, check_signature

TESTS = Path(__file__).parent
PROBE = TESTS / "hook_probe.py"
KEY = "hook-signing-key-" + "x" * 32


def _command_hook(out: Path, *, name: str = "probe", on: str = '["promoted", "retired"]',
                  extra: str = "", ready: Path | None = None) -> str:
    argv = [sys.executable, str(PROBE), str(out), *([str(ready)] if ready else [])]
    return f"""
[[clients.svc.hooks]]
kind = "command"
name = "{name}"
argv = {json.dumps(argv)}
on = {on}
{extra}
"""


def _runs(s: Scenario) -> list[tuple[str, str, str, str, int]]:
    db = sqlite3.connect(s.root / "state" / "journal.sqlite3")
    try:
        return db.execute("SELECT rotation_id, stage, hook, status, attempts FROM hook_runs "
                          "ORDER BY rowid").fetchall()
    finally:
        db.close()


def _envs(out: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


@pytest.fixture
def scenario(kc_realm: KeycloakRealm, bao_server: OpenBao,
             tmp_path: Path) -> Callable[..., Scenario]:
    def make(hooks: str, **kwargs: Any) -> Scenario:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, **kwargs)
        s.config.write_text(s.config.read_text() + hooks)
        s.seen_secrets.add(KEY)
        return s
    return make


def _no_leak(s: Scenario, *texts: str) -> None:
    s.remember()
    found = [t[:80] for t in texts for secret in s.seen_secrets
             if len(secret) >= 8 and secret in t]
    assert found == []
    assert s.leaks() == []


class TestConfig:
    """Hook and alert tables are checked with the rest: every problem named at once."""

    def test_every_problem(self, tmp_path: Path, kc_realm: KeycloakRealm,
                           bao_server: OpenBao) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        s.config.write_text(s.config.read_text() + """
[[defaults.hooks]]
kind = "systemd"
unit = "--now"

[[clients.svc.hooks]]
kind = "http"
url = "http://deploy.example.com/hook"
argv = ["/bin/true"]

[[clients.svc.hooks]]
kind = "command"
on = ["rotated"]

[[clients.svc.hooks]]
kind = "ftp"

[[clients.svc.hooks]]
kind = "systemd"
unit = "app.service"
on = ["retired"]
required = true

[alerts]
url_env = "NO_SUCH_VARIABLE_SET"
repeat = "0s"
""")
        with pytest.raises(ConfigError) as info:
            load_config(s.config, environ={})
        text = str(info.value)
        for key, reason in [
            ("defaults.hooks[0].unit", "not a systemd unit name"),
            ("clients.svc.hooks[0].url", "cleartext"),
            ("clients.svc.hooks[0].argv", "a http hook does not take"),
            ("clients.svc.hooks[0].key_env", "required"),
            ("clients.svc.hooks[1].on", "must list promoted, retired or both"),
            ("clients.svc.hooks[1].argv", "required"),
            ("clients.svc.hooks[2].kind", "must be one of"),
            ("clients.svc.hooks[3].required", "needs on = [\"promoted\""),
            ("alerts.url_env", "NO_SUCH_VARIABLE_SET is not set"),
            ("alerts.repeat", "longer than zero"),
        ]:
            assert f"{key}: {reason}" in text or (key in text and reason in text), (key, text)

    def test_defaults_apply_to_every_client(self, tmp_path: Path, kc_realm: KeycloakRealm,
                                            bao_server: OpenBao) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True)
        s.config.write_text(s.config.read_text() + """
[[defaults.hooks]]
kind = "systemd"
unit = "app@1.service"
""" + _command_hook(tmp_path / "out"))
        client = load_config(s.config).clients["svc"]
        assert [(h.name, h.kind) for h in client.hooks] == [("systemd-1", "systemd"),
                                                           ("probe", "command")]


class TestCommandHook:
    """A command hook gets the event as ROTATOR_* variables and no secret, once per stage."""

    def test_env_and_once_per_stage(self, scenario: Callable[..., Scenario],
                                    tmp_path: Path) -> None:
        out = tmp_path / "hook.out"
        s = scenario(_command_hook(out))
        os.environ["ROTATOR_TEST_PARENT_ONLY"] = "must-not-pass"
        try:
            result = s.cli("rotate", "svc")
        finally:
            del os.environ["ROTATOR_TEST_PARENT_ONLY"]
        assert result.code == 0, result.out + result.err
        envs = _envs(out)
        assert [e["ROTATOR_STAGE"] for e in envs] == ["promoted", "retired"]
        first = envs[0]
        assert first["ROTATOR_CLIENT"] == "svc"
        assert first["ROTATOR_CLIENT_ID"] == s.client_id
        assert first["ROTATOR_ROTATION_ID"].startswith("r-")
        assert first["ROTATOR_NEW_FINGERPRINT"].startswith("hmac-sha256:")
        assert first["ROTATOR_EVENT_ID"] == f"{first['ROTATOR_ROTATION_ID']}.promoted.probe"
        # Only a minimal environment: rotator's own (keys, tokens) stays behind.
        assert "ROTATOR_TEST_PARENT_ONLY" not in first
        assert set(first) - {"PATH", "HOME", "LANG", "LC_ALL", "TZ"} <= {
            k for k in first if k.startswith("ROTATOR_")}
        assert [r[1:] for r in _runs(s)] == [("promoted", "probe", "succeeded", 1),
                                             ("retired", "probe", "succeeded", 1)]
        audit = (s.root / "audit.jsonl").read_text()
        assert audit.count('"action":"hook_succeeded"') == 2
        _no_leak(s, out.read_text())


class TestCommandHookCrash:
    """A hook runs once per rotation even when rotator is killed around it."""

    @pytest.mark.parametrize(("mode", "target"), [
        ("advance", "promoted"), ("event", "hook_succeeded"), ("advance", "completed")])
    def test_once_across_sigkill(self, scenario: Callable[..., Scenario], tmp_path: Path,
                                 mode: str, target: str) -> None:
        out = tmp_path / "hook.out"
        s = scenario(_command_hook(out, on='["promoted"]'))
        crashed = s.subprocess("rotate", "svc", crash=(mode, target))
        assert crashed.code == -9, crashed.out + crashed.err
        again = s.subprocess("retire", "svc")
        assert again.code == 0, again.out + again.err
        assert s.kc_rotated() is None  # the rotation finished
        rotation_ids = [e["ROTATOR_ROTATION_ID"] for e in _envs(out)]
        assert len(rotation_ids) == 1, rotation_ids
        assert [r[1:4] for r in _runs(s)] == [("promoted", "probe", "succeeded")]
        _no_leak(s, out.read_text())


class TestHttpHook:
    """An HTTP hook POSTs a signed event, retrying with backoff until the receiver accepts."""

    def test_signed_and_retried(self, scenario: Callable[..., Scenario],
                                tmp_path: Path) -> None:
        (tmp_path / "hook.key").write_text(KEY)
        (tmp_path / "hook.key").chmod(0o600)
        with receiver(statuses=[503, 500], key=KEY.encode()) as rx:
            s = scenario(f"""
[[clients.svc.hooks]]
kind = "http"
name = "rollout"
url = "{rx.url}"
key_file = "hook.key"
on = ["promoted"]
attempts = 3
backoff = "10ms"
""")
            result = s.cli("rotate", "svc")
        assert result.code == 0, result.out + result.err
        # The receiver answers 401 to a bad signature: every attempt was signed.
        assert [r.status for r in rx.requests] == [503, 500, 200]
        event = rx.requests[-1].json()
        assert event["type"] == "rotator.hook" and event["stage"] == "promoted"
        assert event["client"] == "svc" and event["attempt"] == 3
        assert event["event_id"] == rx.requests[0].json()["event_id"]
        assert [r[1:] for r in _runs(s)] == [("promoted", "rollout", "succeeded", 3)]
        _no_leak(s, *(r.body.decode() for r in rx.requests),
                 *(json.dumps(r.headers) for r in rx.requests))


class TestSystemdHook:
    """A systemd hook runs `systemctl reload -- UNIT` (a fake systemctl here: no systemd)."""

    def test_reload(self, scenario: Callable[..., Scenario], tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
        bindir = tmp_path / "bin"
        bindir.mkdir()
        calls = tmp_path / "systemctl.calls"
        fake = bindir / "systemctl"
        fake.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
        s = scenario("""
[[clients.svc.hooks]]
kind = "systemd"
unit = "myapp.service"
""")
        result = s.cli("rotate", "svc")
        assert result.code == 0, result.out + result.err
        assert calls.read_text().splitlines() == ["reload -- myapp.service"]


class TestRequiredHook:
    """A required hook that fails keeps the old secret valid; once it succeeds, the old
    secret is retired; meanwhile its failure is audited and alerted, then resolved."""

    def test_holds_retirement(self, scenario: Callable[..., Scenario],
                              tmp_path: Path) -> None:
        out, ready = tmp_path / "hook.out", tmp_path / "ready"
        url_file = tmp_path / "alerts.url"
        with receiver() as rx:
            url_file.write_text(rx.url)
            url_file.chmod(0o600)
            s = scenario(_command_hook(out, on='["promoted"]', ready=ready,
                                       extra='required = true\nattempts = 2\n'
                                             'backoff = "10ms"') + """
[alerts]
url_file = "alerts.url"
""")
            old = s.primary_current()
            first = s.cli("rotate", "svc")
            assert first.code == 0, first.out + first.err
            assert "required hook(s) probe" in first.out + first.err
            assert s.works(old), "the old secret was retired although the hook failed"
            assert s.kc_rotated() == old
            assert s.works(s.primary_current())
            assert [r[3:] for r in _runs(s)] == [("failed", 2)]

            held = s.cli("retire", "svc")
            assert "required hook(s) probe" in held.out + held.err
            assert s.works(old)

            ready.touch()
            done = s.cli("retire", "svc")
            assert done.code == 0, done.out + done.err
            assert not s.works(old)
            assert s.kc_rotated() is None
            assert [r[3:] for r in _runs(s)] == [("succeeded", 5)]
            alerts = [r.json() for r in rx.requests]
        assert [(a["status"], a["condition"]) for a in alerts] == [
            ("firing", "hook_failed"), ("resolved", "hook_failed")]
        audit = (s.root / "audit.jsonl").read_text()
        assert audit.count('"action":"hook_failed"') == 2
        assert audit.count('"action":"hook_succeeded"') == 1
        assert audit.count('"action":"alert_sent"') == 2
        _no_leak(s, out.read_text(), *(r.body.decode() for r in rx.requests))


@pytest.mark.server
@pytest.mark.slow
class TestDaemonHooks:
    """rotator run runs a client's hooks after promote and after retire, once each."""

    def test_scheduled_rotation(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                tmp_path: Path) -> None:
        out = tmp_path / "hook.out"
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="2s",
                            extra_client='rotate_every = "5s"')
        s.config.write_text(s.config.read_text() + _command_hook(out))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        code = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"
        argv = [sys.executable, "-c", code, "run", "-c", str(s.config)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=TESTS.parent)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len(_envs(out)) < 2:
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=60)
        s.outputs += [stdout, stderr]
        seen = [(e["ROTATOR_ROTATION_ID"], e["ROTATOR_STAGE"]) for e in _envs(out)]
        first = seen[0][0] if seen else None
        db = s.root / "state" / "journal.sqlite3"
        rows: Any = "no journal"
        if db.exists():
            with contextlib.closing(sqlite3.connect(db)) as conn:
                rows = conn.execute("SELECT id, state, started_at, error FROM rotations"
                                    ).fetchall()
        assert [stage for rid, stage in seen if rid == first] == ["promoted", "retired"], \
            f"{stderr[-2000:]}\njournal: {rows}"
        assert len(seen) == len(set(seen)), "a hook ran twice for one rotation and stage"
        assert [r[1:4] for r in _runs(s) if r[0] == first] == [
            ("promoted", "probe", "succeeded"), ("retired", "probe", "succeeded")]
        _no_leak(s, out.read_text())


class TestBadSignature:
    """A receiver holding another key refuses the event; the hook fails and says so."""

    def test_wrong_key(self, scenario: Callable[..., Scenario], tmp_path: Path) -> None:
        (tmp_path / "hook.key").write_text(KEY)
        (tmp_path / "hook.key").chmod(0o600)
        with receiver(key=b"another-key" * 4) as rx:
            s = scenario(f"""
[[clients.svc.hooks]]
kind = "http"
url = "{rx.url}"
key_file = "hook.key"
attempts = 1
""")
            result = s.cli("rotate", "svc")
        assert result.code == 0, result.out + result.err  # the rotation stands
        assert [r.status for r in rx.requests] == [401]
        assert [r[3:] for r in _runs(s)] == [("failed", 1)]
        audit = (s.root / "audit.jsonl").read_text()
        assert "answered 401" in audit
        assert not check_signature(b"another-key" * 4, rx.requests[0].headers[SIGNATURE_HEADER],
                                   rx.requests[0].body, now=time.time())
