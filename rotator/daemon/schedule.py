"""Is a client due, and when next: the one rule that status, ``rotate --due``, the scheduler
and the API share.

Everything here is pure: time comes in as an argument, nothing is read from a clock, a
store or the journal. :func:`decide` takes a client's :class:`Policy` (from its
configuration) and its :class:`History` (from the journal, or what the daemon keeps in
memory) and says whether it is due and when it may next start:

1. *due_at*: the earliest of ``last_success + rotate_every``, the first ``schedule``
   (cron) time after the last success and, for a secret that expires (Entra ID passwords),
   ``secret_expires_at - rotate_before_expiry``, moved later by a per-client ``jitter`` that is
   derived from the client's name and that time, so every caller computes the same instant.
   A client rotator never saw rotate is due at once (no jitter: there is nothing to spread).
2. it may start no sooner than ``last_failure + backoff x 2^(n-1)`` (capped) after
   failures, the rule cert-manager uses for failed issuance;
3. nor sooner than ``not_before`` (the daemon's catch-up slot, an IdP's ``Retry-After``);
4. *next_run*: the first instant from then on inside the client's ``window``.

Cron expressions are evaluated by APScheduler 3's ``CronTrigger``; windows are evaluated in
their own time zone with :mod:`zoneinfo`, so both stay right across DST changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rotator.daemon.model import Condition

#: cert-manager's failed-issuance backoff: 1 h, doubling, capped at 32 h.
DEFAULT_BACKOFF = 3600.0
DEFAULT_BACKOFF_MAX = 32 * 3600.0

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = r"(\d{1,2}):(\d{2})"
_WINDOW = re.compile(rf"^\s*(?:(?P<days>[A-Za-z,\-*]+)\s+)?{_TIME}\s*-\s*{_TIME}"
                     rf"(?:\s+(?P<tz>\S+))?\s*$")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as "
                         "'Europe/Berlin' or 'UTC')") from None


@dataclass(frozen=True)
class Window:
    """When rotations may start: some weekdays, a local time range, a time zone.

    ``end`` before ``start`` means the range runs past midnight into the next day; the
    weekday is the day the range opens on.
    """

    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight, 1440 for "24:00"
    tz: ZoneInfo

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(self.tz)
        minute = local.hour * 60 + local.minute + local.second / 60
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= minute < self.end
        opened_today = local.weekday() in self.days and minute >= self.start
        opened_yesterday = (local.weekday() - 1) % 7 in self.days and minute < self.end
        return opened_today or opened_yesterday

    def next_opening(self, at: datetime) -> datetime:
        """``at`` if it lies inside the window, else the instant the window next opens."""
        if self.contains(at):
            return at
        day = at.astimezone(self.tz).date()
        for offset in range(8):
            candidate = self._opening(day + timedelta(days=offset))
            if candidate is not None and candidate > at:
                return candidate
        raise AssertionError("a window opens at least once a week")  # pragma: no cover

    def _opening(self, day: date) -> datetime | None:
        if day.weekday() not in self.days:
            return None
        local = datetime(day.year, day.month, day.day, self.start // 60, self.start % 60,
                         tzinfo=self.tz)
        # A start inside a spring-forward gap maps to the same wall time after the jump
        # (zoneinfo's fold=0 rule); the UTC round trip makes that instant explicit.
        return local.astimezone(UTC)


def parse_window(text: str) -> Window:
    """``"Mon-Fri 09:00-17:00 Europe/Berlin"``; days and zone optional (every day, UTC).

    Days: ``Mon-Fri``, ``Sat,Sun``, ``Mon,Wed-Fri`` or ``*``. Raises ValueError.
    """
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"expected a window such as 'Mon-Fri 09:00-17:00 Europe/Berlin', "
                         f"got {text!r}")
    days = _parse_days(match.group("days") or "*")
    h1, m1, h2, m2 = (int(g) for g in match.group(2, 3, 4, 5))
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"invalid time in window {text!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"window {text!r} is empty: it opens and closes at the same time")
    return Window(days, start, end, _zone(match.group("tz") or "UTC"))


def _parse_days(text: str) -> frozenset[int]:
    if text == "*":
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"unknown day {part!r}; use Mon, Tue, Wed, Thu, Fri, Sat, Sun")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression evaluated in a time zone (APScheduler 3 semantics)."""

    expression: str
    tz: ZoneInfo

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``."""
        fire: datetime | None = _trigger(self.expression, self.tz.key).get_next_fire_time(
            None, after + timedelta(microseconds=1))
        if fire is None:  # pragma: no cover - a crontab always fires again
            raise ValueError(f"cron expression {self.expression!r} never fires")
        return fire.astimezone(UTC)


@lru_cache(maxsize=256)
def _trigger(expression: str, tz: str) -> Any:
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    return CronTrigger.from_crontab(expression, timezone=ZoneInfo(tz))


def parse_cron(text: str) -> Cron:
    """``"0 3 * * mon"`` or ``"0 3 * * mon Europe/Berlin"`` (zone default UTC).

    Raises ValueError.
    """
    fields = text.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"expected a cron expression of five fields (minute hour day month "
                         f"weekday), optionally followed by a time zone; got {text!r}")
    tz = _zone(fields[5] if len(fields) == 6 else "UTC")
    expression = " ".join(fields[:5])
    try:
        _trigger(expression, tz.key)
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from None
    return Cron(expression, tz)


@dataclass(frozen=True)
class Policy:
    """When one client should rotate (from its configuration)."""

    rotate_every: float | None = None
    schedule: Cron | None = None
    window: Window | None = None
    jitter: float = 0.0
    backoff: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    #: Rotate this many seconds before the current secret expires (when its expiry is known).
    rotate_before_expiry: float | None = None

    @property
    def scheduled(self) -> bool:
        return (self.rotate_every is not None or self.schedule is not None
                or self.rotate_before_expiry is not None)


@dataclass(frozen=True)
class History:
    """What is known of one client's past (from the journal or the daemon's memory)."""

    #: When the current secret became current; None if unknown (never rotated, no facts).
    last_success_at: datetime | None = None
    #: Consecutive failed attempts since the last success, and when the last one failed.
    failures: int = 0
    last_failure_at: datetime | None = None
    #: Do not start before this (catch-up slot, an IdP's Retry-After).
    not_before: datetime | None = None
    #: When the current secret stops working at the IdP, if the IdP said (journal).
    secret_expires_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    #: The client has fallen due (it may still wait for its window or a hold).
    due: bool
    #: Due and allowed to start now: inside its window, past every hold.
    runnable: bool
    #: When the client fell (or falls) due, jitter included; None: never.
    due_at: datetime | None
    #: The first instant from ``max(due_at, now)`` on at which a rotation may start
    #: (after backoff, holds and inside the window).
    next_run: datetime | None
    #: When the next attempt after failures is allowed (None without failures).
    next_attempt: datetime | None = None


def backoff_delay(failures: int, base: float = DEFAULT_BACKOFF,
                  cap: float = DEFAULT_BACKOFF_MAX) -> float:
    """Seconds to wait after ``failures`` consecutive failures: base x 2^(n-1), capped."""
    if failures <= 0:
        return 0.0
    return min(base * 2.0 ** min(failures - 1, 62), cap)


def jitter_offset(name: str, base: datetime, jitter: float) -> float:
    """A delay in [0, jitter) that depends only on the client and the time it fell due."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{name}|{base.astimezone(UTC).isoformat()}".encode()).digest()
    return jitter * int.from_bytes(digest[:8], "big") / 2.0**64


def decide(name: str, policy: Policy, history: History, now: datetime) -> Decision:
    """Whether ``name`` is due at ``now`` and when it may next start (see the module doc)."""
    if not policy.scheduled:
        return Decision(False, False, None, None)
    last = history.last_success_at
    if last is None:
        due_at = now  # never rotated (or age unknown): due at once
    else:
        candidates = []
        if policy.rotate_every is not None:
            candidates.append(last + timedelta(seconds=policy.rotate_every))
        if policy.schedule is not None:
            candidates.append(policy.schedule.next_after(last))
        if policy.rotate_before_expiry is not None and history.secret_expires_at is not None:
            candidates.append(history.secret_expires_at
                              - timedelta(seconds=policy.rotate_before_expiry))
        if not candidates:  # only rotate_before_expiry, and the expiry is unknown
            return Decision(False, False, None, None)
        base = min(candidates)
        due_at = base + timedelta(seconds=jitter_offset(name, base, policy.jitter))
    next_attempt = None
    if history.failures > 0 and history.last_failure_at is not None:
        next_attempt = history.last_failure_at + timedelta(
            seconds=backoff_delay(history.failures, policy.backoff, policy.backoff_max))
    start = max(due_at, now)
    if next_attempt is not None:
        start = max(start, next_attempt)
    if history.not_before is not None:
        start = max(start, history.not_before)
    next_run = policy.window.next_opening(start) if policy.window is not None else start
    return Decision(due=due_at <= now, runnable=due_at <= now and next_run <= now,
                    due_at=due_at, next_run=next_run, next_attempt=next_attempt)


def catch_up_slots(overdue: Sequence[tuple[str, datetime]], start: datetime,
                   period: float) -> dict[str, datetime]:
    """Spread clients that fell due while the daemon was down over ``period`` seconds.

    ``overdue`` pairs names with when each fell due; the longest overdue goes first, at
    ``start``, and the rest follow at equal steps so that no two start together.
    """
    ordered = sorted(overdue, key=lambda item: (item[1], item[0]))
    if len(ordered) <= 1 or period <= 0:
        return {name: start for name, _ in ordered}
    step = period / len(ordered)
    return {name: start + timedelta(seconds=i * step) for i, (name, _) in enumerate(ordered)}


def condition(*, due: bool, rotating: bool, awaiting_retirement: bool, failures: int,
              blocked: bool) -> Condition:
    """The one condition a client is reported in, from what the daemon knows of it."""
    if rotating:
        return Condition.ROTATING
    if blocked:
        return Condition.BLOCKED
    if failures > 0:
        return Condition.FAILING
    if awaiting_retirement:
        return Condition.AWAITING_RETIREMENT
    return Condition.DUE if due else Condition.READY
