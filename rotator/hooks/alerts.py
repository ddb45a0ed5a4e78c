"""Alerts: tell an operator when rotation fails or is stuck, once per condition and period.

Conditions, each keyed ``<condition>:<client>[:<hook>]``:

``rotation_failed``          the client's latest rotation ended failed or rolled back
``client_blocked``           the daemon will not retry the client until someone acts
``rotation_open_too_long``   a rotation is open longer than ``open_longer_than`` (a grace
                             period is not counted: from ``retire_after`` once promoted)
``secret_too_old``           the current secret is older than the client's ``max_age``
``secret_expiring``          the current secret expires at the IdP (Entra ``endDateTime``, as
                             journalled in its CREATED step) within ``expiring_within``, or
                             has expired; a rotation to a secret that does not clears it
``hook_failed``              a hook's last round of attempts failed

Sent once, when it happens (:meth:`Alerter.fire`, never resolved):

``retired_while_in_use``     a ``retire = "when_unused"`` client's old secret was retired at
                             its grace period's end while consumers still reported it
                             (``detail.consumers`` names them; see rotator.consumers)

A condition that holds is sent when first seen and again every ``repeat``; when it clears, a
``resolved`` message is sent once. What was sent is kept in ``alerts.json`` in the state
directory (mode 0600, replaced atomically, under an ``flock``), so the daemon and the CLI
share it and a restart neither repeats nor forgets an alert. A webhook that fails is tried
again at the next check. Payloads carry names, ids, fingerprints and times, never a secret.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import structlog

from rotator import _deadline
from rotator._files import UnsafeFile, ensure_private_dir, open_private, write_private_file
from rotator.audit import AuditLog
from rotator.hooks.config import AlertConfig
from rotator.hooks.kinds import SIGNATURE_HEADER, sign
from rotator.interfaces import Journal, Rotation, State
from rotator.secrets import redact

log = structlog.get_logger("rotator.alerts")

CONDITIONS = ("rotation_failed", "client_blocked", "rotation_open_too_long",
              "secret_too_old", "hook_failed", "secret_expiring")
#: What the CLI can judge: it does not know which clients the daemon holds as blocked.
WITHOUT_BLOCKED = tuple(c for c in CONDITIONS if c != "client_blocked")


@dataclass(frozen=True)
class Condition:
    """One condition that holds now."""

    key: str
    condition: str
    client: str
    summary: str
    detail: Mapping[str, Any] = field(default_factory=dict)


def _promoted_at(journal: Journal, rotation: Rotation) -> datetime:
    for step in journal.steps(rotation.id):
        if step.state is State.PROMOTED:
            return step.at
    return rotation.updated_at


def _expires_at(journal: Journal, rotation: Rotation) -> datetime | None:
    """When the secret ``rotation`` issued expires, as the IdP said (its CREATED step)."""
    for step in journal.steps(rotation.id):
        if step.state is State.CREATED and step.detail.get("expires_at"):
            try:
                return datetime.fromisoformat(str(step.detail["expires_at"]))
            except ValueError:
                return None
    return None


def _expiring(name: str, journal: Journal, now: datetime,
              within: float) -> Condition | None:
    """``secret_expiring`` if the current secret of ``name`` expires within ``within``."""
    success = journal.last_success(name)
    expires = _expires_at(journal, success) if success is not None else None
    if expires is None or (expires - now).total_seconds() > within:
        return None
    left = (expires - now).total_seconds()
    at = expires.isoformat(timespec="seconds")
    summary = (f"the secret of {name} expired at the IdP at {at}" if left <= 0 else
               f"the secret of {name} expires at the IdP at {at}, in {left / 86400:.1f} days")
    return Condition(f"secret_expiring:{name}", "secret_expiring", name, summary,
                     {"expires_at": expires.isoformat(), "expired": left <= 0,
                      "rotation_id": success.id if success is not None else None})


def current_conditions(clients: Mapping[str, Any], journal: Journal, now: datetime, *,
                       open_longer_than: float,
                       blocked: Mapping[str, str] | None = None,
                       expiring_within: float = 14 * 86400.0) -> list[Condition]:
    """Every condition that holds now for ``clients`` (name -> ``ClientConfig``)."""
    found: list[Condition] = []
    for name, client in clients.items():
        latest = journal.latest(name)
        if latest is not None and latest.state in (State.FAILED, State.ROLLED_BACK):
            found.append(Condition(
                f"rotation_failed:{name}", "rotation_failed", name,
                f"rotation {latest.id} of {name} ended {latest.state}: "
                f"{latest.error or 'no reason recorded'}",
                {"rotation_id": latest.id, "state": latest.state.value,
                 "error": latest.error}))
        if blocked and name in blocked:
            found.append(Condition(f"client_blocked:{name}", "client_blocked", name,
                                   f"{name} is blocked: {blocked[name]}",
                                   {"reason": blocked[name]}))
        open_rotation = journal.open_rotation(name)
        if open_rotation is not None:
            since = (open_rotation.retire_after if open_rotation.awaiting_retirement
                     and open_rotation.retire_after else open_rotation.started_at)
            if (now - since).total_seconds() > open_longer_than:
                found.append(Condition(
                    f"rotation_open_too_long:{name}", "rotation_open_too_long", name,
                    f"rotation {open_rotation.id} of {name} is open since "
                    f"{since.isoformat(timespec='seconds')} at {open_rotation.state}"
                    + (f": {open_rotation.error}" if open_rotation.error else ""),
                    {"rotation_id": open_rotation.id, "state": open_rotation.state.value,
                     "since": since.isoformat()}))
        max_age = getattr(client, "max_age", None)
        success = journal.last_success(name) if max_age else None
        if max_age and success is not None:
            at = _promoted_at(journal, success)
            age = (now - at).total_seconds()
            if age > max_age:
                found.append(Condition(
                    f"secret_too_old:{name}", "secret_too_old", name,
                    f"the secret of {name} is {int(age // 86400)} days old "
                    f"(max_age {int(max_age // 86400)} days)",
                    {"age_seconds": int(age), "max_age_seconds": int(max_age),
                     "rotated_at": at.isoformat()}))
        expiring = _expiring(name, journal, now, expiring_within)
        if expiring is not None:
            found.append(expiring)
    for run in journal.unfinished_hook_runs():
        hooks = {h.name for h in getattr(clients.get(run.client), "hooks", ())}
        if run.status == "failed" and run.hook in hooks:
            found.append(Condition(
                f"hook_failed:{run.client}:{run.hook}", "hook_failed", run.client,
                f"hook {run.hook} of {run.client} failed after {run.attempts} attempt(s)"
                f" for rotation {run.rotation_id}: {run.error}",
                {"rotation_id": run.rotation_id, "hook": run.hook, "stage": run.stage,
                 "attempts": run.attempts, "required": run.required, "error": run.error}))
    return found


HttpFactory = Callable[[AlertConfig], httpx.Client]


def default_http(alerts: AlertConfig) -> httpx.Client:
    return _deadline.client(alerts.timeout, alerts.tls_verify)


def payload(alerts: AlertConfig, cond: Condition, status: str, since: str,
            now: datetime) -> dict[str, Any]:
    """The body sent for ``cond``: generic JSON, or Slack's ``{"text": ...}``."""
    if alerts.format == "slack":
        mark = ":white_check_mark: RESOLVED" if status == "resolved" else ":rotating_light:"
        return {"text": f"{mark} rotator {cond.condition} ({cond.client}): {cond.summary}"}
    return {"type": "rotator.alert", "version": 1, "status": status, "key": cond.key,
            "condition": cond.condition, "client": cond.client, "summary": cond.summary,
            "detail": dict(cond.detail), "since": since, "at": now.isoformat()}


class Alerter:
    """Sends alerts for ``[alerts]``; state in ``state_dir/alerts.json``."""

    def __init__(self, alerts: AlertConfig, state_dir: Path, audit: AuditLog, *,
                 clock: Callable[[], datetime], http_factory: HttpFactory = default_http,
                 wall: Callable[[], float] = time.time) -> None:
        self.alerts = alerts
        self.state_dir = state_dir
        self.audit = audit
        self.clock = clock
        self.http_factory = http_factory
        self.wall = wall

    def check(self, clients: Mapping[str, Any], journal: Journal, *,
              blocked: Mapping[str, str] | None = None,
              judged: Iterable[str] = CONDITIONS) -> list[str]:
        """Send what ``clients``' conditions call for; return ``status:key`` of each sent.

        Only conditions in ``judged`` of these clients are resolved when absent (the CLI
        passes :data:`WITHOUT_BLOCKED` and the clients it rotated). Never raises.
        """
        judged = set(judged)
        now = self.clock()
        sent: list[str] = []
        try:
            holding = [c for c in current_conditions(
                clients, journal, now, open_longer_than=self.alerts.open_longer_than,
                blocked=blocked, expiring_within=self.alerts.expiring_within)
                if c.condition in judged]
            with self._state() as state:
                live = {c.key for c in holding}
                for cond in holding:
                    entry = state.get(cond.key)
                    if entry is not None and (now - datetime.fromisoformat(
                            entry["sent_at"])).total_seconds() < self.alerts.repeat:
                        continue
                    since = entry["since"] if entry else now.isoformat()
                    if self._send(cond, "firing", since, now):
                        state[cond.key] = {"since": since, "sent_at": now.isoformat(),
                                           "condition": cond.condition, "client": cond.client,
                                           "summary": cond.summary}
                        sent.append(f"firing:{cond.key}")
                for key, entry in list(state.items()):
                    if key in live or entry["client"] not in clients \
                            or entry["condition"] not in judged:
                        continue
                    cond = Condition(key, entry["condition"], entry["client"],
                                     f"cleared: {entry['summary']}")
                    if self._send(cond, "resolved", entry["since"], now):
                        del state[key]
                        sent.append(f"resolved:{key}")
        except Exception:  # alerting must never break a rotation or the scheduler
            log.error("alerts_not_checked", exc_info=True)
        return sent

    def fire(self, cond: Condition) -> bool:
        """Send ``cond`` once as ``firing``, outside the held-conditions state: for an event
        that does not persist (``retired_while_in_use``). Never raises."""
        now = self.clock()
        try:
            return self._send(cond, "firing", now.isoformat(), now)
        except Exception:  # alerting must never break a rotation
            log.error("alert_not_sent", exc_info=True)
            return False

    def _send(self, cond: Condition, status: str, since: str, now: datetime) -> bool:
        assert self.alerts.url is not None
        body = json.dumps(payload(self.alerts, cond, status, since, now),
                          sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "rotator-alert/1"}
        if self.alerts.key is not None and self.alerts.format == "json":
            headers[SIGNATURE_HEADER] = sign(self.alerts.key, body, int(self.wall()))
        error = None
        try:
            with self.http_factory(self.alerts) as http:
                response = _deadline.post(http, self.alerts.url.reveal(), content=body,
                                          headers=headers, deadline=self.alerts.timeout)
            if not 200 <= response.status_code < 300:
                error = f"the webhook answered {response.status_code}"
        except httpx.HTTPError as exc:
            # httpx puts the URL (a credential, for Slack) in some messages: name the type.
            error = f"the webhook could not be reached ({type(exc).__name__})"
        self.audit.event("alert_sent", step="alert", outcome="failure" if error else "success",
                         condition=cond.condition, alert_status=status, alert_key=cond.key,
                         client=cond.client, **({"error": redact(error)} if error else {}))
        return error is None

    @contextmanager
    def _state(self) -> Iterator[dict[str, dict[str, str]]]:
        ensure_private_dir(self.state_dir)
        lock_fd = open_private(self.state_dir / "alerts.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            path = self.state_dir / "alerts.json"
            try:
                fd = open_private(path, os.O_RDONLY)
                with os.fdopen(fd, "rb") as handle:
                    state: dict[str, dict[str, str]] = json.loads(handle.read() or b"{}")
            except FileNotFoundError:
                state = {}
            except (ValueError, UnsafeFile) as exc:
                log.error("alert_state_unreadable", path=str(path), error=str(exc))
                raise
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                write_private_file(path, json.dumps(state, sort_keys=True, indent=1).encode())
        finally:
            os.close(lock_fd)


def due(alerts: AlertConfig, last: float | None, now: float) -> bool:
    """Whether the daemon's periodic check is due (``last``: monotonic time of the last)."""
    return last is None or now - last >= alerts.check_every


__all__ = ["CONDITIONS", "WITHOUT_BLOCKED", "Alerter", "Condition", "current_conditions",
           "due", "payload"]
