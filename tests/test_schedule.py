"""The pure "is it due, and when next" rule (rotator.daemon.schedule), with a given clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rotator.config import load_config
from rotator.daemon.model import Condition
from rotator.daemon.schedule import (
    History,
    Policy,
    backoff_delay,
    catch_up_slots,
    condition,
    decide,
    jitter_offset,
    parse_cron,
    parse_window,
)
from rotator.errors import ConfigError


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestInterval:
    """rotate_every counts from the last successful rotation, not from when anyone looked."""

    def test_due_exactly_one_interval_after_the_last_success(self) -> None:
        policy = Policy(rotate_every=3600)
        last = utc(2024, 5, 1, 12)
        before = decide("a", policy, History(last), utc(2024, 5, 1, 12, 59))
        at = decide("a", policy, History(last), utc(2024, 5, 1, 13))
        assert not before.due and before.next_run == utc(2024, 5, 1, 13)
        assert at.due and at.runnable and at.due_at == utc(2024, 5, 1, 13)

    def test_the_answer_does_not_move_with_now(self) -> None:
        policy = Policy(rotate_every=86400, jitter=600)
        history = History(utc(2024, 5, 1))
        answers = {decide("a", policy, history, utc(2024, 5, 1, h)).next_run for h in range(20)}
        assert len(answers) == 1

    def test_a_client_never_rotated_is_due_at_once(self) -> None:
        now = utc(2024, 5, 1)
        decision = decide("a", Policy(rotate_every=3600, jitter=600), History(None), now)
        assert decision.runnable and decision.next_run == now

    def test_a_client_without_a_schedule_is_never_due(self) -> None:
        decision = decide("a", Policy(), History(None), utc(2024, 5, 1))
        assert not decision.due and decision.next_run is None


class TestCron:
    """A cron schedule fires at its first time after the last success, in its time zone."""

    def test_next_fire_in_berlin_time(self) -> None:
        policy = Policy(schedule=parse_cron("0 3 * * mon Europe/Berlin"))
        # Thursday 2 May 2024; the next Monday 03:00 CEST is 01:00 UTC on 6 May.
        decision = decide("a", policy, History(utc(2024, 5, 2, 10)), utc(2024, 5, 2, 11))
        assert decision.next_run == utc(2024, 5, 6, 1)

    def test_same_wall_time_across_the_october_change(self) -> None:
        cron = parse_cron("0 3 * * * Europe/Berlin")
        # 27 Oct 2024: clocks go back at 03:00 CEST; 03:00 CET on 28 Oct is 02:00 UTC.
        assert cron.next_after(utc(2024, 10, 26, 2)) == utc(2024, 10, 27, 2)
        assert cron.next_after(utc(2024, 10, 27, 2)) == utc(2024, 10, 28, 2)

    def test_utc_is_the_default_zone(self) -> None:
        assert parse_cron("30 4 * * *").next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 4, 30)

    def test_overdue_after_downtime(self) -> None:
        policy = Policy(schedule=parse_cron("0 3 * * *"))
        decision = decide("a", policy, History(utc(2024, 1, 1, 4)), utc(2024, 1, 5))
        assert decision.due and decision.due_at == utc(2024, 1, 2, 3)

    def test_the_earlier_of_interval_and_schedule(self) -> None:
        policy = Policy(rotate_every=3600, schedule=parse_cron("0 3 * * *"))
        decision = decide("a", policy, History(utc(2024, 1, 1, 2, 30)), utc(2024, 1, 1, 2, 31))
        assert decision.next_run == utc(2024, 1, 1, 3)

    @pytest.mark.parametrize("text", ["0 3 * *", "61 3 * * *", "0 3 * * * Mars/Olympus"])
    def test_bad_expressions_are_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"cron|time zone"):
            parse_cron(text)


class TestWindow:
    """A due client waits for its window's next opening, right across DST changes."""

    berlin = "Mon-Fri 09:00-17:00 Europe/Berlin"

    def test_inside_the_window_runs_now(self) -> None:
        window = parse_window(self.berlin)
        now = utc(2024, 5, 2, 10)  # Thursday 12:00 CEST
        decision = decide("a", Policy(rotate_every=60, window=window),
                          History(utc(2024, 5, 1)), now)
        assert decision.runnable and decision.next_run == now

    def test_due_on_saturday_waits_for_monday_after_the_march_change(self) -> None:
        window = parse_window(self.berlin)
        # Sat 30 Mar 2024 (CET, +1); Mon 1 Apr is CEST (+2): 09:00 local is 07:00 UTC.
        now = utc(2024, 3, 30, 12)
        decision = decide("a", Policy(rotate_every=60, window=window),
                          History(utc(2024, 3, 29)), now)
        assert decision.due and not decision.runnable
        assert decision.next_run == utc(2024, 4, 1, 7)

    def test_due_on_saturday_waits_for_monday_after_the_october_change(self) -> None:
        window = parse_window(self.berlin)
        # Sat 26 Oct 2024 (CEST); Mon 28 Oct is CET (+1): 09:00 local is 08:00 UTC.
        decision = decide("a", Policy(rotate_every=60, window=window),
                          History(utc(2024, 10, 25)), utc(2024, 10, 26, 12))
        assert decision.next_run == utc(2024, 10, 28, 8)

    def test_a_window_spanning_the_spring_gap_closes_at_local_time(self) -> None:
        window = parse_window("Sun 01:00-04:00 Europe/Berlin")
        # 31 Mar 2024: 01:00 CET = 00:00 UTC, 04:00 CEST = 02:00 UTC: two real hours.
        assert window.contains(utc(2024, 3, 31, 0, 0))
        assert window.contains(utc(2024, 3, 31, 1, 59))
        assert not window.contains(utc(2024, 3, 31, 2, 0))

    def test_the_repeated_autumn_hour_is_inside_both_times(self) -> None:
        window = parse_window("Sun 02:00-03:00 Europe/Berlin")
        # 27 Oct 2024: 02:00-03:00 local happens twice (00:00-01:00 and 01:00-02:00 UTC).
        assert window.contains(utc(2024, 10, 27, 0, 30))
        assert window.contains(utc(2024, 10, 27, 1, 30))
        assert not window.contains(utc(2024, 10, 27, 2, 30))

    def test_a_window_past_midnight(self) -> None:
        window = parse_window("Fri 22:00-06:00")
        assert window.contains(utc(2024, 5, 4, 5))  # Saturday 05:00, opened Friday
        assert not window.contains(utc(2024, 5, 5, 5))  # Sunday 05:00
        assert window.next_opening(utc(2024, 5, 4, 7)) == utc(2024, 5, 10, 22)

    def test_every_day_by_default_and_day_lists(self) -> None:
        assert parse_window("00:00-24:00").contains(utc(2024, 5, 5, 23, 59))
        window = parse_window("Sat,Sun 10:00-11:00")
        assert window.days == frozenset({5, 6})
        assert parse_window("Fri-Mon 10:00-11:00").days == frozenset({4, 5, 6, 0})

    @pytest.mark.parametrize("text", ["Mon-Fri 9-17", "Xyz 09:00-10:00", "25:00-26:00",
                                      "09:00-09:00", "09:00-10:00 Not/AZone"])
    def test_bad_windows_are_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"window|day|time"):
            parse_window(text)


class TestJitter:
    """Jitter delays a due time by a stable amount within [0, jitter)."""

    def test_bounds_over_many_clients(self) -> None:
        base = utc(2024, 5, 1)
        offsets = [jitter_offset(f"client-{i}", base, 600) for i in range(500)]
        assert all(0 <= o < 600 for o in offsets)
        # spread, not bunched: both halves of the range are used
        assert any(o < 300 for o in offsets) and any(o >= 300 for o in offsets)

    def test_decide_applies_it_within_bounds(self) -> None:
        policy = Policy(rotate_every=3600, jitter=600)
        last = utc(2024, 5, 1)
        for i in range(50):
            run = decide(f"c{i}", policy, History(last), last).next_run
            assert run is not None
            assert utc(2024, 5, 1, 1) <= run < utc(2024, 5, 1, 1, 10)


class TestCatchUp:
    """Clients that fell due during downtime are spread over the catch-up period."""

    def test_spread_evenly_longest_overdue_first(self) -> None:
        start = utc(2024, 5, 1, 12)
        overdue = [(f"c{i}", utc(2024, 5, 1, 11, i)) for i in range(10)][::-1]
        slots = catch_up_slots(overdue, start, 600)
        assert slots["c0"] == start
        assert sorted(slots.values()) == [start + timedelta(seconds=60 * i) for i in range(10)]
        assert slots["c9"] == start + timedelta(seconds=540)

    def test_the_slot_holds_a_due_client_back(self) -> None:
        start = utc(2024, 5, 1, 12)
        history = History(utc(2024, 4, 1), not_before=start + timedelta(minutes=5))
        decision = decide("a", Policy(rotate_every=86400), history, start)
        assert decision.due and not decision.runnable
        assert decision.next_run == start + timedelta(minutes=5)


class TestBackoff:
    """Failures back off 1 h x 2^(n-1), capped, and a success resets them."""

    def test_growth_and_cap(self) -> None:
        assert [backoff_delay(n) / 3600 for n in range(1, 8)] == [1, 2, 4, 8, 16, 32, 32]
        assert backoff_delay(0) == 0
        assert backoff_delay(10_000, 60, 600) == 600

    def test_next_attempt_after_failures(self) -> None:
        failed = utc(2024, 5, 2, 10)
        history = History(utc(2024, 4, 1), failures=3, last_failure_at=failed)
        decision = decide("a", Policy(rotate_every=86400), history, utc(2024, 5, 2, 11))
        assert decision.next_attempt == utc(2024, 5, 2, 14)
        assert decision.due and not decision.runnable
        later = decide("a", Policy(rotate_every=86400), history, utc(2024, 5, 2, 14))
        assert later.runnable

    def test_reset_by_a_success(self) -> None:
        now = utc(2024, 5, 2, 11)
        decision = decide("a", Policy(rotate_every=86400), History(now), now)
        assert decision.next_attempt is None and not decision.due


class TestCondition:
    """Each client is in exactly one condition, by a fixed precedence."""

    @pytest.mark.parametrize(("flags", "expected"), [
        ({}, Condition.READY),
        ({"due": True}, Condition.DUE),
        ({"due": True, "awaiting_retirement": True}, Condition.AWAITING_RETIREMENT),
        ({"due": True, "failures": 2}, Condition.FAILING),
        ({"failures": 2, "blocked": True}, Condition.BLOCKED),
        ({"blocked": True, "rotating": True}, Condition.ROTATING),
    ])
    def test_precedence(self, flags: dict[str, object], expected: Condition) -> None:
        args: dict[str, object] = {"due": False, "rotating": False,
                                   "awaiting_retirement": False, "failures": 0,
                                   "blocked": False}
        args.update(flags)
        assert condition(**args) is expected  # type: ignore[arg-type]


class TestConfigKeys:
    """The scheduling keys are checked at load time, [defaults] fills them in."""

    def write(self, tmp_path: Path, extra: str, client_extra: str = "") -> Path:
        (tmp_path / "audit.key").write_text("k" * 32)
        (tmp_path / "audit.key").chmod(0o600)
        path = tmp_path / "rotator.toml"
        path.write_text(f"""
[audit]
file = "audit.jsonl"
key_file = "audit.key"
{extra}
[stores.env]
type = "env"
file = "creds.env"

[idps.kc]
type = "keycloak"
url = "https://sso.example.com"
realm = "r"
admin_client_id = "rotator"
admin_client_secret_env = "NOT_NEEDED_HERE"

[clients.a]
idp = "kc"
client_id = "a"
stores = [{{store = "env", prefix = "A"}}]
{client_extra}
""")
        return path

    def test_defaults_apply_unless_the_client_sets_its_own(self, tmp_path: Path) -> None:
        path = self.write(tmp_path, """
[defaults]
rotate_every = "7d"
window = "Mon-Fri 09:00-17:00 Europe/Berlin"
jitter = "10m"

[daemon]
workers = 3
catch_up = "1h"
""", 'jitter = "1m"\nschedule = "0 3 * * mon Europe/Berlin"')
        config = load_config(path, {"NOT_NEEDED_HERE": "not-needed-" + "0123456789abcdef"})
        client = config.clients["a"]
        assert client.rotate_every == 7 * 86400
        assert client.window == "Mon-Fri 09:00-17:00 Europe/Berlin"
        assert client.jitter == 60 and client.schedule == "0 3 * * mon Europe/Berlin"
        assert config.daemon.workers == 3 and config.daemon.catch_up == 3600

    def test_every_bad_key_is_reported_at_once(self, tmp_path: Path) -> None:
        path = self.write(tmp_path, """
[defaults]
window = "weekdays"
verify_attempts = 3

[daemon]
workers = 0
""", 'schedule = "0 3 * *"\njitter = "soon"')
        with pytest.raises(ConfigError) as info:
            load_config(path, {"NOT_NEEDED_HERE": "not-needed-" + "0123456789abcdef"})
        keys = {p.key for p in info.value.problems}
        assert {"defaults.window", "defaults.verify_attempts", "daemon.workers",
                "clients.a.schedule", "clients.a.jitter"} <= keys
