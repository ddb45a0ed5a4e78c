"""Store facts the daemon reads after it is ready (``Service.prepare(defer_facts=True)``).

A client the journal never saw rotate needs one store read at start (when its current
secret became current). With many clients those reads are a good share of the start-up, so
``rotator run`` is ready first and its scheduler thread reads them before its first pass,
one client at a time; an API call about one client reads that client's first, and a call
about every client waits for them all (docs/api.md, "Ready before every client's store
facts are read").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from rotator.config import Config
from rotator.daemon.records import ClientRecord, FactsReader, StoreFacts

#: How long a call that needs every client's facts (the list, metrics) waits for them, and
#: the scheduler thread for :meth:`DeferredFacts.release`.
DEFERRED_WAIT = 60.0


class DeferredFacts:
    """The reader of the deferred facts, and whether they are all read."""

    def __init__(self) -> None:
        #: Set once every client's facts are known.
        self.ready = threading.Event()
        #: Set when the scheduler thread may read them (once the admin API listens).
        self.released = threading.Event()
        self._lock = threading.Lock()  # one store read at a time
        self._reader: FactsReader | None = None

    def open(self, reader: FactsReader) -> None:
        """Read the deferred facts with ``reader`` (closed by :meth:`close` if it can be)."""
        with self._lock:
            self._reader = reader

    def read(self, rec: ClientRecord, config: Config, service_lock: threading.RLock) -> None:
        """Read ``rec``'s facts now if still deferred; never under ``service_lock``, which
        is taken only to store the answer."""
        with self._lock:
            if not rec.facts_pending or self._reader is None:
                return
            since = self._reader(config, rec.config)
            with service_lock:
                if rec.facts_pending:
                    rec.last_success_at, rec.facts_pending = since, False

    def read_all(self, pending: Sequence[ClientRecord], config: Callable[[], Config],
                 service_lock: threading.RLock, stopping: threading.Event) -> None:
        """Read every one of ``pending`` (unless the daemon stops), then close the reader."""
        try:
            for rec in pending:
                if stopping.is_set():
                    return
                self.read(rec, config(), service_lock)
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            reader, self._reader = self._reader, None
        if isinstance(reader, StoreFacts):
            reader.close()


__all__ = ["DEFERRED_WAIT", "DeferredFacts"]
