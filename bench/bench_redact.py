"""Benchmark rotator's redactor against the scan it replaced, side by side, in one run.

    python bench/bench_redact.py

Three redactors side by side. The first kept live values in a dict and ran ``value in text``
for each of them on every call (sorted longest first): its cost grows with the secrets. The
second kept keyed digests and looked up, in a Python loop, one hash per position of the text:
flat, but slow. The current one (``rotator.secrets._Redactor``) probes an 8-byte gram every 8
bytes, cut and hashed in C, and checks them with one set operation. Each is loaded with 10 and
with 10,000 secrets (``token_urlsafe(32)`` and its encodings) and redacts a ~500-character
text without a secret and one with a secret in it. Target for the current one: at most
20 µs per call with 10,000 secrets.

Timings use ``time.perf_counter_ns``; each figure is the median of several rounds (the best
round in brackets), old and new interleaved round by round, so a noisy neighbour on a shared
machine hits them alike. Not a test: it prints, and never fails.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rotator.secrets import Secret, _encodings, _Redactor

_MASK = "**********"
ROUNDS = 7


class _OldScan:
    """The redactor before: one substring scan per live value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Secret] = {}

    def add(self, secret: Secret) -> None:
        with self._lock:
            self._values[secret.reveal()] = secret

    def redact(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values.keys(), key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, _MASK)
        return text


class _PerPosition:
    """This morning's redactor, reduced: a hash of the 8 characters at every text position,
    computed in a Python loop, then keyed digests where a known prefix starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key = os.urandom(16)
        self._forms: set[bytes] = set()
        self._long: dict[int, set[int]] = {}

    def _digest(self, form: str) -> bytes:
        return hashlib.blake2b(form.encode(), key=self._key, digest_size=16).digest()

    def add(self, forms: set[str]) -> None:
        with self._lock:
            for form in forms:
                if len(form) >= 8:
                    self._forms.add(self._digest(form))
                    self._long.setdefault(hash(form[:8]), set()).add(len(form))

    def redact(self, text: str) -> str:
        n, spans = len(text), []
        with self._lock:
            tags = list(map(hash, [text[i:i + 8] for i in range(n - 7)]))
            for tag in self._long.keys() & tags:
                i = tags.index(tag)
                while True:
                    for length in sorted(self._long[tag], reverse=True):
                        if i + length <= n and self._digest(text[i:i + length]) in self._forms:
                            spans.append((i, i + length))
                            break
                    try:
                        i = tags.index(tag, i + 1)
                    except ValueError:
                        break
        for start, end in sorted(spans, reverse=True):
            text = text[:start] + _MASK + text[end:]
        return text


def _per_call_us(fn: Callable[[str], str], text: str, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn(text)
    return (time.perf_counter_ns() - start) / calls / 1000


def main() -> None:
    words = " ".join(secrets.token_hex(4) for _ in range(60))
    plain = f"token endpoint https://idp.example/token answered HTTP 400: {words}"[:500]
    print(f"text: {len(plain)} characters; median of {ROUNDS} rounds [best] in µs per call")
    print(f"{'secrets':>8} {'text':>11} {'value scan':>15} {'per position':>15}"
          f" {'current':>15}  target")
    for count in (10, 10_000):
        keep = [Secret(secrets.token_urlsafe(32)) for _ in range(count)]
        scan, morning, new = _OldScan(), _PerPosition(), _Redactor()
        for s in keep:
            forms = _encodings(s.reveal())
            scan.add(s)
            morning.add(forms)
            new.add(s, forms)
        inside = plain[:200] + keep[count // 2].reveal() + plain[243:]
        for label, text in (("no secret", plain), ("one secret", inside)):
            assert scan.redact(text) == morning.redact(text) == new.redact(text)
            calls = max(20, 20_000 // count)
            times: dict[str, list[float]] = {"scan": [], "morning": [], "new": []}
            for _ in range(ROUNDS):
                times["scan"].append(_per_call_us(scan.redact, text, calls))
                times["morning"].append(_per_call_us(morning.redact, text, 200))
                times["new"].append(_per_call_us(new.redact, text, 2000))
            cells = [f"{statistics.median(t):>8.1f} [{min(t):>5.1f}]" for t in times.values()]
            target = "≤ 20 µs" if count == 10_000 else ""
            print(f"{count:>8} {label:>11} {' '.join(cells)}  {target}")


if __name__ == "__main__":
    main()
