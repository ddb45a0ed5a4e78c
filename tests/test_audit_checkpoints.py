"""Checkpoints of the audit chain kept in the journal, apart from the log: a tail truncated
together with the checkpoint file beside the log is still detected."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_cli import AUDIT_VAR, Setup, setup  # noqa: F401 - the fixture

from rotator.audit import AuditLog
from rotator.audit.chain import Checkpoint, chain_key, checkpoint_path, verify
from rotator.audit.checkpoints import CheckpointRecorder, key_id, log_id
from rotator.config import load_config
from rotator.errors import RotationError
from rotator.interfaces import AuditCheckpoint
from rotator.interfaces import Journal as JournalProtocol
from rotator.journal import SqliteJournal
from rotator.journal.sqlite import SCHEMA_VERSION
from rotator.secrets import Secret

KEY = "k" * 32
KEY_ID = key_id(KEY.encode())


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    journal = SqliteJournal(tmp_path / "state")
    yield journal
    journal.close()


def _write(file: Path, journal: JournalProtocol, count: int, **every: float) -> AuditLog:
    """``count`` events, one group commit each, with checkpoints recorded in ``journal``;
    the log is returned open (close it to record the last checkpoint)."""
    log = AuditLog(Secret(KEY), file=file)
    log.record_checkpoints(journal, **every)  # type: ignore[arg-type]
    for i in range(count):
        log.event("rotation_step", step=f"s{i}", outcome="success")
    return log


def _kept(journal: JournalProtocol, file: Path) -> list[AuditCheckpoint]:
    return journal.audit_checkpoints(log_id(file), KEY_ID)


def _verify(file: Path, journal: JournalProtocol) -> str | None:
    kept = [Checkpoint(c.seq, c.chain) for c in _kept(journal, file)]
    problem, _ = verify(chain_key(KEY.encode()), [file],
                        Checkpoint.load(checkpoint_path(file)), kept)
    return problem.what if problem else None


def _truncate(file: Path, keep: int) -> None:
    """Cut the log to its first ``keep`` records and roll the checkpoint file back to match,
    as someone who can write both would."""
    lines = file.read_text().splitlines(keepends=True)[:keep]
    file.write_text("".join(lines))
    problem, _ = verify(chain_key(KEY.encode()), [file])
    assert problem is None
    last = lines[-1]
    seq = int(last.rsplit('"seq":', 1)[1].split(",", 1)[0])
    chain = last.rsplit('"chain":"', 1)[1][:64]
    checkpoint_path(file).write_text(Checkpoint(seq, chain).dumps())


class TestTruncationThroughTheJournal:
    """A tail cut together with the checkpoint file beside the log is reported through the
    journal's checkpoints; an intact log verifies against them."""

    def test_intact_log_verifies(self, tmp_path: Path, journal: SqliteJournal) -> None:
        file = tmp_path / "audit.jsonl"
        _write(file, journal, 25, every_records=10).close()
        kept = _kept(journal, file)
        assert kept and kept[-1].seq == 25
        assert _verify(file, journal) is None

    def test_truncated_tail_and_rolled_back_checkpoint(self, tmp_path: Path,
                                                       journal: SqliteJournal) -> None:
        file = tmp_path / "audit.jsonl"
        _write(file, journal, 25, every_records=10).close()
        _truncate(file, 18)
        # the checkpoint beside the log no longer tells ...
        problem, _ = verify(chain_key(KEY.encode()), [file],
                            Checkpoint.load(checkpoint_path(file)))
        assert problem is None
        # ... the journal does
        what = _verify(file, journal)
        assert what is not None and "tail truncated" in what and "journal" in what
        assert "ends at seq 18" in what and "seq 25" in what

    def test_rewritten_log_differs_from_a_checkpoint(self, tmp_path: Path,
                                                     journal: SqliteJournal) -> None:
        file = tmp_path / "audit.jsonl"
        _write(file, journal, 12, every_records=5).close()
        first = _kept(journal, file)[0]
        file.unlink()
        checkpoint_path(file).unlink()
        fresh = AuditLog(Secret(KEY), file=file)  # a new chain from seq 1 at the same path
        for i in range(12):
            fresh.event("rotation_step", step=f"x{i}", outcome="success")
        fresh.close()
        what = _verify(file, journal)
        assert what is not None and f"seq {first.seq} does not match" in what

    def test_cli_reports_it_with_journal(self, setup: Setup) -> None:  # noqa: F811
        setup.write()
        file = setup.dir / "audit.jsonl"
        for _ in range(3):  # each command writes events, and a checkpoint when it ends
            code, _, err = setup.cli("verify", "app")
            assert code != 2, err
        code, out, _ = setup.cli("audit", "verify", str(file), "--journal")
        assert code == 0 and "and the journal's seq" in out, out
        lines = file.read_text().splitlines(keepends=True)
        assert len(lines) >= 2
        file.write_text("".join(lines[:1]))
        checkpoint_path(file).unlink()
        key = Secret(os.environ[AUDIT_VAR])
        code, out, _ = setup.cli("audit", "verify", str(file))
        assert code == 0, out  # without the journal the cut is not seen
        code, out, _ = setup.cli("audit", "verify", str(file), "--journal")
        assert code == 1 and out.startswith(f"TAMPERED {file}:1: tail truncated"), out
        assert "journal's checkpoint" in out
        journal = SqliteJournal(load_config(setup.config).state_dir)
        try:
            kept = journal.audit_checkpoints(log_id(file), key_id(key.reveal().encode()))
        finally:
            journal.close()
        assert kept[-1].seq == len(lines)


class TestAtMostOncePerPeriod:
    """A checkpoint is written at most once per N records or T seconds, and once at close."""

    def test_every_n_records(self, tmp_path: Path, journal: SqliteJournal) -> None:
        file = tmp_path / "audit.jsonl"
        _write(file, journal, 95, every_records=10, every_seconds=1e9).close()
        seqs = [c.seq for c in _kept(journal, file)]
        assert seqs[-1] == 95  # the close records the last commit
        assert len(seqs) <= 95 // 10 + 1
        gaps = [b - a for a, b in zip([0, *seqs[:-2]], seqs[:-1], strict=True)]
        assert all(gap >= 10 for gap in gaps), seqs

    def test_every_t_seconds(self, tmp_path: Path, journal: SqliteJournal) -> None:
        now = [0.0]
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        [recorder] = log.record_checkpoints(journal, every_records=10**9, every_seconds=60.0,
                                            clock=lambda: now[0])
        for i in range(300):  # one event every 2 s: 600 s, at most 10 periods
            now[0] += 2.0
            log.event("rotation_step", step=f"s{i}", outcome="success")
        log.close()
        seqs = [c.seq for c in _kept(journal, file)]
        assert seqs[-1] == 300 and recorder.written == len(seqs)
        assert len(seqs) <= 600 // 60 + 1
        assert all(b - a >= 29 for a, b in zip([0, *seqs[:-2]], seqs[:-1], strict=True)), seqs

    def test_no_records_no_checkpoint(self, tmp_path: Path, journal: SqliteJournal) -> None:
        file = tmp_path / "audit.jsonl"
        _write(file, journal, 0).close()
        assert _kept(journal, file) == []


class _FailingJournal:
    """A journal whose checkpoint writes fail, and count."""

    def __init__(self) -> None:
        self.calls = 0

    def record_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        self.calls += 1
        raise RotationError("rotation journal: database is locked")

    def audit_checkpoints(self, log: str, key: str) -> list[AuditCheckpoint]:
        return []


class TestJournalFailureBlocksNothing:
    """A journal that cannot be written is logged and counted; every audit record is still
    written and the log verifies."""

    def test_failures_are_counted(self, tmp_path: Path) -> None:
        file = tmp_path / "audit.jsonl"
        failing = _FailingJournal()
        log = AuditLog(Secret(KEY), file=file)
        [recorder] = log.record_checkpoints(failing, every_records=5)  # type: ignore[arg-type]
        for i in range(23):
            log.event("rotation_step", step=f"s{i}", outcome="success")
        log.close()
        assert recorder.failures == failing.calls >= 1 and recorder.written == 0
        problem, count = verify(chain_key(KEY.encode()), [file],
                                Checkpoint.load(checkpoint_path(file)))
        assert problem is None and count == 23

    def test_failures_are_a_metric(self, tmp_path: Path) -> None:
        from rotator.daemon.metrics import Metrics

        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        [recorder] = log.record_checkpoints(_FailingJournal(),  # type: ignore[arg-type]
                                            every_records=5)
        for i in range(12):
            log.event("rotation_step", step=f"s{i}", outcome="success")
        log.stop_checkpoints()  # the counts are final
        try:
            text = Metrics().render()[0].decode()
        finally:
            log.close()
        label = f'{{log="{log_id(file)}"}}'
        assert recorder.failures >= 1
        assert f"rotator_audit_checkpoint_failures_total{label} {recorder.failures}.0" in text
        assert f"rotator_audit_checkpoints_total{label} 0.0" in text

    def test_a_journal_that_hangs_does_not_hold_up_writing(self, tmp_path: Path) -> None:
        release = threading.Event()

        class Hanging(_FailingJournal):
            def record_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
                self.calls += 1
                release.wait()

        hanging = Hanging()
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        log.record_checkpoints(hanging, every_records=1)  # type: ignore[arg-type]
        for i in range(50):  # the checkpoint thread is stuck from the first commit on
            log.event("rotation_step", step=f"s{i}", outcome="success")
        assert len(file.read_text().splitlines()) == 50
        release.set()
        log.close()
        assert 1 <= hanging.calls <= 2  # the stuck one, then the last commit at close


class TestJournalTable:
    """The journal keeps checkpoints per log and key, in seq order, the first one of a seq."""

    def test_round_trip(self, journal: SqliteJournal) -> None:
        at = datetime(2026, 11, 29, tzinfo=UTC)
        for seq in (20, 10):
            journal.record_audit_checkpoint(AuditCheckpoint("/l", "k1", seq, "a" * 64, at))
        journal.record_audit_checkpoint(AuditCheckpoint("/l", "k1", 10, "b" * 64, at))
        journal.record_audit_checkpoint(AuditCheckpoint("/l", "k2", 30, "c" * 64, at))
        journal.record_audit_checkpoint(AuditCheckpoint("/m", "k1", 40, "d" * 64, at))
        kept = journal.audit_checkpoints("/l", "k1")
        assert [(c.seq, c.chain, c.at) for c in kept] == [(10, "a" * 64, at),
                                                           (20, "a" * 64, at)]

    def test_a_version_1_journal_gains_the_table(self, tmp_path: Path) -> None:
        SqliteJournal(tmp_path / "state").close()
        db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
        db.execute("DROP TABLE audit_checkpoints")
        db.execute("PRAGMA user_version = 1")
        db.close()
        journal = SqliteJournal(tmp_path / "state")
        try:
            assert journal._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert journal.audit_checkpoints("/l", "k") == []
        finally:
            journal.close()


def test_recorder_is_idle_without_commits(journal: SqliteJournal) -> None:
    recorder = CheckpointRecorder(journal, "/l", "k")
    recorder.close()
    assert recorder.written == 0 and journal.audit_checkpoints("/l", "k") == []
