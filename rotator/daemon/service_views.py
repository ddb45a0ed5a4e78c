"""The read side of the daemon's :class:`~rotator.daemon.service.Service`: what the API shows
of clients, rotations, consumers and the daemon's readiness.

Clients are answered from memory (or, with a journal several daemons share, from the journal,
so every daemon tells the same story), with what their consumers last reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from rotator.config import ClientConfig
from rotator.consumers import ConsumerReport
from rotator.daemon import shared
from rotator.daemon.deferred import DEFERRED_WAIT
from rotator.daemon.model import (
    ClientState,
    ConsumerView,
    Readiness,
    RotationView,
    ServiceUnavailable,
    UnknownRotation,
)
from rotator.daemon.records import rotation_view
from rotator.daemon.service_shared import SharedJournal, page_of
from rotator.errors import RotationError
from rotator.secrets import redact

log = structlog.get_logger("rotator.daemon")

#: Seconds the consumers' reports read for an answer are used again (other processes may
#: write them too; this daemon forgets them when it keeps a report).
CONSUMERS_FRESH = 1.0


class Views(SharedJournal):
    """Clients' states, rotations, consumers' reports and readiness."""

    def clients(self, *, after: str | None = None,
                limit: int | None = None) -> Sequence[ClientState]:
        common = self._shared_states(None, after=after, limit=limit)
        if common is not None:
            snapshot = self._consumer_snapshot()
            return [self._with_consumers(state, config, snapshot)
                    for state, config in common]
        if not self._deferred.ready.is_set():  # start-up: every client's facts first
            self._deferred.ready.wait(DEFERRED_WAIT)
        with self._lock:
            now = self._clock()
            states = [(self._records[name].state(now), self._records[name].config)
                      for name in page_of(self._records, after, limit)]
        snapshot = self._consumer_snapshot()
        return [self._with_consumers(state, config, snapshot) for state, config in states]

    @property
    def reads_wait_on_journal(self) -> bool:
        """Whether :meth:`client` may wait on I/O (a shared journal's database, or at
        start-up a store's facts), so the API calls it in a thread, not on its event loop."""
        return self._config.journal.url is not None or not self._deferred.ready.is_set()

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
