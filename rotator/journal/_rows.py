"""What the SQLite and PostgreSQL journals share: the columns of a rotation, how a row
becomes a :class:`Rotation`, :class:`Step` or :class:`HookRun`, and how the arguments of
``begin`` and ``advance`` are checked and split before either writes them.

The two differ only in how a timestamp comes back: SQLite keeps ISO 8601 text
(:func:`datetime.fromisoformat` reads it), PostgreSQL a ``timestamptz`` that arrives as a
``datetime`` already (:func:`as_is`). Each row helper takes that conversion.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from rotator.errors import RotationError
from rotator.interfaces import HookRun, Rotation, RotationId, RotationTarget, State, Step
from rotator.secrets import redact

#: How a journal's driver hands back a timestamp column, turned into a ``datetime``.
Timestamp = Callable[[Any], datetime]

COLUMNS = ("id, client, state, family, actor, started_at, updated_at, retire_after, "
           "old_fingerprint, new_fingerprint, secret_ref, error, targets, audit_key_id")
HOOK_COLUMNS = ("rotation_id, client, stage, hook, status, attempts, required, updated_at, "
                "next_attempt_at, error")
#: The rotations still open and those that succeeded, as both journals' partial indexes and
#: the queries that use them read them (SQLite uses such an index only for the same text).
OPEN = "state NOT IN ('completed', 'rolled_back', 'failed')"
SUCCESS = "state IN ('promoted', 'completed')"
#: The fields ``advance`` sets as columns.
FIELDS = frozenset({"retire_after", "new_fingerprint", "secret_ref", "error"})
#: Fields kept only in the step's detail (no column): read back through ``steps``.
DETAIL_FIELDS = frozenset({"expires_at"})
#: Every store tags credentials with the rotation id; this is what all of them accept.
ROTATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,52}")


def as_is(value: Any) -> datetime:
    """A timestamp the driver returns as a ``datetime`` already (PostgreSQL)."""
    assert isinstance(value, datetime)
    return value


def check_rotation_id(rotation_id: RotationId) -> None:
    """Refuse an id that some store could not carry as its tag."""
    if not ROTATION_ID.fullmatch(rotation_id):
        raise RotationError(f"{rotation_id!r} is not a usable rotation id: it must match "
                            f"{ROTATION_ID.pattern}")


def check_then(then: State | None) -> None:
    """``begin(then=...)`` moves a new rotation on to an open state after STARTED."""
    if then is not None and (then is State.STARTED or then.terminal):  # pragma: no cover
        raise ValueError(f"a rotation cannot begin by moving to {then}")  # programming error


def targets_json(targets: Sequence[RotationTarget]) -> str:
    return json.dumps([{"store": t.store, "location": t.location} for t in targets])


def step_fields(fields: dict[str, str | None]
                ) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """``advance``'s fields as (the step's detail, the columns to set), ``error`` redacted."""
    unknown = set(fields) - FIELDS - DETAIL_FIELDS
    if unknown:  # pragma: no cover - programming error
        raise ValueError(f"unknown journal fields {unknown}")
    if fields.get("error") is not None:
        fields = {**fields, "error": redact(str(fields["error"]))}
    detail: dict[str, str | None] = {k: v for k, v in fields.items() if v}
    return detail, {k: v for k, v in fields.items() if k in FIELDS}


def rotation(row: Sequence[Any], when: Timestamp) -> Rotation:
    """A row of :data:`COLUMNS`."""
    targets = tuple(RotationTarget(t["store"], t["location"])
                    for t in json.loads(row[12] or "[]"))
    return Rotation(
        id=row[0], client=row[1], state=State(row[2]), family=row[3], actor=row[4],
        started_at=when(row[5]), updated_at=when(row[6]),
        retire_after=when(row[7]) if row[7] else None, old_fingerprint=row[8],
        new_fingerprint=row[9], secret_ref=row[10], error=row[11], targets=targets,
        audit_key_id=row[13],
    )


def step(row: Sequence[Any], when: Timestamp) -> Step:
    """A row of ``at, state, detail``."""
    return Step(when(row[0]), State(row[1]), json.loads(row[2]))


def hook_run(row: Sequence[Any], when: Timestamp) -> HookRun:
    """A row of :data:`HOOK_COLUMNS`."""
    return HookRun(rotation_id=row[0], client=row[1], stage=row[2], hook=row[3],
                   status=row[4], attempts=int(row[5]), required=bool(row[6]),
                   updated_at=when(row[7]), next_attempt_at=when(row[8]) if row[8] else None,
                   error=row[9])
