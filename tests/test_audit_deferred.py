"""A rotation's audit events, appended at once and synced per step (``AuditLog.deferred``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from rotator.audit import AuditLog, AuditWriteError, sinks
from rotator.secrets import Secret


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(Secret(secrets.token_hex(16)), file=tmp_path / "audit" / "audit.jsonl")
    yield audit
    audit.close()


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []

    def sync(fd: int) -> None:
        seen.append(fd)
        os.fdatasync(fd)

    monkeypatch.setattr(sinks, "_sync", sync)
    return seen


def _event(log: AuditLog) -> None:
    log.event("secret_staged", step="stage", store="s", outcome="success", duration_ms=1)


class TestDurableBesideTheCommit:
    """The deferred events of a step are synced once, with the step's commit, whatever fails."""

    def test_one_sync_for_the_step(self, log: AuditLog, syncs: list[int]) -> None:
        with log.deferred():
            _event(log)
            _event(log)
            assert syncs == []
            assert log.durable(lambda: "committed") == "committed"
            assert len(syncs) == 1
            assert log.durable(lambda: "nothing pending") == "nothing pending"
        assert len(syncs) == 1

    def test_the_commits_failure_is_raised_after_the_sync(self, log: AuditLog,
                                                          syncs: list[int]) -> None:
        def commit() -> None:
            raise RuntimeError("journal refused")

        with log.deferred():
            _event(log)
            with pytest.raises(RuntimeError, match="journal refused"):
                log.durable(commit)
            assert len(syncs) == 1

    def test_a_failed_sync_stops_the_step(self, log: AuditLog,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(sinks, "_sync", broken)
        committed: list[bool] = []
        with log.deferred():
            _event(log)
            with pytest.raises(AuditWriteError):
                log.durable(lambda: committed.append(True))
        assert committed == [True]


class TestImmediateInsideDeferred:
    """Hooks and alerts inside a rotation keep one durable write per event."""

    def test_each_event_synced(self, log: AuditLog, syncs: list[int]) -> None:
        with log.deferred():
            _event(log)
            with log.immediate():
                assert len(syncs) == 1  # what was deferred first
                _event(log)
                _event(log)
                assert len(syncs) == 3
            _event(log)
            assert len(syncs) == 3
        assert len(syncs) == 4
