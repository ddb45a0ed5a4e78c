"""What a daemon job runs: the engine behind the :class:`Worker` protocol, and the wrappers
that let the service watch it.

:class:`StoppableJournal` ends a job at its next recorded step once the daemon stops;
:class:`WatchedIdp` reports every admin call to the observer (metrics) and turns an IdP's
429 / ``Retry-After`` into a pause of that IdP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from rotator.audit import AuditLog
from rotator.config import Config
from rotator.daemon.model import Observer
from rotator.engine import Adapters, Engine, Outcome
from rotator.errors import RotationError, RotatorError
from rotator.interfaces import IdentityProvider, Journal, Rotation, Stage, State

Clock = Callable[[], datetime]
SHUTTING_DOWN = "the daemon is shutting down; its next start resumes this rotation"


class Worker(Protocol):
    """The engine's public methods the service drives."""

    def rotate(self, name: str, *, dry_run: bool = False, abandon_pending: bool = False,
               rotation_id: str | None = None) -> Outcome: ...

    def retire(self, name: str, *, now: bool = False) -> Outcome: ...

    def verify(self, name: str, stage: Stage = Stage.CURRENT) -> Outcome: ...


#: Builds a worker for one job: (configuration, actor, journal, IdP wrapper) -> worker.
WorkerFactory = Callable[[Config, str, Journal, Callable[[IdentityProvider], IdentityProvider]],
                         AbstractContextManager[Worker]]


class NullObserver:
    def rotation_finished(self, client: str, outcome: str, seconds: float) -> None:
        pass

    def idp_request(self, idp: str, outcome: str) -> None:
        pass


class StoppableJournal:
    """The job's journal: once the daemon stops, the next recorded step ends the job.

    The step is recorded first, so the rotation stays resumable exactly where it stopped.
    A step after which the job has nothing left to do (the rotation ended, or its new secret
    is current and the old one awaits its grace period) ends it as it is, without the error:
    the job finished. The engine notes an error on the rotation it was driving with the
    state it had before the step; after a stop that note is not recorded (the step moved
    the rotation on, and a shutdown is no error of the rotation's), where it would lose the
    journal's check-and-set and turn a stop into a failure.
    """

    def __init__(self, inner: Journal, stopping: threading.Event) -> None:
        self._inner = inner
        self._stopping = stopping
        self._stopped: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def advance(self, rotation_id: str, state: State, now: datetime, *, expected: State,
                **fields: str | None) -> Rotation:
        if rotation_id in self._stopped and state is expected and set(fields) == {"error"}:
            return self._inner.get(rotation_id)  # the engine's note of the stop: not kept
        rotation = self._inner.advance(rotation_id, state, now, expected=expected, **fields)
        if self._stopping.is_set() and rotation_id not in self._stopped \
                and not rotation.state.terminal and not _retire_later(rotation, now):
            self._stopped.add(rotation_id)
            raise RotationError(SHUTTING_DOWN)
        return rotation


def _retire_later(rotation: Rotation, now: datetime) -> bool:
    """Promoted, the old secret kept valid past ``now``: the job that promoted it is done."""
    return rotation.awaiting_retirement and rotation.retire_after is not None \
        and rotation.retire_after > now


class WatchedIdp:
    """Reports every admin call to the observer; a 429 / Retry-After pauses the IdP."""

    def __init__(self, inner: IdentityProvider, observer: Observer,
                 throttled: Callable[[str, float], None]) -> None:
        self._inner = inner
        self._observer = observer
        self._throttled = throttled

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in ("start", "close", "SETTINGS", "name") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = attr(*args, **kwargs)
            except RotatorError as exc:
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None or getattr(exc, "status", None) == 429:
                    self._observer.idp_request(self._inner.name, "throttled")
                    self._throttled(self._inner.name, float(retry_after or 60.0))
                else:
                    self._observer.idp_request(self._inner.name, "failure")
                raise
            self._observer.idp_request(self._inner.name, "success")
            return result

        return call


@contextlib.contextmanager
def engine_worker(audit: AuditLog, clock: Clock, config: Config, actor: str,
                   journal: Journal,
                   wrap: Callable[[IdentityProvider], IdentityProvider]) -> Iterator[Worker]:
    idps = {name: wrap(cfg.build()) for name, cfg in config.idps.items()}
    adapters = Adapters(config, idps=idps)
    try:
        yield Engine(config, adapters, journal, audit, actor=actor, clock=clock)
    finally:
        adapters.close()
