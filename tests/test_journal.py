"""The rotation journals and their per-client locks and leases, on their own.

The contract classes run on every implementation (``journal`` is parametrized over SQLite
and a real PostgreSQL, see ``Backend``); the SQLite file, its migrations and the PostgreSQL
URL handling are tested apart, at the end.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rotator import interfaces
from rotator.errors import JournalConflict, LeaseLost, RotationError, RotationLocked
from rotator.journal import Journal, RotationTarget, SqliteJournal, State, new_rotation_id
from rotator.journal.sqlite import SCHEMA_VERSION
from rotator.secrets import generate_secret

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
#: The order of states an overlap rotation with an IdP-generated value goes through.
PATH = [State.CREATING, State.CREATED, State.VERIFIED, State.PROMOTED, State.COMPLETED]


@dataclass
class Backend:
    """Where a contract test's journal lives: an SQLite state directory or a PostgreSQL URL."""

    kind: str
    place: str

    def open(self) -> Any:
        if self.kind == "sqlite":
            return Journal(Path(self.place))
        from rotator.journal.postgres import PostgresJournal

        return PostgresJournal(self.place)

    #: Python run in a subprocess that opens the same journal (``ROTATOR_TEST_PLACE``).
    @property
    def open_code(self) -> str:
        if self.kind == "sqlite":
            return ("from pathlib import Path\nfrom rotator.journal import Journal\n"
                    "journal = Journal(Path(os.environ['ROTATOR_TEST_PLACE']))\n")
        return ("from rotator.journal.postgres import PostgresJournal\n"
                "journal = PostgresJournal(os.environ['ROTATOR_TEST_PLACE'])\n")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "state"))
    server = request.getfixturevalue("postgres_server")
    return Backend("postgres", server.create_schema(f"j_{secrets.token_hex(6)}"))


@pytest.fixture
def journal(backend: Backend) -> Iterator[Any]:
    made = backend.open()
    yield made
    made.close()


@pytest.fixture
def sqlite_journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    made = Journal(tmp_path / "state")
    yield made
    made.close()


def begin(journal: SqliteJournal, client: str = "app", **kw: Any) -> interfaces.Rotation:
    return journal.begin(kw.pop("rotation_id", new_rotation_id()), client, "overlap", "cli",
                         "hmac-sha256:old", NOW, **kw)


def finish(journal: SqliteJournal, rotation: interfaces.Rotation) -> interfaces.Rotation:
    for state in PATH:
        rotation = journal.advance(rotation.id, state, NOW, expected=rotation.state)
    return rotation


class TestProtocol:
    """Every journal is a rotator.interfaces.Journal; the SQLite one is the embedded default."""

    def test_is_a_journal(self, journal: Any) -> None:
        assert isinstance(journal, interfaces.Journal)
        assert Journal is SqliteJournal


class TestHookRuns:
    """Every journal keeps one hook run per (rotation, stage, hook), upserted, in first-recorded
    order, with failed and running ones as the retry queue and errors redacted."""

    def test_upsert_order_queue_redaction(self, journal: Any) -> None:
        secret = generate_secret().reveal()  # registered with the redactor when made
        at = NOW
        for hook, status in (("x", "running"), ("y", "failed"), ("x", "succeeded")):
            journal.record_hook_run(interfaces.HookRun(
                "r-1", "app", "promoted", hook, status, 1, hook == "y", at,
                next_attempt_at=at + timedelta(minutes=1) if status == "failed" else None,
                error=f"refused {secret}" if status == "failed" else None))
        runs = journal.hook_runs("r-1")
        assert [(r.hook, r.status) for r in runs] == [("x", "succeeded"), ("y", "failed")]
        assert runs[1].required and runs[1].next_attempt_at == at + timedelta(minutes=1)
        assert secret not in (runs[1].error or "")
        assert [r.hook for r in journal.unfinished_hook_runs()] == ["y"]
        assert journal.hook_runs("r-other") == []


class TestAuditCheckpoints:
    """Every journal keeps audit checkpoints per (log, key), the first one per seq, by seq."""

    def test_first_kept_and_ordered(self, journal: Any) -> None:
        for seq, chain in ((20, "b" * 64), (10, "a" * 64), (20, "c" * 64)):
            journal.record_audit_checkpoint(
                interfaces.AuditCheckpoint("/var/log/a.log", "0123abcd", seq, chain, NOW))
        kept = journal.audit_checkpoints("/var/log/a.log", "0123abcd")
        assert [(c.seq, c.chain) for c in kept] == [(10, "a" * 64), (20, "b" * 64)]
        assert kept[0].at == NOW
        assert journal.audit_checkpoints("/var/log/a.log", "ffffffff") == []


class TestDetailFields:
    """A field kept only in a step's detail (a secret's expiry) is read back through steps."""

    def test_expires_at_in_step_detail(self, journal: Any) -> None:
        rotation = begin(journal)
        expiry = (NOW + timedelta(days=180)).isoformat()
        journal.advance(rotation.id, State.CREATING, NOW, expected=State.STARTED)
        journal.advance(rotation.id, State.CREATED, NOW, expected=State.CREATING,
                        secret_ref="k-1", expires_at=expiry)
        created = [s for s in journal.steps(rotation.id) if s.state is State.CREATED]
        assert created[0].detail["expires_at"] == expiry
        assert journal.get(rotation.id).secret_ref == "k-1"


class TestCheckAndSet:
    """advance moves a rotation only from the state its writer expected; else nothing changes."""

    def test_stale_writer_is_refused(self, journal: Any) -> None:
        rotation = begin(journal)
        journal.advance(rotation.id, State.CREATING, NOW, expected=State.STARTED)
        with pytest.raises(JournalConflict, match="is creating, not started"):
            journal.advance(rotation.id, State.FAILED, NOW, expected=State.STARTED,
                            error="stale")
        after = journal.get(rotation.id)
        assert after.state is State.CREATING and after.error is None
        assert [s.state for s in journal.steps(rotation.id)] == [State.STARTED, State.CREATING]

    def test_terminal_rotation_cannot_move(self, journal: Any) -> None:
        rotation = finish(journal, begin(journal))
        with pytest.raises(JournalConflict):
            journal.advance(rotation.id, State.ROLLING_BACK, NOW, expected=State.PROMOTED)

    def test_unknown_rotation_is_not_a_conflict(self, journal: Any) -> None:
        with pytest.raises(RotationError, match="no rotation r-nope") as caught:
            journal.advance("r-nope", State.CREATING, NOW, expected=State.STARTED)
        assert not isinstance(caught.value, JournalConflict)


class TestBegin:
    """begin refuses a second open rotation of a client, a reused id and an unusable id."""

    def test_one_open_rotation_per_client(self, journal: Any) -> None:
        first = begin(journal)
        with pytest.raises(JournalConflict, match=f"unfinished rotation {first.id}"):
            begin(journal)
        begin(journal, client="other")  # other clients are not affected
        finish(journal, first)
        assert begin(journal).state is State.STARTED

    def test_reused_id(self, journal: Any) -> None:
        rotation = finish(journal, begin(journal, rotation_id="r-given-1"))
        with pytest.raises(JournalConflict, match="exists already"):
            begin(journal, rotation_id=rotation.id)

    def test_id_of_the_open_rotation(self, journal: Any) -> None:
        rotation = begin(journal, rotation_id="r-given-2")
        with pytest.raises(JournalConflict, match="exists already"):
            begin(journal, rotation_id=rotation.id)

    @pytest.mark.parametrize("bad", ["", "-r", "r 1", "r\nAPP_CLIENT_SECRET=x", "../x",
                                     "r" * 54])
    def test_unusable_id(self, journal: Any, bad: str) -> None:
        with pytest.raises(RotationError, match="not a usable rotation id"):
            begin(journal, rotation_id=bad)
        assert journal.latest("app") is None

    def test_targets_and_audit_key_id_are_kept(self, journal: Any, backend: Backend) -> None:
        targets = [RotationTarget("vault", "kv/app"), RotationTarget("env", "APP")]
        rotation = begin(journal, targets=targets, audit_key_id="0123abcd")
        assert rotation.targets == tuple(targets) and rotation.audit_key_id == "0123abcd"
        journal.close()
        reopened = backend.open()
        try:
            again = reopened.get(rotation.id)
            assert again.targets == tuple(targets) and again.audit_key_id == "0123abcd"
        finally:
            reopened.close()


class TestBeginThen:
    """begin with ``then`` records the rotation begun and moved on to ``then`` in one
    transaction: both steps kept, as begin and advance would; a refused begin records neither."""

    def test_both_steps_recorded(self, journal: Any) -> None:
        rotation = begin(journal, then=State.CREATING)
        assert rotation.state is State.CREATING
        assert journal.get(rotation.id) == rotation
        assert journal.open_rotation("app") == rotation
        assert [s.state for s in journal.steps(rotation.id)] == [State.STARTED, State.CREATING]
        assert [s.detail for s in journal.steps(rotation.id)] == [{}, {}]
        moved = journal.advance(rotation.id, State.CREATED, NOW, expected=State.CREATING)
        assert moved.state is State.CREATED

    def test_same_record_as_begin_then_advance(self, journal: Any) -> None:
        one = begin(journal, then=State.CREATING, targets=[RotationTarget("vault", "kv/a")],
                    audit_key_id="0123abcd")
        two = begin(journal, client="other", targets=[RotationTarget("vault", "kv/a")],
                    audit_key_id="0123abcd")
        two = journal.advance(two.id, State.CREATING, NOW, expected=State.STARTED)
        assert one == replace(two, id=one.id, client="app")
        assert journal.steps(one.id) == journal.steps(two.id)

    def test_refused_begin_records_nothing(self, journal: Any) -> None:
        first = begin(journal)
        with pytest.raises(JournalConflict, match=f"unfinished rotation {first.id}"):
            begin(journal, then=State.CREATING, rotation_id="r-refused-1")
        with pytest.raises(JournalConflict, match="exists already"):
            begin(journal, client="other", then=State.CREATING, rotation_id=first.id)
        assert journal.latest("other") is None
        assert journal.steps("r-refused-1") == []
        assert [s.state for s in journal.steps(first.id)] == [State.STARTED]

    def test_fenced(self, journal: Any) -> None:
        old = journal.acquire_lease("app", "daemon-a", 0)
        new = journal.acquire_lease("app", "daemon-b", 60)
        with pytest.raises(LeaseLost):
            begin(journal.fenced(old), then=State.CREATING)
        assert journal.latest("app") is None
        rotation = begin(journal.fenced(new), then=State.CREATING)
        assert journal.get(rotation.id).state is State.CREATING


class TestRedaction:
    """An error text carrying a live secret value is stored with the value masked."""

    def test_error_is_redacted(self, journal: Any) -> None:
        secret = generate_secret()
        rotation = begin(journal)
        journal.advance(rotation.id, State.FAILED, NOW, expected=State.STARTED,
                        error=f"IdP said: bad secret {secret.reveal()}")
        stored = journal.get(rotation.id)
        assert stored.error is not None and "bad secret **********" in stored.error
        assert secret.reveal() not in str(journal.steps(rotation.id))

    def test_sqlite_file_holds_no_secret(self, sqlite_journal: SqliteJournal) -> None:
        secret = generate_secret()
        rotation = begin(sqlite_journal)
        sqlite_journal.advance(rotation.id, State.FAILED, NOW, expected=State.STARTED,
                               error=f"IdP said: bad secret {secret.reveal()}")
        raw = (sqlite_journal.path.read_bytes()
               + Path(f"{sqlite_journal.path}-wal").read_bytes())
        assert secret.reveal().encode() not in raw


class TestThreads:
    """Many threads use one journal at once; exactly one of racing writers moves a rotation."""

    def run_all(self, count: int, work: Callable[[int], None]) -> list[BaseException]:
        errors: list[BaseException] = []
        barrier = threading.Barrier(count)

        def run(i: int) -> None:
            try:
                barrier.wait()
                work(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors

    def test_concurrent_rotations(self, journal: Any) -> None:
        def work(i: int) -> None:
            for _ in range(10):
                finish(journal, begin(journal, client=f"c{i}"))
                assert journal.open_rotation(f"c{i}") is None

        assert self.run_all(12, work) == []
        for i in range(12):
            latest = journal.latest(f"c{i}")
            assert latest is not None and latest.state is State.COMPLETED
            assert journal.last_success(f"c{i}") == latest

    def test_racing_writers(self, journal: Any) -> None:
        rotation = begin(journal)
        won: list[int] = []

        def work(i: int) -> None:
            journal.advance(rotation.id, State.CREATING, NOW, expected=State.STARTED)
            won.append(i)

        errors = self.run_all(8, work)
        assert len(won) == 1 and len(errors) == 7
        assert all(isinstance(e, JournalConflict) for e in errors)
        assert len(journal.steps(rotation.id)) == 2

    def test_racing_begins(self, journal: Any) -> None:
        errors = self.run_all(8, lambda _i: begin(journal))
        assert len(errors) == 7 and all(isinstance(e, JournalConflict) for e in errors)


_V0_SCHEMA = """
CREATE TABLE rotations (
    id TEXT PRIMARY KEY, client TEXT NOT NULL, state TEXT NOT NULL, family TEXT NOT NULL,
    actor TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    retire_after TEXT, old_fingerprint TEXT, new_fingerprint TEXT, secret_ref TEXT,
    error TEXT);
CREATE INDEX rotations_client ON rotations (client, started_at);
CREATE TABLE steps (rotation_id TEXT NOT NULL REFERENCES rotations (id), at TEXT NOT NULL,
    state TEXT NOT NULL, detail TEXT NOT NULL);
"""


class TestMigration:
    """A journal written before schema versions is migrated on open, once, keeping its rows."""

    def make_v0(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700)
        # the journal of that version created its file 0600, as every version since did
        (state_dir / "journal.sqlite3").touch(mode=0o600)
        db = sqlite3.connect(state_dir / "journal.sqlite3")
        db.executescript(_V0_SCHEMA)
        ts = NOW.isoformat()
        db.execute("INSERT INTO rotations VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   ("r-old", "app", "promoted", "overlap", "cli", ts, ts, ts, "fp-old",
                    "fp-new", None, None))
        db.execute("INSERT INTO steps VALUES (?,?,?,?)", ("r-old", ts, "started", "{}"))
        db.commit()
        db.close()

    def test_migrates(self, tmp_path: Path) -> None:
        self.make_v0(tmp_path / "state")
        for _ in range(2):  # the second open finds nothing to do
            journal = Journal(tmp_path / "state")
            try:
                old = journal.get("r-old")
                assert old.state is State.PROMOTED and old.targets == ()
                assert old.audit_key_id is None
                assert journal.open_rotation("app") == old
                assert journal.last_success("app") == old
                assert journal._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
                indexes = {r[0] for r in journal._db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index'")}
                assert {"steps_rotation", "rotations_open", "rotations_success"} <= indexes
                finish(journal, begin(journal, client="new"))
            finally:
                journal.close()

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        Journal(tmp_path / "state").close()
        db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        with pytest.raises(RotationError, match="newer than this rotator knows"):
            Journal(tmp_path / "state")


def synthesize(journal: SqliteJournal, clients: int, per_client: int) -> None:
    """``per_client`` finished rotations of six steps each for every client, then one open."""
    rotations, steps = [], []
    for c in range(clients):
        for r in range(per_client):
            rid = f"r-{c}-{r}"
            at = (NOW + timedelta(minutes=r)).isoformat()
            state = "failed" if r % 7 == 0 else "completed"
            rotations.append((rid, f"c{c}", state, "overlap", "cli", at, at, None, "a", "b",
                              None, None, "[]", None))
            steps += [(rid, at, s, "{}") for s in ("started", "creating", "created",
                                                   "verified", "promoted", state)]
    with journal._tx():
        journal._db.executemany(
            "INSERT INTO rotations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rotations)
        journal._db.executemany("INSERT INTO steps VALUES (?,?,?,?)", steps)


def read_like_status(journal: SqliteJournal, client: str) -> None:
    latest = journal.latest(client)
    assert latest is not None
    journal.last_success(client)
    journal.open_rotation(client)
    assert len(journal.steps(latest.id)) == 6


class TestFlatStatus:
    """What status reads from the journal searches indexes, so its cost ignores history length."""

    def test_every_read_uses_an_index(self, sqlite_journal: SqliteJournal) -> None:
        journal = sqlite_journal
        synthesize(journal, clients=10, per_client=1000)  # 10,000 rotations, 60,000 steps
        statements: list[str] = []
        journal._db.set_trace_callback(statements.append)
        read_like_status(journal, "c3")
        journal._db.set_trace_callback(None)
        selects = [s for s in statements if s.startswith("SELECT")]
        assert len(selects) == 4
        for sql in selects:
            plan = [r[3] for r in journal._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert not [p for p in plan if p.startswith("SCAN") or "TEMP B-TREE" in p], \
                (sql, plan)

    def test_cost_does_not_grow(self, tmp_path: Path) -> None:
        """Counts SQLite VM instructions, not time: the same for 3 and 1000 rotations a client."""
        counts = []
        for n, per_client in enumerate((3, 1000)):
            journal = Journal(tmp_path / f"state{n}")
            try:
                synthesize(journal, clients=10, per_client=per_client)
                ops = [0]

                def tick(ops: list[int] = ops) -> int:
                    ops[0] += 1
                    return 0

                journal._db.set_progress_handler(tick, 1)
                read_like_status(journal, "c3")
                journal._db.set_progress_handler(None, 1)
                counts.append(ops[0])
            finally:
                journal.close()
        assert counts[1] <= counts[0] * 1.1, counts


class TestLock:
    """A client's lock admits one holder (thread or process) and dies with its holder."""

    def test_second_holder_refused(self, journal: Any) -> None:
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with journal.lock("app"):
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        try:
            with pytest.raises(RotationLocked), journal.lock("app"):
                pass
            with journal.lock("other"):  # another client's lock is independent
                pass
        finally:
            release.set()
            holder.join()
        with journal.lock("app"):
            pass

    def test_waiter_gets_it_after_release(self, journal: Any) -> None:
        order: list[str] = []
        held = threading.Event()

        def wait_for_it() -> None:
            held.wait()
            with journal.lock("app", wait=60):
                order.append("waiter")

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        with journal.lock("app"):
            held.set()
            order.append("holder done")
        waiter.join()
        assert order == ["holder done", "waiter"]

    def test_released_when_holder_is_killed(self, journal: Any, backend: Backend) -> None:
        code = ("import os, time\n" + backend.open_code + "with journal.lock('app'):\n"
                "    print('held', flush=True)\n    time.sleep(600)\n")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "ROTATOR_TEST_PLACE": backend.place})
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
            with pytest.raises(RotationLocked), journal.lock("app"):
                pass
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        # PostgreSQL frees an advisory lock once its backend sees the connection end, a moment
        # after the kill; the flock goes with the process at once.
        with journal.lock("app", wait=60):
            pass

    def test_symlinked_lock_file_refused(self, sqlite_journal: SqliteJournal,
                                         tmp_path: Path) -> None:
        journal = sqlite_journal
        target = tmp_path / "elsewhere"
        target.write_text("")
        (journal.state_dir / "app.lock").symlink_to(target)
        with pytest.raises(RotationError, match="cannot open the lock file"), \
                journal.lock("app"):
            pass


class TestUnsafeFiles:
    """The journal refuses a database file planted as a symlink, open to others or foreign."""

    def test_symlink_refused(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        target = tmp_path / "elsewhere.sqlite3"
        target.touch(mode=0o600)
        (state / "journal.sqlite3").symlink_to(target)
        with pytest.raises(RotationError, match="not a regular file"):
            Journal(state)
        assert target.stat().st_size == 0

    def test_group_readable_refused(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        Journal(state).close()
        (state / "journal.sqlite3").chmod(0o640)
        with pytest.raises(RotationError, match="mode 600"):
            Journal(state)

    def test_world_writable_state_dir_refused(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(0o777)
        with pytest.raises(RotationError, match="writable by other users"):
            Journal(state)

    def test_second_journal_keeps_the_first_usable(self, tmp_path: Path) -> None:
        first = Journal(tmp_path / "state")
        first.begin("r-20260101T000000Z-0000000001", "app", "overlap", "cli", None, NOW)
        Journal(tmp_path / "state").close()
        first.begin("r-20260101T000000Z-0000000002", "other", "overlap", "cli", None, NOW)
        assert first.get("r-20260101T000000Z-0000000002").client == "other"
        first.close()


class TestLeases:
    """A client's lease has one holder until it expires or is released; each new holder gets a
    larger fencing token."""

    def test_one_holder_at_a_time(self, journal: Any) -> None:
        first = journal.acquire_lease("app", "daemon-a", 60)
        assert first is not None and first.token >= 1 and first.holder == "daemon-a"
        assert journal.acquire_lease("app", "daemon-b", 60) is None
        assert journal.acquire_lease("app", "daemon-a", 60) is None  # not reentrant
        other = journal.acquire_lease("other", "daemon-b", 60)  # other clients are apart
        assert other is not None

    def test_release_hands_over_with_a_larger_token(self, journal: Any) -> None:
        first = journal.acquire_lease("app", "daemon-a", 60)
        journal.release_lease(first)
        second = journal.acquire_lease("app", "daemon-b", 60)
        assert second is not None and second.token == first.token + 1
        journal.release_lease(first)  # a stale release changes nothing
        assert journal.acquire_lease("app", "daemon-c", 60) is None

    def test_expired_lease_is_taken_over(self, journal: Any) -> None:
        first = journal.acquire_lease("app", "daemon-a", 0)  # expires at once
        second = journal.acquire_lease("app", "daemon-b", 60)
        assert second is not None and second.token == first.token + 1
        with pytest.raises(LeaseLost, match="taken over"):
            journal.renew_lease(first, 60)

    def test_renew_keeps_the_token(self, journal: Any) -> None:
        lease = journal.acquire_lease("app", "daemon-a", 0)
        renewed = journal.renew_lease(lease, 60)  # expired, but nobody took it: still ours
        assert renewed.token == lease.token and renewed.expires_at > lease.expires_at
        assert journal.acquire_lease("app", "daemon-b", 60) is None

    def test_bad_arguments(self, journal: Any) -> None:
        for holder, ttl in (("", 60), ("x" * 201, 60), ("a\nb", 60), ("daemon", -1)):
            with pytest.raises(RotationError, match="lease"):
                journal.acquire_lease("app", holder, ttl)

    def test_racing_acquires(self, journal: Any) -> None:
        won: list[Any] = []
        errors = TestThreads().run_all(
            8, lambda i: won.append(journal.acquire_lease("app", f"d{i}", 60)))
        assert errors == [] and len([w for w in won if w is not None]) == 1


class TestFencing:
    """A holder whose lease expired and was taken over cannot begin or advance a rotation of
    that client; the new holder can."""

    def test_taken_over_holder_cannot_advance(self, journal: Any) -> None:
        old = journal.acquire_lease("app", "daemon-a", 0)  # will expire at once
        rotation = begin(journal.fenced(old))
        journal.fenced(old).advance(rotation.id, State.CREATING, NOW, expected=State.STARTED)
        new = journal.acquire_lease("app", "daemon-b", 60)  # takes over
        with pytest.raises(LeaseLost, match=f"fencing token {old.token}"):
            journal.fenced(old).advance(rotation.id, State.CREATED, NOW,
                                        expected=State.CREATING, secret_ref="stale")
        after = journal.get(rotation.id)
        assert after.state is State.CREATING and after.secret_ref is None
        assert [s.state for s in journal.steps(rotation.id)] == [State.STARTED, State.CREATING]
        journal.fenced(new).advance(rotation.id, State.ROLLING_BACK, NOW,
                                    expected=State.CREATING)
        assert journal.get(rotation.id).state is State.ROLLING_BACK

    def test_taken_over_holder_cannot_begin(self, journal: Any) -> None:
        old = journal.acquire_lease("app", "daemon-a", 0)
        journal.acquire_lease("app", "daemon-b", 60)
        with pytest.raises(LeaseLost):
            begin(journal.fenced(old))
        assert journal.latest("app") is None

    def test_lease_of_another_client_is_refused(self, journal: Any) -> None:
        lease = journal.acquire_lease("other", "daemon-a", 60)
        with pytest.raises(LeaseLost, match="for client 'other'"):
            begin(journal.fenced(lease))
        rotation = begin(journal)
        with pytest.raises(LeaseLost):
            journal.fenced(lease).advance(rotation.id, State.CREATING, NOW,
                                          expected=State.STARTED)
        assert journal.get(rotation.id).state is State.STARTED

    def test_lease_lost_is_a_conflict(self, journal: Any) -> None:
        """The engine already stops on JournalConflict without touching anything more."""
        old = journal.acquire_lease("app", "daemon-a", 0)
        journal.acquire_lease("app", "daemon-b", 60)
        with pytest.raises(JournalConflict):
            begin(journal.fenced(old))

    def test_refused_write_logs_lease_lost_once(self, journal: Any) -> None:
        """The job's refused write says the lease was lost, whether or not the renewal
        thread got there first, and the two together say it once."""
        old = journal.acquire_lease("app", "daemon-a", 0)
        fenced = journal.fenced(old)
        rotation = begin(fenced)
        journal.acquire_lease("app", "daemon-b", 60)
        with capture_logs() as logs:
            with pytest.raises(LeaseLost):
                fenced.advance(rotation.id, State.CREATING, NOW, expected=State.STARTED)
            with pytest.raises(LeaseLost):
                fenced.renew_lease(fenced.lease, 60)
        lost = [e for e in logs if e["event"] == "lease_lost"]
        assert lost == [{"event": "lease_lost", "client": "app", "token": old.token,
                         "log_level": "warning"}]
        assert fenced.lost

    def test_fenced_view_reads_and_closes_nothing(self, journal: Any) -> None:
        lease = journal.acquire_lease("app", "daemon-a", 60)
        fenced = journal.fenced(lease)
        assert isinstance(fenced, interfaces.Journal)
        rotation = finish(fenced, begin(fenced))
        fenced.close()
        assert journal.last_success("app") == rotation == fenced.get(rotation.id)
        assert len(fenced.steps(rotation.id)) == 6


class TestPostgres:
    """The PostgreSQL journal migrates once when daemons start together, never shows its URL's
    password, refuses weak TLS to a remote host, and reconnects once the database is back."""

    def test_concurrent_start_migrates_once(self, postgres_server: Any) -> None:
        from rotator.journal.postgres import SCHEMA_VERSION as PG_SCHEMA
        from rotator.journal.postgres import PostgresJournal

        url = postgres_server.create_schema(f"m_{secrets.token_hex(6)}")
        opened: list[Any] = []
        errors = TestThreads().run_all(6, lambda _i: opened.append(PostgresJournal(url)))
        try:
            assert errors == [] and len(opened) == 6
            import psycopg

            with psycopg.connect(url) as conn:
                versions = [r[0] for r in conn.execute(
                    "SELECT version FROM rotator_schema ORDER BY version")]
            assert versions == list(range(1, PG_SCHEMA + 1))
            finish(opened[0], begin(opened[1]))
        finally:
            for j in opened:
                j.close()

    def test_newer_schema_is_refused(self, postgres_server: Any) -> None:
        import psycopg

        from rotator.journal.postgres import PostgresJournal

        url = postgres_server.create_schema(f"m_{secrets.token_hex(6)}")
        PostgresJournal(url).close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO rotator_schema VALUES (99)")
        with pytest.raises(RotationError, match="newer than this rotator knows"):
            PostgresJournal(url)

    def test_password_never_shown(self, postgres_server: Any) -> None:
        from rotator.journal.postgres import PostgresJournal

        wrong = postgres_server.url("postgres").replace(postgres_server.password,
                                                        "not-the-password-123")
        with pytest.raises(RotationError) as caught:
            PostgresJournal(wrong)
        assert "not-the-password-123" not in str(caught.value)
        assert f"127.0.0.1:{postgres_server.port}/postgres" in str(caught.value)
        journal = PostgresJournal(postgres_server.url("postgres"))
        try:
            assert postgres_server.password not in journal.where
        finally:
            journal.close()

    @pytest.mark.parametrize(("url", "problem"), [
        ("postgresql://u:p@db.internal/rotator", None),  # verify-full is added
        ("postgresql://u:p@db.internal/rotator?sslmode=verify-ca", None),
        ("postgresql://u:p@127.0.0.1/rotator?sslmode=disable", None),
        ("postgresql:///rotator?host=/run/postgresql", None),
        ("postgresql://u:p@db.internal/rotator?sslmode=require", "sslmode=require to db.internal"),
        ("postgresql://u:p@127.0.0.1,db2:5433/r?sslmode=prefer", "sslmode=prefer to db2"),
        ("mysql://u:p@db/rotator", "must be a postgresql:// URL"),
    ])
    def test_url_problems(self, url: str, problem: str | None) -> None:
        from rotator.journal.postgres import url_problem

        found = url_problem(url)
        assert (found is None) if problem is None else (found is not None and problem in found)
        if found:
            assert ":p@" not in found
        if problem is not None and "sslmode" in problem:
            assert url_problem(url, allow_weak_tls=True) is None

    def test_reconnects_after_a_restart(self, postgres_server: Any) -> None:
        from rotator.journal.postgres import PostgresJournal

        journal = PostgresJournal(postgres_server.create_schema(f"r_{secrets.token_hex(6)}"))
        try:
            rotation = begin(journal)
            postgres_server.stop("immediate")
            try:
                with pytest.raises(RotationError, match="rotation journal postgresql://"):
                    journal.advance(rotation.id, State.CREATING, NOW, expected=State.STARTED)
                with pytest.raises(RotationError), journal.lock("app"):
                    pass
            finally:
                postgres_server.start()
            finish(journal, journal.get(rotation.id))
            with journal.lock("app"):
                pass
        finally:
            journal.close()
