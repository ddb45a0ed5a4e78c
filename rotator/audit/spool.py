"""The durable spool that feeds a remote audit sink (syslog, HTTP).

A remote sink never sits between a rotation and its durable record. :meth:`SpoolSink.write`
appends the sealed record to a spool file of the sink's own (``<state_dir>/audit-spool/
<name>.jsonl``, mode 0600, written by :class:`~rotator.audit.sinks.FileSink`: sealed, synced,
group commit) and returns; a sender thread reads the spool in order and hands batches to the
sink's transport, retrying with exponential backoff while the remote end is down. Only after
the transport accepted a batch is its last ``seq`` recorded as delivered (``<name>.delivered``),
so delivery is at least once: a batch in flight when the process stopped, or one the remote
end took but answered too late, is sent again with the same ``seq`` and ``chain``, by which a
SIEM drops the duplicate. After a restart the spool is read from the first record not yet
delivered, so what waited is delivered before anything newer, in order.

The spool is bounded (``spool_max_bytes``): past 80% of the bound a warning is logged and the
``rotator_audit_spool_bytes`` gauge shows it; at the bound a new record is not queued for this
sink (counted in ``rotator_audit_spool_dropped_total``, logged as an error) and remains in the
local audit log only, because a SIEM outage must block no rotation. Delivered records are cut
from the spool's head. One process at a time delivers a spool (an exclusive lock on the
``.delivered`` file): when the CLI and a daemon share a state directory, whichever holds it
sends for both, and the other only appends.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from rotator._files import open_private, write_private_file
from rotator.audit.chain import Checkpoint, checkpoint_path, unseal
from rotator.audit.sinks import FileSink
from rotator.errors import RotatorError

_log = structlog.get_logger("rotator.audit")
_READ_CHUNK = 1 << 20
#: Past this share of ``spool_max_bytes`` a warning is logged.
NEARING = 0.8
#: Past this many delivered bytes at its head the spool is rewritten without them.
COMPACT_AT = 4 * 1024 * 1024


class DeliveryError(RotatorError):
    """The remote end did not take a batch; it is sent again after a backoff."""


@dataclass(frozen=True)
class Record:
    """One sealed audit record as the spool holds it."""

    seq: int
    chain: str
    line: str


class Transport(Protocol):
    """Sends batches of records to a remote collector."""

    def send(self, records: Sequence[Record]) -> None:
        """Deliver ``records`` in order or raise ``DeliveryError``."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class SpoolPolicy:
    max_bytes: int = 256 * 1024 * 1024
    batch_size: int = 100
    retry_min: float = 0.5
    retry_max: float = 60.0
    #: How long ``close`` keeps sending what is spooled before leaving it for the next start.
    drain: float = 5.0


#: Every open spool, for the metrics collector.
OPEN_SPOOLS: weakref.WeakSet[SpoolSink] = weakref.WeakSet()


class SpoolSink:
    """An audit sink that spools durably and delivers in the background."""

    def __init__(self, name: str, spool_dir: Path, key: bytes, transport: Transport,
                 policy: SpoolPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or SpoolPolicy()
        self.file = spool_dir / f"{name}.jsonl"
        self._transport = transport
        self._spool = FileSink(self.file, key, checkpoint_path(self.file))
        self._cursor_file = spool_dir / f"{name}.delivered"
        self._cursor_fd = -1
        self._read_fd = -1
        self._offset = 0  # where the next undelivered record starts in the spool
        self._delivered_seq = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._drain_until: float | None = None
        self._nearing = False
        self._full = False
        self._failing = False  # the last attempt failed: closing does not wait to drain
        # counters, read by the metrics collector and the tests
        self.delivered = 0
        self.dropped = 0
        self.failures = 0
        self.batches = 0
        self.rewrites = 0
        self._thread = threading.Thread(target=self._run, name=f"audit-sink-{name}",
                                        daemon=True)
        self._thread.start()
        OPEN_SPOOLS.add(self)

    # -- the writing side: never waits for the remote end

    def reopen(self) -> None:
        self._spool.reopen()

    def write(self, line: str) -> None:
        """Queue ``line`` durably for delivery, unless the spool is at its bound."""
        size = self.spool_bytes()
        if size >= self.policy.max_bytes:
            self.dropped += 1
            if not self._full:
                self._full = True
                _log.error("audit_spool_full", sink=self.name, spool_bytes=size,
                           limit_bytes=self.policy.max_bytes,
                           detail="new records stay in the local audit log only")
            return
        self._full = False
        if size >= self.policy.max_bytes * NEARING:
            if not self._nearing:
                self._nearing = True
                _log.warning("audit_spool_nearing_bound", sink=self.name, spool_bytes=size,
                             limit_bytes=self.policy.max_bytes)
        else:
            self._nearing = False
        self._spool.write(line)
        with self._cond:
            self._cond.notify_all()

    def spool_bytes(self) -> int:
        """Bytes of the spool not yet delivered (as of the last delivery)."""
        try:
            return max(0, os.stat(self.file).st_size - self._offset)
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        """Send what is spooled for up to ``drain`` seconds (not at all while the collector
        is failing), then stop; the rest waits in the spool for the next start."""
        with self._cond:
            if self._stopping:
                return
            self._drain_until = self._now() + self.policy.drain
            self._cond.notify_all()
        self._thread.join()
        self._transport.close()
        self._spool.close()
        for fd in (self._read_fd, self._cursor_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._cursor_fd = -1

    # -- the sending side

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _wait(self, seconds: float) -> None:
        """Wait for a new record, ``close`` or ``seconds``."""
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)

    def _back_off(self, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt; only ``close`` cuts it short (new
        records do not: they would turn the backoff into an attempt per record)."""
        deadline = self._now() + seconds
        with self._cond:
            while not self._stopping and self._drain_until is None:
                remaining = deadline - self._now()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _run(self) -> None:
        delay = self.policy.retry_min
        while True:
            with self._cond:
                if self._drain_until is not None and self._now() >= self._drain_until:
                    self._stopping = True
                if self._stopping:
                    return
            try:
                leading = self._cursor_fd >= 0 or self._lead()
            except OSError as exc:
                _log.error("audit_spool_unreadable", sink=self.name, error=str(exc))
                leading = False
            if not leading:
                if self._drain_until is not None:
                    with self._cond:
                        self._stopping = True
                    return
                self._wait(1.0)
                continue
            try:
                records, end = self._pending()
            except OSError as exc:
                _log.error("audit_spool_unreadable", sink=self.name, error=str(exc))
                self._back_off(delay)
                continue
            if not records or (self._drain_until is not None and self._failing):
                if self._drain_until is not None:
                    with self._cond:
                        self._stopping = True
                    return
                self._compact()
                self._wait(1.0)
                continue
            try:
                self._transport.send(records)
            except Exception as exc:  # the sender must outlive any failure
                self.failures += 1
                self._failing = True
                error = str(exc) if isinstance(exc, DeliveryError) else type(exc).__name__
                _log.warning("audit_delivery_failed", sink=self.name, error=error,
                             pending_from_seq=records[0].seq, retry_in_s=round(delay, 2))
                self._back_off(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter
                delay = min(delay * 2, self.policy.retry_max)
                continue
            delay = self.policy.retry_min
            self._failing = False
            self._offset = end
            self._delivered_seq = records[-1].seq
            self.delivered += len(records)
            self.batches += 1
            data = f"{self._delivered_seq}\n".encode()
            os.ftruncate(self._cursor_fd, 0)
            os.pwrite(self._cursor_fd, data, 0)
            os.fsync(self._cursor_fd)
            if self._offset >= COMPACT_AT:
                self._compact()

    def _lead(self) -> bool:
        """Take the delivery lock; load where delivery stands. False if another process
        delivers this spool."""
        fd = open_private(self._cursor_file, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        self._delivered_seq = int(text) if text.isdigit() else 0
        self._offset = 0
        self._cursor_fd = fd
        return True

    def _stale_cursor(self) -> bool:
        """True (and the cursor reset) when the spool's checkpoint is behind the delivered
        seq: the spool and its checkpoint were removed, and its records start again at 1."""
        try:
            written = Checkpoint.load(checkpoint_path(self.file))
        except (ValueError, KeyError, TypeError):
            return False
        if written is None or written.seq >= self._delivered_seq:
            return False
        _log.warning("audit_spool_restarted", sink=self.name,
                     delivered_seq=self._delivered_seq, spool_seq=written.seq)
        self._delivered_seq = 0
        return True

    def _open_read(self) -> int:
        """The spool for reading, reopened when compaction replaced it."""
        try:
            inode = os.stat(self.file).st_ino
        except FileNotFoundError:
            inode = -1
        if self._read_fd >= 0 and os.fstat(self._read_fd).st_ino != inode:
            os.close(self._read_fd)
            self._read_fd = -1
            self._offset = 0
        if self._read_fd < 0:
            self._read_fd = open_private(self.file, os.O_RDONLY)
        return self._read_fd

    def _pending(self) -> tuple[list[Record], int]:
        """The next batch of undelivered records and where the spool continues after it."""
        fd = self._open_read()
        data = os.pread(fd, _READ_CHUNK, self._offset)
        records: list[Record] = []
        pos = self._offset
        start = 0
        while len(records) < self.policy.batch_size:
            end = data.find(b"\n", start)
            if end < 0:
                break
            raw = data[start:end]
            start = end + 1
            line = raw.decode("utf-8", "surrogateescape")
            sealed = unseal(line)
            if sealed is None:
                _log.error("audit_spool_record_skipped", sink=self.name,
                           reason="not a sealed record", offset=pos)
            elif sealed[0] > self._delivered_seq or self._stale_cursor():
                records.append(Record(sealed[0], sealed[1], line))
            pos = self._offset + start
        if not records and pos > self._offset:  # only delivered or unreadable lines
            self._offset = pos
            return self._pending() if pos < os.fstat(fd).st_size else ([], pos)
        return records, pos

    def _compact(self) -> None:
        """Cut the delivered head of the spool, under the lock the spool's writers take: by
        truncating when all of it was delivered, else, past ``COMPACT_AT`` delivered bytes,
        by replacing the file with its undelivered tail (the writers notice the new file at
        their next batch, as they notice a log rotated away)."""
        if self._offset == 0:
            return
        fd = open_private(self.file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size == self._offset:
                os.ftruncate(fd, 0)
                os.fsync(fd)
                self._offset = 0
            elif self._offset >= COMPACT_AT:
                tail = os.pread(fd, size - self._offset, self._offset)
                write_private_file(self.file, tail)
                self._offset = 0
                self.rewrites += 1
                if self._read_fd >= 0:
                    os.close(self._read_fd)
                    self._read_fd = -1
        finally:
            os.close(fd)  # releases the lock
