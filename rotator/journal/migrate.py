"""``rotator journal migrate``: copy the SQLite journal's history into a PostgreSQL journal.

Every rotation and every step is copied in one transaction, so the target holds the whole
history or nothing. The target must hold no rotation yet: merging two histories could give a
client two open rotations. Leases are not copied (they only matter while daemons run), and
the source is left as it was. The caller makes sure no rotator writes the source meanwhile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from rotator.errors import RotationError
from rotator.journal.postgres import PostgresJournal
from rotator.journal.sqlite import SqliteJournal


@dataclass(frozen=True)
class Copied:
    rotations: int
    steps: int
    open_rotations: int


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def copy_history(source: SqliteJournal, target: PostgresJournal) -> Copied:
    """Copy every rotation and step of ``source`` into the empty ``target``."""
    with source._reading():
        rotations = source._db.execute(
            "SELECT id, client, state, family, actor, started_at, updated_at, retire_after, "
            "old_fingerprint, new_fingerprint, secret_ref, error, targets, audit_key_id "
            "FROM rotations ORDER BY rowid").fetchall()
        steps = source._db.execute(
            "SELECT rotation_id, at, state, detail FROM steps ORDER BY rowid").fetchall()
    with target._tx() as db:
        db.execute("LOCK TABLE rotations IN EXCLUSIVE MODE")
        row = db.execute("SELECT count(*) FROM rotations").fetchone()
        if row and row[0]:
            raise RotationError(
                f"the journal at {target.where} already holds {row[0]} rotation(s): migrate "
                "into an empty database, so that no client ends up with two histories")
        with db.cursor() as cur:
            cur.executemany(
                "INSERT INTO rotations (id, client, state, family, actor, started_at, "
                "updated_at, retire_after, old_fingerprint, new_fingerprint, secret_ref, "
                "error, targets, audit_key_id) VALUES "
                "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                [(r[0], r[1], r[2], r[3], r[4], _ts(r[5]), _ts(r[6]), _ts(r[7]), r[8], r[9],
                  r[10], r[11], json.dumps(json.loads(r[12] or "[]")), r[13])
                 for r in rotations])
            cur.executemany(
                "INSERT INTO steps (rotation_id, at, state, detail) VALUES (%s,%s,%s,%s)",
                [(s[0], _ts(s[1]), s[2], s[3]) for s in steps])
    terminal = ("completed", "rolled_back", "failed")
    return Copied(len(rotations), len(steps), sum(1 for r in rotations if r[2] not in terminal))
