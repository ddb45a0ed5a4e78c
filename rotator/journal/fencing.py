"""A journal whose writes carry a lease's fencing token (:meth:`Journal.fenced`), and the
check every secret store makes on a write that carries one (:func:`refuse_stale`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol, cast

import structlog

from rotator.errors import FencedOut, LeaseLost
from rotator.interfaces import (
    AuditCheckpoint,
    HookRun,
    Lease,
    Rotation,
    RotationId,
    RotationTarget,
    State,
    Step,
)

log = structlog.get_logger("rotator.daemon")


def recorded_fence(value: object) -> int | None:
    """The fence a store recorded, from the text it holds (None: none, or not a number).

    A record that is not a plain non-negative number (someone edited it) counts as none: the
    next fenced write replaces it.
    """
    text = str(value) if value is not None else ""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def refuse_stale(where: str, recorded: int | None, fence: int | None) -> int | None:
    """Check a write carrying ``fence`` at a location that recorded ``recorded``.

    Raises ``FencedOut`` when the write's fence is older; returns the fence to record with
    the write (the higher of the two), or None when neither exists. ``where`` names the
    location and where its record is kept, for the message.
    """
    if fence is not None and recorded is not None and fence < recorded:
        raise FencedOut(
            f"{where} was written under fencing token {recorded}, and this write carries "
            f"token {fence}: another daemon took this client's lease over, so this one "
            "writes nothing more (if the journal's database was replaced, remove that "
            "record once no old daemon runs)")
    if fence is None:
        return recorded
    return fence if recorded is None else max(fence, recorded)


class _FenceableJournal(Protocol):
    """What a journal implementation offers :class:`FencedJournal`: writes taking a fence."""

    def _begin(self, rotation_id: RotationId, client: str, family: str, actor: str,
               old_fingerprint: str | None, now: datetime, targets: Sequence[RotationTarget],
               audit_key_id: str | None, fence: Lease | None,
               then: State | None = None) -> Rotation: ...

    def _advance(self, rotation_id: RotationId, state: State, now: datetime,
                 expected: State, fence: Lease | None, fields: dict[str, str | None]
                 ) -> Rotation: ...

    def get(self, rotation_id: RotationId) -> Rotation: ...
    def open_rotation(self, client: str) -> Rotation | None: ...
    def latest(self, client: str) -> Rotation | None: ...
    def last_success(self, client: str) -> Rotation | None: ...
    def steps(self, rotation_id: RotationId) -> list[Step]: ...
    def lock(self, client: str, *, wait: float = 0.0) -> AbstractContextManager[None]: ...
    def acquire_lease(self, client: str, holder: str, ttl: float) -> Lease | None: ...
    def renew_lease(self, lease: Lease, ttl: float) -> Lease: ...
    def release_lease(self, lease: Lease) -> None: ...
    def record_hook_run(self, run: HookRun) -> None: ...
    def hook_runs(self, rotation_id: RotationId) -> list[HookRun]: ...
    def unfinished_hook_runs(self) -> list[HookRun]: ...
    def record_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None: ...
    def audit_checkpoints(self, log: str, key_id: str) -> list[AuditCheckpoint]: ...


class FencedJournal:
    """``inner`` with every write carrying ``lease`` (a Journal itself).

    The first write or renewal refused because a newer holder took the lease logs
    ``lease_lost`` (once, whichever comes first: the job's write or the renewal thread's),
    and :attr:`lost` stays true.
    """

    def __init__(self, inner: _FenceableJournal, lease: Lease) -> None:
        self._inner = inner
        self.lease = lease
        self.lost = False
        self._noted = threading.Lock()

    def note_lost(self, lease: Lease) -> None:
        """Record that ``lease`` was taken over; logs ``lease_lost`` the first time."""
        with self._noted:
            if self.lost:
                return
            self.lost = True
        log.warning("lease_lost", client=lease.client, token=lease.token)

    def begin(self, rotation_id: RotationId, client: str, family: str, actor: str,
              old_fingerprint: str | None, now: datetime, *,
              targets: Sequence[RotationTarget] = (),
              audit_key_id: str | None = None, then: State | None = None) -> Rotation:
        lease = self.lease
        try:
            return self._inner._begin(rotation_id, client, family, actor, old_fingerprint,
                                      now, targets, audit_key_id, lease, then)
        except LeaseLost:
            self.note_lost(lease)
            raise

    def advance(self, rotation_id: RotationId, state: State, now: datetime, *,
                expected: State, **fields: str | None) -> Rotation:
        lease = self.lease
        try:
            return self._inner._advance(rotation_id, state, now, expected, lease, fields)
        except LeaseLost:
            self.note_lost(lease)
            raise

    def get(self, rotation_id: RotationId) -> Rotation:
        return self._inner.get(rotation_id)

    def open_rotation(self, client: str) -> Rotation | None:
        return self._inner.open_rotation(client)

    def latest(self, client: str) -> Rotation | None:
        return self._inner.latest(client)

    def last_success(self, client: str) -> Rotation | None:
        return self._inner.last_success(client)

    def steps(self, rotation_id: RotationId) -> list[Step]:
        return self._inner.steps(rotation_id)

    def lock(self, client: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        # The lease excludes other daemons; a journal that can, only checks that no CLI
        # holds the client (PostgresJournal.probe_lock), so a frozen holder blocks nobody.
        probe = getattr(self._inner, "probe_lock", None)
        if probe is not None:
            return cast(AbstractContextManager[None], probe(client))
        return self._inner.lock(client, wait=wait)

    # Hook runs and audit checkpoints are not fenced: a hook run records what a hook did
    # (once per rotation and stage, an upsert), and a checkpoint what a log holds; neither
    # moves a rotation, so a stale holder writing one cannot undo a newer holder's work.
    def record_hook_run(self, run: HookRun) -> None:
        self._inner.record_hook_run(run)

    def hook_runs(self, rotation_id: RotationId) -> list[HookRun]:
        return self._inner.hook_runs(rotation_id)

    def unfinished_hook_runs(self) -> list[HookRun]:
        return self._inner.unfinished_hook_runs()

    def record_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        self._inner.record_audit_checkpoint(checkpoint)

    def audit_checkpoints(self, log: str, key_id: str) -> list[AuditCheckpoint]:
        return self._inner.audit_checkpoints(log, key_id)

    def acquire_lease(self, client: str, holder: str, ttl: float) -> Lease | None:
        return self._inner.acquire_lease(client, holder, ttl)

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        try:
            renewed = self._inner.renew_lease(lease, ttl)
        except LeaseLost:
            if lease.token == self.lease.token and lease.client == self.lease.client:
                self.note_lost(lease)
            raise
        if lease.token == self.lease.token and lease.client == self.lease.client:
            self.lease = renewed
        return renewed

    def release_lease(self, lease: Lease) -> None:
        self._inner.release_lease(lease)

    def fenced(self, lease: Lease) -> FencedJournal:
        return FencedJournal(self._inner, lease)

    def close(self) -> None:
        """Closes nothing: the inner journal belongs to whoever opened it."""
