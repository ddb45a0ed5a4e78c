"""Where sealed audit lines go: an append-only file with group commit, or a stream.

The file sink is durable before :meth:`FileSink.write` returns, yet costs one sync per
batch, not per event: a writer that finds no batch being appended takes every line queued
meanwhile (by concurrent rotations, by the API), seals them under an exclusive ``flock`` on the
log (so a CLI and a daemon writing the same log keep one chain), appends them in one
``write``, and syncs them (``fdatasync``) after releasing the lock, so the next batch can be
appended while this one syncs; the kernel commits overlapping syncs together. At most
``_MAX_SYNCS`` syncs are in flight; lines arriving past that wait and go as one batch. Each
writer returns once the sync of its own batch has returned; the checkpoint then records the
batch's last record (never a record that is not yet durable). A log that logrotate moved or
truncated is noticed at the next batch and reopened; the chain continues from the
checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from rotator._files import UnsafeFile, ensure_private_dir, open_private
from rotator.audit.chain import GENESIS, Checkpoint, seal, unseal
from rotator.errors import ConfigError, ConfigProblem, RotatorError

_TAIL_READ = 65536
#: {"seq": 20 digits, "chain": 64 hex} fits; padded with spaces to this width
_CHECKPOINT_WIDTH = 120


#: An append changes the size, which fdatasync makes durable with the data; macOS has no
#: fdatasync (and its fsync is the same weak promise either way).
_sync = getattr(os, "fdatasync", os.fsync)
#: Batches whose syncs may be in flight at once; lines arriving past it wait and batch up.
_MAX_SYNCS = 2


class AuditWriteError(RotatorError):
    """The audit record could not be made durable; what logged it must not go on."""


def open_log(file: Path, flags: int = os.O_RDWR | os.O_APPEND | os.O_CREAT) -> int:
    """Open the audit log (or its checkpoint) in a directory only this user may write, never
    through a symlink, and only a file of this user's that no one else may open.

    Raises ``ConfigError`` naming the file and the ``audit.file`` setting.
    """
    try:
        ensure_private_dir(file.parent)
        return open_private(file, flags)
    except OSError as exc:
        reason = str(exc) if isinstance(exc, UnsafeFile) else f"cannot open: {exc.strerror}"
        raise ConfigError([ConfigProblem(str(file), "audit.file", reason)]) from None


class _Chain:
    """Where the chain stands, as this process last saw it."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.seq, self.value = 0, GENESIS


class _Batch:
    """Lines appended and synced together, and how that went."""

    __slots__ = ("done", "error", "lines")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done = False
        self.error: Exception | None = None


class Appended(NamedTuple):
    """A line :meth:`FileSink.append` wrote and has not synced: a descriptor of the file it
    went to and where the chain then stood."""

    fd: int
    point: Checkpoint


class FileSink:
    """The audit log file: sealed, appended in batches, each batch synced before its
    writers go on; the syncs of consecutive batches may overlap."""

    def __init__(self, file: Path, key: bytes, checkpoint: Path) -> None:
        self.file = file
        self._checkpoint = checkpoint
        self._chain = _Chain(key)
        self._fd = open_log(file)
        try:
            self._cp_fd = open_log(checkpoint, os.O_RDWR | os.O_CREAT)
        except ConfigError:
            os.close(self._fd)
            raise
        self._known_end = -1  # size of the log after this process's last batch
        self._cond = threading.Condition()
        self._open = _Batch()  # where arriving lines go
        self._appending = False  # a batch is being sealed and appended
        self._syncing = 0  # batches appended, not yet synced
        self._cp_lock = threading.Lock()
        self._cp_seq, self._cp_record = 0, b""  # what this process last recorded
        self._reopen = False
        #: batches appended (one sync each); read by tests and the benchmark
        self.batches = 0
        #: Called with the last (seq, chain) after each batch is durable, outside the log's
        #: lock, by the thread that wrote it; must return at once and never raise
        #: (:class:`rotator.audit.checkpoints.CheckpointRecorder.committed`).
        self.on_commit: Callable[[int, str], None] | None = None

    def reopen(self) -> None:
        """Open the log file by its path again before the next batch (on SIGHUP)."""
        self._reopen = True

    def write(self, line: str) -> None:
        """Append ``line`` (unsealed); return once it is on disk, or raise
        ``AuditWriteError`` when the batch that carried it could not be written."""
        with self._cond:
            batch = self._open
            batch.lines.append(line)
            while not batch.done:
                # Lines that arrive while one batch is appended or while the most syncs
                # are in flight wait together and go as the next batch.
                if (batch is self._open and not self._appending
                        and self._syncing < _MAX_SYNCS):
                    self._commit(batch)
                else:
                    self._cond.wait()
            if batch.error is not None:
                raise AuditWriteError(f"audit log {self.file}: {batch.error}")

    def append(self, line: str) -> Appended:
        """Seal and append ``line`` now without waiting for a sync: it outlives this process
        at once, a power loss only once :meth:`sync` has returned for it. Raises
        ``AuditWriteError``."""
        with self._cond:
            while self._appending:
                self._cond.wait()
            self._appending = True
        try:
            fd, point = self._append([line])
            return Appended(fd, point)
        except Exception as exc:
            raise AuditWriteError(f"audit log {self.file}: {exc}") from exc
        finally:
            with self._cond:
                self._appending = False
                self._cond.notify_all()

    def sync(self, appended: Sequence[Appended]) -> None:
        """Make lines :meth:`append` wrote durable (one sync per file), record the chain's
        checkpoint, and release their descriptors. Raises ``AuditWriteError``."""
        try:
            synced: set[tuple[int, int]] = set()
            for item in appended:
                info = os.fstat(item.fd)
                if (info.st_dev, info.st_ino) not in synced:
                    _sync(item.fd)
                    synced.add((info.st_dev, info.st_ino))
            last = max((item.point for item in appended), key=lambda p: p.seq, default=None)
            if last is not None:
                self._write_checkpoint(last)
                committed = self.on_commit
                if committed is not None:
                    committed(last.seq, last.chain)
        except Exception as exc:
            raise AuditWriteError(f"audit log {self.file}: {exc}") from exc
        finally:
            for item in appended:
                os.close(item.fd)

    def _commit(self, batch: _Batch) -> None:
        """Append ``batch`` in order, then sync it while the next one may be appended.

        Called and returning with the lock held. Appends are one at a time (the chain's
        order); a sync covers every byte appended before it, so overlapping syncs of
        consecutive batches are safe, and the kernel commits them together.
        """
        self._open, self._appending = _Batch(), True
        self._cond.release()
        sync_fd, sealed_to = -1, None
        try:
            sync_fd, sealed_to = self._append(batch.lines)
        except Exception as exc:  # a reopen's ConfigError too: every writer
            batch.error = exc  # of the batch hears of it, none waits for it forever
        finally:
            self._cond.acquire()
            self._appending = False
            if sync_fd >= 0:
                self._syncing += 1
            self._cond.notify_all()
        if sync_fd < 0:
            batch.done = True
            return
        self._cond.release()
        try:
            _sync(sync_fd)
            if sealed_to is not None:
                self._write_checkpoint(sealed_to)
                committed = self.on_commit
                if committed is not None:
                    committed(sealed_to.seq, sealed_to.chain)
        except Exception as exc:  # reported to every writer of the batch
            batch.error = exc
        finally:
            os.close(sync_fd)
            self._cond.acquire()
            self._syncing -= 1
            batch.done = True
            self._cond.notify_all()

    def _append(self, batch: list[str]) -> tuple[int, Checkpoint]:
        """Seal and append ``batch`` under the log's lock; a descriptor to sync it through
        (the log's may be reopened meanwhile) and where the chain then stood."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = self._catch_up(self._reopen_if_moved())
            chain = self._chain
            sealed = []
            for line in batch:
                chain.seq += 1
                text, chain.value = seal(line, chain.seq, chain.key, chain.value)
                sealed.append(text)
            data = ("\n".join(sealed) + "\n").encode("utf-8", "surrogatepass")
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            self._known_end = size + written  # appended under the lock: nothing between
            self.batches += 1
            return os.dup(self._fd), Checkpoint(chain.seq, chain.value)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write_checkpoint(self, point: Checkpoint) -> None:
        """Record ``point`` once it is durable, unless a later one is recorded (by another
        batch or process). Fixed width, written in place: a reader never sees a
        half-shortened record."""
        record = point.dumps().ljust(_CHECKPOINT_WIDTH).encode()
        with self._cp_lock:
            if point.seq <= self._cp_seq:
                return  # a later batch of this process got there first
            fcntl.flock(self._cp_fd, fcntl.LOCK_EX)
            try:
                current = os.pread(self._cp_fd, _CHECKPOINT_WIDTH, 0)
                if current != self._cp_record:  # another process wrote it since
                    recorded = _parse_checkpoint(current)
                    if recorded is not None and recorded.seq >= point.seq:
                        return
                os.pwrite(self._cp_fd, record, 0)
                self._cp_record, self._cp_seq = record, point.seq
            finally:
                fcntl.flock(self._cp_fd, fcntl.LOCK_UN)

    def _reopen_if_moved(self) -> int:
        """Reopen the log if it was moved or a reopen was asked for; the log's size."""
        own = os.fstat(self._fd)
        try:
            moved = os.stat(self.file).st_ino != own.st_ino
        except FileNotFoundError:
            moved = True
        if moved or self._reopen:
            self._reopen = False
            fd = open_log(self.file)
            if not moved and os.path.samestat(os.fstat(fd), own):
                # The same file: keep the descriptor that holds the lock. Locking the file
                # again through a second descriptor would wait for this one forever.
                os.close(fd)
                return own.st_size
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = fd
            self._known_end = -1
            own = os.fstat(fd)
        return own.st_size

    def _catch_up(self, size: int) -> int:
        """Continue from the log's last record (another process may have written), or from
        the checkpoint when the log is empty (rotated away or truncated by logrotate)."""
        if size == self._known_end:
            return size
        last = _last_line(self._fd, size)
        sealed = unseal(last) if last else None
        if sealed is not None:
            self._chain.seq, self._chain.value = sealed[0], sealed[1]
            return size
        checkpoint = _read_checkpoint(self._cp_fd)
        if checkpoint is not None and checkpoint.seq >= self._chain.seq:
            self._chain.seq, self._chain.value = checkpoint.seq, checkpoint.chain
        return size

    def close(self) -> None:
        with self._cond:
            while self._appending or self._syncing:
                self._cond.wait()
            if self._fd >= 0:
                os.fsync(self._cp_fd)
                os.close(self._cp_fd)
                os.close(self._fd)
                self._fd = -1


def _last_line(fd: int, size: int) -> str:
    start = size
    while start > 0:
        start = max(0, start - _TAIL_READ)
        data = os.pread(fd, size - start, start)
        cut = data.rstrip(b"\n").rfind(b"\n")
        if cut >= 0 or start == 0:
            return data[cut + 1:].decode("utf-8", "surrogateescape").rstrip("\n")
    return ""


def _read_checkpoint(fd: int) -> Checkpoint | None:
    return _parse_checkpoint(os.pread(fd, 4096, 0))


def _parse_checkpoint(data: bytes) -> Checkpoint | None:
    if not data:
        return None
    try:
        parsed = json.loads(data)
        return Checkpoint(int(parsed["seq"]), str(parsed["chain"]))
    except (ValueError, KeyError, TypeError):
        return None


class StreamSink:
    """A text stream (stdout, a test's buffer): sealed in its own chain, flushed, not synced."""

    def __init__(self, stream: TextIO, key: bytes) -> None:
        self._stream = stream
        self._chain = _Chain(key)
        self._lock = threading.Lock()

    def reopen(self) -> None:
        pass

    def write(self, line: str) -> None:
        with self._lock:
            self._chain.seq += 1
            text, self._chain.value = seal(line, self._chain.seq, self._chain.key,
                                           self._chain.value)
            self._stream.write(text + "\n")
            self._stream.flush()

    def close(self) -> None:
        pass
