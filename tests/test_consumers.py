"""Retire when unused: the consumer registry, the retirement gate (fake clock), the client's
reports (counted) and the API route (through the service double)."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_api
from structlog.testing import capture_logs
from test_api import Api, _assert_problem
from test_client import Rig

import rotator.consumers as consumers_module
from rotator.client_report import ConsumerReporter
from rotator.config import ClientConfig, StoreTarget
from rotator.consumers import (
    ConsumerGate,
    ConsumerRegistry,
    ConsumerReport,
    consumer_fingerprint,
    consumer_key,
)
from rotator.errors import ConfigError
from rotator.interfaces import Rotation, State
from rotator.journal import SqliteJournal
from rotator.secrets import Secret

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
api = test_api.api  # the fixture
jwks = test_api.jwks
signing_key = test_api.signing_key


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def _client(**changes: Any) -> ClientConfig:
    base = ClientConfig(name="svc", idp="kc", client_id="svc", targets=(StoreTarget("s", "l"),),
                        token_endpoint=None, auth_method="client_secret_basic", scopes=(),
                        audience=None, resource=None, grace_period=3600.0, rotate_every=None,
                        verify_attempts=1, verify_timeout=1.0, tls_verify=True,
                        retire="when_unused", min_grace=300.0, consumers_seen_within=600.0)
    return replace(base, **changes)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    j = SqliteJournal(tmp_path / "state")
    yield j
    j.close()


def _promoted(journal: SqliteJournal) -> Rotation:
    journal.begin("r1", "svc", "overlap", "cli", None, T0)
    return journal.advance("r1", State.PROMOTED, T0, expected=State.STARTED,
                           retire_after=(T0 + timedelta(seconds=300)).isoformat())


class Gate:
    """A gate over a registry in ``tmp_path``, the current secret ``new``."""

    def __init__(self, tmp_path: Path, journal: SqliteJournal) -> None:
        self.clock = Clock()
        self.state_dir = tmp_path / "state"
        self.registry = ConsumerRegistry(self.state_dir)
        self.new, self.old = Secret(secrets.token_urlsafe(32)), Secret(secrets.token_urlsafe(32))
        self.told: list[list[str]] = []
        self.gate = ConsumerGate(self.registry, journal, lambda _c: self.new, clock=self.clock,
                                 retired_in_use=lambda _c, _r, old: self.told.append(
                                     [r.instance for r in old]))

    def report(self, instance: str, secret: Secret) -> None:
        fp = consumer_fingerprint(consumer_key(self.state_dir, "svc"), secret)
        self.registry.record("svc", ConsumerReport(instance, fp, self.clock()), keep_for=600)


class TestGate:
    """The old secret waits for every consumer seen within the window to report the new one,
    between min_grace and grace_period after promotion; past the upper bound it is retired
    and the consumers still on it are named once."""

    def test_other_clients_are_not_held(self, tmp_path: Path, journal: SqliteJournal) -> None:
        g = Gate(tmp_path, journal)
        g.report("a", g.old)
        assert g.gate.holds(_client(retire="after_grace"), _promoted(journal)) is None

    def test_waits_for_the_slow_consumer(self, tmp_path: Path, journal: SqliteJournal) -> None:
        g = Gate(tmp_path, journal)
        rotation = _promoted(journal)
        for name in ("a", "b", "slow"):
            g.report(name, g.old)
        g.clock.advance(seconds=301)
        g.report("a", g.new)
        g.report("b", g.new)
        held = g.gate.holds(_client(), rotation)
        assert held is not None and "1 consumer(s)" in held and "slow" in held
        assert g.old.reveal() not in held and g.new.reveal() not in held
        g.clock.advance(seconds=60)
        g.report("slow", g.new)
        assert g.gate.holds(_client(), rotation) is None
        assert g.told == []

    def test_a_consumer_not_seen_within_the_window_is_not_waited_for(
            self, tmp_path: Path, journal: SqliteJournal) -> None:
        g = Gate(tmp_path, journal)
        rotation = _promoted(journal)
        g.report("gone", g.old)
        g.clock.advance(seconds=601)
        g.report("a", g.new)
        assert g.gate.holds(_client(), rotation) is None

    def test_the_upper_bound_retires_and_names_who_is_left(
            self, tmp_path: Path, journal: SqliteJournal) -> None:
        g = Gate(tmp_path, journal)
        rotation = _promoted(journal)
        g.clock.advance(seconds=3599)
        g.report("a", g.new)
        g.report("stuck", g.old)
        assert g.gate.holds(_client(), rotation) is not None
        g.clock.advance(seconds=1)
        assert g.gate.holds(_client(), rotation) is None
        assert g.told == [["stuck"]]

    def test_status_learns_which_fingerprint_is_current(
            self, tmp_path: Path, journal: SqliteJournal) -> None:
        g = Gate(tmp_path, journal)
        rotation = _promoted(journal)
        g.clock.advance(seconds=300)
        g.report("a", g.old)
        g.gate.holds(_client(), rotation)
        new = consumer_fingerprint(consumer_key(g.state_dir, "svc"), g.new)
        assert g.registry.notes("svc")["current_fingerprint"] == new


class TestRegistry:
    """Reports survive a new registry (a restart) in a 0600 file, bounded by age and count."""

    def test_durable_private_and_bounded(self, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(consumers_module, "MAX_INSTANCES", 3)
        registry = ConsumerRegistry(tmp_path / "state")
        fp = "hmac-sha256:" + "0" * 32
        for i in range(5):
            registry.record("svc", ConsumerReport(f"i{i}", fp, T0 + timedelta(seconds=i)),
                            keep_for=600)
        path = tmp_path / "state" / "consumers.json"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "state" / "consumer-fingerprint.key").st_mode
                            if (tmp_path / "state" / "consumer-fingerprint.key").exists()
                            else 0o600) == 0o600
        again = ConsumerRegistry(tmp_path / "state")
        seen = again.seen("svc", within=600, now=T0 + timedelta(seconds=5))
        assert [r.instance for r in seen] == ["i2", "i3", "i4"]
        registry.record("svc", ConsumerReport("late", fp, T0 + timedelta(seconds=700)),
                        keep_for=600)
        assert [r.instance for r in again.seen("svc", within=600,
                                               now=T0 + timedelta(seconds=700))] == ["late"]
        assert len(json.loads(path.read_text())["clients"]["svc"]) == 1

    def test_refuses_what_is_not_a_fingerprint(self, tmp_path: Path) -> None:
        registry = ConsumerRegistry(tmp_path / "state")
        with pytest.raises(ValueError, match="not a consumer fingerprint"):
            registry.record("svc", ConsumerReport("a", "the-secret-itself", T0), keep_for=60)

    def test_the_key_differs_per_client_and_stays(self, tmp_path: Path) -> None:
        a = consumer_key(tmp_path / "state", "a")
        assert a != consumer_key(tmp_path / "state", "b")
        assert a == consumer_key(tmp_path / "state", "a")
        key_file = tmp_path / "state" / "consumer-fingerprint.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


class _Daemon:
    """A daemon's report route as an httpx transport: counts reports, can fail."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.fail = False
        self.headers: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers.get("authorization", ""))
        if self.fail:
            return httpx.Response(503)
        self.reports.append(json.loads(request.content))
        return httpx.Response(204)


class TestClientReports:
    """rotator.client reports at most once per token refresh, moves to a new CURRENT at its
    next refresh, and a failing report never fails the token fetch."""

    def _reporter(self, daemon: _Daemon, key: bytes, clock: Any) -> ConsumerReporter:
        return ConsumerReporter("http://127.0.0.1:1", "svc", Secret(secrets.token_urlsafe(24)),
                                key, instance="web-1", clock=clock,
                                http=httpx.Client(transport=httpx.MockTransport(daemon)))

    def test_once_per_refresh_and_the_new_secret_after_rotation(self, rig: Rig) -> None:
        daemon, key = _Daemon(), secrets.token_bytes(32)
        client = rig.client(reporter=self._reporter(daemon, key, rig.clock))
        for _ in range(20):
            client.token()
        assert len(daemon.reports) == 1 == len(rig.idp.requests)
        first = daemon.reports[0]["fingerprint"]
        assert first == consumer_fingerprint(key, Secret(rig.secret))
        rig.rotate(keep_old=True)
        rig.clock.now += 3600  # the token's refresh point passed
        for _ in range(20):
            client.token()
        assert len(daemon.reports) == 2 == len(rig.idp.requests)
        assert daemon.reports[1]["fingerprint"] == consumer_fingerprint(key, Secret(rig.secret))
        assert rig.idp.secrets_used[-1] == rig.secret  # moved without being refused
        text = json.dumps(daemon.reports)
        assert all(value not in text for value in rig.idp.everything_secret())

    def test_a_failing_daemon_does_not_fail_the_fetch(self, rig: Rig) -> None:
        daemon = _Daemon()
        daemon.fail = True
        reporter = self._reporter(daemon, secrets.token_bytes(32), rig.clock)
        rig.idp.expires_in = 20  # refreshed every 20 s: faster than the backoff
        client = rig.client(reporter=reporter)
        with capture_logs() as logs:
            for _ in range(5):  # refreshes at 0, 20, 40, 60, 80 s
                assert client.token()
                rig.clock.now += 20
        assert len(rig.idp.requests) == 5
        # reported at 0 s (then skipped 30 s) and 40 s (then skipped 60 s): backed off
        assert reporter.failed == 2 and len(daemon.headers) == 2
        assert [e["event"] for e in logs if e["event"].startswith("consumer_")] == [
            "consumer_report_failed"]  # logged once
        daemon.fail = False
        rig.clock.now += 600
        client.token()
        assert reporter.sent == 1 and len(daemon.reports) == 1

    def test_settings_from_the_environment(self, tmp_path: Path) -> None:
        assert ConsumerReporter.from_env("svc", {}) is None
        with pytest.raises(ConfigError) as err:
            ConsumerReporter.from_env("svc", {"ROTATOR_REPORT_URL": "http://daemon.example:8900"})
        text = str(err.value)
        assert "ROTATOR_REPORT_URL" in text and "ROTATOR_REPORT_TOKEN" in text \
            and "ROTATOR_REPORT_KEY" in text
        token_file = tmp_path / "t"
        token_file.write_text("x" * 24)
        token_file.chmod(0o644)
        with pytest.raises(ConfigError, match="chmod 600"):
            ConsumerReporter.from_env("svc", {"ROTATOR_REPORT_URL": "https://d:1",
                                              "ROTATOR_REPORT_TOKEN_FILE": str(token_file),
                                              "ROTATOR_REPORT_KEY": "00" * 32})
        token_file.chmod(0o600)
        reporter = ConsumerReporter.from_env("svc", {"ROTATOR_REPORT_URL": "https://d:1",
                                                     "ROTATOR_REPORT_TOKEN_FILE": str(token_file),
                                                     "ROTATOR_REPORT_KEY": "00" * 32})
        assert reporter is not None and reporter.url == "https://d:1/v1/clients/svc/consumers"
        reporter.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    for client in r.clients:
        client.close()


class TestReportRoute:
    """The route keeps a consumer's report, shows it on the client, refuses what is not a
    fingerprint, and echoes no secret."""

    def test_report_then_shown(self, api: Api) -> None:
        fp = "hmac-sha256:" + "cd34" * 8
        response = api.client.post("/v1/clients/client-001/consumers",
                                   headers=api.headers("consumer"),
                                   json={"instance": "web-1", "fingerprint": fp,
                                         "hostname": "host-a", "pid": 42})
        assert response.status_code == 204, response.text
        shown = api.client.get("/v1/clients/client-001", headers=api.headers("read")).json()
        [consumer] = shown["consumers"]
        assert consumer["instance"] == "web-1" and consumer["fingerprint"] == fp
        assert consumer["hostname"] == "host-a" and consumer["seen_at"]

    @pytest.mark.parametrize("field", ["instance", "fingerprint", "hostname"])
    def test_a_secret_sent_is_not_echoed(self, api: Api, field: str) -> None:
        value = api.secret.reveal()
        body = {"instance": "web-1", "fingerprint": "hmac-sha256:" + "cd34" * 8, field: value}
        response = api.client.post("/v1/clients/client-001/consumers",
                                   headers=api.headers("consumer"), json=body)
        if field == "fingerprint":  # not the shape of a fingerprint: refused
            _assert_problem(response, 422)
            assert api.service.calls == []
        else:  # a careless consumer may name itself with a secret: never shown (a random
            # secret that starts with "-" or "_" is not a name at all: refused)
            assert response.status_code == (204 if value[0].isalnum() else 422)
        shown = api.client.get("/v1/clients", headers=api.headers("admin"))
        for text in (response.text, shown.text, api.audit_stream.getvalue()):
            assert value not in text

    def test_unknown_client_and_extra_fields(self, api: Api) -> None:
        fp = "hmac-sha256:" + "cd34" * 8
        h = api.headers("consumer")
        _assert_problem(api.client.post("/v1/clients/nope/consumers", headers=h,
                                        json={"instance": "a", "fingerprint": fp}), 404)
        _assert_problem(api.client.post("/v1/clients/client-001/consumers", headers=h,
                                        json={"instance": "a", "fingerprint": fp,
                                              "secret": "x"}), 422)


class TestConfig:
    """retire, min_grace and consumers_seen_within are checked, each problem with file, key
    and reason, all at once."""

    def test_checked(self, tmp_path: Path) -> None:
        from test_daemon import load, write_config
        path = write_config(tmp_path, {
            "a": 'retire = "when_unused"\nmin_grace = "2h"\ngrace_period = "1h"\n'
                 'consumers_seen_within = "0s"',
            "b": 'retire = "whenever"'})
        with pytest.raises(ConfigError) as err:
            load(path)
        text = str(err.value)
        assert "clients.a.min_grace" in text and "grace_period" in text
        assert "clients.a.consumers_seen_within" in text
        assert "clients.b.retire" in text and "when_unused" in text
        assert str(path) in text

    def test_defaults(self, tmp_path: Path) -> None:
        from test_daemon import load, write_config
        config = load(write_config(tmp_path, {"a": 'retire = "when_unused"\nmin_grace = "5m"',
                                              "b": ""}))
        a, b = config.clients["a"], config.clients["b"]
        assert (a.retire, a.min_grace, a.consumers_seen_within) == ("when_unused", 300.0,
                                                                    3600.0)
        assert b.retire == "after_grace"


class TestRetiredInUseAlert:
    """When the upper bound retires a secret still in use, one audit event and one alert name
    the consumers still on it (never a secret), once per rotation."""

    def test_alert_once(self, tmp_path: Path, journal: SqliteJournal) -> None:
        from types import SimpleNamespace

        from hook_receiver import receiver
        from test_alerts import alert_config

        from rotator.audit import AuditLog
        from rotator.engine.consumer_gate import consumer_gate
        from rotator.hooks.alerts import Alerter
        from rotator.interfaces import Credentials, Stage, StoredCredentials

        g = Gate(tmp_path, journal)
        audit_file = tmp_path / "audit.jsonl"
        audit = AuditLog(Secret("a" * 40), file=audit_file)
        with receiver() as rx:
            engine = SimpleNamespace(
                config=SimpleNamespace(state_dir=g.state_dir), journal=journal, clock=g.clock,
                audit=audit, alerter=Alerter(alert_config(rx.url), g.state_dir, audit,
                                             clock=g.clock),
                _read=lambda _c, stage: StoredCredentials(Credentials("svc", g.new), stage)
                if stage is Stage.CURRENT else None)
            gate = consumer_gate(engine)  # type: ignore[arg-type]
            rotation = _promoted(journal)
            g.clock.advance(seconds=3599)
            g.report("stuck", g.old)
            g.report("fine", g.new)
            assert gate.holds(_client(), rotation) is not None
            assert rx.requests == []
            g.clock.advance(seconds=1)
            assert gate.holds(_client(), rotation) is None
            assert gate.holds(_client(), rotation) is None  # asked again: not sent again
            [alert] = rx.requests
        audit.close()
        body = alert.json()
        assert body["condition"] == "retired_while_in_use" and body["status"] == "firing"
        assert body["detail"]["consumers"] == ["stuck"]
        lines = [line for line in audit_file.read_text().splitlines()
                 if "retired_while_in_use" in line and "alert_sent" not in line]
        assert len(lines) == 1 and "stuck" in lines[0]
        text = audit_file.read_text() + alert.body.decode()
        assert g.old.reveal() not in text and g.new.reveal() not in text


class TestDaemonAsksAgainOnReport:
    """A consumer's report has a retirement held for the consumers asked again at once (not
    after HELD_RETRY), and only for a when_unused client."""

    @pytest.mark.parametrize(("retire", "asked"), [("when_unused", 3), ("after_grace", 2)])
    def test_report_wakes_the_held_retirement(self, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              retire: str, asked: int) -> None:
        import test_daemon
        from test_daemon import RecordingWorker, make

        from rotator.engine import Outcome

        def held(self: RecordingWorker, name: str, *, now: bool = False) -> Outcome:
            with self.world.lock:
                self.world.calls.append(("retire", name, self.actor))
            rotation = self.journal.open_rotation(name)
            return Outcome(name, True, "held", "1 consumer(s) still use the old secret",
                           rotation.id if rotation else None)

        monkeypatch.setattr(test_daemon.RecordingWorker, "retire", held)
        h = make(tmp_path, {"a": f'rotate_every = "1h"\ngrace_period = "10m"\n'
                                 f'retire = "{retire}"'})
        h.service.prepare()
        h.clock.advance(hours=1)
        h.service.tick()
        h.clock.advance(minutes=10)
        h.service.tick()
        h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a"]
        h.service.report_consumer("a", instance="web-1", fingerprint="hmac-sha256:" + "0" * 32)
        h.service.tick()
        h.service.report_consumer("a", instance="web-1", fingerprint="hmac-sha256:" + "1" * 32)
        assert len(h.kinds()) == asked
        [shown] = h.service.client("a").consumers
        assert shown.instance == "web-1" and shown.fingerprint.endswith("1" * 32)


class TestEngine:
    """The engine keeps a when_unused client's old secret min_grace after promotion, then
    while a consumer reports it, and retires it once the consumer reported the new one;
    ``retire --now`` ends min_grace but not the wait for consumers."""

    TOML = """
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
retire = "when_unused"
min_grace = "5m"
consumers_seen_within = "30m"
verify_attempts = 2
stores = [{store = "env", prefix = "APP"}]
"""

    def test_min_grace_then_consumers(self, tmp_path: Path) -> None:
        from test_engine import CAPS, engine_with, make_rig

        with make_rig(tmp_path, CAPS["generated-many"]) as rig, \
                engine_with(rig, self.TOML) as engine:
            state_dir = engine.config.state_dir
            key = consumer_key(state_dir, "app")
            registry = ConsumerRegistry(state_dir)

            def report(instance: str) -> None:
                value = Secret(rig.env()["APP_CLIENT_SECRET"])
                registry.record("app", ConsumerReport(instance, consumer_fingerprint(
                    key, value), rig.clock()), keep_for=1800)

            report("web-1")  # on the old secret
            promoted = engine.rotate("app")
            assert promoted.ok and promoted.state == "promoted"
            rotation = engine.journal.open_rotation("app")
            assert rotation is not None and rotation.retire_after == rig.clock() + timedelta(
                minutes=5)
            assert engine.retire("app").action == "waiting"
            rig.clock.now += timedelta(minutes=5)
            held = engine.retire("app")
            assert held.action == "held" and "web-1" in held.message
            assert len(rig.idp.active) == 2
            report("web-1")  # moved to the new secret
            retired = engine.retire("app")
            assert retired.action == "retired", retired.message
            assert len(rig.idp.active) == 1

            rig.clock.now += timedelta(hours=2)
            report("web-2")
            assert engine.rotate("app").state == "promoted"
            stuck = engine.retire("app", now=True)  # ends min_grace, not the wait
            assert stuck.action == "held" and "web-2" in stuck.message


class TestReportWhileTheGateIsAsked:
    """A report that arrives while a job asks the gate has the retirement asked again when
    the job ends, not HELD_RETRY later."""

    def test_report_during_the_job(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
        import test_daemon
        from test_daemon import RecordingWorker, make

        from rotator.engine import Outcome

        calls = {"n": 0}

        def held(self: RecordingWorker, name: str, *, now: bool = False) -> Outcome:
            with self.world.lock:
                self.world.calls.append(("retire", name, self.actor))
            calls["n"] += 1
            if calls["n"] == 1:  # the report arrives while this job runs
                h.service.report_consumer("a", instance="web-1",
                                          fingerprint="hmac-sha256:" + "0" * 32)
            rotation = self.journal.open_rotation(name)
            return Outcome(name, True, "held", "1 consumer(s) still use the old secret",
                           rotation.id if rotation else None)

        monkeypatch.setattr(test_daemon.RecordingWorker, "retire", held)
        h = make(tmp_path, {"a": 'rotate_every = "1h"\ngrace_period = "10m"\n'
                                 'retire = "when_unused"'})
        h.service.prepare()
        h.clock.advance(hours=1)
        h.service.tick()
        h.clock.advance(minutes=10)
        h.service.tick()
        h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a", "retire:a"]
        h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a", "retire:a"]  # then HELD_RETRY again


class TestDamagedReportFile:
    """A report the daemon cannot keep is refused as unavailable (503), never a 500, and
    the client's answer still comes without its consumers."""

    def test_unavailable(self, tmp_path: Path) -> None:
        from test_daemon import make

        from rotator.daemon.model import ServiceUnavailable

        h = make(tmp_path, {"a": 'retire = "when_unused"'})
        h.service.prepare()
        path = h.config.state_dir / "consumers.json"
        path.write_text("{not json")
        path.chmod(0o600)
        with pytest.raises(ServiceUnavailable, match="cannot keep the report"):
            h.service.report_consumer("a", instance="web-1",
                                      fingerprint="hmac-sha256:" + "0" * 32)
        assert h.service.client("a").consumers == ()
