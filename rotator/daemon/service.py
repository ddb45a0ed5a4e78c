"""The daemon's scheduler and workers: :class:`Service` implements ``RotationService``.

One scheduler thread wakes when the next client falls due (or a trigger or a finished job
wakes it), asks :func:`rotator.daemon.schedule.decide` about every client, and starts jobs
on worker threads, at most ``[daemon] workers`` at once and ``idp_concurrency`` per IdP.
A job drives the engine's public methods (``rotate``, ``retire``) with its own journal
connection and adapters, then refreshes what the daemon knows of that client from the
journal, so ``clients()`` answers from memory without a store round trip.

What the daemon knows of each client, and how a finished job changes it, is in
:mod:`rotator.daemon.records`; the engine behind a job and the wrappers that watch it are in
:mod:`rotator.daemon.workers`. :class:`Service` is put together from one class per part
(state, jobs, shared journal, scheduling, views, triggers; see
:mod:`rotator.daemon.service_core`); this module holds start-up, reload and shutdown.

Tests call :meth:`Service.tick` with a controllable clock and an inline ``spawn`` instead of
starting the thread; the scheduling rule itself is pure and lives in ``schedule``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime

import structlog

from rotator.config import ClientConfig, Config
from rotator.daemon.deferred import DEFERRED_WAIT
from rotator.daemon.records import (
    ClientRecord,
    StoreFacts,
    due_clients,
    history_from_journal,
    load_record,
    policy_of,
    rotated_clients,
    success_time,
)
from rotator.daemon.schedule import catch_up_slots, decide
from rotator.daemon.service_core import HELD_RETRY as HELD_RETRY
from rotator.daemon.service_core import IDEMPOTENCY_TTL as IDEMPOTENCY_TTL
from rotator.daemon.service_core import MAX_JOBS_KEPT as MAX_JOBS_KEPT
from rotator.daemon.service_core import Spawn as Spawn
from rotator.daemon.service_scheduler import Scheduling
from rotator.daemon.service_triggers import Triggers
from rotator.daemon.service_views import CONSUMERS_FRESH as CONSUMERS_FRESH
from rotator.daemon.service_views import Views

log = structlog.get_logger("rotator.daemon")


class Service(Triggers, Views, Scheduling):
    """Schedules, runs and reports rotations for every configured client."""

    def prepare(self, *, defer_facts: bool = False) -> None:
        """Load every client's facts, queue open rotations, spread overdue clients.

        ``defer_facts`` (:meth:`start`): the store facts of clients the journal never saw
        rotate are read by the scheduler thread before its first pass instead
        (:meth:`_load_deferred`), and overdue clients spread then.
        """
        now = self._clock()
        with self._lock, self._facts_reader() as facts:
            journal = self._journal()
            rotated = rotated_clients(journal)
            for name, client in self._config.clients.items():
                if defer_facts and rotated is not None and name not in rotated:
                    self._records[name] = ClientRecord(client, policy_of(client),
                                                       facts_pending=True)
                    continue
                self._records[name] = load_record(
                    journal, self._config, client, facts,
                    rotated=rotated is None or name in rotated)
            if any(r.facts_pending for r in self._records.values()):
                self._deferred.open(self._facts or StoreFacts(self._config))
            else:
                self._spread_overdue(now)
            self._prepared = True
        log.info("daemon_prepared", clients=len(self._records),
                 deferred=sum(1 for r in self._records.values() if r.facts_pending),
                 open=sum(1 for r in self._records.values() if r.open is not None))

    def _spread_overdue(self, now: datetime) -> None:
        """Spread the clients that fell due while the daemon was down over ``catch_up``."""
        overdue = []
        for name, rec in self._records.items():
            decision = decide(name, rec.policy, rec.history(), now)
            if rec.open is None and decision.due and decision.due_at is not None:
                overdue.append((name, decision.due_at))
        for name, slot in catch_up_slots(overdue, now, self._config.daemon.catch_up).items():
            self._records[name].not_before = slot
        self._deferred.ready.set()
        log.info("daemon_facts_loaded", clients=len(self._records), overdue=len(overdue))

    def _load_deferred(self) -> None:
        """Read the store facts :meth:`prepare` deferred, one client at a time (API calls
        are answered meanwhile, and read a client's facts first if they need them), then
        spread overdue clients."""
        with self._lock:
            pending = [r for r in self._records.values() if r.facts_pending]
        self._deferred.read_all(pending, lambda: self._config, self._lock, self._stopping)
        with self._lock:
            self._spread_overdue(self._clock())

    def start(self, *, hold_facts: bool = False) -> None:
        """Prepare and start the scheduler thread (which first reads the deferred facts;
        with ``hold_facts``, not before :meth:`release_facts`)."""
        if not hold_facts:
            self.release_facts()
        if not self._prepared:
            self.prepare(defer_facts=True)
        self._scheduler = threading.Thread(target=self._loop, name="rotator-scheduler",
                                           daemon=True)
        self._scheduler.start()

    def stop(self, timeout: float) -> bool:
        """Take no more triggers; let running jobs reach their next journal step.

        Returns whether every job ended within ``timeout`` seconds.
        """
        self._stopping.set()
        self._wakeup.set()
        deadline = time.monotonic() + timeout
        if self._scheduler is not None:
            self._scheduler.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def reload(self, config: Config) -> None:
        """Use ``config`` from now on; clients removed with an open rotation are finished.

        The clients ``config`` adds are read (journal, stores) before the service's lock is
        taken, so API calls are answered meanwhile; the lock is held only to swap them in.
        """
        with self._lock:
            known = set(self._records)
        loaded: dict[str, ClientRecord] = {}
        adding = [c for n, c in config.clients.items() if n not in known]
        if adding:
            with self._facts_reader(config) as facts:
                for client in adding:
                    loaded[client.name] = self._load(client, facts)
        with self._lock:
            kept: dict[str, ClientConfig] = {}
            for name in list(self._records):
                rec = self._records[name]
                if name in config.clients:
                    continue
                if rec.open is not None or rec.job is not None:
                    rec.removed = True
                    kept[name] = rec.config
                else:
                    del self._records[name]
            added = [c for n, c in config.clients.items() if n not in self._records]
            for client in added:
                if loaded.get(client.name) is None:  # a record a finished job dropped since
                    with self._facts_reader(config) as facts:
                        loaded[client.name] = self._load(client, facts)
                self._records[client.name] = loaded[client.name]
            for name, client in config.clients.items():
                rec_old = self._records.get(name)
                if rec_old is None or rec_old.config is client:
                    continue  # just loaded
                rec_old.config, rec_old.policy = client, policy_of(client)
                rec_old.removed = False
                rec_old.blocked = None  # a changed configuration may have fixed it
            old = self._engine_config
            self._config = config
            self._engine_config = dataclasses.replace(
                config, clients={**kept, **config.clients},
                stores={**old.stores, **config.stores} if kept else config.stores,
                idps={**old.idps, **config.idps} if kept else config.idps)
        log.info("configuration_reloaded", clients=len(config.clients),
                 finishing_removed=sorted(kept))
        self._wakeup.set()

    @property
    def facts_read(self) -> bool:
        """Whether every client's store facts are known (the deferred ones read too)."""
        return self._deferred.ready.is_set()

    def release_facts(self) -> None:
        """Let the scheduler thread read the deferred store facts (see :meth:`start`)."""
        self._deferred.released.set()

    def _loop(self) -> None:
        if not self._deferred.ready.is_set():
            self._deferred.released.wait(DEFERRED_WAIT)
            try:
                self._load_deferred()
            except Exception:  # logged; the facts stay unknown (as when a store is away)
                log.error("deferred_facts_failed", exc_info=True)
                with self._lock:
                    for rec in self._records.values():
                        rec.facts_pending = False
                    self._spread_overdue(self._clock())
        refreshed = time.monotonic()
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                wake = self.tick()
                if time.monotonic() - refreshed > 60:
                    self.refresh()
                    refreshed = time.monotonic()
                self.sweep()
            except Exception:  # keep scheduling; the error is logged
                log.error("scheduler_error", exc_info=True)
                wake = None
            delay = 30.0 if wake is None else (wake - self._clock()).total_seconds()
            self._wakeup.wait(min(max(delay, 0.05), 30.0))

    def close(self) -> None:
        """Close the journal (after :meth:`stop`)."""
        with self._lock:
            journal, self._shared_journal = self._shared_journal, None
        if journal is not None:
            journal.close()
        self._deferred.close()  # stopped before the deferred facts were all read


__all__ = ["Service", "due_clients", "history_from_journal", "policy_of",
           "success_time"]
