"""Alerts (rotator.hooks.alerts): each condition is sent once, again after its period, and
resolved once when it clears; the state survives a new process; a failed send is retried."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hook_receiver import Receiver, receiver

from rotator.audit import AuditLog
from rotator.hooks.alerts import CONDITIONS, WITHOUT_BLOCKED, Alerter
from rotator.hooks.config import AlertConfig
from rotator.hooks.kinds import SIGNATURE_HEADER, check_signature
from rotator.interfaces import HookRun, State
from rotator.journal import SqliteJournal
from rotator.secrets import Secret

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "k" * 40
CLIENTS = {name: SimpleNamespace(name=name, max_age=86400.0 if name == "c" else None,
                                 hooks=[SimpleNamespace(name="reload")] if name == "e" else [])
           for name in "abcde"}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def alert_config(url: str, *, format: str = "json") -> AlertConfig:
    return AlertConfig(url=Secret(url), format=format, key=Secret(KEY), repeat=4 * 3600.0,
                       open_longer_than=3600.0, check_every=60.0, timeout=5.0,
                       tls_verify=True)


def finish(journal: SqliteJournal, rid: str, client: str, at: datetime,
           state: State = State.COMPLETED, error: str | None = None) -> None:
    journal.begin(rid, client, "overlap", "cli", "fp-old", at)
    journal.advance(rid, state, at, expected=State.STARTED, error=error)


@pytest.fixture
def env(tmp_path: Path) -> Any:
    journal = SqliteJournal(tmp_path / "state")
    audit = AuditLog(Secret("a" * 40), file=tmp_path / "audit.jsonl")
    clock = Clock()
    # Every condition holds two days after T0.
    finish(journal, "r-a-1", "a", T0, State.FAILED, "the IdP said no")
    journal.begin("r-b-1", "b", "overlap", "cli", "fp-old", T0)
    finish(journal, "r-c-1", "c", T0)
    journal.record_hook_run(HookRun("r-e-1", "e", "promoted", "reload", "failed", 3, True, T0,
                                    T0 + timedelta(minutes=1), "exited with status 3"))
    clock.now = T0 + timedelta(days=2)
    yield SimpleNamespace(journal=journal, audit=audit, clock=clock, state=tmp_path / "state",
                          audit_file=tmp_path / "audit.jsonl")
    journal.close()
    audit.close()


def check(env: Any, rx: Receiver, *, blocked: dict[str, str] | None = None,
          judged: tuple[str, ...] = CONDITIONS, format: str = "json") -> list[str]:
    # A new Alerter each time: what was sent lives in the state directory, not in memory.
    alerter = Alerter(alert_config(rx.url, format=format), env.state, env.audit,
                      clock=env.clock)
    return sorted(alerter.check(CLIENTS, env.journal, blocked=blocked, judged=judged))


FIRING = sorted(f"firing:{key}" for key in (
    "rotation_failed:a", "rotation_open_too_long:b", "secret_too_old:c", "client_blocked:d",
    "hook_failed:e:reload"))


class TestConditions:
    """Each condition fires once, fires again after the repeat period, and resolves once."""

    def test_fire_repeat_resolve(self, env: Any) -> None:
        with receiver() as rx:
            assert check(env, rx, blocked={"d": "a foreign pending secret"}) == FIRING
            assert check(env, rx, blocked={"d": "a foreign pending secret"}) == []
            env.clock.now += timedelta(hours=3)
            assert check(env, rx, blocked={"d": "a foreign pending secret"}) == []
            env.clock.now += timedelta(hours=1)
            assert check(env, rx, blocked={"d": "a foreign pending secret"}) == FIRING
            assert len(rx.requests) == 10

            now = env.clock.now
            finish(env.journal, "r-a-2", "a", now)
            env.journal.advance("r-b-1", State.COMPLETED, now, expected=State.STARTED)
            finish(env.journal, "r-c-2", "c", now)
            env.journal.record_hook_run(HookRun("r-e-1", "e", "promoted", "reload",
                                                "succeeded", 4, True, now))
            resolved = [f.replace("firing:", "resolved:") for f in FIRING]
            assert check(env, rx, blocked={}) == sorted(resolved)
            assert check(env, rx, blocked={}) == []
            bodies = [r.json() for r in rx.requests]
        assert [b["status"] for b in bodies] == ["firing"] * 10 + ["resolved"] * 5
        first = {b["key"]: b for b in bodies[:5]}
        assert first["rotation_failed:a"]["detail"]["error"] == "the IdP said no"
        assert first["client_blocked:d"]["summary"] == "d is blocked: a foreign pending secret"
        assert first["hook_failed:e:reload"]["detail"]["required"] is True
        # "since" is when the condition was first sent, kept across repeats and resolution.
        assert {b["since"] for b in bodies if b["key"] == "secret_too_old:c"} == {
            (T0 + timedelta(days=2)).isoformat()}

    def test_signed_json_and_slack_text(self, env: Any) -> None:
        with receiver() as rx:
            check(env, rx, judged=("rotation_failed",))
            [request] = rx.requests
            assert check_signature(KEY.encode(), request.headers[SIGNATURE_HEADER],
                                   request.body, now=time.time())
            assert not check_signature(b"another key" * 4, request.headers[SIGNATURE_HEADER],
                                       request.body, now=time.time())
        with receiver() as slack:
            env.clock.now += timedelta(hours=5)
            check(env, slack, judged=("rotation_failed",), format="slack")
            [request] = slack.requests
            assert set(request.json()) == {"text"}
            assert "rotation_failed (a)" in request.json()["text"]
            assert SIGNATURE_HEADER not in request.headers


class TestDelivery:
    """A webhook that fails is tried again at the next check; nothing is recorded as sent."""

    def test_failed_send_is_retried(self, env: Any) -> None:
        with receiver(statuses=[500]) as rx:
            assert check(env, rx, judged=("rotation_failed",)) == []
            assert check(env, rx, judged=("rotation_failed",)) == ["firing:rotation_failed:a"]
        events = [line for line in env.audit_file.read_text().splitlines()
                  if "alert_sent" in line]
        assert len(events) == 2
        assert '"failure"' in events[0] and '"success"' in events[1]

    def test_state_file_is_private(self, env: Any) -> None:
        with receiver() as rx:
            check(env, rx)
        assert (env.state / "alerts.json").stat().st_mode & 0o777 == 0o600


class TestScope:
    """The CLI, which cannot know whether the daemon holds a client as blocked, never
    resolves a client_blocked alert, and never touches clients it did not check."""

    def test_cli_leaves_blocked_alone(self, env: Any) -> None:
        with receiver() as rx:
            check(env, rx, blocked={"d": "a foreign pending secret"})
            assert check(env, rx, judged=WITHOUT_BLOCKED) == []
            alerter = Alerter(alert_config(rx.url), env.state, env.audit, clock=env.clock)
            assert alerter.check({"a": CLIENTS["a"]}, env.journal, blocked={}) == []
            assert len(rx.requests) == 5


class TestRemovedHook:
    """A failed run of a hook no longer configured raises no alert."""

    def test_no_alert(self, env: Any) -> None:
        clients = {"e": SimpleNamespace(name="e", max_age=None, hooks=[])}
        with receiver() as rx:
            alerter = Alerter(alert_config(rx.url), env.state, env.audit, clock=env.clock)
            assert alerter.check(clients, env.journal) == []


def _expiring_success(journal: SqliteJournal, rid: str, client: str, at: datetime,
                      expires_at: datetime) -> None:
    journal.begin(rid, client, "overlap", "cli", "fp-old", at)
    for prev, state, fields in (
            (State.STARTED, State.CREATED, {"expires_at": expires_at.isoformat()}),
            (State.CREATED, State.PROMOTED, {}), (State.PROMOTED, State.COMPLETED, {})):
        journal.advance(rid, state, at, expected=prev, **fields)


class TestSecretExpiring:
    """A secret the IdP expires is alerted on once within ``expiring_within`` of its expiry,
    again after ``repeat`` (saying "expired" once past it), and resolved by a rotation to a
    secret that does not expire soon."""

    def test_fire_repeat_expired_resolve(self, tmp_path: Path) -> None:
        journal = SqliteJournal(tmp_path / "state")
        audit = AuditLog(Secret("a" * 40), file=tmp_path / "audit.jsonl")
        clock = Clock()
        clients = {"x": SimpleNamespace(name="x", max_age=None, hooks=[])}
        _expiring_success(journal, "r-x-1", "x", T0, T0 + timedelta(days=20))
        try:
            with receiver() as rx:
                def run() -> list[str]:
                    return Alerter(alert_config(rx.url), tmp_path / "state", audit,
                                   clock=clock).check(clients, journal)
                clock.now = T0 + timedelta(days=5)  # 15 days left: quiet
                assert run() == []
                clock.now = T0 + timedelta(days=7)  # 13 days left
                assert run() == ["firing:secret_expiring:x"]
                assert run() == []
                clock.now = T0 + timedelta(days=21)  # past the expiry, and past repeat
                assert run() == ["firing:secret_expiring:x"]
                _expiring_success(journal, "r-x-2", "x", clock.now, T0 + timedelta(days=300))
                assert run() == ["resolved:secret_expiring:x"]
                assert run() == []
                bodies = [r.json() for r in rx.requests]
        finally:
            journal.close()
            audit.close()
        assert [(b["status"], b["detail"].get("expired")) for b in bodies] == [
            ("firing", False), ("firing", True), ("resolved", None)]
        assert "expires at the IdP at 2026-01-21T00:00:00+00:00, in 13.0 days" in (
            bodies[0]["summary"])
        assert "expired at the IdP" in bodies[1]["summary"]

    def test_window_is_a_checked_setting(self, tmp_path: Path) -> None:
        from rotator.hooks.config import parse_alerts

        problems: list[tuple[str, str]] = []
        raw = {"url_env": "ALERT_URL", "expiring_within": "3d"}
        alerts = parse_alerts(raw, lambda k, r: problems.append((k, r)), base=tmp_path,
                              environ={"ALERT_URL": "https://alerts.example.com/x"},
                              resolve=True, url_problem=lambda _u, _i: None)
        assert problems == [] and alerts is not None and alerts.expiring_within == 3 * 86400
        defaulted = parse_alerts({"url_env": "ALERT_URL"}, lambda k, r: problems.append((k, r)),
                                 base=tmp_path, environ={"ALERT_URL": "https://a.example"},
                                 resolve=True, url_problem=lambda _u, _i: None)
        assert defaulted is not None and defaulted.expiring_within == 14 * 86400
        parse_alerts({**raw, "expiring_within": "soon"}, lambda k, r: problems.append((k, r)),
                     base=tmp_path, environ={"ALERT_URL": "https://alerts.example.com/x"},
                     resolve=True, url_problem=lambda _u, _i: None)
        assert [k for k, _r in problems] == ["expiring_within"]
