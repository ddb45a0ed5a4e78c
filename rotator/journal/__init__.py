"""Rotation journals: the durable record of every rotation, and the per-client lock.

The contract is :class:`rotator.interfaces.Journal`. :class:`SqliteJournal` (one SQLite
file in the state directory) is the embedded default; ``Journal`` names it for callers
that construct the default. :class:`~rotator.journal.postgres.PostgresJournal` (a database
several daemons share, the ``postgres`` extra) is chosen by ``[journal] url_env``;
:func:`open_journal` opens whichever the configuration names.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rotator import interfaces
from rotator.interfaces import Rotation, RotationId, RotationTarget, State, Step
from rotator.journal.sqlite import SqliteJournal

if TYPE_CHECKING:
    from rotator.config import Config

#: The embedded default journal.
Journal = SqliteJournal

__all__ = ["Journal", "Rotation", "RotationTarget", "SqliteJournal", "State", "Step",
           "new_rotation_id", "open_journal"]


def open_journal(config: Config) -> interfaces.Journal:
    """The journal ``config`` names: PostgreSQL with ``[journal] url_env``, else SQLite."""
    if config.journal.url is not None:
        from rotator.journal.postgres import PostgresJournal

        return PostgresJournal(config.journal.url)
    return SqliteJournal(config.state_dir)


def new_rotation_id() -> RotationId:
    """A sortable, unique rotation id."""
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"r-{now}-{uuid.uuid4().hex[:10]}"
