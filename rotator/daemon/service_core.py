"""What every part of the daemon's :class:`~rotator.daemon.service.Service` shares: its state
and the few helpers each part uses.

:class:`Service` is built in layers, each a class in its own module that uses only what the
layers below it define:

- ``service_core``: the state (records, jobs, IdP gates, the one journal), the lock that
  guards it, and queueing a job;
- ``service_jobs``: running a job on a worker thread and learning from how it ended;
- ``service_shared``: what a daemon does when several share one journal (triggers queued in
  it, picked up and claimed under a lease);
- ``service_scheduler``, ``service_views``, ``service_triggers``: the scheduling pass, the
  read side of the API, and the triggers;
- ``service``: start-up, reload and shutdown, and the scheduler thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from rotator.audit import AuditLog
from rotator.config import ClientConfig, Config
from rotator.consumers import ConsumerRegistry
from rotator.daemon.deferred import DeferredFacts
from rotator.daemon.leases import holder_name
from rotator.daemon.model import Observer, ServiceUnavailable, Trigger, UnknownClient
from rotator.daemon.records import ClientRecord, FactsReader, Job, StoreFacts, load_record
from rotator.daemon.workers import Clock, NullObserver, WorkerFactory, engine_worker
from rotator.engine import utcnow
from rotator.interfaces import Journal, Lease
from rotator.journal import open_journal

Spawn = Callable[[Callable[[], None]], None]
#: How long an idempotency key is remembered, and how many queued ids are mapped to the
#: engine's rotation ids (until ``Engine.rotate`` takes the id it should use).
IDEMPOTENCY_TTL = timedelta(hours=24)
MAX_JOBS_KEPT = 1000
#: Seconds before a retirement a gate held (a required hook) is tried again.
HELD_RETRY = 60.0


@dataclass
class IdpGate:
    """How many jobs of one IdP run, and until when it asked to be left alone."""

    running: int = 0
    throttled_until: datetime | None = None


class ServiceCore:
    """The daemon's state and the helpers every part of :class:`Service` uses."""

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
        self._gates: dict[str, IdpGate] = {}
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

    def _throttled(self, idp: str, now: datetime) -> bool:
        until = self._gates.setdefault(idp, IdpGate()).throttled_until
        return until is not None and until > now

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

    def _record(self, name: str) -> ClientRecord:
        rec = self._records.get(name)
        if rec is None:
            raise UnknownClient(f"no client named {name!r} is configured")
        return rec

    def _taking(self) -> None:
        if self._stopping.is_set():
            raise ServiceUnavailable("the daemon is shutting down")
