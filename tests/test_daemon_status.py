"""``rotator status`` reports each client's condition and next run by the daemon's rule."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_daemon import T0, make

from rotator.daemon.records import load_record
from rotator.journal import State, new_rotation_id


class TestStatusMatchesTheDaemon:
    """A record loaded from the journal (what status reports) tells the same condition and
    next run as a daemon that started on that journal, and reads store facts only for a
    client the journal never saw rotate."""

    def test_same_condition_and_next_run(self, tmp_path: Path) -> None:
        clients = {"fresh": 'rotate_every = "1h"\njitter = "10m"',
                   "stale": 'rotate_every = "1h"', "failed": 'rotate_every = "1h"',
                   "manual": "", "open": 'rotate_every = "30d"',
                   "never": 'rotate_every = "1h"\nwindow = "Mon-Fri 20:00-22:00"'}
        h = make(tmp_path, clients, since=T0 - timedelta(minutes=5))
        journal = h.journal()
        for name, ago in (("fresh", 10), ("stale", 120), ("failed", 40)):
            rid = journal.begin(new_rotation_id(), name, "overlap", "cli", "fp",
                                T0 - timedelta(minutes=ago)).id
            journal.advance(rid, State.PROMOTED, T0 - timedelta(minutes=ago),
                            expected=State.STARTED)
            journal.advance(rid, State.COMPLETED, T0 - timedelta(minutes=ago),
                            expected=State.PROMOTED)
        rid = journal.begin(new_rotation_id(), "failed", "overlap", "cli", "fp",
                            T0 - timedelta(minutes=20)).id
        journal.advance(rid, State.FAILED, T0 - timedelta(minutes=20), expected=State.STARTED,
                        error="the IdP refused")
        journal.begin(new_rotation_id(), "open", "overlap", "cli", "fp", T0)
        asked: list[str] = []

        def facts(_config: object, client: object) -> object:
            asked.append(client.name)  # type: ignore[attr-defined]
            return T0 - timedelta(minutes=5)

        # A daemon started now, on this journal. One client is overdue: with several, the
        # daemon spreads them over its catch-up period, which only it knows.
        h.service.prepare()
        for name in clients:
            record = load_record(journal, h.config, h.config.clients[name],
                                 facts=facts)  # type: ignore[arg-type]
            mine, daemon = record.state(T0), h.service.client(name)
            assert (mine.condition, mine.next_run, mine.failures, mine.next_attempt) == (
                daemon.condition, daemon.next_run, daemon.failures, daemon.next_attempt), name
        assert sorted(asked) == ["manual", "never", "open"]
        conditions = {n: load_record(journal, h.config, h.config.clients[n],
                                     facts=facts).state(T0).condition.value  # type: ignore[arg-type]
                      for n in clients}
        assert conditions == {"fresh": "ready", "stale": "due", "failed": "failing",
                              "manual": "ready", "open": "rotating", "never": "ready"}
