"""Benchmark the audit log: chained, durable events per second to the file sink.

    python bench/bench_audit.py [EVENTS_PER_WRITER]

Eight threads write rotation-sized events (the fields of ``secret_staged``, with context
bound) through ``AuditLog`` to a file sink on the local disk: each event is redacted once,
sealed into the HMAC chain and on disk (``fdatasync``) before ``event`` returns, with one
sync per group of events written together (two syncs in flight at once). Beside it, in
the same run: a bare loop of ``json.dumps`` + ``write`` (no redaction, no chain, no fsync)
as the ceiling, and the same loop with one ``fsync`` per event, which is what durability
cost before group commit. The audit figures are measured with 10 and with 10,000 live
secrets in the process, and once more with the sync skipped, which shows the CPU cost
apart from the disk's. Not a test: it prints each figure beside its target, and never
fails. With 8 writers each waiting for its own event, the disk shapes the rate: the run
also times 8 threads that each write a line and sync it, at once, with no Python work (a
disk that runs concurrent syncs in parallel, as ext4 without a journal on a virtio disk
does, gives several times 1 / one fsync; one that serialises them, about that): read it
beside the target. Each audit figure also shows the process's CPU time per event, user and
system, all threads: the Python work runs under the GIL, so 20,000 events/s needs the user
time at or below about 50 µs (the syncs' system time runs beside it, on another core). The
load average is printed before and after the run: on a shared machine, read the figures
with it.

Last, per format (``json``, ``ocsf``, ``cef``): the CPU time (``time.process_time``) one
writer spends per event with the sync skipped, the least of several rounds, and how it
splits into the record (context, timestamp, catalogue), the format, the redaction, the seal
and the file sink's batch (locks, stat, write, checkpoint), each timed alone the same way,
and the sink's batch timed again inside the loop of whole events ("in loop"): the stages
timed alone add up to less than the event, and that column shows the sink's share of the
difference. These figures do not move with the machine's load the way events/s do.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rotator.audit import CATALOGUE, AuditLog, _redacted_line, bound, sinks
from rotator.audit.catalogue import EventSpec
from rotator.audit.chain import seal
from rotator.audit.formats import FORMATS, cef_line, ecs_json, ocsf_document, render_json
from rotator.secrets import Secret, generate_secret

WRITERS = 8
TARGET = 20_000


def _fields() -> dict[str, object]:
    return {"step": "stage", "store": "bao", "outcome": "success", "duration_ms": 12,
            "new_fingerprint": "hmac-sha256:" + secrets.token_hex(16)}


def _audit_rate(directory: Path, per_writer: int) -> tuple[float, int, float, float]:
    """Events/s, batches (syncs), and user and system CPU µs per event (all threads)."""
    file = directory / f"audit-{secrets.token_hex(4)}.jsonl"
    log = AuditLog(Secret(secrets.token_urlsafe(32)), file=file)
    fields = _fields()
    barrier = threading.Barrier(WRITERS + 1)

    def writer(n: int) -> None:
        with bound(client=f"client-{n}", idp="kc", actor="bench", rotation_id=f"r-{n}"):
            barrier.wait()
            for _ in range(per_writer):
                log.event("secret_staged", **fields)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    barrier.wait()
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for t in threads:
        t.join()
    elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    batches = log._sinks[0].batches  # type: ignore[union-attr]
    log.close()
    events = WRITERS * per_writer
    return (events / elapsed, batches, (after.ru_utime - before.ru_utime) / events * 1e6,
            (after.ru_stime - before.ru_stime) / events * 1e6)


def _bare_rate(directory: Path, events: int, sync: bool) -> float:
    doc = {"@timestamp": "2026-01-01T00:00:00.000000Z", "event": {"action": "secret_staged"},
           "rotator": _fields()}
    fd = os.open(directory / f"bare-{secrets.token_hex(4)}", os.O_WRONLY | os.O_CREAT |
                 os.O_APPEND, 0o600)
    start = time.perf_counter()
    for _ in range(events):
        os.write(fd, (json.dumps(doc) + "\n").encode())
        if sync:
            os.fsync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return events / elapsed


def _parallel_sync_rate(directory: Path, per_thread: int) -> float:
    """Lines/s when ``WRITERS`` threads each write a line and ``fdatasync`` it, at once, on
    one file: what the disk gives writers that each wait for their own line, with no
    Python work between (concurrent syncs may run in parallel or be merged by the kernel)."""
    line = (json.dumps({"@timestamp": "2026-01-01T00:00:00.000000Z",
                        "rotator": _fields()}) + "\n").encode()
    fd = os.open(directory / f"parallel-{secrets.token_hex(4)}", os.O_WRONLY | os.O_CREAT |
                 os.O_APPEND, 0o600)
    barrier = threading.Barrier(WRITERS + 1)

    def writer() -> None:
        barrier.wait()
        for _ in range(per_thread):
            os.write(fd, line)
            sinks._sync(fd)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    os.close(fd)
    return WRITERS * per_thread / elapsed


def main() -> None:
    per_writer = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    events = WRITERS * per_writer
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        directory = Path(tmp)
        print(f"{WRITERS} writers x {per_writer} events, file sink in {Path.cwd()}; "
              f"{_load()}")
        print(f"{'what':<52} {'events/s':>10}  target")
        print(f"{'bare json.dumps + write (no chain, no fsync)':<52} "
              f"{_bare_rate(directory, events, sync=False):>10,.0f}")
        synced = _bare_rate(directory, min(events, 2000), sync=True)
        print(f"{'bare json.dumps + write + fsync per event':<52} {synced:>10,.0f}"
              f"  (one fsync {1e6 / synced:,.0f} µs on this disk now)")
        parallel = _parallel_sync_rate(directory, min(per_writer, 250))
        print(f"{f'bare write + fdatasync, {WRITERS} threads at once':<52} {parallel:>10,.0f}"
              f"  (one sync per line, {WRITERS} in flight, no Python work)")
        keep: list[Secret] = [generate_secret() for _ in range(10)]
        for live in (10, 10_000):
            keep += [generate_secret() for _ in range(live - len(keep))]
            rate, batches, user, system = _audit_rate(directory, per_writer)
            label = f"json, chained, durable, {live:,} live secrets"
            print(f"{label:<52} {rate:>10,.0f}  ≥ {TARGET:,} {_verdict(rate)}"
                  f"  ({events / batches:.1f} events per sync; CPU µs/event: user {user:.0f}"
                  f" (GIL budget {1e6 / TARGET:.0f}), system {system:.0f})")
        real_sync = sinks._sync
        sinks._sync = lambda fd: None  # what the pipeline costs in CPU, without the disk
        try:
            rate, _, user, system = _audit_rate(directory, per_writer)
        finally:
            sinks._sync = real_sync
        label = f"json, chained, fsync skipped, {len(keep):,} live secrets"
        print(f"{label:<52} {rate:>10,.0f}  (CPU ceiling; CPU µs/event: user {user:.0f},"
              f" system {system:.0f})")
        _cpu_per_format(directory, len(keep))
        print(_load())


def _least(action: Callable[[], object], rounds: int = 5, number: int = 2000) -> float:
    """CPU µs per call of ``action``: the least of ``rounds`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(number):
            action()
        best = min(best, time.process_time() - start)
    return best / number * 1e6


def _cpu_per_format(directory: Path, live: int) -> None:
    """One writer, sync skipped: CPU µs per event per format, and its stages."""
    print(f"CPU µs per event, one writer, fsync skipped, {live:,} live secrets "
          f"(least of 5 rounds; budget {1e6 / TARGET:.0f} µs for {TARGET:,}/s):")
    print(f"{'format':<8} {'event':>7} {'record':>7} {'format':>7} {'redact':>7} "
          f"{'seal':>7} {'sink':>7} {'in loop':>8}")
    real_sync = sinks._sync
    sinks._sync = lambda fd: None
    try:
        for format_ in FORMATS:
            *alone, in_loop = _cpu_row(directory, format_)
            print(f"{format_:<8} " + " ".join(f"{cpu:>7.1f}" for cpu in alone)
                  + f" {in_loop:>8.1f}")
    finally:
        sinks._sync = real_sync
    print("(event: all of it; record: context, timestamp and catalogue; format: the line;"
          " redact: the rest of the redacted line; seal: seq and chain; sink: a batch of one"
          " line without its seal: locks, stat, write, checkpoint; in loop: the sink's batch,"
          " seal included, timed inside the event loop: it costs more there than alone, with"
          " no extra call in cProfile)")


def _cpu_row(directory: Path, format_: str) -> list[float]:
    spec = CATALOGUE["secret_staged"]
    file = directory / f"cpu-{format_}-{secrets.token_hex(4)}.log"
    log = AuditLog(Secret(secrets.token_urlsafe(32)), file=file, format=format_)
    sink = log._sinks[0]
    assert isinstance(sink, sinks.FileSink)
    fields = _fields()
    with bound(client="client-1", idp="kc", actor="bench", rotation_id="r-1"):
        event = _least(lambda: log.event("secret_staged", **fields))
        writer, log._writer.msg = log._writer.msg, lambda spec, fields: None  # type: ignore
        record = _least(lambda: log.event("secret_staged", **fields))
        log._writer.msg = writer  # type: ignore[method-assign]
    full = {**fields, "actor": "bench", "client": "client-1", "rotation_id": "r-1",
            "idp": "kc", "@timestamp": "2026-01-01T00:00:00.000000Z"}
    render: dict[str, Callable[[EventSpec, dict[str, Any]], str]] = {
        "json": ecs_json, "cef": cef_line,
        "ocsf": lambda spec, fields: render_json(ocsf_document(spec, dict(fields)))}
    formatted = _least(lambda: render[format_](spec, full))
    line = _redacted_line(format_, spec, full)
    whole = _least(lambda: _redacted_line(format_, spec, full))
    sealed = _least(lambda: seal(line, 7, b"k" * 32, "0" * 64))
    batch = _least(lambda: sink.write(line))
    in_loop = _sink_in_loop(log, sink, fields)
    log.close()
    return [event, record, formatted, whole - formatted, sealed, batch - sealed, in_loop]


def _sink_in_loop(log: AuditLog, sink: sinks.FileSink, fields: dict[str, object]) -> float:
    """CPU µs of ``sink.write`` per event, timed within a loop of whole events (the least of
    5 rounds; the two clock reads per event are counted in it)."""
    spent = [0.0]
    real_write = sink.write

    def timed(line: str) -> None:
        start = time.process_time()
        real_write(line)
        spent[0] += time.process_time() - start

    sink.write = timed  # type: ignore[method-assign]
    best = float("inf")
    try:
        with bound(client="client-1", idp="kc", actor="bench", rotation_id="r-1"):
            for _ in range(5):
                spent[0] = 0.0
                for _ in range(2000):
                    log.event("secret_staged", **fields)
                best = min(best, spent[0])
    finally:
        sink.write = real_write  # type: ignore[method-assign]
    return best / 2000 * 1e6


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _verdict(rate: float) -> str:
    return "met" if rate >= TARGET else "NOT met"


if __name__ == "__main__":
    main()
