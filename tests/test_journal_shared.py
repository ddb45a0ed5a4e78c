"""What the PostgreSQL journal offers daemons that answer alike (rotator.daemon.shared): the
trigger queue, the one-statement client facts, and per-IdP bounds in a claim; on a real
PostgreSQL 15."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rotator.interfaces import State

pytestmark = [pytest.mark.server]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def journal(postgres_server: Any) -> Iterator[Any]:
    from rotator.journal.postgres import PostgresJournal

    opened = PostgresJournal(postgres_server.create_schema(f"js_{secrets.token_hex(6)}"))
    yield opened
    opened.close()


def rotate(journal: Any, client: str, end: State, at: datetime, rotation_id: str) -> None:
    journal.begin(rotation_id, client, "single", "test", None, at)
    if end is State.COMPLETED:
        journal.advance(rotation_id, State.PROMOTED, at, expected=State.STARTED)
        journal.advance(rotation_id, State.COMPLETED, at, expected=State.PROMOTED)
    else:
        journal.advance(rotation_id, end, at, expected=State.STARTED, error=f"boom {end}")


class TestTriggerQueue:
    """A trigger joins the client's open rotation or the pending trigger, else is queued once;
    the first rotation of the client that begins answers it."""

    def test_queue_join_answer(self, journal: Any) -> None:
        assert journal.queue_rotation("app", "r-first-1", "ops") == ("r-first-1", False)
        assert journal.queue_rotation("app", "r-second-1", "bob") == ("r-first-1", True)
        assert journal.queue_rotation("other", "r-other-1", "ops") == ("r-other-1", False)
        assert [t[0] for t in journal.pending_rotations()] == ["r-first-1", "r-other-1"]
        assert journal.pending_rotations(3600) == []  # none queued an hour ago
        journal.begin("r-sched-1", "app", "single", "scheduler", None, NOW)
        assert journal.queued_rotation("r-first-1")[3] == "r-sched-1"  # answered by it
        assert journal.queue_rotation("app", "r-third-1", "ops") == ("r-sched-1", True)
        assert [t[0] for t in journal.pending_rotations()] == ["r-other-1"]
        journal.drop_queued("r-other-1")
        assert journal.pending_rotations() == []
        assert journal.queued_rotation("r-nope") is None
        # an id a trigger or a rotation already has is not asked again: a new one is queued
        for used in ("r-first-1", "r-sched-1"):
            got, joined = journal.queue_rotation(f"late-{used}", used, "ops")
            assert not joined and got != used and journal.queued_rotation(got)[3] is None


class TestClientFacts:
    """One statement tells, per client: latest, open and last successful rotation, the
    failures since that success, a live lease and a pending trigger."""

    def test_facts(self, journal: Any) -> None:
        rotate(journal, "app", State.COMPLETED, NOW, "r-ok-1")
        rotate(journal, "app", State.FAILED, NOW + timedelta(hours=1), "r-bad-1")
        rotate(journal, "app", State.ROLLED_BACK, NOW + timedelta(hours=2), "r-bad-2")
        journal.begin("r-open-1", "app", "single", "test", None, NOW + timedelta(hours=3))
        journal.acquire_lease("app", "daemon-a", 60)
        journal.queue_rotation("idle", "r-want-1", "ops")
        facts = journal.client_facts(["app", "idle", "never"])
        app = facts["app"]
        assert app.latest.id == "r-open-1" and app.open.id == "r-open-1"
        assert app.last_success_at == NOW and app.failures == 2
        assert app.last_failure_at == NOW + timedelta(hours=2)
        assert app.holder == "daemon-a" and app.pending is None
        assert facts["idle"].pending == "r-want-1" and facts["idle"].latest is None
        assert facts["never"].failures == 0 and facts["never"].holder is None


class TestClaimRooms:
    """A claim offered many clients takes no more of one IdP than its room, and at most the
    limit in all."""

    def test_rooms(self, journal: Any) -> None:
        clients = [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)]
        rooms = [("a", 1)] * 4 + [("b", 2)] * 4
        leases, elsewhere = journal.claim_leases(clients, "daemon-a", 60, 5,
                                                 [""] * len(clients), rooms=rooms)
        taken = sorted(lease.client for lease in leases)
        assert elsewhere == [] and taken == ["a0", "b0", "b1"]
