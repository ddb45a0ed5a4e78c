"""Running one job of the daemon's :class:`~rotator.daemon.service.Service` on a worker thread.

A job drives the engine's public methods (``rotate``, ``retire``) with its own adapters, then
refreshes what the daemon knows of that client from the journal, so ``clients()`` answers from
memory without a store round trip. With a journal several daemons share, a job writes
through the client's lease (:mod:`rotator.daemon.leases`) and first makes sure no other daemon
did its work already.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, cast

import structlog

from rotator.config import Config
from rotator.daemon import shared
from rotator.daemon.leases import leased
from rotator.daemon.records import Job, client_expiry, journal_facts
from rotator.daemon.service_core import HELD_RETRY, IdpGate, ServiceCore
from rotator.daemon.workers import StoppableJournal, WatchedIdp
from rotator.engine import Outcome
from rotator.errors import RotationLocked, RotatorError
from rotator.interfaces import IdentityProvider, Journal, State
from rotator.secrets import redact

log = structlog.get_logger("rotator.daemon")


class JobRunning(ServiceCore):
    """Runs a job and learns from how it ended."""

    def _run(self, job: Job) -> None:
        """Run one job on this thread; never raises."""
        with self._lock:
            config = self._engine_config
        started = time.monotonic()
        throttled: list[float] = []
        outcome: Outcome
        journal = self._journal()
        try:
            with self._claimed(job, journal) as job_journal:
                stoppable = cast(Journal, StoppableJournal(job_journal, self._stopping))
                wrap = self._wrapper(lambda seconds: throttled.append(seconds))
                outcome = self._rotated_elsewhere(job, job_journal) or \
                    self._answered(job, journal) or \
                    self._work(job, config, stoppable, wrap)
        except RotationLocked as exc:
            outcome = Outcome(job.client, False, "locked", str(exc))
        except RotatorError as exc:
            outcome = Outcome(job.client, False, "failed", redact(str(exc)))
        except Exception as exc:  # a bug must not kill the daemon
            log.error("job_crashed", client=job.client, exc_info=True)
            outcome = Outcome(job.client, False, "failed",
                              f"unexpected error {type(exc).__name__}")
        if self._config.journal.url is not None and job.kind == "rotate" \
                and job.actor != "scheduler" and not outcome.ok \
                and outcome.action != "locked" and outcome.rotation_id != job.id:
            shared.drop(journal, job.id)  # refused before it began: not asked again
        self._finished(job, outcome, throttled, journal)
        with contextlib.suppress(Exception):
            self._observer.rotation_finished(job.client, outcome.action,
                                             time.monotonic() - started)

    def _work(self, job: Job, config: Config, journal: Journal,
              wrap: Callable[[IdentityProvider], IdentityProvider]) -> Outcome:
        with self._workers(config, job.actor, journal, wrap) as worker:
            if job.kind == "rotate":
                # A new rotation takes the id the trigger answered with; one a crash
                # left open keeps its own (the job maps one to the other).
                return worker.rotate(job.client, rotation_id=job.id)
            # retire() also drives an open rotation, and never starts a new one.
            return worker.retire(job.client, now=job.retire_now)

    @contextlib.contextmanager
    def _claimed(self, job: Job, journal: Journal) -> Iterator[Journal]:
        """The journal ``job`` writes through: with a journal several daemons share, fenced
        by the client's lease, held while the job runs (see rotator.daemon.leases)."""
        if self._config.journal.url is None:
            yield journal
            return
        with self._lock:
            claimed = self._claims.pop(job.id, None)
        with leased(journal, job.client, self._holder, self._config.daemon.lease,
                    claimed=claimed) as fenced:
            yield fenced

    def _rotated_elsewhere(self, job: Job, journal: Journal) -> Outcome | None:
        """A scheduled rotation's client that another daemon rotated since this one looked."""
        if job.kind != "rotate" or job.actor != "scheduler" or \
                self._config.journal.url is None:
            return None
        with self._lock:
            rec = self._records.get(job.client)
            known = rec.latest.id if rec is not None and rec.latest is not None else None
        latest = journal.latest(job.client)
        if latest is None or latest.id == known or latest.id == job.id:
            return None
        if latest.state in (State.PROMOTED, State.COMPLETED):
            return Outcome(job.client, True, "rotated_by_other",
                           f"rotated by another daemon ({latest.id}) since this one looked",
                           latest.id, latest.state.value)
        return None

    def _answered(self, job: Job, journal: Journal) -> Outcome | None:
        """A triggered rotation whose trigger a rotation begun elsewhere already answered
        (two daemons picked it up): nothing to do (rotator.daemon.shared). Asked of the
        journal itself: the lease-fenced one a job writes through has no trigger table."""
        if self._config.journal.url is None:
            return None
        answer = shared.answered_elsewhere(journal, job)
        if answer is None:
            return None
        return Outcome(job.client, True, "rotated_by_other",
                       f"the trigger was answered by rotation {answer}", answer)

    def _finished(self, job: Job, outcome: Outcome, throttled: list[float],
                  journal: Journal, *, facts: Any = None) -> None:
        now = self._clock()
        expiry = None
        try:
            if facts is None and self._config.journal.url is not None:
                found = shared.client_facts(journal, [job.client])
                facts = found.get(job.client) if found is not None else None
            if facts is not None:  # one statement instead of six
                fresh, expiry = shared.facts_of(facts)
            else:
                fresh = journal_facts(journal, job.client)
                expiry = client_expiry(journal, job.client)
        except Exception:  # keep the job's bookkeeping even if the journal went away
            log.error("journal_unreadable", client=job.client, exc_info=True)
            fresh = None
        with self._lock:
            job.state, job.outcome = "done", outcome
            job.real_id = outcome.rotation_id or job.real_id or (
                fresh[1].id if fresh and fresh[1] else None)
            rec = self._records.get(job.client)
            gate = self._gates.setdefault(job.idp, IdpGate())
            gate.running = max(0, gate.running - 1)
            if rec is None:
                return
            rec.job = None
            if fresh is not None:
                rec.last_success_at, rec.latest, rec.open = fresh[0] or rec.last_success_at, \
                    fresh[1], fresh[2]
                rec.secret_expires_at = expiry or rec.secret_expires_at
            rec.learn(outcome, now, throttled_until=gate.throttled_until if throttled else None,
                      stopping=self._stopping.is_set())
            if outcome.action == "held":
                rec.not_before = now + timedelta(seconds=HELD_RETRY)
                if job.client in self._reported_meanwhile:  # a consumer report came in
                    rec.not_before = None  # while the gate was asked: ask again at once
            self._reported_meanwhile.discard(job.client)
            follow_up, rec.follow_up = rec.follow_up, None
            if follow_up is not None and not rec.removed:
                self._queue(rec, "rotate", follow_up[1], follow_up[0])
            if rec.removed and rec.open is None:
                del self._records[job.client]
        log.info("job_finished", client=job.client, kind=job.kind, action=outcome.action,
                 ok=outcome.ok, rotation_id=job.real_id)
        self._wakeup.set()

    def _throttle(self, idp: str, seconds: float) -> None:
        with self._lock:
            gate = self._gates.setdefault(idp, IdpGate())
            until = self._clock() + timedelta(seconds=seconds)
            if gate.throttled_until is None or until > gate.throttled_until:
                gate.throttled_until = until
        log.warning("idp_throttled", idp=idp, retry_after=seconds)

    def _wrapper(self, seen: Callable[[float], None]
                 ) -> Callable[[IdentityProvider], IdentityProvider]:
        def throttled(idp: str, seconds: float) -> None:
            seen(seconds)
            self._throttle(idp, seconds)

        return lambda idp: cast(IdentityProvider, WatchedIdp(idp, self._observer, throttled))

    def _wrap(self, idp: IdentityProvider) -> IdentityProvider:
        return self._wrapper(lambda _s: None)(idp)
