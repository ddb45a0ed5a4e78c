"""The daemon's scheduler and workers: :class:`Service` implements ``RotationService``.

One scheduler thread wakes when the next client falls due (or a trigger or a finished job
wakes it), asks :func:`rotator.daemon.schedule.decide` about every client, and starts jobs
on worker threads, at most ``[daemon] workers`` at once and ``idp_concurrency`` per IdP.
A job drives the engine's public methods (``rotate``, ``retire``) with its own journal
connection and adapters, then refreshes what the daemon knows of that client from the
journal, so ``clients()`` answers from memory without a store round trip.

What the daemon knows of each client, and how a finished job changes it, is in
:mod:`rotator.daemon.records`; the engine behind a job and the wrappers that watch it are in
:mod:`rotator.daemon.workers`.

Tests call :meth:`Service.tick` with a controllable clock and an inline ``spawn`` instead of
starting the thread; the scheduling rule itself is pure and lives in ``schedule``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import structlog

from rotator.audit import AuditLog
from rotator.config import ClientConfig, Config
from rotator.consumers import ConsumerRegistry, ConsumerReport
from rotator.daemon import shared
from rotator.daemon.deferred import DEFERRED_WAIT, DeferredFacts
from rotator.daemon.leases import claim, holder_name, leased
from rotator.daemon.model import (
    ClientState,
    ConsumerView,
    Observer,
    Readiness,
    RotationView,
    ServiceUnavailable,
    Trigger,
    UnknownClient,
    UnknownRotation,
)
from rotator.daemon.records import (
    ClientRecord,
    FactsReader,
    Job,
    StoreFacts,
    client_expiry,
    due_clients,
    history_from_journal,
    journal_facts,
    load_record,
    policy_of,
    rotated_clients,
    rotation_view,
    success_time,
)
from rotator.daemon.schedule import Policy, catch_up_slots, decide
from rotator.daemon.workers import (
    Clock,
    NullObserver,
    StoppableJournal,
    WatchedIdp,
    WorkerFactory,
    engine_worker,
)
from rotator.engine import Outcome, utcnow
from rotator.errors import JournalConflict, RotationError, RotationLocked, RotatorError
from rotator.hooks.runner import sweep
from rotator.interfaces import IdentityProvider, Journal, Lease, State
from rotator.journal import new_rotation_id, open_journal
from rotator.secrets import redact

log = structlog.get_logger("rotator.daemon")

Spawn = Callable[[Callable[[], None]], None]
#: How long an idempotency key is remembered, and how many queued ids are mapped to the
#: engine's rotation ids (until ``Engine.rotate`` takes the id it should use).
IDEMPOTENCY_TTL = timedelta(hours=24)
MAX_JOBS_KEPT = 1000
#: Seconds before a retirement a gate held (a required hook) is tried again.
HELD_RETRY = 60.0
#: Seconds the consumers' reports read for an answer are used again (other processes may
#: write them too; this daemon forgets them when it keeps a report).
CONSUMERS_FRESH = 1.0


@dataclass
class _IdpGate:
    running: int = 0
    throttled_until: datetime | None = None


class Service:
    """Schedules, runs and reports rotations for every configured client."""

    def __init__(self, config: Config, *, audit: AuditLog | None = None,
                 worker_factory: WorkerFactory | None = None,
                 facts: FactsReader | None = None, clock: Clock = utcnow,
                 observer: Observer | None = None, spawn: Spawn | None = None) -> None:
        if worker_factory is None:
            if audit is None:
                raise ValueError("give an audit log or a worker factory")
            worker_factory = cast(WorkerFactory, lambda *a: engine_worker(audit, clock, *a))
        self._config = config
        self._engine_config = config
        self._workers = worker_factory
        self._facts = facts
        self._clock = clock
        self._observer: Observer = observer or NullObserver()
        self._spawn = spawn or self._thread
        self._lock = threading.RLock()
        self._records: dict[str, ClientRecord] = {}
        self._gates: dict[str, _IdpGate] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._idempotency: dict[str, tuple[datetime, Trigger]] = {}
        self._threads: set[threading.Thread] = set()
        self._shared_journal: Journal | None = None
        self._holder = holder_name()
        self._claims: dict[str, Lease] = {}  # job id -> the lease tick() took for it
        self._stopping = threading.Event()
        self._wakeup = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._prepared = False
        self._consumers = ConsumerRegistry(config.state_dir)
        self._consumers_read: tuple[float, Mapping[str, Any]] | None = None
        self._deferred = DeferredFacts()  # facts read after start() is ready
        #: Clients a consumer reported for while a job of theirs ran (see report_consumer).
        self._reported_meanwhile: set[str] = set()
        self._audit = audit
        self._swept: float | None = None  # monotonic time of the last hooks/alerts sweep
        self._sweeping = False
        #: Monotonic time of the next look at triggers queued through other daemons.
        self._triggers_next = 0.0

    # -- life cycle ----------------------------------------------------------------------

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

    # -- RotationService -------------------------------------------------------------------

    def clients(self) -> Sequence[ClientState]:
        common = self._shared_states(None)
        if common is not None:
            snapshot = self._consumer_snapshot()
            return [self._with_consumers(state, config, snapshot)
                    for state, config in common]
        if not self._deferred.ready.is_set():  # start-up: every client's facts first
            self._deferred.ready.wait(DEFERRED_WAIT)
        with self._lock:
            states = [(self._records[name].state(self._clock()), self._records[name].config)
                      for name in sorted(self._records)]
        snapshot = self._consumer_snapshot()
        return [self._with_consumers(state, config, snapshot) for state, config in states]

    def client(self, name: str) -> ClientState:
        common = self._shared_states(name)
        if common:
            state, config = common[0]
            return self._with_consumers(state, config, self._consumer_snapshot())
        with self._lock:
            rec = self._record(name)
        if rec.facts_pending:  # start-up: read this one's facts now
            self._deferred.read(rec, self._config, self._lock)
        with self._lock:
            state = rec.state(self._clock())
        return self._with_consumers(state, rec.config, self._consumer_snapshot())

    def _shared_states(self, name: str | None
                       ) -> list[tuple[ClientState, ClientConfig]] | None:
        """With a journal several daemons share: the clients' states (``name``'s, or all)
        as the journal tells every daemon (rotator.daemon.shared); else None."""
        if self._config.journal.url is None:
            return None
        journal = self._journal()
        if not shared.supported(journal):
            return None
        with self._lock:
            if name is not None:
                self._record(name)
            records = {n: dataclasses.replace(r) for n, r in sorted(self._records.items())
                       if name is None or n == name}
        states = shared.shared_states(journal, records, self._clock())
        if states is None:
            return None
        return [(states[n], r.config) for n, r in records.items() if n in states]

    def rotation(self, rotation_id: str) -> RotationView:
        with self._lock:
            job = self._jobs.get(rotation_id)
            job = dataclasses.replace(job) if job is not None else None
        journal = self._journal()
        if self._config.journal.url is not None and job is not None and job.state != "done":
            # Shared: the journal first, so that a job this daemon queued for a trigger
            # another daemon ran answers as every daemon does (rotator.daemon.shared).
            with contextlib.suppress(RotationError):
                return rotation_view(journal, journal.get(rotation_id))
        if job is not None and job.real_id is None and job.outcome is not None:
            # It ended before the journal heard of it (refused at the start).
            return RotationView(job.id, job.client, job.outcome.action, None, job.actor,
                                job.started_at, job.started_at, None, job.outcome.message)
        if job is not None and job.real_id is None:
            latest = journal.latest(job.client)
            if (job.state == "queued" or job.started_at is None or latest is None
                    or latest.started_at < job.started_at):
                return RotationView(job.id, job.client, "queued", None, job.actor, None, None,
                                    None, None)
            return rotation_view(journal, latest)
        real_id = job.real_id if job is not None and job.real_id else rotation_id
        try:
            return rotation_view(journal, journal.get(real_id))
        except RotationError:
            pass
        try:  # a trigger queued through another daemon's API (rotator.daemon.shared)
            queued = shared.queued_view(journal, rotation_id)
        except RotationError:
            queued = None
        if isinstance(queued, RotationView):
            return queued
        if queued is not None:
            return rotation_view(journal, queued)
        raise UnknownRotation(f"no rotation {rotation_id!r}")

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

    def _admit(self, name: str, now: datetime, idempotency_key: str | None
               ) -> ClientRecord | Trigger:
        """With the lock held: the answer already given to ``idempotency_key``, else the
        record of the client a trigger may be taken for; raises when triggers are refused,
        the client is unknown or removed, or its retirement runs."""
        self._taking()
        if idempotency_key is not None:
            self._idempotency = {k: v for k, v in self._idempotency.items()
                                 if now - v[0] < IDEMPOTENCY_TTL}
            if idempotency_key in self._idempotency:
                return self._idempotency[idempotency_key][1]
        rec = self._record(name)
        if rec.removed:
            raise UnknownClient(f"client {name!r} was removed from the configuration")
        if rec.job is not None and rec.job.kind == "retire":
            raise ServiceUnavailable(f"the old secret of {name!r} is being retired; "
                                     "trigger the rotation again when that is done")
        return rec

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

    def verify(self, name: str, *, actor: str) -> Mapping[str, Any]:
        with self._lock:
            self._taking()
            self._record(name)
            config = self._engine_config
        with self._workers(config, actor, self._journal(), self._wrap) as worker:
            outcome = worker.verify(name)
        return {"client": name, "ok": outcome.ok, "message": outcome.message,
                "stores": outcome.details}

    def report_consumer(self, name: str, *, instance: str, fingerprint: str,
                        hostname: str | None = None, pid: int | None = None) -> None:
        with self._lock:
            self._taking()
            rec = self._record(name)
            client = rec.config
        try:
            self._consumers.record(name, ConsumerReport(instance, fingerprint, self._clock(),
                                                        hostname, pid),
                                   keep_for=client.consumers_seen_within)
        except (OSError, ValueError) as exc:  # a full disk, a damaged file: try again later
            log.error("consumer_report_not_kept", client=name, error=redact(str(exc)))
            raise ServiceUnavailable("cannot keep the report now") from None
        finally:
            self._consumers_read = None
        with self._lock:
            # A retirement held for this client's consumers is asked again at once (or, while
            # a job asks the gate now, again when it ends).
            if client.retire == "when_unused" and rec.open is not None \
                    and rec.open.awaiting_retirement:
                if rec.job is not None:
                    self._reported_meanwhile.add(name)
                elif rec.not_before is not None:
                    rec.not_before = None
                    self._wakeup.set()

    def _consumer_snapshot(self) -> Mapping[str, Any]:
        """The consumers' reports, read at most once per :data:`CONSUMERS_FRESH` seconds (a
        ``GET /v1/clients/{name}`` needs them); this daemon's own reports are seen at once."""
        cached = self._consumers_read
        if cached is not None and time.monotonic() - cached[0] < CONSUMERS_FRESH:
            return cached[1]
        try:
            snapshot = self._consumers.snapshot()
        except (OSError, ValueError) as exc:
            log.error("consumer_reports_unreadable", error=redact(str(exc)))
            return {}
        self._consumers_read = (time.monotonic(), snapshot)
        return snapshot

    def _with_consumers(self, state: ClientState, config: ClientConfig,
                        snapshot: Mapping[str, Any]) -> ClientState:
        if not snapshot:
            return state
        try:
            seen = self._consumers.seen(state.name, within=config.consumers_seen_within,
                                        now=self._clock(), snapshot=snapshot)
            current = self._consumers.notes(state.name, snapshot).get("current_fingerprint")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("consumer_reports_unreadable", error=redact(str(exc)))
            return state
        if not seen:
            return state
        return dataclasses.replace(state, consumers=tuple(
            ConsumerView(r.instance, r.fingerprint, r.seen_at, r.hostname, r.pid,
                         None if current is None else r.fingerprint == current)
            for r in seen))

    def readiness(self) -> Readiness:
        try:
            self._journal().latest("-")
            journal_ok = os.access(self._config.state_dir, os.W_OK)
        except Exception:  # RotatorError, or sqlite3's own from a damaged file
            journal_ok = False
        scheduler = (self._scheduler is not None and self._scheduler.is_alive()
                     and not self._stopping.is_set())
        return Readiness(config_loaded=self._prepared, journal_writable=journal_ok,
                         scheduler_running=scheduler)

    # -- scheduling --------------------------------------------------------------------------

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
                gate = self._gates.setdefault(job.idp, _IdpGate())
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

    def _throttled(self, idp: str, now: datetime) -> bool:
        until = self._gates.setdefault(idp, _IdpGate()).throttled_until
        return until is not None and until > now

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
                self._gates.setdefault(job.idp, _IdpGate()).running += 1
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

    def _queue(self, rec: ClientRecord, kind: str, actor: str, job_id: str, *,
               retire_now: bool = False) -> Job:
        job = Job(job_id, rec.config.name, rec.config.idp, kind, actor, retire_now)
        rec.job = job
        self._jobs[job.id] = job
        while len(self._jobs) > MAX_JOBS_KEPT:
            oldest = next(iter(self._jobs))
            if self._jobs[oldest].state != "done":
                break
            del self._jobs[oldest]
        return job

    # -- running -------------------------------------------------------------------------

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
            gate = self._gates.setdefault(job.idp, _IdpGate())
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
            gate = self._gates.setdefault(idp, _IdpGate())
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

    def _thread(self, fn: Callable[[], None]) -> None:
        def body() -> None:
            try:
                fn()
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=body, name="rotator-worker", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

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

    # -- facts -----------------------------------------------------------------------------

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

    def _load(self, client: ClientConfig, facts: FactsReader) -> ClientRecord:
        return load_record(self._journal(), self._config, client, facts)

    @contextlib.contextmanager
    def _facts_reader(self, config: Config | None = None) -> Iterator[FactsReader]:
        """The facts reader given, or the stores of ``config`` opened once for many clients."""
        if self._facts is not None:
            yield self._facts
            return
        with StoreFacts(config or self._config) as shared:
            yield shared

    def _journal(self) -> Journal:
        """The daemon's one journal, shared by the scheduler and every worker thread."""
        with self._lock:
            if self._shared_journal is None:
                self._shared_journal = open_journal(self._config)
            return self._shared_journal

    def close(self) -> None:
        """Close the journal (after :meth:`stop`)."""
        with self._lock:
            journal, self._shared_journal = self._shared_journal, None
        if journal is not None:
            journal.close()
        self._deferred.close()  # stopped before the deferred facts were all read

    def _record(self, name: str) -> ClientRecord:
        rec = self._records.get(name)
        if rec is None:
            raise UnknownClient(f"no client named {name!r} is configured")
        return rec

    def _taking(self) -> None:
        if self._stopping.is_set():
            raise ServiceUnavailable("the daemon is shutting down")



__all__ = ["Service", "due_clients", "history_from_journal", "policy_of",
           "success_time"]
