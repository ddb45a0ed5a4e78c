"""A test double of the daemon's internal seam, :class:`rotator.daemon.model.RotationService`.

``InMemoryRotationService`` is not the real service (that is :mod:`rotator.daemon.service`):
it keeps client states and rotations in dictionaries so the admin API and metrics can be
tested against the protocol alone. It follows the protocol's documented rules: sorted
clients, a trigger joins a rotation already running, an idempotency key repeated within
24 h returns the first answer, and only ``UnknownClient``, ``UnknownRotation`` and
``ServiceUnavailable`` escape. It records every call so tests can see what was passed through.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from rotator.daemon.model import (
    ClientState,
    Condition,
    ConsumerView,
    Readiness,
    RotationStep,
    RotationView,
    ServiceUnavailable,
    Trigger,
    UnknownClient,
    UnknownRotation,
)
from rotator.daemon.service_shared import page_of
from rotator.secrets import Secret

IDEMPOTENCY_WINDOW = timedelta(hours=24)


@dataclass
class Call:
    method: str
    name: str
    actor: str
    options: dict[str, Any] = field(default_factory=dict)


class InMemoryRotationService:
    """An in-memory RotationService for tests (a test double, not the real scheduler)."""

    def __init__(self, clients: Sequence[ClientState] = (), *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clients = {c.name: c for c in clients}
        self._rotations: dict[str, RotationView] = {}
        self._keys: dict[tuple[str, str], tuple[datetime, Trigger]] = {}
        self._ids = itertools.count(1)
        self._clock = clock
        self.calls: list[Call] = []
        self.unavailable = False
        self.ready = Readiness(True, True, True)
        #: What ``verify`` reports per client (fingerprints; tests may plant a Secret here).
        self.verification: dict[str, Mapping[str, Any]] = {}
        #: Raised by every method when set (a service that breaks its contract).
        self.crash: Exception | None = None

    # -- what tests arrange
    def add_rotation(self, view: RotationView) -> None:
        self._rotations[view.id] = view

    def set_condition(self, name: str, condition: Condition, **changes: Any) -> None:
        self._clients[name] = replace(self._clients[name], condition=condition, **changes)

    # -- the protocol
    def _check(self, name: str | None = None) -> ClientState | None:
        if self.crash is not None:
            raise self.crash
        if name is None:
            return None
        client = self._clients.get(name)
        if client is None:
            raise UnknownClient(f"no client named {name!r} is configured")
        return client

    def clients(self, *, after: str | None = None,
                limit: int | None = None) -> Sequence[ClientState]:
        self._check()
        return [self._clients[n] for n in page_of(self._clients, after, limit)]

    def client(self, name: str) -> ClientState:
        client = self._check(name)
        assert client is not None
        return client

    def rotation(self, rotation_id: str) -> RotationView:
        self._check()
        view = self._rotations.get(rotation_id)
        if view is None:
            raise UnknownRotation(f"no rotation {rotation_id!r}")
        return view

    def trigger_rotation(self, name: str, *, actor: str,
                         idempotency_key: str | None = None) -> Trigger:
        client = self._check(name)
        assert client is not None
        self.calls.append(Call("trigger_rotation", name, actor,
                               {"idempotency_key": idempotency_key}))
        if self.unavailable:
            raise ServiceUnavailable("the service is shutting down")
        now = self._clock()
        if idempotency_key is not None:
            seen = self._keys.get((name, idempotency_key))
            if seen is not None and now - seen[0] < IDEMPOTENCY_WINDOW:
                return seen[1]
        if client.condition is Condition.ROTATING and client.last_rotation_id:
            trigger = Trigger(client.last_rotation_id, name, joined=True)
        else:
            rotation_id = f"rot-{next(self._ids):04d}"
            self._rotations[rotation_id] = RotationView(
                id=rotation_id, client=name, state="queued", family=None, actor=actor,
                started_at=None, updated_at=now, retire_after=None, error=None,
                steps=[RotationStep("queued", now)])
            self._clients[name] = replace(client, condition=Condition.ROTATING,
                                          last_rotation_id=rotation_id,
                                          last_rotation_state="queued")
            trigger = Trigger(rotation_id, name, joined=False)
        if idempotency_key is not None:
            self._keys[(name, idempotency_key)] = (now, trigger)
        return trigger

    def trigger_retirement(self, name: str, *, actor: str, now: bool = False) -> Trigger:
        client = self._check(name)
        assert client is not None
        self.calls.append(Call("trigger_retirement", name, actor, {"now": now}))
        if self.unavailable:
            raise ServiceUnavailable("the service is shutting down")
        return Trigger(client.last_rotation_id or "rot-none", name, joined=True)

    def verify(self, name: str, *, actor: str) -> Mapping[str, Any]:
        self._check(name)
        self.calls.append(Call("verify", name, actor))
        if self.unavailable:
            raise ServiceUnavailable("the service is shutting down")
        return self.verification.get(name, {"ok": True})

    def readiness(self) -> Readiness:
        self._check()
        return self.ready

    def report_consumer(self, name: str, *, instance: str, fingerprint: str,
                        hostname: str | None = None, pid: int | None = None) -> None:
        client = self._check(name)
        assert client is not None
        self.calls.append(Call("report_consumer", name, "consumer",
                               {"instance": instance, "fingerprint": fingerprint}))
        if self.unavailable:
            raise ServiceUnavailable("the service is shutting down")
        view = ConsumerView(instance, fingerprint, self._clock(), hostname, pid)
        kept = [c for c in client.consumers if c.instance != instance]
        self._clients[name] = replace(client, consumers=(*kept, view))


def sample_clients(count: int, *, fingerprint: str, secret: Secret | None = None,
                   now: datetime | None = None) -> list[ClientState]:
    """``count`` clients in every condition, carrying ``fingerprint`` (and ``secret``)."""
    now = now or datetime.now(UTC)
    conditions = list(Condition)
    out = []
    for i in range(count):
        condition = conditions[i % len(conditions)]
        extra: dict[str, Any] = {"current_fingerprint": fingerprint}
        if secret is not None:
            extra["leaked"] = secret  # a service that forgot to strip a Secret
        out.append(ClientState(
            name=f"client-{i:03d}", client_id=f"app-{i}", idp="kc", stores=["vault", "env"],
            condition=condition,
            reason="foreign pending secret" if condition is Condition.BLOCKED else None,
            last_rotation_id=f"done-{i}", last_rotation_state="completed",
            last_success_at=now - timedelta(days=i), age_seconds=86400.0 * i,
            next_run=now + timedelta(days=30 - i % 30),
            failures=2 if condition is Condition.FAILING else 0,
            next_attempt=now + timedelta(minutes=5) if condition is Condition.FAILING else None,
            extra=extra,
        ))
    return out
