"""Benchmark rotator's redactor against the scan it replaced, side by side, in one run.

    python bench/bench_redact.py

The old redactor kept live values in a dict and ran ``value in text`` for each of them on
every call (sorted longest first). The new one keeps keyed digests and looks up one hash per
position of the text. Both are loaded with 10 and with 10,000 secrets (``token_urlsafe(32)``)
and redact a ~500-character text without a secret and one with a secret in it.

Timings use ``time.perf_counter_ns``; each figure is the median of several rounds (the best
round in brackets), old and new interleaved round by round, so a noisy neighbour on a shared
machine hits them alike. Not a test: it prints, and never fails.
"""

from __future__ import annotations

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


def _per_call_us(fn: Callable[[str], str], text: str, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn(text)
    return (time.perf_counter_ns() - start) / calls / 1000


def main() -> None:
    words = " ".join(secrets.token_hex(4) for _ in range(60))
    plain = f"token endpoint https://idp.example/token answered HTTP 400: {words}"[:500]
    print(f"text: {len(plain)} characters; median of {ROUNDS} rounds [best] in µs per call")
    print(f"{'secrets':>8} {'text':>12} {'old scan':>18} {'new digests':>18} {'old/new':>8}")
    for count in (10, 10_000):
        keep = [Secret(secrets.token_urlsafe(32)) for _ in range(count)]
        old, new = _OldScan(), _Redactor()
        for s in keep:
            old.add(s)
            new.add(s, _encodings(s.reveal()))
        inside = plain[:200] + keep[count // 2].reveal() + plain[243:]
        for label, text in (("no secret", plain), ("one secret", inside)):
            assert old.redact(text) == new.redact(text)
            calls = max(20, 20_000 // count)
            times: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(ROUNDS):
                times["old"].append(_per_call_us(old.redact, text, calls))
                times["new"].append(_per_call_us(new.redact, text, calls))
            o, n = (statistics.median(times[k]) for k in ("old", "new"))
            print(f"{count:>8} {label:>12} {o:>10.1f} [{min(times['old']):>5.1f}]"
                  f" {n:>10.1f} [{min(times['new']):>5.1f}] {o / n:>8.2f}")


if __name__ == "__main__":
    main()
