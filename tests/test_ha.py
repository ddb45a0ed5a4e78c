"""Several daemons sharing one PostgreSQL journal: each due client rotated once, a held lease
keeps a second daemon out, and a daemon taken over while stalled cannot write.

The daemons are :class:`~rotator.daemon.service.Service` instances with the recording worker
of ``test_daemon`` (it writes the real journal the way the engine does), on one real
PostgreSQL; the engine's own behaviour on a fenced journal is the journal contract's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_crash_safety import OVERLAP_POINTS, _assert_whole, _ids
from test_daemon import T0, Clock, FakeIdp, Harness, RecordingWorker, World, write_config

from rotator.config import Config, load_config
from rotator.daemon import leases
from rotator.daemon.service import Service
from rotator.interfaces import IdentityProvider, Journal
from rotator.journal import State

URL_VAR = "ROTATOR_TEST_JOURNAL_URL"


def daemon(root: Path, url: str, clients: dict[str, str], clock: Clock, *,
           threads: bool = False, lease: str = "60s", workers: int = 4) -> Harness:
    path = write_config(root, clients, workers=workers, idp_concurrency=workers)
    text = path.read_text().replace("[daemon]\n", f'[daemon]\nlease = "{lease}"\n', 1)
    path.write_text(text + f'\n[journal]\nurl_env = "{URL_VAR}"\n')
    config: Config = load_config(path, {"UNUSED_ADMIN_SECRET": "unused-" + "x" * 32,
                                        URL_VAR: url})
    world = World(clock)

    @contextlib.contextmanager
    def factory(cfg: Config, actor: str, journal: Journal,
                wrap: Callable[[IdentityProvider], IdentityProvider]) -> Iterator[Any]:
        yield RecordingWorker(world, journal, actor, wrap(FakeIdp(world)))  # type: ignore[arg-type]

    service = Service(config, worker_factory=factory, facts=lambda _c, _cl: T0, clock=clock,
                      spawn=None if threads else (lambda fn: fn()))
    return Harness(service, world, clock, config, [])


@pytest.fixture
def url(postgres_server: Any) -> str:
    return postgres_server.create_schema(f"ha_{secrets.token_hex(6)}")


def idle(h: Harness) -> bool:
    with h.service._lock:
        return all(j.state != "running" for j in h.service._jobs.values())


def wait_idle(h: Harness) -> None:
    while not idle(h):
        time.sleep(0.01)


@contextlib.contextmanager
def claimed_and_held(a: Harness, *others: Harness) -> Iterator[Harness]:
    """``a`` (a daemon with threads) claims its client, due an hour on, and its job stops
    after CREATED until ``a.world.hold`` is set; ``others`` are prepared beside it. On the
    way out the job is let go and every daemon closed."""
    a.world.hold = threading.Event()
    try:
        for h in (a, *others):
            h.service.prepare()
        a.clock.advance(hours=1)
        a.service.tick()
        assert a.world.reached.wait(30)
        yield a
    finally:
        if a.world.hold is not None:
            a.world.hold.set()
        wait_idle(a)
        for h in (a, *others):
            h.service.close()


@contextlib.contextmanager
def two_daemons_due(root: Path, url: str, clients: dict[str, str], clock: Clock,
                    **kwargs: Any) -> Iterator[tuple[Harness, Harness]]:
    """Daemons ``a`` and ``b`` on the journal at ``url``, both prepared, with the clock moved
    an hour on so that every client is due; both closed on the way out."""
    a = daemon(root / "a", url, clients, clock, **kwargs)
    b = daemon(root / "b", url, clients, clock, **kwargs)
    try:
        for h in (a, b):
            h.service.prepare()
        clock.advance(hours=1)
        yield a, b
    finally:
        a.service.close()
        b.service.close()


def postgres_scenario(kc_realm: Any, bao_server: Any, root: Path, url: str,
                      postgres_server: Any, **kwargs: Any) -> Any:
    """A Keycloak rotation scenario (rotation_env) whose journal is the PostgreSQL at
    ``url``, named in a 0600 ``journal.url``; the database's password counts as a secret."""
    from rotation_env import Scenario

    s = Scenario.create(kc_realm, bao_server, root, overlap=True, **kwargs)
    s.seen_secrets.add(postgres_server.password)
    (root / "journal.url").write_text(url)
    (root / "journal.url").chmod(0o600)
    with s.config.open("a") as f:
        f.write('\n[journal]\nurl_file = "journal.url"\n')
    return s


class TestSharedDue:
    """Two daemons that find the same clients due rotate each of them exactly once."""

    CLIENTS = {f"c{i:02}": 'rotate_every = "1h"' for i in range(20)}

    def test_inline(self, tmp_path: Path, url: str) -> None:
        with two_daemons_due(tmp_path, url, self.CLIENTS, Clock()) as (a, b):
            for _ in range(20):
                a.service.tick()
                b.service.tick()
            self.check(a, b)

    def test_threads(self, tmp_path: Path, url: str) -> None:
        clock = Clock()
        with two_daemons_due(tmp_path, url, self.CLIENTS, clock, threads=True) as (a, b):
            for _ in range(40):
                a.service.tick()
                b.service.tick()
                for h in (a, b):
                    wait_idle(h)
                clock.advance(seconds=31)  # a client found locked is tried again after 30 s
            self.check(a, b)

    def check(self, a: Harness, b: Harness) -> None:
        journal = a.service._journal()
        for name in self.CLIENTS:
            latest = journal.latest(name)
            assert latest is not None, name
            # one rotation, driven once (retired too when the clock passed its grace period)
            path = [State.STARTED, State.CREATED, State.VERIFIED, State.PROMOTED,
                    State.COMPLETED]
            assert [s.state for s in journal.steps(latest.id)] in (path[:4], path), name
        started = [c for h in (a, b) for kind, c, _ in h.world.calls if kind == "rotate"]
        assert sorted(started) == sorted(self.CLIENTS)  # nobody began a client twice
        # the journal holds exactly one rotation per client
        import psycopg

        with psycopg.connect(a.config.journal.url.reveal()) as conn:  # type: ignore[union-attr]
            rows = conn.execute("SELECT client, count(*) FROM rotations GROUP BY client")
            assert {c: n for c, n in rows} == dict.fromkeys(self.CLIENTS, 1)


class TestLeaseHeld:
    """While one daemon's job holds a client, another daemon's job for it does nothing."""

    def test_second_daemon_is_locked_out(self, tmp_path: Path, url: str) -> None:
        clock = Clock()
        a = daemon(tmp_path / "a", url, {"app": 'rotate_every = "1h"'}, clock, threads=True)
        b = daemon(tmp_path / "b", url, {"app": 'rotate_every = "1h"'}, clock)
        with claimed_and_held(a, b):
            b.service.tick()
            assert b.world.calls == []
            job = next(iter(b.service._jobs.values()))
            assert job.state == "queued"  # not claimed: A holds the client's lease


class TestTriggerAfterAStaleJob:
    """A daemon still holding a queued job for a trigger another daemon has answered takes
    the next trigger: a new rotation id, run when the stale job ends (CI found a 503 here:
    the stale job's id was offered to the journal again and refused as a race)."""

    def test_next_trigger_is_new(self, tmp_path: Path, url: str) -> None:
        clock = Clock()
        clients = {"app": 'rotate_every = "30d"'}
        a = daemon(tmp_path / "a", url, clients, clock)
        b = daemon(tmp_path / "b", url, clients, clock)
        journal = a.service._journal()
        try:
            for h in (a, b):
                h.service.prepare()
            first = a.service.trigger_rotation("app", actor="ops")
            with b.service._lock:  # B picked the trigger up, as when A seemed gone a lease
                b.service._queue(b.service._records["app"], "rotate", "ops", first.rotation_id)
            a.service.tick()
            journal.advance(first.rotation_id, State.COMPLETED, clock(),
                            expected=State.PROMOTED)  # its grace period ended
            assert b.service.reads_wait_on_journal  # client() asks the database
            second = b.service.trigger_rotation("app", actor="ops")
            assert not second.joined and second.rotation_id != first.rotation_id
            assert b.service.trigger_rotation("app", actor="ops") == \
                dataclasses.replace(second, joined=True)  # a third joins the second
            for _ in range(3):  # the stale job ends (answered elsewhere), the new one runs
                b.service.tick()
            assert journal.get(second.rotation_id).state is State.PROMOTED
            assert [c for c in b.world.calls if c[0] == "rotate"] == [("rotate", "app", "ops")]
        finally:
            a.service.close()
            b.service.close()


class TestTriggerStorm:
    """Many triggers of one client at once, through two daemons' services on one journal,
    are all taken (none refused) and answered by one rotation."""

    def test_one_rotation(self, tmp_path: Path, url: str) -> None:
        clock = Clock()
        clients = {"app": 'rotate_every = "30d"'}
        a = daemon(tmp_path / "a", url, clients, clock)
        b = daemon(tmp_path / "b", url, clients, clock)
        answers: list[Any] = []
        start = threading.Barrier(16)

        def fire(h: Harness) -> None:
            start.wait()
            try:
                answers.append(h.service.trigger_rotation("app", actor="ops"))
            except Exception as exc:  # every refusal is the finding
                answers.append(exc)

        try:
            for h in (a, b):
                h.service.prepare()
            threads = [threading.Thread(target=fire, args=(h,)) for h in (a, b) * 8]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert not [x for x in answers if isinstance(x, Exception)], answers
            assert len({x.rotation_id for x in answers}) == 1, answers
            assert sum(not x.joined for x in answers) == 1, answers
            for _ in range(3):
                a.service.tick()
                b.service.tick()
            [rotation_id] = {x.rotation_id for x in answers}
            journal = a.service._journal()
            assert journal.get(rotation_id).state is State.PROMOTED
            calls = [c for h in (a, b) for c in h.world.calls if c[0] == "rotate"]
            assert calls == [("rotate", "app", "ops")]
        finally:
            a.service.close()
            b.service.close()


class TestStalledDaemon:
    """A daemon whose lease expired while it stalled, and was taken over, has its next journal
    write refused: the new holder's outcome stands."""

    def test_woken_daemon_cannot_write(self, tmp_path: Path, url: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(leases.LeaseKeeper, "start", lambda self: None)  # it stalls
        clock = Clock()
        a = daemon(tmp_path / "a", url, {"app": 'rotate_every = "1h"'}, clock, threads=True,
                   lease="1s")
        journal = a.service._journal()
        with claimed_and_held(a):  # A stalls after CREATED
            rotation = journal.open_rotation("app")
            assert rotation is not None and rotation.state is State.CREATED
            taken = None
            for _ in range(300):  # until A's lease of 1 s has expired
                taken = journal.acquire_lease("app", "daemon-b", 60)
                if taken is not None:
                    break
                time.sleep(0.05)
            assert taken is not None
            # B holds the client now but has not written yet: only the fence tells A.
            a.world.hold.set()  # A wakes up and goes on from what it knew
            wait_idle(a)
            job = next(iter(a.service._jobs.values()))
            assert job.outcome is not None and not job.outcome.ok
            assert "taken over" in job.outcome.message
            assert [s.state for s in journal.steps(rotation.id)] == [State.STARTED,
                                                                     State.CREATED]
            b = journal.fenced(taken)  # the new holder finishes (here: rolls back)
            b.advance(rotation.id, State.ROLLING_BACK, clock(), expected=State.CREATED)
            b.advance(rotation.id, State.ROLLED_BACK, clock(), expected=State.ROLLING_BACK)
            assert journal.get(rotation.id).state is State.ROLLED_BACK


class TestDatabaseAway:
    """While the shared journal's database is away a trigger is refused (503, naming the
    server, never its password); a rotation cut off mid-way is resumed once it is back."""

    def test_trigger_refused_then_taken(self, tmp_path: Path, url: str,
                                        postgres_server: Any) -> None:
        from rotator.daemon.model import ServiceUnavailable

        clock = Clock()
        a = daemon(tmp_path / "a", url, {"app": 'rotate_every = "30d"'}, clock)
        try:
            a.service.prepare()
            postgres_server.stop("immediate")
            try:
                with pytest.raises(ServiceUnavailable,
                                   match=r"rotation journal postgresql://127\.0\.0\.1") as caught:
                    a.service.trigger_rotation("app", actor="api:test")
                assert postgres_server.password not in str(caught.value)
                assert a.world.calls == []
            finally:
                postgres_server.start()
            a.service.trigger_rotation("app", actor="api:test")
            a.service.tick()
            assert [kind for kind, _c, _a in a.world.calls] == ["rotate"]
        finally:
            a.service.close()

    def test_rotation_resumes(self, tmp_path: Path, url: str, postgres_server: Any) -> None:
        clock = Clock()
        a = daemon(tmp_path / "a", url, {"app": 'rotate_every = "1h"'}, clock, threads=True,
                   lease="1s")
        journal = a.service._journal()
        with claimed_and_held(a):  # after CREATED
            postgres_server.stop("immediate")
            try:
                a.world.hold.set()
                wait_idle(a)
                job = next(iter(a.service._jobs.values()))
                assert job.outcome is not None and not job.outcome.ok
            finally:
                postgres_server.start()
            a.world.hold = None
            for _ in range(300):  # the lost job's lease (1 s) expires; backoff passes
                clock.advance(hours=2)
                a.service.tick()
                wait_idle(a)
                latest = journal.latest("app")
                if latest is not None and latest.state is State.PROMOTED:
                    break
                time.sleep(0.05)
            latest = journal.latest("app")
            assert latest is not None and latest.state is State.PROMOTED
            assert [s.state for s in journal.steps(latest.id)] == [
                State.STARTED, State.CREATED, State.VERIFIED, State.PROMOTED]


@pytest.mark.server
class TestEngineOnPostgres:
    """The CLI rotates and retires against real Keycloak and OpenBao with its journal in
    PostgreSQL, and no output shows a secret or the journal's password."""

    def test_rotate_status_retire(self, kc_realm: Any, bao_server: Any, tmp_path: Path,
                                  url: str, postgres_server: Any) -> None:
        s = postgres_scenario(kc_realm, bao_server, tmp_path, url, postgres_server, grace="1h")
        old = s.vault_current()
        result = s.cli("rotate", "svc")
        assert result.code == 0, result.out + result.err
        new = s.vault_current()
        assert new != old and s.works(new)
        status = json.loads(s.cli("status", "svc", "--json").out)["clients"][0]
        assert status["state"] == "awaiting_retirement"
        retired = s.cli("retire", "svc", "--now")
        assert retired.code == 0, retired.out + retired.err
        assert not s.works(old) and s.works(new)
        from rotator.journal.postgres import PostgresJournal

        journal = PostgresJournal(url)
        try:
            latest = journal.latest("svc")
            assert latest is not None and latest.state is State.COMPLETED
            assert latest.retire_after is not None
        finally:
            journal.close()
        assert not (tmp_path / "state" / "journal.sqlite3").exists()
        assert s.leaks() == []


@pytest.mark.server
@pytest.mark.slow
class TestCrashOnPostgres:
    """With the journal in PostgreSQL, a rotation killed (SIGKILL) at any step boundary is
    finished by the next run; consumers hold a working secret throughout, none is lost."""

    @pytest.mark.parametrize(("mode", "target"), OVERLAP_POINTS, ids=_ids(OVERLAP_POINTS))
    def test_kill_and_resume(self, kc_realm: Any, bao_server: Any, tmp_path: Path, url: str,
                             postgres_server: Any, mode: str, target: str) -> None:
        s = postgres_scenario(kc_realm, bao_server, tmp_path, url, postgres_server)
        old = s.primary_current()
        crashed = s.subprocess("rotate", "svc", crash=(mode, target))
        assert crashed.code == -9, f"did not die at {target}: {crashed.out}{crashed.err}"
        assert s.works(s.primary_current())
        assert s.works(s.env_values()["SVC_CLIENT_SECRET"])
        again = s.subprocess("rotate", "svc")
        assert again.code == 0, again.out + again.err
        _assert_whole(s, old)
        assert s.kc_rotated() is None and not s.works(old)
        assert not (tmp_path / "state" / "journal.sqlite3").exists()


class TestClaimingBounded:
    """With a shared journal each daemon claims due clients in one round trip per scheduler
    pass, at most ``[daemon] workers`` of them, instead of every daemon trying every client;
    the database round trips per rotation are counted."""

    CLIENTS = {f"c{i:02}": 'rotate_every = "1h"' for i in range(20)}

    def test_claims_bounded_and_counted(self, tmp_path: Path, url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        import psycopg

        from rotator.journal.postgres import PostgresJournal

        claims: list[tuple[int, int]] = []
        acquired: list[str] = []
        statements = [0]
        real_claim, real_acquire = PostgresJournal.claim_leases, PostgresJournal.acquire_lease
        real_execute = psycopg.Connection.execute

        def claim_leases(self: PostgresJournal, clients: Any, holder: str, ttl: float,
                         limit: int, known: Any = None) -> Any:
            got = real_claim(self, clients, holder, ttl, limit, known)
            claims.append((limit, len(got[0])))
            return got

        def acquire_lease(self: PostgresJournal, *args: Any) -> Any:
            acquired.append(args[0])
            return real_acquire(self, *args)

        def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            statements[0] += 1
            return real_execute(self, *args, **kwargs)

        with two_daemons_due(tmp_path, url, self.CLIENTS, Clock(), workers=2) as (a, b):
            monkeypatch.setattr(PostgresJournal, "claim_leases", claim_leases)
            monkeypatch.setattr(PostgresJournal, "acquire_lease", acquire_lease)
            monkeypatch.setattr(psycopg.Connection, "execute", execute)
            for _ in range(20):
                a.service.tick()
                b.service.tick()
            monkeypatch.undo()
            TestSharedDue.check(TestSharedDue(), a, b)  # type: ignore[arg-type]
            assert claims and all(got <= limit <= 2 for limit, got in claims), claims
            assert acquired == []  # every job ran on the lease its scheduler claimed
            outcomes = [j.outcome.action for h in (a, b) for j in h.service._jobs.values()
                        if j.outcome is not None]
            assert "locked" not in outcomes  # no daemon tried a client another held
            per_rotation = statements[0] / len(self.CLIENTS)
            print(f"database statements per rotation: {per_rotation:.1f} "
                  f"({statements[0]} for {len(self.CLIENTS)}, {len(claims)} claims)")
            assert per_rotation <= 45, per_rotation  # measured 40 (the fake worker's writes)
