"""The scheduling pass of the daemon's :class:`~rotator.daemon.service.Service`.

One scheduler thread wakes when the next client falls due (or a trigger or a finished job
wakes it), asks :func:`rotator.daemon.schedule.decide` about every client, and starts jobs
on worker threads, at most ``[daemon] workers`` at once and ``idp_concurrency`` per IdP.
Tests call :meth:`Scheduling.tick` with a controllable clock and an inline ``spawn`` instead
of starting the thread; the scheduling rule itself is pure and lives in ``schedule``.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta

import structlog

from rotator.daemon import shared
from rotator.daemon.records import ClientRecord, Job, client_expiry, journal_facts
from rotator.daemon.schedule import Policy, decide
from rotator.daemon.service_core import HELD_RETRY, IdpGate
from rotator.daemon.service_shared import SharedJournal
from rotator.hooks.runner import sweep
from rotator.journal import new_rotation_id

log = structlog.get_logger("rotator.daemon")


class Scheduling(SharedJournal):
    """Decides which jobs start now, and sweeps hooks and alerts."""

    def tick(self) -> datetime | None:
        """Start every job that may start now; return when to look again."""
        now = self._clock()
        start: list[Job] = []
        wake: list[datetime] = []
        with self._lock:
            for name in sorted(self._records):
                rec = self._records[name]
                if rec.job is None and not self._stopping.is_set():
                    wake += self._schedule(rec, now)
            running = sum(1 for j in self._jobs.values() if j.state == "running")
            daemon = self._config.daemon
            queued = sorted((j for j in self._jobs.values() if j.state == "queued"),
                            key=lambda j: j.id)
            if self._config.journal.url is not None and not self._stopping.is_set():
                free = daemon.workers - running
                queued = [j for j in queued if not self._throttled(j.idp, now)]
        if self._config.journal.url is not None and not self._stopping.is_set():
            queued = self._claim(self._picked_up(queued), free, now)
            wake.append(now + timedelta(seconds=min(max(daemon.lease / 3, 1.0), 30.0)))
        with self._lock:
            for job in queued:
                if self._stopping.is_set() or running >= daemon.workers:
                    break
                gate = self._gates.setdefault(job.idp, IdpGate())
                if gate.throttled_until is not None and gate.throttled_until > now:
                    wake.append(gate.throttled_until)
                    continue
                if gate.running >= daemon.idp_concurrency:
                    continue
                gate.running += 1
                running += 1
                job.state, job.started_at = "running", now
                start.append(job)
        for job in start:
            self._spawn(lambda job=job: self._run(job))  # type: ignore[misc]
        return min(wake) if wake else None

    def _schedule(self, rec: ClientRecord, now: datetime) -> list[datetime]:
        """Queue the job ``rec`` needs now, if any; return when it next needs one."""
        name = rec.config.name
        if rec.open is not None:
            if rec.open.awaiting_retirement:
                at = rec.open.retire_after or now
                if rec.not_before is not None and rec.not_before > at:
                    at = rec.not_before  # a retirement gate held it: ask again later
                if at <= now:
                    self._queue(rec, "retire", "scheduler", rec.open.id)
                    return []
                return [at]
            if rec.not_before is not None and rec.not_before > now:
                return [rec.not_before]  # found locked by another daemon: not in a busy loop
            history = rec.history()
            attempt = decide(name, Policy(rotate_every=0.0, backoff=rec.policy.backoff,
                                          backoff_max=rec.policy.backoff_max),
                             dataclasses.replace(history, last_success_at=now), now)
            if attempt.next_attempt is None or attempt.next_attempt <= now:
                self._queue(rec, "resume", "scheduler", rec.open.id)
                return []
            return [attempt.next_attempt]
        if rec.removed or rec.blocked is not None:
            return []
        decision = decide(name, rec.policy, rec.history(), now)
        if decision.runnable:
            self._queue(rec, "rotate", "scheduler", new_rotation_id())
            return []
        return [decision.next_run] if decision.next_run is not None else []

    def sweep(self, *, force: bool = False) -> None:
        """Retry failed hooks and send due alerts (:mod:`rotator.hooks`), at most every
        ``[alerts] check_every`` (60 s without alerts) unless ``force``."""
        alerts = self._config.alerts
        every = alerts.check_every if alerts is not None else HELD_RETRY
        with self._lock:
            if self._audit is None or self._sweeping or (
                    not force and self._swept is not None
                    and time.monotonic() - self._swept < every):
                return
            self._swept, self._sweeping = time.monotonic(), True
            clients = dict(self._engine_config.clients)
            blocked = {n: r.blocked for n, r in self._records.items() if r.blocked}
        audit, journal = self._audit, self._journal()

        def run() -> None:  # off the scheduler thread: a hook may take its timeout
            try:
                sweep(clients, journal, audit, alerts=alerts,
                      state_dir=self._config.state_dir, clock=self._clock, blocked=blocked)
            except Exception:  # keep the daemon; the error is logged
                log.error("sweep_failed", exc_info=True)
            finally:
                with self._lock:
                    self._sweeping = False

        self._spawn(run)

    def refresh(self) -> None:
        """Re-read every idle client's journal facts (rotations run by the CLI, ...)."""
        journal = self._journal()
        with self._lock:
            names = [n for n, r in self._records.items() if r.job is None]
        found = shared.client_facts(journal, names) \
            if self._config.journal.url is not None else None
        for name in names:
            if found is not None and name in found:  # one statement for every client
                (success, latest, open_rotation), expiry = shared.facts_of(found[name])
            else:
                success, latest, open_rotation = journal_facts(journal, name)
                expiry = client_expiry(journal, name)
            with self._lock:
                rec = self._records.get(name)
                if rec is None or rec.job is not None:
                    continue
                if success is not None and success != rec.last_success_at:
                    rec.failures, rec.blocked, rec.reason = 0, None, None
                rec.last_success_at = success or rec.last_success_at
                rec.secret_expires_at = expiry or rec.secret_expires_at
                rec.latest, rec.open = latest, open_rotation
