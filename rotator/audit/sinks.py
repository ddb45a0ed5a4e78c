"""Where sealed audit lines go: an append-only file with group commit, or a stream.

The file sink is durable before :meth:`FileSink.write` returns, yet costs one ``fsync`` per
batch, not per event: the first writer to arrive becomes the leader, takes every line queued
meanwhile (by concurrent rotations, by the API), seals them under an exclusive ``flock`` on the
log (so a CLI and a daemon writing the same log keep one chain), appends them in one
``write``, syncs once, updates the checkpoint, and wakes the others. A log that logrotate moved
or truncated is noticed at the next batch and reopened; the chain continues from the
checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rotator._files import UnsafeFile, ensure_private_dir, open_private
from rotator.audit.chain import GENESIS, Checkpoint, seal, unseal
from rotator.errors import ConfigError, ConfigProblem, RotatorError

_TAIL_READ = 65536
#: {"seq": 20 digits, "chain": 64 hex} fits; padded with spaces to this width
_CHECKPOINT_WIDTH = 120


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


class FileSink:
    """The audit log file: sealed, appended in batches, synced once per batch."""

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
        self._queue: list[str] = []
        self._queued = 0  # lines ever queued
        self._durable = 0  # lines ever made durable
        #: (first, last ticket, error) of the latest batches that failed
        self._failures: list[tuple[int, int, Exception]] = []
        self._leading = False
        self._reopen = False
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
            self._queue.append(line)
            self._queued += 1
            ticket = self._queued
            while self._durable < ticket:
                if self._leading:
                    self._cond.wait()
                    continue
                self._lead()
            for first, last, error in self._failures:
                if first <= ticket <= last:
                    raise AuditWriteError(f"audit log {self.file}: {error}")

    def _lead(self) -> None:
        """Write every queued line as one batch; called and returning with the lock held."""
        self._leading = True
        batch, self._queue = self._queue, []
        first, last = self._durable + 1, self._queued
        self._cond.release()
        error: Exception | None = None
        try:
            self._append(batch)
        except (OSError, ValueError) as exc:
            error = exc
        else:
            committed = self.on_commit
            if committed is not None:
                committed(self._chain.seq, self._chain.value)
        finally:
            self._cond.acquire()
            self._leading = False
            self._durable = last
            if error is not None:
                self._failures = [*self._failures[-15:], (first, last, error)]
            self._cond.notify_all()

    def _append(self, batch: list[str]) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._reopen_if_moved()
            size = self._catch_up()
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
            os.fsync(self._fd)
            self._known_end = size + written  # appended under the lock: nothing between
            # Fixed width, written in place: a reader never sees a half-shortened record.
            record = Checkpoint(chain.seq, chain.value).dumps().ljust(_CHECKPOINT_WIDTH)
            os.pwrite(self._cp_fd, record.encode(), 0)
            self.batches += 1
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _reopen_if_moved(self) -> None:
        try:
            moved = os.stat(self.file).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            moved = True
        if moved or self._reopen:
            self._reopen = False
            fd = open_log(self.file)
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = fd
            self._known_end = -1

    def _catch_up(self) -> int:
        """Continue from the log's last record (another process may have written), or from
        the checkpoint when the log is empty (rotated away or truncated by logrotate)."""
        size = os.fstat(self._fd).st_size
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
    data = os.pread(fd, 4096, 0)
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
