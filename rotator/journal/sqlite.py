"""The embedded rotation journal: one SQLite file, and a per-client ``flock`` lock.

The journal records every rotation and each step it completed, so that a run interrupted
anywhere (SIGKILL, power loss, a store going away) is resumed or rolled back by the next
run. It holds fingerprints and the IdP's secret ids, never a secret value. The contract is
:class:`rotator.interfaces.Journal`.

Threads: one connection (``check_same_thread=False``) guarded by a mutex serves every thread.
A journal call takes well under a millisecond, the network steps between them take
hundreds, so serialising calls costs nothing measurable; in exchange ``close()`` closes the
one connection whatever thread calls it, and a thread pool that replaces its threads does
not leave connections behind. Processes sharing the file are kept apart by SQLite's own
locking (``BEGIN IMMEDIATE`` with a 30 s busy timeout).

The schema and its versions: :mod:`rotator.journal.sqlite_schema`.

The lock is an ``flock`` on one file per client in the state directory: it is released by
the kernel when its holder dies, so a killed rotation never leaves a stale lock behind. Two
threads of one process exclude each other too (each call opens its own descriptor).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rotator._files import ensure_private_dir
from rotator.errors import JournalConflict, LeaseLost, RotationError, RotationLocked
from rotator.interfaces import (
    AuditCheckpoint,
    HookRun,
    Lease,
    Rotation,
    RotationId,
    RotationTarget,
    State,
    Step,
)
from rotator.journal import _rows
from rotator.journal._rows import COLUMNS as _COLUMNS
from rotator.journal._rows import HOOK_COLUMNS as _HOOK_COLUMNS
from rotator.journal._rows import OPEN as _OPEN
from rotator.journal._rows import SUCCESS as _SUCCESS
from rotator.journal.fencing import FencedJournal
from rotator.journal.sqlite_schema import SCHEMA_VERSION, migrate, prepare_db_file
from rotator.secrets import redact

__all__ = ["SCHEMA_VERSION", "SqliteJournal", "check_lease_args"]

#: What a released lease expires at: before any clock reading.
_RELEASED = "0001-01-01T00:00:00+00:00"
_NEWEST = "ORDER BY started_at DESC, rowid DESC LIMIT 1"


def _row(row: Sequence[Any]) -> Rotation:
    return _rows.rotation(row, datetime.fromisoformat)


def check_lease_args(holder: str, ttl: float) -> None:
    """Refuse a holder name or lease length no journal should store."""
    if not holder or len(holder) > 200 or not holder.isprintable():
        raise RotationError("a lease holder must be a printable name of 1 to 200 characters")
    if not 0 <= ttl <= 86400 * 7:
        raise RotationError(f"a lease lasts 0 to 604800 seconds, not {ttl}")


class SqliteJournal:
    """The rotation journal in ``journal.sqlite3`` under the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "journal.sqlite3"
        self._mutex = threading.RLock()
        #: per thread: ``unsynced`` (inside :meth:`unsynced`)
        self._local = threading.local()
        #: a commit made inside unsynced() is not yet covered by a sync (see sync())
        self._behind = False
        try:
            ensure_private_dir(state_dir)
            prepare_db_file(self.path)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise RotationError(f"cannot open the rotation journal at {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except (sqlite3.Error, RotationError) as exc:
            self._db.close()
            if isinstance(exc, RotationError):
                raise
            raise RotationError(f"cannot open the rotation journal at {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        with self._tx():
            migrate(self._db, self.path)

    def close(self) -> None:
        with self._mutex, suppress(sqlite3.Error):
            with suppress(OSError):
                self.sync()
            self._db.close()

    def sync(self) -> None:
        """Make the commits made inside :meth:`unsynced` since the last synced one durable
        now, with one sync of the write-ahead log; nothing when none is outstanding.

        The log file is opened for the sync alone: SQLite locks the database and its
        ``-shm`` file, never the log, so closing this descriptor drops no lock of its.
        """
        with self._mutex:
            if not self._behind:
                return
            try:
                fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # checkpointed into the database, which SQLite synced
                self._behind = False
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._behind = False

    # -- writing ---------------------------------------------------------------------------

    def begin(self, rotation_id: RotationId, client: str, family: str, actor: str,
              old_fingerprint: str | None, now: datetime, *,
              targets: Sequence[RotationTarget] = (),
              audit_key_id: str | None = None, then: State | None = None) -> Rotation:
        return self._begin(rotation_id, client, family, actor, old_fingerprint, now,
                           targets, audit_key_id, None, then)

    def _begin(self, rotation_id: RotationId, client: str, family: str, actor: str,
               old_fingerprint: str | None, now: datetime, targets: Sequence[RotationTarget],
               audit_key_id: str | None, fence: Lease | None,
               then: State | None = None) -> Rotation:
        _rows.check_rotation_id(rotation_id)
        _rows.check_then(then)
        ts = now.isoformat()
        state = then or State.STARTED
        with self._tx():
            self._check_fence(client, fence, f"rotation {rotation_id} was not begun")
            # One statement inserts the row unless the client has an open rotation, and
            # hands it back as written (RETURNING): no read before or after it.
            try:
                rows = self._db.execute(
                    f"INSERT INTO rotations ({_COLUMNS}) SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,? "
                    f"WHERE NOT EXISTS (SELECT 1 FROM rotations WHERE client = ? AND {_OPEN}) "
                    f"RETURNING {_COLUMNS}",
                    (rotation_id, client, state.value, family, actor, ts, ts, None,
                     old_fingerprint, None, None, None, _rows.targets_json(targets),
                     audit_key_id, client),
                ).fetchall()
            except sqlite3.IntegrityError:  # the primary key: the id is taken
                raise JournalConflict(f"rotation {rotation_id} exists already") from None
            if not rows:  # refused: say why as PostgreSQL's journal does, the id first
                if self._one("WHERE id = ?", rotation_id) is not None:
                    raise JournalConflict(f"rotation {rotation_id} exists already")
                open_rotation = self._one(f"WHERE client = ? AND {_OPEN} {_NEWEST}", client)
                assert open_rotation is not None  # the writer holds the database's lock
                raise JournalConflict(
                    f"client {client!r} has an unfinished rotation {open_rotation.id} "
                    f"({open_rotation.state}); finish it before beginning another")
            # The STARTED step, and the one ``then`` moved it on to, in one statement.
            self._db.execute(
                "INSERT INTO steps VALUES (?,?,?,'{}')" + (", (?,?,?,'{}')" if then else ""),
                (rotation_id, ts, State.STARTED.value,
                 *((rotation_id, ts, then.value) if then else ())))
            return _row(rows[0])

    def advance(self, rotation_id: RotationId, state: State, now: datetime, *,
                expected: State, **fields: str | None) -> Rotation:
        return self._advance(rotation_id, state, now, expected, None, fields)

    def _advance(self, rotation_id: RotationId, state: State, now: datetime,
                 expected: State, fence: Lease | None, fields: dict[str, str | None]
                 ) -> Rotation:
        detail, fields = _rows.step_fields(fields)
        ts = now.isoformat()
        sets = "".join(f", {k} = ?" for k in fields)
        with self._tx():
            if fence is not None:
                self._check_fence(self._get(rotation_id).client, fence,
                                  f"rotation {rotation_id} was not moved to {state}")
            updated = self._db.execute(
                f"UPDATE rotations SET state = ?, updated_at = ?{sets} WHERE id = ? AND state = ? "
                f"RETURNING {_COLUMNS}",
                (state.value, ts, *fields.values(), rotation_id, expected.value),
            ).fetchall()
            if not updated:
                actual = self._get(rotation_id).state
                raise JournalConflict(
                    f"rotation {rotation_id} is {actual}, not {expected}: another writer moved "
                    f"it, so it was not moved to {state}")
            self._db.execute("INSERT INTO steps VALUES (?,?,?,?)",
                             (rotation_id, ts, state.value, json.dumps(detail)))
            return _row(updated[0])

    def _check_fence(self, client: str, fence: Lease | None, what: str) -> None:
        """Inside a write: ``LeaseLost`` unless ``fence`` is the client's newest lease."""
        if fence is None:
            return
        if fence.client != client:
            raise LeaseLost(f"the lease given is for client {fence.client!r}, not {client!r}; "
                            f"{what}")
        row = self._db.execute("SELECT token, holder FROM leases WHERE client = ?",
                               (client,)).fetchone()
        if row is None or int(row[0]) != fence.token:
            newer = "nobody" if row is None else f"{row[1]} (fencing token {row[0]})"
            raise LeaseLost(
                f"client {client!r} is leased to {newer}, not to this writer (fencing token "
                f"{fence.token}): its lease expired and was taken over, so {what}")

    @contextmanager
    def unsynced(self) -> Iterator[None]:
        """Commit this thread's writes inside the block without syncing them to disk.

        In WAL mode such a commit (SQLite's ``synchronous=NORMAL``) is in the file when it
        returns, so it outlives the process (SIGKILL), but not a power loss until the next
        synced commit: the WAL is one file written in order, and its sync makes every commit
        before it durable too. For a step after which only a check that changes nothing
        comes before the next step is recorded (see ``Audited._advance_unsynced``), and
        :meth:`sync` or a later synced commit makes them durable.
        """
        outer = getattr(self._local, "unsynced", False)
        self._local.unsynced = True
        try:
            yield
        finally:
            self._local.unsynced = outer

    @contextmanager
    def _tx(self) -> Iterator[None]:
        unsynced = getattr(self._local, "unsynced", False)
        with self._mutex:
            try:
                if unsynced:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                    # a synced commit syncs the log, and with it every commit before it
                    self._behind = unsynced
                finally:
                    if unsynced:
                        self._synced_again()
            except sqlite3.Error as exc:
                raise RotationError(f"rotation journal {self.path}: {exc}") from exc

    def _synced_again(self) -> None:
        """Back to a sync per commit after an unsynced one; a connection that cannot be
        put back is closed rather than left committing without syncs."""
        try:
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            self._db.close()
            raise

    # -- reading ---------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._mutex:
            try:
                yield
            except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
                raise RotationError(f"rotation journal {self.path}: {exc}") from exc

    def _one(self, where: str, *params: str) -> Rotation | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM rotations {where}", params).fetchone()
        return _row(row) if row else None

    def _get(self, rotation_id: RotationId) -> Rotation:
        rotation = self._one("WHERE id = ?", rotation_id)
        if rotation is None:
            raise RotationError(f"no rotation {rotation_id} in the journal")
        return rotation

    def get(self, rotation_id: RotationId) -> Rotation:
        with self._reading():
            return self._get(rotation_id)

    def open_rotation(self, client: str) -> Rotation | None:
        with self._reading():
            return self._one(f"WHERE client = ? AND {_OPEN} {_NEWEST}", client)

    def latest(self, client: str) -> Rotation | None:
        with self._reading():
            return self._one(f"WHERE client = ? {_NEWEST}", client)

    def last_success(self, client: str) -> Rotation | None:
        with self._reading():
            return self._one(f"WHERE client = ? AND {_SUCCESS} {_NEWEST}", client)

    def rotated_clients(self) -> set[str]:
        """Every client with a rotation in the journal: the daemon reads the others' history
        (none) without three queries each at start."""
        with self._reading():
            return {row[0] for row in self._db.execute("SELECT DISTINCT client FROM rotations")}

    def steps(self, rotation_id: RotationId) -> list[Step]:
        with self._reading():
            rows = self._db.execute(
                "SELECT at, state, detail FROM steps WHERE rotation_id = ? ORDER BY rowid",
                (rotation_id,)).fetchall()
            return [_rows.step(row, datetime.fromisoformat) for row in rows]

    # -- hook runs -------------------------------------------------------------------------

    def record_hook_run(self, run: HookRun) -> None:
        error = redact(run.error) if run.error is not None else None
        with self._tx():
            self._db.execute(
                f"INSERT INTO hook_runs ({_HOOK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (rotation_id, stage, hook) DO UPDATE SET status = excluded.status,"
                " attempts = excluded.attempts, required = excluded.required, "
                "updated_at = excluded.updated_at, next_attempt_at = excluded.next_attempt_at,"
                " error = excluded.error",
                (run.rotation_id, run.client, run.stage, run.hook, run.status, run.attempts,
                 int(run.required), run.updated_at.isoformat(),
                 run.next_attempt_at.isoformat() if run.next_attempt_at else None, error))

    def hook_runs(self, rotation_id: RotationId) -> list[HookRun]:
        with self._reading():
            rows = self._db.execute(f"SELECT {_HOOK_COLUMNS} FROM hook_runs "
                                    "WHERE rotation_id = ? ORDER BY rowid",
                                    (rotation_id,)).fetchall()
            return [_rows.hook_run(r, datetime.fromisoformat) for r in rows]

    def unfinished_hook_runs(self) -> list[HookRun]:
        with self._reading():
            rows = self._db.execute(f"SELECT {_HOOK_COLUMNS} FROM hook_runs WHERE status "
                                    "IN ('running', 'failed') ORDER BY updated_at").fetchall()
            return [_rows.hook_run(r, datetime.fromisoformat) for r in rows]

    # -- audit checkpoints ----------------------------------------------------------------

    def record_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO audit_checkpoints VALUES (?,?,?,?,?)",
                (checkpoint.log, checkpoint.key_id, checkpoint.seq, checkpoint.chain,
                 checkpoint.at.isoformat()))

    def audit_checkpoints(self, log: str, key_id: str) -> list[AuditCheckpoint]:
        with self._reading():
            rows = self._db.execute(
                "SELECT seq, chain, at FROM audit_checkpoints WHERE log = ? AND key_id = ? "
                "ORDER BY seq", (log, key_id)).fetchall()
            return [AuditCheckpoint(log, key_id, int(seq), str(chain),
                                    datetime.fromisoformat(at)) for seq, chain, at in rows]

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, client: str, holder: str, ttl: float) -> Lease | None:
        check_lease_args(holder, ttl)
        now = datetime.now(UTC)
        expires = (now + timedelta(seconds=ttl)).isoformat()
        with self._tx():
            row = self._db.execute("SELECT token, expires_at FROM leases WHERE client = ?",
                                   (client,)).fetchone()
            if row is None:
                token = 1
                self._db.execute("INSERT INTO leases VALUES (?,?,?,?)",
                                 (client, holder, token, expires))
            elif datetime.fromisoformat(row[1]) <= now:
                token = int(row[0]) + 1
                self._db.execute("UPDATE leases SET holder = ?, token = ?, expires_at = ? "
                                 "WHERE client = ?", (holder, token, expires, client))
            else:
                return None
            return Lease(client, holder, token, datetime.fromisoformat(expires))

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        check_lease_args(lease.holder, ttl)
        expires = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat()
        with self._tx():
            updated = self._db.execute(
                "UPDATE leases SET expires_at = ? WHERE client = ? AND token = ?",
                (expires, lease.client, lease.token)).rowcount
            if not updated:
                raise LeaseLost(f"the lease on client {lease.client!r} (fencing token "
                                f"{lease.token}) was taken over by another holder")
            return Lease(lease.client, lease.holder, lease.token,
                         datetime.fromisoformat(expires))

    def release_lease(self, lease: Lease) -> None:
        with self._tx():
            self._db.execute("UPDATE leases SET expires_at = ? WHERE client = ? AND token = ?",
                             (_RELEASED, lease.client, lease.token))

    def fenced(self, lease: Lease) -> FencedJournal:
        return FencedJournal(self, lease)

    # -- the lock --------------------------------------------------------------------------

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
