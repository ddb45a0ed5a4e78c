"""Group commit in the audit file sink, proved by counting syncs (no timing)."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rotator.audit import AuditLog, AuditWriteError, sinks
from rotator.audit.chain import Checkpoint, chain_key, checkpoint_path, unseal, verify
from rotator.secrets import Secret

KEY = "g" * 32
WRITERS = 8


def _until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a state other threads reach); fail after a generous bound."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the writers never reached the expected state"
        time.sleep(0.001)


def _last_chain(file: Path) -> str:
    sealed = unseal(file.read_text().splitlines()[-1])
    assert sealed is not None
    return sealed[1]


def _records(file: Path) -> int:
    return len(file.read_text().splitlines()) if file.exists() else 0


class TestConcurrentEventsShareASync:
    """Events that arrive while the most syncs are in flight wait, go as one batch with one
    sync, and no writer returns before the sync covering its event has returned."""

    def test_eight_writers_three_syncs(self, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        gate, syncs = threading.Event(), []

        def held_sync(fd: int) -> None:
            syncs.append(fd)
            gate.wait()

        monkeypatch.setattr(sinks, "_sync", held_sync)
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        sink = log._sinks[0]
        assert isinstance(sink, sinks.FileSink)
        returned = []

        def writer(n: int) -> None:
            log.event("rotation_step", step=f"w{n}")
            returned.append(n)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for t in threads:
            t.start()
        # Two batches appended and held in their syncs; every other event queued behind.
        _until(lambda: len(syncs) == sinks._MAX_SYNCS
               and _records(file) + len(sink._open.lines) == WRITERS)
        assert returned == []  # nothing is acknowledged before its sync returns
        assert checkpoint_path(file).read_text() == ""  # nor checkpointed
        gate.set()
        for t in threads:
            t.join()
        log.close()
        assert sorted(returned) == list(range(WRITERS))
        assert len(syncs) == sinks._MAX_SYNCS + 1  # the queued six went as one batch
        problem, count = verify(chain_key(KEY.encode()), [file],
                                Checkpoint.load(checkpoint_path(file)))
        assert (problem, count) == (None, WRITERS)
        assert Checkpoint.load(checkpoint_path(file)) == Checkpoint(
            WRITERS, _last_chain(file))


class TestFailedSync:
    """A sync that fails fails the events of its batch with AuditWriteError, and the log
    goes on with the next event."""

    def test_failed_sync_raises_then_recovers(self, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        calls = []

        def failing_once(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 1:
                raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(sinks, "_sync", failing_once)
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        with pytest.raises(AuditWriteError, match="Input/output error"):
            log.event("rotation_step", step="lost")
        log.event("rotation_step", step="kept")
        log.close()
        assert len(calls) == 2
        assert Checkpoint.load(checkpoint_path(file)) == Checkpoint(
            2, _last_chain(file))


class TestInterruptedCommit:
    """A Ctrl-C in the thread that leads a batch reaches that thread; the other writers of
    the batch hear AuditWriteError (their events are not on disk), none of them waits for
    ever, and the log goes on with the next event."""

    @staticmethod
    def _log(tmp_path: Path) -> tuple[AuditLog, sinks.FileSink, Path]:
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        sink = log._sinks[0]
        assert isinstance(sink, sinks.FileSink)
        return log, sink, file

    @staticmethod
    def _finished(target: Callable[[], None]) -> None:
        """Run ``target`` in a thread of its own; fail if it hangs (a bound, not a time)."""
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the writer never returned"

    def test_interrupted_sync_then_the_log_goes_on(self, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[int] = []
        real_sync = sinks._sync

        def interrupted_once(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 1:
                raise KeyboardInterrupt
            real_sync(fd)

        monkeypatch.setattr(sinks, "_sync", interrupted_once)
        log, _, file = self._log(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            log.event("rotation_step", step="interrupted")
        self._finished(lambda: log.event("rotation_step", step="after"))
        self._finished(log.close)
        assert len(calls) == 2
        problem, count = verify(chain_key(KEY.encode()), [file],
                                Checkpoint.load(checkpoint_path(file)))
        assert (problem, count) == (None, 2)

    def test_interrupted_append_fails_the_other_writers(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        gate, syncs = threading.Event(), []
        real_sync = sinks._sync

        def held_sync(fd: int) -> None:
            syncs.append(fd)
            gate.wait()
            real_sync(fd)

        monkeypatch.setattr(sinks, "_sync", held_sync)
        log, sink, file = self._log(tmp_path)
        appends = []
        real_append = sink._append

        def append(lines: list[str]) -> tuple[int, Checkpoint | None]:
            appends.append(len(lines))
            if len(appends) == sinks._MAX_SYNCS + 1:  # the batch queued behind the syncs
                raise KeyboardInterrupt
            return real_append(lines)

        monkeypatch.setattr(sink, "_append", append)
        outcomes: dict[int, str] = {}

        def writer(n: int) -> None:
            try:
                log.event("rotation_step", step=f"w{n}")
                outcomes[n] = "written"
            except KeyboardInterrupt:
                outcomes[n] = "interrupted"
            except AuditWriteError as exc:
                outcomes[n] = "failed: " + str(exc)

        threads = [threading.Thread(target=writer, args=(n,), daemon=True)
                   for n in range(WRITERS)]
        for t in threads:
            t.start()
        _until(lambda: len(syncs) == sinks._MAX_SYNCS
               and _records(file) + len(sink._open.lines) == WRITERS)
        gate.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a writer of the interrupted batch waits for ever"
        queued = WRITERS - sinks._MAX_SYNCS
        assert appends == [1] * sinks._MAX_SYNCS + [queued]
        results = sorted(outcomes.values())
        assert results.count("written") == sinks._MAX_SYNCS
        assert results.count("interrupted") == 1  # the leader of the queued batch
        failed = [r for r in results if r.startswith("failed")]
        assert len(failed) == queued - 1 and all("interrupted" in r for r in failed)
        self._finished(lambda: log.event("rotation_step", step="after"))
        self._finished(log.close)
        problem, count = verify(chain_key(KEY.encode()), [file],
                                Checkpoint.load(checkpoint_path(file)))
        assert (problem, count) == (None, sinks._MAX_SYNCS + 1)


class TestReopenInPlace:
    """A reopen asked for (SIGHUP) while the log was not moved goes on writing the same file:
    the next event is written, and close() returns."""

    def test_event_after_reopen_of_an_unmoved_log(self, tmp_path: Path) -> None:
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        log.event("rotation_step", step="before")
        log.reopen()  # SIGHUP, nothing moved
        writer = threading.Thread(target=log.event, args=("rotation_step",),
                                  kwargs={"step": "after"}, daemon=True)
        writer.start()
        writer.join(timeout=30)  # a bound for a hang, not a measured time
        assert not writer.is_alive(), "the event after the reopen never finished"
        log.close()
        problem, count = verify(chain_key(KEY.encode()), [file],
                                Checkpoint.load(checkpoint_path(file)))
        assert (problem, count) == (None, 2)


class TestNoWriterReturnsBeforeItsSync:
    """Eight writers logging freely share syncs (fewer syncs than events), and every event
    returns only once a sync that covers its line, every byte up to its end, has returned."""

    def test_each_return_covered_by_a_finished_sync(self, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        per_writer = 40
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        sink = log._sinks[0]
        assert isinstance(sink, sinks.FileSink)
        real_sync = sinks._sync
        state = {"durable": 0, "syncs": 0}  # bytes every finished sync covers, sync count
        mutex = threading.Lock()

        def counted_sync(fd: int) -> None:
            with mutex:
                state["syncs"] += 1
                first = state["syncs"] <= sinks._MAX_SYNCS
            if first:  # every writer's first event in these syncs or queued behind them
                # (at least: once one held sync has seen it, writers move on and the
                # other may look only after their next events arrived)
                _until(lambda: _records(file) + len(sink._open.lines) >= WRITERS)
            covers = os.fstat(fd).st_size  # appended before the sync: all of it is covered
            real_sync(fd)
            with mutex:
                state["durable"] = max(state["durable"], covers)

        monkeypatch.setattr(sinks, "_sync", counted_sync)
        early: list[str] = []

        def writer(n: int) -> None:
            for i in range(per_writer):
                step = f"w{n}-{i}"
                log.event("rotation_step", step=step)
                with mutex:
                    durable = state["durable"]
                data = file.read_bytes()
                end = data.index(b"\n", data.index(f'"step":"{step}"'.encode())) + 1
                if end > durable:
                    early.append(step)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log.close()
        events = WRITERS * per_writer
        assert early == []  # no event returned before a finished sync covered it
        assert state["syncs"] == sink.batches
        # The first eight events went with at most one sync more than those held.
        assert state["syncs"] <= events - (WRITERS - sinks._MAX_SYNCS - 1)
        problem, count = verify(chain_key(KEY.encode()), [file],
                                Checkpoint.load(checkpoint_path(file)))
        assert (problem, count) == (None, events)

