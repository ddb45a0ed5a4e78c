"""The operational log on stderr: timestamped, redacted, console or JSON."""

from __future__ import annotations

import logging
from typing import Any, TextIO

import structlog

from rotator.audit import redact_processor
from rotator.logsafety import install_log_safety
from rotator.secrets import redact


def _json_default(value: object) -> str:
    """What the JSON log shows for a value JSON cannot carry: its text, redacted."""
    return redact(str(value))


def setup_logging(verbose: bool, stream: TextIO, log_format: str = "console") -> None:
    """Operational log lines on ``stream``: timestamped (ISO 8601, UTC), redacted, and in
    ``log_format`` (``console`` or ``json``)."""
    install_log_safety()
    level = logging.DEBUG if verbose else logging.WARNING
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(default=_json_default)
    else:
        console = structlog.dev.ConsoleRenderer(colors=False)

        def renderer(logger: Any, method: str, event_dict: structlog.typing.EventDict) -> str:
            # The console shows objects by repr, which redact_processor does not see.
            return redact(console(logger, method, event_dict))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
