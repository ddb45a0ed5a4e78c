"""Keeping secrets out of stdlib ``logging``: the libraries under rotator log at DEBUG.

With ``logging.basicConfig(level=logging.DEBUG)`` (what ``AWS_LAMBDA_LOG_LEVEL=DEBUG`` does
in Lambda) botocore logs every API call's parameters, a ``PutSecretValue``'s
``SecretString`` included, and urllib3, requests, hvac, httpx and httpcore log requests.
:func:`install_log_safety` caps those loggers at INFO and redacts every log record the
process creates (:func:`rotator.secrets.redact`: every secret value rotator has handled, in
its usual encodings). The Lambda handler, the client library and the CLI call it; call it
yourself where you embed rotator and configure logging of your own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from rotator.secrets import redact

__all__ = ["CAPPED_LOGGERS", "RedactingFilter", "install_log_safety"]

#: Loggers whose DEBUG output carries request parameters, headers or bodies.
CAPPED_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "requests", "hvac",
                  "httpx", "httpcore")
_LOCK = threading.Lock()
_DONE = "_rotator_redacted"


def _redact_record(record: logging.LogRecord) -> None:
    """Replace the record's message, arguments and traceback text by redacted text."""
    if getattr(record, _DONE, False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep what can be shown
        message = f"{record.msg!s} {record.args!r}"
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    setattr(record, _DONE, True)


class RedactingFilter(logging.Filter):
    """A filter (for a handler or logger) that redacts secrets from each record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def install_log_safety() -> None:
    """Cap the noisy libraries' loggers at INFO and redact every log record; idempotent.

    A logger set below INFO (or not set) is pinned at INFO or at the level it inherits now,
    whichever is higher: under the default WARNING root its INFO lines stay off, so a
    request costs no log record. One set higher is left alone. Every record is redacted when
    it is created, whichever handler later gets it, and the root logger's handlers get a
    :class:`RedactingFilter`.
    """
    with _LOCK:
        for name in CAPPED_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level < logging.INFO:
                logger.setLevel(max(logging.INFO, logger.getEffectiveLevel()))
        factory = logging.getLogRecordFactory()
        if not getattr(factory, _DONE, False):
            def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = factory(*args, **kwargs)
                _redact_record(record)
                return record

            setattr(redacting_factory, _DONE, True)
            logging.setLogRecordFactory(redacting_factory)
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
