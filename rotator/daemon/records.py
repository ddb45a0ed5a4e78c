"""What the daemon knows of each client, read from the journal and kept current in memory.

:func:`load_record` reads one client's history from the journal (and, only for a client
the journal never saw succeed, when its primary store's current secret became current);
:meth:`ClientRecord.state` turns that into the :class:`ClientState` the API, metrics and
``rotator status`` report, through the one rule in :mod:`rotator.daemon.schedule`. The
daemon keeps a record per client and updates it as its jobs finish; ``rotator status``
loads a fresh one per call, so both report the same condition and next run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from rotator.config import ClientConfig, Config
from rotator.daemon.model import ClientState, RotationStep, RotationView
from rotator.daemon.schedule import History, Policy, condition, decide, parse_cron, parse_window
from rotator.daemon.workers import SHUTTING_DOWN
from rotator.engine import Adapters, Outcome
from rotator.errors import RotatorError
from rotator.interfaces import Journal, Rotation, State
from rotator.secrets import redact

log = structlog.get_logger("rotator.daemon")

#: Engine messages no retry fixes: a person must act (see the engine's ``_start``).
#: Errors a rotation records that only an operator can clear (providers/idps/rfc7592.py): a
#: client read from the journal whose latest rotation ended or stopped with one is blocked.
_RECORDED_BLOCKING = ("does not rotate secrets through RFC 7592",
                      "the registration access token was refused")
_BLOCKING = ("holds a pending secret", "holds client id", "no current credential",
             *_RECORDED_BLOCKING)

#: When the current secret of a client became current, from its primary store.
FactsReader = Callable[[Config, ClientConfig], datetime | None]


def policy_of(client: ClientConfig) -> Policy:
    """The scheduling policy of a (checked) client configuration."""
    return Policy(
        rotate_every=client.rotate_every,
        schedule=parse_cron(client.schedule) if client.schedule else None,
        window=parse_window(client.window) if client.window else None,
        jitter=client.jitter, backoff=client.backoff, backoff_max=client.backoff_max,
        rotate_before_expiry=client.rotate_before_expiry)


def success_time(journal: Journal, rotation: Rotation) -> datetime:
    """When ``rotation``'s new secret became current (its PROMOTED step)."""
    for at, state, _detail in journal.steps(rotation.id):
        if state is State.PROMOTED:
            return at
    return rotation.updated_at


def secret_expiry(journal: Journal, rotation: Rotation | None) -> datetime | None:
    """When the secret ``rotation`` issued expires, as the IdP said (its CREATED step)."""
    if rotation is None:
        return None
    for _at, state, detail in journal.steps(rotation.id):
        if state is State.CREATED and detail.get("expires_at"):
            try:
                return datetime.fromisoformat(str(detail["expires_at"]))
            except ValueError:
                return None
    return None


def client_expiry(journal: Journal, name: str) -> datetime | None:
    """When the client's current secret (its last successful rotation's) expires, if known."""
    return secret_expiry(journal, journal.last_success(name))


def history_from_journal(journal: Journal, name: str,
                         fallback: datetime | None = None) -> History:
    """A client's history as the journal tells it (for ``rotate --due`` and start-up).

    Failures are the terminal failed or rolled-back rotations since the last success.
    """
    return _history(journal, name, journal.latest(name), fallback)


def _history(journal: Journal, name: str, latest: Rotation | None,
             fallback: datetime | None = None) -> History:
    success = journal.last_success(name)
    last = success_time(journal, success) if success else fallback
    failures = 0
    last_failure = None
    if latest is not None and latest.state in (State.FAILED, State.ROLLED_BACK) and (
            success is None or latest.started_at > success.started_at):
        failures, last_failure = 1, latest.updated_at
    return History(last, failures, last_failure,
                   secret_expires_at=secret_expiry(journal, success) if success else None)


def store_current_since(config: Config, client: ClientConfig) -> datetime | None:
    """When the primary store's current secret became current; None if it cannot tell."""
    with StoreFacts(config) as facts:
        return facts(config, client)


class StoreFacts:
    """A :data:`FactsReader` that opens the stores once for many clients (start-up).

    Opening them per client would parse a shared env file once per client, and open a
    Vault or AWS session each time.
    """

    def __init__(self, config: Config) -> None:
        self._adapters = Adapters(config)

    def __call__(self, _config: Config, client: ClientConfig) -> datetime | None:
        target = client.primary
        try:
            return self._adapters.store(target.store).facts(target.location).current_since
        except RotatorError as exc:
            log.warning("store_facts_unavailable", client=client.name, error=redact(str(exc)))
            return None

    def close(self) -> None:
        self._adapters.close()

    def __enter__(self) -> StoreFacts:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class Job:
    """One queued or running piece of work for a client: rotate, retire or resume."""

    #: Allocated at trigger time and given to the engine for a new rotation; a resumed one
    #: keeps its own id, which lands in ``real_id``.
    id: str
    client: str
    idp: str
    kind: str  # rotate | retire | resume
    actor: str
    retire_now: bool = False
    state: str = "queued"  # queued | running | done
    started_at: datetime | None = None
    real_id: str | None = None
    outcome: Outcome | None = None


@dataclass
class ClientRecord:
    """What the daemon keeps current about one client."""

    config: ClientConfig
    policy: Policy
    last_success_at: datetime | None = None
    failures: int = 0
    last_failure_at: datetime | None = None
    not_before: datetime | None = None
    latest: Rotation | None = None
    open: Rotation | None = None
    blocked: str | None = None
    reason: str | None = None
    job: Job | None = None
    #: Removed from the configuration while a rotation was open: finished, not rescheduled.
    removed: bool = False
    #: When the current secret expires at the IdP, if it said (from the journal).
    secret_expires_at: datetime | None = None
    #: Its store facts are still to be read (start-up reads them after it is ready).
    facts_pending: bool = False
    #: A trigger taken in the shared journal while a job it could not join was in hand
    #: (id, actor): queued when that job ends.
    follow_up: tuple[str, str] | None = None

    def history(self) -> History:
        return History(self.last_success_at, self.failures, self.last_failure_at,
                       self.not_before, self.secret_expires_at)

    def learn(self, outcome: Outcome, now: datetime, *, throttled_until: datetime | None,
              stopping: bool) -> None:
        """Take in what a finished job of this client says: success, hold, block, failure."""
        message = outcome.message
        if outcome.ok or outcome.action in ("waiting", "nothing"):
            if outcome.action in ("rotated", "retired", "resumed"):
                self.failures, self.last_failure_at, self.reason = 0, None, None
                self.blocked, self.not_before = None, None
        elif throttled_until is not None:
            self.not_before = throttled_until
        elif stopping and SHUTTING_DOWN in message:
            pass  # not a failure: resumed at the next start
        elif outcome.action == "locked":
            self.not_before = now + timedelta(seconds=30)
        elif any(marker in message for marker in _BLOCKING):
            self.blocked = self.reason = message
        else:
            self.failures += 1
            self.last_failure_at, self.reason = now, message

    def state(self, now: datetime) -> ClientState:
        """The client's condition, next run and last rotation at ``now``."""
        name = self.config.name
        decision = decide(name, self.policy, self.history(), now)
        running = self.job is not None and self.job.state == "running"
        open_rotation = self.open
        rotating = running or (open_rotation is not None
                               and not open_rotation.awaiting_retirement
                               and self.failures == 0 and self.blocked is None)
        awaiting = open_rotation is not None and open_rotation.awaiting_retirement
        queued = self.job is not None and self.job.state == "queued"
        cond = condition(due=decision.due or queued, rotating=rotating,
                         awaiting_retirement=awaiting, failures=self.failures,
                         blocked=self.blocked is not None)
        latest = self.latest
        return ClientState(
            name=name, client_id=self.config.client_id, idp=self.config.idp,
            stores=[t.store for t in self.config.targets], condition=cond,
            reason=self.blocked or self.reason,
            last_rotation_id=latest.id if latest else None,
            last_rotation_state=latest.state.value if latest else None,
            last_success_at=self.last_success_at,
            age_seconds=(now - self.last_success_at).total_seconds()
            if self.last_success_at else None,
            next_run=decision.next_run, failures=self.failures,
            next_attempt=decision.next_attempt,
            retire_after=open_rotation.retire_after if awaiting and open_rotation else None,
            extra={"removed": True} if self.removed else {},
            secret_expires_at=self.secret_expires_at,
        )


def load_record(journal: Journal, config: Config, client: ClientConfig,
                facts: FactsReader = store_current_since, *,
                rotated: bool = True) -> ClientRecord:
    """A client's record from the journal; ``facts`` is asked only if it never succeeded.

    ``rotated=False`` says the journal holds no rotation of the client (see
    :func:`rotated_clients`), so it is not asked.
    """
    if not rotated:
        return ClientRecord(client, policy_of(client), facts(config, client), 0, None,
                            latest=None, open=None)
    latest = journal.latest(client.name)
    history = _history(journal, client.name, latest)
    last = history.last_success_at
    if last is None:
        last = facts(config, client)
    record = ClientRecord(client, policy_of(client), last, history.failures,
                          history.last_failure_at, latest=latest,
                          open=journal.open_rotation(client.name),
                          secret_expires_at=history.secret_expires_at)
    error = latest.error if latest is not None else None
    if error and any(marker in error for marker in _RECORDED_BLOCKING):
        record.blocked = record.reason = error
    return record


def rotated_clients(journal: Journal) -> set[str] | None:
    """The clients the journal holds rotations of, or None when it cannot say at once."""
    rotated = getattr(journal, "rotated_clients", None)
    return None if rotated is None else set(rotated())


def journal_facts(journal: Journal, name: str
                  ) -> tuple[datetime | None, Rotation | None, Rotation | None]:
    """A client's last success time, latest rotation and open rotation, from the journal."""
    success = journal.last_success(name)
    return (success_time(journal, success) if success else None, journal.latest(name),
            journal.open_rotation(name))


def rotation_view(journal: Journal, rotation: Rotation) -> RotationView:
    """One rotation and its steps, as the API shows it."""
    return RotationView(
        rotation.id, rotation.client, rotation.state.value, rotation.family,
        rotation.actor, rotation.started_at, rotation.updated_at, rotation.retire_after,
        rotation.error,
        [RotationStep(s.value, at) for at, s, _d in journal.steps(rotation.id)])


def due_clients(config: Config, journal: Journal, names: Sequence[str], now: datetime, *,
                facts: FactsReader | None = None) -> list[str]:
    """The clients among ``names`` that the daemon would start now (``rotate --due``).

    A client with an open rotation counts as due: ``rotate`` resumes it. ``facts`` defaults
    to the stores, opened once for every client.
    """
    if facts is None:
        with StoreFacts(config) as shared:
            return due_clients(config, journal, names, now, facts=shared)
    due = []
    for name in names:
        client = config.clients[name]
        if journal.open_rotation(name) is not None:
            due.append(name)
            continue
        history = history_from_journal(journal, name)
        if history.last_success_at is None:
            history = dataclasses.replace(history, last_success_at=facts(config, client))
        if decide(name, policy_of(client), history, now).runnable:
            due.append(name)
    return due
