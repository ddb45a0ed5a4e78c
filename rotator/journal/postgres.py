"""The rotation journal on PostgreSQL, shared by several rotator daemons (psycopg 3).

Same contract and semantics as the SQLite journal (:class:`rotator.interfaces.Journal`):
check-and-set :meth:`~PostgresJournal.advance`, one open rotation per client (here a
partial unique index, so two daemons racing to begin cannot both win), per-client locks,
and leases with fencing tokens. ``psycopg`` is the ``postgres`` extra and is imported only
when a PostgreSQL journal is opened.

Three modules, one class: :mod:`rotator.journal.postgres_setup` reaches the database
(its URL, connections and schema), :mod:`rotator.journal.postgres_coordination` holds what
daemons coordinate through it (triggers, leases, locks), and this one the rotations, their
steps, hook runs and audit checkpoints. Rotation timestamps are the caller's, as with
SQLite; lease expiry is the database server's clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rotator.errors import JournalConflict, LeaseLost, RotationError
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
from rotator.journal._rows import as_is
from rotator.journal.fencing import FencedJournal
from rotator.journal.postgres_coordination import PostgresCoordination
from rotator.journal.postgres_setup import NEWEST as _NEWEST
from rotator.journal.postgres_setup import (
    SCHEMA_VERSION,
    VERIFYING_SSLMODES,
    describe,
    url_problem,
)
from rotator.secrets import redact

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "VERIFYING_SSLMODES", "ClientFacts", "PostgresJournal",
           "describe", "url_problem"]


@dataclass(frozen=True)
class ClientFacts:
    """What the journal says of one client (:meth:`PostgresJournal.client_facts`)."""

    latest: Rotation | None
    open: Rotation | None
    #: When the last successful rotation's secret became current (its PROMOTED step).
    last_success_at: datetime | None
    #: The IdP's expiry of that secret (its CREATED step's detail), as recorded.
    secret_expires_at: str | None
    #: Failed or rolled-back rotations begun since the last success, and the newest's end.
    failures: int
    last_failure_at: datetime | None
    #: The daemon holding the client's live lease (rotating it now), if any.
    holder: str | None
    #: The id of a trigger queued for the client and not begun yet, if any.
    pending: str | None


def _row(row: Sequence[Any]) -> Rotation:
    return _rows.rotation(row, as_is)


class PostgresJournal(PostgresCoordination):
    """The rotation journal in a PostgreSQL database given by URL (a secret: it may carry a
    password)."""

    # -- writing ---------------------------------------------------------------------------

    def _check_fence(self, db: psycopg.Connection[Any], client: str, fence: Lease | None,
                     what: str) -> None:
        if fence is None:
            return
        if fence.client != client:
            raise LeaseLost(f"the lease given is for client {fence.client!r}, not {client!r}; "
                            f"{what}")
        row = db.execute("SELECT token, holder FROM leases WHERE client = %s FOR SHARE",
                         (client,)).fetchone()
        if row is None or int(row[0]) != fence.token:
            newer = "nobody" if row is None else f"{row[1]} (fencing token {row[0]})"
            raise LeaseLost(
                f"client {client!r} is leased to {newer}, not to this writer (fencing token "
                f"{fence.token}): its lease expired and was taken over, so {what}")

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
        recorded = _rows.targets_json(targets)
        # One statement, one round trip: the fence (the lease row, locked FOR SHARE so a
        # takeover waits for this write), the insert (skipped on any unique conflict: a
        # reused id, or the one-open-rotation index), its STARTED step and the step to
        # ``then`` (in that order: the steps' seq), and the trigger it answers, all in its
        # transaction. On no row, the second transaction below says why.
        fence_sql, fence_args = self._fence_cte(fence, client)
        with self._tx(one_statement=True) as db:
            row = db.execute(
                f"WITH {fence_sql}"
                f"ins AS (INSERT INTO rotations ({_COLUMNS}) SELECT "
                "%s::text, %s::text, %s::text, %s::text, %s::text, %s::timestamptz, "
                "%s::timestamptz, %s::timestamptz, %s::text, %s::text, %s::text, %s::text, "
                "%s::text, %s::text WHERE EXISTS (SELECT 1 FROM fence) "
                f"ON CONFLICT DO NOTHING RETURNING {_COLUMNS}), "
                "step AS (INSERT INTO steps (rotation_id, at, state, detail) "
                "SELECT id, %s::timestamptz, s.state, '{}' FROM ins, (VALUES (1, %s::text), "
                "(2, %s::text)) AS s (n, state) WHERE s.state IS NOT NULL ORDER BY s.n), "
                "answered AS (UPDATE triggers SET rotation_id = (SELECT id FROM ins) "
                "WHERE client = %s AND rotation_id IS NULL AND EXISTS (SELECT 1 FROM ins)) "
                f"SELECT {_COLUMNS} FROM ins",
                (*fence_args, rotation_id, client, (then or State.STARTED).value, family,
                 actor, now, now, None, old_fingerprint, None, None, None, recorded,
                 audit_key_id, now, State.STARTED.value, then.value if then else None,
                 client)).fetchone()
        if row is not None:
            return _row(row)
        with self._tx() as db:
            self._check_fence(db, client, fence, f"rotation {rotation_id} was not begun")
            if db.execute("SELECT 1 FROM rotations WHERE id = %s", (rotation_id,)).fetchone():
                raise JournalConflict(f"rotation {rotation_id} exists already")
            self._refuse_open(db, client)
        raise JournalConflict(f"client {client!r} began another rotation at the same time")

    @staticmethod
    def _fence_cte(fence: Lease | None, client: str) -> tuple[str, tuple[Any, ...]]:
        """A ``fence`` CTE with one row while ``fence`` is the client's lease (locked FOR
        SHARE until the statement commits, so a takeover waits for it), and always one row
        without a fence."""
        if fence is None:
            return "fence AS (SELECT 1), ", ()
        return ("fence AS (SELECT 1 FROM leases WHERE client = %s AND client = %s "
                "AND token = %s FOR SHARE), ", (client, fence.client, fence.token))

    def _refuse_open(self, db: psycopg.Connection[Any], client: str) -> None:
        open_rotation = self._one(db, f"WHERE client = %s AND {_OPEN} {_NEWEST}", client)
        if open_rotation is not None:
            raise JournalConflict(
                f"client {client!r} has an unfinished rotation {open_rotation.id} "
                f"({open_rotation.state}); finish it before beginning another")

    def advance(self, rotation_id: RotationId, state: State, now: datetime, *,
                expected: State, **fields: str | None) -> Rotation:
        return self._advance(rotation_id, state, now, expected, None, fields)

    def _advance(self, rotation_id: RotationId, state: State, now: datetime,
                 expected: State, fence: Lease | None, fields: dict[str, str | None]
                 ) -> Rotation:
        detail, fields = _rows.step_fields(fields)
        values: list[Any] = [datetime.fromisoformat(v) if k == "retire_after" and v else v
                             for k, v in fields.items()]
        sets = "".join(f", {k} = %s" for k in fields)
        # One statement, one round trip: the fence, the check-and-set update and its step.
        # On no row, the second transaction below says why (rare: a lost race or a fence).
        target = fence.client if fence is not None else None
        fence_sql, fence_args = ("fence AS (SELECT 1), ", ()) if fence is None else (
            "fence AS (SELECT 1 FROM leases WHERE client = %s AND token = %s FOR SHARE), ",
            (fence.client, fence.token))
        with self._tx(one_statement=True) as db:
            row = db.execute(
                f"WITH {fence_sql}"
                f"upd AS (UPDATE rotations SET state = %s, updated_at = %s{sets} "
                "WHERE id = %s AND state = %s AND (%s::text IS NULL OR client = %s::text) "
                f"AND EXISTS (SELECT 1 FROM fence) RETURNING {_COLUMNS}), "
                "step AS (INSERT INTO steps (rotation_id, at, state, detail) "
                "SELECT id, %s::timestamptz, %s::text, %s::text FROM upd) "
                f"SELECT {_COLUMNS} FROM upd",
                (*fence_args, state.value, now, *values, rotation_id, expected.value, target,
                 target, now, state.value, json.dumps(detail))).fetchone()
        if row is not None:
            return _row(row)
        with self._tx() as db:
            current = self._get(db, rotation_id)
            self._check_fence(db, current.client, fence,
                              f"rotation {rotation_id} was not moved to {state}")
            raise JournalConflict(
                f"rotation {rotation_id} is {current.state}, not {expected}: another writer "
                f"moved it, so it was not moved to {state}")

    # -- reading ---------------------------------------------------------------------------

    def _one(self, db: psycopg.Connection[Any], where: str, *params: str) -> Rotation | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM rotations {where}", params).fetchone()
        return _row(row) if row else None

    def _get(self, db: psycopg.Connection[Any], rotation_id: RotationId) -> Rotation:
        rotation = self._one(db, "WHERE id = %s", rotation_id)
        if rotation is None:
            raise RotationError(f"no rotation {rotation_id} in the journal")
        return rotation

    def get(self, rotation_id: RotationId) -> Rotation:
        with self._tx(one_statement=True) as db:
            return self._get(db, rotation_id)

    def open_rotation(self, client: str) -> Rotation | None:
        with self._tx(one_statement=True) as db:
            return self._one(db, f"WHERE client = %s AND {_OPEN} {_NEWEST}", client)

    def latest(self, client: str) -> Rotation | None:
        with self._tx(one_statement=True) as db:
            return self._one(db, f"WHERE client = %s {_NEWEST}", client)

    def last_success(self, client: str) -> Rotation | None:
        with self._tx(one_statement=True) as db:
            return self._one(db, f"WHERE client = %s AND {_SUCCESS} {_NEWEST}", client)

    def steps(self, rotation_id: RotationId) -> list[Step]:
        with self._tx(one_statement=True) as db:
            rows = db.execute("SELECT at, state, detail FROM steps WHERE rotation_id = %s "
                              "ORDER BY seq", (rotation_id,)).fetchall()
            return [_rows.step(row, as_is) for row in rows]

    # -- what every daemon answers alike (the admin API, metrics) ---------------------------

    def client_facts(self, clients: Sequence[str]) -> dict[str, ClientFacts]:
        """What the journal says of each of ``clients``, in one statement: the facts the
        API and the metrics of every daemon report, whichever daemon rotates the client."""
        if not clients:
            return {}
        columns = [c.strip() for c in _COLUMNS.split(",")]
        latest = ", ".join(f"l.{c}" for c in columns)
        opened = ", ".join(f"o.{c}" for c in columns)
        with self._tx(one_statement=True) as db:
            rows = db.execute(
                f"SELECT c.name, {latest}, {opened}, coalesce(p.at, s.updated_at), x.expires, "
                "f.n, f.last, h.holder, t.id FROM unnest(%s::text[]) AS c(name) "
                f"LEFT JOIN LATERAL (SELECT {_COLUMNS} FROM rotations WHERE client = c.name "
                f"{_NEWEST}) l ON true "
                f"LEFT JOIN LATERAL (SELECT {_COLUMNS} FROM rotations WHERE client = c.name "
                f"AND {_OPEN} {_NEWEST}) o ON true "
                "LEFT JOIN LATERAL (SELECT id, started_at, updated_at FROM rotations "
                f"WHERE client = c.name AND {_SUCCESS} {_NEWEST}) s ON true "
                "LEFT JOIN LATERAL (SELECT at FROM steps WHERE rotation_id = s.id "
                "AND state = 'promoted' ORDER BY seq LIMIT 1) p ON true "
                "LEFT JOIN LATERAL (SELECT detail::jsonb ->> 'expires_at' AS expires FROM steps "
                "WHERE rotation_id = s.id AND state = 'created' "
                "AND coalesce(detail::jsonb ->> 'expires_at', '') <> '' "
                "ORDER BY seq LIMIT 1) x ON true "
                "LEFT JOIN LATERAL (SELECT count(*) AS n, max(updated_at) AS last "
                "FROM rotations WHERE client = c.name AND state IN ('failed', 'rolled_back') "
                "AND (s.id IS NULL OR started_at > s.started_at)) f ON true "
                "LEFT JOIN leases h ON h.client = c.name AND h.expires_at > clock_timestamp() "
                "LEFT JOIN triggers t ON t.client = c.name AND t.rotation_id IS NULL",
                (list(clients),)).fetchall()
        width = len(columns)
        facts = {}
        for row in rows:
            rest = row[1 + 2 * width:]
            facts[row[0]] = ClientFacts(
                latest=_row(row[1:1 + width]) if row[1] is not None else None,
                open=_row(row[1 + width:1 + 2 * width]) if row[1 + width] is not None
                else None,
                last_success_at=rest[0], secret_expires_at=rest[1], failures=int(rest[2]),
                last_failure_at=rest[3], holder=rest[4], pending=rest[5])
        return facts

    def fenced(self, lease: Lease) -> FencedJournal:
        return FencedJournal(self, lease)

    # -- hook runs and audit checkpoints ---------------------------------------------------

    def record_hook_run(self, run: HookRun) -> None:
        error = redact(run.error) if run.error is not None else None
        with self._tx(one_statement=True) as db:
            db.execute(
                f"INSERT INTO hook_runs ({_HOOK_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (rotation_id, stage, hook) DO UPDATE SET status = excluded.status,"
                " attempts = excluded.attempts, required = excluded.required, "
                "updated_at = excluded.updated_at, next_attempt_at = excluded.next_attempt_at,"
                " error = excluded.error",
                (run.rotation_id, run.client, run.stage, run.hook, run.status, run.attempts,
                 run.required, run.updated_at, run.next_attempt_at, error))

    def hook_runs(self, rotation_id: RotationId) -> list[HookRun]:
        with self._tx(one_statement=True) as db:
            rows = db.execute(f"SELECT {_HOOK_COLUMNS} FROM hook_runs WHERE rotation_id = %s "
                              "ORDER BY seq", (rotation_id,)).fetchall()
            return [_rows.hook_run(r, as_is) for r in rows]

    def unfinished_hook_runs(self) -> list[HookRun]:
        with self._tx(one_statement=True) as db:
            rows = db.execute(f"SELECT {_HOOK_COLUMNS} FROM hook_runs WHERE status "
                              "IN ('running', 'failed') ORDER BY updated_at").fetchall()
            return [_rows.hook_run(r, as_is) for r in rows]

    def record_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        with self._tx(one_statement=True) as db:
            db.execute("INSERT INTO audit_checkpoints (log, key_id, seq, chain, at) "
                       "VALUES (%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                       (checkpoint.log, checkpoint.key_id, checkpoint.seq, checkpoint.chain,
                        checkpoint.at))

    def audit_checkpoints(self, log: str, key_id: str) -> list[AuditCheckpoint]:
        with self._tx(one_statement=True) as db:
            rows = db.execute("SELECT seq, chain, at FROM audit_checkpoints WHERE log = %s "
                              "AND key_id = %s ORDER BY seq", (log, key_id)).fetchall()
            return [AuditCheckpoint(log, key_id, int(seq), str(chain), at)
                    for seq, chain, at in rows]

