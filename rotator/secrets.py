"""Secret values: a wrapper that never prints itself, redaction and keyed fingerprints.

Every secret value rotator handles travels as a :class:`Secret`. Its ``repr`` and ``str``
hide the value, so a secret that slips into an f-string, a log call or an exception shows
``**********``. Wrapping a value also registers it with a process-wide redactor (before
the next redaction: see :meth:`_Redactor.defer`); the
logging pipeline and error translation run text through :func:`redact` as a second line of
defence for text that came from elsewhere (a remote error body echoing a form field).

The redactor remembers every value for the life of the process, also after its
``Secret`` is gone, together with the encodings a secret travels in: percent-encoding
(``+`` for a space too), JSON string and Python ``repr`` escaping (nested up to three
deep) and base64; :func:`register_credentials` adds the base64 of ``client_id:secret`` that an
HTTP Basic header carries. It keeps no value, only a keyed digest (BLAKE2b, a random key
per process) of each form's UTF-8, and the process-keyed hashes of the 8-byte grams that
start at its first 8 offsets. Redacting costs the same however many values are registered:
the text is probed every 8 bytes (one C call cuts the grams, one set operation
checks them all), and only where a probe's gram is known are the nearby starts digested.
Every occurrence of a form of 15 bytes or more covers a probe whose gram starts within the
form's first 8 bytes; a registered form of 8 to 14 bytes narrows the probe spacing to what
it needs (an 8-byte form: every position). Forms of 8 or more
characters are found anywhere; shorter ones only as a whole word (no letter or digit on
either side), so a short value does not mangle ordinary text. Forms of values no longer
wrapped in a live ``Secret`` are forgotten oldest first, half of
:data:`MAX_REMEMBERED_FORMS` at a time, so that no more are held: memory stays bounded in a
long-lived process (see :class:`_Redactor`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets as _stdlib_secrets
import struct
import threading
import weakref
from collections import ChainMap, deque
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import quote, quote_plus

_MASK = "**********"
_MASK_BYTES = _MASK.encode()
#: Shorter forms are redacted only as whole words: as substrings they would mangle text.
_MIN_REDACT_LEN = 8
#: Forms of values no longer held in a live Secret are forgotten past this many (~20 MB).
MAX_REMEMBERED_FORMS = 100_000
#: Values wrapped since the last redaction, registered at the next one (or once this many
#: wait, which bounds the memory they hold).
MAX_PENDING_VALUES = 1024
#: Long forms are found by the keyed hashes of 8-byte grams of their UTF-8.
_GRAM = 8
_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")
#: Characters no escaping or percent-encoding changes (RFC 3986 unreserved).
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")
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
    if _UNRESERVED.fullmatch(value):
        # Every escaping and percent-encoding leaves these characters as they are (most
        # generated secrets and access tokens): only the base64 forms differ.
        return {value} | _base64_forms(value)
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


def _stride(length: int) -> int:
    """How far apart the text positions probed for a long form of ``length`` bytes may be:
    every occurrence then covers a probed position whose gram starts at an offset below it."""
    return min(_GRAM, length - _GRAM + 1)


def _gram_tag(data: bytes, offset: int) -> int:
    return hash(data[offset:offset + _GRAM])  # bytes hashing is keyed per process


#: Grams cut by one struct at most (a longer text takes several cuts).
_GRAMS_PER_CUT = 512


@functools.lru_cache(maxsize=_GRAMS_PER_CUT)
def _grams(count: int) -> struct.Struct:
    """Cuts the first ``count`` 8-byte grams of a text in one C call (a struct of
    ``count`` 8-byte strings: no tuple per gram, as ``iter_unpack`` makes)."""
    return struct.Struct(f"{_GRAM}s" * count)


class _Form(NamedTuple):
    owner: weakref.ref[Secret]
    long: bool
    #: a long form's gram tags (one per offset below its stride), or a short form's word tag
    tags: tuple[int, ...]
    #: in bytes for a long form, in characters for a short one
    length: int


#: ``_Form(...)`` without the Python-level ``__new__`` a NamedTuple has (a third of the cost)
_new_form = tuple.__new__


class _Generation:
    """Forms remembered together and forgotten together (see :class:`_Redactor`), with what
    finding them takes; sets, not counts: a generation is never taken apart form by form."""

    __slots__ = ("forms", "grams", "lengths", "short", "short_lengths", "stride")

    def __init__(self) -> None:
        #: digest of a form's UTF-8 -> what finding it and carrying it over needs
        self.forms: dict[bytes, _Form] = {}
        #: tags of the 8-byte grams at the offsets below each long form's stride
        self.grams: set[int] = set()
        #: byte lengths of the long forms, and the smallest stride among them
        self.lengths: set[int] = set()
        self.stride = _GRAM
        #: hashes of the short forms, and their lengths in characters
        self.short: set[int] = set()
        self.short_lengths: set[int] = set()

    def keep(self, digest: bytes, form: _Form) -> None:
        """Take ``form`` over from an older generation."""
        self.forms[digest] = form
        if form.long:
            self.grams.update(form.tags)
            self.lengths.add(form.length)
            self.stride = min(self.stride, len(form.tags))
        else:
            self.short.add(form.tags[0])
            self.short_lengths.add(form.length)


class _Redactor:
    """Remembers keyed digests of secret values and their encodings; masks them in text.

    Forms are remembered in two generations. New ones join the young generation; once it
    holds half of ``max_forms``, the old generation is forgotten, except the forms whose
    Secret is still alive, which the young one takes over, and it becomes the old one. So
    at most ``max_forms`` forms of values no longer wrapped are held, the oldest forgotten
    first, and forgetting costs no work per form (the sets of a generation go at once).
    """

    def __init__(self, max_forms: int = MAX_REMEMBERED_FORMS) -> None:
        self._lock = threading.RLock()  # re-entered by add when a redaction runs defer's queue
        self._key = os.urandom(16)
        self._keyed = hashlib.blake2b(key=self._key, digest_size=16)
        self._half = max(1, max_forms // 2)
        self._young = _Generation()
        self._old = _Generation()
        #: text is probed every this many bytes: the smallest stride of a long form
        self._probe = _GRAM
        #: values wrapped but not registered yet: every redaction registers them first
        self._pending: deque[tuple[weakref.ref[Secret], str]] = deque()

    @property
    def _forms(self) -> ChainMap[bytes, _Form]:
        """Every remembered form by digest, the young generation's first."""
        return ChainMap(self._young.forms, self._old.forms)

    def _digest(self, data: bytes) -> bytes:
        keyed = self._keyed.copy()  # the key's block hashed once, in __init__
        keyed.update(data)
        return keyed.digest()

    def add(self, owner: Secret, forms: set[str]) -> None:
        """Remember ``forms`` as ``owner``'s. Run once per value a process wraps (a token
        client: per token it fetches), so the loop keeps to local names, and one list
        comprehension and one set update per long form."""
        ref = weakref.ref(owner)
        with self._lock:
            young = self._young
            if len(young.forms) >= self._half:
                young = self._turn()
            table, grams, digest_of = young.forms, young.grams, self._digest
            for form in forms:
                if not form:
                    continue
                data = form.encode("utf-8", "surrogatepass")
                digest = digest_of(data)
                known = table.get(digest)
                if known is not None:  # wrapped again: the newest Secret owns it
                    table[digest] = known._replace(owner=ref)
                    continue
                if len(form) >= _MIN_REDACT_LEN:
                    size = len(data)
                    stride = _stride(size)
                    # _gram_tag at each offset below the stride
                    tags = tuple([hash(data[k:k + _GRAM]) for k in range(stride)])
                    grams.update(tags)
                    young.lengths.add(size)
                    if stride < young.stride:
                        young.stride = stride
                        self._probe = min(stride, self._probe)
                    table[digest] = _new_form(_Form, (ref, True, tags, size))
                else:
                    tag = hash(form)
                    young.short.add(tag)
                    young.short_lengths.add(len(form))
                    table[digest] = _Form(ref, False, (tag,), len(form))

    def _turn(self) -> _Generation:
        """Forget the old generation but its forms of live Secrets, which the young one
        takes over; the young one becomes the old one. Returns the new young generation."""
        old, young = self._old, self._young
        for digest, form in old.forms.items():
            if digest not in young.forms and form.owner() is not None:
                young.keep(digest, form)
        self._old, self._young = young, _Generation()
        self._probe = young.stride
        return self._young

    def defer(self, owner: Secret, value: str) -> None:
        """Register ``owner``'s value before the next redaction, not now.

        A value only needs to be known when text is redacted: a token client that fetches a
        token and logs nothing pays one append, not the forms' encodings and digests. Every
        redaction first registers what is queued, under the lock it scans with, so no text
        is scanned without the values wrapped before it. Past :data:`MAX_PENDING_VALUES`
        queued values they are registered at once. A value whose Secret is gone before
        then is registered all the same, as a value no longer wrapped. Only ASCII values are
        queued: their forms cannot fail to encode, so a redaction never raises for them.
        """
        self._pending.append((weakref.ref(owner), value))
        if len(self._pending) > MAX_PENDING_VALUES:
            with self._lock:
                self._register_pending()

    def _register_pending(self) -> None:
        """Register every queued value; the caller holds the lock."""
        pending = self._pending
        while pending:
            try:  # deque operations are atomic: another thread may append meanwhile
                ref, value = pending.popleft()
            except IndexError:
                break
            # A Secret gone meanwhile: a stand-in that is gone again once add returns, so
            # the forms are remembered as those of a value no longer wrapped.
            owner = ref()
            if owner is None:
                owner = object.__new__(Secret)
            self.add(owner, _encodings(value))
            del owner

    def redact(self, text: str) -> str:
        data = text.encode("utf-8", "surrogatepass")
        spans: list[tuple[int, int]] = []
        tags: list[int]
        with self._lock:
            if self._pending:  # values wrapped since the last redaction (see defer)
                self._register_pending()
            young, old = self._young, self._old
            if (young.grams or old.grams) and len(data) >= _GRAM:
                probe, tags = self._probe, []
                if probe == _GRAM:  # the common case: one C call cuts up to 512 probes
                    count = len(data) // _GRAM
                    for first in range(0, count, _GRAMS_PER_CUT):
                        cut = _grams(min(_GRAMS_PER_CUT, count - first))
                        tags += map(hash, cut.unpack_from(data, first * _GRAM))
                else:
                    tags = [_gram_tag(data, p) for p in range(0, len(data) - _GRAM + 1, probe)]
                if not (young.grams.isdisjoint(tags) and old.grams.isdisjoint(tags)):
                    spans += self._long_spans(data, tags, probe)
            if young.short or old.short:
                spans += self._short_spans(text)
        if not spans:
            return text
        spans.sort(key=lambda span: (span[0], -span[1]))
        out, done = [], 0
        for start, end in spans:
            if start >= done:
                out.append(data[done:start] + _MASK_BYTES)
                done = end
            elif end > done:  # overlaps the previous mask: extend it
                done = end
        out.append(data[done:])
        return b"".join(out).decode("utf-8", "surrogatepass")

    def _long_spans(self, data: bytes, tags: list[int], probe: int) -> list[tuple[int, int]]:
        """Byte spans of long forms around the probed positions whose gram is known."""
        spans: list[tuple[int, int]] = []
        young, old = self._young, self._old
        lengths = sorted(young.lengths | old.lengths, reverse=True)
        tried: set[int] = set()
        for index, tag in enumerate(tags):
            if tag not in young.grams and tag not in old.grams:
                continue
            position = index * probe
            for start in range(max(0, position - probe + 1), position + 1):
                if start in tried:
                    continue
                # Every long form's first gram is known: a start without one is no form's.
                first = _gram_tag(data, start)
                if first not in young.grams and first not in old.grams:
                    continue
                tried.add(start)
                for length in lengths:
                    if start + length <= len(data):
                        digest = self._digest(data[start:start + length])
                        if digest in young.forms or digest in old.forms:
                            spans.append((start, start + length))
                            break
        return spans

    def _short_spans(self, text: str) -> list[tuple[int, int]]:
        """Byte spans of short forms standing as whole words in ``text``."""
        spans: list[tuple[int, int]] = []
        young, old = self._young, self._old
        lengths = young.short_lengths | old.short_lengths
        n = len(text)
        for match in _WORD_START.finditer(text):
            i = match.start()
            for length in lengths:
                end = i + length
                if end > n or (end < n and text[end].isalnum()):
                    continue
                tag = hash(text[i:end])
                if tag not in young.short and tag not in old.short:
                    continue
                digest = self._digest(text[i:end].encode("utf-8", "surrogatepass"))
                if digest in young.forms or digest in old.forms:
                    spans.append((i, end))
        if spans and not text.isascii():
            def offset(i: int) -> int:
                return len(text[:i].encode("utf-8", "surrogatepass"))
            spans = [(offset(start), offset(end)) for start, end in spans]
        return spans


_REDACTOR = _Redactor()


class Secret:
    """A secret value that hides itself from ``repr``, ``str`` and formatting."""

    __slots__ = ("__weakref__", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value
        if value.isascii():  # the usual case (tokens, generated secrets): its forms cannot fail
            _REDACTOR.defer(self, value)
        else:  # may raise (a lone surrogate has no UTF-8): here, not in a later log call
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
