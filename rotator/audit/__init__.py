"""The audit log: one sealed record per line, for people and SIEMs.

Every rotation step and every outcome is one event from :mod:`rotator.audit.catalogue`. Each
event carries ``rotation_id``, ``client``, ``idp``, ``actor`` (bound as context), ``step``,
``outcome`` and ``duration_ms``; where an event must identify a secret it carries a keyed
fingerprint (:func:`rotator.secrets.fingerprint`, HMAC-SHA256 with the audit key), never the
secret. Each record is redacted once, as a whole line, as a last defence against a live secret
value in free text.

The ``json`` format (:mod:`rotator.audit.formats`) is an ECS document, ``ocsf`` an OCSF event,
``cef`` a CEF line; every line is sealed
with a sequence number and an HMAC chain (:mod:`rotator.audit.chain`) that ``rotator audit
verify`` checks. The file sink (:mod:`rotator.audit.sinks`) is durable before
:meth:`AuditLog.event` returns, with one ``fsync`` per batch of concurrent events; when the
record cannot be written, ``event`` raises ``AuditWriteError`` and what logged it stops.

Inside :meth:`AuditLog.deferred` (a rotation's steps) a thread's events reach the file logs
at once, so they outlive a killed process, but are synced together before the step that
logged them goes on: :meth:`AuditLog.durable` syncs them while the journal commits the step,
and returns once both are on disk; :meth:`AuditLog.sync` syncs them alone.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import structlog

from rotator.audit.catalogue import CATALOGUE, EventSpec
from rotator.audit.chain import chain_key, checkpoint_path
from rotator.audit.checkpoints import (
    EVERY_RECORDS,
    EVERY_SECONDS,
    CheckpointRecorder,
    log_id,
)
from rotator.audit.checkpoints import key_id as checkpoint_key_id
from rotator.audit.formats import (
    FORMATS,
    cef_line,
    ecs_document,
    ecs_json,
    flatten,
    ocsf_document,
    render_json,
)
from rotator.audit.remote import open_remote
from rotator.audit.sinks import Appended, AuditWriteError, FileSink, StreamSink, open_log
from rotator.audit.spool import SpoolSink
from rotator.secrets import Secret, fingerprint, redact

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from rotator.config import Config
    from rotator.interfaces import Journal

__all__ = ["CATALOGUE", "AuditLog", "AuditWriteError", "bound", "flatten", "open_log",
           "redact_processor"]

_log = structlog.get_logger("rotator.audit")
_T = TypeVar("_T")
#: Threads that sync deferred events beside the journal's commits (one per parallel rotation).
_SYNC_THREADS = 4
_UNCATALOGUED = EventSpec("uncatalogued", "an event missing from rotator's catalogue", "iam",
                          "info", 3004, 99, "warning", frozenset())


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, Secret):
        return str(value)
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: scrub every live secret value from the event (diagnostic log)."""
    return {k: _scrub(v) for k, v in event_dict.items()}


def _plain(value: Any) -> Any:
    """A value JSON can carry; a Secret that slipped in shows as its mask."""
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _redacted_line(format_: str, spec: EventSpec, fields: dict[str, Any]) -> str:
    """The record as one line in ``format_``, redacted once as a whole; per field only if
    masking a value broke the JSON (a secret form that spans a quote)."""
    if format_ == "cef":
        # CEF escaping makes forms the redactor does not know: redact each value first.
        return cef_line(spec, _scrub(fields))
    render = ocsf_document if format_ == "ocsf" else ecs_document
    line = ecs_json(spec, fields) if format_ == "json" else \
        render_json(render(spec, dict(fields)))
    masked = redact(line)
    if masked is line or masked == line:
        return line
    try:
        json.loads(masked)
        return masked
    except ValueError:
        return render_json(render(spec, _scrub(fields)))


class _Writer:
    """The end of the structlog pipeline: each event goes, formatted (once per format) and
    redacted, to every sink."""

    def __init__(self, sinks: list[tuple[str, FileSink | StreamSink | SpoolSink]]) -> None:
        self.sinks = sinks
        #: per thread: ``deferring`` (depth of AuditLog.deferred blocks, 0 when paused) and
        #: ``pending`` (lines appended to file sinks, not yet synced)
        self.local = threading.local()

    def msg(self, spec: EventSpec, fields: dict[str, Any]) -> None:
        lines: dict[str, str] = {}
        deferring = getattr(self.local, "deferring", 0) > 0
        for format_, sink in self.sinks:
            if format_ not in lines:
                lines[format_] = _redacted_line(format_, spec, fields)
            if deferring and isinstance(sink, FileSink):
                self.local.pending.append((sink, sink.append(lines[format_])))
            else:
                sink.write(lines[format_])

    def take_pending(self) -> list[tuple[FileSink, Appended]]:
        pending: list[tuple[FileSink, Appended]] = getattr(self.local, "pending", [])
        self.local.pending = []
        return pending

    info = msg


_merge_contextvars = structlog.contextvars.merge_contextvars
#: The structlog chain :meth:`AuditLog.event` gives the same fields as, in the same order
#: (tests compare it with a BoundLogger that runs these).
PROCESSORS: tuple[Callable[..., Any], ...] = (
    _merge_contextvars,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="@timestamp"),
    structlog.processors.EventRenamer("message"),
)


def _now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Writes audit events; the one place that knows the audit key."""

    @classmethod
    def from_config(cls, config: Config, *, stream: TextIO | None = None,
                    local_files: bool = True) -> AuditLog:
        """The audit log ``config`` describes: ``[audit] file`` and each ``[[audit.sinks]]``
        in their formats, and ``stream`` (where ``[audit] stdout = true`` goes) if given.

        ``local_files=False`` writes to ``stream`` only (the Lambda, whose disk is not kept).
        Raises ``ConfigError`` without an audit key, ``OSError`` if a file cannot be opened.
        """
        audit = config.audit
        log = cls(audit.require_key(config.path),
                  file=audit.file if local_files else None,
                  stream=stream, format=audit.format,
                  files=[(s.path, s.format) for s in audit.sinks
                         if s.type == "file"] if local_files else ())
        remote = [s for s in audit.sinks if s.type != "file"] if local_files else []
        try:
            for sink in remote:  # fed from a durable spool of their own: see audit.spool
                log.add_sink(sink.format, open_remote(sink, sink.path.parent,
                                                      chain_key(log._key)))
        except BaseException:
            log.close()
            raise
        return log

    def __init__(self, key: Secret, *, file: Path | None = None, stdout: bool = False,
                 stream: TextIO | None = None, format: str = "json",
                 files: Sequence[tuple[Path, str]] = ()) -> None:
        """Events go to ``file``, stdout, ``stream`` (in ``format``) and to each of ``files``
        (path, format: the ``[[audit.sinks]]`` entries); each file keeps its own chain."""
        for _, format_ in [(None, format), *files]:
            if format_ not in FORMATS:
                raise ValueError(f"audit format {format_!r}: expected one of "
                                 f"{', '.join(FORMATS)}")
        self._key = key.reveal().encode()
        chain = chain_key(self._key)
        targets: list[tuple[str, FileSink | StreamSink]] = []
        opened: list[FileSink | StreamSink] = []
        try:
            for path, format_ in [*([(file, format)] if file is not None else []), *files]:
                opened.append(FileSink(path, chain, checkpoint_path(path)))
                targets.append((format_, opened[-1]))
        except BaseException:
            for sink in opened:
                sink.close()
            raise
        if stdout:
            targets.append((format, StreamSink(sys.stdout, chain)))
        if stream is not None:
            targets.append((format, StreamSink(stream, chain)))
        self._sinks: list[FileSink | StreamSink | SpoolSink] = [sink for _, sink in targets]
        self._writer = _Writer(list(targets))
        self._recorders: list[CheckpointRecorder] = []
        self._syncers: ThreadPoolExecutor | None = None
        self._syncers_lock = threading.Lock()

    def add_sink(self, format_: str, sink: SpoolSink) -> None:
        """Write every later event to ``sink`` too, in ``format_`` (a remote sink's spool)."""
        if format_ not in FORMATS:
            raise ValueError(f"audit format {format_!r}: expected one of {', '.join(FORMATS)}")
        self._writer.sinks.append((format_, sink))
        self._sinks.append(sink)

    def record_checkpoints(self, journal: Journal, *, every_records: int = EVERY_RECORDS,
                           every_seconds: float = EVERY_SECONDS,
                           clock: Callable[[], float] = time.monotonic
                           ) -> list[CheckpointRecorder]:
        """From now on, record each file log's chain in ``journal`` after ``every_records``
        records or ``every_seconds`` seconds, whichever first, and at the end (see
        :mod:`rotator.audit.checkpoints`). Call :meth:`stop_checkpoints` before closing
        ``journal``."""
        key = checkpoint_key_id(self._key)
        for sink in self._sinks:
            if isinstance(sink, FileSink) and sink.on_commit is None:
                recorder = CheckpointRecorder(journal, log_id(sink.file), key,
                                              every_records=every_records,
                                              every_seconds=every_seconds, clock=clock)
                sink.on_commit = recorder.committed
                self._recorders.append(recorder)
        return list(self._recorders)

    def stop_checkpoints(self) -> None:
        """Record each file log's last commit in the journal and stop recording."""
        for sink in self._sinks:
            if isinstance(sink, FileSink):
                sink.on_commit = None
        recorders, self._recorders = self._recorders, []
        for recorder in recorders:
            recorder.close()

    def fingerprint(self, secret: Secret) -> str:
        """The keyed fingerprint of ``secret`` for this audit log."""
        return fingerprint(self._key, secret)

    def event(self, event: str, **fields: Any) -> None:
        """Write one audit event (a name from the catalogue); durable when it returns, or in
        a :meth:`deferred` block written when it returns and durable at the step's commit."""
        # What PROCESSORS would make of it, without their per-call machinery; independent
        # of the diagnostic log's level: audit events are never filtered.
        _merge_contextvars(None, "info", fields)  # explicit fields win over bound ones
        fields.pop("message", None)  # "event" and "message" name the event: not fields
        fields.pop("event", None)
        fields["@timestamp"] = _now().isoformat().replace("+00:00", "Z")
        spec = CATALOGUE.get(event)
        for name, value in fields.items():
            if type(value) not in _PLAIN:
                fields[name] = _plain(value)
        if spec is None:
            _log.warning("audit_event_not_in_catalogue", audit_event=event)
            spec = _UNCATALOGUED
            fields["uncatalogued_event"] = event
        self._writer.msg(spec, fields)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside the block, this thread's events are appended to the file logs when
        :meth:`event` returns but synced together later: by :meth:`durable` beside the
        journal's commit of the step that logged them, by :meth:`sync`, at the latest when
        the block ends. Blocks nest."""
        local = self._writer.local
        outer = getattr(local, "deferring", 0)
        if not outer:
            local.pending = []
        local.deferring = outer + 1
        try:
            yield
        finally:
            local.deferring = outer
            if not outer:
                self.sync()

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """Inside a :meth:`deferred` block: sync what is deferred, then make each event
        durable when it returns again (hooks and alerts, which act and journal on their
        own)."""
        self.sync()
        local = self._writer.local
        outer = getattr(local, "deferring", 0)
        local.deferring = 0
        try:
            yield
        finally:
            local.deferring = outer

    def sync(self) -> None:
        """Make this thread's deferred events durable now."""
        _sync_all(self._writer.take_pending())

    def durable(self, commit: Callable[[], _T]) -> _T:
        """Run ``commit`` (the journal's commit of the step whose events this thread
        deferred) while those events are synced; return its result once both are durable.

        When ``commit`` fails, that failure is raised (once the sync is over); when only
        the sync fails, ``AuditWriteError`` is, and the step must not go on.
        """
        pending = self._writer.take_pending()
        if not pending:
            return commit()
        future = self._sync_pool().submit(_sync_all, pending)
        try:
            result = commit()
        except BaseException:
            future.exception()  # wait for it: the commit's failure is what the caller hears
            raise
        future.result()
        return result

    def _sync_pool(self) -> ThreadPoolExecutor:
        with self._syncers_lock:
            if self._syncers is None:
                from concurrent.futures import ThreadPoolExecutor  # only where it is used

                self._syncers = ThreadPoolExecutor(_SYNC_THREADS,
                                                   thread_name_prefix="audit-sync")
            return self._syncers

    def reopen(self) -> None:
        """Reopen the log file by its path before the next event: call on SIGHUP (a moved
        file is also noticed without it)."""
        for sink in self._sinks:
            sink.reopen()

    def close(self) -> None:
        self.sync()
        if self._syncers is not None:
            self._syncers.shutdown()
            self._syncers = None
        self.stop_checkpoints()
        for sink in self._sinks:
            sink.close()
        self._sinks.clear()


def _sync_all(pending: list[tuple[FileSink, Appended]]) -> None:
    """Sync deferred lines, each sink's together; every sink is synced (and its descriptors
    released) even when one fails, whose error is then raised."""
    by_sink: dict[FileSink, list[Appended]] = {}
    for sink, appended in pending:
        by_sink.setdefault(sink, []).append(appended)
    failure: AuditWriteError | None = None
    for sink, appended_lines in by_sink.items():
        try:
            sink.sync(appended_lines)
        except AuditWriteError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` to every audit and log event inside the block."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield
