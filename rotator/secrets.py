"""Secret values: a wrapper that never prints itself, redaction and keyed fingerprints.

Every secret value rotator handles travels as a :class:`Secret`. Its ``repr`` and ``str``
hide the value, so a secret that slips into an f-string, a log call or an exception shows
``**********``. Wrapping a value also registers it with a process-wide redactor; the
logging pipeline and error translation run text through :func:`redact` as a second line of
defence for text that came from elsewhere (a remote error body echoing a form field).

The redactor remembers every value for the life of the process, also after its
``Secret`` is gone, together with the encodings a secret travels in: percent-encoding
(``+`` for a space too), JSON string and Python ``repr`` escaping (nested up to three
deep) and base64; :func:`register_credentials` adds the base64 of ``client_id:secret`` that an
HTTP Basic header carries. It keeps no value, only a keyed digest (BLAKE2b, a random key
per process) of each form, and a 64-bit hash of each form's first 8 characters to find
candidates. Redacting costs the same however many values are registered: one hash per
position of the text, and a digest only where a known prefix starts. Forms of 8 or more
characters are found anywhere; shorter ones only as a whole word (no letter or digit on
either side), so a short value does not mangle ordinary text. Forms of values no longer
wrapped in a live ``Secret`` are forgotten oldest first once more than
:data:`MAX_REMEMBERED_FORMS` are held, which bounds memory in a long-lived process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets as _stdlib_secrets
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from urllib.parse import quote, quote_plus

_MASK = "**********"
#: Shorter forms are redacted only as whole words: as substrings they would mangle text.
_MIN_REDACT_LEN = 8
#: Forms of values no longer held in a live Secret are forgotten past this many (~20 MB).
MAX_REMEMBERED_FORMS = 100_000
_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")
#: Where a whole word may start: a position not preceded by a letter or digit.
_WORD_START = re.compile(r"(?<![^\W_])(?=\S)")


_ESCAPES: tuple[Callable[[str], str], ...] = (
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: repr(s)[1:-1],
    lambda s: repr(s.encode("utf-8", "surrogatepass"))[2:-1],
)
#: How many escapings deep a value is looked for: a JSON document in a JSON field in a
#: logged bytes repr (botocore's request dump) is three.
_ESCAPE_DEPTH = 3


def _encodings(value: str) -> set[str]:
    """The forms ``value`` takes in URLs, form bodies, (nested) JSON, reprs and base64."""
    forms, frontier = {value}, {value}
    for _ in range(_ESCAPE_DEPTH):
        frontier = {escape(form) for form in frontier for escape in _ESCAPES} - forms
        forms |= frontier
    for quoted in (quote(value, safe=""), quote(value), quote_plus(value, safe=""),
                   quote_plus(value)):
        forms.add(quoted)
        forms.add(_PERCENT_HEX.sub(lambda m: m.group().lower(), quoted))
    forms.update(_base64_forms(value))
    return forms


def _base64_forms(value: str) -> set[str]:
    raw = value.encode("utf-8", "surrogatepass")
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return encoded | {e.rstrip("=") for e in encoded}


class _Redactor:
    """Remembers keyed digests of secret values and their encodings; masks them in text."""

    def __init__(self, max_forms: int = MAX_REMEMBERED_FORMS) -> None:
        self._lock = threading.Lock()
        self._key = os.urandom(16)
        self._max_forms = max_forms
        #: digest -> (candidate hash, length, the Secret that keeps it from being forgotten)
        self._forms: OrderedDict[bytes, tuple[int, int, weakref.ref[Secret]]] = OrderedDict()
        #: hash of the first 8 characters of a long form -> lengths of forms starting so
        self._long: dict[int, Counter[int]] = {}
        #: hash of a whole short form -> how many forms have it; and their lengths
        self._short: Counter[int] = Counter()
        self._short_lengths: Counter[int] = Counter()

    def _digest(self, form: str) -> bytes:
        data = form.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, key=self._key, digest_size=16).digest()

    def add(self, owner: Secret, forms: set[str]) -> None:
        ref = weakref.ref(owner)
        with self._lock:
            for form in forms:
                if not form:
                    continue
                digest = self._digest(form)
                if digest in self._forms:
                    self._forms[digest] = (*self._forms[digest][:2], ref)
                    self._forms.move_to_end(digest)
                    continue
                long = len(form) >= _MIN_REDACT_LEN
                tag = hash(form[:_MIN_REDACT_LEN] if long else form)
                self._forms[digest] = (tag, len(form), ref)
                if long:
                    self._long.setdefault(tag, Counter())[len(form)] += 1
                else:
                    self._short[tag] += 1
                    self._short_lengths[len(form)] += 1
            self._forget_dead()

    def _forget_dead(self) -> None:
        # Oldest first; a form whose Secret is alive goes to the back instead.
        for _ in range(len(self._forms)):
            if len(self._forms) <= self._max_forms:
                return
            digest, (tag, length, ref) = self._forms.popitem(last=False)
            if ref() is not None:
                self._forms[digest] = (tag, length, ref)
                continue
            if length >= _MIN_REDACT_LEN:
                lengths = self._long[tag]
                lengths[length] -= 1
                if lengths[length] <= 0:
                    del lengths[length]
                if not lengths:
                    del self._long[tag]
            else:
                for counter, key in ((self._short, tag), (self._short_lengths, length)):
                    counter[key] -= 1
                    if counter[key] <= 0:
                        del counter[key]

    def redact(self, text: str) -> str:
        n = len(text)
        spans: list[tuple[int, int]] = []
        with self._lock:
            if self._long and n >= _MIN_REDACT_LEN:
                tags = list(map(hash, [text[i:i + _MIN_REDACT_LEN]
                                       for i in range(n - _MIN_REDACT_LEN + 1)]))
                for tag in self._long.keys() & tags:
                    lengths = sorted(self._long[tag], reverse=True)
                    i = tags.index(tag)
                    while True:
                        for length in lengths:
                            if i + length <= n and self._digest(text[i:i + length]) in self._forms:
                                spans.append((i, i + length))
                                break
                        try:
                            i = tags.index(tag, i + 1)
                        except ValueError:
                            break
            if self._short:
                for match in _WORD_START.finditer(text):
                    i = match.start()
                    for length in self._short_lengths:
                        end = i + length
                        if (end <= n and not (end < n and text[end].isalnum())
                                and hash(text[i:end]) in self._short
                                and self._digest(text[i:end]) in self._forms):
                            spans.append((i, end))
        if not spans:
            return text
        spans.sort(key=lambda span: (span[0], -span[1]))
        out, done = [], 0
        for start, end in spans:
            if start >= done:
                out.append(text[done:start] + _MASK)
                done = end
            elif end > done:  # overlaps the previous mask: extend it
                done = end
        out.append(text[done:])
        return "".join(out)


_REDACTOR = _Redactor()


class Secret:
    """A secret value that hides itself from ``repr``, ``str`` and formatting."""

    __slots__ = ("__weakref__", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value
        _REDACTOR.add(self, _encodings(value))

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
    """Replace every secret value the process has handled, in any known encoding, by a mask."""
    return _REDACTOR.redact(text)


def register_credentials(client_id: str, secret: Secret) -> None:
    """Also redact the base64 of ``client_id:secret`` (raw and form-encoded, RFC 6749 §2.3.1).

    An HTTP Basic header carries this pair; neither part alone shows up in its base64.
    """
    value = secret.reveal()
    pairs = {f"{client_id}:{value}", f"{quote(client_id, safe='')}:{quote(value, safe='')}",
             f"{quote_plus(client_id, safe='')}:{quote_plus(value, safe='')}"}
    _REDACTOR.add(secret, set().union(*map(_base64_forms, pairs)))


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
