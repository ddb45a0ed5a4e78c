"""What a remote system's error answer may contribute to an error message: redacted, short."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from rotator.secrets import redact

#: The most characters of a remote error body an error message carries.
MAX_ERROR_TEXT = 200


def error_text(response: httpx.Response, keys: Sequence[str]) -> str:
    """The error fields ``keys`` of a JSON error body, else the body itself, redacted and cut.

    Redaction comes before the cut: a secret straddling the cut would leak its start.
    """
    try:
        body = response.json()
    except ValueError:
        return redact(response.text)[:MAX_ERROR_TEXT] or "no body"
    if isinstance(body, dict):
        parts = [str(body[k]) for k in keys if body.get(k)]
        if parts:
            return redact("; ".join(parts))[:MAX_ERROR_TEXT]
    return redact(str(body))[:MAX_ERROR_TEXT]
