"""The triggers of the daemon's :class:`~rotator.daemon.service.Service`: a rotation, a
retirement or a verification asked for through the API.

A trigger joins the client's job if it has one; otherwise it queues a job and wakes the
scheduler. With a journal several daemons share, a trigger is queued in the journal
(:mod:`rotator.daemon.service_shared`), and refused while that journal is away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rotator.daemon.model import Trigger, UnknownRotation
from rotator.daemon.service_shared import SharedJournal
from rotator.journal import new_rotation_id


class Triggers(SharedJournal):
    """Rotations, retirements and verifications asked for through the API."""

    def trigger_rotation(self, name: str, *, actor: str,
                         idempotency_key: str | None = None) -> Trigger:
        self._journal_reachable()
        common = self._shared_trigger(name, actor, idempotency_key)
        if common is not None:
            return common
        with self._lock:
            now = self._clock()
            admitted = self._admit(name, now, idempotency_key)
            if isinstance(admitted, Trigger):
                return admitted
            rec = admitted
            if rec.job is not None:
                trigger = Trigger(rec.job.id, name, joined=True)
            elif rec.open is not None and not rec.open.awaiting_retirement:
                job = rec.job or self._queue(rec, "resume", actor, rec.open.id)
                trigger = Trigger(job.id, name, joined=True)
            else:
                job = self._queue(rec, "rotate", actor, new_rotation_id())
                trigger = Trigger(job.id, name, joined=False)
            if idempotency_key is not None:
                self._idempotency[idempotency_key] = (now, trigger)
        self._wakeup.set()
        return trigger

    def trigger_retirement(self, name: str, *, actor: str, now: bool = False) -> Trigger:
        self._journal_reachable()
        with self._lock:
            self._taking()
            rec = self._record(name)
            if rec.job is not None:
                return Trigger(rec.job.id, name, joined=True)
            if rec.open is None:
                raise UnknownRotation(f"no rotation of {name!r} awaits retirement")
            kind = "retire" if rec.open.awaiting_retirement else "resume"
            job = self._queue(rec, kind, actor, rec.open.id, retire_now=now)
        self._wakeup.set()
        return Trigger(job.id, name, joined=False)

    def verify(self, name: str, *, actor: str) -> Mapping[str, Any]:
        with self._lock:
            self._taking()
            self._record(name)
            config = self._engine_config
        with self._workers(config, actor, self._journal(), self._wrap) as worker:
            outcome = worker.verify(name)
        return {"client": name, "ok": outcome.ok, "message": outcome.message,
                "stores": outcome.details}
