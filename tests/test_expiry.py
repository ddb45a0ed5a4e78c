"""Secrets that expire: the journal keeps the expiry, and ``rotate_before_expiry`` makes a
client due that long before it, through the one scheduling rule (given clock)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rotator.config import load_config
from rotator.daemon.records import client_expiry, due_clients, load_record
from rotator.daemon.schedule import History, Policy, decide
from rotator.interfaces import State
from rotator.journal import SqliteJournal


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestRotateBeforeExpiry:
    """A client falls due rotate_before_expiry before its secret expires, or earlier by
    another rule."""

    def test_due_exactly_that_long_before_expiry(self) -> None:
        policy = Policy(rotate_before_expiry=7 * 86400)
        history = History(utc(2025, 1, 1), secret_expires_at=utc(2025, 7, 1))
        before = decide("a", policy, history, utc(2025, 6, 23, 23, 59))
        at = decide("a", policy, history, utc(2025, 6, 24))
        assert not before.due and before.next_run == utc(2025, 6, 24)
        assert at.due and at.runnable and at.due_at == utc(2025, 6, 24)

    def test_the_earliest_rule_wins(self) -> None:
        history = History(utc(2025, 1, 1), secret_expires_at=utc(2025, 7, 1))
        sooner = decide("a", Policy(rotate_every=30 * 86400, rotate_before_expiry=86400),
                        history, utc(2025, 1, 2))
        assert sooner.due_at == utc(2025, 1, 31)
        later = decide("a", Policy(rotate_every=365 * 86400, rotate_before_expiry=86400),
                       history, utc(2025, 1, 2))
        assert later.due_at == utc(2025, 6, 30)

    def test_unknown_expiry_alone_is_never_due(self) -> None:
        decision = decide("a", Policy(rotate_before_expiry=86400), History(utc(2025, 1, 1)),
                          utc(2030, 1, 1))
        assert not decision.due and decision.next_run is None

    def test_never_rotated_is_due_at_once(self) -> None:
        now = utc(2025, 1, 1)
        decision = decide("a", Policy(rotate_before_expiry=86400), History(None), now)
        assert decision.runnable and decision.next_run == now

    def test_window_still_applies(self) -> None:
        from rotator.daemon.schedule import parse_window
        policy = Policy(rotate_before_expiry=86400, window=parse_window("09:00-10:00"))
        history = History(utc(2025, 1, 1), secret_expires_at=utc(2025, 7, 1, 3))
        decision = decide("a", policy, history, utc(2025, 6, 30, 3))
        assert decision.due and not decision.runnable
        assert decision.next_run == utc(2025, 6, 30, 9)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    j = SqliteJournal(tmp_path / "state")
    yield j
    j.close()


def _rotation(journal: SqliteJournal, expires_at: str | None, start: datetime) -> None:
    r = journal.begin(f"r-{start:%Y%m%dT%H%M%SZ}-0123456789", "svc", "overlap", "cli", None,
                      start)
    for prev, state, fields in (
            (State.STARTED, State.CREATING, {}),
            (State.CREATING, State.CREATED, {"secret_ref": "key-1", "expires_at": expires_at}),
            (State.CREATED, State.VERIFIED, {}),
            (State.VERIFIED, State.PROMOTED, {"retire_after": start.isoformat()}),
            (State.PROMOTED, State.COMPLETED, {})):
        r = journal.advance(r.id, state, start, expected=prev, **fields)


class TestJournalledExpiry:
    """The expiry the IdP gave is kept in the CREATED step and read back for the last success."""

    def test_kept_and_read_back(self, journal: SqliteJournal) -> None:
        _rotation(journal, "2025-07-01T00:00:00+00:00", utc(2025, 1, 1))
        assert client_expiry(journal, "svc") == utc(2025, 7, 1)
        rotation = journal.latest("svc")
        assert rotation is not None and rotation.secret_ref == "key-1"

    def test_the_newest_success_counts(self, journal: SqliteJournal) -> None:
        _rotation(journal, "2025-07-01T00:00:00+00:00", utc(2025, 1, 1))
        _rotation(journal, None, utc(2025, 2, 1))
        assert client_expiry(journal, "svc") is None

    def test_status_and_rotate_due_agree(self, journal: SqliteJournal, tmp_path: Path) -> None:
        _rotation(journal, "2025-07-01T00:00:00+00:00", utc(2025, 1, 1))
        (tmp_path / "rotator.toml").write_text("""
[stores.envfile]
type = "env"
file = "creds.env"

[idps.kc]
type = "keycloak"
url = "https://sso.example.com"
realm = "r"
admin_client_id = "admin"
admin_client_secret_env = "NOT_NEEDED_HERE"

[defaults]
rotate_before_expiry = "14d"

[clients.svc]
idp = "kc"
client_id = "svc"
stores = [{store = "envfile", prefix = "SVC"}]
""")
        config = load_config(tmp_path / "rotator.toml", stores_only=True)
        assert config.clients["svc"].rotate_before_expiry == 14 * 86400
        record = load_record(journal, config, config.clients["svc"], facts=lambda *_: None)
        assert record.secret_expires_at == utc(2025, 7, 1)
        for now, due in ((utc(2025, 6, 16, 23), False), (utc(2025, 6, 17), True)):
            state = record.state(now)
            assert (state.condition.value == "due") is due
            assert state.secret_expires_at == utc(2025, 7, 1)
            assert (due_clients(config, journal, ["svc"], now, facts=lambda *_: None)
                    == (["svc"] if due else []))
            assert state.next_run == max(now, utc(2025, 6, 17))
        assert timedelta(days=14) == utc(2025, 7, 1) - utc(2025, 6, 17)
