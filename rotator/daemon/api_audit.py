"""The ``api_request`` audit events of read calls, written without holding up the caller.

The audit file sink makes every event durable before :meth:`AuditLog.event` returns, one
``fdatasync`` per batch of concurrent events. A read call (``GET``, answered below 400) has
changed nothing, so its caller need not wait for that sync: :class:`AuditQueue` takes the
event and returns at once, and a few writer threads hand the queued events to the audit log
concurrently, so they go out in the log's next group commit. The event is still written and
still durable, one group commit after the answer instead of before the connection's next
call. Given the log's ``deferred`` block (:meth:`rotator.audit.AuditLog.deferred`), one
writer takes every event queued so far and writes them in one block: appended one by one,
made durable by one sync when the block ends, before any of them counts as written.
Calls that change something, and refused or failed calls, are written before the call
ends, as before (see :mod:`rotator.daemon.api`).

The queue is bounded: when it is full (the disk cannot keep up), :meth:`AuditQueue.submit`
says so and the caller writes the event itself, so a flood of calls slows down instead of
piling events up in memory. :meth:`AuditQueue.close` (the API's stop) writes every queued
event before the audit log closes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import structlog

log = structlog.get_logger("rotator.api")

#: Writer threads: each waits for one group commit at a time, so this many events are
#: committed per sync at the least (more queue up behind them and go in the next batch).
WRITERS = 4
#: Events that may wait; past this a caller writes its own event (and waits for the sync).
MAX_QUEUED = 10_000
#: Events one writer takes into one ``deferred`` block at the most.
MAX_BATCH = 1000

Write = Callable[[dict[str, Any]], None]
#: A block in which ``Write`` appends and at whose end what it appended is made durable.
Batch = Callable[[], AbstractContextManager[None]]
_STOP = object()


class AuditQueue:
    """Hands queued ``api_request`` events to ``write`` on :data:`WRITERS` threads."""

    def __init__(self, write: Write, *, writers: int = WRITERS,
                 max_queued: int = MAX_QUEUED, batch: Batch | None = None) -> None:
        self._write = write
        self._batch = batch
        self._queue: queue.Queue[object] = queue.Queue(max_queued)
        self._writers = 1 if batch is not None else writers
        self._closed = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []  # started at the first event

    def _start(self) -> None:
        with self._lock:
            if self._threads or self._closed:
                return
            self._threads = [threading.Thread(target=self._drain, name="rotator-api-audit",
                                              daemon=True) for _ in range(self._writers)]
            for thread in self._threads:
                thread.start()

    def submit(self, fields: dict[str, Any]) -> bool:
        """Queue one event; False when the queue is full or closed (write it yourself)."""
        if self._closed:
            return False
        if not self._threads:
            self._start()
        try:
            self._queue.put_nowait(fields)
        except queue.Full:
            return False
        return True

    def has_room(self) -> bool:
        """Whether :meth:`submit` would take an event now (it may still refuse one once the
        queue closes, or when another thread filled it meanwhile)."""
        return not self._closed and not self._queue.full()

    def flush(self) -> None:
        """Return once every event queued so far is written."""
        self._queue.join()

    def close(self) -> None:
        """Write every queued event, then stop the writers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _drain(self) -> None:
        if self._batch is not None:
            self._drain_batches(self._batch)
            return
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                assert isinstance(item, dict)
                self._write(item)
            except Exception:  # the audit sink failing must not end the writer
                log.error("api_audit_failed", exc_info=True)
            finally:
                self._queue.task_done()

    def _drain_batches(self, batch: Batch) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < MAX_BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                with batch():
                    for item in items:
                        if item is _STOP:
                            stop = True
                            continue
                        assert isinstance(item, dict)
                        try:
                            self._write(item)
                        except Exception:  # the audit sink failing must not end the writer
                            log.error("api_audit_failed", exc_info=True)
                        # Let the event loop have the interpreter between two events (it
                        # would wait out the switch interval, 5 ms): answers come first.
                        time.sleep(0)
            except Exception:  # the block's sync failed
                log.error("api_audit_failed", exc_info=True)
            finally:
                for _ in items:
                    self._queue.task_done()


__all__ = ["AuditQueue"]
