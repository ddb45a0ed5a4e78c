"""The audit event's fast path writes the same records as the general one: the ECS line
built from pre-encoded parts equals the encoded ECS document, and an event written through
AuditLog carries its context, timestamp and fields as the structlog chain did."""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from rotator.audit import CATALOGUE, PROCESSORS, AuditLog, bound, sinks
from rotator.audit.catalogue import EventSpec
from rotator.audit.chain import Checkpoint, chain_key, checkpoint_path, verify
from rotator.audit.formats import ecs_document, ecs_json, render_json
from rotator.secrets import Secret

KEY = "f" * 32
STAMP = "2026-11-29T20:00:00.123456Z"


class _Opaque:
    def __str__(self) -> str:
        return "opaque"


#: Field sets that take every branch of the ECS document: each ECS home, an outcome ECS
#: does not know, durations of each type, values JSON encodes in each of its ways.
CASES: list[dict[str, Any]] = [
    {"step": "stage", "store": "bao", "outcome": "success", "duration_ms": 12,
     "new_fingerprint": "hmac-sha256:00ff", "client": "c", "idp": "kc", "actor": "a",
     "rotation_id": "r"},
    {"outcome": "failure", "error": 'a "quoted"\nline é \u2028 \x00', "reason": "why",
     "duration_ms": 1.5},
    {"outcome": "maybe", "duration_ms": True, "count": 3, "flag": False, "none": None},
    {"caller": "ops", "source_ip": "127.0.0.1", "method": "POST", "status": 403,
     "route": "/v1/rotate", "auth": "token", "reason": "role"},
    {"source_ip": "not-an-ip", "status": 200, "method": "GET", "caller": None},
    {"stores": ["a", "b"], "scopes": ("x", "y"), "nested": {"k": [1, 2.5, None]},
     "big": 10**30, "nan": math.nan, "inf": -math.inf, "obj": _Opaque(), "duration_ms": "7"},
    {"\u00e9t\u00e9": "unicode key", "status": 7, "error": None},
    {},
]


class TestEcsJsonIsTheEncodedDocument:
    """ecs_json gives, byte for byte, render_json(ecs_document(...)) for every kind of
    field, and leaves the fields as they were."""

    @pytest.mark.parametrize("spec", [CATALOGUE["secret_staged"], CATALOGUE["api_request"],
                                      CATALOGUE["rotation_failed"],
                                      EventSpec("own", "m\u00e9 \"q\"", "iam", "info", 3004,
                                                99, "warning", frozenset())])
    @pytest.mark.parametrize("case", range(len(CASES)))
    def test_same_bytes(self, spec: EventSpec, case: int) -> None:
        fields = {**CASES[case], "@timestamp": STAMP}
        before = dict(fields)
        assert ecs_json(spec, fields) == render_json(ecs_document(spec, dict(fields)))
        assert list(fields.items()) == list(before.items())
        json.loads(ecs_json(spec, fields))


def _record(log: AuditLog, stream: io.StringIO) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(stream.getvalue().splitlines()[-1])
    return record


class TestEventThroughTheLog:
    """An event written through AuditLog has the same fields, in the same order, as
    structlog's BoundLogger with the same processors gives: explicit fields first and
    winning over bound context, then the context, then the timestamp."""

    def test_fields_context_and_order(self) -> None:
        stream = io.StringIO()
        log = AuditLog(Secret(KEY), stream=stream)
        seen: list[Any] = []

        def capture(_logger: Any, _method: str, event_dict: Any) -> Any:
            seen.append(dict(event_dict))
            return event_dict

        reference = structlog.wrap_logger(
            None, wrapper_class=structlog.BoundLogger,
            processors=[*PROCESSORS, capture, structlog.processors.JSONRenderer()])
        with bound(client="c1", idp="kc", actor="cli", rotation_id="r1"):
            log.event("secret_staged", store="bao", client="explicit", outcome="success")
            reference.info("secret_staged", store="bao", client="explicit",
                           outcome="success")
        record = _record(log, stream)
        expected = seen[0]
        assert list(record["rotator"]) == [k for k in expected
                                           if k not in ("@timestamp", "message", "outcome")
                                           ] + ["seq", "chain"]
        assert record["rotator"]["client"] == "explicit"
        assert record["rotator"]["idp"] == "kc"
        assert record["event"]["action"] == "secret_staged"
        assert record["event"]["outcome"] == "success"
        assert record["@timestamp"].endswith("Z")
        log.close()


def _until(condition: Callable[[], bool]) -> None:
    """Wait for a state other threads reach; fail after a generous bound (not a timing)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the writers never reached the expected state"
        time.sleep(0.001)


class TestReopenWhileASyncIsInFlight:
    """A log moved while a batch syncs is reopened by the next batch, and the descriptor
    the held sync goes through stays open on the moved file until that sync ends."""

    def test_descriptor_outlives_the_reopen(self, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        gate, held = threading.Event(), []

        def held_sync(fd: int) -> None:
            held.append(fd)
            if len(held) == 1:
                gate.wait()

        monkeypatch.setattr(sinks, "_sync", held_sync)
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        sink = log._sinks[0]
        assert isinstance(sink, sinks.FileSink)
        first = threading.Thread(target=log.event, args=("rotation_step",),
                                 kwargs={"step": "first"}, daemon=True)
        first.start()
        try:
            _until(lambda: len(held) == 1)
            old_inode = os.fstat(held[0]).st_ino
            file.rename(tmp_path / "audit.jsonl.1")  # logrotate, while the first one syncs
            log.event("rotation_step", step="second")  # reopens and writes the new file
            assert os.fstat(held[0]).st_ino == old_inode  # still open, on the moved file
            assert held[1] != held[0]
        finally:
            gate.set()
        first.join(timeout=30)  # a bound for a hang, not a measured time
        assert sink._in_flight == {} and sink._retired == set()
        log.close()
        problem, count = verify(chain_key(KEY.encode()), [tmp_path / "audit.jsonl.1", file],
                                Checkpoint.load(checkpoint_path(file)))
        assert (problem, count) == (None, 2)


class _CountingLock:
    """A waiter's lock that counts how often it was released (the writer woken)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.releases = 0

    def acquire(self) -> bool:
        return self._lock.acquire()

    def release(self) -> None:
        self.releases += 1
        self._lock.release()


class TestEachWriterIsWokenOnce:
    """With eight writers queued behind held syncs, every writer that sleeps is woken
    exactly once: to lead its batch or because its batch is done, never for another
    batch's progress."""

    def test_one_wake_per_sleeping_writer(self, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        gate, syncs, locks = threading.Event(), [], []

        def held_sync(fd: int) -> None:
            syncs.append(fd)
            gate.wait()

        def counting_lock() -> _CountingLock:
            locks.append(_CountingLock())
            return locks[-1]

        monkeypatch.setattr(sinks, "_sync", held_sync)
        monkeypatch.setattr(sinks, "_allocate_lock", counting_lock)
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        sink = log._sinks[0]
        assert isinstance(sink, sinks.FileSink)
        threads = [threading.Thread(target=log.event, args=("rotation_step",),
                                    kwargs={"step": f"w{n}"}, daemon=True) for n in range(8)]
        for t in threads:
            t.start()
        try:
            _until(lambda: len(syncs) == sinks._MAX_SYNCS and len(sink._open.lines)
                   + len(file.read_text().splitlines()) == 8)
        finally:
            gate.set()
        for t in threads:
            t.join(timeout=30)  # a bound for a hang, not a measured time
        log.close()
        assert locks and [lock.releases for lock in locks] == [1] * len(locks)
        assert len(syncs) == sinks._MAX_SYNCS + 1
        problem, count = verify(chain_key(KEY.encode()), [file],
                                Checkpoint.load(checkpoint_path(file)))
        assert (problem, count) == (None, 8)
