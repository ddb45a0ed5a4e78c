"""Talking to remote systems safely: a value as one URL path segment, and what a remote
system's error answer may contribute to an error message (redacted, short)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

import httpx

from rotator.secrets import redact

#: The most characters of a remote error body an error message carries.
MAX_ERROR_TEXT = 200
#: Runs of whitespace and control characters: an error message is one line.
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


def path_segment(value: str) -> str:
    """``value`` as one URL path segment: '/', '?', '#', '%' and dot segments escaped, so an
    id from a config or an IdP cannot reach another path of the admin API."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


def _line(text: str) -> str:
    return _BREAKS.sub(" ", redact(text)).strip()[:MAX_ERROR_TEXT]


def error_text(response: httpx.Response, keys: Sequence[str]) -> str:
    """The error fields ``keys`` of a JSON error body, else the body itself, redacted and cut.

    Redaction comes before the cut: a secret straddling the cut would leak its start. Line
    breaks and control characters become spaces: the message is one line.
    """
    try:
        body = response.json()
    except ValueError:
        return _line(response.text) or "no body"
    if isinstance(body, dict):
        parts = [str(body[k]) for k in keys if body.get(k)]
        if parts:
            return _line("; ".join(parts))
    return _line(str(body))
