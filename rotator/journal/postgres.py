"""The rotation journal on PostgreSQL, shared by several rotator daemons (psycopg 3).

Same contract and semantics as the SQLite journal (:class:`rotator.interfaces.Journal`):
check-and-set :meth:`~PostgresJournal.advance`, one open rotation per client (here a
partial unique index, so two daemons racing to begin cannot both win), per-client locks,
and leases with fencing tokens. ``psycopg`` is the ``postgres`` extra and is imported only
when a PostgreSQL journal is opened.

Connections: one connection, guarded by a mutex, serves every journal call (a call is one
short transaction); each held :meth:`~PostgresJournal.lock` keeps a connection of its own
(a session advisory lock lives as long as its connection), reused from a small idle list.
A connection that fails is dropped and the next call opens a new one, so the journal
recovers by itself once the database is back; meanwhile every call raises
``RotationError`` naming the server (never the URL: it carries the password).

Clocks: lease expiry is judged on the database server's clock (``clock_timestamp()``), the
one clock every daemon shares. Rotation timestamps are the caller's, as with SQLite.

Schema versions (table ``rotator_schema``), migrated on open under a transaction-scoped
advisory lock, so that daemons starting together migrate once:

1. rotations and steps, with the indexes status reads use;
2. leases (client, holder, fencing token, expiry);
3. hook runs and audit checkpoints;
4. triggers: a rotation asked for through the API of any daemon, pending until a rotation
   of its client begins (which records its id there), so every daemon can answer for it
   and any daemon can run it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

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
from rotator.journal import _rows, new_rotation_id
from rotator.journal._rows import COLUMNS as _COLUMNS
from rotator.journal._rows import HOOK_COLUMNS as _HOOK_COLUMNS
from rotator.journal._rows import ROTATION_ID, as_is
from rotator.journal.fencing import FencedJournal
from rotator.journal.sqlite import check_lease_args
from rotator.secrets import Secret, redact

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 4
#: The key of the transaction-scoped advisory lock migrations run under ('rotator' in ASCII).
_MIGRATION_LOCK = 0x726F7461746F72

_OPEN = "state NOT IN ('completed', 'rolled_back', 'failed')"
_SUCCESS = "state IN ('promoted', 'completed')"

_MIGRATIONS: dict[int, str] = {
    1: f"""
CREATE TABLE rotations (
    seq BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    state TEXT NOT NULL,
    family TEXT NOT NULL,
    actor TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    retire_after TIMESTAMPTZ,
    old_fingerprint TEXT,
    new_fingerprint TEXT,
    secret_ref TEXT,
    error TEXT,
    targets TEXT NOT NULL DEFAULT '[]',
    audit_key_id TEXT
);
CREATE INDEX rotations_client ON rotations (client, started_at DESC, seq DESC);
CREATE UNIQUE INDEX rotations_one_open ON rotations (client) WHERE {_OPEN};
CREATE INDEX rotations_success ON rotations (client, started_at DESC, seq DESC)
    WHERE {_SUCCESS};
CREATE TABLE steps (
    seq BIGSERIAL PRIMARY KEY,
    rotation_id TEXT NOT NULL REFERENCES rotations (id),
    at TIMESTAMPTZ NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX steps_rotation ON steps (rotation_id, seq);
""",
    2: """
CREATE TABLE leases (
    client TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
""",
    3: """
CREATE TABLE hook_runs (
    seq BIGSERIAL UNIQUE,
    rotation_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    hook TEXT NOT NULL,
    client TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    required BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ,
    error TEXT,
    PRIMARY KEY (rotation_id, stage, hook)
);
CREATE INDEX hook_runs_unfinished ON hook_runs (updated_at)
    WHERE status IN ('running', 'failed');
CREATE TABLE audit_checkpoints (
    log TEXT NOT NULL,
    key_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    chain TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (log, key_id, seq)
);
""",
    4: """
CREATE TABLE triggers (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    actor TEXT NOT NULL,
    queued_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    rotation_id TEXT
);
CREATE UNIQUE INDEX triggers_one_pending ON triggers (client) WHERE rotation_id IS NULL;
""",
}
_NEWEST = "ORDER BY started_at DESC, seq DESC LIMIT 1"
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
#: sslmode values that check the server's certificate; the others let anyone in between
#: read the password.
VERIFYING_SSLMODES = ("verify-ca", "verify-full")


def _hosts(parts: Any) -> list[str]:
    """The hosts a postgresql:// URL names: in the authority (comma separated) and ``host=``."""
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        host = item.rsplit(":", 1)[0] if not item.startswith("[") else item.split("]")[0] + "]"
        hosts.append(host)
    for value in parse_qs(parts.query).get("host", []):
        hosts += value.split(",")
    return [h for h in hosts if h]


def url_problem(url: str, allow_weak_tls: bool = False) -> str | None:
    """Why ``url`` may not be used as a journal URL, or None. Never quotes the URL."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
    except ValueError as exc:
        return f"not a valid URL: {type(exc).__name__}"
    if parts.scheme not in ("postgresql", "postgres"):
        return "must be a postgresql:// URL"
    remote = [h for h in _hosts(parts) if not h.startswith("/") and h not in _LOCAL_HOSTS]
    sslmode = query["sslmode"][-1] if query.get("sslmode") else None
    if remote and sslmode is not None and sslmode not in VERIFYING_SSLMODES \
            and not allow_weak_tls:
        return (f"sslmode={sslmode} to {remote[0]} does not check the server's certificate, "
                "so whoever answers gets the password: use sslmode=verify-full (the default "
                "when none is given), or set allow_weak_tls = true in [journal] if you mean it")
    return None


def describe(url: str) -> str:
    """``postgresql://host:port/database`` without user or password, for messages and logs."""
    try:
        parts = urlsplit(url)
        hosts = ",".join(_hosts(parts)) or "local socket"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unparsable URL)"
    return f"postgresql://{hosts}{port}{parts.path or '/'}"


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


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(client=row[0], holder=row[1], token=int(row[2]), expires_at=row[3])


class PostgresJournal:
    """The rotation journal in a PostgreSQL database given by URL (a secret: it may carry a
    password)."""

    def __init__(self, url: Secret | str) -> None:
        self._url = url.reveal() if isinstance(url, Secret) else url
        self.where = describe(self._url)
        self._password = urlsplit(self._url).password or ""
        self._mutex = threading.RLock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._idle_mutex = threading.Lock()
        self._closed = False
        self._db: psycopg.Connection[Any] | None = None
        try:
            import psycopg  # noqa: F401 - the postgres extra
        except ImportError as exc:
            raise RotationError("a PostgreSQL journal needs the postgres extra: "
                                "pip install 'rotator[postgres]'") from exc
        try:
            with self._tx() as db:
                self._migrate(db)
        except BaseException:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        options: dict[str, Any] = {"autocommit": True, "connect_timeout": 10,
                                   "application_name": "rotator",
                                   "keepalives": 1, "keepalives_idle": 30,
                                   "keepalives_interval": 10, "keepalives_count": 3}
        parts = urlsplit(self._url)
        remote = [h for h in _hosts(parts) if not h.startswith("/") and h not in _LOCAL_HOSTS]
        if remote and "sslmode" not in parse_qs(parts.query):
            options["sslmode"] = "verify-full"
        conn = psycopg.connect(self._url, **options)
        try:  # timestamps come back in UTC, whatever the server's or the URL's time zone
            conn.execute("SET TIME ZONE 'UTC'")
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, exc: BaseException) -> RotationError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return RotationError(f"rotation journal {self.where}: {redact(text)}")

    @contextmanager
    def _tx(self, *, one_statement: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on the shared connection; database errors become RotationError.

        ``one_statement``: the block runs one statement, atomic on its own in autocommit, so
        no BEGIN and COMMIT round trips go around it.
        """
        import psycopg

        with self._mutex:
            if self._closed:
                raise RotationError(f"rotation journal {self.where} is closed")
            try:
                if self._db is None or self._db.closed or self._db.broken:
                    self._db = None
                    self._db = self._connect()
                if not one_statement:
                    with self._db.transaction():
                        yield self._db
                else:
                    yield self._db
            except psycopg.Error as exc:
                if self._db is not None and (self._db.broken or self._db.closed
                                             or isinstance(exc, psycopg.OperationalError)):
                    with suppress(Exception):
                        self._db.close()
                    self._db = None
                raise self._error(exc) from exc

    def _migrate(self, db: psycopg.Connection[Any]) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS rotator_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT max(version) FROM rotator_schema").fetchone()
        version = row[0] if row and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise RotationError(
                f"the rotation journal at {self.where} has schema version {version}, newer "
                f"than this rotator knows ({SCHEMA_VERSION}); upgrade rotator")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute(_MIGRATIONS[target].encode())
            db.execute("INSERT INTO rotator_schema (version) VALUES (%s)", (target,))

    def schema_version(self) -> int:
        with self._tx(one_statement=True) as db:
            row = db.execute("SELECT max(version) FROM rotator_schema").fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            db, self._db = self._db, None
        with self._idle_mutex:
            idle, self._idle = self._idle, []
        for conn in [db, *idle]:
            if conn is not None:
                with suppress(Exception):
                    conn.close()

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

    def fenced(self, lease: Lease) -> FencedJournal:
        return FencedJournal(self, lease)

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

    def _checkout(self) -> psycopg.Connection[Any]:
        import psycopg

        with self._idle_mutex:
            while self._idle:
                conn = self._idle.pop()
                if not (conn.closed or conn.broken):
                    return conn
        if self._closed:
            raise RotationError(f"rotation journal {self.where} is closed")
        try:
            return self._connect()
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        with self._idle_mutex:
            if not self._closed and not (conn.closed or conn.broken) and len(self._idle) < 8:
                self._idle.append(conn)
                return
        with suppress(Exception):
            conn.close()
