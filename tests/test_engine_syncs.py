"""How often a rotation syncs its journal and audit log, counted (no timing) on real servers.

An overlap rotation records four steps (begun and CREATING, CREATED, VERIFIED, PROMOTED). Its
CREATED step is committed without a sync and its audit events are synced with VERIFIED's
commit, because only the verification's token request comes between. Its PROMOTED step, when
a grace period follows, is committed without a sync too: its events are synced when the
command ends, and the journal's log before the old secret is retired or the journal closes.
Every other step is synced before the rotation changes anything again. The SIGKILL matrix
(``tests/test_crash_safety.py``) proves the resumes; these tests count the syncs and check
that nothing a store or IdP write depends on is left unsynced when it happens.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rotation_env import KeycloakRealm, Scenario
from servers import OpenBao
from test_request_count import counted_engine

from providers.stores.vault import VaultStore
from rotator.audit import sinks
from rotator.engine import Engine
from rotator.journal.sqlite import SqliteJournal
from rotator.secrets import Secret

pytestmark = pytest.mark.server


class Syncs:
    """The journal's commits (synced or not, from its SQL statements) and the audit log's
    syncs, as they happen."""

    def __init__(self) -> None:
        self.audit = 0
        self.synced_commits = 0
        self.unsynced_commits = 0
        self._full = True

    def statement(self, sql: str) -> None:
        if sql == "PRAGMA synchronous=NORMAL":
            self._full = False
        elif sql == "PRAGMA synchronous=FULL":
            self._full = True
        elif sql == "COMMIT":
            if self._full:
                self.synced_commits += 1
            else:
                self.unsynced_commits += 1


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    counted = Syncs()
    real_sync = sinks._sync

    def sync(fd: int) -> None:
        counted.audit += 1
        real_sync(fd)

    monkeypatch.setattr(sinks, "_sync", sync)
    return counted


def _traced(engine: Engine, syncs: Syncs) -> None:
    journal = engine.journal
    assert isinstance(journal, SqliteJournal)
    journal._db.set_trace_callback(syncs.statement)


def _state_on_disk(journal: Path) -> str:
    """The rotation's state as another process reads the journal file."""
    with sqlite3.connect(journal) as db:
        (state,) = db.execute("SELECT state FROM rotations ORDER BY rowid DESC LIMIT 1"
                              ).fetchone()
    db.close()
    return str(state)


class TestOverlapRotationSyncs:
    """An overlap rotation with a grace period syncs its journal twice and its audit log
    twice (its CREATED step with the VERIFIED one, its PROMOTED step's events with the
    outcome at the end), and the first store write of the promotion finds VERIFIED and
    every event before it synced."""

    def test_two_syncs_each(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            syncs: Syncs) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1d")
        with counted_engine(s, monkeypatch) as (engine, _seen, _built):
            _traced(engine, syncs)
            outcome = engine.rotate("svc")
            assert outcome.ok, outcome.message
            assert syncs.synced_commits == 2  # begun (CREATING), VERIFIED
            assert syncs.unsynced_commits == 2  # CREATED, PROMOTED
            assert syncs.audit == 2  # with VERIFIED; PROMOTED's with the outcome at the end
            journal = engine.journal
            assert isinstance(journal, SqliteJournal) and journal._behind

    def test_no_grace_period_promoted_synced(
            self, kc_realm: KeycloakRealm, bao_server: OpenBao, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, syncs: Syncs) -> None:
        """Retirement right after the promotion: PROMOTED is synced as before."""
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="0s")
        with counted_engine(s, monkeypatch) as (engine, _seen, _built):
            _traced(engine, syncs)
            outcome = engine.rotate("svc")
        assert outcome.ok and outcome.action == "rotated", outcome.message
        assert syncs.unsynced_commits == 1  # CREATED only

    def test_retirement_syncs_the_promotion_before_the_idp_acts(
            self, kc_realm: KeycloakRealm, bao_server: OpenBao, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, syncs: Syncs) -> None:
        """The scheduler's retirement, once the grace period is over, in the same process
        and with no commit since the unsynced PROMOTED: the log is synced first."""
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1d")
        wal_syncs: list[bool] = []
        with counted_engine(s, monkeypatch) as (engine, _seen, _built):
            journal = engine.journal
            assert isinstance(journal, SqliteJournal)
            assert engine.rotate("svc").ok
            assert journal._behind
            real_sync = SqliteJournal.sync

            def sync(j: SqliteJournal) -> None:
                wal_syncs.append(j._behind)
                real_sync(j)

            monkeypatch.setattr(SqliteJournal, "sync", sync)
            idp = engine.adapters.idp("kc")
            real_retire = type(idp).retire_old_secrets
            order: list[str] = []

            def retire(self: Any, *args: Any, **kwargs: Any) -> Any:
                order.append(f"idp retire, journal behind: {journal._behind}")
                return real_retire(self, *args, **kwargs)

            monkeypatch.setattr(type(idp), "retire_old_secrets", retire)
            rotation = journal.open_rotation("svc")
            assert rotation is not None and rotation.retire_after is not None
            due = rotation.retire_after + timedelta(seconds=1)
            engine.clock = lambda: due
            outcome = engine.retire("svc", actor="scheduler")
        assert outcome.ok and outcome.action == "retired", outcome.message
        assert wal_syncs[0] is True  # the one sync that had something to do
        assert order == ["idp retire, journal behind: False"]


class TestJournalSyncsWhatIsOutstanding:
    """``SqliteJournal.sync`` syncs the write-ahead log once an unsynced commit is
    outstanding, and not otherwise; closing the journal syncs it."""

    def test_sync_and_close(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        journal = SqliteJournal(tmp_path / "state")
        fsynced: list[int] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            fsynced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        journal.acquire_lease("c1", "h", 60)
        journal.sync()
        assert fsynced == [] and not journal._behind  # synced by its commit
        with journal.unsynced():
            journal.acquire_lease("c2", "h", 60)
        assert journal._behind
        journal.sync()
        assert len(fsynced) == 1 and not journal._behind
        journal.sync()
        assert len(fsynced) == 1
        with journal.unsynced():
            journal.acquire_lease("c3", "h", 60)
        journal.close()
        assert len(fsynced) == 2
        with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
            assert {r[0] for r in db.execute("SELECT client FROM leases")} == {
                "c1", "c2", "c3"}
        db.close()

    def test_promotion_finds_everything_before_it_synced(
            self, kc_realm: KeycloakRealm, bao_server: OpenBao, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, syncs: Syncs) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1d")
        seen: list[tuple[int, int, int, str]] = []
        real_promote = VaultStore.promote

        def promote(store: VaultStore, *args: Any, **kwargs: Any) -> Any:
            seen.append((syncs.synced_commits, syncs.unsynced_commits, syncs.audit,
                         _state_on_disk(engine.journal.path)))  # type: ignore[attr-defined]
            return real_promote(store, *args, **kwargs)

        monkeypatch.setattr(VaultStore, "promote", promote)
        with counted_engine(s, monkeypatch) as (engine, _seen, _built):
            _traced(engine, syncs)
            assert engine.rotate("svc").ok
        # begun and VERIFIED synced (the latter after CREATED, so CREATED with it), and the
        # four events before it (started, created, staged twice, verified) in one sync
        assert seen == [(2, 1, 1, "verified")]


class TestSingleSecretRotationSyncsEveryStep:
    """A single-secret rotation, whose promotion follows CREATED, syncs every step."""

    def test_no_unsynced_commit(self, kc_realm: KeycloakRealm, bao_server: OpenBao,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                syncs: Syncs) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=False)
        with counted_engine(s, monkeypatch) as (engine, _seen, _built):
            _traced(engine, syncs)
            assert engine.rotate("svc").ok
        assert syncs.unsynced_commits == 0
        assert syncs.synced_commits >= 4


class TestUnsyncedBlock:
    """Inside ``unsynced()`` this thread's commits go without a sync and are seen at once by
    another connection; after it, and in other threads meanwhile, every commit syncs."""

    @pytest.fixture
    def journal(self, tmp_path: Path) -> Iterator[SqliteJournal]:
        journal = SqliteJournal(tmp_path / "state")
        yield journal
        journal.close()

    def test_modes(self, journal: SqliteJournal) -> None:
        statements: list[str] = []
        journal._db.set_trace_callback(statements.append)

        def mode() -> int:
            return int(journal._db.execute("PRAGMA synchronous").fetchone()[0])

        other: list[int] = []
        with journal.unsynced():
            journal.acquire_lease("c1", "h", 60)
            thread = threading.Thread(target=lambda: (journal.acquire_lease("c2", "h", 60),
                                                      other.append(mode())))
            thread.start()
            thread.join()
        journal.acquire_lease("c3", "h", 60)
        commits = [i for i, sql in enumerate(statements) if sql == "COMMIT"]
        modes = []
        for i in commits:
            before = [sql for sql in statements[:i] if sql.startswith("PRAGMA synchronous=")]
            modes.append(before[-1] if before else "PRAGMA synchronous=FULL")
        assert modes[-3:] == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL",
                              "PRAGMA synchronous=FULL"]
        assert other == [2] and mode() == 2  # FULL
        with sqlite3.connect(journal.path) as db:
            assert {r[0] for r in db.execute("SELECT client FROM leases")} == {
                "c1", "c2", "c3"}
        db.close()


class TestSecretsWrappedPerRotation:
    """An overlap rotation wraps four values as Secrets, each registered with the redactor
    once: the stored secret as read, the IdP's new one, the verification's access token and
    the staged copy read back at the promotion (not the audit key id's constant, not the
    same entry's credentials again)."""

    def test_four(self, kc_realm: KeycloakRealm, bao_server: OpenBao, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
        s = Scenario.create(kc_realm, bao_server, tmp_path, overlap=True, grace="1d")
        wrapped: list[int] = []
        real_init = Secret.__init__

        def init(secret: Secret, value: str) -> None:
            wrapped.append(1)
            real_init(secret, value)

        with counted_engine(s, monkeypatch) as (engine, _seen, _built):
            # once per engine, not per rotation: the admin sign-in (its token is a Secret)
            # and the audit key's id
            engine.adapters.idp("kc").capabilities(s.client_id)
            engine._audit_key_id()
            monkeypatch.setattr(Secret, "__init__", init)
            assert engine.rotate("svc").ok
        assert len(wrapped) == 4
