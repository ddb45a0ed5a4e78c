"""The queue that writes read calls' audit events after they are answered (api_audit)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rotator.daemon.api_audit import AuditQueue


class _Log:
    """An audit log whose blocks are recorded; the first write waits for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.blocks: list[list[str]] = []
        self.synced: list[str] = []
        self._open: list[str] | None = None

    def write(self, fields: dict[str, Any]) -> None:
        assert self._open is not None, "written outside a block"
        self.entered.set()
        assert self.release.wait(30)
        self._open.append(fields["route"])

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._open = []
        yield
        self.blocks.append(self._open)
        self.synced += self._open  # durable at the block's end
        self._open = None


class TestAuditQueueBatches:
    """Given the log's deferred block, one writer writes every event queued meanwhile in
    one block, and flush returns once the block that carried each event has ended."""

    def test_events_queued_meanwhile_share_one_block(self) -> None:
        log = _Log()
        queue = AuditQueue(log.write, batch=log.deferred)
        assert queue.submit({"route": "r0"})
        assert log.entered.wait(30)  # the writer holds r0; the rest queue behind it
        for i in range(1, 50):
            assert queue.submit({"route": f"r{i}"})
        log.release.set()
        queue.flush()
        assert log.synced == [f"r{i}" for i in range(50)]
        assert [len(b) for b in log.blocks] == [1, 49]
        queue.close()

    def test_a_failing_write_leaves_the_others_and_the_writer(self) -> None:
        log = _Log()
        log.release.set()
        written: list[str] = []

        def write(fields: dict[str, Any]) -> None:
            if fields["route"] == "bad":
                raise OSError("disk")
            log.write(fields)
            written.append(fields["route"])

        queue = AuditQueue(write, batch=log.deferred)
        for route in ("a", "bad", "b"):
            assert queue.submit({"route": route})
        queue.flush()
        assert queue.submit({"route": "c"})
        queue.close()
        assert written == ["a", "b", "c"]
