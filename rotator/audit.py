"""The structured audit log: one JSON object per line, for people and SIEMs.

Every rotation step and every outcome is one event. Each event carries ``rotation_id``,
``client``, ``store``, ``idp``, ``step``, ``outcome``, ``actor`` and ``duration_ms``; where
an event must identify a secret it carries a keyed fingerprint
(:func:`rotator.secrets.fingerprint`, HMAC-SHA256 with the audit key), never the secret.
A redaction processor scrubs any live secret value from every string as a last defence.

Events use ECS-compatible top-level names where they exist (``event.action``,
``event.outcome``, ``event.category``) so that ingest pipelines need no renaming.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog

from rotator._files import UnsafeFile, ensure_private_dir, open_private
from rotator.errors import ConfigError, ConfigProblem
from rotator.secrets import Secret, fingerprint, redact

_ECS_TYPE = {
    "rotation_started": "start",
    "secret_created": "creation",
    "secret_staged": "change",
    "secret_verified": "info",
    "secret_promoted": "change",
    "old_secret_retired": "deletion",
    "new_secret_discarded": "deletion",
}


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
    """structlog processor: scrub every live secret value from the event."""
    return {k: _scrub(v) for k, v in event_dict.items()}


def _ecs_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    action = event_dict.get("event")
    event_dict.setdefault("event.action", action)
    event_dict.setdefault("event.category", "iam")
    event_dict.setdefault("event.type", _ECS_TYPE.get(str(action), "info"))
    if "outcome" in event_dict:
        event_dict.setdefault("event.outcome", event_dict["outcome"])
    return event_dict


class _Sinks:
    """A structlog logger writing each rendered line to every sink, flushed and synced."""

    def __init__(self, sinks: list[TextIO], sync: bool) -> None:
        self._sinks = sinks
        self._sync = sync
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            for sink in self._sinks:
                sink.write(message + "\n")
                sink.flush()
                if self._sync and sink.fileno() > 2:
                    os.fsync(sink.fileno())

    info = warning = error = msg


def _open_log(file: Path) -> int:
    """Open the audit log for appending: in a directory only this user may write, never
    through a symlink, and only a file of this user's that no one else may open.

    Raises ``ConfigError`` naming the file and the ``audit.file`` setting.
    """
    try:
        ensure_private_dir(file.parent)
        return open_private(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        reason = str(exc) if isinstance(exc, UnsafeFile) else f"cannot open: {exc.strerror}"
        raise ConfigError([ConfigProblem(str(file), "audit.file", reason)]) from None


class AuditLog:
    """Writes audit events; the one place that knows the audit key."""

    def __init__(self, key: Secret, *, file: Path | None = None, stdout: bool = False,
                 stream: TextIO | None = None) -> None:
        self._key = key.reveal().encode()
        self._files: list[TextIO] = []
        sinks: list[TextIO] = []
        if file is not None:
            handle = os.fdopen(_open_log(file), "a", encoding="utf-8")
            self._files.append(handle)
            sinks.append(handle)
        if stdout:
            sinks.append(sys.stdout)
        if stream is not None:
            sinks.append(stream)
        self._log = structlog.wrap_logger(
            _Sinks(sinks, sync=file is not None),
            # Independent of the diagnostic log's level: audit events are never filtered.
            wrapper_class=structlog.BoundLogger,
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="@timestamp"),
                _ecs_processor,
                redact_processor,
                structlog.processors.JSONRenderer(),
            ],
        )

    def fingerprint(self, secret: Secret) -> str:
        """The keyed fingerprint of ``secret`` for this audit log."""
        return fingerprint(self._key, secret)

    def event(self, event: str, **fields: Any) -> None:
        """Write one audit event."""
        self._log.info(event, **fields)

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        self._files.clear()


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` to every audit and log event inside the block."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield
