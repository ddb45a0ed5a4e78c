"""The audit file sink's system calls per batch, counted (no timing): what a durable,
chained event costs the kernel is a fixed budget per group commit, whatever the batch holds,
and an event never costs the redactor more work for more live secrets."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rotator import secrets as rotator_secrets
from rotator.audit import AuditLog, sinks
from rotator.audit.chain import Checkpoint, chain_key, checkpoint_path, unseal, verify
from rotator.secrets import Secret, generate_secret

KEY = "s" * 32
#: One batch: the log locked and unlocked, its path stat'ed (a move by logrotate), one
#: write, one sync; the checkpoint beside it locked, read and written in place, unlocked.
PER_BATCH = Counter({"flock": 4, "stat": 1, "write": 1, "sync": 1, "pread": 1, "pwrite": 1})


class _Counted:
    """Stands in for ``os`` or ``fcntl`` in the sink's module: counts the calls it makes."""

    def __init__(self, real: Any, names: tuple[str, ...], calls: Counter[str]) -> None:
        self._real, self._names, self._calls = real, names, calls

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._real, name)
        if name not in self._names:
            return real

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] += 1
            return real(*args, **kwargs)
        return counted


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The sink's system calls from now on, by name (``sync`` for fdatasync)."""
    counted: Counter[str] = Counter()
    monkeypatch.setattr(sinks, "os", _Counted(os, ("stat", "write", "pread", "pwrite",
                                                    "fstat", "open"), counted))
    monkeypatch.setattr(sinks, "fcntl", SimpleNamespace(
        flock=_Counted(fcntl, ("flock",), counted).flock, LOCK_EX=fcntl.LOCK_EX,
        LOCK_UN=fcntl.LOCK_UN))
    real_sync = sinks._sync

    def sync(fd: int) -> None:
        counted["sync"] += 1
        real_sync(fd)

    monkeypatch.setattr(sinks, "_sync", sync)
    return counted


def _until(condition: Callable[[], bool]) -> None:
    """Wait for a state other threads reach; fail after a generous bound (not a timing)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the writers never reached the expected state"
        time.sleep(0.001)


def _verifies(file: Path, count: int) -> None:
    assert verify(chain_key(KEY.encode()), [file], Checkpoint.load(checkpoint_path(file))) \
        == (None, count)


class TestSystemCallsPerBatch:
    """A batch costs four locks, one stat, one write, one sync and one checkpoint read and
    write (none when a later batch recorded one first), however many events it carries."""

    def test_one_event_per_batch(self, tmp_path: Path, calls: Counter[str]) -> None:
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        log.event("rotation_step", step="first")  # catches up with the file: one more read
        calls.clear()
        for n in range(10):
            log.event("rotation_step", step=f"s{n}")
        assert calls == Counter({name: 10 * count for name, count in PER_BATCH.items()})
        log.close()
        _verifies(file, 11)

    def test_many_events_one_batch(self, tmp_path: Path, calls: Counter[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        sink = log._sinks[0]
        assert isinstance(sink, sinks.FileSink)
        log.event("rotation_step", step="first")
        gate, held = threading.Event(), []
        counting_sync = sinks._sync

        def held_sync(fd: int) -> None:
            held.append(fd)
            gate.wait()
            counting_sync(fd)

        monkeypatch.setattr(sinks, "_sync", held_sync)
        calls.clear()
        threads = [threading.Thread(target=log.event, args=("rotation_step",),
                                    kwargs={"step": f"w{n}"}, daemon=True) for n in range(8)]
        for t in threads:
            t.start()
        try:  # two batches held in their syncs; the other six events queued as the third
            _until(lambda: len(held) == sinks._MAX_SYNCS and len(sink._open.lines)
                   + len(file.read_text().splitlines()) == 9)
        finally:
            gate.set()
        for t in threads:
            t.join(timeout=30)  # a bound for a hang, not a measured time
        batches = sink.batches - 1
        assert batches == sinks._MAX_SYNCS + 1
        # A checkpoint a later batch already recorded is not written again.
        checkpoints = calls["pwrite"]
        assert 1 <= checkpoints <= batches
        assert calls == Counter({"flock": 2 * batches + 2 * checkpoints, "stat": batches,
                                 "write": batches, "sync": batches, "pread": checkpoints,
                                 "pwrite": checkpoints})
        log.close()
        _verifies(file, 9)


class TestRedactionWorkIsFlat:
    """Redacting an audit line takes as many gram lookups with 10,000 live secrets as with
    one: the count of keyed grams probed depends on the line's length alone."""

    def test_probes_do_not_grow_with_secrets(self, monkeypatch: pytest.MonkeyPatch) -> None:
        redactor = rotator_secrets._Redactor()
        monkeypatch.setattr(rotator_secrets, "_REDACTOR", redactor)
        line = '{"rotator":{"step":"stage","store":"bao","client":"c1"}}' * 8
        looked_up: list[int] = []
        real_grams = rotator_secrets._grams

        def counted_grams(count: int) -> Any:
            looked_up.append(count)
            return real_grams(count)

        monkeypatch.setattr(rotator_secrets, "_grams", counted_grams)
        digests: list[bytes] = []
        real_digest = redactor._digest

        def counted_digest(data: bytes) -> bytes:
            digests.append(data)
            return real_digest(data)

        keep = [generate_secret()]
        rotator_secrets.redact("")  # registers the secret's forms
        monkeypatch.setattr(redactor, "_digest", counted_digest)
        rotator_secrets.redact(line)
        few = list(looked_up)
        keep += [generate_secret() for _ in range(10_000)]
        rotator_secrets.redact("")
        looked_up.clear()
        digests.clear()
        assert rotator_secrets.redact(line) == line
        assert looked_up == few == [len(line) // 8]
        assert not digests  # no gram of the line is known: nothing digested either way
        assert keep[-1].reveal() not in rotator_secrets.redact(f"x {keep[-1].reveal()} y")


class TestCheckpointOncePerBurst:
    """While later batches are appended or queued, a batch leaves the checkpoint to the last
    of them (within ``_CHECKPOINT_EVERY``); the last one records it, and so does a batch that
    follows one whose sync failed: an idle log's checkpoint is its last durable record."""

    def _three_batches(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       fail_last: bool) -> tuple[AuditLog, Path, list[threading.Thread]]:
        monkeypatch.setattr(sinks, "_CHECKPOINT_EVERY", 3600.0)  # only the burst's end
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        sink = log._sinks[0]
        assert isinstance(sink, sinks.FileSink)
        log.event("rotation_step", step="first")  # recorded: nothing followed it
        gates = [threading.Event() for _ in range(3)]
        held: list[int] = []
        counting_sync = sinks._sync

        def held_sync(fd: int) -> None:
            batch = len(held)
            held.append(fd)
            gates[batch].wait()
            if fail_last and batch == 2:
                raise OSError(5, "Input/output error")
            counting_sync(fd)

        monkeypatch.setattr(sinks, "_sync", held_sync)

        def write(step: str) -> None:
            with contextlib.suppress(sinks.AuditWriteError):
                log.event("rotation_step", step=step)

        threads = [threading.Thread(target=write, args=(f"w{n}",), daemon=True)
                   for n in range(8)]
        threads[0].start()
        _until(lambda: len(held) == 1)
        threads[1].start()
        _until(lambda: len(held) == 2)
        for t in threads[2:]:
            t.start()
        _until(lambda: len(sink._open.lines) == 6)
        gates[0].set()  # the first batch ends while the second syncs: not recorded
        threads[0].join(timeout=30)  # a bound for a hang, not a measured time
        _until(lambda: len(held) == 3)  # the six went as the third batch
        gates[1].set()  # the second ends while the third syncs: not recorded
        threads[1].join(timeout=30)
        gates[2].set()
        for t in threads[2:]:
            t.join(timeout=30)
        return log, file, threads

    def test_the_last_batch_records_it(self, tmp_path: Path, calls: Counter[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        log, file, _ = self._three_batches(tmp_path, monkeypatch, fail_last=False)
        assert calls["pwrite"] == 2  # the first event's, then the third batch's
        log.close()
        assert calls["pwrite"] == 2
        _verifies(file, 9)

    def test_after_a_failed_sync_the_last_durable_record(self, tmp_path: Path,
                                                         calls: Counter[str],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
        log, file, _ = self._three_batches(tmp_path, monkeypatch, fail_last=True)
        assert calls["pwrite"] == 2  # the first event's, then the second batch's
        log.close()
        assert Checkpoint.load(checkpoint_path(file)) == Checkpoint(3, _chain_at(file, 3))


def _chain_at(file: Path, seq: int) -> str:
    for line in file.read_text().splitlines():
        sealed = unseal(line)
        if sealed is not None and sealed[0] == seq:
            return sealed[1]
    raise AssertionError(f"no record with seq {seq}")
