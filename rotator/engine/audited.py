"""The engine's records: each IdP action audited and translated, each state journaled.

A step's audit events are synced beside the journal's commit of the step
(:meth:`rotator.audit.AuditLog.durable`): both are on disk before the rotation goes on.
Two steps of an overlap rotation are recorded without a sync of their own: CREATED, which only
the verification follows, and PROMOTED, which only the grace period follows (see
:meth:`Audited._advance_unsynced`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rotator.audit import AuditLog
from rotator.config import ClientConfig, Config
from rotator.engine.adapters import Adapters
from rotator.engine.outcome import Abort, Clock
from rotator.engine.verification import HttpFactory
from rotator.errors import (
    IdpAccessDenied,
    IdpCannotRotate,
    IdpNotFound,
    RotatorError,
)
from rotator.hooks.alerts import Alerter
from rotator.hooks.runner import HookRunner
from rotator.interfaces import (
    IssuedSecret,
    Journal,
    Lease,
    RetirementGate,
    Rotation,
    RotationId,
    State,
)
from rotator.secrets import Secret


class Audited:
    """What the engine's parts share, and the audit wrapper and journal records of a step."""

    config: Config
    adapters: Adapters
    journal: Journal
    audit: AuditLog
    actor: str
    clock: Clock
    sleep: Callable[[float], None]
    http_factory: HttpFactory
    #: rotation id -> the value this process staged for it (see Engine.__init__)
    _staged: dict[RotationId, Secret]
    hooks: HookRunner
    retirement_gates: list[RetirementGate]
    alerter: Alerter | None
    #: the audit log and its key id (see _audit_key_id)
    _known_audit_key_id: tuple[AuditLog, str]

    @property
    def _fence(self) -> int | None:
        """The fencing token of the lease this engine's journal writes under (a daemon job
        with a shared journal), carried by every store write; None without a lease."""
        lease = getattr(self.journal, "lease", None)
        return lease.token if isinstance(lease, Lease) else None

    def _timed(self, event: str, action: Callable[[], Any], rotation: Rotation, *,
               client: ClientConfig, abort_if_denied: bool = False) -> Any:
        """Run one IdP action, audit it as ``event``, translate refusals."""
        step = _STEPS[event]
        started = time.monotonic()
        try:
            result = action()
        except (IdpAccessDenied, IdpNotFound, IdpCannotRotate) as exc:
            self.audit.event(event, step=step, outcome="failure",
                             error=str(exc), duration_ms=_ms(started))
            if abort_if_denied:
                # The IdP refused outright: nothing was created, so end the rotation cleanly.
                for target in client.targets:
                    self.adapters.store(target.store).discard_pending(
                        target.location, rotation.id, fence=self._fence)
                self._fail(rotation, str(exc))
                raise Abort from exc
            raise
        except RotatorError as exc:
            self.audit.event(event, step=step, outcome="failure",
                             error=str(exc), duration_ms=_ms(started))
            raise
        fields: dict[str, Any] = {}
        if isinstance(result, IssuedSecret):
            fields["new_fingerprint"] = self.audit.fingerprint(result.value)
            if result.secret_ref:
                fields["secret_ref"] = result.secret_ref
        elif isinstance(result, int):
            fields["count"] = result
        self.audit.event(event, step=step, outcome="success",
                         duration_ms=_ms(started), **fields)
        return result

    def _advance(self, rotation: Rotation, state: State, **fields: str | None) -> Rotation:
        """Record ``state``; ``JournalConflict`` if another writer moved ``rotation`` since.

        The audit events the step logged are synced meanwhile (see ``AuditLog.durable``):
        both are on disk before the rotation goes on.
        """
        return self.audit.durable(lambda: self.journal.advance(
            rotation.id, state, self.clock(), expected=rotation.state, **fields))

    def _advance_unsynced(self, rotation: Rotation, state: State,
                          **fields: str | None) -> Rotation:
        """Record ``state`` of an overlap rotation when nothing that changes anything comes
        before the next synced commit: committed without a sync, its audit events synced
        later. Two steps qualify:

        - CREATED, which only the verification's token request follows before VERIFIED is
          recorded (with a sync that covers this commit and these events);
        - PROMOTED with a grace period ahead: nothing follows until retirement, whose first
          write comes after a synced commit (ending the grace period early, a hook's run,
          or any later step of any rotation in this journal). Its events are synced when
          the command's deferred block ends, before the outcome is returned, and a journal
          closed with such a commit outstanding syncs it first.

        Crash safety is the same as with a sync of its own. The commit and the events are
        in their files when this returns, so they outlive the process (SIGKILL). A power
        loss before the next synced commit loses at most this step, and what it leaves, the
        journal one step back with the stores already where this step put them, is what a
        crash just before this commit leaves, which a resume takes up (CREATED: it recovers
        or takes back the IdP's secret; PROMOTED: the promotion is found done and recorded
        again). One sync of SQLite's write-ahead log makes every earlier commit durable. A
        journal without ``unsynced`` syncs as usual.
        """
        unsynced = getattr(self.journal, "unsynced", None)
        if unsynced is None or rotation.family != "overlap":
            return self._advance(rotation, state, **fields)
        with unsynced():
            return self.journal.advance(rotation.id, state, self.clock(),
                                        expected=rotation.state, **fields)

    def _fail(self, rotation: Rotation, reason: str) -> Rotation:
        return self._advance(rotation, State.FAILED, error=reason)

    def _audit_key_id(self) -> str:
        """Names the audit key without revealing it: 8 hex digits of HMAC(key, a constant).

        Worked out once per audit log (twice a rotation asked for it: an HMAC, and a Secret
        the redactor registers, each time)."""
        known = self.__dict__.get("_known_audit_key_id")
        if known is None or known[0] is not self.audit:
            known = (self.audit, self.audit.fingerprint(
                Secret(_AUDIT_KEY_ID_INPUT)).rpartition(":")[2][:8])
            self._known_audit_key_id = known  # two threads at once: the same answer
        return known[1]

    def _check_audit_key(self, rotation: Rotation) -> str | None:
        """Why ``rotation`` must not go on with the configured audit key, if it must not."""
        current = self._audit_key_id()
        if rotation.audit_key_id is None or rotation.audit_key_id == current:
            return None
        return (f"rotation {rotation.id} began with audit key {rotation.audit_key_id}, but the "
                f"configured audit key is {current}: its fingerprints would not match; "
                "configure the audit key it began with to finish it")


_AUDIT_KEY_ID_INPUT = "rotator-audit-key-id"


def _expiry(issued: IssuedSecret) -> str | None:
    """When the IdP said the new secret expires, for the journal (scheduling reads it)."""
    return issued.expires_at.isoformat() if issued.expires_at else None
_STEPS = {"secret_created": "create", "old_secret_retired": "retire",
          "new_secret_discarded": "rollback"}




def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

