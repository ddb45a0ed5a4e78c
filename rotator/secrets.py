"""Secret values: a wrapper that never prints itself, redaction and keyed fingerprints.

Every secret value rotator handles travels as a :class:`Secret`. Its ``repr`` and ``str``
hide the value, so a secret that slips into an f-string, a log call or an exception shows
``**********``. Wrapping a value also registers it with a process-wide redactor; the
logging pipeline and error translation run text through :func:`redact` as a second line of
defence for text that came from elsewhere (a remote error body echoing a form field).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _stdlib_secrets
import threading
import weakref

_MASK = "**********"
#: Values shorter than this are not redacted by substring: they would mangle ordinary text.
_MIN_REDACT_LEN = 8


class _Redactor:
    """Remembers live secret values so that text can be scrubbed of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: weakref.WeakValueDictionary[str, Secret] = weakref.WeakValueDictionary()

    def add(self, secret: Secret) -> None:
        if len(secret._value) >= _MIN_REDACT_LEN:
            with self._lock:
                self._values[secret._value] = secret

    def redact(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values.keys(), key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, _MASK)
        return text


_REDACTOR = _Redactor()


class Secret:
    """A secret value that hides itself from ``repr``, ``str`` and formatting."""

    __slots__ = ("__weakref__", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value
        _REDACTOR.add(self)

    def reveal(self) -> str:
        """Return the value. Call only where the value must leave the process."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", hashlib.sha256(self._value.encode()).digest()))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


def redact(text: str) -> str:
    """Replace every live secret value inside ``text`` with a mask."""
    return _REDACTOR.redact(text)


def generate_secret(nbytes: int = 32) -> Secret:
    """A new random client secret: ``nbytes`` of entropy, URL-safe base64."""
    return Secret(_stdlib_secrets.token_urlsafe(nbytes))


def fingerprint(key: bytes, secret: Secret) -> str:
    """A keyed fingerprint (HMAC-SHA256) that identifies ``secret`` without revealing it.

    Anyone holding the audit key can compute the fingerprint of a value they know and search
    the audit log for it; without the key the fingerprint says nothing about the value.
    """
    digest = hmac.new(key, secret.reveal().encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{digest[:32]}"


def check_secret_value(value: str) -> str | None:
    """Why ``value`` cannot be stored as a client id or secret, or None when it can.

    Only printable ASCII without spaces (``!`` to ``~``) is accepted: a value from an IdP is
    hostile until checked, and anything else (a newline, a Unicode line separator, a
    control character) can end a line in a file that a service reads. The reason never
    quotes the value.
    """
    if not value:
        return "is empty"
    if not all("!" <= ch <= "~" for ch in value):
        return "contains characters other than printable ASCII without spaces"
    return None
