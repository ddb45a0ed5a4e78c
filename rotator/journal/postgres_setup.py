"""How the PostgreSQL journal is reached and laid out: its URL, its connections, its schema.

Connections: one connection, guarded by a mutex, serves every journal call (a call is one
short transaction); each held lock (:meth:`~rotator.journal.postgres_coordination.
PostgresCoordination.lock`) keeps a connection of its own (a session advisory lock lives as
long as its connection), reused from a small idle list. A connection that fails is dropped
and the next call opens a new one, so the journal recovers by itself once the database is
back; meanwhile every call raises ``RotationError`` naming the server (never the URL: it
carries the password).

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

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from rotator.errors import RotationError
from rotator.journal._rows import OPEN, SUCCESS
from rotator.secrets import Secret, redact

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 4
#: The key of the transaction-scoped advisory lock migrations run under ('rotator' in ASCII).
_MIGRATION_LOCK = 0x726F7461746F72


MIGRATIONS: dict[int, str] = {
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
CREATE UNIQUE INDEX rotations_one_open ON rotations (client) WHERE {OPEN};
CREATE INDEX rotations_success ON rotations (client, started_at DESC, seq DESC)
    WHERE {SUCCESS};
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
NEWEST = "ORDER BY started_at DESC, seq DESC LIMIT 1"
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


class PostgresConnections:
    """The connections of a journal in the PostgreSQL database given by URL (a secret: it may
    carry a password), its schema migrated when it is opened."""

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
            db.execute(MIGRATIONS[target].encode())
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
