"""The embedded journal's file: its schema, migrated when it is opened, and its creation.

Schema versions (``PRAGMA user_version``), migrated on open, idempotently:

0. rotations and steps, as written by rotator before versions were kept;
1. ``rotations.targets`` and ``rotations.audit_key_id``; indexes on ``steps(rotation_id)``
   and on each client's open and successful rotations, so that status costs the same
   however long the history;
2. ``hook_runs``: what each hook did for each rotation (:mod:`rotator.hooks`).
3. ``audit_checkpoints``: where each audit log's chain stood now and then
   (:meth:`SqliteJournal.record_audit_checkpoint`).

4. ``leases`` (client, holder, fencing token, expiry on this host's clock).

Every step is idempotent (``IF NOT EXISTS``, columns added only when missing) and all of them
run whenever the file's version is below :data:`SCHEMA_VERSION`, so versions added on parallel
branches merge by taking the next number and keeping every step.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from rotator._files import UnsafeFile
from rotator.errors import RotationError
from rotator.journal._rows import OPEN, SUCCESS

SCHEMA_VERSION = 4

TABLES = """
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

V1_COLUMNS = (("targets", "TEXT"), ("audit_key_id", "TEXT"))
V1_INDEXES = f"""
CREATE INDEX IF NOT EXISTS steps_rotation ON steps (rotation_id);
CREATE INDEX IF NOT EXISTS rotations_open ON rotations (client, started_at) WHERE {OPEN};
CREATE INDEX IF NOT EXISTS rotations_success ON rotations (client, started_at)
    WHERE {SUCCESS};
"""

V2_TABLES = """
CREATE TABLE IF NOT EXISTS hook_runs (
    rotation_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    hook TEXT NOT NULL,
    client TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    required INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    next_attempt_at TEXT,
    error TEXT,
    PRIMARY KEY (rotation_id, stage, hook)
);
CREATE INDEX IF NOT EXISTS hook_runs_unfinished ON hook_runs (updated_at)
    WHERE status IN ('running', 'failed');
-- version 3
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    log TEXT NOT NULL,
    key_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    chain TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (log, key_id, seq)
);
-- version 4
CREATE TABLE IF NOT EXISTS leases (
    client TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at TEXT NOT NULL
);
"""


def prepare_db_file(path: Path) -> None:
    """Create the database file 0600 if missing; refuse a symlink or a file open to others.

    An existing file is checked with ``lstat`` and never opened here: closing a descriptor
    drops every POSIX lock this process holds on the file, SQLite's included, so another
    journal open in the same process would lose its locks.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        # SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600))
        return
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(f"{path} is not a regular file (a symbolic link?)")
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise UnsafeFile(f"{path} must belong to this user with mode 600 "
                         f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")



def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the journal's schema to :data:`SCHEMA_VERSION`; the caller holds a write
    transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RotationError(
            f"the rotation journal at {path} has schema version {version}, newer "
            f"than this rotator knows ({SCHEMA_VERSION}); upgrade rotator")
    if version == SCHEMA_VERSION:
        return
    for statement in TABLES.split(";"):
        if statement.strip():
            db.execute(statement)
    have = {r[1] for r in db.execute("PRAGMA table_info(rotations)")}
    for column, kind in V1_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE rotations ADD COLUMN {column} {kind}")
    for statement in (V1_INDEXES + V2_TABLES).split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
