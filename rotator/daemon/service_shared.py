"""What the daemon's :class:`~rotator.daemon.service.Service` does when several daemons share
one journal (PostgreSQL; see :mod:`rotator.daemon.shared` and docs/ha.md).

A trigger is queued in the journal, so any daemon can answer it and run it; each daemon
picks up the triggers no daemon runs, and claims the leases of the clients it will rotate in
one database round trip before it starts their jobs. Every daemon answers the API from the
journal, so each tells the same story.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import time
from collections.abc import Iterable
from datetime import datetime

from rotator.config import ClientConfig
from rotator.daemon import shared
from rotator.daemon.leases import claim
from rotator.daemon.model import ClientState, ServiceUnavailable, Trigger
from rotator.daemon.records import Job
from rotator.daemon.service_core import IdpGate
from rotator.daemon.service_jobs import JobRunning
from rotator.engine import Outcome
from rotator.errors import JournalConflict, RotatorError
from rotator.journal import new_rotation_id
from rotator.secrets import redact


def page_of(names: Iterable[str], after: str | None, limit: int | None) -> list[str]:
    """The names past ``after`` in sorted order, ``limit`` of them at most (all: None)."""
    ordered = sorted(names)
    start = 0 if after is None else bisect.bisect_right(ordered, after)
    return ordered[start:] if limit is None else ordered[start:start + limit]

class SharedJournal(JobRunning):
    """Triggers, pick-up and claims through a journal several daemons share."""

    def _journal_reachable(self) -> None:
        """With a journal several daemons share: ``ServiceUnavailable`` while it is away, so a
        trigger is refused (503) rather than queued where no daemon could record it."""
        if self._config.journal.url is None:
            return
        try:
            self._journal().latest("-")
        except RotatorError as exc:
            raise ServiceUnavailable(
                f"{redact(str(exc))}; the trigger was not taken: try again once the journal "
                "database is back") from exc

    def _shared_states(self, name: str | None, *, after: str | None = None,
                       limit: int | None = None
                       ) -> list[tuple[ClientState, ClientConfig]] | None:
        """With a journal several daemons share: the clients' states (``name``'s, or a page
        of them as :func:`page_of` takes it) as the journal tells every daemon
        (rotator.daemon.shared); else None."""
        if self._config.journal.url is None:
            return None
        journal = self._journal()
        if not shared.supported(journal):
            return None
        with self._lock:
            if name is not None:
                self._record(name)
            names = [name] if name is not None else page_of(self._records, after, limit)
            records = {n: dataclasses.replace(self._records[n]) for n in names}
        states = shared.shared_states(journal, records, self._clock())
        if states is None:
            return None
        return [(states[n], r.config) for n, r in records.items() if n in states]

    def _shared_trigger(self, name: str, actor: str,
                        idempotency_key: str | None) -> Trigger | None:
        """With a journal several daemons share: join the client's open rotation wherever it
        runs, or the trigger queued through any daemon; else queue one in the journal and
        here (rotator.daemon.shared). None when the journal is not shared."""
        journal = self._journal()
        if self._config.journal.url is None or not shared.supported(journal):
            return None
        with self._lock:
            now = self._clock()
            admitted = self._admit(name, now, idempotency_key)
            if isinstance(admitted, Trigger):
                return admitted
            rec = admitted
            local = rec.job
            if local is not None and local.state == "running":
                trigger: Trigger | None = Trigger(local.id, name, joined=True)
            else:
                trigger = None
                wanted = local.id if local is not None and local.kind == "rotate" \
                    else new_rotation_id()
        if trigger is None:
            try:
                rotation_id, joined = journal.queue_rotation(  # type: ignore[attr-defined]
                    name, wanted, actor)
            except JournalConflict as exc:
                raise ServiceUnavailable(f"{exc}; the trigger was not taken") from exc
            except RotatorError as exc:
                raise ServiceUnavailable(
                    f"{redact(str(exc))}; the trigger was not taken: try again once the "
                    "journal database is back") from exc
            with self._lock:
                here = self._records.get(name)
                if not joined and here is not None:
                    if here.job is None:
                        self._queue(here, "rotate", actor, rotation_id)
                    elif here.job.id != rotation_id:  # run once the job in hand ends
                        here.follow_up = (rotation_id, actor)
                rejoined = local is not None and rotation_id == wanted  # its queued job
                trigger = Trigger(rotation_id, name, joined=joined or rejoined)
        if idempotency_key is not None:
            with self._lock:
                self._idempotency[idempotency_key] = (self._clock(), trigger)
        self._wakeup.set()
        return trigger

    def _picked_up(self, queued: list[Job]) -> list[Job]:
        """``queued``, with the triggers queued through any daemon's API for clients this
        daemon has no job for (looked at every third of ``lease``, at most every 30 s): if
        the daemon that took one went away, another runs it (rotator.daemon.shared)."""
        if time.monotonic() < self._triggers_next:
            return queued
        self._triggers_next = time.monotonic() + min(max(self._config.daemon.lease / 3, 1.0),
                                                      30.0)
        found = shared.pending(self._journal(), self._config.daemon.lease)
        added = []
        with self._lock:
            for trigger_id, client, actor in found:
                rec = self._records.get(client)
                if rec is None or rec.removed or rec.job is not None:
                    continue
                added.append(self._queue(rec, "rotate", actor, trigger_id))
        return queued + added

    def _claim(self, queued: list[Job], free: int, now: datetime) -> list[Job]:
        """With a shared journal: the queued jobs whose clients' leases this daemon took now,
        at most ``free``, in one database round trip; the rest wait for a later tick (the
        clients are another daemon's for now). Each daemon claims in its own random order,
        so daemons starting together rarely reach for the same clients."""
        if free <= 0 or not queued:
            return []
        order = list(queued)
        random.shuffle(order)
        with self._lock:
            room = {idp: self._config.daemon.idp_concurrency - gate.running
                    for idp, gate in self._gates.items()}
        # Offer up to eight times what can start: the statement takes at most ``free``, no
        # more of one IdP than its gate lets run, and names every offered client another
        # daemon rotated meanwhile, so this daemon drops those jobs in one round trip.
        chosen = [j for j in order if room.get(j.idp, 0) > 0][:max(free * 8, 32)]
        with self._lock:
            known = [self._known(j) for j in chosen]
        journal = self._journal()
        answer = claim(journal, [j.client for j in chosen], self._holder,
                       self._config.daemon.lease, free, known,
                       rooms=None if all(room[j.idp] >= free for j in chosen)
                       else [(j.idp, room[j.idp]) for j in chosen])
        if answer is None:
            return queued
        claimed, elsewhere = answer
        with self._lock:
            self._claims.update({j.id: claimed[j.client] for j in chosen
                                 if j.client in claimed})
        try:  # what the journal says of them now, in one statement for all
            known_facts = shared.client_facts(journal, elsewhere) if elsewhere else None
        except RotatorError:
            known_facts = None
        for job in (j for j in chosen if j.client in elsewhere):
            # Another daemon rotated it since this one looked: no job, no lease taken.
            with self._lock:
                job.state, job.started_at = "running", now
                self._gates.setdefault(job.idp, IdpGate()).running += 1
            self._finished(job, Outcome(job.client, True, "rotated_by_other",
                                        "rotated by another daemon since this one looked"),
                           [], journal, facts=known_facts.get(job.client)
                           if known_facts is not None else None)
        return [j for j in chosen if j.client in claimed]

    def _known(self, job: Job) -> str | None:
        """For the claim: the newest rotation of a scheduled rotation's client this daemon
        knows of ("" for other jobs: a trigger or a resume is not skipped)."""
        if job.kind != "rotate" or job.actor != "scheduler":
            return ""
        rec = self._records.get(job.client)
        return rec.latest.id if rec is not None and rec.latest is not None else None
