"""A webhook receiver on 127.0.0.1 for the hook and alert tests: it records every request,
answers 401 to one whose signature does not check out (when given the key), and otherwise
the statuses it is given, then 200."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rotator.hooks.kinds import SIGNATURE_HEADER, check_signature


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)


@contextmanager
def receiver(statuses: list[int] | None = None, *,
             key: bytes | None = None) -> Iterator[Receiver]:
    """A running receiver; ``statuses`` are answered first, in order, then 200; with ``key``
    a request without a valid signature gets 401 and takes no status from the list."""
    state = Receiver("", list(statuses or []))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signed = key is None or check_signature(
                key, self.headers.get(SIGNATURE_HEADER, ""), body, now=time.time())
            with lock:
                status = 200 if signed else 401
                if signed and state.statuses:
                    status = state.statuses.pop(0)
                state.requests.append(Received(dict(self.headers), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
