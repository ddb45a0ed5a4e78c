"""Checkpoints of the audit chain kept apart from the log: in the rotation journal.

The checkpoint file beside the log (``audit.jsonl.checkpoint``) reveals a truncated tail only
to someone who cannot also roll that file back. So every file log's writer also records, now
and then, where its chain stands (log path, audit key id, ``seq``, chain value, time) in the
journal (:meth:`rotator.interfaces.Journal.record_audit_checkpoint`), which lives elsewhere
(another directory, or a PostgreSQL server) and is written by other code paths.
``rotator audit verify --journal`` then reports a log that ends before, or differs at, any of
those checkpoints.

When: after a group commit, once :data:`EVERY_RECORDS` records were written since the last
checkpoint or :data:`EVERY_SECONDS` seconds went by with records not yet checkpointed,
whichever comes first, and when the log closes. So at most one journal write per period,
however busy the log.

A journal that cannot be written never holds up a rotation and never costs an audit record:
the records are already durable in the local log when the checkpoint is taken, and the write
happens on a thread of its own. A failure is logged (``audit_checkpoint_failed``) and counted
(:attr:`CheckpointRecorder.failures`, ``rotator_audit_checkpoint_failures_total{log}`` on the
daemon's ``/metrics``); the next checkpoint is tried at the next period.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from rotator.interfaces import AuditCheckpoint, Journal
from rotator.secrets import Secret, fingerprint

EVERY_RECORDS = 1000
EVERY_SECONDS = 60.0
#: The same input the engine names the audit key with (``Rotation.audit_key_id``).
_KEY_ID_INPUT = "rotator-audit-key-id"

_log = structlog.get_logger("rotator.audit")
#: Every recorder not yet garbage, for the daemon's metrics.
OPEN_RECORDERS: weakref.WeakSet[CheckpointRecorder] = weakref.WeakSet()


def key_id(audit_key: bytes) -> str:
    """Names the audit key without revealing it: 8 hex digits of HMAC(key, a constant)."""
    return fingerprint(audit_key, Secret(_KEY_ID_INPUT)).rpartition(":")[2][:8]


def log_id(path: Path) -> str:
    """The name a log's checkpoints are kept under: its absolute path."""
    return str(path.resolve())


class CheckpointRecorder:
    """Takes every group commit's ``(seq, chain)`` and records some of them in a journal."""

    def __init__(self, journal: Journal, log: str, key: str, *,
                 every_records: int = EVERY_RECORDS, every_seconds: float = EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._journal = journal
        self.log, self.key_id = log, key
        self._every_records, self._every_seconds = every_records, every_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._latest: tuple[int, str] | None = None  # the newest commit seen
        self._recorded_seq = 0  # the newest seq recorded (or tried)
        self._recorded_at = clock()
        self._closed = False
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="rotator-audit-checkpoints",
                                        daemon=True)
        self._thread.start()
        OPEN_RECORDERS.add(self)

    def committed(self, seq: int, chain: str) -> None:
        """A group commit made records up to ``seq`` durable: the FileSink's ``on_commit``.
        Returns at once; never raises."""
        with self._cond:
            if self._latest is None or seq > self._latest[0]:
                self._latest = (seq, chain)
            if self._due() is not None:
                self._cond.notify()

    def close(self) -> None:
        """Record the last commit seen (if not yet recorded) and stop. Call before closing
        the journal."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        with self._cond:
            latest = self._latest if self._pending() else None
        if latest is not None:
            self._record(*latest)

    def _pending(self) -> bool:
        return self._latest is not None and self._latest[0] > self._recorded_seq

    def _due(self) -> float | None:
        """Seconds until the pending commit is due (0 or less: now), None if none pends."""
        if self._latest is None or not self._pending():
            return None
        if self._latest[0] - self._recorded_seq >= self._every_records:
            return 0.0
        return self._recorded_at + self._every_seconds - self._clock()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                due = self._due()
                if due is None or due > 0:
                    self._cond.wait(due)
                    continue
                assert self._latest is not None
                seq, chain = self._latest
                self._recorded_seq, self._recorded_at = seq, self._clock()
                self._cond.release()
                try:
                    self._record(seq, chain)
                finally:
                    self._cond.acquire()

    def _record(self, seq: int, chain: str) -> None:
        try:
            self._journal.record_audit_checkpoint(AuditCheckpoint(
                self.log, self.key_id, seq, chain, datetime.now(UTC)))
            self.written += 1
        except Exception as exc:  # never lose the thread: the records are durable already
            self.failures += 1
            _log.warning("audit_checkpoint_failed", log=self.log, seq=seq,
                         error=str(exc), failures=self.failures)
