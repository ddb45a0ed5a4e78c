"""What several rotator daemons coordinate through the PostgreSQL journal: rotations asked
for through any daemon (triggers), leases with fencing tokens, and the per-client locks.

Clocks: lease expiry and a trigger's age are judged on the database server's clock
(``clock_timestamp()``), the one clock every daemon shares.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from rotator.errors import JournalConflict, LeaseLost, RotationError, RotationLocked
from rotator.interfaces import Lease, RotationId
from rotator.journal import new_rotation_id
from rotator.journal._rows import OPEN as _OPEN
from rotator.journal._rows import ROTATION_ID
from rotator.journal.postgres_setup import NEWEST as _NEWEST
from rotator.journal.postgres_setup import PostgresConnections
from rotator.journal.sqlite import check_lease_args


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(client=row[0], holder=row[1], token=int(row[2]), expires_at=row[3])


class PostgresCoordination(PostgresConnections):
    """Triggers, leases and locks of the PostgreSQL journal (see the module)."""

    # -- triggers --------------------------------------------------------------------------

    def queue_rotation(self, client: str, rotation_id: RotationId, actor: str
                       ) -> tuple[str, bool]:
        """Ask for a rotation of ``client`` through any daemon, in one statement: the id of
        its open rotation (not one awaiting retirement) or of the trigger already pending,
        joined (True); else ``rotation_id``, queued now for any daemon to run (False). An id
        some trigger or rotation already has (a daemon's job for a trigger another daemon
        answered) is not asked again: a new one is queued instead."""
        if not ROTATION_ID.fullmatch(rotation_id):
            raise RotationError(f"{rotation_id!r} is not a usable rotation id")
        fresh = new_rotation_id()
        for _attempt in range(3):
            with self._tx(one_statement=True) as db:
                row = db.execute(
                    "WITH open AS (SELECT id FROM rotations WHERE client = %s AND "
                    f"{_OPEN} AND NOT (state = 'promoted' AND family = 'overlap') {_NEWEST}), "
                    "ins AS (INSERT INTO triggers (id, client, actor) SELECT CASE WHEN "
                    "EXISTS (SELECT 1 FROM triggers WHERE id = %s) OR EXISTS (SELECT 1 FROM "
                    "rotations WHERE id = %s) THEN %s ELSE %s END, %s, %s "
                    "WHERE NOT EXISTS (SELECT 1 FROM open) ON CONFLICT DO NOTHING "
                    "RETURNING id) "
                    "SELECT id, true FROM open UNION ALL SELECT id, false FROM ins UNION ALL "
                    "SELECT id, true FROM triggers WHERE client = %s AND rotation_id IS NULL "
                    "AND NOT EXISTS (SELECT 1 FROM open) LIMIT 1",
                    (client, rotation_id, rotation_id, fresh, rotation_id, client, actor,
                     client)).fetchone()
            if row is not None:
                return str(row[0]), bool(row[1])
            # a trigger another daemon queued after this statement's snapshot: read it now
        raise JournalConflict(f"the trigger of client {client!r} raced another; try again")

    def queued_rotation(self, trigger_id: str) -> tuple[str, str, datetime, str | None] | None:
        """A trigger queued through any daemon: client, actor, when, and the id of the
        rotation that answered it (None while it is pending)."""
        with self._tx(one_statement=True) as db:
            row = db.execute("SELECT client, actor, queued_at, rotation_id FROM triggers "
                             "WHERE id = %s", (trigger_id,)).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else None

    def pending_rotations(self, older_than: float = 0.0) -> list[tuple[str, str, str]]:
        """Every trigger pending for more than ``older_than`` seconds (the database's clock):
        (id, client, actor), oldest first."""
        with self._tx(one_statement=True) as db:
            rows = db.execute("SELECT id, client, actor FROM triggers WHERE rotation_id IS NULL "
                              "AND queued_at <= clock_timestamp() - make_interval(secs => %s) "
                              "ORDER BY queued_at", (older_than,)).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def drop_queued(self, trigger_id: str) -> None:
        """Forget a pending trigger whose job ended without beginning a rotation."""
        with self._tx(one_statement=True) as db:
            db.execute("DELETE FROM triggers WHERE id = %s AND rotation_id IS NULL",
                       (trigger_id,))

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, client: str, holder: str, ttl: float) -> Lease | None:
        check_lease_args(holder, ttl)
        with self._tx(one_statement=True) as db:
            row = db.execute(
                "INSERT INTO leases AS l (client, holder, token, expires_at) "
                "VALUES (%s, %s, 1, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (client) DO UPDATE SET holder = excluded.holder, "
                "token = l.token + 1, expires_at = excluded.expires_at "
                "WHERE l.expires_at <= clock_timestamp() "
                "RETURNING client, holder, token, expires_at", (client, holder, ttl)).fetchone()
            return _lease(row) if row else None

    def claim_leases(self, clients: Sequence[str], holder: str, ttl: float,
                     limit: int, known: Sequence[str | None] | None = None, *,
                     rooms: Sequence[tuple[str, int]] | None = None
                     ) -> tuple[list[Lease], list[str]]:
        """Take the leases of at most ``limit`` of ``clients`` that nobody holds, in one
        statement (one round trip): how a daemon claims due work without trying every
        client. Two daemons claiming together never get the same client: the conflict
        clause re-checks expiry under the row lock, so the later one skips it.

        ``known``: per client, the id of its newest rotation the caller knows of, or None
        (it knows none); "" asks for no such check. A client whose newest rotation is
        another, promoted or completed (another daemon rotated it since the caller looked)
        is not claimed but returned in the second list.

        ``rooms``: per client, its group (its IdP) and how many of that group may still be
        claimed; the statement then takes at most that many of each group, so a caller can
        offer every queued client at once (and learn which ones were rotated elsewhere)
        without going over a per-IdP bound.
        """
        check_lease_args(holder, ttl)
        if limit <= 0 or not clients:
            return [], []
        seen = list(known) if known is not None else [""] * len(clients)
        groups = [g for g, _r in rooms] if rooms is not None else [""] * len(clients)
        room = [r for _g, r in rooms] if rooms is not None else [limit] * len(clients)
        with self._tx(one_statement=True) as db:
            rows = db.execute(
                "WITH asked AS (SELECT c.client, c.known, c.n, c.grp, c.room FROM "
                "unnest(%s::text[], %s::text[], %s::text[], %s::int[]) WITH ORDINALITY "
                "AS c(client, known, grp, room, n)), "
                "newest AS (SELECT a.client, a.known, a.n, (SELECT r.id FROM rotations r "
                "WHERE r.client = a.client AND r.state IN ('promoted', 'completed') "
                f"{_NEWEST.replace('started_at', 'r.started_at').replace('seq', 'r.seq')}) "
                "AS done FROM asked a), "
                "elsewhere AS (SELECT client FROM newest WHERE known IS DISTINCT FROM '' "
                "AND done IS NOT NULL AND done IS DISTINCT FROM known), "
                "free AS (SELECT a.client, a.n, a.room, row_number() OVER (PARTITION BY "
                "a.grp ORDER BY a.n) AS k FROM asked a WHERE a.client NOT IN "
                "(SELECT client FROM elsewhere) AND NOT EXISTS (SELECT 1 FROM leases h "
                "WHERE h.client = a.client AND h.expires_at > clock_timestamp())), "
                "wanted AS (SELECT client FROM free WHERE k <= room ORDER BY n LIMIT %s), "
                "taken AS (INSERT INTO leases AS l (client, holder, token, expires_at) "
                "SELECT client, %s, 1, clock_timestamp() + make_interval(secs => %s) "
                "FROM wanted "
                "ON CONFLICT (client) DO UPDATE SET holder = excluded.holder, "
                "token = l.token + 1, expires_at = excluded.expires_at "
                "WHERE l.expires_at <= clock_timestamp() "
                "RETURNING client, holder, token, expires_at) "
                "SELECT client, holder, token, expires_at FROM taken UNION ALL "
                "SELECT client, NULL, NULL, NULL FROM elsewhere",
                (list(clients), seen, groups, room, limit, holder, ttl)).fetchall()
            leases = [_lease(row) for row in rows if row[1] is not None]
            return leases, [row[0] for row in rows if row[1] is None]

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        check_lease_args(lease.holder, ttl)
        with self._tx(one_statement=True) as db:
            row = db.execute(
                "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE client = %s AND token = %s "
                "RETURNING client, holder, token, expires_at",
                (ttl, lease.client, lease.token)).fetchone()
            if row is None:
                raise LeaseLost(f"the lease on client {lease.client!r} (fencing token "
                                f"{lease.token}) was taken over by another holder")
            return _lease(row)

    def release_lease(self, lease: Lease) -> None:
        with self._tx(one_statement=True) as db:
            db.execute("UPDATE leases SET expires_at = '-infinity' "
                       "WHERE client = %s AND token = %s", (lease.client, lease.token))

    # -- the lock --------------------------------------------------------------------------

    @contextmanager
    def lock(self, client: str, *, wait: float = 0.0) -> Iterator[None]:
        """Hold the client's rotation lock (a session advisory lock) for the ``with`` block.

        The lock lives on a connection of its own: the server releases it when that
        connection ends (the holder died, or the network between them failed; see the
        leases for a holder that does not know it lost the lock).
        """
        import psycopg

        key = f"rotator.client:{client}"
        conn = self._checkout()
        locked = False
        try:
            deadline = time.monotonic() + wait
            delay = 0.01
            while True:
                row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                   (key,)).fetchone()
                if row and row[0]:
                    locked = True
                    leased = conn.execute(
                        "SELECT holder FROM leases WHERE client = %s "
                        "AND expires_at > clock_timestamp()", (client,)).fetchone()
                    if leased is None:
                        break
                    # A daemon job holds the client (it takes no advisory lock: a frozen
                    # daemon would keep one forever, see probe_lock).
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
                    locked = False
                    if time.monotonic() >= deadline:
                        raise RotationLocked(
                            f"client {client!r} is being rotated by daemon {leased[0]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RotationLocked(
                        f"client {client!r} is being rotated by another process")
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.25)
        except psycopg.Error as exc:
            with suppress(Exception):
                conn.close()
            raise self._error(exc) from exc
        except BaseException:
            self._checkin(conn)
            raise
        try:
            yield
        finally:
            try:
                if locked:
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
                self._checkin(conn)
            except psycopg.Error:
                with suppress(Exception):
                    conn.close()  # the server releases the lock with the connection

    @contextmanager
    def probe_lock(self, client: str) -> Iterator[None]:
        """What a daemon job holding ``client``'s lease takes instead of :meth:`lock`: it
        checks that no process (``rotator rotate``) holds the client's advisory lock, and
        holds nothing itself. A daemon frozen past its lease (SIGSTOP, a GC pause) keeps its
        database connections open, so an advisory lock of its would keep the client from
        the daemon that took the lease over; the lease and its fence are the job's exclusion.
        :meth:`lock` refuses while a lease is live, so the CLI and a job never run together.
        """
        key = f"rotator.client:{client}"
        with self._tx(one_statement=True) as db:
            row = db.execute(
                "SELECT CASE WHEN pg_try_advisory_lock(hashtextextended(%s, 0)) "
                "THEN pg_advisory_unlock(hashtextextended(%s, 0)) ELSE false END",
                (key, key)).fetchone()
        if not (row and row[0]):
            raise RotationLocked(f"client {client!r} is being rotated by another process")
        yield
