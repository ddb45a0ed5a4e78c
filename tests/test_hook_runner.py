"""The hook runner (rotator.hooks.runner) on a real SQLite journal with fake hook kinds:
runs recorded per rotation and stage, backoff between rounds, at-least-once after a crash,
superseded runs no longer retried, and the journal's hook-run methods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rotator.audit import AuditLog
from rotator.hooks.config import HookConfig
from rotator.hooks.kinds import HookFailed
from rotator.hooks.runner import FIRST_RETRY_DELAY, HookRunner
from rotator.interfaces import HookRun, State
from rotator.journal import SqliteJournal
from rotator.secrets import Secret

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOOK = HookConfig(name="probe", kind="fake", on=("promoted",), required=True, timeout=5.0,
                  attempts=2, backoff=1.0)


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.now = T0
        self.journal = SqliteJournal(tmp_path / "state")
        self.audit = AuditLog(Secret("k" * 40), file=tmp_path / "audit.jsonl")
        self.calls: list[dict[str, Any]] = []
        self.fail = True
        self.sleeps: list[float] = []
        self.client = SimpleNamespace(name="a", client_id="a-id", hooks=(HOOK,))
        self.runner = HookRunner({"a": self.client}, self.journal, self.audit,
                                 clock=lambda: self.now, sleep=self.sleeps.append,
                                 runners={"fake": self.run})

    def run(self, hook: HookConfig, event: Any) -> None:
        self.calls.append(dict(event))
        if self.fail:
            raise HookFailed("not ready")

    def promoted(self, rid: str, at: datetime) -> Any:
        self.journal.begin(rid, "a", "overlap", "cli", "fp-old", at)
        return self.journal.advance(rid, State.PROMOTED, at, expected=State.STARTED,
                                    retire_after=at.isoformat())


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = Env(tmp_path)
    yield e
    e.journal.close()
    e.audit.close()


class TestRounds:
    """A failing hook is tried `attempts` times, then again from its retry time, doubling."""

    def test_backoff(self, env: Env) -> None:
        rotation = env.promoted("r-1", T0)
        env.runner.run_due(env.client, rotation)
        assert [c["attempt"] for c in env.calls] == [1, 2]
        assert env.sleeps == [1.0]
        [run] = env.journal.hook_runs("r-1")
        assert (run.status, run.attempts) == ("failed", 2)
        assert run.next_attempt_at == T0 + timedelta(seconds=FIRST_RETRY_DELAY)
        assert env.runner.holds(env.client, rotation) is not None
        env.runner.run_due(env.client, rotation)  # not yet
        assert len(env.calls) == 2
        env.now = run.next_attempt_at
        env.runner.run_due(env.client, rotation)
        [run] = env.journal.hook_runs("r-1")
        assert run.attempts == 4
        assert run.next_attempt_at == env.now + timedelta(seconds=2 * FIRST_RETRY_DELAY)
        env.fail = False
        env.runner.run_due(env.client, rotation, force=True)
        [run] = env.journal.hook_runs("r-1")
        assert (run.status, run.attempts) == ("succeeded", 5)
        assert env.runner.holds(env.client, rotation) is None
        env.runner.run_due(env.client, rotation, force=True)
        assert len(env.calls) == 5
        assert {c["event_id"] for c in env.calls} == {"r-1.promoted.probe"}


class TestCrashDuringAttempt:
    """An attempt a crash cut short (left `running`) is run again: at least once."""

    def test_running_is_rerun(self, env: Env) -> None:
        rotation = env.promoted("r-1", T0)
        env.journal.record_hook_run(HookRun("r-1", "a", "promoted", "probe", "running", 1,
                                            True, T0))
        env.fail = False
        env.runner.run_due(env.client, rotation)
        assert [c["attempt"] for c in env.calls] == [2]
        assert env.journal.unfinished_hook_runs() == []


class TestSuperseded:
    """Once a newer rotation is current, the sweep stops retrying an older one's hook."""

    def test_not_retried(self, env: Env) -> None:
        env.runner.run_due(env.client, env.promoted("r-1", T0))
        env.journal.advance("r-1", State.COMPLETED, T0, expected=State.PROMOTED)
        env.promoted("r-2", T0 + timedelta(seconds=1))
        env.now = T0 + timedelta(hours=2)
        calls = len(env.calls)
        assert env.runner.retry_due() == 0
        assert len(env.calls) == calls
        assert [r.status for r in env.journal.hook_runs("r-1")] == ["superseded"]
        assert env.journal.unfinished_hook_runs() == []


class TestJournalHookRuns:
    """The journal keeps one record per (rotation, stage, hook), in first-recorded order."""

    def test_upsert_and_queue(self, env: Env) -> None:
        j = env.journal
        for hook, status in (("x", "running"), ("y", "failed"), ("x", "succeeded")):
            j.record_hook_run(HookRun("r-1", "a", "promoted", hook, status, 1, False, T0,
                                      error="token=abc" if status == "failed" else None))
        assert [(r.hook, r.status) for r in j.hook_runs("r-1")] == [("x", "succeeded"),
                                                                     ("y", "failed")]
        assert [r.hook for r in j.unfinished_hook_runs()] == ["y"]
        assert j.hook_runs("r-other") == []
