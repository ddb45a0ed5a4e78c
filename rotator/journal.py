"""The durable rotation journal (SQLite) and the per-client cross-process lock.

The journal records every rotation and each step it completed, so that a run interrupted
anywhere (SIGKILL, power loss, a store going away) is resumed or rolled back by the next
run. It holds fingerprints and the IdP's secret ids, never a secret value.

The lock is an ``flock`` on one file per client in the state directory: it is released by
the kernel when its holder dies, so a killed rotation never leaves a stale lock behind.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rotator.errors import RotationError, RotationLocked
from rotator.interfaces import RotationId

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rotations (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    state TEXT NOT NULL,
    family TEXT NOT NULL,
    actor TEXT NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    retire_after TEXT,
    old_fingerprint TEXT,
    new_fingerprint TEXT,
    secret_ref TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS rotations_client ON rotations (client, started_at);
CREATE TABLE IF NOT EXISTS steps (
    rotation_id TEXT NOT NULL REFERENCES rotations (id),
    at TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


class State(enum.StrEnum):
    """Where a rotation stands. Terminal states end with the rotation done or undone."""

    STARTED = "started"  # recorded; nothing changed anywhere yet
    STAGED = "staged"  # caller-chosen value written as PENDING before the IdP knows it
    CREATING = "creating"  # asking the IdP for a new secret; outcome unknown until CREATED
    CREATED = "created"  # the IdP accepts the new secret and every store holds it as PENDING
    VERIFIED = "verified"  # the new secret obtained a token
    PROMOTED = "promoted"  # the new secret is CURRENT everywhere; old awaits retirement
    ROLLING_BACK = "rolling_back"  # undoing a failed rotation
    COMPLETED = "completed"  # terminal: old secret retired
    ROLLED_BACK = "rolled_back"  # terminal: the new secret was discarded, the old one kept
    FAILED = "failed"  # terminal: stopped; see error (the stored current secret still works)

    @property
    def terminal(self) -> bool:
        return self in (State.COMPLETED, State.ROLLED_BACK, State.FAILED)


@dataclass(frozen=True)
class Rotation:
    """One row of the journal."""

    id: RotationId
    client: str
    state: State
    family: str
    actor: str
    started_at: datetime
    updated_at: datetime
    retire_after: datetime | None
    old_fingerprint: str | None
    new_fingerprint: str | None
    secret_ref: str | None
    error: str | None

    @property
    def awaiting_retirement(self) -> bool:
        """The new secret is current and the old one is kept valid until ``retire_after``."""
        return self.state is State.PROMOTED and self.family == "overlap"


def new_rotation_id() -> RotationId:
    """A sortable, unique rotation id."""
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"r-{now}-{uuid.uuid4().hex[:10]}"


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class Journal:
    """The rotation journal in one SQLite file under the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "journal.sqlite3"
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise RotationError(f"cannot open the rotation journal at {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _row(self, row: tuple[Any, ...]) -> Rotation:
        return Rotation(
            id=row[0], client=row[1], state=State(row[2]), family=row[3], actor=row[4],
            started_at=datetime.fromisoformat(row[5]),
            updated_at=datetime.fromisoformat(row[6]), retire_after=_ts(row[7]),
            old_fingerprint=row[8], new_fingerprint=row[9], secret_ref=row[10], error=row[11],
        )

    _COLUMNS = ("id, client, state, family, actor, started_at, updated_at, retire_after, "
                "old_fingerprint, new_fingerprint, secret_ref, error")

    def begin(self, rotation_id: RotationId, client: str, family: str, actor: str,
              old_fingerprint: str | None, now: datetime) -> Rotation:
        ts = now.isoformat()
        with self._tx():
            self._db.execute(
                f"INSERT INTO rotations ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (rotation_id, client, State.STARTED.value, family, actor, ts, ts, None,
                 old_fingerprint, None, None, None),
            )
            self._step(rotation_id, State.STARTED, ts, {})
        return self.get(rotation_id)

    def advance(self, rotation_id: RotationId, state: State, now: datetime,
                **fields: str | None) -> Rotation:
        """Record that ``rotation_id`` reached ``state``; ``fields`` update columns."""
        allowed = {"retire_after", "new_fingerprint", "secret_ref", "error"}
        unknown = set(fields) - allowed
        if unknown:  # pragma: no cover - programming error
            raise ValueError(f"unknown journal fields {unknown}")
        ts = now.isoformat()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx():
            self._db.execute(
                f"UPDATE rotations SET state = ?, updated_at = ?{', ' + sets if sets else ''} "
                "WHERE id = ?",
                (state.value, ts, *fields.values(), rotation_id),
            )
            self._step(rotation_id, state, ts, {k: v for k, v in fields.items() if v})
        return self.get(rotation_id)

    def _step(self, rotation_id: RotationId, state: State, ts: str,
              detail: dict[str, str | None]) -> None:
        self._db.execute("INSERT INTO steps VALUES (?,?,?,?)",
                         (rotation_id, ts, state.value, json.dumps(detail)))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise RotationError(f"rotation journal {self.path}: {exc}") from exc

    def get(self, rotation_id: RotationId) -> Rotation:
        row = self._db.execute(f"SELECT {self._COLUMNS} FROM rotations WHERE id = ?",
                               (rotation_id,)).fetchone()
        if row is None:
            raise RotationError(f"no rotation {rotation_id} in the journal")
        return self._row(row)

    def open_rotation(self, client: str) -> Rotation | None:
        """The client's unfinished rotation (non-terminal), if any."""
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM rotations WHERE client = ? AND state NOT IN "
            "('completed', 'rolled_back', 'failed') ORDER BY started_at DESC, rowid DESC "
            "LIMIT 1", (client,)).fetchone()
        return self._row(row) if row else None

    def latest(self, client: str) -> Rotation | None:
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM rotations WHERE client = ? "
            "ORDER BY started_at DESC, rowid DESC LIMIT 1", (client,)).fetchone()
        return self._row(row) if row else None

    def last_success(self, client: str) -> Rotation | None:
        """The newest rotation whose new secret became current."""
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM rotations WHERE client = ? AND state IN "
            "('promoted', 'completed') ORDER BY started_at DESC, rowid DESC LIMIT 1",
            (client,)).fetchone()
        return self._row(row) if row else None

    def steps(self, rotation_id: RotationId) -> list[tuple[datetime, State, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT at, state, detail FROM steps WHERE rotation_id = ? ORDER BY rowid",
            (rotation_id,)).fetchall()
        return [(datetime.fromisoformat(a), State(s), json.loads(d)) for a, s, d in rows]

    @contextmanager
    def lock(self, client: str, *, wait: float = 0.0) -> Iterator[None]:
        """Hold the client's rotation lock for the ``with`` block.

        Waits up to ``wait`` seconds for another holder to let go, then raises
        ``RotationLocked``. The lock file is opened without following symlinks and must
        belong to this user, so another local user cannot redirect or hold it.
        """
        path = self.state_dir / f"{client}.lock"
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RotationError(f"cannot open the lock file {path}: {exc.strerror}") from exc
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                raise RotationError(f"lock file {path} belongs to another user; remove it")
            deadline = time.monotonic() + wait
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RotationLocked(
                            f"client {client!r} is being rotated by another process"
                        ) from None
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 0.25)
            yield
        finally:
            os.close(fd)
