"""The daemon's service and process, driven with a controllable clock and a recording worker.

The worker stands in for the engine (whose own tests run against real servers) and writes
the real journal the way the engine does, so every fact the daemon reads is real. The
end-to-end class at the bottom runs ``rotator run`` against Keycloak and OpenBao.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from rotation_env import TESTS, KeycloakRealm, Scenario
from servers import OpenBao

from rotator.config import Config, load_config
from rotator.daemon.model import ClientState, Condition, ServiceUnavailable, UnknownClient
from rotator.daemon.process import Daemon, DaemonRunning, instance_lock
from rotator.daemon.records import ClientRecord
from rotator.daemon.service import Service
from rotator.daemon.workers import SHUTTING_DOWN, StoppableJournal
from rotator.engine import Outcome
from rotator.errors import IdpUnavailable, RotatorError
from rotator.interfaces import IdentityProvider, Stage
from rotator.journal import Journal, State, new_rotation_id

T0 = datetime(2024, 5, 6, 12, tzinfo=UTC)
#: The IdP admin secret these configurations name but never use. Long: a one-character
#: secret would be masked as a word in every later test's redaction ("&x=1").
UNUSED_ADMIN_SECRET = "unused-" + secrets.token_hex(16)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class Throttled(IdpUnavailable):
    def __init__(self, retry_after: float) -> None:
        super().__init__("429 Too Many Requests")
        self.retry_after = retry_after


class FakeIdp:
    name = "kc"

    def __init__(self, world: World) -> None:
        self.world = world

    def create_secret(self, client_id: str) -> None:
        if self.world.throttle:
            raise Throttled(self.world.throttle.pop(0))


@dataclass
class World:
    """What the recording worker does and did."""

    clock: Clock
    grace: float = 600.0
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, client, actor)
    fail: dict[str, list[str]] = field(default_factory=dict)  # client -> messages to fail with
    throttle: list[float] = field(default_factory=list)
    hold: threading.Event | None = None  # pause after CREATED until set
    reached: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RecordingWorker:
    """Writes the journal like the engine's overlap family: STARTED..PROMOTED, COMPLETED."""

    def __init__(self, world: World, journal: Journal, actor: str,
                 idp: IdentityProvider) -> None:
        self.world, self.journal, self.actor, self.idp = world, journal, actor, idp

    def rotate(self, name: str, *, dry_run: bool = False,
               abandon_pending: bool = False, rotation_id: str | None = None) -> Outcome:
        with self.world.lock:
            self.world.calls.append(("rotate", name, self.actor))
        open_rotation = self.journal.open_rotation(name)
        if open_rotation is not None:
            return self._drive(name, open_rotation.id)
        failures = self.world.fail.get(name)
        if failures:
            return Outcome(name, False, "failed", failures.pop(0))
        try:
            self.idp.create_secret(name)  # type: ignore[call-arg]
        except RotatorError as exc:
            return Outcome(name, False, "failed", str(exc))
        rotation = self.journal.begin(rotation_id or new_rotation_id(), name, "overlap",
                                      self.actor, "fp", self.world.clock())
        return self._drive(name, rotation.id)

    def retire(self, name: str, *, now: bool = False) -> Outcome:
        with self.world.lock:
            self.world.calls.append(("retire", name, self.actor))
        rotation = self.journal.open_rotation(name)
        if rotation is None:
            return Outcome(name, True, "nothing", "nothing to retire")
        if rotation.awaiting_retirement:
            if rotation.retire_after and rotation.retire_after > self.world.clock() and not now:
                return Outcome(name, True, "waiting", "grace period", rotation.id)
            self.journal.advance(rotation.id, State.COMPLETED, self.world.clock(),
                                 expected=rotation.state)
            return Outcome(name, True, "retired", "old secret retired", rotation.id)
        return self._drive(name, rotation.id)

    def verify(self, name: str, stage: Stage = Stage.CURRENT) -> Outcome:
        return Outcome(name, True, "verified", "ok", details={"x": {"ok": True}})

    def _drive(self, name: str, rotation_id: str) -> Outcome:
        clock = self.world.clock
        try:
            state = self.journal.get(rotation_id).state
            if state is State.STARTED:
                state = self.journal.advance(rotation_id, State.CREATED, clock(),
                                             expected=state).state
                if self.world.hold is not None:
                    self.world.reached.set()
                    self.world.hold.wait(30)
            if state is State.CREATED:
                state = self.journal.advance(rotation_id, State.VERIFIED, clock(),
                                             expected=state).state
            if state is State.VERIFIED:
                retire = (clock() + timedelta(seconds=self.world.grace)).isoformat()
                self.journal.advance(rotation_id, State.PROMOTED, clock(), expected=state,
                                     retire_after=retire)
        except RotatorError as exc:  # as the engine does: record, report interrupted
            current = self.journal.get(rotation_id).state
            self.journal.advance(rotation_id, current, clock(), expected=current,
                                 error=str(exc))
            return Outcome(name, False, "interrupted", str(exc), rotation_id)
        return Outcome(name, True, "rotated", "rotated", rotation_id)


CONFIG = """
[rotator]
state_dir = "state"

[audit]
file = "audit.jsonl"
key_file = "audit.key"

[daemon]
workers = {workers}
idp_concurrency = {idp_concurrency}
catch_up = "10m"
shutdown_timeout = "20s"

[stores.env]
type = "env"
file = "creds.env"

[idps.kc]
type = "keycloak"
url = "https://sso.example.com"
realm = "r"
admin_client_id = "rotator"
admin_client_secret_env = "UNUSED_ADMIN_SECRET"
"""


def write_config(root: Path, clients: dict[str, str], *, workers: int = 4,
                 idp_concurrency: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "audit.key").write_text("k" * 32)
    (root / "audit.key").chmod(0o600)
    text = CONFIG.format(workers=workers, idp_concurrency=idp_concurrency)
    for name, extra in clients.items():
        text += (f'\n[clients.{name}]\nidp = "kc"\nclient_id = "{name}"\n'
                 f'stores = [{{store = "env", prefix = "{name.upper()}"}}]\n{extra}\n')
    path = root / "rotator.toml"
    path.write_text(text)
    return path


def load(path: Path) -> Config:
    return load_config(path, {"UNUSED_ADMIN_SECRET": UNUSED_ADMIN_SECRET})


@dataclass
class Harness:
    service: Service
    world: World
    clock: Clock
    config: Config
    events: list[tuple[str, str]]

    def journal(self) -> Journal:
        return self.service._journal()  # one connection per process, as the daemon has

    def rotations(self, name: str) -> list[tuple[str, str, str]]:
        # read-only: a closing writer could checkpoint the WAL under the service's connection
        db = sqlite3.connect(f"file:{self.config.state_dir / 'journal.sqlite3'}?mode=ro",
                             uri=True)
        try:
            return list(db.execute("SELECT id, state, actor FROM rotations WHERE client = ? "
                                   "ORDER BY rowid", (name,)))
        finally:
            db.close()

    def kinds(self) -> list[str]:
        return [f"{kind}:{client}" for kind, client, _ in self.world.calls]


class Recorder:
    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events

    def rotation_finished(self, client: str, outcome: str, seconds: float) -> None:
        self.events.append(("finished", f"{client}:{outcome}"))

    def idp_request(self, idp: str, outcome: str) -> None:
        self.events.append(("idp", f"{idp}:{outcome}"))


def make(tmp_path: Path, clients: dict[str, str], *, since: datetime | None = T0,
         clock: Clock | None = None, threads: bool = False, **daemon: int) -> Harness:
    clock = clock or Clock()
    config = load(write_config(tmp_path, clients, **daemon))
    world = World(clock)
    events: list[tuple[str, str]] = []
    observer = Recorder(events)

    @contextlib.contextmanager
    def factory(cfg: Config, actor: str, journal: Journal,
                wrap: Callable[[IdentityProvider], IdentityProvider]) -> Iterator[Any]:
        yield RecordingWorker(world, journal, actor, wrap(FakeIdp(world)))  # type: ignore[arg-type]

    service = Service(config, worker_factory=factory, facts=lambda _c, _cl: since,
                      clock=clock, observer=observer,
                      spawn=None if threads else (lambda fn: fn()))
    return Harness(service, world, clock, config, events)


class TestScheduledRotation:
    """A client rotates one interval after its last success and retires at retire_after."""

    def test_interval_then_retirement_then_the_next_interval(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": 'rotate_every = "1h"\ngrace_period = "10m"'})
        h.service.prepare()
        h.clock.advance(minutes=59)
        assert h.service.tick() == T0 + timedelta(hours=1)
        assert h.world.calls == []
        assert h.service.client("a").condition is Condition.READY
        h.clock.advance(minutes=1)
        h.service.tick()
        assert h.kinds() == ["rotate:a"]
        state = h.service.client("a")
        assert state.condition is Condition.AWAITING_RETIREMENT
        assert state.retire_after == T0 + timedelta(hours=1, minutes=10)
        h.clock.advance(minutes=9)
        h.service.tick()
        assert h.kinds() == ["rotate:a"]
        h.clock.advance(minutes=1)
        h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a"]
        assert [r[1:] for r in h.rotations("a")] == [("completed", "scheduler")]
        state = h.service.client("a")
        assert state.condition is Condition.READY
        # the next interval counts from the promotion, not from the retirement
        assert state.next_run == T0 + timedelta(hours=2)
        assert ("finished", "a:rotated") in h.events and ("finished", "a:retired") in h.events

    def test_a_client_without_a_schedule_waits_for_triggers(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": ""})
        h.service.prepare()
        h.clock.advance(days=400)
        assert h.service.tick() is None
        assert h.world.calls == []


class TestCatchUp:
    """Clients that fell due while the daemon was down start spread over catch_up."""

    def test_ten_overdue_clients_one_per_minute(self, tmp_path: Path) -> None:
        clients = {f"c{i}": 'rotate_every = "1d"' for i in range(10)}
        h = make(tmp_path, clients, since=T0 - timedelta(days=3))
        h.service.prepare()
        started = []
        for _minute in range(10):
            h.service.tick()
            started.append(len(h.world.calls))
            h.clock.advance(minutes=1)
        assert started == list(range(1, 11))


class TestConcurrencyLimits:
    """At most idp_concurrency jobs run against one IdP, and at most workers overall."""

    def test_per_idp_limit(self, tmp_path: Path) -> None:
        clients = {f"c{i}": "" for i in range(5)}
        h = make(tmp_path, clients, idp_concurrency=2)
        pending: list[Callable[[], None]] = []
        h.service._spawn = pending.append
        h.service.prepare()
        for name in clients:
            h.service.trigger_rotation(name, actor="cli")
        h.service.tick()
        assert len(pending) == 2
        pending.pop(0)()
        h.service.tick()
        assert len(pending) == 2


class TestThrottling:
    """A 429 with Retry-After delays that IdP's work instead of counting a failure."""

    def test_retry_after_pauses_the_idp(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": 'rotate_every = "1h"', "b": ""})
        h.world.throttle = [120.0]
        h.service.prepare()
        h.clock.advance(hours=1)
        h.service.tick()
        state = h.service.client("a")
        assert state.failures == 0 and state.condition is Condition.DUE
        assert state.next_run == h.clock.now + timedelta(seconds=120)
        assert ("idp", "kc:throttled") in h.events
        h.service.trigger_rotation("b", actor="cli")  # same IdP: waits too
        h.clock.advance(seconds=119)
        assert h.service.tick() == h.clock.now + timedelta(seconds=1)
        assert len(h.world.calls) == 1
        h.clock.advance(seconds=1)
        h.service.tick()
        assert sorted(h.kinds()[1:]) == ["rotate:a", "rotate:b"]
        assert h.service.client("a").condition is Condition.AWAITING_RETIREMENT


class TestBackoff:
    """Failures back off 1 h x 2^(n-1) per client, and a success resets the count."""

    def test_growth_and_reset(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": 'rotate_every = "1d"'})
        h.world.fail["a"] = ["IdP said no", "IdP said no"]
        h.service.prepare()
        h.clock.advance(days=1)
        h.service.tick()
        state = h.service.client("a")
        assert state.condition is Condition.FAILING and state.failures == 1
        assert state.reason == "IdP said no"
        assert state.next_attempt == h.clock.now + timedelta(hours=1)
        h.clock.advance(minutes=59)
        h.service.tick()
        assert len(h.world.calls) == 1
        h.clock.advance(minutes=1)
        h.service.tick()
        state = h.service.client("a")
        assert state.failures == 2
        assert state.next_attempt == h.clock.now + timedelta(hours=2)
        h.clock.advance(hours=2)
        h.service.tick()
        state = h.service.client("a")
        assert state.failures == 0 and state.reason is None
        assert state.condition is Condition.AWAITING_RETIREMENT


class TestBlocked:
    """A failure no retry fixes blocks the client with its reason until someone acts."""

    def test_foreign_pending_secret(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": 'rotate_every = "1h"'})
        h.world.fail["a"] = ["store 'env' holds a pending secret at 'A' from rotation "
                             "(not rotator) that rotator's journal does not know"]
        h.service.prepare()
        h.clock.advance(hours=1)
        h.service.tick()
        state = h.service.client("a")
        assert state.condition is Condition.BLOCKED and "pending secret" in (state.reason or "")
        h.clock.advance(days=30)
        h.service.tick()
        assert len(h.world.calls) == 1
        h.service.trigger_rotation("a", actor="api:ops")
        h.service.tick()
        assert h.service.client("a").condition is Condition.AWAITING_RETIREMENT


class TestTriggers:
    """Triggers join a running rotation, and an idempotency key returns the first answer."""

    def test_fifty_concurrent_triggers_one_rotation(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": ""})
        h.service.prepare()
        barrier = threading.Barrier(50)
        answers = []

        def trigger() -> None:
            barrier.wait()
            answers.append(h.service.trigger_rotation("a", actor="api:t"))

        threads = [threading.Thread(target=trigger) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({a.rotation_id for a in answers}) == 1
        assert sum(not a.joined for a in answers) == 1
        assert h.service.client("a").condition is Condition.DUE
        queued_id = answers[0].rotation_id
        assert h.service.rotation(queued_id).state == "queued"
        h.service.tick()
        h.service.tick()
        assert h.kinds() == ["rotate:a"]
        rotations = h.rotations("a")
        assert len(rotations) == 1 and rotations[0][2] == "api:t"
        # the queued id answers for the engine's rotation, and so does the engine's own id
        view = h.service.rotation(queued_id)
        assert view.id == rotations[0][0] and view.state == "promoted"
        assert [s.state for s in view.steps][-1] == "promoted"
        assert h.service.rotation(rotations[0][0]).id == view.id

    def test_idempotency_key(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": "", "b": ""})
        h.service.prepare()
        first = h.service.trigger_rotation("a", actor="api:t", idempotency_key="k1")
        h.service.tick()
        again = h.service.trigger_rotation("a", actor="api:t", idempotency_key="k1")
        assert again == first and len(h.world.calls) == 1
        h.clock.advance(hours=24)
        h.service.trigger_retirement("a", actor="api:t", now=True)
        h.service.tick()
        later = h.service.trigger_rotation("a", actor="api:t", idempotency_key="k1")
        assert later.rotation_id != first.rotation_id

    def test_a_rotation_trigger_during_retirement_is_refused_not_lost(
            self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": ""})
        h.service.prepare()
        h.service.trigger_rotation("a", actor="cli")
        h.service.tick()
        h.service.trigger_retirement("a", actor="cli", now=True)
        with pytest.raises(ServiceUnavailable, match="being retired"):
            h.service.trigger_rotation("a", actor="cli")
        h.service.tick()
        assert h.kinds() == ["rotate:a", "retire:a"]
        assert h.service.trigger_rotation("a", actor="cli").joined is False

    def test_unknown_client_and_shutdown(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": ""})
        h.service.prepare()
        with pytest.raises(UnknownClient):
            h.service.trigger_rotation("nope", actor="cli")
        h.service.stop(1)
        with pytest.raises(ServiceUnavailable):
            h.service.trigger_rotation("a", actor="cli")

    def test_verify_reports_fingerprint_details(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": ""})
        h.service.prepare()
        assert h.service.verify("a", actor="cli")["ok"] is True


class TestShutdown:
    """SIGTERM mid-rotation stops at the next journal step; the next start finishes it."""

    def test_stop_then_start_again(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": ""}, threads=True)
        h.world.hold = threading.Event()
        h.service.prepare()
        h.service.trigger_rotation("a", actor="cli")
        h.service.tick()
        assert h.world.reached.wait(30)
        stopper = threading.Thread(target=h.service.stop, args=(30,))
        stopper.start()
        while not h.service._stopping.is_set():
            time.sleep(0.01)
        h.world.hold.set()
        stopper.join()
        (rid, state, _), = h.rotations("a")
        assert state == "verified"  # the step after the pause was recorded, then it stopped
        assert h.service.client("a").failures == 0
        h.service.close()

        again = make(tmp_path, {"a": ""}, clock=h.clock)
        again.service.prepare()
        assert again.service.client("a").condition is Condition.ROTATING
        again.service.tick()
        assert again.kinds() == ["retire:a"]  # resumed, never a new rotation
        assert again.rotations("a") == [(rid, "promoted", "cli")]


class TestReload:
    """SIGHUP reloads; a broken file is rejected and the running configuration kept."""

    def test_broken_config_keeps_the_old_one(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": 'rotate_every = "1h"'})
        h.service.prepare()
        daemon = Daemon(h.config, h.service, load=load)
        path = h.config.path
        path.write_text(path.read_text().replace('rotate_every = "1h"',
                                                 'rotate_every = "often"\nwindow = "x"'))
        with structlog.testing.capture_logs() as logs:
            assert daemon.reload() is False
        keys = {e.get("key") for e in logs if e["event"] == "configuration_rejected"}
        assert {"clients.a.rotate_every", "clients.a.window"} <= keys
        assert daemon.config is h.config
        assert h.service.client("a").next_run == T0 + timedelta(hours=1)

    def test_a_good_reload_applies_and_a_removed_open_client_is_finished(
            self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": "", "b": ""})
        h.service.prepare()
        journal = h.journal()
        rid = journal.begin(new_rotation_id(), "b", "overlap", "cli", "fp", T0).id
        h.service.refresh()
        daemon = Daemon(h.config, h.service, load=load)
        write_config(tmp_path, {"a": 'rotate_every = "2h"', "c": ""})
        assert daemon.reload() is True
        assert [c.name for c in h.service.clients()] == ["a", "b", "c"]
        assert h.service.client("b").extra == {"removed": True}
        h.service.tick()
        assert h.rotations("b") == [(rid, "promoted", "cli")]
        # promoted awaits retirement; finished at retire_after, then the client is gone
        h.clock.advance(minutes=10)
        h.service.tick()
        assert [c.name for c in h.service.clients()] == ["a", "c"]
        assert h.rotations("b")[0][1] == "completed"


class TestReloadReadsOutsideTheLock:
    """A reload that adds clients reads their facts while API calls are answered, and takes
    the service's lock only to swap them in."""

    def test_facts_of_added_clients_are_read_without_the_lock(self, tmp_path: Path) -> None:
        h = make(tmp_path, {"a": ""})
        h.service.prepare()
        free: list[bool] = []
        answers: list[str] = []

        def facts(_config: Config, client: Any) -> datetime | None:
            def probe() -> None:  # another thread: what an API call would find
                got = h.service._lock.acquire(blocking=False)
                free.append(got)
                if got:
                    answers.append(h.service.client("a").name)
                    h.service._lock.release()
            thread = threading.Thread(target=probe)
            thread.start()
            thread.join()
            return T0

        h.service._facts = facts
        write_config(tmp_path, {"a": "", "b": "", "c": ""})
        h.service.reload(load(h.config.path))
        assert free == [True, True]  # one store read per added client, lock free each time
        assert answers == ["a", "a"]
        assert [c.name for c in h.service.clients()] == ["a", "b", "c"]
        assert h.service.client("b").last_success_at == T0


class TestSingleInstance:
    """A second daemon on the same state_dir refuses to start and names the first."""

    def test_second_lock_refused(self, tmp_path: Path) -> None:
        first = instance_lock(tmp_path)
        first.__enter__()
        try:
            with pytest.raises(DaemonRunning, match=f"pid {os.getpid()}"):
                instance_lock(tmp_path).__enter__()
        finally:
            first.__exit__(None, None, None)
        with instance_lock(tmp_path):  # released when the first one ended
            pass


def _wait(predicate: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.server
@pytest.mark.slow
class TestRunEndToEnd:
    """rotator run rotates on a short interval and retires after the grace period alone."""

    def test_rotates_and_retires_then_stops_on_sigterm(
            self, kc_realm: KeycloakRealm, bao_server: OpenBao, tmp_path: Path) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="2s",
                            extra_client='rotate_every = "5s"')
        old = s.vault_current()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        code = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"
        argv = [sys.executable, "-c", code, "run", "-c", str(s.config)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=TESTS.parent)
        try:
            db = tmp_path / "state" / "journal.sqlite3"

            def completed() -> bool:
                if not db.exists():
                    return False
                conn = sqlite3.connect(db)
                try:
                    rows = conn.execute("SELECT count(*) FROM rotations WHERE state = "
                                        "'completed' AND actor = 'scheduler'").fetchone()
                except sqlite3.OperationalError:  # the daemon is still creating it
                    return False
                finally:
                    conn.close()
                return bool(rows[0] >= 1)

            done = _wait(completed)
            second = subprocess.run(argv, capture_output=True, text=True, env=env,
                                    cwd=TESTS.parent, timeout=60, check=False)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert done, f"no scheduled rotation completed: {err[-3000:]}"
        assert second.returncode == 1 and "another rotator daemon" in second.stderr
        s.outputs += [out, err, second.stdout, second.stderr]
        assert proc.returncode == 0, err[-2000:]
        # where the audit chain stood when the daemon stopped is in the journal
        conn = sqlite3.connect(db)
        try:
            last = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0]
        finally:
            conn.close()
        assert last == len((s.root / "audit.jsonl").read_text().splitlines())
        s.remember()
        current = s.vault_current()
        assert current != old and s.works(current)
        assert not s.works(old)  # retired by the daemon, nobody ran retire
        assert s.leaks() == []


class TestSystemdUnit:
    """The shipped systemd unit passes systemd-analyze verify."""

    def test_verify(self, tmp_path: Path) -> None:
        unit = Path(__file__).parent.parent / "config" / "rotator.service"
        text = unit.read_text()
        for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                          "ReadWritePaths=/var/lib/rotator /var/log/rotator",
                          "ExecReload=/bin/kill -HUP $MAINPID"):
            assert directive in text
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed here")
        # verify checks that ExecStart's binary exists: point it at one that does.
        local = tmp_path / "rotator.service"
        local.write_text(text.replace("/usr/local/bin/rotator", sys.executable))
        result = subprocess.run([analyze, "verify", str(local)], capture_output=True,
                                text=True, check=False, timeout=60)
        assert result.returncode == 0, result.stderr


class TestProcessSignals:
    """rotator run as a process: SIGHUP with a broken file keeps running, SIGTERM exits 0."""

    def test_sighup_broken_then_sigterm(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, {"a": ""})
        env = {**os.environ, "UNUSED_ADMIN_SECRET": UNUSED_ADMIN_SECRET}
        code = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"
        log_file = tmp_path / "daemon.log"
        with log_file.open("w") as log_out:
            proc = subprocess.Popen([sys.executable, "-c", code, "run", "-c", str(path)],
                                    stdout=log_out, stderr=log_out, env=env,
                                    cwd=TESTS.parent)
        try:
            assert _wait(lambda: "daemon_started" in log_file.read_text())
            path.write_text(path.read_text().replace('client_id = "a"',
                                                     'client_id = "a"\nwindow = "never"'))
            proc.send_signal(signal.SIGHUP)
            assert _wait(lambda: "reload_rejected" in log_file.read_text())
            assert proc.poll() is None  # still running, on the old configuration
            text = log_file.read_text()
            assert "clients.a.window" in text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        assert proc.returncode == 0
        assert "daemon_stopped" in log_file.read_text()


class TestRotateDue:
    """rotate --due picks the clients the daemon's rule says are due, from the journal."""

    def test_due_clients(self, tmp_path: Path) -> None:
        from rotator.daemon.service import due_clients

        h = make(tmp_path, {"fresh": 'rotate_every = "1h"', "stale": 'rotate_every = "1h"',
                            "manual": "", "open": 'rotate_every = "30d"'})
        journal = h.journal()
        for name in ("fresh", "stale"):
            rid = journal.begin(new_rotation_id(), name, "overlap", "cli", "fp",
                                T0 - timedelta(hours=2)).id
            at = T0 - (timedelta(minutes=10) if name == "fresh" else timedelta(hours=2))
            journal.advance(rid, State.PROMOTED, at, expected=State.STARTED)
            journal.advance(rid, State.COMPLETED, T0, expected=State.PROMOTED)
        journal.begin(new_rotation_id(), "open", "overlap", "cli", "fp", T0)
        names = ["fresh", "stale", "manual", "open"]
        assert due_clients(h.config, journal, names, T0,
                           facts=lambda _c, _cl: T0) == ["stale", "open"]

    def test_cli_flag_rotates_nothing_when_nothing_is_due(self, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
        import io

        from rotator.cli import run

        path = write_config(tmp_path, {"manual": ""})
        monkeypatch.setenv("UNUSED_ADMIN_SECRET", UNUSED_ADMIN_SECRET)
        out, err = io.StringIO(), io.StringIO()
        assert run(["rotate", "--due", "--all", "-c", str(path)], out, err) == 0
        assert out.getvalue() == "" and err.getvalue() == ""


class _StopsAt:
    """A journal that sets ``stopping`` as it records ``state`` (SIGTERM right then)."""

    def __init__(self, inner: Any, state: State, stopping: threading.Event) -> None:
        self._inner, self._state, self._stopping = inner, state, stopping

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def advance(self, rotation_id: str, state: State, now: datetime, **kw: Any) -> Any:
        rotation = self._inner.advance(rotation_id, state, now, **kw)
        if state is self._state:
            self._stopping.set()
        return rotation


class TestStopAfterAStep:
    """A SIGTERM as a job records a step ends the job as the journal says: finished when the
    step finished its work (promoted awaiting retirement, completed), otherwise interrupted to
    be resumed, never a failure."""

    def _engine_stopping_at(self, rig: Any, state: State) -> None:
        stopping = threading.Event()
        rig.engine.journal = StoppableJournal(
            _StopsAt(rig.engine.journal, state, stopping), stopping)  # type: ignore[arg-type]

    def test_promotion_of_an_overlap_rotation_is_the_jobs_end(self, tmp_path: Path) -> None:
        from test_engine import CAPS, make_rig
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            journal = rig.engine.journal
            self._engine_stopping_at(rig, State.PROMOTED)
            outcome = rig.engine.rotate("app")
            assert (outcome.ok, outcome.action) == (True, "rotated"), outcome.message
            assert journal.latest("app").state is State.PROMOTED

    def test_a_retirement_that_completed_is_reported_done(self, tmp_path: Path) -> None:
        from test_engine import CAPS, make_rig
        with make_rig(tmp_path, CAPS["chosen-overlap"]) as rig:
            journal = rig.engine.journal
            assert rig.engine.rotate("app").ok
            rig.clock.now += timedelta(hours=2)
            self._engine_stopping_at(rig, State.COMPLETED)
            outcome = rig.engine.retire("app")
            assert (outcome.ok, outcome.action) == (True, "retired"), outcome.message
            assert journal.latest("app").state is State.COMPLETED

    def test_a_step_with_work_left_is_interrupted_and_resumed(self, tmp_path: Path) -> None:
        from test_engine import CAPS, make_rig
        with make_rig(tmp_path, CAPS["chosen-single"]) as rig:
            journal = rig.engine.journal
            self._engine_stopping_at(rig, State.PROMOTED)
            outcome = rig.engine.rotate("app")
            assert (outcome.ok, outcome.action) == (False, "interrupted"), outcome.message
            assert SHUTTING_DOWN in outcome.message
            stopped = journal.latest("app")
            assert stopped.state is State.PROMOTED and stopped.error is None
            rig.engine.journal = journal  # the next start
            resumed = rig.engine.rotate("app")
            assert resumed.ok, resumed.message
            assert journal.latest("app").state is State.COMPLETED


class TestDeferredFacts:
    """At start the store facts of clients the journal never saw rotate are read after the
    daemon is ready: a call about one client reads its facts first, the scheduler reads the
    rest before its first pass, and every answer has them."""

    def _harness(self, tmp_path: Path) -> tuple[Harness, list[str]]:
        h = make(tmp_path, {"a": 'rotate_every = "1h"', "b": 'rotate_every = "1h"',
                            "c": 'rotate_every = "1h"'})
        read: list[str] = []

        def facts(_config: Config, client: Any) -> datetime | None:
            read.append(client.name)
            return T0

        h.service._facts = facts
        return h, read

    def test_one_client_is_read_on_demand_then_the_rest_once(self, tmp_path: Path) -> None:
        h, read = self._harness(tmp_path)
        h.service.prepare(defer_facts=True)
        assert read == []
        assert h.service.readiness().config_loaded
        assert h.service.reads_wait_on_journal  # the API asks client() from a thread
        state = h.service.client("b")
        assert read == ["b"]
        assert state.last_success_at == T0
        assert state.next_run == T0 + timedelta(hours=1)
        h.service._load_deferred()  # what the scheduler thread does first
        assert sorted(read) == ["a", "b", "c"]
        assert not h.service.reads_wait_on_journal  # a dictionary read from now on
        assert [c.last_success_at for c in h.service.clients()] == [T0, T0, T0]

    def test_the_scheduler_reads_them_before_its_first_pass(self, tmp_path: Path) -> None:
        h, read = self._harness(tmp_path)
        h.clock.advance(hours=2)  # every client fell due while the daemon was down
        h.service.start()
        try:
            states = h.service.clients()  # waits for the deferred facts
            assert sorted(read) == ["a", "b", "c"]
            assert all(s.last_success_at == T0 for s in states)
        finally:
            assert h.service.stop(30)
            h.service.close()


class TestClientsOnePageAtATime:
    """Asked for one page of clients, the service works out the state of that page's
    clients only, so listing N clients a page at a time costs N states, not N per page."""

    def test_only_the_page_is_computed(self, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        h = make(tmp_path, {name: "" for name in ("a", "b", "c", "d", "e")})
        h.service.prepare()
        computed: list[str] = []
        state = ClientRecord.state

        def counting(rec: ClientRecord, now: datetime) -> ClientState:
            computed.append(rec.config.name)
            return state(rec, now)

        monkeypatch.setattr(ClientRecord, "state", counting)
        assert [c.name for c in h.service.clients(after="b", limit=2)] == ["c", "d"]
        assert computed == ["c", "d"]
        assert [c.name for c in h.service.clients(after="d")] == ["e"]
        assert [c.name for c in h.service.clients(after="e", limit=3)] == []
        assert [c.name for c in h.service.clients(limit=1)] == ["a"]
        assert computed == ["c", "d", "e", "a"]


class TestHeapSettledOnceFactsAreRead:
    """The daemon freezes what start-up built out of the collector's sight once, and only
    once every client's store facts are read (a full collection then walks only newer
    objects)."""

    def test_frozen_once_when_the_facts_are_read(self, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        from rotator.daemon import process

        frozen: list[bool] = []
        monkeypatch.setattr(process.gc, "freeze", lambda: frozen.append(True))
        h = make(tmp_path, {"a": "", "b": ""})
        h.service.prepare(defer_facts=True)
        assert not h.service.facts_read
        assert process._settle_heap(False, h.service) is False and frozen == []
        h.service._load_deferred()
        assert h.service.facts_read
        assert process._settle_heap(False, h.service) is True and frozen == [True]
        assert process._settle_heap(True, h.service) is True and frozen == [True]
