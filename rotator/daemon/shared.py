"""What every daemon sharing one journal answers alike: clients, rotations and triggers.

With ``[journal] url_env`` several daemons rotate the same clients, and each knows only the
jobs it runs. The admin API and the metrics of every daemon therefore answer from the shared
journal (``PostgresJournal.client_facts``, one statement for any number of clients), not from
the daemon's memory:

- a client's last and open rotation, its last success (its PROMOTED step), the expiry of its
  current secret, and its **failures**: the failed or rolled-back rotations begun since the
  last success, the count every daemon can read (the backoff follows it);
- ``rotating`` while any daemon holds the client's live lease, ``due`` while a trigger queued
  through any daemon's API waits;
- a trigger (``POST /v1/clients/{name}/rotations``) on any daemon joins the client's open
  rotation, wherever it runs, or the trigger already queued; else it queues one in the
  journal (``triggers``), which the daemon that took it runs as soon as it holds the lease,
  and any other daemon picks up if that one goes away;
- ``GET /v1/rotations/{id}`` of a queued trigger answers ``queued`` on every daemon, and once
  a rotation of its client began, that rotation.

What stays per daemon: a delay a daemon put on itself (an IdP's ``Retry-After``, a lease found
held, a retirement gate that held) and a refusal before the journal heard of the rotation (a
client blocked by its configuration): each daemon that tries finds the same. When the journal
cannot be read, the daemon answers from its own memory (and logs it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from rotator.daemon.model import ClientState, RotationView
from rotator.daemon.records import _RECORDED_BLOCKING, ClientRecord, Job
from rotator.errors import RotatorError
from rotator.interfaces import Journal, Rotation
from rotator.secrets import redact

log = structlog.get_logger("rotator.daemon")

#: (last success time, latest rotation, open rotation), as records.journal_facts answers.
Facts = tuple[datetime | None, Rotation | None, Rotation | None]


def supported(journal: Journal) -> bool:
    """Whether ``journal`` is shared by several daemons and answers for all of them."""
    return hasattr(journal, "client_facts") and hasattr(journal, "queue_rotation")


def client_facts(journal: Journal, names: Sequence[str]) -> dict[str, Any] | None:
    """``PostgresJournal.client_facts`` of ``names``; None if the journal cannot tell."""
    read = getattr(journal, "client_facts", None)
    if read is None:
        return None
    return dict(read(list(names)))


def _expiry(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def facts_of(found: Any) -> tuple[Facts, datetime | None]:
    """One client's ``client_facts`` entry as (journal facts, secret expiry), for the
    scheduler: an open rotation a daemon drives under its live lease is left out (this
    daemon would only queue a job to resume it, which finds nothing to do once that daemon
    is done); if that daemon goes away, its lease expires and the next read includes it."""
    opened = found.open if found.holder is None else None
    return ((found.last_success_at, found.latest, opened), _expiry(found.secret_expires_at))


def shared_record(rec: ClientRecord, found: Any) -> ClientRecord:
    """A copy of ``rec`` with what the shared journal says in place of this daemon's view."""
    latest: Rotation | None = found.latest
    blocked = rec.blocked
    error = latest.error if latest is not None else None
    if error and any(marker in error for marker in _RECORDED_BLOCKING):
        blocked = error
    reason = blocked or (error if found.failures else None)
    job = None
    if found.holder is not None:
        job = Job(latest.id if latest is not None else "", rec.config.name, rec.config.idp,
                  "rotate", "", state="running")
    elif found.pending is not None:
        job = Job(found.pending, rec.config.name, rec.config.idp, "rotate", "")
    return dataclasses.replace(
        rec, last_success_at=found.last_success_at or rec.last_success_at,
        failures=found.failures, last_failure_at=found.last_failure_at, not_before=None,
        latest=latest, open=found.open, blocked=blocked, reason=reason, job=job,
        secret_expires_at=_expiry(found.secret_expires_at))


def shared_states(journal: Journal, records: Mapping[str, ClientRecord],
                  now: datetime) -> dict[str, ClientState] | None:
    """Every one of ``records``' states as the shared journal tells it, in one statement;
    None when the journal is not shared or cannot be read (the caller answers itself)."""
    try:
        found = client_facts(journal, list(records))
    except RotatorError as exc:
        log.warning("shared_view_unavailable", error=redact(str(exc)))
        return None
    if found is None:
        return None
    return {name: shared_record(rec, found[name]).state(now)
            for name, rec in records.items() if name in found}


def queued_view(journal: Journal, rotation_id: str) -> RotationView | Rotation | None:
    """A trigger queued through any daemon: ``queued`` while pending, else the rotation that
    answered it; None if no trigger has that id."""
    read = getattr(journal, "queued_rotation", None)
    if read is None:
        return None
    found = read(rotation_id)
    if found is None:
        return None
    client, actor, _queued_at, answered = found
    if answered is None:
        return RotationView(rotation_id, client, "queued", None, actor, None, None, None, None)
    return journal.get(answered)


def answered_elsewhere(journal: Journal, job: Job) -> str | None:
    """For a triggered rotation job: the id of the rotation that already answered its
    trigger, begun by another daemon (or an earlier job) and no longer open; else None."""
    read = getattr(journal, "queued_rotation", None)
    if read is None or job.kind != "rotate" or job.actor == "scheduler":
        return None
    found = read(job.id)
    if found is None or found[3] is None:
        return None
    rotation = journal.get(found[3])
    if not rotation.state.terminal and not rotation.awaiting_retirement:
        return None  # begun, and its daemon went away: this job resumes it
    return str(found[3])


def pending(journal: Journal, older_than: float) -> list[tuple[str, str, str]]:
    """Triggers queued through any daemon more than ``older_than`` seconds ago and not begun
    (the daemon that took one had a lease's time to begin it): (id, client, actor)."""
    read = getattr(journal, "pending_rotations", None)
    if read is None:
        return []
    try:
        return list(read(older_than))
    except RotatorError as exc:
        log.warning("pending_triggers_unreadable", error=redact(str(exc)))
        return []


def drop(journal: Journal, trigger_id: str) -> None:
    """Forget a pending trigger whose job ended without beginning a rotation."""
    forget = getattr(journal, "drop_queued", None)
    if forget is not None:
        try:
            forget(trigger_id)
        except RotatorError as exc:
            log.warning("pending_trigger_not_dropped", error=redact(str(exc)))
