"""The rotation driver: the commands, and the state machine that runs a rotation's steps.

The states and the two families are drawn in :mod:`rotator.engine`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from rotator.audit import AuditLog, bound
from rotator.config import ClientConfig, Config, StoreTarget
from rotator.engine.adapters import Adapters
from rotator.engine.audited import _expiry, _ms
from rotator.engine.consumer_gate import consumer_gate
from rotator.engine.outcome import Abort, Clock, Outcome, utcnow
from rotator.engine.status import client_status
from rotator.engine.steps import Steps
from rotator.engine.store_steps import _writes_current
from rotator.engine.verification import HttpFactory, default_http
from rotator.errors import (
    JournalConflict,
    RotationError,
    RotatorError,
)
from rotator.hooks.alerts import WITHOUT_BLOCKED, Alerter
from rotator.hooks.runner import HookRunner
from rotator.interfaces import (
    IdentityProvider,
    IdpCapabilities,
    Journal,
    RetirementGate,
    Rotation,
    RotationId,
    RotationTarget,
    SecretStore,
    Stage,
    State,
)
from rotator.journal import new_rotation_id
from rotator.secrets import Secret, check_secret_value, generate_secret

__all__ = ["Clock", "Engine", "Outcome", "utcnow"]

log = structlog.get_logger("rotator.engine")

class Engine(Steps):
    """Runs rotations, retirements and verifications for configured clients.

    Each command takes the acting identity (``cli``, ``scheduler``, ``api:<token name>``)
    as ``actor``; the ``actor`` given to the constructor is only the default for a call
    that names none. An engine may be used from several threads at once.
    """

    def __init__(
        self,
        config: Config,
        adapters: Adapters,
        journal: Journal,
        audit: AuditLog,
        *,
        actor: str = "cli",
        clock: Clock = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        http_factory: HttpFactory = default_http,
    ) -> None:
        self.config = config
        self.adapters = adapters
        self.journal = journal
        self.audit = audit
        self.actor = actor
        self.clock = clock
        self.sleep = sleep
        self.http_factory = http_factory
        # rotation id -> the value this process staged for it, so that verifying it in the
        # same run needs no second read; a resumed rotation reads the store instead.
        self._staged: dict[RotationId, Secret] = {}
        self._verifying = {}
        self._caps_seen = {}
        # Hooks after promote and retire (rotator.hooks); retirement waits while a gate holds.
        self.hooks = HookRunner(config.clients, journal, audit, clock=clock, sleep=sleep)
        self.retirement_gates: list[RetirementGate] = [self.hooks]
        self.alerter = (Alerter(config.alerts, config.state_dir, audit, clock=clock)
                        if config.alerts is not None else None)
        # retire = "when_unused": wait for the consumers' reports (rotator.consumers).
        self.retirement_gates.append(consumer_gate(self))

    # -- public commands -------------------------------------------------------------------

    def rotate(self, name: str, *, dry_run: bool = False, abandon_pending: bool = False,
               actor: str | None = None, rotation_id: RotationId | None = None,
               requested_at: datetime | None = None, wait: float = 0.0,
               force: bool = False) -> Outcome:
        """Rotate ``name`` now, first finishing any rotation a crash left behind.

        The request was made at ``requested_at`` (default: now). Waits up to ``wait``
        seconds while another process rotates ``name`` (then raises ``RotationLocked``). A
        rotation of ``name`` that began after the request answers it, so
        back-to-back triggers rotate once; ``force`` rotates again anyway. A new rotation
        gets ``rotation_id`` if given (so a caller can name it before it begins); a resumed
        one keeps its own, which the outcome reports.
        """
        client = self.config.clients[name]
        requested = requested_at or self.clock()
        actor = actor or self.actor
        with bound(client=name, idp=client.idp, actor=actor):
            # Tests wait for this line: the request time is fixed before the lock is awaited.
            log.debug("rotation_requested", requested_at=requested.isoformat(), wait=wait)
            with self.journal.lock(name, wait=wait), self.audit.deferred():
                return self._rotate_locked(client, requested, dry_run=dry_run,
                                           abandon_pending=abandon_pending, force=force,
                                           actor=actor, rotation_id=rotation_id)

    def _rotate_locked(self, client: ClientConfig, requested: datetime, *, dry_run: bool,
                       abandon_pending: bool, force: bool, actor: str,
                       rotation_id: RotationId | None) -> Outcome:
        name = client.name
        try:
            if not force:
                answer = self._answered_since(name, requested)
                if answer is not None:
                    return answer
            open_rotation = self.journal.open_rotation(name)
            if open_rotation is not None:
                if not open_rotation.awaiting_retirement:
                    if dry_run:
                        return Outcome(name, True, "planned",
                                       f"would resume rotation {open_rotation.id} from "
                                       f"{open_rotation.state}", open_rotation.id,
                                       open_rotation.state.value)
                    return self._drive(client, open_rotation, resumed=True)
                if not self._retirement_due(open_rotation):
                    assert open_rotation.retire_after is not None
                    return Outcome(
                        name, False, "waiting",
                        f"rotation {open_rotation.id} keeps the old secret valid until "
                        f"{open_rotation.retire_after.isoformat(timespec='seconds')}; "
                        f"run 'rotator retire {name} --now' to end its grace period first",
                        open_rotation.id, open_rotation.state.value)
                if dry_run:
                    return Outcome(name, True, "planned",
                                   f"would retire the old secret of {open_rotation.id}, "
                                   "then rotate", open_rotation.id,
                                   open_rotation.state.value)
                retired = self._drive(client, open_rotation, resumed=True)
                if not retired.ok or retired.action == "held":
                    return retired
            return self._start(client, dry_run=dry_run, abandon_pending=abandon_pending,
                               actor=actor, rotation_id=rotation_id)
        except RotatorError as exc:
            log.debug("rotation_failed", exc_info=True)
            return Outcome(name, False, "failed", str(exc))

    def _answered_since(self, name: str, requested: datetime) -> Outcome | None:
        """The outcome of a rotation of ``name`` that began after ``requested``, if any.

        An unfinished one (its process died) is not an answer: the caller resumes it.
        """
        latest = self.journal.latest(name)
        if latest is None or latest.started_at <= requested:
            return None
        if not latest.state.terminal and not latest.awaiting_retirement:
            return None
        at = latest.updated_at.isoformat(timespec="seconds")
        if latest.state in (State.PROMOTED, State.COMPLETED):
            return Outcome(name, True, "rotated_by_other",
                           f"rotated by another process at {at} after this request; "
                           "--force rotates again", latest.id, latest.state.value)
        return Outcome(name, False, "failed",
                       f"a rotation by another process after this request ended "
                       f"{latest.state} at {at}: {latest.error or 'no reason recorded'}; "
                       "--force tries again", latest.id, latest.state.value)

    def retire(self, name: str, *, now: bool = False, actor: str | None = None) -> Outcome:
        """Retire the old secret of ``name``'s last rotation once its grace period is over."""
        client = self.config.clients[name]
        with bound(client=name, idp=client.idp, actor=actor or self.actor), \
                self.journal.lock(name), self.audit.deferred():
            rotation = self.journal.open_rotation(name)
            if rotation is None:
                return Outcome(name, True, "nothing", "no rotation awaits retirement")
            if not rotation.awaiting_retirement:
                return self._drive(client, rotation, resumed=True)
            if now:
                rotation = self._advance(rotation, State.PROMOTED,
                                         retire_after=self.clock().isoformat())
            if not self._retirement_due(rotation):
                assert rotation.retire_after is not None
                return Outcome(name, True, "waiting",
                               f"old secret stays valid until "
                               f"{rotation.retire_after.isoformat(timespec='seconds')}",
                               rotation.id, rotation.state.value)
            # Asked by a person (CLI, API): a hook that failed is tried again now rather than
            # at its next retry time; the scheduler keeps to the hooks' backoff.
            with self.audit.immediate():
                self.hooks.run_due(client, rotation,
                                   force=(actor or self.actor) != "scheduler")
            try:
                return self._drive(client, rotation, resumed=True)
            except RotatorError as exc:
                return Outcome(name, False, "failed", str(exc), rotation.id)

    def verify(self, name: str, stage: Stage = Stage.CURRENT, *,
               actor: str | None = None) -> Outcome:
        """Check that the credential stored in every store of ``name`` obtains a token."""
        client = self.config.clients[name]
        results: dict[str, Any] = {}
        ok = True
        with bound(client=name, idp=client.idp, actor=actor or self.actor):
            for target in client.targets:
                key = f"{target.store}:{target.location}"
                started = time.monotonic()
                try:
                    stored = self.adapters.store(target.store).read(target.location, stage)
                    if stored is None:
                        raise RotationError(f"no {stage} credential stored")
                    token = self._request_token(client, stored.credentials)
                    results[key] = {"ok": True, "scopes": sorted(token.scopes),
                                    "scopes_assumed": token.scopes_assumed,
                                    "expires_in": token.expires_in,
                                    "fingerprint": self.audit.fingerprint(
                                        stored.credentials.client_secret)}
                    outcome = "success"
                except RotatorError as exc:
                    log.debug("verification_failed", store=target.store, exc_info=True)
                    ok = False
                    results[key] = {"ok": False, "error": str(exc)}
                    outcome = "failure"
                self.audit.event("credential_verified", store=target.store, step="verify",
                                 stage=stage.value, outcome=outcome,
                                 duration_ms=_ms(started), **(
                                     {"error": results[key]["error"]}
                                     if outcome == "failure" else {}))
        message = ("the stored credential obtains a token" if ok else
                   "; ".join(f"{k}: {v['error']}" for k, v in results.items() if not v["ok"]))
        if ok and any(v.get("scopes_assumed") for v in results.values()):
            message += (" (the IdP did not say which scopes it granted: the required scopes "
                        "are assumed granted)")
        return Outcome(name, ok, "verified" if ok else "failed", message, details=results)

    def status(self, name: str) -> dict[str, Any]:
        """What rotator knows about ``name``: stores, IdP, last rotation, age, state.

        Reads the stores and asks the IdP's token endpoint whether it answers; needs no
        audit key and no IdP admin secret. ``error`` is true for the states in
        :data:`STATUS_ERRORS`.
        """
        return client_status(self.config.clients[name], now=self.clock(),
                             adapters=self.adapters, journal=self.journal,
                             http_factory=self.http_factory)

    # -- starting ------------------------------------------------------------------------

    def _start(self, client: ClientConfig, *, dry_run: bool, abandon_pending: bool,
               actor: str, rotation_id: RotationId | None) -> Outcome:
        problem = check_secret_value(client.client_id)
        if problem:
            raise RotationError(f"client {client.name}: its client id {problem}, so it cannot "
                                "be stored safely")
        idp = self.adapters.idp(client.idp)
        primary = self.adapters.store(client.primary.store)

        # An overlap IdP that generates the value is asked before any store is written, and
        # a stage refused afterwards (read-only, a foreign pending credential) takes the new
        # secret back, so the stores need no look ahead. Otherwise a refused write could not
        # be undone: find it first. A store that writes a single-secret rotation's value as
        # CURRENT at once needs no pending check.
        def looks_ahead(caps: IdpCapabilities) -> bool:
            return dry_run or not caps.overlap or caps.caller_sets_value

        def pending_check(store: SecretStore, caps: IdpCapabilities) -> bool:
            return looks_ahead(caps) and (dry_run or caps.overlap or not _writes_current(store))

        caps, current, primary_facts = self._asked_and_read(
            client, idp, primary, lambda caps: pending_check(primary, caps))
        ahead = looks_ahead(caps)
        if current is None:
            raise RotationError(
                f"no current credential for {client.name} in store "
                f"{client.primary.store!r} at {client.primary.location!r}; store the client's "
                "present secret there first"
            )
        if current.credentials.client_id != client.client_id:
            raise RotationError(
                f"store {client.primary.store!r} holds client id "
                f"{current.credentials.client_id!r} at {client.primary.location!r}, but the "
                f"configuration says {client.client_id!r}"
            )
        for target in client.targets:
            store = self.adapters.store(target.store)
            if not ahead:
                continue
            store.check_writable(target.location)
            if not pending_check(store, caps):
                continue
            facts = (primary_facts if target == client.primary and primary_facts is not None
                     else store.facts(target.location))
            if facts.has_pending and not abandon_pending:
                raise RotationError(
                    f"store {target.store!r} holds a pending secret at {target.location!r} "
                    f"from rotation {facts.pending_rotation_id or '(not rotator)'} that "
                    "rotator's journal does not know; pass --abandon-pending to discard it"
                )
        family = "overlap" if caps.overlap else "single"
        if dry_run:
            return Outcome(client.name, True, "planned", _plan(caps), details={
                "family": family, "caller_sets_value": caps.caller_sets_value,
                "grace_period_seconds": client.grace_period if caps.overlap else 0})
        # Where the IdP makes the value, the first step only records that it is asked
        # (CREATING): begun and moved on in one commit, as the STARTED step would.
        rotation = self.audit.durable(lambda: self.journal.begin(
            rotation_id or new_rotation_id(), client.name, family, actor,
            self.audit.fingerprint(current.credentials.client_secret), self.clock(),
            targets=[RotationTarget(t.store, t.location) for t in client.targets],
            audit_key_id=self._audit_key_id(),
            then=None if caps.caller_sets_value else State.CREATING,
        ))
        self.audit.event("rotation_started", rotation_id=rotation.id, step="start",
                         outcome="success", family=family,
                         old_fingerprint=rotation.old_fingerprint,
                         stores=[t.store for t in client.targets])
        return self._drive(client, rotation, resumed=False, abandon_pending=abandon_pending,
                           caps=caps)

    # -- driving -------------------------------------------------------------------------

    def _drive(self, client: ClientConfig, rotation: Rotation, *, resumed: bool,
               abandon_pending: bool = False, caps: IdpCapabilities | None = None) -> Outcome:
        """Run ``rotation``'s steps; ``caps`` are the IdP's answer when it began, if asked."""
        started = time.monotonic()
        began_at = rotation.state
        with bound(rotation_id=rotation.id):
            refusal = self._check_audit_key(rotation)
            if refusal is not None:
                return Outcome(client.name, False, "refused", refusal, rotation.id,
                               rotation.state.value)
            if rotation.targets:
                # The stores recorded when the rotation began, even if the config changed since.
                client = replace(client, targets=tuple(
                    StoreTarget(t.store, t.location) for t in rotation.targets))
            if resumed:
                self.audit.event("rotation_resumed", step=rotation.state.value,
                                 outcome="success", family=rotation.family)
            idp = self.adapters.idp(client.idp)
            try:
                # Asked once per rotation: the family it follows is in the journal already.
                # A refusal here is recorded on the rotation like any step's, so status
                # shows why a resumed rotation cannot go on (an RFC 7592 token lost in a
                # crash, say).
                caps = caps or idp.capabilities(client.client_id)
                while not rotation.state.terminal:
                    before = rotation.state
                    rotation = self._step(client, idp, caps, rotation, resumed=resumed,
                                          abandon_pending=abandon_pending)
                    resumed = False
                    if rotation.state is before:
                        break  # waiting for the grace period
            except Abort:
                rotation = self.journal.get(rotation.id)
            except JournalConflict as exc:
                # Another writer moved the rotation: this one records nothing more.
                self.audit.event("rotation_interrupted", step=rotation.state.value,
                                 outcome="failure", error=str(exc), duration_ms=_ms(started))
                return Outcome(client.name, False, "conflict", str(exc), rotation.id,
                               rotation.state.value)
            except RotatorError as exc:
                self._advance(rotation, rotation.state, error=str(exc))
                self.audit.event("rotation_interrupted", step=rotation.state.value,
                                 outcome="failure", error=str(exc),
                                 duration_ms=_ms(started))
                log.debug("rotation_interrupted", exc_info=True)
                return Outcome(
                    client.name, False, "interrupted",
                    f"rotation {rotation.id} stopped at {rotation.state}: {exc}; the stored "
                    "current secret still works and the next run resumes it",
                    rotation.id, rotation.state.value)
            finally:
                self._staged.pop(rotation.id, None)
                # not waited for when an interrupt (Ctrl-C) is on its way out
                self._drop_verification(rotation.id,
                                        wait=isinstance(sys.exc_info()[1], Exception | None))
            if self.hooks.any_for(client, rotation):  # their events synced before they act
                with self.audit.immediate():
                    self.hooks.run_due(client, rotation)
        return self._finish(client, rotation, started, began_at)

    def _finish(self, client: ClientConfig, rotation: Rotation, started: float,
                began_at: State) -> Outcome:
        state = rotation.state
        if state is State.COMPLETED and began_at is State.PROMOTED:
            ok, action, message = True, "retired", "old secret retired; the new one is current"
        elif state is State.COMPLETED:
            ok, action, message = True, "rotated", "new secret verified and current; old " \
                                                   "secret retired"
        elif state is State.PROMOTED:
            assert rotation.retire_after is not None
            ok, action = True, "rotated"
            message = ("new secret verified and current; old secret stays valid until "
                       f"{rotation.retire_after.isoformat(timespec='seconds')}")
            held = self._retirement_held(client, rotation) \
                if self._retirement_due(rotation) else None
            if held is not None:
                action = "held" if began_at is State.PROMOTED else action
                message = f"new secret verified and current; {held}"
        elif state is State.ROLLED_BACK:
            ok, action = False, "rolled_back"
            message = (f"the new secret was discarded; the old secret is still current: "
                       f"{rotation.error}")
        else:
            ok, action, message = False, "failed", rotation.error or "rotation failed"
        with bound(rotation_id=rotation.id):
            self.audit.event(f"rotation_{state}", step=state.value,
                             outcome="success" if ok else "failure",
                             duration_ms=_ms(started),
                             **({"error": rotation.error} if rotation.error and not ok else {}))
        if self.alerter is not None:  # what the daemon cannot see (a CLI run) is sent too
            with self.audit.immediate():
                self.alerter.check({client.name: client}, self.journal,
                                   judged=WITHOUT_BLOCKED)
        return Outcome(client.name, ok, action, message, rotation.id, state.value)

    def _step(self, client: ClientConfig, idp: IdentityProvider, caps: IdpCapabilities,
              rotation: Rotation, *, resumed: bool, abandon_pending: bool) -> Rotation:
        state = rotation.state
        # The family recorded when the rotation began decides, even if the IdP changed since.
        overlap = rotation.family == "overlap"
        if state is State.STARTED:
            if caps.caller_sets_value:
                value = generate_secret()
                self._stage_all(client, rotation, value, abandon_pending)
                return self._advance(rotation, State.STAGED,
                                     new_fingerprint=self.audit.fingerprint(value))
            return self._advance(rotation, State.CREATING)
        if state is State.STAGED:
            pending = self._pending_of(client, rotation)
            if pending is None:  # pragma: no cover - the store lost its pending value
                return self._fail(rotation, "the pending secret vanished from the store")
            issued = self._timed("secret_created", lambda: idp.create_secret(
                client.client_id, rotation.id, pending), rotation, abort_if_denied=True,
                client=client)
            return self._advance_unsynced(rotation, State.CREATED,
                                          secret_ref=issued.secret_ref,
                                          expires_at=_expiry(issued))
        if state is State.CREATING:
            return self._create_generated(client, idp, caps, rotation, resumed=resumed,
                                          abandon_pending=abandon_pending)
        if state is State.CREATED:
            if overlap:
                return self._verify_step(client, caps, rotation, next_state=State.VERIFIED)
            self._promote_all(client, rotation)
            return self._advance(rotation, State.PROMOTED, retire_after=self.clock().isoformat())
        if state is State.VERIFIED:
            if overlap:
                self._promote_all(client, rotation)
                now = self.clock()
                retire = now + timedelta(seconds=client.min_grace
                                         if client.retire == "when_unused"
                                         else client.grace_period)
                if retire > now:  # nothing follows before the grace period ends
                    return self._advance_unsynced(rotation, State.PROMOTED,
                                                  retire_after=retire.isoformat())
                return self._advance(rotation, State.PROMOTED, retire_after=retire.isoformat())
            return self._advance(rotation, State.COMPLETED)
        if state is State.PROMOTED:
            if not overlap:
                return self._verify_step(client, caps, rotation, next_state=State.VERIFIED,
                                         single=True)
            if not self._retirement_due(rotation):
                return rotation
            with self.audit.immediate():  # promoted hooks run before retirement
                self.hooks.run_due(client, rotation)
            if self._retirement_held(client, rotation) is not None:
                return rotation
            return self._retire(client, idp, caps, rotation)
        if state is State.ROLLING_BACK:
            return self._rollback(client, idp, rotation)
        raise AssertionError(f"no step for {state}")  # pragma: no cover


def _plan(caps: IdpCapabilities) -> str:
    if caps.overlap:
        create = ("generate a secret, stage it, set it at the IdP" if caps.caller_sets_value
                  else "ask the IdP for a new secret, stage it")
        return f"{create}, verify it, promote it, retire the old one after the grace period"
    if caps.caller_sets_value:
        return ("generate a secret, stage it, set it at the IdP (the old one stops working), "
                "promote it at once, then verify it with retries")
    return ("ask the IdP for a new secret (the old one stops working), store and promote it "
            "at once, then verify it with retries")

