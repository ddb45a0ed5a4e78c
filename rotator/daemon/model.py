"""What the daemon's parts say to each other: the service the API and the CLI drive, the
observer that metrics implement, and the value types they exchange.

The scheduler and workers (:mod:`rotator.daemon.service`) implement :class:`RotationService`;
the HTTP API (:mod:`rotator.daemon.api`) only ever talks to that protocol, so it can be
tested against any implementation. Metrics (:mod:`rotator.daemon.metrics`) implement
:class:`Observer`, which the service calls as things happen; gauges are read from
:meth:`RotationService.clients` at scrape time.

No value here ever holds a secret: secrets are identified by their keyed fingerprints.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from rotator.errors import RotatorError


class Condition(enum.StrEnum):
    """One client's condition, reported the same way by the API, ``status`` and metrics."""

    READY = "ready"  # nothing to do until next_run
    DUE = "due"  # should rotate now (waits for a window opening, a worker or the IdP limit)
    ROTATING = "rotating"  # a rotation is open and being driven
    AWAITING_RETIREMENT = "awaiting_retirement"  # promoted; old secret valid until retire_after
    FAILING = "failing"  # the last attempts failed; retried at next_attempt (backoff)
    BLOCKED = "blocked"  # no retry will fix it (foreign pending secret, ...): reason says why


@dataclass(frozen=True)
class ClientState:
    """What the daemon knows about one client, kept current without a store round trip."""

    name: str
    client_id: str
    idp: str
    stores: Sequence[str]
    condition: Condition
    #: Why the client is failing or blocked (no secret in it).
    reason: str | None = None
    last_rotation_id: str | None = None
    last_rotation_state: str | None = None
    last_success_at: datetime | None = None
    #: Seconds since the current secret became current (from the journal or the store).
    age_seconds: float | None = None
    next_run: datetime | None = None
    #: Consecutive failures and when the next attempt is due (``failing``).
    failures: int = 0
    next_attempt: datetime | None = None
    retire_after: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: When the current secret expires at the IdP, if it said (Entra ID passwords).
    secret_expires_at: datetime | None = None
    #: The last report of each consumer seen within ``consumers_seen_within``
    #: (rotator.consumers): which secret (by consumer fingerprint) each one uses.
    consumers: Sequence[ConsumerView] = ()


@dataclass(frozen=True)
class ConsumerView:
    """One consumer instance's last report: its fingerprint, never the secret."""

    instance: str
    fingerprint: str
    seen_at: datetime
    hostname: str | None = None
    pid: int | None = None
    #: True when it reports the client's current secret, False when another one, None when
    #: the daemon has not fingerprinted the current secret for consumers yet.
    current: bool | None = None


@dataclass(frozen=True)
class RotationStep:
    state: str
    at: datetime


@dataclass(frozen=True)
class RotationView:
    """One rotation as the journal records it (or ``queued`` before it began)."""

    id: str
    client: str
    state: str
    family: str | None
    actor: str
    started_at: datetime | None
    updated_at: datetime | None
    retire_after: datetime | None
    error: str | None
    steps: Sequence[RotationStep] = ()


@dataclass(frozen=True)
class Trigger:
    """The answer to a trigger: the rotation that will satisfy it."""

    rotation_id: str
    client: str
    #: True when the trigger joined a rotation already queued or running.
    joined: bool


@dataclass(frozen=True)
class Readiness:
    config_loaded: bool
    journal_writable: bool
    scheduler_running: bool

    @property
    def ready(self) -> bool:
        return self.config_loaded and self.journal_writable and self.scheduler_running


class UnknownClient(RotatorError):
    """No client of that name is configured."""


class UnknownRotation(RotatorError):
    """No rotation of that id is known."""


class ServiceUnavailable(RotatorError):
    """The service takes no triggers right now (shutting down, journal unreachable)."""

    retryable = True


class RotationService(Protocol):
    """What the admin API and the CLI ask of a running daemon.

    ``actor`` names who asked (``api:<token name>``, ``cli``, ``scheduler``) and lands in the
    journal and the audit log. Methods raise ``UnknownClient``, ``UnknownRotation`` or
    ``ServiceUnavailable``; nothing else escapes.
    """

    def clients(self, *, after: str | None = None,
                limit: int | None = None) -> Sequence[ClientState]:
        """The configured clients sorted by name: every one, or those named after ``after``,
        ``limit`` at most (one page; answered from memory)."""
        ...

    def client(self, name: str) -> ClientState:
        ...

    def rotation(self, rotation_id: str) -> RotationView:
        ...

    def trigger_rotation(self, name: str, *, actor: str,
                         idempotency_key: str | None = None) -> Trigger:
        """Queue a rotation of ``name`` now, or join the one queued or running.

        The same ``idempotency_key`` within 24 h returns the first answer.
        """
        ...

    def trigger_retirement(self, name: str, *, actor: str, now: bool = False) -> Trigger:
        """Retire the old secret of ``name``'s last rotation (at once with ``now``)."""
        ...

    def verify(self, name: str, *, actor: str) -> Mapping[str, Any]:
        """Check that the stored current credential obtains a token; fingerprints only."""
        ...

    def readiness(self) -> Readiness:
        ...

    def report_consumer(self, name: str, *, instance: str, fingerprint: str,
                        hostname: str | None = None, pid: int | None = None) -> None:
        """Keep a consumer instance's report of which secret it uses (``rotator.consumers``).
        """
        ...


class Observer(Protocol):
    """Told by the service as things happen; metrics implement it. Never raises."""

    def rotation_finished(self, client: str, outcome: str, seconds: float) -> None:
        """``outcome``: rotated, retired, rolled_back, failed, interrupted, ..."""
        ...

    def idp_request(self, idp: str, outcome: str) -> None:
        """One admin API call to ``idp``; ``outcome`` is success, failure or throttled."""
        ...
