"""What the Okta and Auth0 fakes share: a rate budget and a form reader (the uvicorn server
in a thread is fakes.asgi_thread.ServedApp)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.requests import Request


@dataclass
class RateBudget:
    """A fixed-window budget: ``limit`` requests per ``window`` seconds (None: unlimited).

    ``take()`` answers (allowed, limit, remaining, reset epoch second) for the headers.
    """

    limit: int | None = None
    window: float = 60.0
    clock: Callable[[], float] = time.time
    _start: float = 0.0
    _used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Requests refused with 429 (tests count them).
    refused: int = 0

    def take(self) -> tuple[bool, int, int, int]:
        with self._lock:
            now = self.clock()
            if now >= self._start + self.window:
                self._start, self._used = now, 0
            limit = self.limit if self.limit is not None else 10_000
            reset = math.ceil(self._start + self.window)
            if self.limit is not None and self._used >= self.limit:
                self.refused += 1
                return False, limit, 0, reset
            self._used += 1
            return True, limit, max(0, limit - self._used), reset


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (python-multipart is not installed)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))
