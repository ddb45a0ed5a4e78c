"""The SQLite rotation journal is opened in WAL mode with ``synchronous=FULL``, so a step it
recorded survives a power loss (docs/security.md, "Durability of the rotation journal")."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from rotator.interfaces import State
from rotator.journal import SqliteJournal, new_rotation_id

#: ``PRAGMA synchronous`` answers with a number: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA.
FULL = 2


def _pragmas(journal: SqliteJournal) -> tuple[str, int]:
    # The setting belongs to the connection, so ask the journal's own (a new connection
    # would show SQLite's default, whatever the journal set).
    db: sqlite3.Connection = journal._db
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = db.execute("PRAGMA synchronous").fetchone()[0]
    return mode, synchronous


class TestJournalDurability:
    """Every connection the journal opens commits with a WAL fsync (synchronous=FULL)."""

    def test_a_new_journal(self, tmp_path: Path) -> None:
        journal = SqliteJournal(tmp_path / "state")
        try:
            assert _pragmas(journal) == ("wal", FULL)
        finally:
            journal.close()

    def test_a_reopened_journal_with_steps_recorded(self, tmp_path: Path) -> None:
        now = datetime.now(UTC)
        journal = SqliteJournal(tmp_path / "state")
        rotation = journal.begin(new_rotation_id(), "app", "overlap", "test", None, now)
        journal.advance(rotation.id, State.CREATING, now, expected=State.STARTED)
        journal.close()
        journal = SqliteJournal(tmp_path / "state")
        try:
            assert _pragmas(journal) == ("wal", FULL)
            assert journal.open_rotation("app") is not None
        finally:
            journal.close()
