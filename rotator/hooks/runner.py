"""Running a client's hooks once per rotation and stage, recorded in the journal.

A hook never undoes a verified rotation: its failure is recorded, audited
(``hook_failed``), retried with backoff and alerted (``hook_failed`` condition in
:mod:`rotator.hooks.alerts`). Before each attempt the run is recorded as ``running`` and
after it as ``succeeded`` or ``failed``, so a hook that succeeded is never run again for the
same rotation, even by another process after a crash. A process killed *during* an attempt
leaves ``running`` behind and the next run tries again: hooks are at least once, and
receivers deduplicate on ``event_id`` (stable across attempts).

:class:`HookRunner` is also a :class:`~rotator.interfaces.RetirementGate`: a hook marked
``required`` holds the old secret's retirement until its ``promoted`` run succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from rotator.audit import AuditLog, bound
from rotator.errors import RotationLocked, RotatorError
from rotator.hooks.config import STAGES, HookConfig
from rotator.hooks.kinds import RUNNERS, Event, HookFailed
from rotator.interfaces import HookRun, Journal, RetirementGate, Rotation, State

log = structlog.get_logger("rotator.hooks")

#: The longest pause between two rounds of retries of a failing hook.
MAX_RETRY_DELAY = 3600.0
#: The first pause between two rounds; it doubles each round.
FIRST_RETRY_DELAY = 60.0
Runner = Callable[[HookConfig, Event], None]


class HookRunner:
    """Runs the hooks of ``clients`` (name -> a ``ClientConfig`` with ``hooks``)."""

    def __init__(self, clients: Mapping[str, Any], journal: Journal, audit: AuditLog, *,
                 clock: Callable[[], datetime], sleep: Callable[[float], None] = time.sleep,
                 runners: Mapping[str, Runner] = RUNNERS) -> None:
        self.clients = clients
        self.journal = journal
        self.audit = audit
        self.clock = clock
        self.sleep = sleep
        self.runners = runners

    @staticmethod
    def hooks_of(client: Any, stage: str) -> list[HookConfig]:
        return [h for h in getattr(client, "hooks", ()) if stage in h.on]

    # -- the engine's calls ----------------------------------------------------------------

    def any_for(self, client: Any, rotation: Rotation) -> bool:
        """Whether ``client`` has hooks for a stage ``rotation`` reached (run or not)."""
        return any(self.hooks_of(client, stage) for stage in self._stages(rotation))

    def run_due(self, client: Any, rotation: Rotation, *, force: bool = False) -> None:
        """Run every hook of the stages ``rotation`` reached that has not succeeded yet.

        A hook that failed waits until its ``next_attempt_at`` unless ``force``. Never
        raises: a hook cannot undo a rotation, and a journal error is logged.
        """
        if not self.any_for(client, rotation):
            return  # no journal read for the many clients without hooks
        stages = self._stages(rotation)
        try:
            runs = {(r.stage, r.hook): r for r in self.journal.hook_runs(rotation.id)}
            for stage in stages:
                for hook in self.hooks_of(client, stage):
                    run = runs.get((stage, hook.name))
                    if run is not None and run.status == "succeeded":
                        continue
                    if (run is not None and run.status == "failed" and not force
                            and run.next_attempt_at is not None
                            and run.next_attempt_at > self.clock()):
                        continue
                    self._run(client, rotation, stage, hook, run)
        except RotatorError:
            log.error("hooks_not_run", client=client.name, rotation_id=rotation.id,
                      exc_info=True)

    def holds(self, client: Any, rotation: Rotation) -> str | None:
        """The reason to keep the old secret: a required hook has not succeeded."""
        required = [h for h in self.hooks_of(client, "promoted") if h.required]
        if not required:
            return None
        runs = {r.hook: r for r in self.journal.hook_runs(rotation.id) if r.stage == "promoted"}
        waiting = [h.name for h in required
                   if runs.get(h.name) is None or runs[h.name].status != "succeeded"]
        if not waiting:
            return None
        errors = [runs[n].error for n in waiting if runs.get(n) is not None and runs[n].error]
        return (f"the old secret is kept until required hook(s) {', '.join(waiting)} "
                f"succeed" + (f" (last error: {errors[0]})" if errors else ""))

    # -- the daemon's sweep ----------------------------------------------------------------

    def retry_due(self) -> int:
        """Retry every failed or interrupted hook run whose time has come; return how many.

        Skips a client another process (or a job) holds the lock of, and runs of hooks no
        longer configured. Never raises.
        """
        count = 0
        try:
            pending = self.journal.unfinished_hook_runs()
        except RotatorError:
            log.error("hooks_not_read", exc_info=True)
            return 0
        now = self.clock()
        for run in pending:
            client = self.clients.get(run.client)
            hook = next((h for h in self.hooks_of(client, run.stage) if h.name == run.hook),
                        None) if client is not None else None
            if hook is None or (run.next_attempt_at is not None and run.next_attempt_at > now):
                continue
            try:
                with self.journal.lock(run.client):
                    rotation = self.journal.get(run.rotation_id)
                    fresh = {(r.stage, r.hook): r for r in self.journal.hook_runs(rotation.id)}
                    current = fresh.get((run.stage, run.hook))
                    if current is None or current.status == "succeeded":
                        continue
                    newest = self.journal.last_success(run.client)
                    if newest is not None and newest.started_at > rotation.started_at:
                        # A newer secret is current: telling consumers about this one is moot.
                        self.journal.record_hook_run(replace(current, status="superseded",
                                                             updated_at=now))
                        continue
                    self._run(client, rotation, run.stage, hook, current)
                    count += 1
            except RotationLocked:
                continue
            except RotatorError:
                log.error("hook_retry_failed", client=run.client, exc_info=True)
        return count

    # -- one run ---------------------------------------------------------------------------

    def _stages(self, rotation: Rotation) -> list[str]:
        if rotation.state is State.COMPLETED:
            return list(STAGES)
        if rotation.state is State.PROMOTED:
            return ["promoted"]
        if rotation.state is State.FAILED and rotation.family == "single":
            # The IdP invalidated the old secret: the new one is current even though it did
            # not verify, so consumers must still reload.
            reached = {step.state for step in self.journal.steps(rotation.id)}
            return ["promoted"] if State.PROMOTED in reached else []
        return []

    def event(self, client: Any, rotation: Rotation, stage: str, hook: HookConfig,
              attempt: int) -> dict[str, Any]:
        """The event a hook receives (HTTP body, ``ROTATOR_*`` variables): no secret value."""
        return {
            "type": "rotator.hook", "version": 1,
            "event_id": f"{rotation.id}.{stage}.{hook.name}",
            "stage": stage, "client": client.name, "client_id": client.client_id,
            "rotation_id": rotation.id, "family": rotation.family,
            "old_fingerprint": rotation.old_fingerprint,
            "new_fingerprint": rotation.new_fingerprint,
            "retire_after": rotation.retire_after.isoformat() if rotation.retire_after
            and stage == "promoted" else None,
            "hook": hook.name, "attempt": attempt, "at": self.clock().isoformat(),
        }

    def _run(self, client: Any, rotation: Rotation, stage: str, hook: HookConfig,
             previous: HookRun | None) -> bool:
        attempts = previous.attempts if previous is not None else 0
        runner = self.runners[hook.kind]
        error = ""
        started = time.monotonic()
        with bound(client=client.name, rotation_id=rotation.id):
            for i in range(hook.attempts):
                attempts += 1
                self._record(client, rotation, stage, hook, "running", attempts)
                try:
                    runner(hook, self.event(client, rotation, stage, hook, attempts))
                except HookFailed as exc:
                    error = str(exc)
                except Exception as exc:  # a bug in a hook kind must not stop the engine
                    log.error("hook_crashed", hook=hook.name, exc_info=True)
                    error = f"unexpected error {type(exc).__name__}"
                else:
                    self._record(client, rotation, stage, hook, "succeeded", attempts)
                    self.audit.event("hook_succeeded", step="hook", outcome="success",
                                     hook=hook.name, kind=hook.kind, stage=stage,
                                     attempts=attempts, duration_ms=_ms(started))
                    return True
                log.info("hook_attempt_failed", hook=hook.name, attempt=attempts, error=error)
                if i + 1 < hook.attempts:
                    self.sleep(min(hook.backoff * 2 ** i, 60.0))
            rounds = max(1, -(-attempts // hook.attempts))
            delay = min(MAX_RETRY_DELAY, FIRST_RETRY_DELAY * 2 ** (rounds - 1))
            retry_at = self.clock() + timedelta(seconds=delay)
            self._record(client, rotation, stage, hook, "failed", attempts, error=error,
                         next_attempt_at=retry_at)
            self.audit.event("hook_failed", step="hook", outcome="failure", hook=hook.name,
                             kind=hook.kind, stage=stage, attempts=attempts, error=error,
                             required=hook.required, next_attempt_at=retry_at.isoformat(),
                             duration_ms=_ms(started))
        return False

    def _record(self, client: Any, rotation: Rotation, stage: str, hook: HookConfig,
                status: str, attempts: int, *, error: str | None = None,
                next_attempt_at: datetime | None = None) -> None:
        self.journal.record_hook_run(HookRun(
            rotation_id=rotation.id, client=client.name, stage=stage, hook=hook.name,
            status=status, attempts=attempts, required=hook.required,
            updated_at=self.clock(), next_attempt_at=next_attempt_at, error=error))


def failed_runs(journal: Journal) -> Iterable[HookRun]:
    """The hook runs whose last round failed (for alerts)."""
    return (r for r in journal.unfinished_hook_runs() if r.status == "failed")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def sweep(clients: Mapping[str, Any], journal: Journal, audit: AuditLog, *,
          alerts: Any, state_dir: Any, clock: Callable[[], datetime],
          blocked: Mapping[str, str]) -> None:
    """The daemon's periodic check: retry due hooks, then send the alerts that are due."""
    from rotator.hooks.alerts import Alerter

    HookRunner(clients, journal, audit, clock=clock).retry_due()
    if alerts is not None:
        Alerter(alerts, state_dir, audit, clock=clock).check(clients, journal, blocked=blocked)


__all__ = ["FIRST_RETRY_DELAY", "MAX_RETRY_DELAY", "HookRunner", "RetirementGate", "sweep"]
