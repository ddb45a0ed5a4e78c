"""Rotation journals: the durable record of every rotation, and the per-client lock.

The contract is :class:`rotator.interfaces.Journal`. :class:`SqliteJournal` (one SQLite
file in the state directory) is the embedded default; ``Journal`` names it for callers
that construct the default.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from rotator.interfaces import Rotation, RotationId, RotationTarget, State, Step
from rotator.journal.sqlite import SqliteJournal

#: The embedded default journal.
Journal = SqliteJournal

__all__ = ["Journal", "Rotation", "RotationTarget", "SqliteJournal", "State", "Step",
           "new_rotation_id"]


def new_rotation_id() -> RotationId:
    """A sortable, unique rotation id."""
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"r-{now}-{uuid.uuid4().hex[:10]}"
